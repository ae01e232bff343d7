//! `berth logs NAME [-f] [-u UNIT] [-n N]`: a service pod's journal (the
//! unit's with -u), a command pod's output (`app.log` of a detached pod).
//!
//! A running service pod's journal is read by `journalctl` inside the pod
//! (the pod's own journald writes it); a stopped one's from its persistent
//! journal in the pod's writable layer, with the host's `journalctl -D`
//! where the host has one.

use crate::stage0::store::{self, Store};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{Read, Seek, Write};
use std::os::unix::process::CommandExt;

#[derive(Args)]
pub struct LogsArgs {
    /// Keep printing new entries.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only this unit's entries (service pods).
    #[arg(short = 'u', long = "unit", value_name = "UNIT")]
    pub unit: Option<String>,
    /// Only the last N entries (lines).
    #[arg(short = 'n', long = "lines", value_name = "N")]
    pub lines: Option<usize>,
    /// Pod name.
    pub name: String,
}

pub fn logs(store: &Store, a: LogsArgs) -> Result<i32> {
    let pod = store.existing(&a.name)?;
    let spec =
        store::spec(&pod).with_context(|| format!("pod {} has no valid pod.json", a.name))?;
    if let Some(u) = &a.unit {
        if !berth_spec::valid_unit_name(u) {
            bail!("invalid unit {u:?}: expected a unit name such as nginx.service");
        }
        if spec.service.is_none() {
            bail!(
                "pod {} runs a command, not units: -u {u} does not apply",
                a.name
            );
        }
    }
    if spec.service.is_none() {
        return app_log(&pod, a.lines, a.follow);
    }
    let mut args = vec!["--no-pager".to_string()];
    if a.follow {
        args.push("--follow".into());
    }
    if let Some(u) = &a.unit {
        args.push(format!("--unit={u}"));
    }
    if let Some(n) = a.lines {
        args.push(format!("--lines={n}"));
    }
    if store::is_running(&pod) {
        let r = super::exec::running(store, &a.name)?;
        let mut cmd = vec!["journalctl".to_string()];
        cmd.extend(args);
        return r.exec(&[], &cmd);
    }
    let dir = pod.upper().join("var/log/journal").join(&spec.machine_id);
    if spec.resources.disk.is_some() {
        bail!(
            "pod {} is not running and its journal is on its --disk image: start it to read it",
            a.name
        );
    }
    if !dir.is_dir() {
        bail!("pod {} has no journal yet (it never ran)", a.name);
    }
    if a.follow {
        bail!("pod {} is not running: nothing to follow", a.name);
    }
    let err = std::process::Command::new("journalctl")
        .arg(format!("--directory={}", dir.display()))
        .args(&args)
        .exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        bail!(
            "pod {} is not running, and this host has no journalctl to read its journal in {}",
            a.name,
            dir.display()
        );
    }
    Err(err).context("cannot run journalctl")
}

/// A command pod's output: the end of app.log (`-n`), then, with `-f`,
/// what is appended while the pod runs.
fn app_log(pod: &berth_spec::PodDir, lines: Option<usize>, follow: bool) -> Result<i32> {
    let path = pod.app_log();
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "pod {} has no output log (it ran in the foreground)",
                store_name(pod)
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut text = Vec::new();
    f.read_to_end(&mut text)?;
    let start = match lines {
        Some(n) => tail_start(&text, n),
        None => 0,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&text[start..])?;
    out.flush()?;
    if !follow {
        return Ok(0);
    }
    let mut pos = f.stream_position()?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n > 0 {
            pos += n as u64;
            out.write_all(&buf[..n])?;
            out.flush()?;
            continue;
        }
        if !store::is_running(pod) {
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        f.seek(std::io::SeekFrom::Start(pos))?;
    }
}

fn store_name(pod: &berth_spec::PodDir) -> String {
    crate::stage0::pod_name(pod)
}

/// Where the last `n` lines of `text` begin.
fn tail_start(text: &[u8], n: usize) -> usize {
    if n == 0 {
        return text.len();
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        let t = b"a\nb\nc\n";
        assert_eq!(&t[tail_start(t, 2)..], b"b\nc\n");
        assert_eq!(&t[tail_start(t, 5)..], b"a\nb\nc\n");
        assert_eq!(&t[tail_start(t, 0)..], b"");
        assert_eq!(&b"x"[tail_start(b"x", 1)..], b"x");
    }
}

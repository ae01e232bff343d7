//! `berth exec [OPTIONS] NAME -- CMD [ARGS...]`, and the other ways stage0
//! runs something inside a running pod (`connect`, `logs`, `status`):
//! through the pod's stage1 `exec` verb.

use crate::stage0::{parse, stage1, store};
use anyhow::{bail, Context, Result};
use berth_spec::PodDir;
use clap::Args;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

#[derive(Args)]
pub struct ExecArgs {
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory (default: the pod's).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as (default: the pod's).
    #[arg(short = 'u', long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Pod name.
    pub name: String,
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// A running pod and its stage1.
pub struct Running {
    pub pod: PodDir,
    pub spec: berth_spec::PodSpec,
    pub stage1: PathBuf,
}

/// The pod `name`, which must be running.
pub fn running(store: &store::Store, name: &str) -> Result<Running> {
    let pod = store.existing(name)?;
    let spec = store::spec(&pod).with_context(|| format!("pod {name} has no valid pod.json"))?;
    if !store::is_running(&pod) {
        bail!("pod {name} is not running");
    }
    let stage1 = stage1::of_pod(&pod).with_context(|| format!("pod {name} records no stage1"))?;
    Ok(Running { pod, spec, stage1 })
}

impl Running {
    /// Become the stage1's `exec` of `cmd` with these stage1 options: its
    /// exit status and signals are then exactly ours.
    pub fn exec(&self, opts: &[String], cmd: &[String]) -> Result<i32> {
        let mut args = opts.to_vec();
        args.push("--".into());
        args.extend(cmd.iter().cloned());
        let err = stage1::command(&self.stage1, "exec", &self.pod, &args).exec();
        Err(err).with_context(|| format!("cannot start {}", self.stage1.display()))
    }

    /// Run `cmd` in the pod and return what it printed on stdout (at most
    /// 1 MiB). Its exit status is not judged.
    pub fn capture(&self, cmd: &[String]) -> Result<String> {
        let mut args = vec!["--".to_string()];
        args.extend(cmd.iter().cloned());
        berth_spec::state::capture_output(&mut stage1::command(
            &self.stage1,
            "exec",
            &self.pod,
            &args,
        ))
        .with_context(|| format!("cannot run {}", self.stage1.display()))
    }
}

pub fn exec(store: &store::Store, a: ExecArgs) -> Result<i32> {
    let r = running(store, &a.name)?;
    let mut opts = Vec::new();
    if a.interactive {
        opts.push("--interactive".to_string());
    }
    if a.tty {
        opts.push("--tty".to_string());
    }
    for e in &a.env {
        opts.push(format!("--env={}", parse::env(e)?));
    }
    if let Some(w) = &a.workdir {
        if !w.starts_with('/') {
            bail!("invalid workdir {w:?}: must be an absolute path");
        }
        opts.push(format!("--workdir={w}"));
    }
    if let Some(u) = &a.user {
        let (uid, gid) = parse::user(u, &r.spec.rootfs.image)?;
        opts.push(format!("--user={uid}:{gid}"));
    }
    r.exec(&opts, &a.cmd)
}

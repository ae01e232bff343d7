//! `berth exec [OPTIONS] NAME -- CMD [ARGS...]`

use crate::stage0::{parse, stage1, store};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::os::unix::process::CommandExt;

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

pub fn exec(store: &store::Store, a: ExecArgs) -> Result<i32> {
    let pod = store.existing(&a.name)?;
    let spec =
        store::spec(&pod).with_context(|| format!("pod {} has no valid pod.json", a.name))?;
    if !store::is_running(&pod) {
        bail!("pod {} is not running", a.name);
    }
    let s1 = stage1::of_pod(&pod).with_context(|| format!("pod {} records no stage1", a.name))?;
    let mut args = Vec::new();
    if a.interactive {
        args.push("--interactive".to_string());
    }
    if a.tty {
        args.push("--tty".to_string());
    }
    for e in &a.env {
        args.push(format!("--env={}", parse::env(e)?));
    }
    if let Some(w) = &a.workdir {
        if !w.starts_with('/') {
            bail!("invalid workdir {w:?}: must be an absolute path");
        }
        args.push(format!("--workdir={w}"));
    }
    if let Some(u) = &a.user {
        let (uid, gid) = parse::user(u, &spec.rootfs.image)?;
        args.push(format!("--user={uid}:{gid}"));
    }
    args.push("--".into());
    args.extend(a.cmd);
    // Become the stage1: its exit status and signals are then exactly ours.
    let err = stage1::command(&s1, "exec", &pod, &args).exec();
    Err(err).with_context(|| format!("cannot start {}", s1.display()))
}

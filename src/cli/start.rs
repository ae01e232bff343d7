//! `berth start [--foreground] NAME`: start a pod made by `berth create` (or
//! one that ran and stopped); returns once it runs — for a service pod,
//! once every unit is active (non-zero with the reason if one is not).
//!
//! On a systemd host with berth's template unit installed, the pod is
//! started as `berth@NAME.service` (so systemd supervises it; its
//! ExecStart is `berth start --foreground NAME`); elsewhere berth starts it
//! in the background itself.

use crate::stage0::launch::{self, Attach, Launch};
use crate::stage0::{fds, stage1, store::Store, systemd};
use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct StartArgs {
    /// Stay in the foreground until the pod ends (a unit's ExecStart; tells
    /// systemd READY=1 once the pod runs).
    #[arg(long)]
    pub foreground: bool,
    /// Pod name.
    pub name: String,
}

pub fn start(store: &Store, a: StartArgs) -> Result<i32> {
    let pod = store.existing(&a.name)?;
    if !a.foreground && systemd::use_unit(&a.name) {
        return systemd::systemctl("start", &a.name);
    }
    let s1 = stage1::of_pod(&pod).with_context(|| format!("pod {} records no stage1", a.name))?;
    let lock = launch::lock_existing(&pod)?;
    let out = launch::start(Launch {
        store,
        pod: &pod,
        lock,
        stage1: s1,
        attach: if a.foreground {
            Attach::Foreground
        } else {
            Attach::Detached
        },
        remove_on_exit: false,
        pass: fds::PassFds::default(),
    })?;
    Ok(out.code)
}

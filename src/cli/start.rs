//! `berth start NAME`: start a pod made by `berth create` (or one that ran
//! and stopped) in the background; returns once it runs — for a service
//! pod, once every unit is active (non-zero with the reason if one is not).

use crate::stage0::launch::{self, Attach, Launch};
use crate::stage0::{fds, stage1, store::Store};
use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct StartArgs {
    /// Pod name.
    pub name: String,
}

pub fn start(store: &Store, a: StartArgs) -> Result<i32> {
    let pod = store.existing(&a.name)?;
    let s1 = stage1::of_pod(&pod).with_context(|| format!("pod {} records no stage1", a.name))?;
    let lock = launch::lock_existing(&pod)?;
    let out = launch::start(Launch {
        store,
        pod: &pod,
        lock,
        stage1: s1,
        attach: Attach::Detached,
        remove_on_exit: false,
        pass: fds::PassFds::default(),
    })?;
    Ok(out.code)
}

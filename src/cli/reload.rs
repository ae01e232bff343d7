//! `berth reload NAME`: reload a running service pod's units (their
//! `ExecReload=`, e.g. nginx re-reading its configuration) — what
//! `systemctl reload berth@NAME` runs.

use crate::stage0::store::Store;
use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct ReloadArgs {
    /// Pod name.
    pub name: String,
}

pub fn reload(store: &Store, a: ReloadArgs) -> Result<i32> {
    let r = super::exec::running(store, &a.name)?;
    let Some(svc) = &r.spec.service else {
        bail!(
            "pod {} runs a command, not units: nothing to reload",
            a.name
        );
    };
    let mut cmd = vec!["systemctl".to_string(), "reload".into(), "--".into()];
    cmd.extend(svc.units.iter().cloned());
    r.exec(&[], &cmd)
}

//! `berth rm [-f] NAME...`

use crate::stage0::{gc, store};
use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct RmArgs {
    /// Stop the pod first if it is running.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Pod names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

pub fn rm(store: &store::Store, a: RmArgs) -> Result<i32> {
    // Check every name before touching any pod.
    let pods = a
        .names
        .iter()
        .map(|n| store.existing(n))
        .collect::<Result<Vec<_>, _>>()?;
    for (pod, name) in pods.iter().zip(&a.names) {
        if store::is_running(pod) {
            if !a.force {
                bail!("pod {name} is running: stop it first or use rm -f");
            }
            super::stop::stop_pod(pod, true, 0)?;
        }
        gc::remove(pod, None)?;
    }
    Ok(0)
}

//! `berth rm [-f] NAME...`

use crate::stage0::{stage1, store};
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
        remove_dead(pod, None)?;
    }
    Ok(0)
}

/// Let the pod's stage1 release host resources, then delete the directory.
/// `lock`: the pod's life lock, when the caller holds it (handed to stage1).
pub fn remove_dead(pod: &berth_spec::PodDir, lock: Option<&std::fs::File>) -> Result<()> {
    if let Some(s1) = stage1::of_pod(pod) {
        let mut cmd = stage1::command(&s1, "gc", pod, &[]);
        if let Some(l) = lock {
            stage1::pass_fds(&mut cmd, std::os::fd::AsRawFd::as_raw_fd(l), None);
        }
        let st = cmd.status();
        if !matches!(st, Ok(s) if s.success()) {
            bail!("stage1 gc failed for pod {}", crate::stage0::pod_name(pod));
        }
    }
    // Whatever the stage1 did, the pod's network lease and host side go too.
    if let Some(spec) = store::spec(pod) {
        crate::stage0::net::release(&pod.state_root(), &spec)?;
    }
    store::remove(pod)?;
    Ok(())
}

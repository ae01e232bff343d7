//! `stop` and `gc`.

use anyhow::{bail, Result};
use berth_spec::cgroup::{self, PodCgroup};
use berth_spec::state::{self, StateError};
use berth_spec::{PodDir, PodSpec};
use std::time::Duration;

/// Ask the pod to stop (see `berth_spec::cgroup::stop`): SIGTERM reaches
/// the pod's init, which forwards it to the app; a service pod's leader is
/// systemd, which halts on SIGRTMIN+3.
pub fn stop(pod: &PodDir, force: bool, timeout: Duration) -> Result<()> {
    let service = PodSpec::load(pod).is_ok_and(|s| s.service.is_some());
    let signal = if service {
        libc::SIGRTMIN() + 3
    } else {
        libc::SIGTERM
    };
    Ok(cgroup::stop(pod, signal, force, timeout)?)
}

/// Release what a dead pod still holds on the host (its cgroup, killing any
/// straggler in it). Idempotent; refuses a running pod.
pub fn gc(pod: &PodDir) -> Result<()> {
    // Holding the life lock (ours, or the one `berth gc` hands us) keeps the
    // pod from being started while we collect it.
    let _lock = match state::take_life_lock(pod) {
        Ok(l) => Some(l),
        Err(StateError::Busy(name)) => bail!("pod {name} is running"),
        // The pod directory may be half gone; collecting is still wanted.
        Err(_) => None,
    };
    let spec = PodSpec::load(pod).ok();
    if let Some(s) = &spec {
        if let Some(net) = &s.network.private {
            berth_net::release(&pod.state_root(), &s.uuid, net)?;
        }
    }
    if let Some(rel) = cgroup::recorded(pod, spec.as_ref()) {
        PodCgroup::open(&rel)?.remove()?;
    }
    Ok(())
}

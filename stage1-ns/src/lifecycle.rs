//! `stop` and `gc`.

use crate::cgroups::PodCgroup;
use crate::state::{self, StateError};
use anyhow::{bail, Context, Result};
use berth_spec::{PodDir, PodSpec};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How often `stop` looks whether the pod has gone.
const POLL: Duration = Duration::from_millis(10);
/// How long `stop` waits after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Ask the pod to stop: SIGTERM to its init (forwarded to the app), SIGKILL
/// after `timeout`, or at once with `force`. Stopping a pod that is not
/// running is not an error.
pub fn stop(pod: &PodDir, force: bool, timeout: Duration) -> Result<()> {
    let leader = match state::running_leader(pod) {
        Ok(p) => p,
        Err(StateError::NotRunning(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // Pin the process, then re-check the pod still runs: the pid we signal
    // is then the pod's leader, never a recycled pid.
    let pidfd = pidfd_open(leader.as_raw()).context("cannot open the pod's leader")?;
    if !state::is_running(pod) {
        return Ok(());
    }
    if !force {
        pidfd_signal(&pidfd, libc::SIGTERM).context("cannot signal the pod")?;
        if wait_stopped(pod, timeout) {
            return Ok(());
        }
        log::info!("stage1-ns: pod did not stop within {timeout:?}; killing it");
    }
    pidfd_signal(&pidfd, libc::SIGKILL).context("cannot kill the pod")?;
    if !wait_stopped(pod, KILL_WAIT) {
        bail!("pod {} did not stop after SIGKILL", state::pod_name(pod));
    }
    Ok(())
}

fn wait_stopped(pod: &PodDir, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !state::is_running(pod) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: the kernel gave us a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn pidfd_signal(fd: &OwnedFd, sig: i32) -> nix::Result<()> {
    // SAFETY: pidfd_send_signal with a null siginfo behaves like kill(2).
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match r {
        0 => Ok(()),
        _ => match nix::Error::last() {
            nix::Error::ESRCH => Ok(()),
            e => Err(e),
        },
    }
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
    let name = match PodSpec::load(pod) {
        Ok(spec) => spec.name,
        // A pod whose spec never got written still owns a cgroup by name.
        Err(_) => state::pod_name(pod),
    };
    PodCgroup::open(&name)?.remove()?;
    Ok(())
}

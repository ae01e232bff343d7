//! Collecting a pod that no longer runs: its stage1's `gc` verb releases
//! what the stage1 held on the host (cgroups, sockets, mounts), then stage0
//! releases its network lease; [`remove`] also deletes the directory.

use super::stage1;
use anyhow::{bail, Context, Result};
use berth_spec::PodDir;
use std::fs::File;
use std::os::fd::AsRawFd;

/// Release a stopped pod's host resources. `lock`: the pod's life lock,
/// when the caller holds it (it is handed to the stage1's `gc`, which
/// otherwise takes it itself and refuses a running pod).
pub fn collect(pod: &PodDir, stage1: &std::path::Path, lock: Option<&File>) -> Result<()> {
    let mut cmd = stage1::command(stage1, "gc", pod, &[]);
    if let Some(l) = lock {
        stage1::pass_fds(&mut cmd, l.as_raw_fd(), None, &Default::default());
    }
    let st = cmd
        .status()
        .with_context(|| format!("cannot run {}", stage1.display()))?;
    if !st.success() {
        bail!(
            "the stage1 could not collect pod {}; `berth gc` retries",
            super::pod_name(pod)
        );
    }
    // Whatever the stage1 did, the pod's network lease and host side go too.
    if let Some(spec) = super::store::spec(pod) {
        super::net::release(&pod.state_root(), &spec)?;
    }
    Ok(())
}

/// Collect a pod that is not running and delete its directory (and give
/// back its `--private-users` range).
pub fn remove(pod: &PodDir, lock: Option<&File>) -> Result<()> {
    let spec = super::store::spec(pod);
    if let Some(s1) = stage1::of_pod(pod) {
        collect(pod, &s1, lock)?;
    } else if let Some(spec) = &spec {
        super::net::release(&pod.state_root(), spec)?;
    }
    super::store::remove(pod)?;
    if let Some(s) = &spec {
        super::users::release(&pod.state_root(), s);
    }
    Ok(())
}

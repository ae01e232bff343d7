//! stage0's half of `--net private`: lease and host set-up before the pod
//! starts (berth-net's `prepare`), and a guard that releases them again if
//! the pod never starts. stage0 also releases after a foreground stage1
//! exits and when `rm`/`gc` collect a pod, so a stage1 that does not release
//! (or was killed) never leaks a lease.

use berth_spec::{PodSpec, PrivateNetwork};
use std::path::{Path, PathBuf};

/// Releases the pod's network on drop unless disarmed.
pub struct NetGuard {
    root: PathBuf,
    uuid: String,
    net: PrivateNetwork,
    armed: bool,
}

impl NetGuard {
    pub fn new(root: &Path, uuid: &str, net: PrivateNetwork) -> NetGuard {
        NetGuard {
            root: root.to_path_buf(),
            uuid: uuid.to_string(),
            net,
            armed: true,
        }
    }

    /// The pod started: its stage1 (or `gc`) releases from now on.
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// Release on drop after all (the stage1 has exited).
    pub fn rearm(&mut self) {
        self.armed = true;
    }
}

impl Drop for NetGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = berth_net::release(&self.root, &self.uuid, &self.net) {
                eprintln!(
                    "berth: cannot release the pod's network: {}",
                    berth_spec::ErrorChain(&e)
                );
            }
        }
    }
}

/// Release a collected pod's network (idempotent; no-op without one).
pub fn release(root: &Path, spec: &PodSpec) -> Result<(), berth_net::NetError> {
    match &spec.network.private {
        Some(net) => berth_net::release(root, &spec.uuid, net),
        None => Ok(()),
    }
}

//! berth-stage1-kvm: runs a berth pod in a KVM microVM on berth's own VMM.
//!
//! Verbs (the stage1 contract in DESIGN.md): `run POD_DIR`, `exec POD_DIR --
//! CMD...` (needs the vsock control channel: not yet), `stop POD_DIR
//! [--force] [--timeout S]`, `gc POD_DIR`.

mod assets;
mod disk;
mod initramfs;
mod run;

use anyhow::{bail, Result};
use berth_spec::stage1_cli::{self, Verb};
use berth_spec::state::{self, StateError};
use berth_spec::PodDir;
use std::time::Duration;

fn main() {
    let result = match stage1_cli::parse().verb {
        Verb::Run { pod_dir } => run::run(&PodDir::new(pod_dir)),
        Verb::Exec { .. } => Err(anyhow::anyhow!(
            "exec is not supported by the kvm stage1 yet (it needs the vsock control channel)"
        )),
        Verb::Stop {
            pod_dir,
            force,
            timeout,
        } => state::stop(&PodDir::new(pod_dir), force, Duration::from_secs(timeout))
            .map(|()| 0)
            .map_err(Into::into),
        Verb::Gc { pod_dir } => gc(&PodDir::new(pod_dir)).map(|()| 0),
    };
    stage1_cli::exit_with(result)
}

/// A kvm pod holds nothing on the host outside its directory (its overlay
/// mount lived in the dead stage1's mount namespace), so gc only checks that
/// the pod is not running.
fn gc(pod: &PodDir) -> Result<()> {
    match state::take_life_lock(pod) {
        Ok(_) | Err(StateError::Open { .. }) => Ok(()),
        Err(StateError::Busy(name)) => bail!("pod {name} is running"),
        Err(e) => Err(e.into()),
    }
}

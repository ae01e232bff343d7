//! berth-stage1-kvm: runs a berth pod in a KVM microVM on berth's own VMM.
//!
//! Verbs (the stage1 contract in DESIGN.md): `run POD_DIR`, `exec POD_DIR --
//! CMD...` (over the vsock control channel), `stop POD_DIR [--force]
//! [--timeout S]`, `gc POD_DIR`.

mod assets;
mod control;
mod exec;
mod initramfs;
mod jail;
mod rootfs;
mod run;
mod vmm;

use anyhow::{bail, Result};
use berth_spec::stage1_cli::{self, Verb};
use berth_spec::state::{self, StateError};
use berth_spec::PodDir;
use std::time::Duration;

fn main() {
    // Nothing stage0 did not mean to pass may reach the VMM or the guest.
    let pass = state::sanitize_fds();
    if pass.count > 0 {
        stage1_cli::exit_with(Err(anyhow::anyhow!(
            "cannot pass {} file descriptor(s) into a VM: --stage1=kvm shares no descriptors with the host",
            pass.count
        )));
    }
    let result = match stage1_cli::parse().verb {
        Verb::Run { pod_dir } => run::run(&PodDir::new(pod_dir)),
        Verb::Exec(args) => args
            .options()
            .and_then(|(pod, opts)| exec::exec(&pod, opts)),
        Verb::Stop {
            pod_dir,
            force,
            timeout,
        } => berth_spec::cgroup::stop(
            &PodDir::new(pod_dir),
            // The leader is this stage1, which passes it on to guest-init
            // (which halts a service pod's systemd).
            libc::SIGTERM,
            force,
            Duration::from_secs(timeout),
        )
        .map(|()| 0)
        .map_err(Into::into),
        Verb::Gc { pod_dir } => gc(&PodDir::new(pod_dir)).map(|()| 0),
    };
    stage1_cli::exit_with(result)
}

/// A kvm pod holds little on the host outside its directory (its overlay
/// mount lived in the dead VMM process's mount namespace, its tap died with
/// that process), so gc checks that the pod is not running, releases its
/// network (port rules, lease) and its VMM's cgroup, and removes the dead
/// VMM's sockets.
fn gc(pod: &PodDir) -> Result<()> {
    match state::take_life_lock(pod) {
        Ok(_) | Err(StateError::Open { .. }) => {
            let spec = berth_spec::PodSpec::load(pod).ok();
            if let Some(spec) = &spec {
                berth_net::release_pod(&pod.state_root(), spec);
            }
            if let Some(rel) = berth_spec::cgroup::recorded(pod, spec.as_ref()) {
                berth_spec::cgroup::PodCgroup::open(&rel)?.remove()?;
            }
            let ctl = pod.ctl_socket();
            for p in [
                run::host_port_socket(&ctl, berth_spec::control::MAIN_PORT),
                ctl,
            ] {
                let _ = std::fs::remove_file(p);
            }
            Ok(())
        }
        Err(StateError::Busy(name)) => bail!("pod {name} is running"),
        Err(e) => Err(e.into()),
    }
}

/// A valid spec for unit tests.
#[cfg(test)]
fn test_spec() -> berth_spec::PodSpec {
    let mut spec = berth_spec::PodSpec::new(
        "t",
        "0b9f3c2e-6a1d-4c8e-9f00-1234567890ab",
        vec!["app".into()],
        "/img",
    );
    spec.app.env = vec!["A=1".into()];
    spec.app.cwd = "/srv".into();
    spec.app.user = berth_spec::User { uid: 1, gid: 2 };
    spec
}

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
mod landlock;
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
        Verb::Run { pod_dir } => {
            let pod = PodDir::new(pod_dir);
            // A detached pod's output: capped and rotated, not a file that
            // grows without limit.
            match berth_spec::app_log::cap(&pod) {
                Ok(_) => run::run(&pod),
                Err(e) => Err(anyhow::Error::new(e)),
            }
        }
        Verb::Exec(args) => args
            .options()
            .and_then(|(pod, opts)| exec::exec(&pod, opts)),
        Verb::Stop {
            pod_dir,
            force,
            timeout,
        } => {
            let pod = PodDir::new(pod_dir);
            let service = berth_spec::PodSpec::load(&pod).is_ok_and(|s| s.service.is_some());
            berth_spec::cgroup::stop(
                &pod,
                // The leader is this stage1, which passes it on to guest-init
                // (which halts a service pod's systemd).
                libc::SIGTERM,
                force,
                Duration::from_secs(stop_timeout(timeout, service, ::vmm::pvm::detected())),
            )
            .map(|()| 0)
            .map_err(Into::into)
        }
        Verb::Gc { pod_dir } => gc(&PodDir::new(pod_dir)).map(|()| 0),
    };
    stage1_cli::exit_with(result)
}

/// Seconds `stop` waits before SIGKILL: the caller's, but on a PVM host
/// (where a guest's systemd needs minutes to halt) at least
/// [`berth_spec::kvm::SLOW_HOST_STOP_SECS`] for a service pod.
fn stop_timeout(requested: u64, service: bool, pvm: bool) -> u64 {
    if service && pvm {
        requested.max(berth_spec::kvm::SLOW_HOST_STOP_SECS)
    } else {
        requested
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn service_pods_get_time_to_halt_on_pvm_only() {
        use super::stop_timeout;
        let slow = berth_spec::kvm::SLOW_HOST_STOP_SECS;
        assert_eq!(stop_timeout(10, true, true), slow);
        assert_eq!(stop_timeout(slow + 5, true, true), slow + 5);
        assert_eq!(stop_timeout(10, false, true), 10, "command pods: as asked");
        assert_eq!(stop_timeout(10, true, false), 10, "hardware KVM: as asked");
        assert_eq!(stop_timeout(0, true, false), 0);
    }
}

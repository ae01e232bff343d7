//! A service pod's readiness: once its systemd said READY=1 (the boot's
//! jobs are done), every requested unit must be active. Their states are
//! read with `systemctl show` run inside the pod by this stage1's own
//! `exec` verb (the output is the pod's, parsed defensively by
//! `berth_spec::service`).

use berth_spec::report::StartReport;
use berth_spec::service::{not_active, parse_show, show_args};
use berth_spec::{PodDir, PodSpec};

/// The start report of a service pod whose systemd is ready.
pub fn check_units(pod: &PodDir, spec: &PodSpec) -> StartReport {
    let Some(svc) = &spec.service else {
        return StartReport::Started;
    };
    match crate::exec::capture(pod, &show_args(&svc.units)) {
        Ok(out) => match not_active(&parse_show(&svc.units, &out)) {
            None => StartReport::Started,
            Some(why) => StartReport::setup_failed(why),
        },
        Err(e) => StartReport::setup_failed(format!("cannot read the units' state: {e:#}")),
    }
}

/// `fs.inotify.max_user_instances`: how many inotify instances one user may
/// hold, host-wide.
const INOTIFY_INSTANCES: &str = "/proc/sys/fs/inotify/max_user_instances";

/// The least [`INOTIFY_INSTANCES`] a host running service pods gets: 2048
/// pods' worth (a Debian 12 pod's systemd, as its PID 1, holds 4 instances;
/// its journald and nginx none). The kernel's default of 128 is a per-user
/// count, and every pod's systemd is charged to the host's root whether or
/// not the pod has a user namespace of its own (a user namespace's
/// instances count against its owner in the parent namespace too), so
/// without this the 33rd service pod's systemd cannot get its inotify
/// instances (sooner when other root processes hold some). It is a limit,
/// not an allocation; as with `ip_forward`, berth raises it for the host
/// and never lowers it.
pub const INOTIFY_INSTANCES_FLOOR: u64 = 8192;

/// Raising [`INOTIFY_INSTANCES`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InotifyError {
    #[error("cannot read {INOTIFY_INSTANCES}")]
    Read(#[source] std::io::Error),
    #[error("{INOTIFY_INSTANCES} holds {0:?}, not a number")]
    Parse(String),
    #[error("cannot raise {INOTIFY_INSTANCES} to {INOTIFY_INSTANCES_FLOOR}")]
    Write(#[source] std::io::Error),
}

/// The value to write to [`INOTIFY_INSTANCES`] when it holds `current`, or
/// None when it is high enough.
pub fn raised_inotify_instances(current: u64) -> Option<u64> {
    (current < INOTIFY_INSTANCES_FLOOR).then_some(INOTIFY_INSTANCES_FLOOR)
}

/// Make room for a service pod's systemd: raise the host's
/// `fs.inotify.max_user_instances` to [`INOTIFY_INSTANCES_FLOOR`] when it is
/// lower. Concurrent starts may all write; they write the same value, and a
/// value someone set higher is left alone.
pub fn ensure_inotify_instances() -> Result<(), InotifyError> {
    let text = std::fs::read_to_string(INOTIFY_INSTANCES).map_err(InotifyError::Read)?;
    let current: u64 = text
        .trim()
        .parse()
        .map_err(|_| InotifyError::Parse(text.trim().to_string()))?;
    if let Some(v) = raised_inotify_instances(current) {
        log::info!("stage1-ns: raising {INOTIFY_INSTANCES} from {current} to {v} for service pods");
        std::fs::write(INOTIFY_INSTANCES, v.to_string()).map_err(InotifyError::Write)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inotify_instances_are_raised_to_the_floor_and_never_lowered() {
        assert_eq!(raised_inotify_instances(128), Some(INOTIFY_INSTANCES_FLOOR));
        assert_eq!(raised_inotify_instances(0), Some(INOTIFY_INSTANCES_FLOOR));
        assert_eq!(
            raised_inotify_instances(INOTIFY_INSTANCES_FLOOR - 1),
            Some(INOTIFY_INSTANCES_FLOOR)
        );
        assert_eq!(raised_inotify_instances(INOTIFY_INSTANCES_FLOOR), None);
        assert_eq!(raised_inotify_instances(1 << 20), None);
    }
}

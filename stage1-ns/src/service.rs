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

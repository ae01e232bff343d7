//! Service pods (see [`crate::Service`]): what berth writes into a service
//! pod's root filesystem, and how it reads the state of its units.
//!
//! The state of units is read by running, inside the pod (through the
//! stage1's `exec` verb: ns enters the namespaces, kvm asks guest-init over
//! vsock), `systemctl show --property=Id,LoadState,ActiveState,SubState,Result`;
//! its output is hostile input (the pod controls it) and is parsed
//! defensively: bounded, unknown lines ignored, values checked.

use crate::{Service, SERVICE_TARGET};

/// The generated target: wants (and is ordered after) exactly the
/// requested units. `AllowIsolate` so `systemctl isolate` works too.
pub fn target_unit(pod_name: &str, svc: &Service) -> String {
    let units = svc.units.join(" ");
    format!(
        "# Written by berth for pod {pod_name}: the units this pod runs.\n\
         [Unit]\n\
         Description=berth pod {pod_name}\n\
         Wants={units}\n\
         After={units}\n\
         AllowIsolate=yes\n"
    )
}

/// Where the target goes in the pod's root.
pub fn target_path() -> String {
    format!("etc/systemd/system/{SERVICE_TARGET}")
}

/// systemd's command line in the pod.
pub fn systemd_argv(systemd: &str) -> Vec<String> {
    vec![systemd.to_string(), format!("--unit={SERVICE_TARGET}")]
}

/// Where systemd may live in a root filesystem, in the order looked at.
pub const SYSTEMD_PATHS: &[&str] = &["/usr/lib/systemd/systemd", "/lib/systemd/systemd"];

/// Directories a unit file may be in (system units).
pub const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "run/systemd/system",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// The unit file that defines `unit`: itself, or for an instance
/// (`getty@tty1.service`) its template (`getty@.service`).
pub fn unit_file_names(unit: &str) -> Vec<String> {
    let mut v = vec![unit.to_string()];
    if let Some((prefix, rest)) = unit.split_once('@') {
        if let Some(dot) = rest.rfind('.') {
            let template = format!("{prefix}@{}", &rest[dot..]);
            if template != unit {
                v.push(template);
            }
        }
    }
    v
}

/// `systemctl show` arguments for `units`.
pub fn show_args(units: &[String]) -> Vec<String> {
    let mut v = vec![
        "systemctl".to_string(),
        "show".into(),
        "--property=Id,LoadState,ActiveState,SubState,Result".into(),
        "--".into(),
    ];
    v.extend(units.iter().cloned());
    v
}

/// One unit's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnitState {
    pub unit: String,
    pub load: String,
    pub active: String,
    pub sub: String,
    pub result: String,
}

impl UnitState {
    pub fn is_active(&self) -> bool {
        self.active == "active"
    }

    /// `nginx.service: active (running)` / `… failed (exit-code)`.
    pub fn describe(&self) -> String {
        let detail = if self.active == "failed" && !self.result.is_empty() {
            &self.result
        } else {
            &self.sub
        };
        if self.load != "loaded" && !self.load.is_empty() {
            return format!("{}: {} ({})", self.unit, self.active, self.load);
        }
        format!("{}: {} ({detail})", self.unit, self.active)
    }
}

/// Longest output parsed (a pod could print anything).
const MAX_OUTPUT: usize = 64 * 1024;

fn clean(v: &str) -> String {
    v.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

/// Parse `systemctl show` output: blank-line separated blocks of
/// `Key=value`, one block per unit in the order asked. Blocks are matched
/// to `units` by position (the `Id` a unit reports may be an alias).
pub fn parse_show(units: &[String], out: &str) -> Vec<UnitState> {
    let out = &out[..out.len().min(MAX_OUTPUT)];
    let mut blocks: Vec<Vec<(&str, &str)>> = vec![Vec::new()];
    for line in out.lines() {
        if line.trim().is_empty() {
            if blocks.last().is_some_and(|b| !b.is_empty()) {
                blocks.push(Vec::new());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if let Some(b) = blocks.last_mut() {
                b.push((k, v));
            }
        }
    }
    units
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let get = |key: &str| {
                blocks
                    .get(i)
                    .and_then(|b| b.iter().find(|(k, _)| *k == key))
                    .map(|(_, v)| clean(v))
                    .unwrap_or_default()
            };
            let active = get("ActiveState");
            UnitState {
                unit: u.clone(),
                load: get("LoadState"),
                active: if active.is_empty() {
                    "unknown".into()
                } else {
                    active
                },
                sub: get("SubState"),
                result: get("Result"),
            }
        })
        .collect()
}

/// The first requested unit that is not active, as a one-line reason.
pub fn not_active(states: &[UnitState]) -> Option<String> {
    states
        .iter()
        .find(|s| !s.is_active())
        .map(|s| format!("unit {}", s.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_wants_exactly_the_units() {
        let svc = Service {
            units: vec!["nginx.service".into(), "getty@tty1.service".into()],
        };
        let t = target_unit("web", &svc);
        assert!(
            t.contains("\nWants=nginx.service getty@tty1.service\n"),
            "{t}"
        );
        assert!(t.contains("\nAfter=nginx.service getty@tty1.service\n"));
        assert_eq!(target_path(), "etc/systemd/system/berth-pod.target");
        assert_eq!(
            systemd_argv("/lib/systemd/systemd"),
            ["/lib/systemd/systemd", "--unit=berth-pod.target"]
        );
    }

    #[test]
    fn templates() {
        assert_eq!(unit_file_names("nginx.service"), ["nginx.service"]);
        assert_eq!(
            unit_file_names("getty@tty1.service"),
            ["getty@tty1.service", "getty@.service"]
        );
    }

    #[test]
    fn show_output_is_parsed_by_position() {
        let units = vec!["nginx.service".to_string(), "bad.service".to_string()];
        let out = "Id=nginx.service\nLoadState=loaded\nActiveState=active\nSubState=running\nResult=success\n\n\
                   Id=bad.service\nLoadState=loaded\nActiveState=failed\nSubState=failed\nResult=exit-code\n";
        let s = parse_show(&units, out);
        assert!(s[0].is_active());
        assert_eq!(s[0].describe(), "nginx.service: active (running)");
        assert_eq!(s[1].describe(), "bad.service: failed (exit-code)");
        assert_eq!(
            not_active(&s).as_deref(),
            Some("unit bad.service: failed (exit-code)")
        );
    }

    #[test]
    fn hostile_output_is_bounded() {
        let units = vec!["a.service".to_string()];
        let out = format!("ActiveState=\u{1b}[2Jact\nive\n{}", "x".repeat(1 << 20));
        let s = parse_show(&units, &out);
        assert!(!s[0].is_active());
        assert!(s[0].active.chars().all(|c| c.is_ascii_graphic()));
        assert_eq!(parse_show(&units, "")[0].active, "unknown");
    }
}

//! berth on a systemd host: readiness for the unit running us (sd_notify),
//! and handing pods to their `berth@NAME.service` units so that systemd
//! supervises them.

use anyhow::{bail, Context, Result};

/// The template unit `make setup` installs.
pub const TEMPLATE: &str = "berth@.service";

/// Did systemd boot this host (`sd_booted`)?
pub fn booted() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// `berth@NAME.service`.
pub fn unit_of(pod: &str) -> String {
    format!("berth@{pod}.service")
}

/// Tell the unit running us (if any: `NOTIFY_SOCKET`) how far we are;
/// `ready` says READY=1. Errors only lose the message.
pub fn notify(ready: bool, status: &str) {
    use sd_notify::NotifyState;
    let mut states = vec![NotifyState::Status(status)];
    if ready {
        states.push(NotifyState::Ready);
    }
    let _ = sd_notify::notify(false, &states);
}

/// The unit whose cgroup we are in (`berth@web.service`), from
/// /proc/self/cgroup (the unified or name=systemd hierarchy).
pub fn own_unit() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .filter(|l| l.starts_with("0::") || l.contains(":name=systemd:"))
        .find_map(|l| {
            l.rsplit('/')
                .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
                .map(String::from)
        })
}

/// Is the berth@ template installed where systemd looks?
fn template_installed() -> bool {
    [
        "/etc/systemd/system",
        "/usr/local/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    ]
    .iter()
    .any(|d| std::path::Path::new(d).join(TEMPLATE).is_file())
}

/// Should `berth start`/`stop` of `pod` go through its unit? On a systemd
/// host with the template installed, unless we are that unit already (its
/// ExecStart) or `BERTH_NO_SYSTEMD` is set.
pub fn use_unit(pod: &str) -> bool {
    booted()
        && template_installed()
        && std::env::var_os("BERTH_NO_SYSTEMD").is_none()
        && own_unit().as_deref() != Some(&unit_of(pod))
}

/// Is `berth@POD.service` active (or starting, or reloading)?
pub fn unit_active(pod: &str) -> bool {
    std::process::Command::new("systemctl")
        .args(["is-active", "--quiet", &unit_of(pod)])
        .status()
        .is_ok_and(|s| s.success())
}

/// `systemctl VERB berth@POD.service`; systemctl prints its own errors.
pub fn systemctl(verb: &str, pod: &str) -> Result<i32> {
    let st = std::process::Command::new("systemctl")
        .arg(verb)
        .arg(unit_of(pod))
        .status()
        .context("cannot run systemctl")?;
    match st.code() {
        Some(0) => Ok(0),
        Some(c) => {
            if verb == "start" {
                bail!(
                    "{} failed (exit {c}): see `systemctl status {}` and `berth logs {pod}`",
                    unit_of(pod),
                    unit_of(pod)
                );
            }
            bail!("systemctl {verb} {} failed (exit {c})", unit_of(pod))
        }
        None => bail!("systemctl was killed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        assert_eq!(unit_of("web"), "berth@web.service");
    }
}

//! berth-oci's state: one berth pod directory per container under
//! `--root` (`<root>/<id>/`), holding the stage contract's files (pod.json,
//! lock, pid, cgroup, stage1) and berth-oci's own `oci.json`.
//!
//! Status, from the stage contract: `stopped` when the pod's life lock is
//! free (its leader exited); otherwise `created` while the start FIFO
//! exists (the leader waits on it) and `running` once `start` removed it.

use anyhow::{bail, Context, Result};
use berth_spec::oci::Hook;
use berth_spec::PodDir;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The FIFO the pod's leader opens for writing; `start` opens it for reading.
pub const START_FIFO: &str = "start.fifo";

/// `<pod dir>/oci.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub bundle: PathBuf,
    /// RFC 3339.
    pub created: String,
    pub stage1: String,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub poststart: Vec<Hook>,
    #[serde(default)]
    pub poststop: Vec<Hook>,
}

/// Is `id` acceptable as a container id (and so as a directory name)?
pub fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 1024
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'+'))
}

pub struct Container {
    pub pod: PodDir,
    pub saved: Saved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

pub fn dir(root: &Path, id: &str) -> Result<PathBuf> {
    if !valid_id(id) {
        bail!("invalid container id {id:?}");
    }
    Ok(root.join(id))
}

impl Container {
    pub fn load(root: &Path, id: &str) -> Result<Container> {
        let d = dir(root, id)?;
        let path = d.join("oci.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("container {id} does not exist")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let saved: Saved = serde_json::from_str(&text)
            .with_context(|| format!("{} is damaged", path.display()))?;
        Ok(Container {
            pod: PodDir::new(d),
            saved,
        })
    }

    pub fn fifo(&self) -> PathBuf {
        self.pod.path().join(START_FIFO)
    }

    /// The leader's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        berth_spec::state::running_leader(&self.pod).ok()
    }

    pub fn status(&self) -> Status {
        if !berth_spec::state::is_running(&self.pod) {
            Status::Stopped
        } else if self.fifo().exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    /// The OCI state document.
    pub fn state_json(&self) -> serde_json::Value {
        let status = self.status();
        let pid = if status == Status::Stopped {
            0
        } else {
            self.pid().unwrap_or(0)
        };
        serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.saved.id,
            "status": status.as_str(),
            "pid": pid,
            "bundle": self.saved.bundle,
            "rootfs": berth_spec::PodSpec::load(&self.pod).map(|s| s.rootfs.image).unwrap_or_default(),
            "created": self.saved.created,
            "owner": "",
            "annotations": self.saved.annotations,
        })
    }

    /// Every process of the container (its cgroup's).
    pub fn pids(&self) -> Vec<i32> {
        let Some(rel) = berth_spec::cgroup::recorded(&self.pod, None) else {
            return Vec::new();
        };
        let rel = rel.strip_prefix("/").unwrap_or(&rel).to_path_buf();
        for h in ["", "unified", "pids", "memory", "systemd"] {
            let f = Path::new("/sys/fs/cgroup")
                .join(h)
                .join(&rel)
                .join("cgroup.procs");
            if let Ok(t) = std::fs::read_to_string(&f) {
                let mut v: Vec<i32> = t.lines().filter_map(|l| l.trim().parse().ok()).collect();
                if !v.is_empty() || h == "pids" {
                    v.sort_unstable();
                    return v;
                }
            }
        }
        Vec::new()
    }
}

/// Now, RFC 3339 in UTC with nanoseconds (what runc writes).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("abc-1.2_x+y"));
        assert!(!valid_id(""));
        assert!(!valid_id("../x"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(".x"));
    }

    #[test]
    fn timestamps_look_like_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}

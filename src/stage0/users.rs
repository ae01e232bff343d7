//! User namespaces at create: `--user-remap UID:GID:COUNT` (the user's own
//! range) and `--private-users` (a 65536-id range berth picks from its pool,
//! `[users] pool` in berth.toml, outside the host's /etc/subuid and
//! /etc/subgid ranges, never shared by two pods, the pod's until `rm`).
//!
//! Allocations are files `<root>/users/<first host id>` holding the pod's
//! uuid, written under `<root>/users/lock`; an allocation whose pod
//! directory no longer exists (or holds another pod) is free again.

use anyhow::{bail, Context, Result};
use berth_spec::UserNamespace;
use std::path::{Path, PathBuf};

/// Ids per `--private-users` range.
pub const RANGE: u32 = 65536;

/// `UID:GID:COUNT`.
pub fn parse_remap(s: &str) -> Result<UserNamespace> {
    let bad = || {
        anyhow::anyhow!(
            "invalid --user-remap {s:?}: expected UID:GID:COUNT (host ids, COUNT > 0, UID+COUNT <= 4294967295)"
        )
    };
    let parts: Vec<&str> = s.split(':').collect();
    let [u, g, c] = parts.as_slice() else {
        return Err(bad());
    };
    let num = |x: &str| -> Result<u32> {
        if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        x.parse().map_err(|_| bad())
    };
    let u = UserNamespace {
        host_uid: num(u)?,
        host_gid: num(g)?,
        count: num(c)?,
        private: false,
    };
    u.validate()
        .map_err(|why| anyhow::anyhow!("invalid --user-remap {s:?}: {why}"))?;
    Ok(u)
}

/// Ranges of /etc/subuid or /etc/subgid (`name:first:count`).
fn sub_ranges(path: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let _ = f.next()?;
            let first: u64 = f.next()?.trim().parse().ok()?;
            let count: u64 = f.next()?.trim().parse().ok()?;
            Some((first, first + count))
        })
        .collect()
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

struct Pool {
    dir: PathBuf,
}

impl Pool {
    fn new(root: &Path) -> Pool {
        Pool {
            dir: root.join("users"),
        }
    }

    fn lock(&self) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let path = self.dir.join("lock");
        let f = std::fs::File::create(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        berth_spec::state::flock(&f, libc::LOCK_EX)
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(f)
    }

    /// Live allocations: (first id, pod uuid).
    fn live(&self, pods: &Path) -> Vec<(u32, String)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let first: u32 = e.file_name().to_str()?.parse().ok()?;
                let uuid = std::fs::read_to_string(e.path()).ok()?.trim().to_string();
                Some((first, uuid))
            })
            .filter(|(_, uuid)| pod_with_uuid_exists(pods, uuid))
            .collect()
    }
}

fn pod_with_uuid_exists(pods: &Path, uuid: &str) -> bool {
    std::fs::read_dir(pods).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            berth_spec::PodSpec::load(&berth_spec::PodDir::new(e.path()))
                .is_ok_and(|s| s.uuid == uuid)
        })
    })
}

/// Pick a free range for pod `uuid` and record it.
pub fn allocate(root: &Path, pool: (u32, u32), uuid: &str) -> Result<UserNamespace> {
    let p = Pool::new(root);
    let _lock = p.lock()?;
    let taken = p.live(&root.join("pods"));
    let mut host: Vec<(u64, u64)> = sub_ranges(Path::new("/etc/subuid"));
    host.extend(sub_ranges(Path::new("/etc/subgid")));
    // Ranges aligned to RANGE, as nspawn picks them.
    let mut first = u64::from(pool.0).div_ceil(u64::from(RANGE)) * u64::from(RANGE);
    while first + u64::from(RANGE) - 1 <= u64::from(pool.1) {
        let r = (first, first + u64::from(RANGE));
        let free = !host.iter().any(|h| overlaps(*h, r))
            && !taken
                .iter()
                .any(|(t, _)| overlaps((u64::from(*t), u64::from(*t) + u64::from(RANGE)), r));
        if free {
            let id = u32::try_from(first).context("id out of range")?;
            let file = p.dir.join(id.to_string());
            berth_spec::state::write_file(&file, &format!("{uuid}\n"))?;
            return Ok(UserNamespace {
                host_uid: id,
                host_gid: id,
                count: RANGE,
                private: true,
            });
        }
        first += u64::from(RANGE);
    }
    bail!(
        "no free range of {RANGE} ids left in the users pool {}-{} (berth.toml [users] pool)",
        pool.0,
        pool.1
    )
}

/// Give a removed pod's ranges back: its `--private-users` range and its
/// VMM's (no-op for ranges it did not have).
pub fn release(root: &Path, spec: &berth_spec::PodSpec) {
    let firsts = [
        spec.security
            .userns
            .as_ref()
            .filter(|u| u.private)
            .map(|u| u.host_uid),
        spec.kvm.as_ref().and_then(|k| k.vmm_id),
    ];
    let p = Pool::new(root);
    let Ok(_lock) = p.lock() else { return };
    for first in firsts.into_iter().flatten() {
        let file = p.dir.join(first.to_string());
        if std::fs::read_to_string(&file).is_ok_and(|s| s.trim() == spec.uuid) {
            let _ = std::fs::remove_file(file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaps_are_checked() {
        let u = parse_remap("100000:100000:65536").unwrap();
        assert_eq!((u.host_uid, u.host_gid, u.count), (100000, 100000, 65536));
        for bad in [
            "",
            "1:2",
            "a:b:c",
            "1:1:0",
            "0:0:10",
            "4294967290:1:10",
            "1:2:3:4",
            "-1:1:1",
            "+1:1:1",
        ] {
            let e = parse_remap(bad).expect_err(bad).to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn private_ranges_are_distinct_and_released() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let pod = |name: &str, uuid: &str| {
            let dir = root.join("pods").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let spec = berth_spec::PodSpec::new(name, uuid, vec!["x".into()], "/img");
            std::fs::write(dir.join("pod.json"), spec.to_json()).unwrap();
        };
        let (u1, u2) = (
            "0b9f3c2e-6a1d-4c8e-9f00-1234567890ab",
            "1b9f3c2e-6a1d-4c8e-9f00-1234567890ab",
        );
        pod("a", u1);
        pod("b", u2);
        let pool = (0x80000, 0x80000 + 3 * RANGE - 1);
        let a = allocate(root, pool, u1).unwrap();
        let b = allocate(root, pool, u2).unwrap();
        assert_ne!(a.host_uid, b.host_uid);
        assert!(a.private && a.count == RANGE);
        let mut spec_a = berth_spec::PodSpec::new("a", u1, vec!["x".into()], "/img");
        spec_a.security.userns = Some(a);
        release(root, &spec_a);
        std::fs::remove_dir_all(root.join("pods/a")).unwrap();
        // A new pod (directory first, as stage0 makes it) gets that range.
        pod("a", u1);
        let c = allocate(root, pool, u1).unwrap();
        assert_eq!(c.host_uid, a.host_uid, "released ranges are reused");
        // A pod directory that is gone frees its range even without rm.
        std::fs::remove_dir_all(root.join("pods/b")).unwrap();
        pod("c", "2b9f3c2e-6a1d-4c8e-9f00-1234567890ab");
        let e = allocate(root, pool, "2b9f3c2e-6a1d-4c8e-9f00-1234567890ab").unwrap();
        assert_eq!(e.host_uid, b.host_uid);
        // A kvm pod's VMM range is given back by its spec's vmm_id (while
        // the pod is still there, as `rm` does before the directory goes).
        let u4 = "4b9f3c2e-6a1d-4c8e-9f00-1234567890ab";
        pod("d", u4);
        let vmm = allocate(root, pool, u4).unwrap();
        let mut spec_d = berth_spec::PodSpec::new("d", u4, vec!["x".into()], "/img");
        let mut k = berth_spec::KvmSettings::default();
        k.vmm_id = Some(vmm.host_uid);
        spec_d.kvm = Some(k);
        // Someone else's spec naming that id releases nothing.
        let mut other = spec_d.clone();
        other.uuid = u2.into();
        release(root, &other);
        assert!(root.join("users").join(vmm.host_uid.to_string()).exists());
        release(root, &spec_d);
        assert!(!root.join("users").join(vmm.host_uid.to_string()).exists());
        let tiny = (0x80000, 0x80000 + RANGE - 1);
        assert!(allocate(root, tiny, "3b9f3c2e-6a1d-4c8e-9f00-1234567890ab").is_err());
    }
}

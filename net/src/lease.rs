//! Address leases in the state root: `<root>/net/leases/<address>`, one JSON
//! file per pod, created and removed only while holding `<root>/net/lock`
//! (flock), so concurrent `berth run`s never get one address or one host port.
//!
//! A lease is live while its pod is: the pod directory `<root>/pods/<name>`
//! exists, its life lock is held (by stage0 while it creates the pod, then by
//! stage1), and its `pod.json`, once written, names the lease's uuid.
//! Anything else is stale (its stage1 was killed) and is reclaimed: its host
//! resources are torn down and its address reused.

use berth_spec::PrivateNetwork;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot create {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write lease {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove lease {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a lease records: enough to tear the pod's host side down without
/// its pod directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub pod: String,
    pub uuid: String,
    pub network: PrivateNetwork,
}

/// `<root>/net`.
pub struct LeaseDir {
    root: PathBuf,
    dir: PathBuf,
}

/// The held `<root>/net/lock`; released on drop.
pub struct NetLock(#[allow(dead_code)] File);

impl LeaseDir {
    pub fn new(root: &Path) -> LeaseDir {
        LeaseDir {
            root: root.to_path_buf(),
            dir: root.join("net"),
        }
    }

    fn leases_dir(&self) -> PathBuf {
        self.dir.join("leases")
    }

    pub fn lease_file(&self, address: std::net::Ipv4Addr) -> PathBuf {
        self.leases_dir().join(address.to_string())
    }

    /// Take the network lock (blocking).
    pub fn lock(&self) -> Result<NetLock, LeaseError> {
        let leases = self.leases_dir();
        std::fs::create_dir_all(&leases).map_err(|source| LeaseError::Dir {
            path: leases.clone(),
            source,
        })?;
        let path = self.dir.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LeaseError::Lock {
                path: path.clone(),
                source,
            })?;
        match berth_spec::state::flock(&f, libc::LOCK_EX) {
            Ok(()) => Ok(NetLock(f)),
            Err(source) => Err(LeaseError::Lock { path, source }),
        }
    }

    /// Every readable lease (call with the lock held). Unreadable files are
    /// skipped with a warning.
    pub fn all(&self, _lock: &NetLock) -> Vec<Lease> {
        let Ok(rd) = std::fs::read_dir(self.leases_dir()) else {
            return Vec::new();
        };
        let mut out: Vec<Lease> = rd
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                match serde_json::from_str(&text) {
                    Ok(l) => Some(l),
                    Err(err) => {
                        log::warn!("net: ignoring lease {}: {err}", e.path().display());
                        None
                    }
                }
            })
            .collect();
        out.sort_by_key(|l| l.network.address);
        out
    }

    /// Is the lease's pod alive (or being created)? See the module docs.
    pub fn is_live(&self, lease: &Lease) -> bool {
        if !berth_spec::valid_pod_name(&lease.pod) {
            return false;
        }
        let pod = berth_spec::PodDir::new(self.root.join("pods").join(&lease.pod));
        if !pod.path().is_dir() || !berth_spec::state::is_running(&pod) {
            return false;
        }
        match std::fs::read_to_string(pod.spec_file()) {
            Ok(text) => berth_spec::PodSpec::from_json(&text)
                .map(|s| s.uuid == lease.uuid)
                .unwrap_or(false),
            // Not written yet: stage0 is creating the pod right now.
            Err(_) => true,
        }
    }

    /// Record a lease (lock held). Write-then-rename.
    pub fn write(&self, _lock: &NetLock, lease: &Lease) -> Result<(), LeaseError> {
        let path = self.lease_file(lease.network.address);
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string_pretty(lease).unwrap_or_default();
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| LeaseError::Write { path, source })
    }

    /// Does the lease on `address` belong to `uuid` (lock held)? An
    /// unreadable lease file counts as the pod's, as in [`LeaseDir::remove`].
    pub fn holds(&self, _lock: &NetLock, address: std::net::Ipv4Addr, uuid: &str) -> bool {
        match std::fs::read_to_string(self.lease_file(address)) {
            Ok(text) => serde_json::from_str::<Lease>(&text)
                .map(|l| l.uuid == uuid)
                .unwrap_or(true),
            Err(_) => false,
        }
    }

    /// Remove `<root>/net/leases` if it is empty (lock held); the lock file
    /// stays, as others may be waiting on it.
    pub fn remove_dir_if_empty(&self, _lock: &NetLock) {
        let _ = std::fs::remove_dir(self.leases_dir());
    }

    /// Remove the lease of `uuid` on `address` (lock held). Returns whether it
    /// existed. A lease on that address held by another pod is left alone.
    pub fn remove(
        &self,
        _lock: &NetLock,
        address: std::net::Ipv4Addr,
        uuid: &str,
    ) -> Result<bool, LeaseError> {
        let path = self.lease_file(address);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(false);
        };
        let ours = serde_json::from_str::<Lease>(&text)
            .map(|l| l.uuid == uuid)
            .unwrap_or(true);
        if !ours {
            return Ok(false);
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(LeaseError::Remove { path, source }),
        }
    }
}

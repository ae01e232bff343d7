//! The state root (`--root`, default /var/lib/berth): `pods/<name>/` per pod.

use berth_spec::{PodDir, PodSpec};
use serde::Serialize;
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}")]
    CreateRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pod name {0:?} is already in use")]
    NameInUse(String),
    #[error("no such pod: {0}")]
    NotFound(String),
    #[error("cannot create pod directory {path}")]
    CreatePod {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot remove pod directory {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Store {
    root: PathBuf,
}

/// The life state of a pod, derived from its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "exit_code")]
pub enum PodState {
    /// stage1 holds the life lock.
    Running,
    /// stage1 recorded the app's exit status.
    Exited(i32),
    /// Started once, but stage1 died without recording a status.
    Dead,
    /// Never started.
    Created,
}

impl std::fmt::Display for PodState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PodState::Running => write!(f, "running"),
            PodState::Exited(c) => write!(f, "exited ({c})"),
            PodState::Dead => write!(f, "dead"),
            PodState::Created => write!(f, "created"),
        }
    }
}

impl Store {
    pub fn new(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
        }
    }

    /// The state root (`--root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }

    pub fn pod(&self, name: &str) -> PodDir {
        PodDir::new(self.pods_dir().join(name))
    }

    /// An existing pod by name.
    pub fn existing(&self, name: &str) -> Result<PodDir, StoreError> {
        let pod = self.pod(name);
        if berth_spec::valid_pod_name(name) && pod.path().is_dir() {
            Ok(pod)
        } else {
            Err(StoreError::NotFound(name.to_string()))
        }
    }

    /// Create the pod directory atomically (the name is claimed by mkdir) and
    /// take its life lock. The caller hands the locked descriptor to stage1.
    /// The lock is a plain flock on the returned file: closing our copy does
    /// not release it while stage1 holds a duplicate of the descriptor.
    pub fn create(&self, name: &str) -> Result<(PodDir, File), StoreError> {
        self.ensure_pods_dir()?;
        let pod = self.pod(name);
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(pod.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::NameInUse(name.to_string()))
            }
            Err(source) => {
                return Err(StoreError::CreatePod {
                    path: pod.path().to_path_buf(),
                    source,
                })
            }
        }
        let lock_path = pod.lock_file();
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::CreatePod {
                path: lock_path.clone(),
                source,
            })
            .and_then(|f| {
                // Blocking: a concurrent `list` may hold a brief shared lock.
                match berth_spec::state::flock(&f, libc::LOCK_EX) {
                    Ok(()) => Ok(f),
                    Err(e) => Err(StoreError::Lock {
                        path: lock_path.clone(),
                        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                    }),
                }
            });
        match lock {
            Ok(l) => Ok((pod, l)),
            Err(e) => {
                let _ = std::fs::remove_dir_all(pod.path());
                Err(e)
            }
        }
    }

    /// `<root>` (0711: traversable, not listable) and `<root>/pods` (0700):
    /// what pods write (set-uid binaries, device nodes in their upper
    /// layers, sockets) must never be reachable by other host users, as
    /// runc and podman keep their state.
    fn ensure_pods_dir(&self) -> Result<PathBuf, StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let pods = self.pods_dir();
        std::fs::create_dir_all(&pods).map_err(|source| StoreError::CreateRoot {
            path: pods.clone(),
            source,
        })?;
        for (dir, mode) in [(&self.root, 0o711), (&pods, 0o700)] {
            let meta = std::fs::metadata(dir).map_err(|source| StoreError::CreateRoot {
                path: dir.to_path_buf(),
                source,
            })?;
            if meta.permissions().mode() & 0o7777 != mode {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(
                    |source| StoreError::CreateRoot {
                        path: dir.to_path_buf(),
                        source,
                    },
                )?;
            }
        }
        Ok(pods)
    }

    /// All pods, sorted by name.
    pub fn list(&self) -> Vec<PodDir> {
        let Ok(rd) = std::fs::read_dir(self.pods_dir()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| berth_spec::valid_pod_name(n))
            .collect();
        names.sort();
        names.into_iter().map(|n| self.pod(&n)).collect()
    }
}

pub use berth_spec::state::is_running;

pub fn state(pod: &PodDir) -> PodState {
    if is_running(pod) {
        return PodState::Running;
    }
    if let Some(code) = std::fs::read_to_string(pod.status_file())
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return PodState::Exited(code);
    }
    if pod.pid_file().exists() {
        PodState::Dead
    } else {
        PodState::Created
    }
}

pub fn pid(pod: &PodDir) -> Option<i32> {
    std::fs::read_to_string(pod.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Why the pod ended, when its stage1 recorded a reason (`oom-killed`).
pub fn exit_reason(pod: &PodDir) -> Option<String> {
    std::fs::read_to_string(pod.exit_reason_file())
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() < 64)
}

pub fn spec(pod: &PodDir) -> Option<PodSpec> {
    PodSpec::load(pod).ok()
}

/// Remove a pod directory. Must not be running.
pub fn remove(pod: &PodDir) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(pod.path()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Remove {
            path: pod.path().to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_claims_name_once() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        let (pod, lock) = s.create("a").unwrap();
        assert!(pod.path().is_dir());
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(d.path()), 0o711);
        assert_eq!(mode(&d.path().join("pods")), 0o700);
        assert_eq!(mode(pod.path()), 0o700);
        assert!(is_running(&pod), "the creation lock marks the pod busy");
        assert!(matches!(s.create("a"), Err(StoreError::NameInUse(_))));
        drop(lock);
        assert_eq!(state(&pod), PodState::Created);
        std::fs::write(pod.pid_file(), "1").unwrap();
        assert_eq!(state(&pod), PodState::Dead);
        std::fs::write(pod.status_file(), "7\n").unwrap();
        assert_eq!(state(&pod), PodState::Exited(7));
        assert_eq!(s.list().len(), 1);
        remove(&pod).unwrap();
        remove(&pod).unwrap();
        assert!(matches!(s.existing("a"), Err(StoreError::NotFound(_))));
    }
}

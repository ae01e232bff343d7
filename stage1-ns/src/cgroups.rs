//! The pod's control group: created before the pod's init runs, limits applied
//! from `PodSpec.resources`, removed when the pod ends (or by `gc`).
//!
//! Controllers are handled by youki's libcgroups, which picks the v1 manager on
//! legacy and hybrid hosts and the v2 manager on unified ones. On a hybrid host
//! libcgroups leaves the unified (`/sys/fs/cgroup/unified`) and named
//! `name=systemd` hierarchies alone; berth places the pod there too, so that
//! the pod's cgroup namespace is rooted at the pod's own cgroup everywhere.

use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt,
};
use nix::unistd::Pid;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// CFS period used for `--cpus` (the kernel default).
const CPU_PERIOD_US: u64 = 100_000;

/// Hierarchies of a hybrid host that libcgroups' v1 manager does not manage.
const EXTRA_HYBRID_HIERARCHIES: &[&str] = &["/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot detect the host's cgroup layout")]
    Detect(#[source] libcgroups::common::GetCgroupSetupError),
    #[error("cannot set up cgroup {path}")]
    Manager {
        path: String,
        #[source]
        source: libcgroups::common::CreateCgroupSetupError,
    },
    #[error("cannot build resource limits")]
    Resources(#[source] oci_spec::OciSpecError),
    #[error("cannot apply resource limits to cgroup {path}")]
    Apply {
        path: String,
        #[source]
        source: libcgroups::common::AnyManagerError,
    },
    #[error("cannot move process {pid} into cgroup {path}")]
    AddTask {
        pid: i32,
        path: String,
        #[source]
        source: libcgroups::common::AnyManagerError,
    },
    #[error("cannot remove cgroup {path}")]
    Remove {
        path: String,
        #[source]
        source: libcgroups::common::AnyManagerError,
    },
    #[error("cgroup {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The pod's cgroup, relative to each hierarchy's root.
pub struct PodCgroup {
    relative: PathBuf,
    manager: AnyCgroupManager,
    /// Directories in hierarchies libcgroups does not manage (hybrid hosts).
    extra: Vec<PathBuf>,
}

/// The cgroup path of a pod, the same in every hierarchy.
pub fn pod_cgroup_path(pod_name: &str) -> PathBuf {
    PathBuf::from("/berth").join(pod_name)
}

impl PodCgroup {
    /// Open (creating lazily) the pod's cgroup in every hierarchy.
    pub fn open(pod_name: &str) -> Result<PodCgroup, CgroupError> {
        let relative = pod_cgroup_path(pod_name);
        let setup = get_cgroup_setup().map_err(CgroupError::Detect)?;
        let manager = create_cgroup_manager(CgroupConfig {
            cgroup_path: relative.clone(),
            systemd_cgroup: false,
            container_name: pod_name.to_string(),
        })
        .map_err(|source| CgroupError::Manager {
            path: relative.display().to_string(),
            source,
        })?;
        let extra = if matches!(setup, CgroupSetup::Hybrid) {
            EXTRA_HYBRID_HIERARCHIES
                .iter()
                .map(Path::new)
                .filter(|h| h.join("cgroup.procs").exists())
                .map(|h| h.join(relative.strip_prefix("/").unwrap_or(&relative)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(PodCgroup {
            relative,
            manager,
            extra,
        })
    }

    fn name(&self) -> String {
        self.relative.display().to_string()
    }

    /// Move `pid` (and later its children) into the pod's cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        self.manager
            .add_task(Pid::from_raw(pid))
            .map_err(|source| CgroupError::AddTask {
                pid,
                path: self.name(),
                source,
            })?;
        for dir in &self.extra {
            let io = |source| CgroupError::Io {
                path: dir.clone(),
                source,
            };
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(io)?;
        }
        Ok(())
    }

    /// Apply memory, CPU and pids limits.
    pub fn apply(&self, res: &berth_spec::Resources) -> Result<(), CgroupError> {
        let resources = to_oci_resources(res)?;
        let opt = ControllerOpt {
            resources: &resources,
            freezer_state: None,
            oom_score_adj: None,
            disable_oom_killer: false,
        };
        self.manager
            .apply(&opt)
            .map_err(|source| CgroupError::Apply {
                path: self.name(),
                source,
            })
    }

    /// Kill whatever is left in the cgroup and remove it from every hierarchy.
    /// Removing a cgroup that does not exist is not an error.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.manager
            .remove()
            .map_err(|source| CgroupError::Remove {
                path: self.name(),
                source,
            })?;
        for dir in &self.extra {
            remove_dir_retry(dir)?;
        }
        // Leave the shared /berth parent in place: other pods use it.
        Ok(())
    }
}

/// rmdir a cgroup directory, retrying briefly while exiting tasks drain.
fn remove_dir_retry(dir: &Path) -> Result<(), CgroupError> {
    let mut delay = Duration::from_millis(1);
    for _ in 0..10 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
    std::fs::remove_dir(dir).map_err(|source| CgroupError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Translate berth's resource limits into the OCI structure libcgroups takes.
pub fn to_oci_resources(res: &berth_spec::Resources) -> Result<LinuxResources, CgroupError> {
    let mut b = LinuxResourcesBuilder::default();
    if let Some(bytes) = res.memory {
        let limit = i64::try_from(bytes).unwrap_or(i64::MAX);
        b = b.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .build()
                .map_err(CgroupError::Resources)?,
        );
    }
    if let Some(millis) = res.cpu_millis {
        let quota = i64::from(millis) * (CPU_PERIOD_US as i64) / 1000;
        b = b.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()
                .map_err(CgroupError::Resources)?,
        );
    }
    if let Some(n) = res.pids {
        b = b.pids(
            LinuxPidsBuilder::default()
                .limit(i64::from(n))
                .build()
                .map_err(CgroupError::Resources)?,
        );
    }
    b.build().map_err(CgroupError::Resources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_translate() {
        let r = to_oci_resources(&berth_spec::Resources {
            memory: Some(64 << 20),
            cpu_millis: Some(1500),
            pids: Some(42),
        })
        .unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(150_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 42);
    }

    #[test]
    fn no_limits_means_nothing_set() {
        let r = to_oci_resources(&berth_spec::Resources::default()).unwrap();
        assert!(r.memory().is_none() && r.cpu().is_none() && r.pids().is_none());
    }

    #[test]
    fn path_is_per_pod() {
        assert_eq!(pod_cgroup_path("web"), PathBuf::from("/berth/web"));
    }
}

//! The pod's control group, shared by both stage1s: created before the pod's
//! processes run (ns: the pod's init; kvm: the VMM process), limits applied
//! from `PodSpec.resources`, the device policy from `PodSpec.devices`,
//! removed when the pod ends (or by `gc`).
//!
//! Its path, relative to each hierarchy's root, is `/berth/<pod uuid>`
//! ([`pod_cgroup_path`]): unique per pod, so two state roots with pods of
//! the same name never share a cgroup. The stage1 records it in the pod's
//! `cgroup` file ([`record`]) for `exec` and `gc`.
//!
//! Controllers are handled by youki's libcgroups, which picks the v1 manager
//! on legacy and hybrid hosts and the v2 manager on unified ones. On a
//! hybrid host libcgroups leaves the unified (`/sys/fs/cgroup/unified`) and
//! named `name=systemd` hierarchies alone; berth places the pod there too, so
//! that the pod's cgroup namespace is rooted at the pod's own cgroup
//! everywhere — and the unified one carries the device program.

pub mod devices;

use crate::{PodDir, PodSpec};
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

/// Where the v1 (or the hybrid host's unified) hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
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
    #[error("cannot apply the device policy")]
    Devices(#[from] devices::DeviceError),
}

/// The pod's cgroup, relative to each hierarchy's root.
pub struct PodCgroup {
    relative: PathBuf,
    setup: CgroupSetup,
    manager: AnyCgroupManager,
    /// Directories in hierarchies libcgroups does not manage (hybrid hosts).
    extra: Vec<PathBuf>,
}

/// The cgroup path of a pod, the same in every hierarchy.
pub fn pod_cgroup_path(uuid: &str) -> PathBuf {
    PathBuf::from("/berth").join(uuid)
}

/// The pod's cgroup path as its stage1 recorded it, else the one its spec
/// gives (a pod whose stage1 died before recording).
pub fn recorded(pod: &PodDir, spec: Option<&PodSpec>) -> Option<PathBuf> {
    std::fs::read_to_string(pod.cgroup_file())
        .ok()
        .map(|s| PathBuf::from(s.trim()))
        .filter(|p| plausible(p))
        .or_else(|| spec.map(|s| pod_cgroup_path(&s.uuid)))
}

/// A recorded path berth may have chosen: berth's own tree
/// (`/berth/<uuid>`), below a service unit (`…/berth@NAME.service/pod`) or a
/// machined scope (`…/machine-NAME.scope`); absolute, no `..`.
fn plausible(p: &Path) -> bool {
    use std::path::Component;
    let clean = p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    let s = p.to_string_lossy();
    clean
        && ((p.starts_with("/berth/") && p.components().count() == 3)
            || s.ends_with(".service/pod")
            || s.rsplit('/')
                .next()
                .is_some_and(|l| l.starts_with("machine-") && l.ends_with(".scope")))
}

/// Record the pod's cgroup path (before any process is placed there, so
/// that `gc` finds it whatever happens next).
pub fn record(pod: &PodDir, relative: &Path) -> Result<(), crate::state::StateError> {
    crate::state::write_file(&pod.cgroup_file(), &format!("{}\n", relative.display()))
}

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("pod {0} has no valid pid file and no cgroup record")]
    NoRecord(String),
    #[error("pod {0} did not stop after SIGKILL")]
    Unkillable(String),
}

/// Stop a pod ([`crate::state::stop`]); a running pod whose `pid` file is
/// damaged is stopped by killing everything in its cgroup (ns: the pod's
/// processes; kvm: the VMM, after which the stage1 ends too).
pub fn stop(pod: &PodDir, signal: i32, force: bool, timeout: Duration) -> Result<(), StopError> {
    match crate::state::stop(pod, signal, force, timeout) {
        Err(crate::state::StateError::NoPid { name }) => {
            let spec = PodSpec::load(pod).ok();
            let rel = recorded(pod, spec.as_ref()).ok_or(StopError::NoRecord(name.clone()))?;
            log::warn!("pod {name} has no valid pid file: killing its cgroup");
            PodCgroup::open(&rel)?.kill_all()?;
            if crate::state::wait_stopped(pod, Duration::from_secs(10)) {
                Ok(())
            } else {
                Err(StopError::Unkillable(name))
            }
        }
        other => Ok(other?),
    }
}

impl PodCgroup {
    /// Open (creating lazily) the pod's cgroup in every hierarchy.
    pub fn open(relative: &Path) -> Result<PodCgroup, CgroupError> {
        let relative = relative.to_path_buf();
        let setup = get_cgroup_setup().map_err(CgroupError::Detect)?;
        let manager = create_cgroup_manager(CgroupConfig {
            cgroup_path: relative.clone(),
            systemd_cgroup: false,
            container_name: relative
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
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
            setup,
            manager,
            extra,
        })
    }

    /// The cgroup's path relative to each hierarchy's root.
    pub fn relative(&self) -> &Path {
        &self.relative
    }

    fn under(&self, hierarchy: &str) -> PathBuf {
        Path::new(CGROUP_ROOT)
            .join(hierarchy)
            .join(self.relative.strip_prefix("/").unwrap_or(&self.relative))
    }

    /// The pod's directory in the v2 hierarchy (the unified one of a hybrid
    /// host), if the host has one.
    fn v2_dir(&self) -> Option<PathBuf> {
        match self.setup {
            CgroupSetup::Unified => Some(self.under("")),
            CgroupSetup::Hybrid => Some(self.under("unified")).filter(|d| d.is_dir()),
            CgroupSetup::Legacy => None,
        }
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

    /// Apply memory (swap included), CPU and pids limits, then the device
    /// policy (after libcgroups, whose v1 defaults it replaces). Call after
    /// the first [`PodCgroup::add`] (which creates the directories).
    pub fn apply(&self, res: &crate::Resources, devs: &[crate::Device]) -> Result<(), CgroupError> {
        self.apply_limits(res)?;
        self.apply_devices(devs)
    }

    /// The device policy alone (a machined scope: systemd applies the
    /// limits, given as the scope's properties).
    pub fn apply_devices(&self, devs: &[crate::Device]) -> Result<(), CgroupError> {
        let rules = devices::rules(devs);
        let v1 = !matches!(self.setup, CgroupSetup::Unified);
        if v1 {
            devices::apply_v1(&self.under("devices"), &rules)?;
        }
        if let Some(dir) = self.v2_dir() {
            match devices::apply_bpf(&dir, &rules) {
                Ok(()) => {}
                // A hybrid host's v1 devices controller enforces the same
                // list; the program on its unified hierarchy is a second
                // lock, which some hosts do not allow us (bpf(2) refused,
                // e.g. inside systemd-nspawn).
                Err(e @ devices::DeviceError::Load(_)) if v1 => log::info!(
                    "{}: the v1 devices controller enforces the policy alone",
                    crate::ErrorChain(&e)
                ),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn apply_limits(&self, res: &crate::Resources) -> Result<(), CgroupError> {
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

    /// Hand the pod's v2 cgroup to the pod's root in a user namespace (a
    /// service pod's systemd manages its own subtree): the directory and
    /// the files delegation covers (cgroup.procs, cgroup.threads,
    /// cgroup.subtree_control), as systemd's delegation does.
    pub fn delegate_to(&self, uid: u32, gid: u32) -> Result<(), CgroupError> {
        let Some(dir) = self.v2_dir() else {
            return Ok(());
        };
        for p in [
            dir.clone(),
            dir.join("cgroup.procs"),
            dir.join("cgroup.threads"),
            dir.join("cgroup.subtree_control"),
        ] {
            if p.exists() {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                    .map_err(|source| CgroupError::Io { path: p, source })?;
            }
        }
        Ok(())
    }

    /// Was a process of the pod killed by the kernel's OOM killer?
    pub fn oom_killed(&self) -> bool {
        let (file, key) = match self.setup {
            CgroupSetup::Unified => (self.under("").join("memory.events"), "oom_kill"),
            _ => (self.under("memory").join("memory.oom_control"), "oom_kill"),
        };
        std::fs::read_to_string(file).is_ok_and(|t| {
            t.lines().any(|l| {
                l.split_once(' ')
                    .is_some_and(|(k, v)| k == key && v.trim().parse::<u64>().is_ok_and(|n| n > 0))
            })
        })
    }

    /// SIGKILL every process in the pod's cgroup (a pod whose leader is
    /// unknown: a damaged `pid` file).
    pub fn kill_all(&self) -> Result<usize, CgroupError> {
        let dir = match self.setup {
            CgroupSetup::Unified => self.under(""),
            _ => self.under("pids"),
        };
        let procs = dir.join("cgroup.procs");
        let text = std::fs::read_to_string(&procs).map_err(|source| CgroupError::Io {
            path: procs.clone(),
            source,
        })?;
        let mut n = 0;
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::SIGKILL).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Kill whatever is left in the cgroup and remove it from every hierarchy.
    /// Removing a cgroup that does not exist is not an error.
    pub fn remove(&self) -> Result<(), CgroupError> {
        if self
            .relative
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".scope"))
        {
            // A machined scope is systemd's: it goes away by itself once
            // empty. Only make sure it is.
            let _ = self.kill_all();
            if let Some(dir) = self.v2_dir() {
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            }
            return Ok(());
        }
        if let Some(dir) = self.v2_dir() {
            // The whole subtree (a service pod's systemd makes its own
            // cgroups below the pod's): cgroup.kill (Linux 5.14+), then the
            // children, deepest first.
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        remove_dir_retry(&e.path())?;
                    }
                }
            }
        }
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

/// Can the host limit swap (v2: `memory.swap.max`; v1: swap accounting on,
/// `memory.memsw.*`)?
fn swap_accounting() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
            && Path::new("/proc/swaps").exists()
}

/// rmdir a cgroup directory and every cgroup below it (a service pod's
/// systemd makes its own), deepest first, retrying briefly while exiting
/// tasks drain.
fn remove_dir_retry(dir: &Path) -> Result<(), CgroupError> {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_dir_retry(&e.path())?;
            }
        }
    }
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
/// The memory limit includes swap (memory+swap = limit: the pod gets none).
pub fn to_oci_resources(res: &crate::Resources) -> Result<LinuxResources, CgroupError> {
    let mut b = LinuxResourcesBuilder::default();
    if let Some(bytes) = res.memory {
        let limit = i64::try_from(bytes).unwrap_or(i64::MAX);
        let mut m = LinuxMemoryBuilder::default().limit(limit);
        if swap_accounting() {
            m = m.swap(limit);
        }
        b = b.memory(m.build().map_err(CgroupError::Resources)?);
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
        let r = to_oci_resources(&crate::Resources {
            memory: Some(64 << 20),
            cpu_millis: Some(1500),
            pids: Some(42),
            disk: None,
        })
        .unwrap();
        let mem = r.memory().as_ref().unwrap();
        assert_eq!(mem.limit(), Some(64 << 20));
        if swap_accounting() {
            assert_eq!(mem.swap(), Some(64 << 20), "no swap beyond the limit");
        }
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(150_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 42);
    }

    #[test]
    fn no_limits_means_nothing_set() {
        let r = to_oci_resources(&crate::Resources::default()).unwrap();
        assert!(r.memory().is_none() && r.cpu().is_none() && r.pids().is_none());
    }

    #[test]
    fn path_is_per_pod() {
        let u = "0b9f3c2e-6a1d-4c8e-9f00-1234567890ab";
        assert_eq!(pod_cgroup_path(u), PathBuf::from(format!("/berth/{u}")));
        let d = tempfile::tempdir().unwrap();
        let pod = PodDir::new(d.path());
        assert_eq!(recorded(&pod, None), None);
        record(&pod, &pod_cgroup_path(u)).unwrap();
        assert_eq!(recorded(&pod, None), Some(pod_cgroup_path(u)));
        // A damaged record never names a cgroup outside berth's.
        for bad in [
            "/../../system.slice",
            "/system.slice",
            "/berth/../x",
            "rel/berth/x",
        ] {
            std::fs::write(pod.cgroup_file(), format!("{bad}\n")).unwrap();
            assert_eq!(recorded(&pod, None), None, "{bad}");
        }
        for good in [
            "/machine.slice/berth@web.service/pod",
            "/machine.slice/machine-web.scope",
        ] {
            std::fs::write(pod.cgroup_file(), format!("{good}\n")).unwrap();
            assert_eq!(recorded(&pod, None), Some(PathBuf::from(good)));
        }
    }
}

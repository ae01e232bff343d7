//! A pod on a systemd host: where its cgroup goes, and its registration with
//! systemd-machined (so `machinectl list/status/terminate/poweroff` and
//! `journalctl -M NAME` work).
//!
//! Placement ([`placement`]):
//! - no systemd (PID 1 is something else): berth's own cgroup tree,
//!   `/berth/<uuid>` in every hierarchy;
//! - inside a service unit (`berth@NAME.service`, `systemd-run berth run
//!   …`): the pod gets `<unit>/pod`, below the unit's cgroup, so the unit's
//!   status shows the pod's processes and stopping the unit stops the pod.
//!   When the unit delegates its cgroup (`Delegate=yes`: berth@'s has it,
//!   and says so with `BERTH_DELEGATED=1`; systemd marks others with the
//!   `trusted.delegate` xattr), berth's own processes move to
//!   `<unit>/supervisor` (cgroup v2 allows controllers only for cgroups
//!   without processes of their own) and the limits are written in
//!   `<unit>/pod`; without delegation a limit option fails, naming the
//!   controller (pods without limits still run);
//! - anywhere else on a systemd host (`berth run` from a login shell):
//!   machined creates a scope for the pod's leader in machine.slice
//!   (`CreateMachineWithNetwork`, `Delegate=yes`), with the limits as the
//!   scope's properties (`MemoryMax=`, `CPUQuota=`, `TasksMax=`), so
//!   systemd knows every cgroup the pod uses.
//!
//! Registration: a pod in its unit is registered with
//! `RegisterMachineWithNetwork` (machined finds the unit from the leader's
//! cgroup); a scoped one is created with `CreateMachineWithNetwork`. Both
//! stage1s register as class `container`: machined (through systemd 259)
//! refuses `journalctl -M`, `machinectl shell` and the root directory to
//! class `vm`. A kvm pod's leader is its VMM process, which lives in the
//! pod's root filesystem (the journal the guest's journald writes over
//! virtio-fs is at its /var/log/journal), so `journalctl -M` reads it; see
//! docs/host-integration.md for what machinectl can and cannot do with it.

use crate::PodSpec;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{option} needs the {controller} controller, which systemd does not delegate to {unit} (give the unit Delegate=yes)")]
    NotDelegated {
        option: &'static str,
        controller: &'static str,
        unit: String,
    },
    #[error("cannot move the supervisor into {path}")]
    Supervisor {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach systemd-machined on the system bus")]
    Bus(#[source] zbus::Error),
    #[error("machined refused to {what} machine {name}")]
    Machined {
        what: &'static str,
        name: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("the pod's leader (pid {0}) is in no cgroup systemd knows")]
    NoScope(i32),
}

/// Did systemd boot this host?
pub fn booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Where a pod's cgroup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// berth's own tree: this path in every hierarchy.
    Berth(PathBuf),
    /// Below the cgroup of the service unit running us (`<unit>/pod`).
    Unit {
        unit_name: String,
        unit: PathBuf,
        /// Does the unit delegate its cgroup to us (`Delegate=yes`)?
        delegated: bool,
    },
    /// A scope machined creates for the leader.
    Scope,
}

impl Placement {
    /// The pod's cgroup, when it is known before the leader exists.
    pub fn pod_cgroup(&self) -> Option<PathBuf> {
        match self {
            Placement::Berth(p) => Some(p.clone()),
            Placement::Unit { unit, .. } => Some(unit.join("pod")),
            Placement::Scope => None,
        }
    }
}

/// The unified (or, on a hybrid host without it, name=systemd) cgroup path
/// of `pid` ("self" for us).
pub fn cgroup_of(pid: &str) -> Result<PathBuf, SystemdError> {
    let path = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&path).map_err(|source| SystemdError::Read {
        path: path.clone(),
        source,
    })?;
    let pick = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(PathBuf::from)
    };
    pick("0::")
        .filter(|p| p != Path::new("/"))
        .or_else(|| {
            text.lines().find_map(|l| {
                l.split_once(":name=systemd:")
                    .map(|(_, p)| PathBuf::from(p))
            })
        })
        .or_else(|| pick("0::"))
        .ok_or(SystemdError::NoScope(pid.parse().unwrap_or(0)))
}

/// Decide where the pod's cgroup goes (see the module docs).
pub fn placement(spec: &PodSpec) -> Result<Placement, SystemdError> {
    if !booted() || std::env::var_os("BERTH_NO_SYSTEMD").is_some() {
        return Ok(Placement::Berth(crate::cgroup::pod_cgroup_path(&spec.uuid)));
    }
    let mut own = cgroup_of("self")?;
    // We may already sit in <unit>/supervisor (a stage1 started by stage0).
    if own.file_name().and_then(|n| n.to_str()) == Some("supervisor") {
        own = own.parent().map(Path::to_path_buf).unwrap_or(own);
    }
    let name = own
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.ends_with(".service") {
        return Ok(Placement::Scope);
    }
    let delegated = (std::env::var_os("BERTH_DELEGATED").is_some()
        && name == format!("berth@{}.service", spec.name))
        || delegate_xattr(&own);
    Ok(Placement::Unit {
        unit_name: name,
        unit: own,
        delegated,
    })
}

/// systemd (251+) marks a delegated cgroup with `trusted.delegate=1`
/// (`user.delegate` for user managers).
fn delegate_xattr(cgroup: &Path) -> bool {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(|root| Path::new(root).join(rel))
        .any(|dir| {
            ["trusted.delegate", "user.delegate"].iter().any(|attr| {
                let (Ok(p), Ok(a)) = (
                    std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()),
                    std::ffi::CString::new(*attr),
                ) else {
                    return false;
                };
                let mut v = [0u8; 8];
                // SAFETY: getxattr writes at most v.len() bytes into `v`;
                // the strings are NUL-terminated and outlive the call.
                let n = unsafe {
                    libc::getxattr(p.as_ptr(), a.as_ptr(), v.as_mut_ptr().cast(), v.len())
                };
                n > 0 && v[0] == b'1'
            })
        })
}

/// A unit that does not delegate its cgroup: no limit may be asked for.
pub fn check_undelegated(unit_name: &str, spec: &PodSpec) -> Result<(), SystemdError> {
    match needed(spec, false).first() {
        Some((option, controller)) => Err(SystemdError::NotDelegated {
            option,
            controller,
            unit: unit_name.to_string(),
        }),
        None => Ok(()),
    }
}

/// Before the pod's first process: get a unit's cgroup ready (see
/// [`prepare_delegated`]), or check that nothing needs a controller an
/// undelegating unit does not give.
pub fn prepare(placement: &Placement, spec: &PodSpec) -> Result<(), SystemdError> {
    match placement {
        Placement::Unit {
            unit_name,
            unit,
            delegated: true,
        } => prepare_delegated(unit_name, unit, spec),
        Placement::Unit {
            unit_name,
            delegated: false,
            ..
        } => check_undelegated(unit_name, spec),
        _ => Ok(()),
    }
}

/// The controllers a pod's limits need, with the option that asks.
fn needed(spec: &PodSpec, kvm: bool) -> Vec<(&'static str, &'static str)> {
    let r = &spec.resources;
    let mut v = Vec::new();
    if r.memory.is_some() || kvm {
        v.push(("--memory", "memory"));
    }
    if r.cpu_millis.is_some() {
        v.push(("--cpus", "cpu"));
    }
    if r.pids.is_some() || kvm {
        v.push(("--pids", "pids"));
    }
    v
}

/// Inside our unit: move every process of the unit's own cgroup (stage0 and
/// us) into `<unit>/supervisor`, and check that the controllers the pod's
/// limits need are delegated. Then the pod's cgroup `<unit>/pod` can have
/// them.
pub fn prepare_delegated(unit_name: &str, unit: &Path, spec: &PodSpec) -> Result<(), SystemdError> {
    let rel = unit.strip_prefix("/").unwrap_or(unit);
    let unified = Path::new("/sys/fs/cgroup").join(rel);
    let hybrid_unified = Path::new("/sys/fs/cgroup/unified").join(rel);
    // The v2 tree of the unit (the unified hierarchy of a hybrid host).
    let v2 = [&unified, &hybrid_unified]
        .into_iter()
        .find(|d| d.join("cgroup.procs").exists() && d.join("cgroup.controllers").exists())
        .cloned();
    let pure_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    for (option, controller) in needed(spec, spec.kvm.is_some()) {
        let delegated = if pure_v2 {
            v2.as_ref().is_some_and(|d| {
                std::fs::read_to_string(d.join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|x| x == controller))
            })
        } else {
            // v1: the unit has a cgroup of its own in the controller's
            // hierarchy, and it is writable.
            let dir = Path::new("/sys/fs/cgroup").join(controller).join(rel);
            dir.is_dir() && nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_ok()
        };
        if !delegated {
            return Err(SystemdError::NotDelegated {
                option,
                controller,
                unit: unit_name.to_string(),
            });
        }
    }
    // Every hierarchy where the unit has a cgroup: its processes go to
    // <unit>/supervisor (only the v2 rule needs it, but one layout is
    // simpler to reason about).
    let mut dirs: Vec<PathBuf> = v2.into_iter().collect();
    if !pure_v2 {
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let d = e.path().join(rel);
                if d.join("cgroup.procs").exists() && !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
    }
    for d in dirs {
        let sup = d.join("supervisor");
        let err = |source| SystemdError::Supervisor {
            path: sup.display().to_string(),
            source,
        };
        match std::fs::create_dir(&sup) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(e)),
        }
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).map_err(err)?;
        for pid in procs.lines().filter(|l| !l.trim().is_empty()) {
            // A process that exits meanwhile is no error.
            let _ = std::fs::write(sup.join("cgroup.procs"), pid.trim());
        }
        if pure_v2 || d.starts_with("/sys/fs/cgroup/unified") {
            // Delegate the controllers the pod needs to its subtree.
            let avail = std::fs::read_to_string(d.join("cgroup.controllers")).unwrap_or_default();
            let want: Vec<String> = avail
                .split_whitespace()
                .filter(|c| ["memory", "pids", "cpu", "io"].contains(c))
                .map(|c| format!("+{c}"))
                .collect();
            if !want.is_empty() {
                let _ = std::fs::write(d.join("cgroup.subtree_control"), want.join(" "));
            }
        }
    }
    Ok(())
}

/// A pod's registration with machined.
pub struct Machine<'a> {
    pub spec: &'a PodSpec,
    /// The process machined watches (ns: the pod's PID 1; kvm: the VMM).
    pub leader: i32,
    /// The leader's root directory as the host names it.
    pub root_directory: &'a Path,
    /// Host-side network interfaces of the pod (its veth end or tap).
    pub ifindices: Vec<i32>,
}

fn machine_id(spec: &PodSpec) -> Vec<u8> {
    (0..16)
        .filter_map(|i| u8::from_str_radix(spec.machine_id.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn machined(
    conn: &zbus::blocking::Connection,
    method: &str,
    body: &(impl serde::Serialize + zbus::zvariant::DynamicType),
) -> zbus::Result<()> {
    conn.call_method(
        Some("org.freedesktop.machine1"),
        "/org/freedesktop/machine1",
        Some("org.freedesktop.machine1.Manager"),
        method,
        body,
    )
    .map(drop)
}

impl Machine<'_> {
    /// Register a pod whose leader is in our unit's delegated subtree
    /// (machined attributes it to that unit).
    pub fn register(&self) -> Result<(), SystemdError> {
        let conn = zbus::blocking::Connection::system().map_err(SystemdError::Bus)?;
        let root = self.root_directory.to_string_lossy().into_owned();
        machined(
            &conn,
            "RegisterMachineWithNetwork",
            &(
                self.spec.name.as_str(),
                machine_id(self.spec),
                "berth",
                "container",
                self.leader as u32,
                root.as_str(),
                self.ifindices.clone(),
            ),
        )
        .map_err(|source| SystemdError::Machined {
            what: "register",
            name: self.spec.name.clone(),
            source: Box::new(source),
        })
    }

    /// Create the pod's scope in machine.slice (moving the leader into it)
    /// with the pod's limits, and register it. Returns the scope's cgroup.
    pub fn create_scope(&self) -> Result<PathBuf, SystemdError> {
        use zbus::zvariant::Value;
        let conn = zbus::blocking::Connection::system().map_err(SystemdError::Bus)?;
        let r = &self.spec.resources;
        let mut props: Vec<(&str, Value)> = vec![
            ("Delegate", Value::from(true)),
            (
                "Description",
                Value::from(format!("berth pod {}", self.spec.name)),
            ),
        ];
        if self.spec.service.is_some() {
            // Stopping the scope halts the pod's systemd.
            props.push(("KillSignal", Value::from(libc::SIGRTMIN() + 3)));
        }
        if let Some(m) = r.memory {
            props.push(("MemoryMax", Value::from(m)));
        }
        if let Some(c) = r.cpu_millis {
            props.push(("CPUQuotaPerSecUSec", Value::from(u64::from(c) * 1000)));
        }
        if let Some(p) = r.pids {
            props.push(("TasksMax", Value::from(u64::from(p))));
        }
        let root = self.root_directory.to_string_lossy().into_owned();
        machined(
            &conn,
            "CreateMachineWithNetwork",
            &(
                self.spec.name.as_str(),
                machine_id(self.spec),
                "berth",
                "container",
                self.leader as u32,
                root.as_str(),
                self.ifindices.clone(),
                props,
            ),
        )
        .map_err(|source| SystemdError::Machined {
            what: "create",
            name: self.spec.name.clone(),
            source: Box::new(source),
        })?;
        let cg = cgroup_of(&self.leader.to_string())?;
        if cg == Path::new("/") {
            return Err(SystemdError::NoScope(self.leader));
        }
        Ok(cg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_the_specs() {
        let spec = PodSpec::new(
            "w",
            "0b9f3c2e-6a1d-4c8e-9f00-1234567890ab",
            vec!["x".into()],
            "/i",
        );
        let id = machine_id(&spec);
        assert_eq!(id.len(), 16);
        assert_eq!(id[0], 0x0b);
        assert_eq!(id[15], 0xab);
    }

    #[test]
    fn placements() {
        let p = Placement::Unit {
            unit_name: "berth@w.service".into(),
            unit: "/machine.slice/berth@w.service".into(),
            delegated: true,
        };
        assert_eq!(
            p.pod_cgroup(),
            Some(PathBuf::from("/machine.slice/berth@w.service/pod"))
        );
        assert_eq!(Placement::Scope.pod_cgroup(), None);
        // This machine: no systemd, so berth's own tree.
        if !booted() {
            let spec = PodSpec::new(
                "w",
                "0b9f3c2e-6a1d-4c8e-9f00-1234567890ab",
                vec!["x".into()],
                "/i",
            );
            assert_eq!(
                placement(&spec).unwrap(),
                Placement::Berth("/berth/0b9f3c2e-6a1d-4c8e-9f00-1234567890ab".into())
            );
        }
    }
}

/// Everything [`place`] needs to put a pod's leader where it belongs.
pub struct Place<'a> {
    pub pod: &'a crate::PodDir,
    pub spec: &'a PodSpec,
    pub placement: &'a Placement,
    pub leader: i32,
    /// Other processes to put in the pod's cgroup (kvm: the VMM, whose
    /// leader is a small process rooted in the pod's root filesystem).
    pub members: Vec<i32>,
    pub root_directory: &'a Path,
    pub ifindices: Vec<i32>,
    /// The limits of the leader's cgroup (ns: the pod's; kvm: the VMM's).
    pub limits: &'a crate::Resources,
    /// The devices it may open.
    pub devices: &'a [crate::Device],
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error(transparent)]
    Record(#[from] crate::state::StateError),
}

/// Is this machined error "machined is not there" (no bus, not installed)?
fn machined_missing(e: &SystemdError) -> bool {
    match e {
        SystemdError::Bus(_) => true,
        SystemdError::Machined { source, .. } => {
            let s = source.to_string();
            s.contains("ServiceUnknown") || s.contains("was not provided by any")
        }
        _ => false,
    }
}

/// Put the pod's leader in its cgroup (limits and device policy applied),
/// record that cgroup, and register the pod with machined. On a systemd
/// host without machined, registration is skipped with a warning (and a
/// pod that needed a scope falls back to berth's own tree).
pub fn place(p: &Place) -> Result<crate::cgroup::PodCgroup, PlaceError> {
    use crate::cgroup::{self, PodCgroup};
    let machine = Machine {
        spec: p.spec,
        leader: p.leader,
        root_directory: p.root_directory,
        ifindices: p.ifindices.clone(),
    };
    if *p.placement == Placement::Scope {
        match machine.create_scope() {
            Ok(cg) => {
                cgroup::record(p.pod, &cg)?;
                let c = PodCgroup::open(&cg)?;
                // On a hybrid host systemd makes the scope's cgroup only in
                // the hierarchies it manages: the rest (devices among them)
                // are made here, at the same path.
                c.add(p.leader)?;
                for m in &p.members {
                    c.add(*m)?;
                }
                c.apply_devices(p.devices)?;
                return Ok(c);
            }
            Err(e) if machined_missing(&e) => log::warn!(
                "no systemd-machined here ({}): pod {} runs in berth's own cgroup tree, unregistered",
                crate::ErrorChain(&e),
                p.spec.name
            ),
            Err(e) => return Err(e.into()),
        }
    }
    let rel = p
        .placement
        .pod_cgroup()
        .unwrap_or_else(|| cgroup::pod_cgroup_path(&p.spec.uuid));
    cgroup::record(p.pod, &rel)?;
    let c = PodCgroup::open(&rel)?;
    c.add(p.leader)?;
    for m in &p.members {
        c.add(*m)?;
    }
    match p.placement {
        // Not delegated: no controllers of ours (and none asked for).
        Placement::Unit {
            delegated: false, ..
        } => c.apply_devices(p.devices)?,
        _ => c.apply(p.limits, p.devices)?,
    }
    if matches!(p.placement, Placement::Unit { .. }) {
        match machine.register() {
            Ok(()) => {}
            Err(e) if machined_missing(&e) => log::warn!(
                "no systemd-machined here ({}): pod {} is not registered",
                crate::ErrorChain(&e),
                p.spec.name
            ),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(c)
}

//! Process confinement applied just before the app is exec'd: the
//! security label, capability sets, no_new_privs, Landlock, user/group
//! switch and the default seccomp filter.
//!
//! Order matters and is fixed in [`confine`]: the exec label is written
//! first (to the pod's /proc/thread-self, as the task itself, before any
//! uid change); the bounding set is reduced while we still hold
//! CAP_SETPCAP; Landlock is enforced after no_new_privs (or, without it,
//! while we still hold CAP_SYS_ADMIN) and before seccomp (a caller's
//! profile need not allow the landlock calls); the uid switch happens
//! while we still hold CAP_SETUID/SETGID; the remaining sets are trimmed
//! after it; seccomp is loaded last so the filter never has to allow
//! berth's own set-up calls.

use berth_spec::confine::{ConfineError, Policy};
use berth_spec::label::{check_active, LabelError, PreparedLabel};
use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::BpfProgram;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Confine(#[from] ConfineError),
    #[error("cannot drop {cap} from the bounding set")]
    DropBounding {
        cap: Capability,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot set the {set:?} capability set")]
    SetCaps {
        set: CapSet,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] nix::Error),
    #[error("cannot switch to uid {uid} gid {gid}")]
    User {
        uid: u32,
        gid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("cannot load the seccomp filter")]
    SeccompLoad(#[source] seccompiler::Error),
    #[error(transparent)]
    Label(#[from] LabelError),
    #[error(transparent)]
    Landlock(#[from] berth_spec::landlock::LandlockError),
}

/// Everything [`confine`] needs, computed before forking so that the child
/// only makes syscalls.
pub struct Confinement {
    pub keep: CapsHashSet,
    pub uid: u32,
    pub gid: u32,
    pub no_new_privs: bool,
    pub filters: Vec<BpfProgram>,
    /// Supplementary groups besides `gid` (an OCI pod's `additionalGids`).
    pub groups: Vec<u32>,
    /// `--security-label`, resolved against the host's policy.
    pub label: Option<PreparedLabel>,
    /// Landlock (None: off, or no Landlock in the kernel); set by `run`
    /// and `exec`, which know who the process is ([`crate::landlock`]).
    pub landlock: Option<crate::landlock::Plan>,
}

impl Confinement {
    /// Called on the host (before joining or building the pod's mount
    /// namespace): the label is checked and resolved against the host's
    /// LSM and policy here.
    pub fn from_spec(spec: &berth_spec::PodSpec) -> Result<Confinement, SecurityError> {
        let p = Policy::from_spec(spec)?;
        let root = std::path::Path::new("/");
        let label = match &spec.security.label {
            Some(l) => {
                check_active(l, root)?;
                Some(l.prepare(root))
            }
            None => None,
        };
        Ok(Confinement {
            label,
            landlock: None,
            keep: p.keep,
            uid: spec.app.user.uid,
            gid: spec.app.user.gid,
            no_new_privs: p.no_new_privs,
            filters: p.filters,
            groups: spec
                .oci
                .as_ref()
                .map(|o| o.additional_gids.clone())
                .unwrap_or_default(),
        })
    }
}

/// Apply the confinement to the calling process (the app, just before exec).
/// A capability the host withholds from berth itself (not in our bounding
/// set) cannot be given to the pod and is left out.
pub fn confine(c: &Confinement) -> Result<(), SecurityError> {
    if let Some(l) = &c.label {
        l.apply()?;
    }
    let held: CapsHashSet = c
        .keep
        .iter()
        .copied()
        .filter(|cap| caps::has_cap(None, CapSet::Bounding, *cap).unwrap_or(false))
        .collect();
    let c = &Confinement {
        keep: held,
        uid: c.uid,
        gid: c.gid,
        no_new_privs: c.no_new_privs,
        filters: c.filters.clone(),
        groups: c.groups.clone(),
        label: None,
        landlock: c.landlock,
    };
    for cap in caps::all() {
        if !c.keep.contains(&cap) {
            match caps::drop(None, CapSet::Bounding, cap) {
                Ok(()) => {}
                // Capabilities newer than the running kernel cannot be dropped
                // because they do not exist.
                Err(_) if !caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(true) => {}
                Err(source) => return Err(SecurityError::DropBounding { cap, source }),
            }
        }
    }
    if c.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(SecurityError::NoNewPrivs)?;
    }
    if let Some(plan) = &c.landlock {
        crate::landlock::apply(plan)?;
    }
    if !c.no_new_privs {
        // Without no_new_privs, loading a filter takes CAP_SYS_ADMIN,
        // which the app usually does not keep: load it now, while we
        // still hold it (the filter must allow the few calls left:
        // setgroups, setres[ug]id, capset — berth's and OCI profiles do).
        for f in &c.filters {
            seccompiler::apply_filter(f).map_err(SecurityError::SeccompLoad)?;
        }
    }
    let user_err = |source| SecurityError::User {
        uid: c.uid,
        gid: c.gid,
        source,
    };
    let gid = nix::unistd::Gid::from_raw(c.gid);
    let uid = nix::unistd::Uid::from_raw(c.uid);
    let groups: Vec<nix::unistd::Gid> = std::iter::once(c.gid)
        .chain(c.groups.iter().copied())
        .map(nix::unistd::Gid::from_raw)
        .collect();
    nix::unistd::setgroups(&groups).map_err(user_err)?;
    nix::unistd::setresgid(gid, gid, gid).map_err(user_err)?;
    nix::unistd::setresuid(uid, uid, uid).map_err(user_err)?;
    let keep = if c.uid == 0 {
        c.keep.clone()
    } else {
        CapsHashSet::new()
    };
    let set = |set: CapSet, value: &CapsHashSet| {
        caps::set(None, set, value).map_err(|source| SecurityError::SetCaps { set, source })
    };
    set(CapSet::Ambient, &CapsHashSet::new())?;
    set(CapSet::Inheritable, &keep)?;
    set(CapSet::Effective, &keep)?;
    set(CapSet::Permitted, &keep)?;
    if c.no_new_privs {
        for f in &c.filters {
            seccompiler::apply_filter(f).map_err(SecurityError::SeccompLoad)?;
        }
    }
    Ok(())
}

/// For `exec`, after joining the pod's namespaces and before forking the
/// command into its pid namespace: reduce this process to the pod's power,
/// so the child is never more than pod root while it is reachable from the
/// pod (with CAP_SYS_PTRACE, which overrides non-dumpable, pod root can
/// attach to it before its execve). The bounding set becomes the pod's;
/// the permitted and effective sets the pod's plus what [`confine`] still
/// needs in the child (CAP_SETUID/SETGID for the user switch, CAP_SETPCAP
/// for the inheritable set, CAP_SYS_ADMIN only to load a filter without
/// no_new_privs) and CAP_KILL, which this process keeps to forward signals
/// to a command that switched users.
pub fn limit_entering(c: &Confinement) -> Result<(), SecurityError> {
    for cap in caps::all() {
        if !c.keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|source| SecurityError::DropBounding { cap, source })?;
        }
    }
    let mut allowed = c.keep.clone();
    allowed.extend([
        Capability::CAP_SETUID,
        Capability::CAP_SETGID,
        Capability::CAP_SETPCAP,
        Capability::CAP_KILL,
    ]);
    if !c.no_new_privs && !c.filters.is_empty() {
        allowed.insert(Capability::CAP_SYS_ADMIN);
    }
    let read = |set: CapSet| {
        caps::read(None, set).map_err(|source| SecurityError::SetCaps { set, source })
    };
    let permitted: CapsHashSet = read(CapSet::Permitted)?
        .intersection(&allowed)
        .copied()
        .collect();
    let inheritable: CapsHashSet = read(CapSet::Inheritable)?
        .intersection(&permitted)
        .copied()
        .collect();
    let set = |set: CapSet, value: &CapsHashSet| {
        caps::set(None, set, value).map_err(|source| SecurityError::SetCaps { set, source })
    };
    set(CapSet::Ambient, &CapsHashSet::new())?;
    set(CapSet::Inheritable, &inheritable)?;
    set(CapSet::Effective, &permitted)?;
    set(CapSet::Permitted, &permitted)
}

/// For the pod's init once the app runs: drop every capability but
/// CAP_KILL from all sets (the bounding set too), and set no_new_privs.
pub fn keep_only_kill() -> Result<(), SecurityError> {
    let keep: CapsHashSet = [Capability::CAP_KILL].into_iter().collect();
    for cap in caps::all() {
        if cap != Capability::CAP_KILL
            && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
        {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|source| SecurityError::DropBounding { cap, source })?;
        }
    }
    let set = |set: CapSet, value: &CapsHashSet| {
        caps::set(None, set, value).map_err(|source| SecurityError::SetCaps { set, source })
    };
    set(CapSet::Ambient, &CapsHashSet::new())?;
    set(CapSet::Inheritable, &CapsHashSet::new())?;
    set(CapSet::Effective, &keep)?;
    set(CapSet::Permitted, &keep)?;
    nix::sys::prctl::set_no_new_privs().map_err(SecurityError::NoNewPrivs)
}

//! Process confinement applied just before the app is exec'd: capability
//! sets, no_new_privs, user/group switch and the default seccomp filter.
//!
//! Order matters and is fixed in [`confine`]: the bounding set is reduced while
//! we still hold CAP_SETPCAP; the uid switch happens while we still hold
//! CAP_SETUID/SETGID; the remaining sets are trimmed after it; seccomp is
//! loaded last so the filter never has to allow berth's own set-up calls.

use berth_spec::confine::{ConfineError, Policy};
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
}

impl Confinement {
    pub fn from_spec(spec: &berth_spec::PodSpec) -> Result<Confinement, SecurityError> {
        let p = Policy::from_spec(spec)?;
        Ok(Confinement {
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
    } else {
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

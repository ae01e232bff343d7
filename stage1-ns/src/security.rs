//! Process confinement applied just before the app is exec'd: capability
//! sets, no_new_privs, user/group switch and the default seccomp filter.
//!
//! Order matters and is fixed in [`confine`]: the bounding set is reduced while
//! we still hold CAP_SETPCAP; the uid switch happens while we still hold
//! CAP_SETUID/SETGID; the remaining sets are trimmed after it; seccomp is
//! loaded last so the filter never has to allow berth's own set-up calls.

use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
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
    #[error("cannot build the seccomp filter")]
    SeccompBuild(#[source] seccompiler::BackendError),
    #[error("cannot load the seccomp filter")]
    SeccompLoad(#[source] seccompiler::Error),
}

/// Parse berth capability names (`net_raw`) into a set.
pub fn parse_caps(names: &[String]) -> Result<CapsHashSet, SecurityError> {
    names
        .iter()
        .map(|n| {
            format!("CAP_{}", n.to_ascii_uppercase())
                .parse::<Capability>()
                .map_err(|_| SecurityError::UnknownCapability(n.clone()))
        })
        .collect()
}

/// Syscalls the default filter refuses with EPERM. Capabilities already stop
/// most of them; the filter removes the kernel attack surface even where a
/// capability is kept, and covers calls no capability guards (keyctl, bpf,
/// userfaultfd, perf_event_open...).
const DENIED_SYSCALLS: &[i64] = &[
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_lookup_dcookie,
    libc::SYS_acct,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_uselib,
    libc::SYS_ustat,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
    libc::SYS_nfsservctl,
    libc::SYS_quotactl,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_vhangup,
    libc::SYS_syslog,
];

/// The x32 ABI reaches the same kernel entry points with bit 30 set in the
/// syscall number (and the audit arch still x86_64), so every denied number is
/// denied in its x32 form as well. kexec_load also has an x32-only number.
const X32_SYSCALL_BIT: i64 = 0x4000_0000;
const X32_KEXEC_LOAD: i64 = 528;

/// Build berth's default filter. It is two programs: a deny-list (EPERM) and a
/// rule answering `clone3` with ENOSYS — clone3 passes its flags in memory that
/// seccomp cannot inspect, and ENOSYS (not EPERM) makes libcs fall back to
/// `clone`, whose CLONE_NEWUSER flag the first program can see and refuse.
/// Syscalls of other architectures (i386 `int 0x80`) kill the process.
pub fn default_filters() -> Result<Vec<BpfProgram>, SecurityError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in DENIED_SYSCALLS {
        rules.insert(nr, Vec::new());
        rules.insert(nr | X32_SYSCALL_BIT, Vec::new());
    }
    rules.insert(X32_KEXEC_LOAD | X32_SYSCALL_BIT, Vec::new());
    // No new user namespaces: refuse clone(CLONE_NEWUSER).
    let newuser = libc::CLONE_NEWUSER as u64;
    let clone_rule = SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(newuser),
        newuser,
    )
    .map_err(SecurityError::SeccompBuild)?])
    .map_err(SecurityError::SeccompBuild)?;
    rules.insert(libc::SYS_clone, vec![clone_rule.clone()]);
    rules.insert(libc::SYS_clone | X32_SYSCALL_BIT, vec![clone_rule]);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(SecurityError::SeccompBuild)?;
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    clone3.insert(libc::SYS_clone3 | X32_SYSCALL_BIT, Vec::new());
    let clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(SecurityError::SeccompBuild)?;
    Ok(vec![
        deny.try_into().map_err(SecurityError::SeccompBuild)?,
        clone3.try_into().map_err(SecurityError::SeccompBuild)?,
    ])
}

/// Everything [`confine`] needs, computed before forking so that the child
/// only makes syscalls.
pub struct Confinement {
    pub keep: CapsHashSet,
    pub uid: u32,
    pub gid: u32,
    pub no_new_privs: bool,
    pub filters: Vec<BpfProgram>,
}

impl Confinement {
    pub fn from_spec(spec: &berth_spec::PodSpec) -> Result<Confinement, SecurityError> {
        Ok(Confinement {
            keep: parse_caps(&spec.security.capabilities)?,
            uid: spec.app.user.uid,
            gid: spec.app.user.gid,
            no_new_privs: spec.security.no_new_privileges,
            filters: if spec.security.seccomp {
                default_filters()?
            } else {
                Vec::new()
            },
        })
    }
}

/// Apply the confinement to the calling process (the app, just before exec).
pub fn confine(c: &Confinement) -> Result<(), SecurityError> {
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
    let user_err = |source| SecurityError::User {
        uid: c.uid,
        gid: c.gid,
        source,
    };
    let gid = nix::unistd::Gid::from_raw(c.gid);
    let uid = nix::unistd::Uid::from_raw(c.uid);
    nix::unistd::setgroups(&[gid]).map_err(user_err)?;
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
    for f in &c.filters {
        seccompiler::apply_filter(f).map_err(SecurityError::SeccompLoad)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_caps_parse_and_exclude_dangerous_ones() {
        let keep = parse_caps(&berth_spec::Security::default().capabilities).unwrap();
        for bad in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SYS_MODULE,
            Capability::CAP_SYS_RAWIO,
            Capability::CAP_SYS_TIME,
            Capability::CAP_MAC_ADMIN,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_NET_ADMIN,
        ] {
            assert!(!keep.contains(&bad), "{bad} must not be kept");
        }
        assert!(keep.contains(&Capability::CAP_NET_BIND_SERVICE));
    }

    #[test]
    fn unknown_capability_named() {
        let err = parse_caps(&["frobnicate".to_string()]).unwrap_err();
        assert!(err.to_string().contains("frobnicate"));
    }

    #[test]
    fn filters_build() {
        let f = default_filters().unwrap();
        assert_eq!(f.len(), 2);
        // The deny list compiles to a linear program well within BPF's limit.
        assert!(f[0].len() < 1024, "filter has {} instructions", f[0].len());
    }
}

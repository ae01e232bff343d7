//! The confinement both stage1s give the app (feature `confine`): the
//! capability names, the default seccomp filter and the masked and
//! read-only paths of /proc and /sys. The ns stage1 applies them in its
//! pod's namespaces, guest-init inside the VM, so `--cap-add/--cap-drop`
//! and `--security-opt`-style settings mean the same on both.

use caps::{Capability, CapsHashSet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("cannot build the seccomp filter")]
    SeccompBuild(#[source] seccompiler::BackendError),
}

/// Files masked with /dev/null (or an empty read-only tmpfs for
/// directories), as runc's default `maskedPaths`.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only, as runc's default `readonlyPaths`.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What a pod's [`crate::Security`] asks of its app's process, prepared
/// before fork: the capabilities it keeps, no_new_privs, and the seccomp
/// programs (none with seccomp off). Each stage1 applies it its own way.
#[derive(Debug, Clone)]
pub struct Policy {
    pub keep: CapsHashSet,
    pub no_new_privs: bool,
    pub filters: Vec<BpfProgram>,
}

impl Policy {
    pub fn from_security(sec: &crate::Security) -> Result<Policy, ConfineError> {
        Ok(Policy {
            keep: parse_caps(&sec.capabilities)?,
            no_new_privs: sec.no_new_privileges,
            filters: match (sec.seccomp, sec.seccomp_profile) {
                (false, _) => Vec::new(),
                (true, crate::SeccompProfile::Default) => default_filters()?,
                (true, crate::SeccompProfile::Systemd) => systemd_filters()?,
            },
        })
    }
}

/// Parse berth capability names (`net_raw`) into a set.
pub fn parse_caps(names: &[String]) -> Result<CapsHashSet, ConfineError> {
    names
        .iter()
        .map(|n| {
            format!("CAP_{}", n.to_ascii_uppercase())
                .parse::<Capability>()
                .map_err(|_| ConfineError::UnknownCapability(n.clone()))
        })
        .collect()
}

/// The capability set as the bit mask `capset(2)` takes (bit N = capability N).
pub fn cap_mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
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
    // io_uring: a second syscall interface whose operations seccomp cannot
    // see (and a rich source of kernel bugs); libraries fall back.
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// What the systemd profile allows beyond the default: systemd (PID 1 of a
/// service pod) and its units mount file systems and make namespaces for
/// their sandboxing (PrivateTmp=, ProtectSystem=, PrivateUsers=…), and use
/// kernel keyrings — inside the pod's own mount namespace, as with
/// systemd-nspawn.
const SYSTEMD_ALLOWED: &[i64] = &[
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
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
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
pub fn default_filters() -> Result<Vec<BpfProgram>, ConfineError> {
    filters(&[], true)
}

/// The filter of a service pod (systemd as PID 1): the default one minus
/// [`SYSTEMD_ALLOWED`], and user namespaces allowed. clone3 still answers
/// ENOSYS; kexec, modules, bpf, perf, io_uring, raw I/O and the rest stay
/// refused.
pub fn systemd_filters() -> Result<Vec<BpfProgram>, ConfineError> {
    filters(SYSTEMD_ALLOWED, false)
}

fn filters(allowed: &[i64], deny_newuser: bool) -> Result<Vec<BpfProgram>, ConfineError> {
    // `nr` in its native and its x32 form.
    fn both_abis(rules: &mut BTreeMap<i64, Vec<SeccompRule>>, nr: i64, r: Vec<SeccompRule>) {
        rules.insert(nr | X32_SYSCALL_BIT, r.clone());
        rules.insert(nr, r);
    }
    // Everything in `rules` fails with `errno`, the rest is allowed.
    fn program(
        rules: BTreeMap<i64, Vec<SeccompRule>>,
        errno: i32,
    ) -> Result<BpfProgram, ConfineError> {
        SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            TargetArch::x86_64,
        )
        .and_then(BpfProgram::try_from)
        .map_err(ConfineError::SeccompBuild)
    }

    let mut deny = BTreeMap::new();
    for &nr in DENIED_SYSCALLS.iter().filter(|nr| !allowed.contains(nr)) {
        both_abis(&mut deny, nr, Vec::new());
    }
    deny.insert(X32_KEXEC_LOAD | X32_SYSCALL_BIT, Vec::new());
    // No new user namespaces: refuse clone(CLONE_NEWUSER).
    let newuser = libc::CLONE_NEWUSER as u64;
    let clone_rule = SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(newuser),
        newuser,
    )
    .map_err(ConfineError::SeccompBuild)?])
    .map_err(ConfineError::SeccompBuild)?;
    if deny_newuser {
        both_abis(&mut deny, libc::SYS_clone, vec![clone_rule]);
    }
    // No AF_VSOCK sockets: vsock is not namespaced, so an ns pod could reach
    // the host's vsock services, and a guest process guest-init's ports.
    let vsock_rule = SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_VSOCK as u64,
    )
    .map_err(ConfineError::SeccompBuild)?])
    .map_err(ConfineError::SeccompBuild)?;
    both_abis(&mut deny, libc::SYS_socket, vec![vsock_rule]);
    let mut clone3 = BTreeMap::new();
    both_abis(&mut clone3, libc::SYS_clone3, Vec::new());
    Ok(vec![
        program(deny, libc::EPERM)?,
        program(clone3, libc::ENOSYS)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_caps_parse_and_exclude_dangerous_ones() {
        let keep = parse_caps(&crate::Security::default().capabilities).unwrap();
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
        let mask = cap_mask(&keep);
        assert_eq!(mask.count_ones() as usize, keep.len());
        assert_ne!(mask & (1 << 10), 0, "CAP_NET_BIND_SERVICE is bit 10");
        assert_eq!(mask & (1 << 21), 0, "CAP_SYS_ADMIN is bit 21");
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

    #[test]
    fn path_lists() {
        assert!(MASKED_PATHS.contains(&"/proc/kcore"));
        assert!(READONLY_PATHS.contains(&"/proc/sysrq-trigger"));
        assert!(READONLY_PATHS.contains(&"/proc/sys"));
    }
}

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

impl Policy {
    /// The pod's policy: [`Policy::from_security`], with an OCI pod's own
    /// seccomp profile (or none) in place of berth's filter.
    pub fn from_spec(spec: &crate::PodSpec) -> Result<Policy, ConfineError> {
        let mut p = Policy::from_security(&spec.security)?;
        if let Some(o) = &spec.oci {
            p.filters = match &o.seccomp {
                Some(rules) => custom_filters(rules)?,
                None => Vec::new(),
            };
        }
        Ok(p)
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

/// Compile a caller's seccomp profile ([`crate::oci::SeccompRules`], the
/// runtime-spec's `linux.seccomp`) with seccompiler. A profile gives each
/// syscall (with argument conditions) an action and everything else the
/// default; seccompiler's filters have one match action each, so the
/// profile becomes one program per action other than the default (its
/// syscalls, native and x32 numbers → that action, the rest allowed) and,
/// unless the default is to allow, one program allowing every syscall the
/// profile names (native numbers only) and giving the rest the default.
/// The kernel runs every program and takes the most restrictive answer,
/// which is the profile's. Names the running kernel's table does not know
/// are skipped, as libseccomp does.
pub fn custom_filters(p: &crate::oci::SeccompRules) -> Result<Vec<BpfProgram>, ConfineError> {
    use crate::oci::{SeccompAction as A, SeccompOp};
    let action = |a: A, errno: Option<u32>| match a {
        A::Allow => SeccompAction::Allow,
        A::Errno => SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32)),
        A::KillThread => SeccompAction::KillThread,
        A::KillProcess => SeccompAction::KillProcess,
        A::Trap => SeccompAction::Trap,
        A::Log => SeccompAction::Log,
    };
    let default = action(p.default_action, p.default_errno);
    let mut by_action: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> = Vec::new();
    let mut allowed: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // Adds `rule` (None: unconditional) for `nr`; an unconditional entry
    // (an empty rule list) wins over conditional ones.
    fn add(map: &mut BTreeMap<i64, Vec<SeccompRule>>, nr: i64, rule: Option<&SeccompRule>) {
        match (map.get_mut(&nr), rule) {
            (Some(v), Some(r)) if !v.is_empty() => v.push(r.clone()),
            (Some(_), Some(_)) => {}
            (Some(v), None) => v.clear(),
            (None, r) => {
                map.insert(nr, r.into_iter().cloned().collect());
            }
        }
    }
    for r in &p.syscalls {
        let act = action(r.action, r.errno);
        if act == default {
            continue;
        }
        let rule = if r.args.is_empty() {
            None
        } else {
            let conds = r
                .args
                .iter()
                .map(|a| {
                    let op = match a.op {
                        SeccompOp::Ne => SeccompCmpOp::Ne,
                        SeccompOp::Lt => SeccompCmpOp::Lt,
                        SeccompOp::Le => SeccompCmpOp::Le,
                        SeccompOp::Eq => SeccompCmpOp::Eq,
                        SeccompOp::Ge => SeccompCmpOp::Ge,
                        SeccompOp::Gt => SeccompCmpOp::Gt,
                        SeccompOp::MaskedEq => SeccompCmpOp::MaskedEq(a.value),
                    };
                    let value = if a.op == SeccompOp::MaskedEq {
                        a.value_two
                    } else {
                        a.value
                    };
                    SeccompCondition::new(a.index, SeccompCmpArgLen::Qword, op, value)
                        .map_err(ConfineError::SeccompBuild)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(SeccompRule::new(conds).map_err(ConfineError::SeccompBuild)?)
        };
        let nrs: Vec<i64> = r
            .names
            .iter()
            .filter_map(|n| n.parse::<syscalls::Sysno>().ok())
            .map(|s| s.id() as i64)
            .collect();
        if act != SeccompAction::Allow {
            let slot = match by_action.iter().position(|(a, _)| *a == act) {
                Some(i) => i,
                None => {
                    by_action.push((act.clone(), BTreeMap::new()));
                    by_action.len() - 1
                }
            };
            for &nr in &nrs {
                add(&mut by_action[slot].1, nr, rule.as_ref());
                add(&mut by_action[slot].1, nr | X32_SYSCALL_BIT, rule.as_ref());
            }
        }
        for &nr in &nrs {
            add(&mut allowed, nr, rule.as_ref());
        }
    }
    let program = |rules, mismatch, matched| {
        SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
            .and_then(BpfProgram::try_from)
            .map_err(ConfineError::SeccompBuild)
    };
    let mut out = Vec::new();
    for (act, rules) in by_action {
        if !rules.is_empty() {
            out.push(program(rules, SeccompAction::Allow, act)?);
        }
    }
    if default != SeccompAction::Allow {
        out.push(program(allowed, default, SeccompAction::Allow)?);
    }
    Ok(out)
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
    fn custom_profiles_compile() {
        use crate::oci::{SeccompAction as A, SeccompArg, SeccompOp, SeccompRules, SyscallRule};
        let p = SeccompRules {
            default_action: A::Errno,
            default_errno: Some(1),
            syscalls: vec![
                SyscallRule {
                    names: vec!["read".into(), "write".into(), "no_such_call".into()],
                    action: A::Allow,
                    errno: None,
                    args: vec![],
                },
                SyscallRule {
                    names: vec!["personality".into()],
                    action: A::Allow,
                    errno: None,
                    args: vec![SeccompArg {
                        index: 0,
                        value: 8,
                        value_two: 0,
                        op: SeccompOp::Eq,
                    }],
                },
                SyscallRule {
                    names: vec!["clone3".into()],
                    action: A::Errno,
                    errno: Some(38),
                    args: vec![],
                },
            ],
        };
        // ENOSYS for clone3, then the allow-list with EPERM for the rest.
        assert_eq!(custom_filters(&p).unwrap().len(), 2);
        let allow_all = SeccompRules {
            default_action: A::Allow,
            default_errno: None,
            syscalls: vec![SyscallRule {
                names: vec!["mkdir".into()],
                action: A::Errno,
                errno: None,
                args: vec![],
            }],
        };
        assert_eq!(custom_filters(&allow_all).unwrap().len(), 1);
    }

    #[test]
    fn path_lists() {
        assert!(MASKED_PATHS.contains(&"/proc/kcore"));
        assert!(READONLY_PATHS.contains(&"/proc/sysrq-trigger"));
        assert!(READONLY_PATHS.contains(&"/proc/sys"));
    }
}

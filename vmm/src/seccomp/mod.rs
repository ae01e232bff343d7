//! Per-thread seccomp filters for the VMM (issue 14, "a jailed VMM").
//!
//! Two kinds of threads touch guest input, and each gets its own allow-list,
//! measured from the syscalls they make (strace of real pods: busybox with a
//! virtio-fs volume written as root and as a non-root user, network,
//! vsock `berth exec`s; and the vmm boot test):
//!
//! - **vCPU threads** ([`ThreadKind::Vcpu`]): `KVM_RUN` and the few vCPU
//!   ioctls of the PVM fixups, the port-I/O and MMIO device emulation that
//!   runs on them (serial output to the console writer, which may rotate a
//!   [`crate::console_log::RotatingLog`]; eventfd writes; device resets
//!   closing files; a virtio-fs reset re-opening the share's root; no disk
//!   or file-system I/O, which activation leaves to the event loop), memory
//!   allocation without `PROT_EXEC`, and thread exit.
//!   Installed by the thread itself before its first `KVM_RUN`.
//! - **the event loop** ([`ThreadKind::EventLoop`], the thread calling
//!   [`crate::RunningVm::run`]): epoll, eventfds, block I/O, the in-process
//!   virtio-fs server (file operations as guest users: `setresuid(-1, uid,
//!   -1)`/`setresgid`, and `capset` for a non-root server, `openat`, `mknodat`, `fchownat`, `renameat2`…; no
//!   xattrs, which the share does not offer), the tap (`readv`/`writev`),
//!   vsock's unix sockets (`socket` only for `AF_UNIX`, `accept4`,
//!   `connect`, a timerfd), then stopping the vCPUs
//!   (`tgkill` with the kick signal), dropping the VM and what the stage1
//!   VMM process does after `run` returns (a report written on a pipe,
//!   `exit_group`). Installed when `run` starts its event loop.
//!
//! Neither thread may `execve`, `clone` or `ptrace`, open network sockets or
//! map executable memory. Threads started before [`crate::Vm::boot`], and the
//! `BERTH_VMM_PROFILE` development profiler thread, are not filtered.
//!
//! A syscall outside the list kills the whole VMM (`SECCOMP_RET_KILL_PROCESS`)
//! with [`SeccompLevel::Enforce`]. To find out which one it was, set
//! [`MODE_ENV`] (`BERTH_VMM_SECCOMP`) in the VMM's environment:
//!
//! - `trap`: `SECCOMP_RET_TRAP`; a `SIGSYS` handler writes
//!   `berth-vmm: seccomp: <thread kind> thread made forbidden syscall <nr> (<name>)`
//!   to stderr and exits the process with status 159 (128 + SIGSYS). The
//!   vmm tests run this way, so a missing syscall fails them by name.
//! - `log`: `SECCOMP_RET_LOG`; the syscall is allowed and the kernel logs
//!   it (`dmesg`: `audit: type=1326 … syscall=<nr>`), to collect every
//!   missing syscall of a workload in one run.

mod names;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub use names::{syscall_name, SYSCALL_NAMES};

/// Environment variable selecting the action for a forbidden syscall:
/// unset = kill the process; `trap` = report it on stderr and exit; `log` =
/// allow it and let the kernel log it.
pub const MODE_ENV: &str = "BERTH_VMM_SECCOMP";

/// Exit status of the VMM after a forbidden syscall in `trap` mode.
pub const TRAP_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// Whether the VMM's threads are confined by seccomp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompLevel {
    /// No filters (development; tests of code that is not the VMM's).
    Off,
    /// One allow-list per thread kind; anything else kills the VMM.
    #[default]
    Enforce,
}

/// What happens on a syscall outside the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `SECCOMP_RET_KILL_PROCESS`.
    Kill,
    /// `SECCOMP_RET_TRAP` and a reporting `SIGSYS` handler.
    Trap,
    /// `SECCOMP_RET_LOG`.
    Log,
}

impl Mode {
    /// The mode [`MODE_ENV`] asks for.
    pub fn from_env() -> Result<Mode, SeccompError> {
        Mode::parse(std::env::var_os(MODE_ENV).as_deref())
    }

    /// The mode a [`MODE_ENV`] value (None: unset) asks for.
    pub fn parse(value: Option<&std::ffi::OsStr>) -> Result<Mode, SeccompError> {
        match value {
            None => Ok(Mode::Kill),
            Some(v) if v.is_empty() || v == "kill" => Ok(Mode::Kill),
            Some(v) if v == "trap" => Ok(Mode::Trap),
            Some(v) if v == "log" => Ok(Mode::Log),
            Some(v) => Err(SeccompError::Mode(v.to_string_lossy().into_owned())),
        }
    }

    fn action(self) -> SeccompAction {
        match self {
            Mode::Kill => SeccompAction::KillProcess,
            Mode::Trap => SeccompAction::Trap,
            Mode::Log => SeccompAction::Log,
        }
    }
}

/// The kinds of VMM threads with a filter of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread.
    Vcpu,
    /// The thread running the device event loop ([`crate::RunningVm::run`]).
    EventLoop,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::EventLoop => "event-loop",
        }
    }
}

/// Errors building or installing the filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// [`MODE_ENV`] has a value other than `trap`, `log` or `kill`.
    #[error("{MODE_ENV}={0:?}: expected trap, log or kill")]
    Mode(String),
    /// An argument condition is invalid.
    #[error("building a seccomp argument condition")]
    Condition(#[source] seccompiler::BackendError),
    /// The filter is invalid.
    #[error("building the {0} seccomp filter")]
    Filter(&'static str, #[source] seccompiler::BackendError),
    /// Compiling the filter to BPF failed.
    #[error("compiling the {0} seccomp filter")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    /// Installing the SIGSYS handler of `trap` mode failed.
    #[error("installing the SIGSYS handler")]
    Sigsys(#[source] vmm_sys_util::errno::Error),
    /// Installing a filter failed.
    #[error("installing the {0} seccomp filter")]
    Apply(&'static str, #[source] seccompiler::Error),
}

/// The compiled filters of one VM (none with [`SeccompLevel::Off`]).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// For every vCPU thread.
    pub vcpu: Option<std::sync::Arc<BpfProgram>>,
    /// For the event-loop thread.
    pub event_loop: Option<BpfProgram>,
}

impl Filters {
    /// Compiles both filters for `level` in the mode of [`MODE_ENV`]; in
    /// `trap` mode also installs the process' SIGSYS handler.
    pub fn new(level: SeccompLevel) -> Result<Filters, SeccompError> {
        if level == SeccompLevel::Off {
            return Ok(Filters::default());
        }
        let mode = Mode::from_env()?;
        if mode == Mode::Trap {
            vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
                .map_err(SeccompError::Sigsys)?;
        }
        Ok(Filters {
            vcpu: Some(std::sync::Arc::new(compile(ThreadKind::Vcpu, mode)?)),
            event_loop: Some(compile(ThreadKind::EventLoop, mode)?),
        })
    }
}

/// Installs `prog` (a filter for `kind`) on the calling thread (and sets
/// its no_new_privs, which seccomp requires without CAP_SYS_ADMIN).
pub fn apply(kind: ThreadKind, prog: &BpfProgram) -> Result<(), SeccompError> {
    THREAD_KIND.with(|k| k.set(kind.name()));
    seccompiler::apply_filter(prog).map_err(|e| SeccompError::Apply(kind.name(), e))
}

/// The allow-list of `kind` compiled to BPF, with `mode`'s action for
/// everything else.
pub fn compile(kind: ThreadKind, mode: Mode) -> Result<BpfProgram, SeccompError> {
    let rules = match kind {
        ThreadKind::Vcpu => vcpu_rules()?,
        ThreadKind::EventLoop => event_loop_rules()?,
    };
    let filter = SeccompFilter::new(
        rules.into_iter().collect::<BTreeMap<_, _>>(),
        mode.action(),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Filter(kind.name(), e))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Compile(kind.name(), e))
}

type Rules = Vec<(i64, Vec<SeccompRule>)>;

/// Allowed whatever the arguments.
fn any(nrs: &[libc::c_long]) -> Rules {
    nrs.iter().map(|&nr| (nr, Vec::new())).collect()
}

/// Allowed when argument `arg` (32 bits) is one of `values`.
fn arg_in(
    nr: libc::c_long,
    arg: u8,
    values: &[u64],
) -> Result<(i64, Vec<SeccompRule>), SeccompError> {
    let rules = values
        .iter()
        .map(|&v| {
            let c = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                .map_err(SeccompError::Condition)?;
            SeccompRule::new(vec![c]).map_err(SeccompError::Condition)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((nr, rules))
}

/// Allowed when every `(arg, value)` holds (32-bit arguments).
fn args_eq(nr: libc::c_long, args: &[(u8, u64)]) -> Result<(i64, Vec<SeccompRule>), SeccompError> {
    let conds = args
        .iter()
        .map(|&(arg, v)| {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                .map_err(SeccompError::Condition)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        nr,
        vec![SeccompRule::new(conds).map_err(SeccompError::Condition)?],
    ))
}

/// Allowed when argument `arg` (64 bits) has none of the bits of `mask`.
fn arg_without(
    nr: libc::c_long,
    arg: u8,
    mask: u64,
) -> Result<(i64, Vec<SeccompRule>), SeccompError> {
    let c = SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(mask),
        0,
    )
    .map_err(SeccompError::Condition)?;
    Ok((
        nr,
        vec![SeccompRule::new(vec![c]).map_err(SeccompError::Condition)?],
    ))
}

/// `_IOC(dir, 0xAE, nr, size)`, as the kernel's KVM ioctls.
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
/// `KVM_RUN`.
pub const KVM_RUN: u64 = kvm_ioc(0, 0x80, 0);
/// `KVM_GET_REGS`.
pub const KVM_GET_REGS: u64 = kvm_ioc(IOC_READ, 0x81, size_of::<kvm_bindings::kvm_regs>());
/// `KVM_SET_REGS`.
pub const KVM_SET_REGS: u64 = kvm_ioc(IOC_WRITE, 0x82, size_of::<kvm_bindings::kvm_regs>());
/// `KVM_GET_VCPU_EVENTS`.
pub const KVM_GET_VCPU_EVENTS: u64 =
    kvm_ioc(IOC_READ, 0x9f, size_of::<kvm_bindings::kvm_vcpu_events>());
/// `KVM_SET_VCPU_EVENTS`.
pub const KVM_SET_VCPU_EVENTS: u64 =
    kvm_ioc(IOC_WRITE, 0xa0, size_of::<kvm_bindings::kvm_vcpu_events>());

/// What every filtered thread needs: memory management (no executable
/// mappings), futexes, signals' return, time, logging to stderr, exit.
fn common_rules() -> Result<Rules, SeccompError> {
    use libc::*;
    let mut r = any(&[
        SYS_brk,
        SYS_munmap,
        SYS_madvise,
        SYS_mremap,
        SYS_futex,
        SYS_rt_sigreturn,
        SYS_rt_sigprocmask,
        SYS_sigaltstack,
        SYS_sched_yield,
        SYS_clock_gettime,
        SYS_clock_nanosleep,
        SYS_nanosleep,
        SYS_getrandom,
        SYS_write,
        SYS_writev,
        SYS_close,
        SYS_exit,
        SYS_exit_group,
        SYS_gettid,
        SYS_getpid,
    ]);
    r.push(arg_without(SYS_mmap, 2, PROT_EXEC as u64)?);
    r.push(arg_without(SYS_mprotect, 2, PROT_EXEC as u64)?);
    Ok(r)
}

fn vcpu_rules() -> Result<Rules, SeccompError> {
    use libc::*;
    let mut r = common_rules()?;
    r.push(arg_in(
        SYS_ioctl,
        1,
        &[
            KVM_RUN,
            KVM_GET_REGS,
            KVM_SET_REGS,
            KVM_GET_VCPU_EVENTS,
            KVM_SET_VCPU_EVENTS,
        ],
    )?);
    r.extend(any(&[
        // Console log rotation (RotatingLog), the profiler's sample file.
        SYS_openat,
        SYS_rename,
        SYS_renameat,
        SYS_renameat2,
        // A virtio-fs device reset by the driver closes the guest's files
        // and opens the share's root again.
        SYS_statx,
        SYS_newfstatat,
        SYS_umask,
    ]));
    // Rust's debug builds check an fd is open before closing it.
    r.push(arg_in(SYS_fcntl, 1, &[F_GETFD as u64])?);
    Ok(r)
}

fn event_loop_rules() -> Result<Rules, SeccompError> {
    use libc::*;
    let mut r = common_rules()?;
    r.extend(any(&[
        // Event loop, eventfds, vsock's timer.
        SYS_epoll_wait,
        SYS_epoll_ctl,
        SYS_poll,
        SYS_read,
        SYS_readv,
        SYS_timerfd_settime,
        // Block and virtio-fs file I/O.
        SYS_pread64,
        SYS_preadv,
        SYS_pwrite64,
        SYS_pwritev,
        SYS_lseek,
        SYS_fsync,
        SYS_fdatasync,
        SYS_fallocate,
        SYS_ftruncate,
        // Unix sockets of the vsock host side.
        SYS_accept4,
        SYS_connect,
        SYS_recvfrom,
        SYS_sendto,
        SYS_shutdown,
        // The virtio-fs server (fuse-backend-rs passthrough, no xattrs).
        SYS_openat,
        SYS_newfstatat,
        SYS_statx,
        SYS_fstatfs,
        SYS_getdents64,
        SYS_readlinkat,
        SYS_mkdirat,
        SYS_mknodat,
        SYS_symlinkat,
        SYS_linkat,
        SYS_unlinkat,
        SYS_renameat2,
        SYS_fchownat,
        SYS_fchmod,
        SYS_fchmodat,
        SYS_utimensat,
        SYS_umask,
        SYS_dup,
        SYS_getuid,
        SYS_getgid,
        // A non-root server acting as a guest user drops its effective
        // capabilities for the operation and takes them back
        // (devices::virtio::fs::creds; capset cannot raise a capability
        // beyond the permitted set).
        SYS_capset,
        // Dropping the VM removes the vsock socket.
        SYS_unlink,
    ]));
    // Only unix sockets (vsock's guest → host connections).
    r.push(arg_in(SYS_socket, 0, &[AF_UNIX as u64])?);
    // Non-blocking accepted streams.
    r.push(arg_in(SYS_ioctl, 1, &[FIONBIO])?);
    r.push(arg_in(
        SYS_fcntl,
        1,
        &[F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC].map(|c| c as u64),
    )?);
    // The virtio-fs server acts as the guest's user by changing only this
    // thread's effective ids: setres[ug]id(-1, id, -1).
    for nr in [SYS_setresuid, SYS_setresgid] {
        r.push(args_eq(
            nr,
            &[(0, u64::from(u32::MAX)), (2, u64::from(u32::MAX))],
        )?);
    }
    // A non-root virtio-fs server re-arms the parent-death signal its
    // credential changes clear (devices::virtio::fs::creds).
    r.push(args_eq(
        SYS_prctl,
        &[(0, PR_SET_PDEATHSIG as u64), (1, SIGKILL as u64)],
    )?);
    // Kicking vCPUs out of KVM_RUN (and abort's SIGABRT, for its report).
    r.push(arg_in(
        SYS_tgkill,
        2,
        &[vmm_sys_util::signal::SIGRTMIN() as u64, SIGABRT as u64],
    )?);
    Ok(r)
}

thread_local! {
    static THREAD_KIND: std::cell::Cell<&'static str> = const { std::cell::Cell::new("unfiltered") };
}

/// `struct siginfo` as the kernel fills it for SIGSYS (`_sigsys`).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// A fixed buffer for composing the report without allocating.
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }
    fn push_num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The report line for a forbidden `nr` on a `kind` thread.
fn report_line(kind: &str, nr: i64) -> Line {
    let mut l = Line {
        buf: [0; 160],
        len: 0,
    };
    l.push(b"berth-vmm: seccomp: ");
    l.push(kind.as_bytes());
    l.push(b" thread made forbidden syscall ");
    l.push_num(nr as u64);
    l.push(b" (");
    l.push(syscall_name(nr).unwrap_or("unknown").as_bytes());
    l.push(b")\n");
    l
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler;
    // for SIGSYS it is laid out as `SigsysInfo`, which is no larger.
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    // Only async-signal-safe work: a const-initialised thread local, a
    // stack buffer, write(2) and _exit(2), both allowed by every filter.
    let kind = THREAD_KIND.try_with(|k| k.get()).unwrap_or("unknown");
    let line = report_line(kind, i64::from(nr));
    // SAFETY: writes bytes of a live buffer to stderr, then ends the process.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(TRAP_EXIT_STATUS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_x86_64_in_every_mode() {
        for kind in [ThreadKind::Vcpu, ThreadKind::EventLoop] {
            for mode in [Mode::Kill, Mode::Trap, Mode::Log] {
                let prog = compile(kind, mode).unwrap();
                assert!(!prog.is_empty() && prog.len() < u16::MAX as usize);
            }
        }
    }

    #[test]
    fn kvm_ioctl_numbers() {
        // The values of linux/kvm.h on x86_64.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_REGS, 0x4090_ae82);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(KVM_SET_VCPU_EVENTS, 0x4040_aea0);
    }

    #[test]
    fn report_names_the_syscall() {
        let l = report_line("vCPU", libc::SYS_execve);
        assert_eq!(
            std::str::from_utf8(&l.buf[..l.len]).unwrap(),
            "berth-vmm: seccomp: vCPU thread made forbidden syscall 59 (execve)\n"
        );
        let l = report_line("event-loop", 100_000);
        assert!(std::str::from_utf8(&l.buf[..l.len])
            .unwrap()
            .ends_with("100000 (unknown)\n"));
        assert_eq!(syscall_name(libc::SYS_openat2), Some("openat2"));
        assert!(SYSCALL_NAMES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    const CHILD_ENV: &str = "BERTH_VMM_SECCOMP_TEST_CHILD";
    const CHILD_TEST: &str = "seccomp::tests::filters_enforce_in_a_child_process";

    /// Runs in the re-executed test binary: confines this thread as `what`
    /// says, makes one syscall, exits 0 if it returned.
    fn child(what: &str) -> ! {
        let filters = Filters::new(SeccompLevel::Enforce).unwrap();
        let (kind, call) = what.split_once(':').unwrap();
        match kind {
            "vcpu" => apply(ThreadKind::Vcpu, filters.vcpu.as_ref().unwrap()).unwrap(),
            _ => apply(ThreadKind::EventLoop, filters.event_loop.as_ref().unwrap()).unwrap(),
        }
        // SAFETY: plain syscalls on no memory of ours (or a fresh mapping).
        unsafe {
            match call {
                "getppid" => {
                    libc::getppid();
                }
                "tty-ioctl" => {
                    let mut ws: libc::winsize = std::mem::zeroed();
                    libc::ioctl(0, libc::TIOCGWINSZ, &mut ws);
                }
                "exec-mmap" => {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_EXEC,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                }
                "rw-mmap" => {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                }
                "inet-socket" => {
                    libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                }
                "unix-socket" => {
                    libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                }
                "execve" => {
                    let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                    libc::execve(argv[0], argv.as_ptr(), std::ptr::null());
                }
                _ => {}
            }
            libc::_exit(0)
        }
    }

    /// Runs `what` in a re-executed copy of this test binary, in `mode`.
    fn in_child(what: &str, mode: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, what)
            .env(MODE_ENV, mode)
            .output()
            .unwrap()
    }

    #[test]
    fn filters_enforce_in_a_child_process() {
        use std::os::unix::process::ExitStatusExt;
        if let Ok(what) = std::env::var(CHILD_ENV) {
            child(&what);
        }
        // Allowed calls return.
        for what in [
            "vcpu:rw-mmap",
            "event-loop:rw-mmap",
            "event-loop:unix-socket",
        ] {
            let out = in_child(what, "trap");
            assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
        }
        // Forbidden ones are named in trap mode...
        for (what, report) in [
            (
                "vcpu:getppid",
                "vCPU thread made forbidden syscall 110 (getppid)",
            ),
            (
                "vcpu:tty-ioctl",
                "vCPU thread made forbidden syscall 16 (ioctl)",
            ),
            (
                "vcpu:exec-mmap",
                "vCPU thread made forbidden syscall 9 (mmap)",
            ),
            (
                "vcpu:inet-socket",
                "vCPU thread made forbidden syscall 41 (socket)",
            ),
            (
                "event-loop:inet-socket",
                "event-loop thread made forbidden syscall 41 (socket)",
            ),
            (
                "event-loop:execve",
                "event-loop thread made forbidden syscall 59 (execve)",
            ),
            (
                "event-loop:exec-mmap",
                "event-loop thread made forbidden syscall 9 (mmap)",
            ),
        ] {
            let out = in_child(what, "trap");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(TRAP_EXIT_STATUS),
                "{what}: {stderr}"
            );
            assert!(stderr.contains(report), "{what}: {stderr}");
        }
        // ... and kill the process by default.
        let out = in_child("event-loop:execve", "kill");
        assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{out:?}");
    }

    #[test]
    fn mode_from_env_values() {
        let parse = |v: Option<&str>| Mode::parse(v.map(std::ffi::OsStr::new));
        assert_eq!(parse(Some("trap")).unwrap(), Mode::Trap);
        assert_eq!(parse(Some("log")).unwrap(), Mode::Log);
        assert_eq!(parse(Some("kill")).unwrap(), Mode::Kill);
        assert_eq!(parse(None).unwrap(), Mode::Kill);
        let e = parse(Some("bogus")).unwrap_err();
        assert!(e.to_string().contains("\"bogus\""), "{e}");
    }
}

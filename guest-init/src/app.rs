//! Starting the app: fork, set up the child, search PATH, exec; report exec
//! failures to the parent through a close-on-exec pipe.
//!
//! Everything that allocates is prepared before `fork`; the child only makes
//! syscalls. If exec fails, the child writes one record (step + errno) to the
//! pipe and `_exit`s with 127 (not found), 126 (not executable) or 125 (berth
//! could not set the process up); the parent prints the one-line message. A
//! successful exec closes the pipe, so the parent's read returns 0.

use std::cell::UnsafeCell;
use std::ffi::{c_void, CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use berth_spec::confine::{cap_mask, ConfineError, Policy};
use berth_spec::control::Process;
use berth_spec::{PodSpec, Security, EXIT_BERTH_FAILED, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND};
use nix::errno::Errno;
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("cannot create the exec-status pipe")]
    Pipe(#[source] Errno),
    #[error("cannot create the stdio pipes")]
    StdioPipe(#[source] Errno),
    #[error("cannot create a pseudo-terminal")]
    Pty(#[source] Errno),
    #[error("cannot fork")]
    Fork(#[source] Errno),
    #[error("cannot read the exec status of the app")]
    ReadStatus(#[source] Errno),
    #[error(transparent)]
    Confine(#[from] ConfineError),
}

/// The confinement the pod's spec asks for, the same as the ns stage1
/// applies (`berth_spec::confine`), prepared before fork and applied by the
/// child just before exec: capabilities outside the kept set leave the
/// bounding set, the process keeps only those (none when it is not root),
/// and the default seccomp filter is loaded last. The VM is the outer
/// boundary; this keeps root in the pod from, e.g., mounting, loading
/// modules or changing the hostname, as it cannot in an ns pod.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    /// Set `PR_SET_NO_NEW_PRIVS` (the spec's `no_new_privileges`).
    pub no_new_privs: bool,
    /// Capability numbers to drop from the bounding set.
    pub drop_bounding: Vec<u8>,
    /// Effective, permitted and inheritable sets of a root process (bit N =
    /// capability N); a process switching to another user ends with none.
    pub keep: u64,
    /// Seccomp programs, loaded in order (any implies no_new_privs).
    pub filters: Vec<seccompiler::BpfProgram>,
}

impl Confinement {
    pub fn from_security(sec: &Security) -> Result<Confinement, AppError> {
        let p = Policy::from_security(sec)?;
        Ok(Confinement {
            no_new_privs: p.no_new_privs,
            drop_bounding: caps::all()
                .into_iter()
                .filter(|c| !p.keep.contains(c))
                .map(|c| c.index())
                .collect(),
            keep: cap_mask(&p.keep),
            filters: p.filters,
        })
    }
}

/// How the process' standard streams are connected. Output always goes to
/// pipes (or the terminal) that guest-init relays to the host as separate
/// control-protocol streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdioSetup {
    /// stdout and stderr are pipes; stdin is a pipe the caller feeds when
    /// `stdin`, else /dev/null.
    Pipes { stdin: bool },
    /// A new pseudo-terminal is the controlling terminal and fds 0-2.
    Tty,
}

/// A service pod's systemd (see service.rs): its child is cloned into a
/// new PID namespace (guest-init keeps a pidfd of it, to start `berth
/// exec` processes there), and before the usual set-up, while it still
/// holds every capability, it moves into `cgroup_procs`' cgroup, roots a
/// new cgroup namespace there, carries out `mounts` and binds its terminal
/// over /dev/console.
#[derive(Debug)]
pub struct PodInit {
    pub cgroup_procs: OwnedFd,
    pub mounts: Vec<crate::mounts::RawStep>,
}

/// Everything the child needs, prepared before fork.
#[derive(Debug)]
pub struct AppConfig {
    /// The command as given (argv[0]), for messages.
    pub command: String,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    /// Paths to try with execve, in order.
    pub candidates: Vec<CString>,
    pub cwd: CString,
    pub uid: u32,
    pub gid: u32,
    pub confinement: Confinement,
    pub stdio: StdioSetup,
    /// Port range to drop from the inherited I/O permission bitmap (set when
    /// guest-init holds ioperm, whatever the app's user).
    pub drop_ioperm: Option<(u16, u16)>,
    /// A service pod's systemd: new namespaces, see [`PodInit`].
    pub pod_init: Option<PodInit>,
}

fn cstring(s: &str, what: &'static str) -> Result<CString, AppError> {
    CString::new(s).map_err(|_| AppError::Nul { what })
}

impl AppConfig {
    /// The pod's app.
    pub fn from_spec(spec: &PodSpec) -> Result<AppConfig, AppError> {
        let stdio = if spec.stdio.tty {
            StdioSetup::Tty
        } else {
            StdioSetup::Pipes {
                stdin: spec.stdio.interactive,
            }
        };
        let p = &spec.app;
        Self::new(
            &p.argv,
            &spec.effective_env(),
            &p.cwd,
            p.user,
            Confinement::from_security(&spec.security)?,
            stdio,
        )
    }

    /// A process started by `berth exec` (its environment is already merged
    /// by the host), confined like the app.
    pub fn from_process(p: &Process, confinement: &Confinement) -> Result<AppConfig, AppError> {
        let stdio = if p.tty {
            StdioSetup::Tty
        } else {
            StdioSetup::Pipes { stdin: p.stdin }
        };
        Self::new(&p.argv, &p.env, &p.cwd, p.user, confinement.clone(), stdio)
    }

    fn new(
        argv: &[String],
        env_strings: &[String],
        cwd: &str,
        user: berth_spec::User,
        confinement: Confinement,
        stdio: StdioSetup,
    ) -> Result<AppConfig, AppError> {
        let path = env_strings
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(berth_spec::DEFAULT_PATH)
            .to_string();
        let command = argv.first().cloned().unwrap_or_default();
        let argv = argv
            .iter()
            .map(|a| cstring(a, "app.argv"))
            .collect::<Result<Vec<_>, _>>()?;
        let env = env_strings
            .iter()
            .map(|e| cstring(e, "app.env"))
            .collect::<Result<Vec<_>, _>>()?;
        let candidates = exec_candidates(&command, &path)
            .into_iter()
            .map(|c| cstring(&c, "app.argv[0]"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AppConfig {
            command,
            argv,
            env,
            candidates,
            cwd: cstring(cwd, "app.cwd")?,
            uid: user.uid,
            gid: user.gid,
            confinement,
            stdio,
            drop_ioperm: None,
            pod_init: None,
        })
    }
}

/// The paths execvp would try for `cmd`: `cmd` itself when it contains a
/// `/` (relative or absolute), else `dir/cmd` for each PATH entry (an empty
/// entry means the current directory, as in POSIX).
pub fn exec_candidates(cmd: &str, path: &str) -> Vec<String> {
    if cmd.is_empty() {
        return vec![];
    }
    if cmd.contains('/') {
        return vec![cmd.to_string()];
    }
    path.split(':')
        .map(|dir| {
            if dir.is_empty() {
                cmd.to_string()
            } else {
                format!("{}/{cmd}", dir.trim_end_matches('/'))
            }
        })
        .collect()
}

/// The execvp rule for combining per-candidate failures: "not there" errors
/// move on to the next candidate; EACCES is remembered and moved past; any
/// other error stops the search. Returns the errno to report. `try_exec`
/// only returns on failure.
pub fn search_exec(candidates: &[CString], mut try_exec: impl FnMut(&CStr) -> Errno) -> Errno {
    let mut result = Errno::ENOENT;
    let mut saw_eacces = false;
    for c in candidates {
        match try_exec(c) {
            Errno::ENOENT | Errno::ENOTDIR | Errno::ESTALE | Errno::ENODEV | Errno::ETIMEDOUT => {}
            Errno::EACCES => saw_eacces = true,
            e => {
                result = e;
                saw_eacces = false;
                break;
            }
        }
    }
    if saw_eacces {
        Errno::EACCES
    } else {
        result
    }
}

/// Exit status for an exec failure: 127 when nothing was found, else 126.
pub fn exec_failure_status(e: Errno) -> i32 {
    match e {
        Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG => EXIT_NOT_FOUND,
        _ => EXIT_NOT_EXECUTABLE,
    }
}

/// The step of the child's set-up that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ChildStep {
    Session = 1,
    User = 2,
    Cwd = 3,
    Stdio = 4,
    Exec = 5,
    NoNewPrivs = 6,
    Capabilities = 7,
    Seccomp = 8,
    PodInit = 9,
}

impl ChildStep {
    fn from_u8(b: u8) -> Option<ChildStep> {
        Some(match b {
            1 => ChildStep::Session,
            2 => ChildStep::User,
            3 => ChildStep::Cwd,
            4 => ChildStep::Stdio,
            5 => ChildStep::Exec,
            6 => ChildStep::NoNewPrivs,
            7 => ChildStep::Capabilities,
            8 => ChildStep::Seccomp,
            9 => ChildStep::PodInit,
            _ => return None,
        })
    }
}

/// A failed start, as reported by the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartFailure {
    pub step: ChildStep,
    pub errno: Errno,
}

impl StartFailure {
    fn encode(self) -> [u8; 5] {
        let e = (self.errno as i32).to_le_bytes();
        [self.step as u8, e[0], e[1], e[2], e[3]]
    }

    fn decode(b: &[u8]) -> Option<StartFailure> {
        match b {
            [s, a, b, c, d] => Some(StartFailure {
                step: ChildStep::from_u8(*s)?,
                errno: Errno::from_raw(i32::from_le_bytes([*a, *b, *c, *d])),
            }),
            _ => None,
        }
    }

    /// The exit status the child used.
    pub fn status(self) -> i32 {
        match self.step {
            ChildStep::Exec => exec_failure_status(self.errno),
            _ => EXIT_BERTH_FAILED,
        }
    }

    /// The one-line message for stderr, e.g. `berth: exec "foo": command not found`.
    pub fn message(self, cfg: &AppConfig) -> String {
        let desc = self.errno.desc().to_lowercase();
        match self.step {
            ChildStep::Exec if exec_failure_status(self.errno) == EXIT_NOT_FOUND => {
                format!("berth: exec {:?}: command not found\n", cfg.command)
            }
            ChildStep::Exec => format!("berth: exec {:?}: {desc}\n", cfg.command),
            // Same wording as the ns stage1.
            ChildStep::Cwd => format!(
                "berth: working directory {:?}: {}\n",
                cfg.cwd.to_string_lossy(),
                self.errno.desc()
            ),
            ChildStep::User => format!(
                "berth: cannot switch to user {}:{}: {desc}\n",
                cfg.uid, cfg.gid
            ),
            ChildStep::Session => format!("berth: setsid: {desc}\n"),
            ChildStep::NoNewPrivs => format!("berth: cannot set no_new_privs: {desc}\n"),
            ChildStep::Capabilities => format!("berth: cannot set the capabilities: {desc}\n"),
            ChildStep::Seccomp => format!("berth: cannot load the seccomp filter: {desc}\n"),
            ChildStep::Stdio => format!("berth: cannot set up stdio: {desc}\n"),
            ChildStep::PodInit => {
                format!("berth: cannot set up the pod's namespaces and mounts: {desc}\n")
            }
        }
    }
}

/// A started process and the parent's ends of its standard streams.
#[derive(Debug)]
pub struct Started {
    pub pid: Pid,
    /// Write end of the stdin pipe (`Pipes { stdin: true }`), non-blocking.
    pub stdin: Option<OwnedFd>,
    /// Read ends of the stdout and stderr pipes, non-blocking.
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The pseudo-terminal's master (tty mode), non-blocking: output is read
    /// from it and input written to it.
    pub tty: Option<OwnedFd>,
    /// Set when the child could not exec; it exits with `failure.status()`.
    pub failure: Option<StartFailure>,
    /// With [`AppConfig::pod_init`]: a pidfd of the child (the PID 1 of its
    /// new PID namespace).
    pub pidfd: Option<OwnedFd>,
    /// With [`AppConfig::pod_init`] and a terminal: a slave end kept open
    /// for as long as the master is relayed.
    pub console_hold: Option<OwnedFd>,
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), Errno> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-element array.
    Errno::result(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: F_SETFL on an fd we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
}

/// A new pseudo-terminal: (master, slave, the slave's path), both
/// close-on-exec; the slave is opened without becoming our controlling
/// terminal.
fn open_pty() -> Result<(OwnedFd, OwnedFd, CString), Errno> {
    let master = crate::sys::open(c"/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY)?;
    let mut unlock: libc::c_int = 0;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCSPTLCK reads an int, TIOCGPTN writes an unsigned int; both
    // point to live locals.
    unsafe {
        Errno::result(libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCSPTLCK,
            &mut unlock,
        ))?;
        Errno::result(libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n))?;
    }
    let path = CString::new(format!("/dev/pts/{n}")).map_err(|_| Errno::EINVAL)?;
    let slave = crate::sys::open(&path, libc::O_RDWR | libc::O_NOCTTY)?;
    Ok((master, slave, path))
}

/// Stack for the vfork-style child (see [`spawn`]); only touched pages cost.
const CHILD_STACK_SIZE: usize = 256 * 1024;

#[repr(C, align(16))]
struct ChildStack(UnsafeCell<[u8; CHILD_STACK_SIZE]>);

// SAFETY: used by one child at a time, while the parent is suspended
// (CLONE_VFORK), and by nothing else.
unsafe impl Sync for ChildStack {}

static CHILD_STACK: ChildStack = ChildStack(UnsafeCell::new([0; CHILD_STACK_SIZE]));

/// The child's ends of its standard streams (raw: they are only borrowed).
struct ChildFds {
    /// None: open /dev/null.
    stdin: Option<RawFd>,
    stdout: RawFd,
    stderr: RawFd,
    /// The slave is also made the controlling terminal.
    tty: bool,
}

/// What the child needs, passed through clone's argument pointer.
struct ChildArgs<'a> {
    cfg: &'a AppConfig,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    fds: ChildFds,
    status_w: RawFd,
    /// The terminal's path, bound over /dev/console by a [`PodInit`] child.
    console: Option<&'a CStr>,
}

extern "C" fn child_main(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` points to the ChildArgs on the parent's stack, which
    // stays alive and untouched while the parent is suspended (CLONE_VFORK).
    let a = unsafe { &*(arg as *const ChildArgs<'_>) };
    let failure = child(a.cfg, a.argv, a.envp, &a.fds, a.console);
    let rec = failure.encode();
    // SAFETY: write the record to the close-on-exec pipe and leave with
    // exit_group (this child is its own thread group) without running any
    // of the parent's destructors or atexit handlers.
    unsafe {
        libc::write(a.status_w, rec.as_ptr().cast(), rec.len());
        libc::_exit(failure.status())
    }
}

/// Start a process. The caller has blocked the signals it waits for (the
/// child unblocks all of them).
///
/// `clone(CLONE_VM | CLONE_VFORK)` on a separate stack, like posix_spawn,
/// rather than fork: no page tables to copy and no copy-on-write faults,
/// which on nested KVM are emulated guest-kernel work; and no hidden
/// sigprocmask calls (musl's fork adds four). The parent sleeps until the
/// child has exec-ed or exited. Happy path in the parent: pipe2 ×3 (status,
/// stdout, stderr), clone, closes, one read.
pub fn spawn(cfg: &AppConfig) -> Result<Started, AppError> {
    let (status_r, status_w) = pipe_cloexec().map_err(AppError::Pipe)?;
    // (parent end, child end) pairs.
    let mut stdin_pipe = None;
    let mut out_pipes = None;
    let mut pty = None;
    let mut pty_path = None;
    let fds = match cfg.stdio {
        StdioSetup::Tty => {
            let (m, s, path) = open_pty().map_err(AppError::Pty)?;
            let raw = s.as_raw_fd();
            pty_path = Some(path);
            pty = Some((m, s));
            ChildFds {
                stdin: Some(raw),
                stdout: raw,
                stderr: raw,
                tty: true,
            }
        }
        StdioSetup::Pipes { stdin } => {
            if stdin {
                let (r, w) = pipe_cloexec().map_err(AppError::StdioPipe)?;
                stdin_pipe = Some((w, r));
            }
            let (or, ow) = pipe_cloexec().map_err(AppError::StdioPipe)?;
            let (er, ew) = pipe_cloexec().map_err(AppError::StdioPipe)?;
            let f = ChildFds {
                stdin: stdin_pipe
                    .as_ref()
                    .map(|(_, r): &(OwnedFd, OwnedFd)| r.as_raw_fd()),
                stdout: ow.as_raw_fd(),
                stderr: ew.as_raw_fd(),
                tty: false,
            };
            out_pipes = Some(((or, ow), (er, ew)));
            f
        }
    };
    let argv: Vec<*const libc::c_char> = cfg
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = cfg
        .env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let args = ChildArgs {
        cfg,
        argv: &argv,
        envp: &envp,
        fds,
        status_w: status_w.as_raw_fd(),
        console: pty_path.as_deref().filter(|_| cfg.pod_init.is_some()),
    };
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    if cfg.pod_init.is_some() {
        flags |= libc::CLONE_NEWPID | libc::CLONE_PIDFD;
    }
    let mut pidfd: libc::c_int = -1;
    // The stack grows down from the (16-byte aligned) end of the buffer.
    let stack_top = CHILD_STACK
        .0
        .get()
        .cast::<u8>()
        .wrapping_add(CHILD_STACK_SIZE)
        .cast::<c_void>();
    // SAFETY: guest-init is single-threaded. The child runs child_main on
    // its own stack, shares our memory only while we are suspended, only
    // makes syscalls (its errno writes land in our TLS, which we do not rely
    // on across this call), and ends in execve or _exit. With CLONE_PIDFD
    // the kernel stores the pidfd through the parent-tid pointer, a live
    // local; tls and the child-tid pointer are unused (null).
    let pid = unsafe {
        libc::clone(
            child_main,
            stack_top,
            flags,
            &args as *const ChildArgs<'_> as *mut c_void,
            &mut pidfd as *mut libc::c_int,
            std::ptr::null_mut::<c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
        )
    };
    if pid < 0 {
        return Err(AppError::Fork(Errno::last()));
    }
    drop(status_w);
    // Drop the child's ends; keep ours, non-blocking: PID 1 never blocks on
    // a process' streams.
    let stdin = stdin_pipe.map(|(w, _)| w);
    let (stdout, stderr) = match out_pipes {
        Some(((or, _), (er, _))) => (Some(or), Some(er)),
        None => (None, None),
    };
    // A service pod's terminal is its /dev/console, which systemd opens
    // and closes for each message (its stdio goes to /dev/null): keep a
    // slave open, or the master would read EIO between messages and the
    // terminal would go away with the relay's end of it.
    let (tty, console_hold) = match pty {
        Some((m, s)) if cfg.pod_init.is_some() => (Some(m), Some(s)),
        Some((m, _)) => (Some(m), None),
        None => (None, None),
    };
    for fd in [&stdin, &stdout, &stderr, &tty].into_iter().flatten() {
        set_nonblocking(fd);
    }
    let mut buf = [0u8; 8];
    let n = loop {
        // SAFETY: reads into a live buffer of the given length.
        let n = unsafe { libc::read(status_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match Errno::result(n) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(AppError::ReadStatus(e)),
            Ok(n) => break usize::try_from(n).unwrap_or(0),
        }
    };
    let failure = buf.get(..n).and_then(StartFailure::decode);
    // SAFETY: with CLONE_PIDFD the kernel returned a new fd we own.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    Ok(Started {
        pid: Pid::from_raw(pid),
        stdin,
        stdout,
        stderr,
        tty,
        failure,
        pidfd,
        console_hold,
    })
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit halves per set.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// A [`PodInit`] child, first thing: into its cgroup, a cgroup namespace
/// rooted there, its mounts, its terminal as /dev/console.
fn enter_pod(p: &PodInit, console: Option<&CStr>) -> Result<(), Errno> {
    // SAFETY: a one-byte write from a static buffer; unshare(2) with a flag.
    unsafe {
        Errno::result(libc::write(
            p.cgroup_procs.as_raw_fd(),
            b"0".as_ptr().cast(),
            1,
        ))?;
        Errno::result(libc::unshare(libc::CLONE_NEWCGROUP))?;
    }
    for m in &p.mounts {
        m.apply()?;
    }
    if let Some(pty) = console {
        // SAFETY: NUL-terminated paths that outlive the call; a bind mount
        // takes no file system type or data.
        Errno::result(unsafe {
            libc::mount(
                pty.as_ptr(),
                c"/dev/console".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        })?;
    }
    Ok(())
}

/// The child between fork and exec. Returns only on failure.
fn child(
    cfg: &AppConfig,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    fds: &ChildFds,
    console: Option<&CStr>,
) -> StartFailure {
    let fail = |step| StartFailure {
        step,
        errno: Errno::last(),
    };
    if let Some(p) = &cfg.pod_init {
        if let Err(errno) = enter_pod(p, console) {
            return StartFailure {
                step: ChildStep::PodInit,
                errno,
            };
        }
    }
    // SAFETY: (whole function) plain syscalls on values prepared before clone;
    // pointers come from CStrings and null-terminated arrays that outlive
    // the calls.
    unsafe {
        if libc::setsid() < 0 {
            return fail(ChildStep::Session);
        }
        if fds.tty && libc::ioctl(fds.stdout, libc::TIOCSCTTY, 0) < 0 {
            return fail(ChildStep::Stdio);
        }
        if let Some((first, count)) = cfg.drop_ioperm {
            libc::ioperm(libc::c_ulong::from(first), libc::c_ulong::from(count), 0);
        }
        // Seccomp filters need no_new_privs too (we hold CAP_SYS_ADMIN only
        // until capset below): set once for both.
        let conf = &cfg.confinement;
        if (conf.no_new_privs || !conf.filters.is_empty())
            && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
        {
            return fail(ChildStep::NoNewPrivs);
        }
        // Stdio first, then cwd, then the user: the ns stage1's order (and
        // /dev/null is opened with root's rights).
        let stdin_fd = match fds.stdin {
            Some(fd) => fd,
            None => match crate::sys::open(c"/dev/null", libc::O_RDONLY) {
                // Close-on-exec: the copy dup2-ed to 0 is what stays.
                Ok(fd) => fd.into_raw_fd(),
                Err(_) => return fail(ChildStep::Stdio),
            },
        };
        // dup2 clears close-on-exec on the copies. The parent's ends are
        // all above 2 (0-2 are the console in the VM, the control socket or
        // the test's streams in supervise mode), so no source is clobbered
        // before it is copied.
        for (fd, to) in [(stdin_fd, 0), (fds.stdout, 1), (fds.stderr, 2)] {
            if fd != to && libc::dup2(fd, to) < 0 {
                return fail(ChildStep::Stdio);
            }
        }
        if libc::chdir(cfg.cwd.as_ptr()) < 0 {
            return fail(ChildStep::Cwd);
        }
        // PID 1 starts as root with no supplementary groups: skip the
        // no-op calls for root. Raw syscalls: musl's wrappers go through
        // __synccall (meant for multi-threaded processes), which adds three
        // rt_sigprocmask calls to each; this child is single-threaded.
        // Confinement, in the ns stage1's order: the bounding set shrinks
        // while CAP_SETPCAP is still held, the user switch happens while
        // CAP_SETUID/SETGID are, the other sets are trimmed after it and
        // seccomp comes last.
        for &cap in &conf.drop_bounding {
            if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) < 0
                && Errno::last() != Errno::EINVAL
            {
                // EINVAL: a capability this kernel does not have.
                return fail(ChildStep::Capabilities);
            }
        }
        if (cfg.uid != 0 || cfg.gid != 0)
            && (libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(libc::SYS_setgid, cfg.gid) < 0
                || libc::syscall(libc::SYS_setuid, cfg.uid) < 0)
        {
            return fail(ChildStep::User);
        }
        // Switching to a non-root uid has cleared the permitted and
        // effective sets; this also empties the inheritable set then. The
        // ambient set is empty: guest-init never raises it.
        let keep = if cfg.uid == 0 { conf.keep } else { 0 };
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let half = |m: u64| CapData {
            effective: m as u32,
            permitted: m as u32,
            inheritable: m as u32,
        };
        let data = [half(keep), half(keep >> 32)];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) < 0 {
            return fail(ChildStep::Capabilities);
        }
        for prog in &conf.filters {
            let fprog = libc::sock_fprog {
                len: prog.len() as libc::c_ushort,
                // seccompiler's sock_filter is #[repr(C)] with the kernel's
                // layout, as libc's is.
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            ) < 0
            {
                return fail(ChildStep::Seccomp);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        let errno = search_exec(&cfg.candidates, |path| {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            Errno::last()
        });
        StartFailure {
            step: ChildStep::Exec,
            errno,
        }
    }
}

/// Exit status of a waited-for process: its exit code, or 128+N when killed
/// by signal N (as shells and both stage1s report it).
pub fn encode_status(status: nix::sys::wait::WaitStatus) -> Option<i32> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some(code & 0xff),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::sys::wait::WaitStatus;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn exit_status_encoding() {
        let p = Pid::from_raw(42);
        assert_eq!(encode_status(WaitStatus::Exited(p, 0)), Some(0));
        assert_eq!(encode_status(WaitStatus::Exited(p, 3)), Some(3));
        assert_eq!(encode_status(WaitStatus::Exited(p, 255)), Some(255));
        assert_eq!(
            encode_status(WaitStatus::Signaled(p, Signal::SIGTERM, false)),
            Some(143)
        );
        assert_eq!(
            encode_status(WaitStatus::Signaled(p, Signal::SIGKILL, true)),
            Some(137)
        );
        assert_eq!(encode_status(WaitStatus::StillAlive), None);
        assert_eq!(encode_status(WaitStatus::Stopped(p, Signal::SIGSTOP)), None);
    }

    #[test]
    fn candidates() {
        assert_eq!(
            exec_candidates("sh", "/bin:/usr/bin/"),
            ["/bin/sh", "/usr/bin/sh"]
        );
        assert_eq!(
            exec_candidates("sh", "/bin::/x"),
            ["/bin/sh", "sh", "/x/sh"]
        );
        assert_eq!(exec_candidates("./run", "/bin"), ["./run"]);
        assert_eq!(exec_candidates("a/b", "/bin"), ["a/b"]);
        assert_eq!(exec_candidates("/abs/x", "/bin"), ["/abs/x"]);
        assert!(exec_candidates("", "/bin").is_empty());
    }

    /// What execve would say for `p` on a real directory tree, without
    /// exec-ing: ENOENT/ENOTDIR when missing, EACCES when not a regular
    /// executable file, else "success" (recorded).
    fn probe(p: &CStr, hit: &mut Option<String>) -> Errno {
        let s = p.to_string_lossy().into_owned();
        match std::fs::metadata(&s) {
            Err(e) => Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)),
            Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => Errno::EACCES,
            Ok(_) => {
                hit.get_or_insert(s);
                // execve would not return; the search stops at success.
                Errno::UnknownErrno
            }
        }
    }

    fn resolve(cmd: &str, path: &str) -> (Errno, Option<String>) {
        let c: Vec<CString> = exec_candidates(cmd, path)
            .into_iter()
            .map(|s| CString::new(s).expect("nul"))
            .collect();
        let mut hit = None;
        let e = search_exec(&c, |p| probe(p, &mut hit));
        (e, hit)
    }

    #[test]
    fn path_resolution_against_a_temp_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let a = d.join("a");
        let b = d.join("b");
        std::fs::create_dir(&a).expect("mkdir");
        std::fs::create_dir(&b).expect("mkdir");
        let write = |p: &std::path::Path, mode| {
            std::fs::write(p, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        write(&a.join("noexec"), 0o644);
        write(&b.join("noexec"), 0o644);
        write(&b.join("tool"), 0o755);
        write(&a.join("both"), 0o644);
        write(&b.join("both"), 0o755);
        std::fs::create_dir(a.join("adir")).expect("mkdir");
        let path = format!("{}:{}", a.display(), b.display());

        // Found in the second directory.
        let (_, hit) = resolve("tool", &path);
        assert_eq!(hit, Some(format!("{}/tool", b.display())));
        // A non-executable match earlier in PATH is skipped (execvp rule).
        let (_, hit) = resolve("both", &path);
        assert_eq!(hit, Some(format!("{}/both", b.display())));
        // Not found anywhere: 127.
        let (e, hit) = resolve("missing", &path);
        assert_eq!((e, hit), (Errno::ENOENT, None));
        assert_eq!(exec_failure_status(e), 127);
        // Only non-executable matches: EACCES, 126.
        let (e, hit) = resolve("noexec", &path);
        assert_eq!((e, hit), (Errno::EACCES, None));
        assert_eq!(exec_failure_status(e), 126);
        // A directory is not executable.
        let (e, _) = resolve("adir", &a.display().to_string());
        assert_eq!(exec_failure_status(e), 126);
        // Names with a slash are not looked up in PATH.
        let (e, _) = resolve("a/tool", &path);
        assert_eq!(e, Errno::ENOENT);
        let rel = format!("{}/tool", b.display());
        let (_, hit) = resolve(&rel, "/nonexistent");
        assert_eq!(hit, Some(rel));
        // A path through a regular file (ENOTDIR) is "not found" too.
        let through = format!("{}/tool/x", b.display());
        let (e, hit) = resolve(&through, "");
        assert_eq!((exec_failure_status(e), hit), (127, None));
    }

    #[test]
    fn search_stops_at_hard_errors() {
        let c: Vec<CString> = ["/a", "/b", "/c"]
            .iter()
            .map(|s| CString::new(*s).expect("nul"))
            .collect();
        let mut tried = vec![];
        let e = search_exec(&c, |p| {
            tried.push(p.to_string_lossy().into_owned());
            if p.to_bytes() == b"/b" {
                Errno::ENOEXEC
            } else {
                Errno::EACCES
            }
        });
        assert_eq!(e, Errno::ENOEXEC);
        assert_eq!(tried, ["/a", "/b"]);
        assert_eq!(exec_failure_status(e), 126);
    }

    #[test]
    fn failure_record_roundtrip_and_messages() {
        let f = StartFailure {
            step: ChildStep::Exec,
            errno: Errno::ENOENT,
        };
        assert_eq!(StartFailure::decode(&f.encode()), Some(f));
        assert_eq!(StartFailure::decode(&[]), None);
        assert_eq!(StartFailure::decode(&[10, 0, 0, 0, 0]), None);
        let pod = StartFailure {
            step: ChildStep::PodInit,
            errno: Errno::EPERM,
        };
        assert_eq!(StartFailure::decode(&pod.encode()), Some(pod));
        assert_eq!(pod.status(), 125);
        let spec = crate::test_support::spec();
        let cfg = AppConfig::from_spec(&spec).expect("cfg");
        let mut cfg = cfg;
        cfg.command = "foo".into();
        assert_eq!(f.message(&cfg), "berth: exec \"foo\": command not found\n");
        assert_eq!(f.status(), 127);
        let f = StartFailure {
            step: ChildStep::Exec,
            errno: Errno::EACCES,
        };
        assert_eq!(f.message(&cfg), "berth: exec \"foo\": permission denied\n");
        assert_eq!(f.status(), 126);
        let f = StartFailure {
            step: ChildStep::Cwd,
            errno: Errno::ENOENT,
        };
        assert_eq!(
            f.message(&cfg),
            "berth: working directory \"/\": No such file or directory\n"
        );
        assert_eq!(f.status(), 125);
    }

    #[test]
    fn config_from_spec_uses_the_effective_env() {
        let mut spec = crate::test_support::spec();
        spec.app.argv = vec!["sh".into(), "-c".into(), "x".into()];
        spec.app.env = vec!["PATH=/opt/bin:/bin".into(), "A=1".into()];
        let cfg = AppConfig::from_spec(&spec).expect("cfg");
        assert_eq!(
            cfg.candidates,
            [c"/opt/bin/sh".to_owned(), c"/bin/sh".to_owned()]
        );
        assert!(cfg.env.iter().any(|e| e.as_bytes() == b"container=berth"));
        assert!(cfg.env.iter().any(|e| e.as_bytes() == b"A=1"));
        spec.app.env.clear();
        let cfg = AppConfig::from_spec(&spec).expect("cfg");
        assert_eq!(
            cfg.candidates.len(),
            berth_spec::DEFAULT_PATH.split(':').count()
        );
    }
}

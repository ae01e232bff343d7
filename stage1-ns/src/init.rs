//! The pod's PID 1, a clone of stage1 in the new namespaces. It finishes the
//! sandbox (cgroup namespace, hostname, mounts, pivot_root, masks), starts the
//! app, then reaps every process of the pod and forwards signals to the app.
//! When the app exits, init exits with the app's status; the kernel then kills
//! whatever else is left in the PID namespace.

use crate::app::{self, Launch, Started, Stdio};
use crate::chan::Chan;
use crate::mounts;
use crate::security::Confinement;
use crate::supervise::PodStdio;
use berth_spec::init_msg::InitMessage;
use berth_spec::state::PassedFds;
use berth_spec::{ErrorChain, PodDir, PodSpec, EXIT_BERTH_FAILED};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Signals stage1 blocks (before cloning init) and handles via signalfd:
/// the forwarded ones, SIGCHLD and SIGWINCH.
pub fn handled_signals() -> nix::sys::signal::SigSet {
    let mut s = nix::sys::signal::SigSet::empty();
    for sig in forwarded() {
        s.add(sig);
    }
    s.add(Signal::SIGCHLD);
    s.add(Signal::SIGWINCH);
    s
}

/// `berth_spec::FORWARDED_SIGNALS` as nix signals.
pub fn forwarded() -> impl Iterator<Item = Signal> {
    berth_spec::FORWARDED_SIGNALS
        .iter()
        .filter_map(|s| Signal::try_from(*s).ok())
}

/// Is `sig` one the app should receive?
pub fn is_forwarded(sig: Signal) -> bool {
    berth_spec::FORWARDED_SIGNALS.contains(&(sig as i32))
}

#[derive(Clone, Copy)]
pub struct InitArgs<'a> {
    pub spec: &'a PodSpec,
    pub pod: &'a PodDir,
    pub chan: &'a Chan,
    pub confinement: &'a Confinement,
    /// Pipes replacing stage1's terminals as init's (and so the app's) 0, 1, 2.
    pub stdio: &'a PodStdio,
    /// The fds passed through to the app (3 ..).
    pub pass: &'a PassedFds,
    /// An OCI pod: what init needs to go on alone (see crate::oci).
    pub handoff: Option<&'a crate::oci::Handoff>,
}

#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("stage1 exited before the pod started")]
    ParentGone,
    #[error("cannot create cgroup namespace")]
    CgroupNs(#[source] nix::Error),
    #[error("cannot set hostname {0:?}")]
    Hostname(String, #[source] nix::Error),
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error("cannot allocate the pod's terminal")]
    Pty(#[source] nix::Error),
    #[error(transparent)]
    Chan(#[from] crate::chan::ChanError),
    #[error(transparent)]
    App(#[from] app::AppError),
    #[error("cannot watch signals")]
    Signalfd(#[source] nix::Error),
    #[error("cannot bring up the loopback interface")]
    Loopback(#[source] nix::Error),
    #[error("cannot put the pod's standard streams in place")]
    Stdio(#[source] nix::Error),
    #[error("cannot allow ICMP echo sockets (net.ipv4.ping_group_range)")]
    PingGroups(#[source] std::io::Error),
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
}

/// Entry point of the cloned child. Returns the process exit code.
pub fn main(a: InitArgs) -> isize {
    match run(&a) {
        Ok(code) => code as isize,
        Err(e) => {
            let message = ErrorChain(&e).to_string();
            let report = InitMessage::Failed {
                code: EXIT_BERTH_FAILED,
                message: message.clone(),
            };
            // If stage1 is gone there is nobody to tell; stderr is all we have.
            if a.chan.send(&report, None).is_err() {
                eprintln!("berth: {message}");
            }
            EXIT_BERTH_FAILED as isize
        }
    }
}

/// Close every fd init inherited from stage1 except the channel and the
/// fds passed through to the app: stage1's lock, signalfd, report pipe and
/// its end of the channel are nothing a pod process may hold. Then make
/// init non-dumpable: nothing in the pod may ptrace it or open its
/// /proc/1/{exe,fd,mem,environ} (it runs the host's stage1 binary).
fn shed_host_fds(a: &InitArgs) {
    if let Some(h) = a.handoff {
        let mut keep = h.keep();
        keep.push(a.chan.raw_fd());
        close_all_but(a.pass.end(), &keep);
        let _ = nix::sys::prctl::set_dumpable(false);
        return;
    }
    // The channel was made after the passed fds took 3 .. end.
    let chan = a.chan.raw_fd().max(a.pass.end());
    // SAFETY: close_range(2) only affects our descriptor table.
    unsafe {
        if chan > a.pass.end() {
            libc::syscall(
                libc::SYS_close_range,
                a.pass.end() as u32,
                (chan - 1) as u32,
                0,
            );
        }
        libc::syscall(libc::SYS_close_range, (chan + 1) as u32, u32::MAX, 0);
    }
    let _ = nix::sys::prctl::set_dumpable(false);
}

/// Close every fd from `first` on except those in `keep`.
fn close_all_but(first: i32, keep: &[i32]) {
    let mut keep: Vec<i32> = keep.iter().copied().filter(|f| *f >= first).collect();
    keep.sort_unstable();
    let mut from = first;
    for k in keep {
        if k > from {
            // SAFETY: close_range(2) only affects our descriptor table.
            unsafe { libc::syscall(libc::SYS_close_range, from as u32, (k - 1) as u32, 0) };
        }
        from = from.max(k + 1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from as u32, u32::MAX, 0) };
}

fn run(a: &InitArgs) -> Result<i32, InitError> {
    a.stdio.install().map_err(InitError::Stdio)?;
    shed_host_fds(a);
    // A user namespace: wait for stage1 to write the id maps; the idmapped
    // mounts come with that message.
    let idmapped = if a.spec.security.userns.is_some() {
        match a.chan.recv_fds()? {
            Some((InitMessage::Mapped, fds)) => Some(fds),
            _ => return Err(InitError::ParentGone),
        }
    } else {
        None
    };
    if let Some(h) = a.handoff {
        h.join()?;
    }
    // If stage1 dies, the pod dies with it (its PID 1 is gone, the kernel
    // kills the rest), so `gc` always finds a dead pod, never an orphan.
    // (getppid() is 0 in a new PID namespace, so a parent that died before
    // this point is detected by the channel's EOF below instead.)
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // The mounts are built while stage1 moves us into the pod's cgroup: on
    // cgroup v1 that move waits out an RCU grace period (milliseconds), and
    // nothing here depends on it.
    let own_uts = a
        .spec
        .oci
        .as_ref()
        .is_none_or(|o| o.namespaces.uts == berth_spec::oci::NsChoice::New);
    if own_uts {
        nix::unistd::sethostname(&a.spec.hostname)
            .map_err(|e| InitError::Hostname(a.spec.hostname.clone(), e))?;
    }
    mounts::build_root(a.spec, a.pod, idmapped.as_deref())?;
    let own_netns = a.spec.network.mode != berth_spec::NetworkMode::Host;
    if own_netns {
        // Before /proc/sys goes read-only; never with --net host (the
        // sysctl would be the host's).
        allow_ping(a.spec.security.userns.map(|u| u.count))?;
    }
    match &a.spec.oci {
        Some(o) => {
            crate::oci::apply_sysctl(o)?;
            mounts::mask_these(&o.masked_paths, &o.readonly_paths)?;
        }
        None => mounts::mask_paths()?,
    }
    drop(idmapped);
    // none and private: our own network namespace, whose lo starts down
    // (stage1 plugs eth0 in meanwhile for private).
    if own_netns {
        loopback_up().map_err(InitError::Loopback)?;
    }
    match a.chan.recv()? {
        Some((InitMessage::Go, _)) => {}
        _ => return Err(InitError::ParentGone),
    }
    // Now in the pod's cgroup: root the cgroup namespace there.
    if a.spec.oci.as_ref().is_none_or(|o| o.namespaces.cgroup) {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .map_err(InitError::CgroupNs)?;
    }
    if let Some(o) = &a.spec.oci {
        crate::oci::mount_cgroups(o)?;
    }
    if a.spec.service.is_some() {
        return exec_systemd(a);
    }
    // Leave the host's session: terminal-generated signals reach stage1 (and
    // are forwarded once), never the pod directly.
    let _ = nix::unistd::setsid();
    let stdio = if a.spec.stdio.tty {
        let slave = open_pty(a.chan)?;
        mounts::bind_console(&slave)?;
        Stdio::Tty(slave)
    } else {
        // init put the pipes in place as its own 0, 1, 2 already.
        Stdio::Inherit {
            stdin: a.spec.stdio.interactive,
            pipes: None,
        }
    };
    if let (Some(h), Some(o)) = (a.handoff, &a.spec.oci) {
        return handed_off(a, h, o, stdio);
    }
    let sfd = SignalFd::with_flags(&handled_signals(), SfdFlags::SFD_CLOEXEC)
        .map_err(InitError::Signalfd)?;
    let launch = Launch {
        argv: a.spec.app.argv.clone(),
        env: a.spec.effective_env(),
        cwd: a.spec.app.cwd.clone(),
        stdio,
        confinement: a.confinement,
        pass: a.pass,
    };
    let app_pid = match app::launch(&launch)? {
        Started::Running(pid) => {
            a.chan.send(&InitMessage::Started, None)?;
            pid
        }
        Started::Failed { pid, code, message } => {
            a.chan.send(&InitMessage::Failed { code, message }, None)?;
            let _ = waitpid(pid, None);
            return Ok(code);
        }
    };
    // From here init only reaps and forwards signals: keep nothing but
    // CAP_KILL (to signal an app running as another user), so that even a
    // pod given CAP_SYS_PTRACE gains nothing by taking init over.
    if let Err(e) = crate::security::keep_only_kill() {
        log::warn!(
            "stage1-ns: pod init keeps its capabilities: {}",
            ErrorChain(&e)
        );
    }
    Ok(reap_until(app_pid, &sfd))
}

/// An OCI pod's init once set up: say so, go on without stage1 (it is
/// reparented to the caller's shim), wait for `start`, run the
/// `startContainer` hooks and the app, forward every signal it gets to
/// the app and exit with the app's status.
fn handed_off(
    a: &InitArgs,
    h: &crate::oci::Handoff,
    o: &berth_spec::oci::OciSettings,
    stdio: Stdio,
) -> Result<i32, InitError> {
    // Every catchable signal is the app's (`berth-oci kill ID SIGNAL`).
    let all = nix::sys::signal::SigSet::all();
    all.thread_block().map_err(InitError::Signalfd)?;
    let sfd = SignalFd::with_flags(&all, SfdFlags::SFD_CLOEXEC).map_err(InitError::Signalfd)?;
    crate::oci::apply_process_limits(o)?;
    let env = a.spec.effective_env();
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(berth_spec::DEFAULT_PATH)
        .to_string();
    // A command that does not exist fails `create`, as with runc.
    let cmd = &a.spec.app.argv[0];
    if let Err(code) = app::resolve(cmd, &path) {
        let what = if code == berth_spec::EXIT_NOT_FOUND {
            "executable file not found in $PATH"
        } else {
            "permission denied"
        };
        let message = format!("exec {cmd:?}: {what}");
        a.chan.send(&InitMessage::Failed { code, message }, None)?;
        return Ok(code);
    }
    // Outlive stage1 from here: it exits once it has our report.
    let _ = nix::sys::prctl::set_pdeathsig(None);
    a.chan.send(&InitMessage::Started, None)?;
    crate::oci::wait_for_start(h)?;
    crate::oci::run_hooks(&o.hooks.start_container, &o.state_json("running", 1), None)?;
    let launch = Launch {
        argv: a.spec.app.argv.clone(),
        env,
        cwd: a.spec.app.cwd.clone(),
        stdio,
        confinement: a.confinement,
        pass: a.pass,
    };
    let app_pid = match app::launch(&launch)? {
        Started::Running(pid) => pid,
        Started::Failed { pid, code, message } => {
            eprintln!("berth: {message}");
            let _ = waitpid(pid, None);
            return Ok(code);
        }
    };
    if let Err(e) = crate::security::keep_only_kill() {
        log::warn!(
            "stage1-ns: pod init keeps its capabilities: {}",
            ErrorChain(&e)
        );
    }
    Ok(reap_until_forwarding(app_pid, &sfd, true))
}

/// A service pod: init becomes systemd (PID 1 of the pod), with its
/// console on a pty of the pod's own and a writable cgroup2 tree rooted at
/// the pod's cgroup (its cgroup namespace). The channel closes with the
/// exec (close-on-exec): that is how stage1 learns systemd runs; a failure
/// to exec is reported on it as for any app.
fn exec_systemd(a: &InitArgs) -> Result<i32, InitError> {
    mounts::mount_cgroup2()?;
    let slave = open_pty(a.chan)?;
    mounts::bind_console(&slave)?;
    let mut env = a.spec.effective_env();
    env.push(format!(
        "NOTIFY_SOCKET={}",
        berth_spec::SERVICE_NOTIFY_SOCKET
    ));
    let launch = Launch {
        argv: a.spec.app.argv.clone(),
        env,
        cwd: "/".into(),
        stdio: Stdio::Tty(slave),
        confinement: a.confinement,
        pass: a.pass,
    };
    let (code, message) = app::exec_in_place(&launch)?;
    a.chan.send(&InitMessage::Failed { code, message }, None)?;
    Ok(code)
}

/// ICMP echo ("ping") sockets for every group of the pod: `ping` works
/// without CAP_NET_RAW, which pods do not get by default (podman does the
/// same). The sysctl belongs to the pod's own network namespace.
/// In a user namespace only its own (mapped) groups can be named.
fn allow_ping(mapped: Option<u32>) -> Result<(), InitError> {
    let last = mapped.map_or(2_147_483_647, |n| n.saturating_sub(1));
    match std::fs::write("/proc/sys/net/ipv4/ping_group_range", format!("0 {last}")) {
        Ok(()) => Ok(()),
        // A kernel without IPv4 ping sockets: nothing to allow.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(InitError::PingGroups(e)),
    }
}

/// A new network namespace starts with `lo` down; `--net none` means
/// "loopback only", so bring it up (one socket and one SIOCSIFFLAGS).
fn loopback_up() -> nix::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data, all-zero is a valid value; "lo\0"
    // fits in ifr_name (IFNAMSIZ = 16).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we pass, which outlives the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) };
    nix::errno::Errno::result(r).map(drop)
}

/// Allocate the pod's pty from its own devpts instance and hand the master to
/// stage1. Returns the slave's path.
fn open_pty(chan: &Chan) -> Result<PathBuf, InitError> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(InitError::Pty)?;
    nix::pty::grantpt(&master).map_err(InitError::Pty)?;
    nix::pty::unlockpt(&master).map_err(InitError::Pty)?;
    let name = nix::pty::ptsname_r(&master).map_err(InitError::Pty)?;
    chan.send(&InitMessage::Tty, Some(master.as_raw_fd()))?;
    Ok(PathBuf::from(name))
}

/// PID 1's loop: reap everything, forward signals to the app, return the
/// app's status when it exits.
fn reap_until(app: Pid, sfd: &SignalFd) -> i32 {
    reap_until_forwarding(app, sfd, false)
}

/// [`reap_until`]; with `all`, every signal but SIGCHLD is forwarded.
fn reap_until_forwarding(app: Pid, sfd: &SignalFd, all: bool) -> i32 {
    loop {
        let sig = match sfd.read_signal() {
            Ok(Some(s)) => s,
            Ok(None) | Err(nix::Error::EINTR) => continue,
            Err(_) => {
                // Without a signalfd, fall back to blocking waits.
                return loop {
                    match waitpid(None, None) {
                        Ok(st) if st.pid() == Some(app) => {
                            break app::exit_code(st).unwrap_or(EXIT_BERTH_FAILED)
                        }
                        Ok(_) | Err(nix::Error::EINTR) => {}
                        Err(_) => break EXIT_BERTH_FAILED,
                    }
                };
            }
        };
        let signo = sig.ssi_signo as i32;
        if signo == libc::SIGCHLD {
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(st) if st.pid() == Some(app) => {
                        if let Some(code) = app::exit_code(st) {
                            return code;
                        }
                    }
                    Ok(_) => {}
                }
            }
        } else if let Ok(s) = Signal::try_from(signo) {
            if all || is_forwarded(s) {
                let _ = kill(app, s);
            }
        }
    }
}

//! The pod's PID 1, a clone of stage1 in the new namespaces. It finishes the
//! sandbox (cgroup namespace, hostname, mounts, pivot_root, masks), starts the
//! app, then reaps every process of the pod and forwards signals to the app.
//! When the app exits, init exits with the app's status; the kernel then kills
//! whatever else is left in the PID namespace.

use crate::app::{self, ErrChain, Launch, Started, Stdio};
use crate::chan::Chan;
use crate::mounts;
use crate::security::Confinement;
use berth_spec::{PodDir, PodSpec, EXIT_BERTH_FAILED};
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

pub struct InitArgs<'a> {
    pub spec: &'a PodSpec,
    pub pod: &'a PodDir,
    pub chan: &'a Chan,
    pub confinement: &'a Confinement,
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
}

/// Entry point of the cloned child. Returns the process exit code.
pub fn main(a: InitArgs) -> isize {
    match run(&a) {
        Ok(code) => code as isize,
        Err(e) => {
            let msg = format!("{}", ErrChain(&e));
            // If stage1 is gone there is nobody to tell; stderr is all we have.
            if a.chan
                .send(&format!("error {EXIT_BERTH_FAILED} {msg}"), None)
                .is_err()
            {
                eprintln!("berth: {msg}");
            }
            EXIT_BERTH_FAILED as isize
        }
    }
}

fn run(a: &InitArgs) -> Result<i32, InitError> {
    // If stage1 dies, the pod dies with it (its PID 1 is gone, the kernel
    // kills the rest), so `gc` always finds a dead pod, never an orphan.
    // (getppid() is 0 in a new PID namespace, so a parent that died before
    // this point is detected by the channel's EOF below instead.)
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // The mounts are built while stage1 moves us into the pod's cgroup: on
    // cgroup v1 that move waits out an RCU grace period (milliseconds), and
    // nothing here depends on it.
    nix::unistd::sethostname(&a.spec.hostname)
        .map_err(|e| InitError::Hostname(a.spec.hostname.clone(), e))?;
    mounts::build_root(a.spec, a.pod)?;
    mounts::mask_paths()?;
    // none and private: our own network namespace, whose lo starts down
    // (stage1 plugs eth0 in meanwhile for private).
    if a.spec.network.mode != berth_spec::NetworkMode::Host {
        loopback_up().map_err(InitError::Loopback)?;
    }
    match a.chan.recv()? {
        Some((m, _)) if m == "go" => {}
        _ => return Err(InitError::ParentGone),
    }
    // Now in the pod's cgroup: root the cgroup namespace there.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(InitError::CgroupNs)?;
    // Leave the host's session: terminal-generated signals reach stage1 (and
    // are forwarded once), never the pod directly.
    let _ = nix::unistd::setsid();
    let stdio = if a.spec.stdio.tty {
        let slave = open_pty(a.chan)?;
        mounts::bind_console(&slave)?;
        Stdio::Tty(slave)
    } else {
        Stdio::Inherit {
            stdin: a.spec.stdio.interactive,
        }
    };
    let sfd = SignalFd::with_flags(&handled_signals(), SfdFlags::SFD_CLOEXEC)
        .map_err(InitError::Signalfd)?;
    let launch = Launch {
        argv: a.spec.app.argv.clone(),
        env: a.spec.effective_env(),
        cwd: a.spec.app.cwd.clone(),
        stdio,
        confinement: a.confinement,
    };
    let app_pid = match app::launch(&launch)? {
        Started::Running(pid) => {
            a.chan.send("ok", None)?;
            pid
        }
        Started::Failed { pid, code, message } => {
            a.chan.send(&format!("error {code} {message}"), None)?;
            let _ = waitpid(pid, None);
            return Ok(code);
        }
    };
    Ok(reap_until(app_pid, &sfd))
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
    chan.send("tty", Some(master.as_raw_fd()))?;
    Ok(PathBuf::from(name))
}

/// PID 1's loop: reap everything, forward signals to the app, return the
/// app's status when it exits.
fn reap_until(app: Pid, sfd: &SignalFd) -> i32 {
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
            if is_forwarded(s) {
                let _ = kill(app, s);
            }
        }
    }
}

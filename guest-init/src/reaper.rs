//! PID 1's loop: reap every child (orphans too), forward control commands
//! to the app, and, once the app has exited, end everything else.
//!
//! One blocking `poll` over a signalfd (SIGCHLD) and the console: no busy
//! loop and no timer while the app runs. A timeout is used only during the
//! final grace period.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::app::encode_status;
use crate::console;
use crate::control::{Command, ControlParser, Event, Mode};

/// How long the remaining processes get between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for them to be reaped after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("cannot block SIGCHLD")]
    Block(#[source] Errno),
    #[error("cannot create the SIGCHLD signalfd")]
    SignalFd(#[source] Errno),
    #[error("poll failed")]
    Poll(#[source] Errno),
    #[error("waitpid failed")]
    Wait(#[source] Errno),
    #[error("the app (pid {0}) is not a child of guest-init any more")]
    AppLost(Pid),
}

/// Block SIGCHLD (to read it from a signalfd) and SIGPIPE (a write to a
/// closed stdin pipe must fail with EPIPE, not kill us; harmless for PID 1,
/// needed in supervise mode), then create the signalfd. 2 syscalls. Must
/// run before the app is forked so that no SIGCHLD is missed.
pub fn sigchld_fd() -> Result<OwnedFd, ReaperError> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; signalfd
    // returns a new fd that we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        let mut blocked = set;
        libc::sigaddset(&mut blocked, libc::SIGPIPE);
        Errno::result(libc::sigprocmask(
            libc::SIG_BLOCK,
            &blocked,
            std::ptr::null_mut(),
        ))
        .map_err(ReaperError::Block)?;
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(ReaperError::SignalFd(Errno::last()));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Consume pending signalfd records (one read; SIGCHLDs coalesce anyway).
fn drain(sfd: BorrowedFd<'_>) {
    let mut buf = [0u8; 16 * std::mem::size_of::<libc::signalfd_siginfo>()];
    // SAFETY: reads into a live buffer of the given length; the fd is
    // non-blocking.
    let _ = unsafe { libc::read(sfd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
}

/// Reap exited children without blocking. Returns the app's status if the
/// app was among them (and stops there: the rest is reaped at shutdown),
/// and whether no children are left at all.
fn reap(app: Option<Pid>) -> Result<(Option<i32>, bool), ReaperError> {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return Ok((None, false)),
            Ok(ws) => {
                if ws.pid().is_some() && ws.pid() == app {
                    if let Some(code) = encode_status(ws) {
                        return Ok((Some(code), false));
                    }
                }
            }
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => return Ok((None, true)),
            Err(e) => return Err(ReaperError::Wait(e)),
        }
    }
}

/// Where the host's control lines come from and where app input goes.
pub struct Io<'a> {
    /// Console input (None: no control channel).
    pub console: Option<BorrowedFd<'a>>,
    pub mode: Mode,
    /// Write end of the app's stdin pipe (interactive).
    pub stdin: Option<OwnedFd>,
}

/// Run until the app exits; return its status (exit code or 128+signal).
pub fn supervise(sfd: BorrowedFd<'_>, app: Pid, mut io: Io<'_>) -> Result<i32, ReaperError> {
    let mut parser = ControlParser::new(io.mode);
    let mut events = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let mut fds = vec![PollFd::new(sfd, PollFlags::POLLIN)];
        if let Some(c) = io.console {
            fds.push(PollFd::new(c, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(ReaperError::Poll(e)),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .unwrap_or(PollFlags::empty())
        };
        let (sig, con) = (ready(0), ready(1));
        drop(fds);
        if !sig.is_empty() {
            drain(sfd);
            match reap(Some(app))? {
                (Some(code), _) => return Ok(code),
                (None, true) => return Err(ReaperError::AppLost(app)),
                (None, false) => {}
            }
        }
        if let Some(c) = io.console {
            if con.contains(PollFlags::POLLIN) {
                // SAFETY: reads into a live buffer of the given length.
                let n = unsafe { libc::read(c.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                match Errno::result(n) {
                    Ok(0) => io.console = None,
                    Ok(n) => {
                        let got = buf.get(..usize::try_from(n).unwrap_or(0)).unwrap_or(&[]);
                        parser.feed(got, &mut events);
                        for ev in events.drain(..) {
                            handle(ev, app, &mut io.stdin);
                        }
                    }
                    Err(Errno::EINTR | Errno::EAGAIN) => {}
                    Err(e) => {
                        console::say(&format!("console input stopped: {}", e.desc()));
                        io.console = None;
                    }
                }
            } else if con.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
            {
                io.console = None;
            }
        }
    }
}

fn handle(ev: Event, app: Pid, stdin: &mut Option<OwnedFd>) {
    match ev {
        Event::Command(Command::Signal(n)) => {
            // SAFETY: kill(2) with a pid we forked and a signal number the
            // parser bounded to 1..=64.
            let r = unsafe { libc::kill(app.as_raw(), n) };
            if r < 0 && Errno::last() != Errno::ESRCH {
                console::say(&format!(
                    "cannot send signal {n} to the app: {}",
                    Errno::last().desc()
                ));
            }
        }
        Event::Data(bytes) => {
            let Some(fd) = stdin.as_ref() else { return };
            // SAFETY: writes from a live buffer to the non-blocking pipe.
            let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
            match Errno::result(n) {
                Ok(n) if usize::try_from(n).unwrap_or(0) == bytes.len() => {}
                Ok(n) => console::say(&format!(
                    "app stdin is full: dropped {} bytes",
                    bytes.len() - usize::try_from(n).unwrap_or(0)
                )),
                Err(Errno::EAGAIN) => {
                    console::say(&format!("app stdin is full: dropped {} bytes", bytes.len()))
                }
                // The app closed its stdin: stop feeding it.
                Err(_) => *stdin = None,
            }
        }
        Event::Invalid(line) => console::say(&format!(
            "ignoring console input {line:?} (expected \"signal N\")"
        )),
    }
}

/// Which processes to end at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every process but PID 1 (`kill(-1)`): in the VM.
    All,
    /// One process group (supervise mode: the app's session).
    Group(Pid),
}

fn send(scope: Scope, sig: libc::c_int) -> Result<(), Errno> {
    let target = match scope {
        Scope::All => -1,
        Scope::Group(pg) => -pg.as_raw(),
    };
    // SAFETY: kill(2); the target is -1 only when we are PID 1 of the VM.
    Errno::result(unsafe { libc::kill(target, sig) }).map(drop)
}

/// Wait (reaping) until no children are left or `deadline` passes.
fn wait_all(sfd: BorrowedFd<'_>, deadline: Instant) -> Result<bool, ReaperError> {
    loop {
        if reap(None)?.1 {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(sfd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => drain(sfd),
            Err(e) => return Err(ReaperError::Poll(e)),
        }
    }
}

/// End the remaining processes: SIGTERM, up to [`TERM_GRACE`] for them to
/// exit, then SIGKILL. When nothing is left (the usual case) this is a single
/// `kill` returning ESRCH. Returns whether everything is gone.
pub fn terminate(sfd: Option<BorrowedFd<'_>>, scope: Scope) -> bool {
    if let Err(Errno::ESRCH) = send(scope, libc::SIGTERM) {
        return true;
    }
    let Some(sfd) = sfd else {
        let _ = send(scope, libc::SIGKILL);
        return false;
    };
    if let Ok(true) = wait_all(sfd, Instant::now() + TERM_GRACE) {
        return true;
    }
    if let Err(Errno::ESRCH) = send(scope, libc::SIGKILL) {
        // Nothing left in scope; whatever remains are unrelated children.
        return reap(None).map(|r| r.1).unwrap_or(false);
    }
    wait_all(sfd, Instant::now() + KILL_WAIT).unwrap_or(false)
}

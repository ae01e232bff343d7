//! SIGCHLD as a signalfd, and the end of a pod: once the app has exited,
//! end everything else (SIGTERM, a grace period, SIGKILL), reaping. The
//! loop that serves the app while it runs is session.rs.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

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

/// Reap exited children without blocking; true when none are left.
fn reap_all() -> Result<bool, ReaperError> {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return Ok(false),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => return Ok(true),
            Err(e) => return Err(ReaperError::Wait(e)),
        }
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
        if reap_all()? {
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
        return reap_all().unwrap_or(false);
    }
    wait_all(sfd, Instant::now() + KILL_WAIT).unwrap_or(false)
}

//! A detached pod's `app.log`, capped like the kvm console log: stage0
//! hands a detached stage1 the log (opened for appending) as its stdout and
//! stderr, and whatever the pod writes there would otherwise grow the file
//! without limit. [`cap`], called by a stage1 before it starts anything,
//! puts a pipe in place of both and forks a relay process that copies the
//! pipe into a [`RotatingLog`] at the log's path: at most [`APP_LOG_MAX`]
//! bytes in `app.log` plus the previous [`APP_LOG_MAX`] in `app.log.1`.
//!
//! The relay holds nothing but the pipe's read end and the log (no lock,
//! no pod fd); it exits when every writer is gone — the stage1, the pod's
//! processes, the VMM — so a pod's last words are written before it goes.

use crate::rotating_log::RotatingLog;
use crate::PodDir;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

/// The cap of `app.log` (and of `app.log.1`, the previous part).
pub const APP_LOG_MAX: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AppLogError {
    #[error("cannot create the app log's pipe")]
    Pipe(#[source] nix::Error),
    #[error("cannot fork the app log's relay")]
    Fork(#[source] nix::Error),
    #[error("cannot put the app log's pipe in place of fd {fd}")]
    Dup {
        fd: RawFd,
        #[source]
        source: nix::Error,
    },
}

/// Are our fd 1 and fd 2 the pod's `app.log`?
fn stdio_is_app_log(pod: &PodDir) -> bool {
    let Ok(log) = std::fs::metadata(pod.app_log()) else {
        return false;
    };
    [1, 2].iter().all(|fd| {
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|m| m.is_file() && m.dev() == log.dev() && m.ino() == log.ino())
    })
}

/// When our stdout and stderr are the pod's `app.log` (a detached start),
/// relay them through a capped, rotated writer; otherwise (a foreground
/// run: the caller's terminal or pipe) do nothing. Returns whether a relay
/// was started. Call it while the process is single-threaded (it forks).
pub fn cap(pod: &PodDir) -> Result<bool, AppLogError> {
    if !stdio_is_app_log(pod) {
        return Ok(false);
    }
    let path = pod.app_log();
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(AppLogError::Pipe)?;
    // SAFETY: the caller is single-threaded (see above); the child only
    // runs the relay and exits.
    match unsafe { nix::unistd::fork() }.map_err(AppLogError::Fork)? {
        nix::unistd::ForkResult::Child => {
            drop(wr);
            relay(rd, &path);
            // SAFETY: _exit skips the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { .. } => {
            drop(rd);
            for fd in [1, 2] {
                // SAFETY: dup2 onto our own stdout/stderr.
                if unsafe { libc::dup2(wr.as_raw_fd(), fd) } < 0 {
                    return Err(AppLogError::Dup {
                        fd,
                        source: nix::Error::last(),
                    });
                }
            }
            Ok(true)
        }
    }
}

/// The relay process: copy `rd` into the capped log until every writer
/// has closed it.
fn relay(rd: OwnedFd, path: &std::path::Path) {
    // Keep only the pipe: not the pod's lock, not the log's old fds.
    let null = std::fs::File::open("/dev/null");
    for fd in [0, 1, 2] {
        if let Ok(n) = &null {
            // SAFETY: dup2 onto our own standard descriptors.
            unsafe { libc::dup2(n.as_raw_fd(), fd) };
        }
    }
    drop(null);
    if rd.as_raw_fd() != 3 {
        // SAFETY: dup2 of the pipe onto fd 3 (whatever was there closes).
        if unsafe { libc::dup2(rd.as_raw_fd(), 3) } != 3 {
            return;
        }
        drop(rd);
    } else {
        // Already fd 3: keep it open past close_from below.
        std::mem::forget(rd);
    }
    crate::state::close_from(4, false);
    // Nothing a pod is stopped with is for us: we end at EOF.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: SIG_IGN for a standard signal.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    // Without a log (it cannot be opened) the output is dropped, but still
    // read: the pod must not die of SIGPIPE for it.
    let mut log = RotatingLog::append_to(path, APP_LOG_MAX).ok();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: read into our buffer from our pipe fd 3.
        let n = unsafe { libc::read(3, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            if let Some(l) = log.as_mut() {
                let _ = l.write_all(&buf[..n as usize]);
            }
        } else if n == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_the_app_log_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let pod = PodDir::new(d.path().join("p"));
        std::fs::create_dir(pod.path()).unwrap();
        // Our stdout is the test harness's, not this pod's app.log.
        std::fs::write(pod.app_log(), "").unwrap();
        assert!(!stdio_is_app_log(&pod));
        assert!(!cap(&pod).unwrap());
    }
}

//! The serial console: diagnostics out, control lines in.
//!
//! Every message is formatted first and written with a single `write(2)` to
//! fd 2 (each guest syscall is expensive, and one write keeps lines whole).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot open /dev/console")]
    Open(#[source] Errno),
    #[error("cannot make fd {fd} a copy of the console")]
    Dup {
        fd: RawFd,
        #[source]
        source: Errno,
    },
}

/// Write `berth-guest-init: <msg>\n` to stderr (the console) in one write.
pub fn say(msg: &str) {
    write_line(&format!("berth-guest-init: {msg}\n"));
}

/// Write `text` to stderr as is, in one write; errors are ignored (there is
/// nowhere else to report them).
pub fn write_line(text: &str) {
    let b = text.as_bytes();
    // SAFETY: writes from a live buffer of the given length to fd 2.
    let _ = unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
}

/// The console, opened once /dev exists.
#[derive(Debug)]
pub struct Console {
    fd: OwnedFd,
}

impl Console {
    /// Open /dev/console and make sure fds 0, 1 and 2 are the console.
    ///
    /// The kernel hands PID 1 the console as fds 0-2 when the initramfs has a
    /// `/dev/console` node; then `open` returns fd 3 or higher and nothing
    /// else is needed (1 syscall). If it had none, fds 0-2 are closed, `open`
    /// returns 0, and 1 and 2 are duplicated from it.
    pub fn open() -> Result<Console, ConsoleError> {
        let owned = crate::sys::open(c"/dev/console", libc::O_RDWR | libc::O_NOCTTY)
            .map_err(ConsoleError::Open)?;
        let fd = owned.as_raw_fd();
        if fd == 0 {
            for target in [1, 2] {
                // SAFETY: dup2 onto the standard fds, which are closed (open
                // returned 0, the lowest free fd, so 1 and 2 may or may not be).
                if unsafe { libc::dup2(0, target) } < 0 {
                    return Err(ConsoleError::Dup {
                        fd: target,
                        source: Errno::last(),
                    });
                }
            }
        }
        Ok(Console { fd: owned })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wait until everything written to the console has been sent, so that
    /// no output is lost when the VM powers off.
    pub fn drain(&self) {
        // SAFETY: TCSBRK with a non-zero argument is tcdrain(3).
        let _ = unsafe { libc::ioctl(self.raw(), libc::TCSBRK, 1 as libc::c_int) };
    }
}

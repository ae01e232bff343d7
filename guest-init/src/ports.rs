//! Port I/O to the VMM: the boot mark and the exit status byte.
//!
//! The fast way is `ioperm` plus an `out` instruction from user mode (one
//! syscall, then a plain VM exit per byte). Two things can stand in its way,
//! and neither may kill PID 1:
//!
//! - the kernel may lack `CONFIG_X86_IOPL_IOPERM` (`ioperm` fails): the boot
//!   mark is skipped and the status goes through `/dev/port` once /dev exists;
//! - under a nested PVM hypervisor the `out` may fault (PVM does not load the
//!   guest's I/O bitmap into hardware and relies on emulation). A one-shot
//!   SIGSEGV handler armed around the very first `out` skips the faulting
//!   one-byte instruction, and `/dev/port` is used from then on.

use std::ffi::c_void;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;

/// Why the status byte could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("no port access: ioperm failed ({ioperm}) and /dev/port could not be opened")]
    OpenDevPort {
        ioperm: Errno,
        #[source]
        source: Errno,
    },
    #[error("cannot write port {port:#06x} through /dev/port")]
    WriteDevPort {
        port: u16,
        #[source]
        source: Errno,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// `out` works (ioperm granted and the first `out` did not fault).
    Out,
    /// Use `/dev/port`; carries why `out` is not usable.
    DevPort(Errno),
}

/// How this guest reaches the VMM's ports.
#[derive(Debug)]
pub struct Ports {
    method: Method,
}

/// Set while the first `out` runs: the SIGSEGV handler only fixes up a fault
/// raised by that one instruction.
static PROBING: AtomicBool = AtomicBool::new(false);
static FAULTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_probe_fault(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut c_void) {
    if !PROBING.load(Ordering::SeqCst) || ctx.is_null() {
        // Not our probe. SA_RESETHAND already restored the default action, so
        // returning re-runs the faulting instruction and the fault is fatal,
        // as it would have been without this handler.
        return;
    }
    FAULTED.store(true, Ordering::SeqCst);
    // SAFETY: the kernel passes a valid ucontext_t to an SA_SIGINFO handler;
    // we only adjust the saved RIP past the faulting `out dx, al` (opcode 0xEE,
    // one byte), which is the instruction PROBING brackets.
    unsafe {
        let uc = &mut *(ctx as *mut libc::ucontext_t);
        if let Some(rip) = uc.uc_mcontext.gregs.get_mut(libc::REG_RIP as usize) {
            *rip += 1;
        }
    }
}

/// `out dx, al`.
///
/// # Safety
/// The caller must hold I/O permission for `port` (ioperm), or have armed the
/// probe fault handler.
#[inline(always)]
unsafe fn outb(port: u16, value: u8) {
    // SAFETY: per the function contract. No `nomem`: the asm must stay a
    // compiler barrier between the PROBING/FAULTED stores around it.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags));
    }
}

/// Install the one-shot SIGSEGV handler that lets [`probe_out`] survive a
/// faulting `out`. One rt_sigaction (musl adds one rt_sigprocmask the first
/// time a handler is installed).
fn arm_probe_guard() -> bool {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
    // the handler is an extern "C" fn with the SA_SIGINFO signature and only
    // touches atomics and the ucontext it is given.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_probe_fault as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
        libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()) == 0
    }
}

/// Execute one `out` with the guard armed; true if it did not fault.
fn probe_out(port: u16, value: u8) -> bool {
    FAULTED.store(false, Ordering::SeqCst);
    PROBING.store(true, Ordering::SeqCst);
    // SAFETY: a fault (no I/O permission) is caught by the armed handler,
    // which skips the one-byte instruction.
    unsafe { outb(port, value) };
    PROBING.store(false, Ordering::SeqCst);
    !FAULTED.load(Ordering::SeqCst)
}

impl Ports {
    /// Get port access and write the boot mark. Costs 2 syscalls (ioperm,
    /// sigaction) on the happy path. Never fails: problems are remembered and
    /// reported when the status is written.
    pub fn boot_mark(mark_port: u16, status_port: u16) -> Ports {
        let first = mark_port.min(status_port);
        let count = mark_port.max(status_port) - first + 1;
        // SAFETY: ioperm only changes this task's I/O permission bitmap.
        let r = unsafe { libc::ioperm(libc::c_ulong::from(first), libc::c_ulong::from(count), 1) };
        if r != 0 {
            return Ports {
                method: Method::DevPort(Errno::last()),
            };
        }
        if !arm_probe_guard() {
            // Without the safety net a faulting `out` would kill PID 1.
            return Ports {
                method: Method::DevPort(Errno::last()),
            };
        }
        let method = if probe_out(mark_port, 1) {
            Method::Out
        } else {
            Method::DevPort(Errno::EFAULT)
        };
        Ports { method }
    }

    /// Did the boot mark reach the VMM?
    pub fn out_works(&self) -> bool {
        self.method == Method::Out
    }

    /// Why `out` is not used, for a diagnostic line.
    pub fn out_problem(&self) -> Option<&'static str> {
        match self.method {
            Method::Out => None,
            Method::DevPort(Errno::EFAULT) => Some("port I/O from user mode faults"),
            Method::DevPort(e) => Some(e.desc()),
        }
    }

    /// Write one byte to `port` (the exit status).
    pub fn write(&mut self, port: u16, value: u8) -> Result<(), PortError> {
        match self.method {
            Method::Out => {
                // SAFETY: boot_mark checked that ioperm was granted for this
                // range and that `out` does not fault.
                unsafe { outb(port, value) };
                Ok(())
            }
            Method::DevPort(ioperm) => write_dev_port(port, value, ioperm),
        }
    }
}

fn write_dev_port(port: u16, value: u8, ioperm: Errno) -> Result<(), PortError> {
    let fd = crate::sys::open(c"/dev/port", libc::O_WRONLY)
        .map_err(|source| PortError::OpenDevPort { ioperm, source })?;
    let buf = [value];
    // SAFETY: writes one byte from a live buffer to the fd we just opened;
    // /dev/port maps the file offset to the port number.
    let n = unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            1,
            libc::off_t::from(port),
        )
    };
    if n != 1 {
        return Err(PortError::WriteDevPort {
            port,
            source: Errno::last(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without ioperm, `out` faults in user mode: the guard must turn that
    /// into "not usable" instead of a crash. (The test never gains I/O
    /// permission, so no port is actually written on the host.)
    #[test]
    fn faulting_out_is_survived() {
        assert!(arm_probe_guard());
        assert!(!probe_out(0x0ef0, 1));
        // SA_RESETHAND: the guard is one-shot; re-arm for a second probe.
        assert!(arm_probe_guard());
        assert!(!probe_out(0x0ef1, 2));
        // SAFETY: restore the default action for the rest of the tests.
        unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
    }

    #[test]
    fn dev_port_fallback_reports_why() {
        let mut p = Ports {
            method: Method::DevPort(Errno::ENOSYS),
        };
        assert!(!p.out_works());
        assert_eq!(p.out_problem(), Some(Errno::ENOSYS.desc()));
        // Only check the error path: opening the host's /dev/port is refused
        // without CAP_SYS_RAWIO, and as root we must not write to it.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let err = p.write(0x0ef1, 0).unwrap_err();
            assert!(err.to_string().contains("ioperm failed"), "{err}");
        }
    }
}

//! State shared by the vCPUs, the devices and the event loop: why the VM
//! stops and what the guest reported on berth's ports. A leaf module: it
//! imports nothing from the rest of the VMM, so devices and vCPUs can both
//! depend on it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

/// Why the guest stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 0xFE, or a triple fault): berth's
    /// "power off", since `reboot=k` makes the kernel reset through the i8042.
    Reset,
    /// KVM reported a system event (shutdown/reset/crash) or a shutdown exit.
    SystemEvent(u32),
    /// Termination requested by the host (`VmHandle::kill`).
    Killed,
    /// A vCPU failed; `run()` returns the error.
    Error,
}

/// State shared by the vCPUs, devices and the event loop: who asked the VM
/// to stop and what the guest reported on berth's ports.
pub struct VmShared {
    /// When `Vm::boot` started; the origin of `boot_to_init`.
    pub start: Instant,
    /// First BOOT_MARK_PORT write.
    pub boot_mark: OnceLock<Instant>,
    /// Just before the first KVM_RUN of vCPU 0.
    pub first_run: OnceLock<Instant>,
    /// Last STATUS_PORT value; `NO_STATUS` if never written.
    pub status: AtomicU32,
    /// First stop request (later ones are ignored).
    pub exit: Mutex<Option<ExitReason>>,
    /// Signalled when the VM must stop; the event loop waits on it.
    pub exit_evt: EventFd,
    /// Thread waiting in `Vm::boot` for vCPU 0's first KVM_RUN; unparked then.
    pub boot_waiter: Mutex<Option<std::thread::Thread>>,
}

/// `VmShared::status` value meaning "the guest never wrote STATUS_PORT".
pub const NO_STATUS: u32 = u32::MAX;

impl VmShared {
    /// New shared state; `exit_evt` wakes the event loop.
    pub fn new(start: Instant, exit_evt: EventFd) -> Self {
        VmShared {
            start,
            boot_mark: OnceLock::new(),
            first_run: OnceLock::new(),
            status: AtomicU32::new(NO_STATUS),
            exit: Mutex::new(None),
            exit_evt,
            boot_waiter: Mutex::new(None),
        }
    }

    /// Asks the VM to stop for `reason`; the first request wins.
    pub fn request_exit(&self, reason: ExitReason) {
        if let Ok(mut exit) = self.exit.lock() {
            if exit.is_none() {
                *exit = Some(reason);
            }
        }
        if let Err(e) = self.exit_evt.write(1) {
            log::error!("vmm: signalling VM exit: {e}");
        }
    }

    /// Whether a stop was requested.
    pub fn exit_requested(&self) -> bool {
        self.exit.lock().map(|e| e.is_some()).unwrap_or(true)
    }

    /// The last status byte the guest wrote.
    pub fn status(&self) -> Option<u8> {
        u8::try_from(self.status.load(Ordering::SeqCst)).ok()
    }
}

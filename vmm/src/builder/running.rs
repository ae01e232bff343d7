//! A booted VM: handles to stop it or feed its console, and the event loop
//! that runs its devices until the guest stops.

use std::sync::Arc;
use std::time::Duration;

use event_manager::EventManager;
use seccompiler::BpfProgram;

use super::devices::{SerialConsole, Subscriber};
use super::error::BuildError;
use super::vcpus::VcpuThreads;
use crate::devices::serial::SerialInput;
use crate::seccomp::{self, ThreadKind};
use crate::shared::{ExitReason, VmShared};
use crate::vstate::vm;

/// How the guest ended.
#[derive(Debug, Clone)]
pub struct VmExitInfo {
    /// Why it stopped.
    pub reason: ExitReason,
    /// Last byte written to STATUS_PORT (None: never written — abnormal end).
    pub status: Option<u8>,
    /// From the start of [`Vm::boot`] to the guest's first BOOT_MARK_PORT write.
    pub boot_to_init: Option<Duration>,
    /// From the start of [`Vm::boot`] to vCPU 0's first KVM_RUN.
    pub setup_time: Duration,
    /// From the start of [`Vm::boot`] to the end of `run`.
    pub total: Duration,
}

/// Asks a running VM to stop, from any thread.
#[derive(Clone)]
pub struct VmHandle {
    shared: Arc<VmShared>,
    guest_ranges: Arc<Vec<(usize, usize)>>,
}

impl VmHandle {
    /// Resident memory of this process outside guest RAM, in bytes (see
    /// [`crate::metrics::rss_excluding_guest`]); callable while the VM runs.
    pub fn rss_excluding_guest(&self) -> std::io::Result<u64> {
        crate::metrics::rss_excluding_guest(&self.guest_ranges)
    }

    /// Whether the VM has been asked to stop (by the guest or the host).
    pub fn stopping(&self) -> bool {
        self.shared.exit_requested()
    }

    /// Stops the VM; `run` then returns with [`ExitReason::Killed`].
    pub fn kill(&self) {
        self.shared.request_exit(ExitReason::Killed);
    }
}

/// A booted VM whose vCPUs are running.
pub struct RunningVm {
    pub(super) vm: vm::Vm,
    pub(super) shared: Arc<VmShared>,
    pub(super) vcpus: VcpuThreads,
    pub(super) event_manager: EventManager<Subscriber>,
    pub(super) serial: SerialConsole,
    pub(super) cmdline: String,
    pub(super) pvm: bool,
    /// Installed on the thread calling [`RunningVm::run`].
    pub(super) event_loop_filter: Option<BpfProgram>,
}

impl RunningVm {
    /// A handle that can stop the VM from another thread.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            shared: self.shared.clone(),
            guest_ranges: Arc::new(self.vm.host_ranges()),
        }
    }

    /// A handle that injects bytes into the guest's serial input (COM1 RX).
    /// Bytes sent before the guest writes BOOT_MARK_PORT are queued and
    /// delivered once it has (the kernel's 8250 probe would discard them).
    pub fn serial_input(&self) -> SerialInput {
        self.serial.input.clone()
    }

    /// The kernel command line the guest got.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Whether PVM quirks are active.
    pub fn pvm(&self) -> bool {
        self.pvm
    }

    /// Resident memory of this process outside guest RAM, in bytes.
    pub fn rss_excluding_guest(&self) -> std::io::Result<u64> {
        crate::metrics::rss_excluding_guest(&self.vm.host_ranges())
    }

    /// Runs the device event loop on this thread until the guest stops (or
    /// [`VmHandle::kill`]), then stops and joins the vCPUs.
    ///
    /// Unless seccomp is off, this thread is confined by the event-loop
    /// filter from here on, also after `run` returns ([`crate::seccomp`]):
    /// its caller may then only report (write to a pipe or stderr) and exit.
    pub fn run(mut self) -> Result<VmExitInfo, BuildError> {
        if let Some(filter) = self.event_loop_filter.take() {
            seccomp::apply(ThreadKind::EventLoop, &filter).map_err(BuildError::Seccomp)?;
        }
        while !self.shared.exit_requested() {
            let pending = self
                .serial
                .handler
                .lock()
                .map(|h| h.has_pending())
                .unwrap_or(false);
            // While input waits (for FIFO space, or for the guest's boot
            // mark), poll every 20 ms.
            let timeout = if pending { 20 } else { -1 };
            self.event_manager
                .run_with_timeout(timeout)
                .map_err(BuildError::EventLoop)?;
            if pending {
                if let Ok(mut h) = self.serial.handler.lock() {
                    h.pump();
                }
            }
        }
        let vcpu_error = self.vcpus.stop();
        let shared = &self.shared;
        let reason = shared
            .exit
            .lock()
            .ok()
            .and_then(|e| *e)
            .unwrap_or(ExitReason::Error);
        if reason == ExitReason::Error {
            if let Some(e) = vcpu_error {
                return Err(BuildError::Guest(e));
            }
        }
        let setup_time = shared
            .first_run
            .get()
            .map(|t| t.duration_since(shared.start))
            .unwrap_or_default();
        Ok(VmExitInfo {
            reason,
            status: shared.status(),
            boot_to_init: shared
                .boot_mark
                .get()
                .map(|t| t.duration_since(shared.start)),
            setup_time,
            total: shared.start.elapsed(),
        })
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.vcpus.stop();
    }
}

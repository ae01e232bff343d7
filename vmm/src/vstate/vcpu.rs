//! vCPUs: boot state and the KVM_RUN loop (one thread each).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestAddress;

use seccompiler::BpfProgram;

use crate::arch::x86_64::{cpuid, regs};
use crate::device_manager::Bus;
use crate::seccomp::{self, ThreadKind};
use crate::shared::{ExitReason, VmShared};

/// KVM_INTERNAL_ERROR_EMULATION.
const INTERNAL_ERROR_EMULATION: u32 = 1;
/// KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES.
const EMULATION_FLAG_INSTRUCTION_BYTES: u64 = 1;
/// `int3`.
const INSN_INT3: u8 = 0xcc;
/// `fwait`.
const INSN_FWAIT: u8 = 0x9b;
/// #BP.
const BP_VECTOR: u8 = 3;

/// Errors of a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("KVM_CREATE_VCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    /// KVM_SET_CPUID2 failed.
    #[error("KVM_SET_CPUID2 on vCPU {0}")]
    SetCpuid(u8, #[source] kvm_ioctls::Error),
    /// Setting boot registers failed.
    #[error("setting boot registers of vCPU {0}")]
    Regs(u8, #[source] regs::RegsError),
    /// Spawning the vCPU thread failed.
    #[error("spawning the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
    /// KVM_RUN failed.
    #[error("KVM_RUN on vCPU {0}")]
    Run(u8, #[source] kvm_ioctls::Error),
    /// Reading or writing registers to resolve an exit failed.
    #[error("vCPU {0}: accessing registers to resolve an emulation failure")]
    Fixup(u8, #[source] kvm_ioctls::Error),
    /// KVM could not emulate an instruction and no workaround applies.
    #[error("vCPU {id}: KVM emulation failure at rip {rip:#x}, instruction bytes {bytes:02x?} (suberror {suberror})")]
    EmulationFailure {
        /// vCPU.
        id: u8,
        /// Guest rip.
        rip: u64,
        /// Instruction bytes KVM reported (may be empty).
        bytes: Vec<u8>,
        /// KVM internal error suberror.
        suberror: u32,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    #[error("vCPU {id}: VM entry failed, hardware reason {reason:#x}")]
    FailEntry {
        /// vCPU.
        id: u8,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// Installing the vCPU thread's seccomp filter failed.
    #[error("vCPU {0}: installing the seccomp filter")]
    Seccomp(u8, #[source] crate::seccomp::SeccompError),
    /// Any other exit the VMM does not expect.
    #[error("vCPU {id}: unexpected exit {exit}")]
    UnexpectedExit {
        /// vCPU.
        id: u8,
        /// The exit, as KVM reported it.
        exit: String,
    },
}

/// One vCPU before it runs.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    shared: Arc<VmShared>,
    pvm: bool,
    int3_fixups: u64,
    fwait_fixups: u64,
    /// Guest rip samples (development profiling, see [`crate::builder::PROFILE_ENV`]).
    profile: Option<(std::path::PathBuf, Vec<u64>)>,
    /// Installed by the thread before its first KVM_RUN.
    seccomp: Option<Arc<BpfProgram>>,
}

/// What to do after an exit.
enum Action {
    Continue,
    Stop(ExitReason),
    InternalError,
    Fail(VcpuError),
}

impl Vcpu {
    /// Creates vCPU `id` of `count` with boot state for `entry`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: &VmFd,
        supported_cpuid: &CpuId,
        id: u8,
        count: u8,
        entry: GuestAddress,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        shared: Arc<VmShared>,
        pvm: bool,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| VcpuError::Create(id, e))?;
        let cpuid = cpuid::vcpu_cpuid(supported_cpuid, id, count);
        fd.set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::SetCpuid(id, e))?;
        regs::setup_vcpu_regs(&fd, entry).map_err(|e| VcpuError::Regs(id, e))?;
        regs::set_lint(&fd).map_err(|e| VcpuError::Regs(id, e))?;
        Ok(Vcpu {
            id,
            fd,
            pio,
            mmio,
            shared,
            pvm,
            int3_fixups: 0,
            fwait_fixups: 0,
            profile: None,
            seccomp: None,
        })
    }

    /// Records guest rip whenever a kick interrupts KVM_RUN and writes the
    /// samples (one hex address per line) to `out` when the vCPU stops.
    pub fn enable_profiling(&mut self, out: std::path::PathBuf) {
        self.profile = Some((out, Vec::new()));
    }

    /// Has the vCPU thread install `filter` (a [`ThreadKind::Vcpu`] filter)
    /// before it first enters the guest.
    pub fn set_seccomp_filter(&mut self, filter: Arc<BpfProgram>) {
        self.seccomp = Some(filter);
    }

    /// Starts the vCPU thread; it ends with the error that stopped the
    /// vCPU, if any (after asking the VM to stop with [`ExitReason::Error`]).
    pub fn start(mut self) -> Result<JoinHandle<Result<(), VcpuError>>, VcpuError> {
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let result = self.confine().and_then(|()| self.run_loop());
                if let Some((path, samples)) = self.profile.take() {
                    let text: String = samples.iter().map(|r| format!("{r:x}\n")).collect();
                    match std::fs::write(&path, text) {
                        Ok(()) => log::info!(
                            "vmm: vCPU {id}: {} rip samples written to {}",
                            samples.len(),
                            path.display()
                        ),
                        Err(e) => log::warn!("vmm: writing {}: {e}", path.display()),
                    }
                }
                if self.int3_fixups + self.fwait_fixups > 0 {
                    log::debug!(
                        "vmm: vCPU {id}: PVM emulation fixups: {} int3, {} fwait",
                        self.int3_fixups,
                        self.fwait_fixups
                    );
                }
                if let Err(e) = &result {
                    log::debug!("vmm: vCPU {id} stopped: {e}");
                    self.shared.request_exit(ExitReason::Error);
                }
                result
            })
            .map_err(|e| VcpuError::Spawn(id, e))
    }

    fn confine(&mut self) -> Result<(), VcpuError> {
        match self.seccomp.take() {
            Some(filter) => seccomp::apply(ThreadKind::Vcpu, &filter)
                .map_err(|e| VcpuError::Seccomp(self.id, e)),
            None => Ok(()),
        }
    }

    fn run_loop(&mut self) -> Result<(), VcpuError> {
        if self.id == 0 {
            let _ = self.shared.first_run.set(Instant::now());
            if let Some(t) = self
                .shared
                .boot_waiter
                .lock()
                .ok()
                .and_then(|mut w| w.take())
            {
                t.unpark();
            }
        }
        loop {
            if self.shared.exit_requested() {
                return Ok(());
            }
            let action = match self.fd.run() {
                Ok(exit) => handle_exit(self.id, exit, &self.pio, &self.mmio),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if let Some((_, samples)) = self.profile.as_mut() {
                        if let Ok(regs) = self.fd.get_regs() {
                            samples.push(regs.rip);
                        }
                    }
                    Action::Continue
                }
                Err(e) => Action::Fail(VcpuError::Run(self.id, e)),
            };
            match action {
                Action::Continue => {}
                Action::Stop(reason) => {
                    self.shared.request_exit(reason);
                    return Ok(());
                }
                Action::InternalError => self.resolve_internal_error()?,
                Action::Fail(e) => return Err(e),
            }
        }
    }

    /// KVM_EXIT_INTERNAL_ERROR. On PVM hosts (docs/KVM-ON-CI.md gap 2) the
    /// instruction emulator lacks `int3` and `fwait`; both are resolved here.
    /// On hardware KVM guest kernel code runs natively and never reaches the
    /// emulator for these, so this path stays dormant (and is gated on PVM).
    fn resolve_internal_error(&mut self) -> Result<(), VcpuError> {
        let run = self.fd.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, for which
        // `internal` is the active member of the exit union; it is plain data.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let suberror = internal.suberror;
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let mut bytes = Vec::new();
        if suberror == INTERNAL_ERROR_EMULATION
            && ndata >= 3
            && internal.data[0] & EMULATION_FLAG_INSTRUCTION_BYTES != 0
        {
            // data[1..3] = u8 insn_size, then 15 instruction bytes.
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&internal.data[1].to_le_bytes());
            raw[8..].copy_from_slice(&internal.data[2].to_le_bytes());
            let len = usize::from(raw[0]).min(15);
            bytes.extend_from_slice(&raw[1..1 + len]);
        }
        let mut regs = self
            .fd
            .get_regs()
            .map_err(|e| VcpuError::Fixup(self.id, e))?;
        let first = bytes.first().copied();
        if self.pvm && suberror == INTERNAL_ERROR_EMULATION {
            match first {
                Some(INSN_INT3) => {
                    // The kernel's int3 self-test and text patching use int3;
                    // deliver it as the #BP trap the CPU would raise (rip past
                    // the 1-byte instruction).
                    regs.rip += 1;
                    self.fd
                        .set_regs(&regs)
                        .map_err(|e| VcpuError::Fixup(self.id, e))?;
                    let mut events = self
                        .fd
                        .get_vcpu_events()
                        .map_err(|e| VcpuError::Fixup(self.id, e))?;
                    events.exception.injected = 1;
                    events.exception.nr = BP_VECTOR;
                    events.exception.has_error_code = 0;
                    events.exception.error_code = 0;
                    self.fd
                        .set_vcpu_events(&events)
                        .map_err(|e| VcpuError::Fixup(self.id, e))?;
                    self.int3_fixups += 1;
                    log::debug!("vmm: PVM: int3 at {:#x} delivered as #BP", regs.rip - 1);
                    return Ok(());
                }
                Some(INSN_FWAIT) => {
                    // fwait (fpu__drop at exec) only waits for pending x87
                    // exceptions, which the guest never has unmasked: skip it.
                    regs.rip += 1;
                    self.fd
                        .set_regs(&regs)
                        .map_err(|e| VcpuError::Fixup(self.id, e))?;
                    self.fwait_fixups += 1;
                    log::debug!("vmm: PVM: fwait at {:#x} skipped", regs.rip - 1);
                    return Ok(());
                }
                _ => {}
            }
        }
        Err(VcpuError::EmulationFailure {
            id: self.id,
            rip: regs.rip,
            bytes,
            suberror,
        })
    }
}

/// Dispatches one exit. Port reads nobody claims return 0xff and writes are
/// dropped (the kernel probes 0x80, CMOS, 0x92, … and copes), logged at debug.
fn handle_exit(id: u8, exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus) -> Action {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                data.fill(0xff);
                log::debug!("vmm: vCPU {id}: read of unclaimed port {port:#x}");
            }
            Action::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if !pio.write(u64::from(port), data) {
                log::debug!("vmm: vCPU {id}: write {data:02x?} to unclaimed port {port:#x}");
            }
            Action::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                data.fill(0xff);
                log::debug!("vmm: vCPU {id}: read of unclaimed MMIO {addr:#x}");
            }
            Action::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                log::debug!("vmm: vCPU {id}: write to unclaimed MMIO {addr:#x}");
            }
            Action::Continue
        }
        // A triple fault (e.g. `reboot=t`, or a crash before the IDT is up).
        VcpuExit::Shutdown => Action::Stop(ExitReason::Reset),
        VcpuExit::SystemEvent(kind, _) => Action::Stop(ExitReason::SystemEvent(kind)),
        VcpuExit::InternalError => Action::InternalError,
        VcpuExit::FailEntry(reason, _) => Action::Fail(VcpuError::FailEntry { id, reason }),
        VcpuExit::Intr => Action::Continue,
        other => Action::Fail(VcpuError::UnexpectedExit {
            id,
            exit: format!("{other:?}"),
        }),
    }
}

//! vCPUs: how many, their creation with boot state, their threads (started,
//! kicked out of KVM_RUN with a signal, stopped and joined).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use seccompiler::BpfProgram;
use vm_memory::GuestAddress;

use super::error::BuildError;
use crate::device_manager::DeviceManager;
use crate::shared::{ExitReason, VmShared};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm;

/// Development aid: when this environment variable names a file, vCPU 0 is
/// interrupted every 5 ms and its guest rip recorded there (one hex address
/// per line) at exit; map them with `nm -n vmlinux`. Costs a VM exit per
/// sample; off unless set.
pub const PROFILE_ENV: &str = "BERTH_VMM_PROFILE";

/// Signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The number of vCPUs to create for `requested`.
///
/// PVM quirk: secondary vCPUs hang during bring-up (after "CPU 1
/// Converting physical 0 to logical die 1": the guest reads the host's
/// native CPUID, not ours, so its topology is inconsistent). Measured with
/// 2 vCPUs: boot never completes. PVM guests run uniprocessor; hardware KVM
/// is unaffected.
pub fn vcpu_count(requested: u8, pvm: bool) -> u8 {
    if pvm && requested > 1 {
        log::warn!(
            "vmm: PVM host: {requested} vCPUs requested, using 1 (SMP bring-up hangs under PVM)"
        );
        1
    } else {
        requested
    }
}

/// Creates `count` vCPUs entering the kernel at `entry`, over the buses of
/// `dm`, each to confine its thread with `filter`; installs the kick
/// signal's (no-op) handler first.
#[allow(clippy::too_many_arguments)]
pub fn create_vcpus(
    vm: &vm::Vm,
    count: u8,
    entry: GuestAddress,
    dm: DeviceManager,
    shared: &Arc<VmShared>,
    pvm: bool,
    filter: Option<&Arc<BpfProgram>>,
) -> Result<Vec<Vcpu>, BuildError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
        .map_err(BuildError::Signal)?;
    let pio = Arc::new(dm.pio);
    let mmio = Arc::new(dm.mmio);
    let mut vcpus = Vec::with_capacity(usize::from(count));
    for id in 0..count {
        let mut vcpu = Vcpu::new(
            &vm.fd,
            &vm.supported_cpuid,
            id,
            count,
            entry,
            pio.clone(),
            mmio.clone(),
            shared.clone(),
            pvm,
        )
        .map_err(BuildError::Vcpu)?;
        if let Some(f) = filter {
            vcpu.set_seccomp_filter(f.clone());
        }
        if id == 0 {
            if let Some(path) = std::env::var_os(PROFILE_ENV) {
                vcpu.enable_profiling(path.into());
            }
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// Running vCPU threads; dropping them stops and joins them.
pub struct VcpuThreads {
    shared: Arc<VmShared>,
    handles: Vec<JoinHandle<Result<(), VcpuError>>>,
    profiler: Option<JoinHandle<()>>,
}

/// Starts the vCPU threads and returns once vCPU 0 is about to enter its
/// first KVM_RUN (or after 1 s, if its thread has not been scheduled by
/// then). On failure the threads already started are stopped.
pub fn start_vcpus(vcpus: Vec<Vcpu>, shared: &Arc<VmShared>) -> Result<VcpuThreads, BuildError> {
    let mut threads = VcpuThreads {
        shared: shared.clone(),
        handles: Vec::with_capacity(vcpus.len()),
        profiler: None,
    };
    // Wait below until vCPU 0 is about to enter KVM_RUN rather than return
    // and let the caller's next steps compete with the new thread for a CPU
    // (quiet PVM host, examples/boot: set-up median 3.0 ms with the wait,
    // 3.7 ms without).
    if let Ok(mut w) = shared.boot_waiter.lock() {
        *w = Some(std::thread::current());
    }
    for vcpu in vcpus {
        // On failure, `threads` is dropped, which stops started vCPUs.
        let handle = vcpu.start().map_err(BuildError::Vcpu)?;
        threads.handles.push(handle);
    }
    if std::env::var_os(PROFILE_ENV).is_some() {
        if let Some(first) = threads.handles.first() {
            threads.profiler = start_profile_kicker(first, shared.clone());
        }
    }
    log::debug!("vmm: vCPUs started after {:?}", shared.start.elapsed());
    // Bounded: a starved vCPU thread must not hold up the caller for long.
    let deadline = Instant::now() + Duration::from_secs(1);
    while shared.first_run.get().is_none() && !shared.exit_requested() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::park_timeout(deadline - now);
    }
    if let Ok(mut w) = shared.boot_waiter.lock() {
        *w = None;
    }
    Ok(threads)
}

impl VcpuThreads {
    /// Asks the VM to stop, kicks every vCPU out of KVM_RUN and joins the
    /// threads; returns the error of the first (by id) that failed.
    pub fn stop(&mut self) -> Option<VcpuError> {
        use vmm_sys_util::signal::Killable;
        self.shared.request_exit(ExitReason::Killed);
        if let Some(p) = self.profiler.take() {
            let _ = p.join();
        }
        let mut first_error = None;
        for handle in self.handles.drain(..) {
            // A kick can land just before the thread enters KVM_RUN; repeat
            // until the thread has seen the stop flag.
            while !handle.is_finished() {
                if let Err(e) = handle.kill(kick_signal()) {
                    log::debug!("vmm: kicking vCPU: {e}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => log::error!("vmm: a vCPU thread panicked"),
            }
        }
        first_error
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kicks the vCPU thread out of KVM_RUN every 5 ms so it samples its rip.
fn start_profile_kicker<T>(vcpu: &JoinHandle<T>, shared: Arc<VmShared>) -> Option<JoinHandle<()>> {
    use std::os::unix::thread::JoinHandleExt;
    let tid = vcpu.as_pthread_t();
    let spawned = std::thread::Builder::new()
        .name("profile".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(5));
                if shared.exit_requested() {
                    break;
                }
                // SAFETY: `tid` is a vCPU thread; `VcpuThreads::stop` joins
                // this thread before joining any vCPU, so it is still alive
                // here. The signal has a no-op handler installed.
                let ret = unsafe { libc::pthread_kill(tid, kick_signal()) };
                if ret != 0 {
                    break;
                }
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            log::warn!("vmm: starting the profiler: {e}");
            None
        }
    }
}

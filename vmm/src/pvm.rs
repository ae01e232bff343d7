//! PVM host detection and the guest command line that works around its
//! instruction emulator (docs/KVM-ON-CI.md).
//!
//! PVM is a software-assisted nested hypervisor whose `/dev/kvm` speaks the
//! normal KVM API but emulates guest kernel code. Its CPUID is the host's
//! native one (KVM_SET_CPUID2 masks do not reach the guest), and its emulator
//! lacks XRSTOR, CLAC/STAC, POPCNT and others the kernel patches in through
//! alternatives, so the guest must be told not to use them. On hardware KVM
//! none of this is applied.

use std::path::Path;

/// Present when the host's KVM is PVM.
pub const PVM_MODULE_PATH: &str = "/sys/module/kvm_pvm";

/// Command-line parameters that keep the guest kernel off CPU features PVM's
/// emulator cannot execute (gap 1 of docs/KVM-ON-CI.md).
///
/// Differences from the list in the doc, measured on Linux 6.1:
/// - `noxsave` is expressed as `clearcpuid=xsave`: `noxsave` has no
///   `__setup` handler, so the kernel passes it on to init as an argument.
///   Clearing XSAVE also clears everything that depends on it (avx, avx2,
///   avx512f, xsaveopt, xsavec, xsaves), so those are not listed.
/// - `cx16` is added: SLUB's `lock cmpxchg16b` is an emulation failure
///   (seen: `f0 48 0f c7 4e 20` during SLUB init).
/// - `sha_ni`, `aes`, `pclmulqdq` are dropped: only crypto drivers use them
///   and berth.config builds none (generic crc32c only).
/// - 6.1 parses `clearcpuid=` into a 128-byte buffer; anything past that is
///   silently ignored, so the list must stay short (a test checks it).
pub const PVM_CMDLINE: &str = "clearcpuid=xsave,smap,smep,umip,popcnt,fsgsbase,invpcid,pcid,rdpid,clflushopt,clwb,bmi1,bmi2,rdrand,rdseed,erms,fsrm,cx16";

/// Boot-time savers applied only on PVM, where guest kernel code is emulated
/// at ~1-2 M instructions/s. Each was found with the VMM's rip sampler
/// (`BERTH_VMM_PROFILE`) and measured:
/// - `rodata=off` skips `mark_rodata_ro()`, whose page-attribute changes over
///   the kernel image took ~5.5 s. It leaves guest kernel text/rodata
///   writable inside the guest: a hardening loss for the guest kernel only,
///   not for the host/VM boundary.
/// - `percpu_alloc=page` builds the first per-CPU chunk from 4 KiB pages
///   instead of a 2 MiB unit that is zeroed with an emulated `rep stosb`
///   (~1.5-2 s).
/// - `noreplace-smp` keeps the kernel from rewriting every `lock` prefix
///   through `text_poke()` (a page-table switch per site) when it finds
///   itself uniprocessor (~1.5 s).
///
/// None of these is applied on hardware KVM.
pub const PVM_SPEED_CMDLINE: &str = "rodata=off percpu_alloc=page noreplace-smp";

/// Whether this host's /dev/kvm is PVM.
pub fn detected() -> bool {
    Path::new(PVM_MODULE_PATH).exists()
}

/// Whether to apply the PVM quirks: `forced` if set, else [`detected`];
/// logs when they are on.
pub fn quirks_on(forced: Option<bool>) -> bool {
    let pvm = forced.unwrap_or_else(detected);
    if pvm {
        log::info!("vmm: PVM host (/sys/module/kvm_pvm): quirks on: clearcpuid, boot-time savers, pvm_syscall_fix=1, int3/fwait fixups, 1 vCPU");
    }
    pvm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearcpuid_fits_the_kernel_buffer() {
        let value = PVM_CMDLINE.strip_prefix("clearcpuid=").unwrap();
        assert!(!value.contains(' '));
        // arch/x86/kernel/cpu/common.c: char arg[128], NUL included.
        assert!(value.len() < 128, "{} bytes", value.len());
    }
}

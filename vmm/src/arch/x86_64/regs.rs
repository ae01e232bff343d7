//! Boot-time vCPU state for the Linux 64-bit boot protocol: long mode with
//! identity-mapped page tables, flat segments, `rsi` = zero page.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{kvm_segment_from_gdt, BOOT_GDT, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{
    BOOT_PARAMS_START, BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START,
};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// Errors setting up boot registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// KVM_GET_SREGS failed.
    #[error("KVM_GET_SREGS")]
    GetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_SREGS failed.
    #[error("KVM_SET_SREGS")]
    SetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_REGS failed.
    #[error("KVM_SET_REGS")]
    SetRegs(#[source] kvm_ioctls::Error),
    /// KVM_SET_FPU failed.
    #[error("KVM_SET_FPU")]
    SetFpu(#[source] kvm_ioctls::Error),
    /// Building the MSR list failed.
    #[error("building the boot MSR list")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    /// KVM_SET_MSRS failed or set fewer MSRs than asked.
    #[error("KVM_SET_MSRS set {set} of {wanted} MSRs")]
    SetMsrs {
        /// MSRs set.
        set: usize,
        /// MSRs wanted.
        wanted: usize,
    },
    /// KVM_SET_MSRS ioctl failed.
    #[error("KVM_SET_MSRS")]
    SetMsrsIoctl(#[source] kvm_ioctls::Error),
    /// KVM_GET_LAPIC failed.
    #[error("KVM_GET_LAPIC")]
    GetLapic(#[source] kvm_ioctls::Error),
    /// KVM_SET_LAPIC failed.
    #[error("KVM_SET_LAPIC")]
    SetLapic(#[source] kvm_ioctls::Error),
    /// Writing the GDT/IDT/page tables to guest memory failed.
    #[error("writing {what} to guest memory")]
    WriteMemory {
        /// Which structure.
        what: &'static str,
        /// Cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// General purpose registers at kernel entry.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.raw_value(),
        rsp: BOOT_STACK_POINTER.raw_value(),
        rbp: BOOT_STACK_POINTER.raw_value(),
        rsi: BOOT_PARAMS_START.raw_value(),
        ..Default::default()
    }
}

/// The identity-mapping page tables for the first GiB (2 MiB pages), as
/// (address, 64-bit entries) to write.
pub fn page_tables() -> Vec<(GuestAddress, Vec<u64>)> {
    // Present | writable.
    let pml4 = vec![PDPTE_START.raw_value() | 0x03];
    let pdpte = vec![PDE_START.raw_value() | 0x03];
    // Present | writable | page size (2 MiB).
    let pde = (0..512u64).map(|i| (i << 21) | 0x83).collect();
    vec![(PML4_START, pml4), (PDPTE_START, pdpte), (PDE_START, pde)]
}

fn write_u64s(
    mem: &GuestMemoryMmap,
    at: GuestAddress,
    vals: &[u64],
    what: &'static str,
) -> Result<(), RegsError> {
    for (i, v) in vals.iter().enumerate() {
        let addr = at.unchecked_add(i as u64 * 8);
        mem.write_obj(*v, addr)
            .map_err(|source| RegsError::WriteMemory { what, source })?;
    }
    Ok(())
}

/// Writes GDT, IDT and page tables to guest memory (once per VM).
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    write_u64s(mem, GDT_START, &BOOT_GDT, "GDT")?;
    write_u64s(mem, IDT_START, &[0], "IDT")?;
    for (addr, entries) in page_tables() {
        write_u64s(mem, addr, &entries, "page tables")?;
    }
    Ok(())
}

/// Fills special registers for 64-bit mode (segments, GDT/IDT, CR0/CR3/CR4, EFER).
pub fn configure_sregs(sregs: &mut kvm_sregs) {
    let code = kvm_segment_from_gdt(BOOT_GDT[CODE_INDEX as usize], CODE_INDEX);
    let data = kvm_segment_from_gdt(BOOT_GDT[DATA_INDEX as usize], DATA_INDEX);
    let tss = kvm_segment_from_gdt(BOOT_GDT[TSS_INDEX as usize], TSS_INDEX);
    sregs.gdt.base = GDT_START.raw_value();
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = IDT_START.raw_value();
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START.raw_value();
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// The MSRs set at boot (SYSENTER/SYSCALL cleared, fast strings, write-back MTRR default).
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        // MTRRs enabled, default type write-back.
        e(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

/// Sets all boot registers of one vCPU.
pub fn setup_vcpu_regs(vcpu: &VcpuFd, entry: GuestAddress) -> Result<(), RegsError> {
    let msrs = Msrs::from_entries(&boot_msr_entries()).map_err(RegsError::MsrList)?;
    let wanted = msrs.as_slice().len();
    let set = vcpu.set_msrs(&msrs).map_err(RegsError::SetMsrsIoctl)?;
    if set != wanted {
        return Err(RegsError::SetMsrs { set, wanted });
    }
    let mut sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    configure_sregs(&mut sregs);
    vcpu.set_sregs(&sregs).map_err(RegsError::SetSregs)?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(RegsError::SetRegs)?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::SetFpu)?;
    Ok(())
}

/// Programs LAPIC LINT0 as ExtINT and LINT1 as NMI (virtual-wire mode), so
/// the in-kernel PIC's interrupts reach the boot CPU.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_NMI: u32 = 0x4;
    const APIC_MODE_EXTINT: u32 = 0x7;
    fn get(regs: &[std::os::raw::c_char], off: usize) -> u32 {
        let b = |i: usize| regs[off + i] as u8;
        u32::from_le_bytes([b(0), b(1), b(2), b(3)])
    }
    fn set(regs: &mut [std::os::raw::c_char], off: usize, v: u32) {
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            regs[off + i] = *b as std::os::raw::c_char;
        }
    }
    fn delivery(reg: u32, mode: u32) -> u32 {
        (reg & !0x700) | (mode << 8)
    }
    let mut lapic = vcpu.get_lapic().map_err(RegsError::GetLapic)?;
    let lvt0 = get(&lapic.regs, APIC_LVT0);
    set(&mut lapic.regs, APIC_LVT0, delivery(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get(&lapic.regs, APIC_LVT1);
    set(&mut lapic.regs, APIC_LVT1, delivery(lvt1, APIC_MODE_NMI));
    vcpu.set_lapic(&lapic).map_err(RegsError::SetLapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tables_identity_map_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(PML4_START).unwrap();
        assert_eq!(pml4, 0xa003);
        let pdpte: u64 = mem.read_obj(PDPTE_START).unwrap();
        assert_eq!(pdpte, 0xb003);
        for i in 0..512u64 {
            let pde: u64 = mem.read_obj(PDE_START.unchecked_add(i * 8)).unwrap();
            assert_eq!(pde, (i << 21) | 0x83);
        }
        let gdt1: u64 = mem.read_obj(GDT_START.unchecked_add(8)).unwrap();
        assert_eq!(gdt1, BOOT_GDT[1]);
        let idt: u64 = mem.read_obj(IDT_START).unwrap();
        assert_eq!(idt, 0);
    }

    #[test]
    fn sregs_long_mode() {
        let mut s = kvm_sregs::default();
        configure_sregs(&mut s);
        assert_eq!(s.cr3, PML4_START.raw_value());
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.selector, 8);
        assert_eq!(s.ss.selector, 0x10);
        assert_eq!(s.gdt.limit, 31);
        assert_eq!(s.idt.base, IDT_START.raw_value());
    }

    #[test]
    fn regs_point_at_zero_page() {
        let r = boot_regs(GuestAddress(0x100_0000));
        assert_eq!(r.rip, 0x100_0000);
        assert_eq!(r.rsi, BOOT_PARAMS_START.raw_value());
        assert_eq!(r.rflags, 2);
    }
}

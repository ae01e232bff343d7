//! Guest physical memory layout. Every fixed address the boot recipe uses is
//! here, as a typed [`GuestAddress`]; `tests` check they do not overlap.

use vm_memory::GuestAddress;

/// Global descriptor table (4 entries × 8 bytes): null, code, data, TSS.
pub const GDT_START: GuestAddress = GuestAddress(0x500);
/// Interrupt descriptor table: a null IDT (limit 7) until the kernel loads its own.
pub const IDT_START: GuestAddress = GuestAddress(0x520);
/// Linux zero page (`struct boot_params`, 4 KiB); `rsi` points here at entry.
pub const BOOT_PARAMS_START: GuestAddress = GuestAddress(0x7000);
/// Initial stack pointer (grows down, below the page tables).
pub const BOOT_STACK_POINTER: GuestAddress = GuestAddress(0x8ff0);
/// Boot page tables: PML4 (one page).
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// Boot page tables: PDPT (one page).
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
/// Boot page tables: page directory of 512 × 2 MiB pages = identity map of the first GiB.
pub const PDE_START: GuestAddress = GuestAddress(0xb000);
/// Kernel command line (NUL-terminated).
pub const CMDLINE_START: GuestAddress = GuestAddress(0x2_0000);
/// Capacity reserved for the command line, NUL included (x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area; the MP table is written here and
/// the e820 map marks [EBDA_START, HIMEM_START) reserved.
pub const EBDA_START: GuestAddress = GuestAddress(0x9_fc00);
/// First byte above the legacy 1 MiB hole; the ELF kernel loads above it.
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);
/// Start of the 32-bit MMIO gap (3.25 GiB): no RAM from here to 4 GiB.
pub const MMIO_GAP_START: GuestAddress = GuestAddress(0xd000_0000);
/// End of the MMIO gap (4 GiB): RAM beyond the gap continues here.
pub const MMIO_GAP_END: GuestAddress = GuestAddress(0x1_0000_0000);
/// First virtio-mmio device window; devices follow at [`MMIO_DEVICE_SIZE`] steps.
pub const MMIO_DEVICES_START: GuestAddress = MMIO_GAP_START;
/// Size of one virtio-mmio register window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// KVM's three-page TSS region (KVM_SET_TSS_ADDR), inside the MMIO gap.
pub const KVM_TSS_ADDRESS: GuestAddress = GuestAddress(0xfffb_d000);
/// KVM's one-page identity-map region (KVM_SET_IDENTITY_MAP_ADDR), just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: GuestAddress = GuestAddress(0xfffb_c000);
/// IRQ line of the 8250 serial port (COM1).
pub const SERIAL_IRQ: u32 = 4;
/// First IRQ line handed to virtio-mmio devices.
pub const FIRST_DEVICE_IRQ: u32 = 5;
/// Last IRQ line usable by devices (IOAPIC has 24 pins).
pub const LAST_DEVICE_IRQ: u32 = 23;

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Address;

    #[test]
    fn low_memory_regions_do_not_overlap() {
        // (start, size) of everything placed in low memory.
        let mut regions = [
            (GDT_START.raw_value(), 4 * 8),
            (IDT_START.raw_value(), 8),
            (BOOT_PARAMS_START.raw_value(), 0x1000),
            (PML4_START.raw_value(), 0x1000),
            (PDPTE_START.raw_value(), 0x1000),
            (PDE_START.raw_value(), 0x1000),
            (CMDLINE_START.raw_value(), CMDLINE_MAX_SIZE as u64),
            (EBDA_START.raw_value(), 0x400),
        ];
        regions.sort();
        for w in regions.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
        let last = regions[regions.len() - 1];
        assert!(last.0 + last.1 <= HIMEM_START.raw_value());
        // The stack sits between the zero page and the page tables.
        assert!(BOOT_STACK_POINTER.raw_value() > BOOT_PARAMS_START.raw_value() + 0x1000);
        assert!(BOOT_STACK_POINTER.raw_value() < PML4_START.raw_value());
    }

    #[test]
    fn kvm_regions_in_gap() {
        assert!(KVM_IDENTITY_MAP_ADDRESS.raw_value() + 0x1000 <= KVM_TSS_ADDRESS.raw_value());
        assert!(KVM_TSS_ADDRESS.raw_value() + 3 * 0x1000 <= MMIO_GAP_END.raw_value());
        assert!(
            MMIO_DEVICES_START.raw_value() + 64 * MMIO_DEVICE_SIZE
                < KVM_IDENTITY_MAP_ADDRESS.raw_value()
        );
        const { assert!(FIRST_DEVICE_IRQ > SERIAL_IRQ) };
    }
}

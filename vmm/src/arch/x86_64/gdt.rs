//! The boot GDT: flat 64-bit code and data segments and a TSS descriptor.

use kvm_bindings::kvm_segment;

/// Packs a segment descriptor (`flags` = the access byte in bits 0..8 and
/// the G/DB/L/AVL nibble in bits 12..16, as in the kernel's `GDT_ENTRY`).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT, in order: null, 64-bit code (selector 0x08), data (0x10), TSS (0x18).
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
/// Index of the code segment in [`BOOT_GDT`].
pub const CODE_INDEX: u8 = 1;
/// Index of the data segment in [`BOOT_GDT`].
pub const DATA_INDEX: u8 = 2;
/// Index of the TSS in [`BOOT_GDT`].
pub const TSS_INDEX: u8 = 3;

fn get_base(entry: u64) -> u64 {
    (((entry) & 0xFF00_0000_0000_0000) >> 32)
        | (((entry) & 0x0000_00FF_0000_0000) >> 16)
        | (((entry) & 0x0000_0000_FFFF_0000) >> 16)
}

fn get_limit(entry: u64) -> u32 {
    let limit =
        ((((entry) & 0x000F_0000_0000_0000) >> 32) | ((entry) & 0x0000_0000_0000_FFFF)) as u32;
    // Granularity bit: limit is in 4 KiB units.
    if (entry >> 55) & 1 == 1 {
        (limit << 12) | 0xfff
    } else {
        limit
    }
}

/// The KVM segment register value for GDT entry `index`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    kvm_segment {
        base: get_base(entry),
        limit: get_limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(((entry >> 47) & 1) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_encode_expected_values() {
        assert_eq!(BOOT_GDT[0], 0);
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn segments_from_gdt() {
        let cs = kvm_segment_from_gdt(BOOT_GDT[1], CODE_INDEX);
        assert_eq!(cs.selector, 0x08);
        assert_eq!(cs.l, 1);
        assert_eq!(cs.db, 0);
        assert_eq!(cs.present, 1);
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = kvm_segment_from_gdt(BOOT_GDT[2], DATA_INDEX);
        assert_eq!(ds.selector, 0x10);
        assert_eq!(ds.db, 1);
        assert_eq!(ds.type_, 3);
        let tss = kvm_segment_from_gdt(BOOT_GDT[3], TSS_INDEX);
        assert_eq!(tss.selector, 0x18);
        assert_eq!(tss.type_, 0xb);
        assert_eq!(tss.s, 0);
        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }
}

//! x86_64 boot recipe pieces: memory layout, boot registers/page tables,
//! GDT, CPUID, MP table and the Linux 64-bit boot protocol's zero page.

pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use layout::{
    BOOT_PARAMS_START, CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START,
};

/// e820 entry type for usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 entry type for reserved memory.
pub const E820_RESERVED: u32 = 2;

/// Errors of the x86_64 boot-parameter set-up.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// More e820 entries than the zero page holds.
    #[error("too many e820 entries")]
    E820Overflow,
    /// Writing the zero page failed.
    #[error("writing boot params to guest memory")]
    WriteBootParams(#[source] vm_memory::GuestMemoryError),
    /// The initramfs does not fit in guest RAM.
    #[error("initramfs of {0} bytes does not fit in guest memory")]
    InitrdTooBig(usize),
}

/// The guest RAM regions for `mem_size` bytes: one region below the 32-bit
/// MMIO gap, and the remainder (if any) above 4 GiB.
pub fn arch_memory_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let gap_start = MMIO_GAP_START.raw_value();
    if mem_size <= gap_start {
        vec![(GuestAddress(0), mem_size as usize)]
    } else {
        vec![
            (GuestAddress(0), gap_start as usize),
            (MMIO_GAP_END, (mem_size - gap_start) as usize),
        ]
    }
}

/// Where to place an initramfs of `size` bytes: page-aligned, as high as
/// possible in the RAM below the MMIO gap (and below 2 GiB, the default
/// `initrd_addr_max`).
pub fn initrd_load_addr(mem: &GuestMemoryMmap, size: usize) -> Result<GuestAddress, ArchError> {
    const PAGE: u64 = 4096;
    const INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
    let low_end = mem
        .last_addr()
        .raw_value()
        .min(MMIO_GAP_START.raw_value() - 1)
        .min(INITRD_ADDR_MAX)
        + 1;
    let size = size as u64;
    let start = low_end
        .checked_sub(size)
        .map(|a| a & !(PAGE - 1))
        .ok_or(ArchError::InitrdTooBig(size as usize))?;
    if start < HIMEM_START.raw_value() {
        return Err(ArchError::InitrdTooBig(size as usize));
    }
    Ok(GuestAddress(start))
}

/// Builds the Linux zero page ("boot params") for the 64-bit boot protocol.
///
/// `cmdline_size` excludes the terminating NUL. `initrd` is (address, size).
pub fn build_boot_params(
    mem_size: u64,
    cmdline_size: usize,
    initrd: Option<(GuestAddress, usize)>,
) -> Result<boot_params, ArchError> {
    const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
    const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
    const KERNEL_LOADER_OTHER: u8 = 0xff;
    const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    params.hdr.cmd_line_ptr = CMDLINE_START.raw_value() as u32;
    params.hdr.cmdline_size = cmdline_size as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let mut entries: Vec<(u64, u64, u32)> = vec![
        (0, EBDA_START.raw_value(), E820_RAM),
        // EBDA + legacy video/BIOS area: where the MP table lives.
        (
            EBDA_START.raw_value(),
            HIMEM_START.raw_value() - EBDA_START.raw_value(),
            E820_RESERVED,
        ),
    ];
    let gap_start = MMIO_GAP_START.raw_value();
    if mem_size <= gap_start {
        entries.push((
            HIMEM_START.raw_value(),
            mem_size - HIMEM_START.raw_value(),
            E820_RAM,
        ));
    } else {
        entries.push((
            HIMEM_START.raw_value(),
            gap_start - HIMEM_START.raw_value(),
            E820_RAM,
        ));
        entries.push((MMIO_GAP_END.raw_value(), mem_size - gap_start, E820_RAM));
    }
    if entries.len() > params.e820_table.len() {
        return Err(ArchError::E820Overflow);
    }
    for (i, (addr, size, type_)) in entries.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            type_: *type_,
        };
    }
    params.e820_entries = entries.len() as u8;
    Ok(params)
}

/// Writes the zero page at [`BOOT_PARAMS_START`].
pub fn write_boot_params(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), ArchError> {
    mem.write_obj(*params, BOOT_PARAMS_START)
        .map_err(ArchError::WriteBootParams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_params_fields() {
        let p = build_boot_params(256 << 20, 42, Some((GuestAddress(0x0f00_0000), 4096))).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START.raw_value() as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!({ hdr.ramdisk_size }, 4096);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table;
        assert_eq!(
            ({ e[0].addr }, { e[0].size }, { e[0].type_ }),
            (0, 0x9fc00, E820_RAM)
        );
        assert_eq!({ e[1].type_ }, E820_RESERVED);
        assert_eq!({ e[2].addr }, 0x10_0000);
        assert_eq!({ e[2].addr } + { e[2].size }, 256 << 20);
    }

    #[test]
    fn boot_params_without_initrd_and_above_gap() {
        let mem = 4u64 << 30;
        let p = build_boot_params(mem, 1, None).unwrap();
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert_eq!(p.e820_entries, 4);
        let e = p.e820_table;
        assert_eq!({ e[2].addr } + { e[2].size }, MMIO_GAP_START.raw_value());
        assert_eq!({ e[3].addr }, MMIO_GAP_END.raw_value());
        assert_eq!({ e[3].size }, mem - MMIO_GAP_START.raw_value());
    }

    #[test]
    fn memory_regions_split_at_gap() {
        assert_eq!(
            arch_memory_regions(1 << 30),
            vec![(GuestAddress(0), 1 << 30)]
        );
        let r = arch_memory_regions(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].0, MMIO_GAP_END);
    }

    #[test]
    fn initrd_goes_high_and_aligned() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let a = initrd_load_addr(&mem, 10_000).unwrap();
        assert_eq!(a.raw_value() % 4096, 0);
        assert!(a.raw_value() + 10_000 <= 64 << 20);
        assert!(a.raw_value() + 10_000 + 4096 > 64 << 20);
        assert!(initrd_load_addr(&mem, 128 << 20).is_err());
    }
}

//! The x86 boot state in guest memory besides the images: zero page, GDT
//! and boot page tables, MP table.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::error::BuildError;
use crate::arch::x86_64::{self as arch, mptable, regs};

/// Writes the zero page (memory map, command line of `cmdline_len` bytes,
/// initramfs placement), the boot GDT and page tables, and the MP table
/// for `num_vcpus`.
pub fn configure_system(
    mem: &GuestMemoryMmap<()>,
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<(GuestAddress, usize)>,
    num_vcpus: u8,
) -> Result<(), BuildError> {
    let params =
        arch::build_boot_params(mem_size, cmdline_len, initrd).map_err(BuildError::BootParams)?;
    arch::write_boot_params(mem, &params).map_err(BuildError::BootParams)?;
    regs::write_boot_tables(mem).map_err(BuildError::BootTables)?;
    mptable::setup_mptable(mem, num_vcpus).map_err(BuildError::Mptable)?;
    Ok(())
}

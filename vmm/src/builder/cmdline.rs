//! The kernel command line: berth's base parameters, the virtio-mmio
//! declarations, the PVM workarounds, the caller's extras.

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use vm_memory::GuestMemoryMmap;

use super::error::BuildError;
use crate::arch::x86_64::layout;
use crate::pvm;

/// Command-line parameters every berth guest gets.
pub const BASE_CMDLINE: &str = "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1";

/// Assembles the kernel command line: berth's base parameters, the
/// virtio-mmio device declarations, the PVM workarounds (only when `pvm`),
/// then the caller's extra parameters.
pub fn build_cmdline(extra: &str, mmio_entries: &[String], pvm: bool) -> String {
    let mut parts: Vec<&str> = vec![BASE_CMDLINE];
    parts.extend(mmio_entries.iter().map(String::as_str));
    if pvm {
        parts.push(pvm::PVM_CMDLINE);
        parts.push(pvm::PVM_SPEED_CMDLINE);
        parts.push(berth_spec::kvm::PVM_SYSCALL_FIX_PARAM);
    }
    let extra = extra.trim();
    if !extra.is_empty() {
        parts.push(extra);
    }
    parts.join(" ")
}

/// Builds the command line (see [`build_cmdline`]) and writes it at
/// [`layout::CMDLINE_START`]; returns it.
pub fn write_cmdline(
    mem: &GuestMemoryMmap<()>,
    extra: &str,
    mmio_entries: &[String],
    pvm: bool,
) -> Result<String, BuildError> {
    let text = build_cmdline(extra, mmio_entries, pvm);
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(BuildError::Cmdline)?;
    cmdline.insert_str(&text).map_err(BuildError::Cmdline)?;
    load_cmdline(mem, layout::CMDLINE_START, &cmdline).map_err(BuildError::LoadCmdline)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_without_pvm() {
        let c = build_cmdline(
            "  init=/init quiet ",
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
            false,
        );
        assert_eq!(
            c,
            "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 virtio_mmio.device=4K@0xd0000000:5 init=/init quiet"
        );
        assert!(!c.contains("pvm_syscall_fix"));
        assert!(!c.contains("clearcpuid"));
        assert!(!c.contains("rodata"));
    }

    #[test]
    fn cmdline_with_pvm() {
        let c = build_cmdline("", &[], true);
        assert!(c.starts_with(BASE_CMDLINE));
        assert!(c.contains(" clearcpuid=xsave,"));
        assert!(!c.contains("noxsave"));
        assert!(c.contains(" rodata=off percpu_alloc=page noreplace-smp "));
        assert!(c.contains("clearcpuid="));
        assert!(c.ends_with(berth_spec::kvm::PVM_SYSCALL_FIX_PARAM));
        assert!(c.len() < layout::CMDLINE_MAX_SIZE);
    }
}

//! The KVM VM: guest memory, in-kernel irqchip and PIT, TSS/identity map.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::arch_memory_regions;
use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Opening /dev/kvm failed.
    #[error("opening /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_VM failed.
    #[error("KVM_CREATE_VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// Allocating guest memory failed.
    #[error("allocating {0} MiB of guest memory")]
    GuestMemory(u64, #[source] vm_memory::mmap::FromRangesError),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM_SET_USER_MEMORY_REGION")]
    SetMemoryRegion(#[source] kvm_ioctls::Error),
    /// KVM_SET_TSS_ADDR failed.
    #[error("KVM_SET_TSS_ADDR")]
    SetTssAddress(#[source] kvm_ioctls::Error),
    /// KVM_SET_IDENTITY_MAP_ADDR failed.
    #[error("KVM_SET_IDENTITY_MAP_ADDR")]
    SetIdentityMap(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("KVM_CREATE_IRQCHIP")]
    CreateIrqchip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("KVM_CREATE_PIT2")]
    CreatePit(#[source] kvm_ioctls::Error),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
}

/// Maps `mem_size` bytes of guest RAM (anonymous, not yet touched).
pub fn guest_memory(mem_size: u64) -> Result<GuestMemoryMmap<()>, VmError> {
    GuestMemoryMmap::<()>::from_ranges(&arch_memory_regions(mem_size))
        .map_err(|e| VmError::GuestMemory(mem_size >> 20, e))
}

/// A created VM with its memory.
pub struct Vm {
    /// /dev/kvm.
    pub kvm: Kvm,
    /// The VM.
    pub fd: VmFd,
    /// Guest RAM.
    pub mem: GuestMemoryMmap<()>,
    /// KVM_GET_SUPPORTED_CPUID, the base of every vCPU's CPUID.
    pub supported_cpuid: CpuId,
}

impl Vm {
    /// Creates a VM over `mem` (from [`guest_memory`]), with irqchip and PIT.
    /// `kvm`: /dev/kvm opened by the caller (a jailed VMM has no /dev);
    /// `None` opens it.
    pub fn new(
        mem: GuestMemoryMmap<()>,
        kvm: Option<std::os::fd::OwnedFd>,
    ) -> Result<Self, VmError> {
        let t = std::time::Instant::now();
        let kvm = match kvm {
            // SAFETY: the caller hands over an open /dev/kvm descriptor it
            // owned; Kvm takes it over.
            Some(fd) => unsafe {
                <Kvm as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(
                    fd,
                ))
            },
            None => Kvm::new().map_err(VmError::OpenKvm)?,
        };
        log::trace!("vmm: /dev/kvm opened at {:?}", t.elapsed());
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        log::trace!("vmm: KVM_CREATE_VM took {:?}", t.elapsed());
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which lives
            // as long as the VM (both are fields of `Vm`, and vCPU threads
            // hold clones of `mem`), and slots do not overlap.
            unsafe { fd.set_user_memory_region(r) }.map_err(VmError::SetMemoryRegion)?;
        }
        log::trace!(
            "vmm: guest memory mapped and registered at {:?}",
            t.elapsed()
        );
        fd.set_tss_address(KVM_TSS_ADDRESS.raw_value() as usize)
            .map_err(VmError::SetTssAddress)?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS.raw_value())
            .map_err(VmError::SetIdentityMap)?;
        fd.create_irq_chip().map_err(VmError::CreateIrqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::CreatePit)?;
        log::trace!("vmm: irqchip and PIT created at {:?}", t.elapsed());
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmError::SupportedCpuid)?;
        log::trace!("vmm: KVM_GET_SUPPORTED_CPUID done at {:?}", t.elapsed());
        Ok(Vm {
            kvm,
            fd,
            mem,
            supported_cpuid,
        })
    }

    /// Host (address, length) of each guest RAM mapping.
    pub fn host_ranges(&self) -> Vec<(usize, usize)> {
        self.mem
            .iter()
            .map(|r| (r.as_ptr() as usize, r.len() as usize))
            .collect()
    }
}

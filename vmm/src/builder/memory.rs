//! Guest memory and what goes in it before the first instruction: the
//! kernel (mapped from the vmlinux file where it can be, see
//! [`crate::kernel`]) and the initramfs; the KVM VM is created meanwhile.

use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::config::Initramfs;
use super::error::BuildError;
use crate::arch::x86_64 as arch;
use crate::kernel::{PreparedKernel, COPY_KERNEL_ENV};
use crate::vstate::vm;

/// Where the loaded images are: what the boot parameters and vCPU 0 need.
pub struct BootImages {
    /// The kernel's entry point.
    pub entry: GuestAddress,
    /// The initramfs' guest address and length, if there is one.
    pub initrd: Option<(GuestAddress, usize)>,
}

/// Maps `mem_size` bytes of guest RAM (anonymous, not yet touched).
pub fn guest_memory(mem_size: u64) -> Result<GuestMemoryMmap<()>, BuildError> {
    vm::guest_memory(mem_size).map_err(BuildError::Vm)
}

/// Maps the kernel's loadable segments from the vmlinux file into `mem`
/// (before the memslots exist; see [`crate::kernel`]), or prepares to copy
/// them when [`COPY_KERNEL_ENV`] is set.
pub fn map_kernel(mem: &GuestMemoryMmap<()>, kernel: &Path) -> Result<PreparedKernel, BuildError> {
    let t = Instant::now();
    let allow_map = std::env::var_os(COPY_KERNEL_ENV).is_none();
    let kernel = PreparedKernel::prepare(mem, kernel, allow_map).map_err(BuildError::Kernel)?;
    log::trace!("vmm: kernel prepared in {:?}", t.elapsed());
    Ok(kernel)
}

/// Creates the KVM VM (irqchip, PIT) over `mem` on this thread while
/// another copies the rest of the images (initramfs, the kernel's partial
/// pages, or the whole kernel on the copy path): both take milliseconds on
/// nested hosts, mostly in page faults.
pub fn create_vm_and_load_images(
    mem: GuestMemoryMmap<()>,
    kernel: &PreparedKernel,
    initramfs: Option<&Initramfs>,
    kvm: Option<std::os::fd::OwnedFd>,
    start: Instant,
) -> Result<(vm::Vm, BootImages), BuildError> {
    let (vm, loaded) = std::thread::scope(|s| {
        let loader = std::thread::Builder::new()
            .name("vmm-loader".into())
            // Small stack: glibc caches thread stacks, so every touched
            // page would stay in the VMM's RSS.
            .stack_size(128 << 10)
            .spawn_scoped(s, || load_images(&mem, kernel, initramfs));
        let vm = vm::Vm::new(mem.clone(), kvm);
        log::trace!("vmm: VM created after {:?}", start.elapsed());
        let loaded = match loader {
            Ok(h) => h.join().unwrap_or(Err(BuildError::LoaderPanicked)),
            // No thread: load on this one.
            Err(_) => load_images(&mem, kernel, initramfs),
        };
        (vm, loaded)
    });
    let vm = vm.map_err(BuildError::Vm)?;
    Ok((vm, loaded?))
}

fn read_initramfs(src: &Initramfs) -> Result<Cow<'_, [u8]>, BuildError> {
    match src {
        Initramfs::Bytes(b) => Ok(Cow::Borrowed(b)),
        Initramfs::Path(p) => {
            let mut buf = Vec::new();
            File::open(p)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(|e| BuildError::ReadInitramfs(p.clone(), e))?;
            Ok(Cow::Owned(buf))
        }
    }
}

/// Copies what remains of the kernel (everything on the copy path, partial
/// pages when it is mapped) and the initramfs into guest memory.
fn load_images(
    mem: &GuestMemoryMmap<()>,
    kernel: &PreparedKernel,
    initramfs: Option<&Initramfs>,
) -> Result<BootImages, BuildError> {
    let t = Instant::now();
    let entry = kernel.finish(mem).map_err(BuildError::Kernel)?;
    log::trace!("vmm: kernel loaded in {:?}", t.elapsed());
    let initrd = match initramfs {
        None => None,
        Some(src) => {
            let data = read_initramfs(src)?;
            let addr =
                arch::initrd_load_addr(mem, data.len()).map_err(BuildError::PlaceInitramfs)?;
            mem.write_slice(&data, addr)
                .map_err(BuildError::WriteInitramfs)?;
            log::trace!(
                "vmm: kernel and initramfs ({} KiB) loaded in {:?}",
                data.len() >> 10,
                t.elapsed()
            );
            Some((addr, data.len()))
        }
    };
    Ok(BootImages { entry, initrd })
}

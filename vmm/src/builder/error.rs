//! The one error type of VM building and running: a variant per step.

use std::path::PathBuf;

use crate::arch::x86_64::{self as arch, mptable, regs};
use crate::device_manager::DeviceManagerError;
use crate::devices::virtio::block::BlockError;
use crate::devices::virtio::fs::FsError;
use crate::devices::virtio::mmio::MmioError;
use crate::devices::virtio::net::NetError;
use crate::devices::virtio::vsock::VsockError;
use crate::vstate::vcpu::VcpuError;
use crate::vstate::vm;

/// Errors booting or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Bad configuration.
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(&'static str),
    /// Reserved vsock guest CID.
    #[error("invalid vsock guest CID {0}: must be 3..=4294967294")]
    InvalidVsockCid(u32),
    /// Creating the KVM VM failed.
    #[error("creating the VM")]
    Vm(#[source] vm::VmError),
    /// Opening, mapping or loading the kernel failed.
    #[error("placing the kernel in guest memory")]
    Kernel(#[source] crate::kernel::KernelError),
    /// Reading the initramfs failed.
    #[error("reading initramfs {0}")]
    ReadInitramfs(PathBuf, #[source] std::io::Error),
    /// Placing the initramfs failed.
    #[error("placing the initramfs")]
    PlaceInitramfs(#[source] arch::ArchError),
    /// The kernel-loading thread panicked.
    #[error("the kernel loader thread panicked")]
    LoaderPanicked,
    /// Writing the initramfs failed.
    #[error("writing the initramfs to guest memory")]
    WriteInitramfs(#[source] vm_memory::GuestMemoryError),
    /// Building the command line failed.
    #[error("building the kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line failed.
    #[error("writing the kernel command line")]
    LoadCmdline(#[source] linux_loader::loader::Error),
    /// Writing the zero page failed.
    #[error("writing boot parameters")]
    BootParams(#[source] arch::ArchError),
    /// Writing GDT/page tables failed.
    #[error("writing boot page tables")]
    BootTables(#[source] regs::RegsError),
    /// Writing the MP table failed.
    #[error("writing the MP table")]
    Mptable(#[source] mptable::MptableError),
    /// Creating an eventfd failed.
    #[error("creating an eventfd")]
    EventFd(#[source] std::io::Error),
    /// Registering a device failed.
    #[error("registering devices")]
    Devices(#[source] DeviceManagerError),
    /// KVM_IRQFD for the serial port failed.
    #[error("registering the serial irqfd")]
    SerialIrqfd(#[source] kvm_ioctls::Error),
    /// Creating the serial input failed.
    #[error("creating the serial input")]
    SerialInput(#[source] crate::devices::serial::SerialError),
    /// Creating a block device failed.
    #[error("creating block device {0}")]
    Block(PathBuf, #[source] BlockError),
    /// Two virtio-fs shares use the same tag.
    #[error("virtio-fs tag {0:?} is used twice")]
    DuplicateFsTag(String),
    /// A virtio-fs share is invalid or its server could not be set up.
    #[error("creating virtio-fs share {0:?}")]
    Fs(String, #[source] FsError),
    /// Creating the vsock device failed.
    #[error("creating vsock device on {0}")]
    Vsock(PathBuf, #[source] VsockError),
    /// A network interface's configuration is invalid.
    #[error("invalid network interface configuration")]
    InvalidNet(#[source] NetError),
    /// Creating a network device failed.
    #[error("creating network device on tap {0}")]
    Net(String, #[source] NetError),
    /// Creating the balloon device failed.
    #[error("creating the virtio-balloon device")]
    Balloon(#[source] std::io::Error),
    /// Creating a virtio-mmio transport failed.
    #[error("creating a virtio-mmio transport")]
    Mmio(#[source] MmioError),
    /// Creating the event loop failed.
    #[error("creating the event loop")]
    EventManager(#[source] event_manager::Error),
    /// Creating or starting a vCPU failed.
    #[error("creating vCPUs")]
    Vcpu(#[source] VcpuError),
    /// Installing the vCPU kick signal handler failed.
    #[error("installing the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The event loop failed.
    #[error("running the event loop")]
    EventLoop(#[source] event_manager::Error),
    /// Building or installing the seccomp filters failed.
    #[error("confining the VMM with seccomp")]
    Seccomp(#[source] crate::seccomp::SeccompError),
    /// A vCPU failed while the guest ran.
    #[error("the guest stopped on an error")]
    Guest(#[source] VcpuError),
}

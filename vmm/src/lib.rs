//! berth's KVM virtual machine monitor, built on rust-vmm crates.
//!
//! Boot a guest with [`Vm::boot`] and wait for it with [`RunningVm::run`]:
//!
//! ```no_run
//! let mut cfg = vmm::VmConfig::new("/usr/local/lib/berth/vmlinux");
//! cfg.initramfs = Some(vmm::Initramfs::Path("initramfs.cpio".into()));
//! let vm = vmm::Vm::boot(cfg)?;
//! let killer = vm.handle(); // killer.kill() from another thread stops it
//! let exit = vm.run()?;
//! println!("{:?} status {:?}", exit.reason, exit.status);
//! # Ok::<(), vmm::BuildError>(())
//! ```
#![deny(missing_docs)]

pub mod arch;
pub mod builder;
pub mod device_manager;
pub mod devices;
pub mod metrics;
pub mod pvm;
pub mod vstate;

pub use builder::{
    build_cmdline, BlockConfig, BuildError, Initramfs, RunningVm, Vm, VmConfig, VmExitInfo,
    VmHandle,
};
pub use devices::serial::SerialInput;
pub use devices::ExitReason;

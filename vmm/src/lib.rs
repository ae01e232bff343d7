//! berth's KVM virtual machine monitor, built on rust-vmm crates.
//!
//! Boot a guest with [`Vm::boot`] and wait for it with [`RunningVm::run`]:
//!
//! ```no_run
//! let mut cfg = vmm::VmConfig::new("/usr/local/lib/berth/vmlinux");
//! cfg.initramfs = Some(vmm::Initramfs::Path("initramfs.cpio".into()));
//! cfg.block.push(vmm::BlockConfig { path: "disk.img".into(), read_only: false });
//! cfg.fs.push(vmm::FsConfig { tag: "data".into(), path: "/srv/data".into(), read_only: true, cache: Default::default() });
//! let vm = vmm::Vm::boot(cfg)?;
//! let killer = vm.handle(); // killer.kill() from another thread stops it
//! let input = vm.serial_input(); // input.send(b"...") feeds the guest's ttyS0
//! let exit = vm.run()?;
//! println!("{:?} status {:?} boot-to-init {:?}", exit.reason, exit.status, exit.boot_to_init);
//! # Ok::<(), vmm::BuildError>(())
//! ```
//!
//! The guest gets `console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1`, one
//! `virtio_mmio.device=` per disk (`/dev/vda`, `/dev/vdb`, … in order) then per
//! virtio-fs share (`mount -t virtiofs TAG DIR`; the VMM must run as root with
//! [`devices::virtio::fs::required_capabilities`]), one for the vsock device
//! if [`VmConfig::vsock`] is set (host side: a unix socket, protocol in
//! [`devices::virtio::vsock`]), one per network interface ([`VmConfig::net`]:
//! a tap, `eth0`, `eth1`, …), one for a virtio-balloon that only takes
//! the guest's free page reports ([`VmConfig::free_page_reporting`],
//! [`devices::virtio::balloon`]), the PVM
//! parameters when `/sys/module/kvm_pvm` exists ([`pvm`]), then
//! [`VmConfig::extra_cmdline`]. It reports to the host through the ports in
//! `berth_spec::kvm`: BOOT_MARK_PORT (first write = [`VmExitInfo::boot_to_init`])
//! and STATUS_PORT (last byte = [`VmExitInfo::status`]); it powers off with
//! `reboot(RB_AUTOBOOT)`, which becomes an i8042 reset ([`ExitReason::Reset`]).
//!
//! Threads: one per vCPU plus the caller's thread running the device event
//! loop inside [`RunningVm::run`]. vCPUs are kicked out of KVM_RUN with
//! `SIGRTMIN` (a no-op handler is installed): callers must not block or
//! repurpose that signal in threads created before [`Vm::boot`]. Each of
//! these threads confines itself with its own seccomp allow-list
//! ([`seccomp`], [`VmConfig::seccomp`], on by default): the thread calling
//! `run` stays confined after it returns, so it may then only report and
//! exit.
//!
//! The kernel's loadable segments are mapped copy-on-write from the vmlinux
//! file rather than copied ([`kernel`]: replace a kernel file by rename,
//! never in place; [`kernel::COPY_KERNEL_ENV`] forces the copy).
//!
//! Serial output: [`VmConfig::serial_out`] takes any writer; for a file,
//! [`console_log::RotatingLog`] caps it (rotating to `<path>.1`) so that a
//! guest cannot fill the host's disk.
//!
//! Timing: `setup_time` and `boot_to_init` are measured from the start of
//! [`Vm::boot`]. [`metrics::rss_excluding_guest`] (also
//! [`RunningVm::rss_excluding_guest`], [`VmHandle::rss_excluding_guest`])
//! gives the VMM's own resident memory. Setting `BERTH_VMM_PROFILE=FILE`
//! samples the guest's rip for boot-time profiling ([`builder::PROFILE_ENV`]).
#![deny(missing_docs)]

pub mod arch;
pub mod builder;
/// The size-capped console log (shared with stage1s' app logs).
pub use berth_spec::rotating_log as console_log;
pub mod device_manager;
pub mod devices;
pub mod kernel;
pub mod metrics;
pub mod pvm;
pub mod seccomp;
pub mod shared;
pub mod vstate;

pub use builder::{
    build_cmdline, mac_from_id, validate_fs, BlockConfig, BuildError, FsConfig, Initramfs,
    NetConfig, RunningVm, Vm, VmConfig, VmExitInfo, VmHandle, VsockConfig,
};
pub use devices::serial::SerialInput;
pub use devices::virtio::fs::ShareCache;
pub use seccomp::SeccompLevel;
pub use shared::ExitReason;

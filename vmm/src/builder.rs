//! The boot recipe, one linear sequence: VM → memory → kernel → initramfs →
//! devices → command line → zero page / MP table → vCPUs → event loop.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{self as arch, layout, mptable, regs};
use crate::device_manager::{DeviceManager, DeviceManagerError};
use crate::devices::berth_ports::{BerthPorts, BOOT_MARK_PORT};
use crate::devices::i8042::{I8042, I8042_DATA_PORT, I8042_PORT_COUNT};
use crate::devices::serial::{
    serial_input, SerialDevice, SerialInput, SerialInputHandler, SerialOut, COM1_PORT,
    COM1_PORT_COUNT,
};
use crate::devices::virtio::block::{Block, BlockError, BlockEventHandler};
use crate::devices::virtio::fs::{Fs, FsError, FsEventHandler};
use crate::devices::virtio::mmio::{MmioError, MmioTransport};
use crate::devices::virtio::net::{Net, NetError, NetEventHandler, TapSource};
use crate::devices::virtio::vsock::{Vsock, VsockError, VsockEventHandler};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::{ExitReason, VmShared};
use crate::kernel::{PreparedKernel, COPY_KERNEL_ENV};
use crate::pvm;
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm;

/// Development aid: when this environment variable names a file, vCPU 0 is
/// interrupted every 5 ms and its guest rip recorded there (one hex address
/// per line) at exit; map them with `nm -n vmlinux`. Costs a VM exit per
/// sample; off unless set.
pub const PROFILE_ENV: &str = "BERTH_VMM_PROFILE";

/// Command-line parameters every berth guest gets.
pub const BASE_CMDLINE: &str = "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1";

/// A virtio-blk disk.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Attach read-only (VIRTIO_BLK_F_RO; writes fail).
    pub read_only: bool,
}

/// A virtio-fs share: host directory `path`, mounted in the guest with
/// `mount -t virtiofs TAG DIR`.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Mount tag: 1 to 36 bytes, no control characters, unique per VM.
    pub tag: String,
    /// Host directory to share (symlinks in the path are resolved once, at boot).
    pub path: PathBuf,
    /// Refuse every mutating request with EROFS, host side.
    pub read_only: bool,
    /// Who may change the share while the guest runs: how much the guest
    /// may cache (see [`crate::devices::virtio::fs::ShareCache`]).
    pub cache: crate::devices::virtio::fs::ShareCache,
}

impl FsConfig {
    /// Checks the tag and that `path` is a directory.
    pub fn validate(&self) -> Result<(), FsError> {
        crate::devices::virtio::fs::tag_bytes(&self.tag)?;
        crate::devices::virtio::fs::resolve_share(&self.path)?;
        Ok(())
    }
}

/// A virtio-vsock device whose host side is a unix socket (Firecracker's
/// hybrid scheme; protocol in [`crate::devices::virtio::vsock`]).
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's CID, 3..=4294967294 (0-2 and u32::MAX are reserved).
    pub guest_cid: u32,
    /// Unix socket the VMM listens on for host → guest connections
    /// (`CONNECT <port>\n`); guest → host connections to port P go to
    /// `<uds_path>_<P>`. A stale socket here is replaced; the VMM removes it
    /// when the VM is dropped.
    pub uds_path: PathBuf,
}

/// A virtio-net interface backed by a tap device.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Host tap interface name (1–15 bytes of `[A-Za-z0-9_.-]`). Without
    /// `fd`, an existing tap is attached to and a missing one is created
    /// (and vanishes with the VM).
    pub tap: String,
    /// An already-open tap (`/dev/net/tun` after TUNSETIFF, e.g. created
    /// and put on a bridge by berth's host networking); used instead of
    /// opening `tap` by name.
    pub fd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// The guest's MAC address (unicast, not zero); see [`mac_from_id`].
    pub mac: [u8; 6],
}

impl NetConfig {
    /// Checks the tap name and the MAC; the error names the bad value.
    pub fn validate(&self) -> Result<(), NetError> {
        crate::devices::virtio::net::validate_tap_name(&self.tap).map_err(NetError::Tap)?;
        crate::devices::virtio::net::validate_mac(&self.mac)
    }
}

pub use crate::devices::virtio::net::mac_from_id;

/// Initramfs source.
#[derive(Debug, Clone)]
pub enum Initramfs {
    /// In-memory newc cpio archive.
    Bytes(Vec<u8>),
    /// A cpio archive file.
    Path(PathBuf),
}

/// Everything needed to boot a VM.
pub struct VmConfig {
    /// Uncompressed ELF `vmlinux`.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initramfs: Option<Initramfs>,
    /// Appended to the command line after berth's own parameters.
    pub extra_cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
    /// Number of vCPUs (1..=254).
    pub vcpus: u8,
    /// virtio-blk disks, in order (`/dev/vda`, `/dev/vdb`, …).
    pub block: Vec<BlockConfig>,
    /// virtio-fs shares, placed after the disks.
    pub fs: Vec<FsConfig>,
    /// virtio-vsock device, placed after the disks.
    pub vsock: Option<VsockConfig>,
    /// virtio-net interfaces, in order (`eth0`, `eth1`, …), placed after the disks.
    pub net: Vec<NetConfig>,
    /// Where guest serial output goes.
    pub serial_out: SerialOut,
    /// Override PVM detection (None = detect).
    pub pvm: Option<bool>,
}

impl VmConfig {
    /// The capabilities the VMM process needs for this config's virtio-fs
    /// shares (see [`crate::devices::virtio::fs::required_capabilities`]);
    /// empty without shares.
    pub fn fs_capabilities(&self) -> Vec<caps::Capability> {
        crate::devices::virtio::fs::required_capabilities(self.fs.iter().map(|s| s.read_only))
    }

    /// A config with defaults: 256 MiB, 1 vCPU, no disks, no shares, console to stdout.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initramfs: None,
            extra_cmdline: String::new(),
            mem_mib: 256,
            vcpus: 1,
            block: Vec::new(),
            fs: Vec::new(),
            vsock: None,
            net: Vec::new(),
            serial_out: Box::new(std::io::stdout()),
            pvm: None,
        }
    }
}

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
    /// A vCPU failed while the guest ran.
    #[error("the guest stopped on an error")]
    Guest(#[source] VcpuError),
}

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

/// Checks every share (tag, directory) and that tags are unique.
pub fn validate_fs(shares: &[FsConfig]) -> Result<(), BuildError> {
    for (i, share) in shares.iter().enumerate() {
        share
            .validate()
            .map_err(|e| BuildError::Fs(share.tag.clone(), e))?;
        if shares[..i].iter().any(|s| s.tag == share.tag) {
            return Err(BuildError::DuplicateFsTag(share.tag.clone()));
        }
    }
    Ok(())
}

/// Wakes the event loop when the VM must stop.
struct ExitHandler {
    evt: EventFd,
}

impl MutEventSubscriber for ExitHandler {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("vmm: registering the exit eventfd: {e}");
        }
    }
}

/// How the guest ended.
#[derive(Debug, Clone)]
pub struct VmExitInfo {
    /// Why it stopped.
    pub reason: ExitReason,
    /// Last byte written to STATUS_PORT (None: never written — abnormal end).
    pub status: Option<u8>,
    /// From the start of [`Vm::boot`] to the guest's first BOOT_MARK_PORT write.
    pub boot_to_init: Option<Duration>,
    /// From the start of [`Vm::boot`] to vCPU 0's first KVM_RUN.
    pub setup_time: Duration,
    /// From the start of [`Vm::boot`] to the end of `run`.
    pub total: Duration,
}

/// Asks a running VM to stop, from any thread.
#[derive(Clone)]
pub struct VmHandle {
    shared: Arc<VmShared>,
    guest_ranges: Arc<Vec<(usize, usize)>>,
}

impl VmHandle {
    /// Resident memory of this process outside guest RAM, in bytes (see
    /// [`crate::metrics::rss_excluding_guest`]); callable while the VM runs.
    pub fn rss_excluding_guest(&self) -> std::io::Result<u64> {
        crate::metrics::rss_excluding_guest(&self.guest_ranges)
    }

    /// Whether the VM has been asked to stop (by the guest or the host).
    pub fn stopping(&self) -> bool {
        self.shared.exit_requested()
    }

    /// Stops the VM; `run` then returns with [`ExitReason::Killed`].
    pub fn kill(&self) {
        self.shared.request_exit(ExitReason::Killed);
    }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A booted VM whose vCPUs are running.
pub struct RunningVm {
    vm: vm::Vm,
    shared: Arc<VmShared>,
    vcpus: Vec<JoinHandle<()>>,
    event_manager: EventManager<Subscriber>,
    serial_input: SerialInput,
    serial_handler: Arc<Mutex<SerialInputHandler>>,
    profiler: Option<JoinHandle<()>>,
    cmdline: String,
    pvm: bool,
}

/// A virtio-mmio slot and its interrupt line, allocated before the device
/// that signals it is created.
struct MmioLine {
    slot: crate::device_manager::MmioSlot,
    irq_evt: EventFd,
    interrupt: Interrupt,
}

impl MmioLine {
    fn new(dm: &mut DeviceManager) -> Result<MmioLine, BuildError> {
        let slot = dm.allocate_mmio().map_err(BuildError::Devices)?;
        let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        let interrupt = Interrupt::new(irq_evt.try_clone().map_err(BuildError::EventFd)?);
        Ok(MmioLine {
            slot,
            irq_evt,
            interrupt,
        })
    }

    /// Put `device` behind a virtio-mmio transport on this line: its queue
    /// notifications (`queue_evts`, copies of the device's own eventfds)
    /// become ioeventfds, its interrupt an irqfd. Returns the shared device
    /// for its event handler.
    fn attach<D: VirtioDevice + 'static>(
        self,
        vm: &vm::Vm,
        dm: &mut DeviceManager,
        device: D,
        queue_evts: Vec<EventFd>,
    ) -> Result<Arc<Mutex<D>>, BuildError> {
        let device = Arc::new(Mutex::new(device));
        let transport = MmioTransport::new(
            vm.mem.clone(),
            device.clone(),
            self.interrupt,
            clone_evts(&queue_evts)?,
        )
        .map_err(BuildError::Mmio)?;
        dm.add_virtio_mmio(
            &vm.fd,
            self.slot,
            Arc::new(Mutex::new(transport)),
            &self.irq_evt,
            &queue_evts,
        )
        .map_err(BuildError::Devices)?;
        Ok(device)
    }
}

fn clone_evts<'a>(evts: impl IntoIterator<Item = &'a EventFd>) -> Result<Vec<EventFd>, BuildError> {
    evts.into_iter()
        .map(|e| e.try_clone())
        .collect::<Result<Vec<_>, _>>()
        .map_err(BuildError::EventFd)
}

/// Entry point: boots VMs.
pub struct Vm;

/// Signal used to kick vCPU threads out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn read_initramfs(src: &Initramfs) -> Result<std::borrow::Cow<'_, [u8]>, BuildError> {
    match src {
        Initramfs::Bytes(b) => Ok(std::borrow::Cow::Borrowed(b)),
        Initramfs::Path(p) => {
            let mut buf = Vec::new();
            File::open(p)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(|e| BuildError::ReadInitramfs(p.clone(), e))?;
            Ok(std::borrow::Cow::Owned(buf))
        }
    }
}

/// Copies what remains of the kernel (everything on the copy path, partial
/// pages when it is mapped) and the initramfs into guest memory; returns the
/// kernel entry point and the initramfs placement.
fn load_images(
    mem: &vm_memory::GuestMemoryMmap<()>,
    kernel: &PreparedKernel,
    initramfs: Option<&Initramfs>,
) -> Result<(GuestAddress, Option<(GuestAddress, usize)>), BuildError> {
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
    Ok((entry, initrd))
}

impl Vm {
    /// Boots a VM from `cfg` and starts its vCPUs; returns once vCPU 0 is
    /// about to enter its first KVM_RUN (or after 1 s, if its thread has not
    /// been scheduled by then).
    pub fn boot(cfg: VmConfig) -> Result<RunningVm, BuildError> {
        let start = Instant::now();
        if cfg.vcpus == 0 || cfg.vcpus >= 254 {
            return Err(BuildError::InvalidConfig("vcpus must be 1..=253"));
        }
        if cfg.mem_mib < 32 {
            return Err(BuildError::InvalidConfig("mem_mib must be at least 32"));
        }
        validate_fs(&cfg.fs)?;
        for net in &cfg.net {
            net.validate().map_err(BuildError::InvalidNet)?;
        }
        if let Some(v) = &cfg.vsock {
            if v.guest_cid < 3 || v.guest_cid == u32::MAX {
                return Err(BuildError::InvalidVsockCid(v.guest_cid));
            }
        }
        let pvm = cfg.pvm.unwrap_or_else(pvm::detected);
        if pvm {
            log::info!("vmm: PVM host (/sys/module/kvm_pvm): quirks on: clearcpuid, boot-time savers, pvm_syscall_fix=1, int3/fwait fixups, 1 vCPU");
        }
        // PVM quirk: secondary vCPUs hang during bring-up (after "CPU 1
        // Converting physical 0 to logical die 1": the guest reads the host's
        // native CPUID, not ours, so its topology is inconsistent). Measured
        // with 2 vCPUs: boot never completes. Run PVM guests uniprocessor;
        // hardware KVM is unaffected.
        let num_vcpus = if pvm && cfg.vcpus > 1 {
            log::warn!(
                "vmm: PVM host: {} vCPUs requested, using 1 (SMP bring-up hangs under PVM)",
                cfg.vcpus
            );
            1
        } else {
            cfg.vcpus
        };
        let mem_size = u64::from(cfg.mem_mib) << 20;

        // 1+2. Guest RAM, with the kernel's segments mapped from the vmlinux
        // file (before the memslots exist; see crate::kernel); then,
        // concurrently, the KVM VM (irqchip, PIT) on this thread and the
        // remaining copies (initramfs, the kernel's partial pages, or the
        // whole kernel on the copy path) on another: both take milliseconds
        // on nested hosts, mostly in page faults.
        let mem = vm::guest_memory(mem_size).map_err(BuildError::Vm)?;
        log::trace!("vmm: guest memory mapped after {:?}", start.elapsed());
        let t = Instant::now();
        let allow_map = std::env::var_os(COPY_KERNEL_ENV).is_none();
        let kernel =
            PreparedKernel::prepare(&mem, &cfg.kernel, allow_map).map_err(BuildError::Kernel)?;
        log::trace!("vmm: kernel prepared in {:?}", t.elapsed());
        let (vm, loaded) = std::thread::scope(|s| {
            let loader = std::thread::Builder::new()
                .name("vmm-loader".into())
                // Small stack: glibc caches thread stacks, so every touched
                // page would stay in the VMM's RSS.
                .stack_size(128 << 10)
                .spawn_scoped(s, || load_images(&mem, &kernel, cfg.initramfs.as_ref()));
            let vm = vm::Vm::new(mem.clone());
            log::trace!("vmm: VM created after {:?}", start.elapsed());
            let loaded = match loader {
                Ok(h) => h.join().unwrap_or(Err(BuildError::LoaderPanicked)),
                // No thread: load on this one.
                Err(_) => load_images(&mem, &kernel, cfg.initramfs.as_ref()),
            };
            (vm, loaded)
        });
        let vm = vm.map_err(BuildError::Vm)?;
        let (entry, initrd) = loaded?;
        log::debug!(
            "vmm: VM created, kernel and initramfs loaded after {:?}",
            start.elapsed()
        );

        // 3. Devices.
        let exit_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        let shared = Arc::new(VmShared::new(
            start,
            exit_evt.try_clone().map_err(BuildError::EventFd)?,
        ));
        let mut dm = DeviceManager::new();
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        vm.fd
            .register_irqfd(&serial_irq, layout::SERIAL_IRQ)
            .map_err(BuildError::SerialIrqfd)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, cfg.serial_out)));
        dm.add_pio(COM1_PORT, COM1_PORT_COUNT, serial.clone())
            .map_err(BuildError::Devices)?;
        dm.add_pio(
            I8042_DATA_PORT,
            I8042_PORT_COUNT,
            Arc::new(Mutex::new(I8042::new(shared.clone()))),
        )
        .map_err(BuildError::Devices)?;
        dm.add_pio(
            BOOT_MARK_PORT,
            2,
            Arc::new(Mutex::new(BerthPorts::new(shared.clone()))),
        )
        .map_err(BuildError::Devices)?;
        let (serial_input, serial_handler) =
            serial_input(serial, Some(shared.clone())).map_err(BuildError::SerialInput)?;
        let serial_handler = Arc::new(Mutex::new(serial_handler));

        let mut subscribers: Vec<Subscriber> = vec![
            Arc::new(Mutex::new(ExitHandler { evt: exit_evt })),
            serial_handler.clone(),
        ];
        for (i, disk) in cfg.block.iter().enumerate() {
            let line = MmioLine::new(&mut dm)?;
            let block = Block::new(
                &disk.path,
                disk.read_only,
                &format!("berth-vd{i}"),
                line.interrupt.clone(),
            )
            .map_err(|e| BuildError::Block(disk.path.clone(), e))?;
            let evts = clone_evts([block.queue_evt()])?;
            let block = line.attach(&vm, &mut dm, block, evts)?;
            subscribers.push(Arc::new(Mutex::new(
                BlockEventHandler::new(block).map_err(BuildError::EventFd)?,
            )));
        }
        for share in &cfg.fs {
            let line = MmioLine::new(&mut dm)?;
            let fs = Fs::new(
                &share.tag,
                &share.path,
                share.read_only,
                share.cache,
                line.interrupt.clone(),
            )
            .map_err(|e| BuildError::Fs(share.tag.clone(), e))?;
            let evts = clone_evts(fs.queue_evts())?;
            let fs = line.attach(&vm, &mut dm, fs, evts)?;
            subscribers.push(Arc::new(Mutex::new(
                FsEventHandler::new(fs).map_err(BuildError::EventFd)?,
            )));
        }
        if let Some(vcfg) = &cfg.vsock {
            let line = MmioLine::new(&mut dm)?;
            let vsock = Vsock::new(vcfg.guest_cid, &vcfg.uds_path, line.interrupt.clone())
                .map_err(|e| BuildError::Vsock(vcfg.uds_path.clone(), e))?;
            let evts = clone_evts(vsock.queue_evts())?;
            let vsock = line.attach(&vm, &mut dm, vsock, evts)?;
            subscribers.push(Arc::new(Mutex::new(
                VsockEventHandler::new(vsock).map_err(BuildError::EventFd)?,
            )));
            log::debug!(
                "vmm: vsock: guest CID {}, host socket {}",
                vcfg.guest_cid,
                vcfg.uds_path.display()
            );
        }
        for nic in &cfg.net {
            let line = MmioLine::new(&mut dm)?;
            let source = match &nic.fd {
                Some(fd) => TapSource::Fd(fd.try_clone().map_err(BuildError::EventFd)?),
                None => TapSource::Name,
            };
            let net = Net::new(&nic.tap, source, nic.mac, line.interrupt.clone())
                .map_err(|e| BuildError::Net(nic.tap.clone(), e))?;
            let evts = clone_evts([net.rx_evt(), net.tx_evt()])?;
            let net = line.attach(&vm, &mut dm, net, evts)?;
            subscribers.push(Arc::new(Mutex::new(
                NetEventHandler::new(net).map_err(BuildError::EventFd)?,
            )));
        }

        // 4. Command line, zero page, GDT/page tables, MP table.
        let cmdline_str = build_cmdline(&cfg.extra_cmdline, &dm.cmdline_entries(), pvm);
        let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(BuildError::Cmdline)?;
        cmdline
            .insert_str(&cmdline_str)
            .map_err(BuildError::Cmdline)?;
        load_cmdline(&vm.mem, layout::CMDLINE_START, &cmdline).map_err(BuildError::LoadCmdline)?;
        let params = arch::build_boot_params(mem_size, cmdline_str.len(), initrd)
            .map_err(BuildError::BootParams)?;
        arch::write_boot_params(&vm.mem, &params).map_err(BuildError::BootParams)?;
        regs::write_boot_tables(&vm.mem).map_err(BuildError::BootTables)?;
        mptable::setup_mptable(&vm.mem, num_vcpus).map_err(BuildError::Mptable)?;

        log::debug!(
            "vmm: devices and boot tables ready after {:?}",
            start.elapsed()
        );

        // 5. Event loop.
        let mut event_manager =
            EventManager::<Subscriber>::new().map_err(BuildError::EventManager)?;
        for s in subscribers {
            event_manager.add_subscriber(s);
        }

        // 6. vCPUs.
        vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
            .map_err(BuildError::Signal)?;
        let pio = Arc::new(dm.pio);
        let mmio = Arc::new(dm.mmio);
        let mut vcpus = Vec::with_capacity(usize::from(num_vcpus));
        for id in 0..num_vcpus {
            let mut vcpu = Vcpu::new(
                &vm.fd,
                &vm.supported_cpuid,
                id,
                num_vcpus,
                entry,
                pio.clone(),
                mmio.clone(),
                shared.clone(),
                pvm,
            )
            .map_err(BuildError::Vcpu)?;
            if id == 0 {
                if let Some(path) = std::env::var_os(PROFILE_ENV) {
                    vcpu.enable_profiling(path.into());
                }
            }
            vcpus.push(vcpu);
        }
        let mut running = RunningVm {
            vm,
            shared,
            vcpus: Vec::new(),
            event_manager,
            serial_input,
            serial_handler,
            profiler: None,
            cmdline: cmdline_str,
            pvm,
        };
        // Wait below until vCPU 0 is about to enter KVM_RUN rather than
        // return and let the caller's next steps compete with the new thread
        // for a CPU (quiet PVM host, examples/boot: set-up median 3.0 ms with
        // the wait, 3.7 ms without).
        if let Ok(mut w) = running.shared.boot_waiter.lock() {
            *w = Some(std::thread::current());
        }
        for vcpu in vcpus {
            // On failure, `running` is dropped, which stops started vCPUs.
            let handle = vcpu.start().map_err(BuildError::Vcpu)?;
            running.vcpus.push(handle);
        }
        if std::env::var_os(PROFILE_ENV).is_some() {
            if let Some(first) = running.vcpus.first() {
                running.profiler = start_profile_kicker(first, running.shared.clone());
            }
        }
        log::debug!("vmm: vCPUs started after {:?}", start.elapsed());
        // Bounded: a starved vCPU thread must not hold up the caller for long.
        let deadline = Instant::now() + Duration::from_secs(1);
        while running.shared.first_run.get().is_none() && !running.shared.exit_requested() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::park_timeout(deadline - now);
        }
        if let Ok(mut w) = running.shared.boot_waiter.lock() {
            *w = None;
        }
        Ok(running)
    }
}

/// Kicks the vCPU thread out of KVM_RUN every 5 ms so it samples its rip.
fn start_profile_kicker(vcpu: &JoinHandle<()>, shared: Arc<VmShared>) -> Option<JoinHandle<()>> {
    use std::os::unix::thread::JoinHandleExt;
    let tid = vcpu.as_pthread_t();
    let spawned = std::thread::Builder::new()
        .name("profile".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(5));
                if shared.exit_requested() {
                    break;
                }
                // SAFETY: `tid` is a vCPU thread; `stop_vcpus` joins this
                // thread before joining any vCPU, so it is still alive here.
                // The signal has a no-op handler installed.
                let ret = unsafe { libc::pthread_kill(tid, kick_signal()) };
                if ret != 0 {
                    break;
                }
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            log::warn!("vmm: starting the profiler: {e}");
            None
        }
    }
}

impl RunningVm {
    /// A handle that can stop the VM from another thread.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            shared: self.shared.clone(),
            guest_ranges: Arc::new(self.vm.host_ranges()),
        }
    }

    /// A handle that injects bytes into the guest's serial input (COM1 RX).
    /// Bytes sent before the guest writes BOOT_MARK_PORT are queued and
    /// delivered once it has (the kernel's 8250 probe would discard them).
    pub fn serial_input(&self) -> SerialInput {
        self.serial_input.clone()
    }

    /// The kernel command line the guest got.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Whether PVM quirks are active.
    pub fn pvm(&self) -> bool {
        self.pvm
    }

    /// Resident memory of this process outside guest RAM, in bytes.
    pub fn rss_excluding_guest(&self) -> std::io::Result<u64> {
        crate::metrics::rss_excluding_guest(&self.vm.host_ranges())
    }

    /// Runs the device event loop on this thread until the guest stops (or
    /// [`VmHandle::kill`]), then stops and joins the vCPUs.
    pub fn run(mut self) -> Result<VmExitInfo, BuildError> {
        while !self.shared.exit_requested() {
            let pending = self
                .serial_handler
                .lock()
                .map(|h| h.has_pending())
                .unwrap_or(false);
            // While input waits (for FIFO space, or for the guest's boot
            // mark), poll every 20 ms.
            let timeout = if pending { 20 } else { -1 };
            self.event_manager
                .run_with_timeout(timeout)
                .map_err(BuildError::EventLoop)?;
            if pending {
                if let Ok(mut h) = self.serial_handler.lock() {
                    h.pump();
                }
            }
        }
        self.stop_vcpus();
        let shared = &self.shared;
        let reason = shared
            .exit
            .lock()
            .ok()
            .and_then(|e| *e)
            .unwrap_or(ExitReason::Error);
        if reason == ExitReason::Error {
            if let Some(e) = shared.error.lock().ok().and_then(|mut e| e.take()) {
                return Err(BuildError::Guest(e));
            }
        }
        let setup_time = shared
            .first_run
            .get()
            .map(|t| t.duration_since(shared.start))
            .unwrap_or_default();
        Ok(VmExitInfo {
            reason,
            status: shared.status(),
            boot_to_init: shared
                .boot_mark
                .get()
                .map(|t| t.duration_since(shared.start)),
            setup_time,
            total: shared.start.elapsed(),
        })
    }

    fn stop_vcpus(&mut self) {
        use vmm_sys_util::signal::Killable;
        self.shared.request_exit(ExitReason::Killed);
        if let Some(p) = self.profiler.take() {
            let _ = p.join();
        }
        for handle in self.vcpus.drain(..) {
            // A kick can land just before the thread enters KVM_RUN; repeat
            // until the thread has seen the stop flag.
            while !handle.is_finished() {
                if let Err(e) = handle.kill(kick_signal()) {
                    log::debug!("vmm: kicking vCPU: {e}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if handle.join().is_err() {
                log::error!("vmm: a vCPU thread panicked");
            }
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.stop_vcpus();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn fs_config_validation() {
        let tmp = tempfile::tempdir().unwrap();
        let share = |tag: &str, path: &Path, read_only| FsConfig {
            tag: tag.into(),
            path: path.to_path_buf(),
            read_only,
            cache: Default::default(),
        };
        validate_fs(&[]).unwrap();
        validate_fs(&[share("a", tmp.path(), false), share("b", tmp.path(), true)]).unwrap();
        let e = validate_fs(&[share("a", tmp.path(), false), share("a", tmp.path(), true)])
            .unwrap_err();
        assert!(matches!(e, BuildError::DuplicateFsTag(ref t) if t == "a"));
        let long = "t".repeat(37);
        let e = validate_fs(&[share(&long, tmp.path(), false)]).unwrap_err();
        assert!(format!("{e}").contains(&long));
        let e = validate_fs(&[share("", tmp.path(), false)]).unwrap_err();
        assert!(matches!(e, BuildError::Fs(..)));
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let e = validate_fs(&[share("x", &file, false)]).unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(chain.contains(&file.display().to_string()), "{chain}");

        let mut cfg = VmConfig::new("/vmlinux");
        assert!(cfg.fs.is_empty());
        assert!(cfg.fs_capabilities().is_empty());
        cfg.fs.push(share("ro", tmp.path(), true));
        assert_eq!(cfg.fs_capabilities(), [caps::Capability::CAP_DAC_OVERRIDE]);
    }

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
    fn reserved_vsock_cid_refused_by_value() {
        for cid in [0, 1, 2, u32::MAX] {
            let mut cfg = VmConfig::new("/nonexistent/vmlinux");
            cfg.vsock = Some(VsockConfig {
                guest_cid: cid,
                uds_path: "/nonexistent/v.sock".into(),
            });
            let err = Vm::boot(cfg).err().unwrap();
            assert!(matches!(err, BuildError::InvalidVsockCid(c) if c == cid));
            assert!(err.to_string().contains(&cid.to_string()));
        }
    }

    #[test]
    fn bad_tap_name_refused_before_boot() {
        let mut cfg = VmConfig::new("/nonexistent/vmlinux");
        cfg.net.push(NetConfig {
            tap: "tap0".into(),
            fd: None,
            mac: mac_from_id(b"pod"),
        });
        cfg.net.push(NetConfig {
            tap: "this-name-is-too-long".into(),
            fd: None,
            mac: mac_from_id(b"pod"),
        });
        let Err(e) = Vm::boot(cfg) else {
            panic!("boot accepted a bad tap name")
        };
        assert!(matches!(e, BuildError::InvalidNet(_)), "{e:?}");
        let mut chain = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            chain = format!("{chain}: {s}");
            src = s.source();
        }
        assert!(chain.contains("\"this-name-is-too-long\""), "{chain}");
        let bad_mac = NetConfig {
            tap: "tap0".into(),
            fd: None,
            mac: [0x03, 0, 0, 0, 0, 1],
        };
        let e = bad_mac.validate().unwrap_err();
        assert!(e.to_string().contains("03:00:00:00:00:01"), "{e}");
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

#[cfg(test)]
mod send_tests {
    fn assert_send<T: Send>() {}

    #[test]
    fn handles_are_send() {
        assert_send::<super::VmHandle>();
        assert_send::<super::SerialInput>();
        assert_send::<super::RunningVm>();
        assert_send::<super::VmConfig>();
    }
}

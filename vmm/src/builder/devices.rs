//! The devices: legacy port-I/O ones (serial, i8042, berth's ports), the
//! virtio-mmio ones in command-line order (disks, shares, vsock, network
//! interfaces), and the event loop that serves them.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::config::{BlockConfig, FsConfig, NetConfig, VsockConfig};
use super::error::BuildError;
use crate::arch::x86_64::layout;
use crate::device_manager::DeviceManager;
use crate::devices::berth_ports::{BerthPorts, BOOT_MARK_PORT};
use crate::devices::i8042::{I8042, I8042_DATA_PORT, I8042_PORT_COUNT};
use crate::devices::serial::{
    serial_input, SerialDevice, SerialInput, SerialInputHandler, SerialOut, COM1_PORT,
    COM1_PORT_COUNT,
};
use crate::devices::virtio::balloon::{Balloon, BalloonEventHandler};
use crate::devices::virtio::block::{Block, BlockEventHandler};
use crate::devices::virtio::fs::{Fs, FsEventHandler};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::{Net, NetEventHandler, TapSource};
use crate::devices::virtio::vsock::{Vsock, VsockEventHandler};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::shared::VmShared;
use crate::vstate::vm;

/// An event-loop subscriber.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

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

/// The state shared by vCPUs, devices and the event loop (timed from
/// `start`), and the subscriber that wakes the event loop when the VM must
/// stop.
pub fn shared_state(start: Instant) -> Result<(Arc<VmShared>, Subscriber), BuildError> {
    let exit_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    let shared = Arc::new(VmShared::new(
        start,
        exit_evt.try_clone().map_err(BuildError::EventFd)?,
    ));
    Ok((shared, Arc::new(Mutex::new(ExitHandler { evt: exit_evt }))))
}

/// The serial port's host side: input for the guest's ttyS0 and its
/// event-loop handler.
pub struct SerialConsole {
    /// Handle that queues input for the guest.
    pub input: SerialInput,
    /// Delivers queued input when the guest has room.
    pub handler: Arc<Mutex<SerialInputHandler>>,
}

/// Puts the legacy devices on the port-I/O bus: COM1 (output to
/// `serial_out`, interrupt through an irqfd), the i8042 (its reset is
/// berth's power-off) and berth's boot-mark/status ports.
pub fn attach_legacy_devices(
    vm: &vm::Vm,
    dm: &mut DeviceManager,
    shared: &Arc<VmShared>,
    serial_out: SerialOut,
) -> Result<SerialConsole, BuildError> {
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.fd
        .register_irqfd(&serial_irq, layout::SERIAL_IRQ)
        .map_err(BuildError::SerialIrqfd)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, serial_out)));
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
    let (input, handler) =
        serial_input(serial, Some(shared.clone())).map_err(BuildError::SerialInput)?;
    Ok(SerialConsole {
        input,
        handler: Arc::new(Mutex::new(handler)),
    })
}

/// The virtio devices of a VM, in the order they get MMIO slots (and so
/// `/dev/vda`…, then shares, vsock, `eth0`…, the balloon).
pub struct VirtioDevices<'a> {
    /// Disks.
    pub block: &'a [BlockConfig],
    /// virtio-fs shares.
    pub fs: &'a [FsConfig],
    /// The vsock device.
    pub vsock: Option<&'a VsockConfig>,
    /// Network interfaces.
    pub net: &'a [NetConfig],
    /// A balloon for free page reporting.
    pub balloon: bool,
}

/// Creates the virtio devices behind virtio-mmio transports; returns their
/// event handlers.
pub fn attach_virtio_devices(
    vm: &vm::Vm,
    dm: &mut DeviceManager,
    devices: VirtioDevices<'_>,
) -> Result<Vec<Subscriber>, BuildError> {
    let mut subscribers: Vec<Subscriber> = Vec::new();
    for (i, disk) in devices.block.iter().enumerate() {
        subscribers.push(attach_block(vm, dm, i, disk)?);
    }
    for share in devices.fs {
        subscribers.push(attach_fs(vm, dm, share)?);
    }
    if let Some(vcfg) = devices.vsock {
        subscribers.push(attach_vsock(vm, dm, vcfg)?);
    }
    for nic in devices.net {
        subscribers.push(attach_net(vm, dm, nic)?);
    }
    if devices.balloon {
        subscribers.push(attach_balloon(vm, dm)?);
    }
    Ok(subscribers)
}

fn attach_block(
    vm: &vm::Vm,
    dm: &mut DeviceManager,
    index: usize,
    disk: &BlockConfig,
) -> Result<Subscriber, BuildError> {
    let line = MmioLine::new(dm)?;
    let block = Block::new(
        &disk.path,
        disk.read_only,
        &format!("berth-vd{index}"),
        line.interrupt.clone(),
    )
    .map_err(|e| BuildError::Block(disk.path.clone(), e))?;
    let evts = clone_evts([block.queue_evt()])?;
    let block = line.attach(vm, dm, block, evts)?;
    Ok(Arc::new(Mutex::new(
        BlockEventHandler::new(block).map_err(BuildError::EventFd)?,
    )))
}

fn attach_fs(
    vm: &vm::Vm,
    dm: &mut DeviceManager,
    share: &FsConfig,
) -> Result<Subscriber, BuildError> {
    let line = MmioLine::new(dm)?;
    let fs = Fs::new(
        &share.tag,
        &share.path,
        share.read_only,
        share.cache,
        line.interrupt.clone(),
    )
    .map_err(|e| BuildError::Fs(share.tag.clone(), e))?;
    let evts = clone_evts(fs.queue_evts())?;
    let fs = line.attach(vm, dm, fs, evts)?;
    Ok(Arc::new(Mutex::new(
        FsEventHandler::new(fs).map_err(BuildError::EventFd)?,
    )))
}

fn attach_vsock(
    vm: &vm::Vm,
    dm: &mut DeviceManager,
    vcfg: &VsockConfig,
) -> Result<Subscriber, BuildError> {
    let line = MmioLine::new(dm)?;
    let vsock = Vsock::new(vcfg.guest_cid, &vcfg.uds_path, line.interrupt.clone())
        .map_err(|e| BuildError::Vsock(vcfg.uds_path.clone(), e))?;
    let evts = clone_evts(vsock.queue_evts())?;
    let vsock = line.attach(vm, dm, vsock, evts)?;
    let handler = VsockEventHandler::new(vsock).map_err(BuildError::EventFd)?;
    log::debug!(
        "vmm: vsock: guest CID {}, host socket {}",
        vcfg.guest_cid,
        vcfg.uds_path.display()
    );
    Ok(Arc::new(Mutex::new(handler)))
}

fn attach_net(
    vm: &vm::Vm,
    dm: &mut DeviceManager,
    nic: &NetConfig,
) -> Result<Subscriber, BuildError> {
    let line = MmioLine::new(dm)?;
    let source = match &nic.fd {
        Some(fd) => TapSource::Fd(fd.try_clone().map_err(BuildError::EventFd)?),
        None => TapSource::Name,
    };
    let net = Net::new(&nic.tap, source, nic.mac, line.interrupt.clone())
        .map_err(|e| BuildError::Net(nic.tap.clone(), e))?;
    let evts = clone_evts([net.rx_evt(), net.tx_evt()])?;
    let net = line.attach(vm, dm, net, evts)?;
    Ok(Arc::new(Mutex::new(
        NetEventHandler::new(net).map_err(BuildError::EventFd)?,
    )))
}

fn attach_balloon(vm: &vm::Vm, dm: &mut DeviceManager) -> Result<Subscriber, BuildError> {
    let line = MmioLine::new(dm)?;
    let balloon = Balloon::new(line.interrupt.clone()).map_err(BuildError::Balloon)?;
    let evts = clone_evts(balloon.queue_evts())?;
    let balloon = line.attach(vm, dm, balloon, evts)?;
    Ok(Arc::new(Mutex::new(
        BalloonEventHandler::new(balloon).map_err(BuildError::EventFd)?,
    )))
}

/// The event loop over the exit handler, the serial input and the virtio
/// devices' handlers (registered in that order).
pub fn event_loop(
    exit_handler: Subscriber,
    serial: &SerialConsole,
    virtio_handlers: Vec<Subscriber>,
) -> Result<EventManager<Subscriber>, BuildError> {
    let mut event_manager = EventManager::<Subscriber>::new().map_err(BuildError::EventManager)?;
    let serial_handler: Subscriber = serial.handler.clone();
    for s in [exit_handler, serial_handler]
        .into_iter()
        .chain(virtio_handlers)
    {
        event_manager.add_subscriber(s);
    }
    Ok(event_manager)
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

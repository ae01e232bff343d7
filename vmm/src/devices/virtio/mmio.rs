//! virtio-mmio transport, version 2 (virtio 1.x "modern" register layout).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{GuestMem, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

/// "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// Transport version 2.
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("BRTH").
pub const VENDOR_ID: u32 = 0x4854_5242;

/// Register offsets.
pub mod reg {
    #![allow(missing_docs)]
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    #![allow(missing_docs)]
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// The virtio-mmio register window of one device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMem,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    device_status: u32,
    config_generation: u32,
    activated: bool,
}

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// Creating a queue failed.
    #[error("creating virtqueue")]
    Queue(#[source] virtio_queue::Error),
    /// Creating a queue eventfd failed.
    #[error("creating queue eventfd")]
    EventFd(#[source] std::io::Error),
}

impl MmioTransport {
    /// A transport for `device`, whose queue notifications go to `queue_evts`
    /// (one per queue; also registered as KVM ioeventfds on QueueNotify).
    pub fn new(
        mem: GuestMem,
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Interrupt,
        queue_evts: Vec<EventFd>,
    ) -> Result<Self, MmioError> {
        let sizes: Vec<u16> = match device.lock() {
            Ok(d) => d.queue_max_sizes().to_vec(),
            Err(p) => p.into_inner().queue_max_sizes().to_vec(),
        };
        let queues = sizes
            .iter()
            .map(|s| Queue::new(*s).map_err(MmioError::Queue))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            device_status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The device status register.
    pub fn device_status(&self) -> u32 {
        self.device_status
    }

    fn with_device<R>(&self, f: impl FnOnce(&mut dyn VirtioDevice) -> R) -> R {
        match self.device.lock() {
            Ok(mut d) => f(&mut *d),
            Err(p) => f(&mut *p.into_inner()),
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn update_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        // Queue configuration may only change before the driver is done.
        if self.device_status & status::DRIVER_OK != 0 {
            log::debug!("vmm: virtio-mmio: queue config write after DRIVER_OK ignored");
            return;
        }
        if let Some(q) = self.selected_queue() {
            f(q)
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.with_device(|d| d.reset());
        }
        self.activated = false;
        self.device_status = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
        for q in self.queues.iter_mut() {
            q.reset();
        }
    }

    fn set_status(&mut self, new: u32) {
        use status::*;
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.device_status;
        // Bits may only be added, in the order the spec gives.
        if new & old != old {
            log::warn!("vmm: virtio-mmio: status {old:#x} -> {new:#x} clears bits; ignored");
            return;
        }
        let added = new & !old;
        if added & FEATURES_OK != 0 && self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            // Legacy drivers are not supported: refuse FEATURES_OK.
            log::warn!("vmm: virtio-mmio: driver did not accept VIRTIO_F_VERSION_1");
            self.device_status = new & !FEATURES_OK;
            return;
        }
        self.device_status = new;
        if added & DRIVER_OK != 0 && new & FEATURES_OK != 0 && !self.activated {
            let acked = self.acked_features;
            self.with_device(|d| d.set_acked_features(acked));
            let queues: Result<Vec<Queue>, _> = self
                .queues
                .iter()
                .map(|q| Queue::try_from(q.state()))
                .collect();
            let mem = self.mem.clone();
            let result = match queues {
                Ok(queues) => self.with_device(|d| d.activate(mem, queues)),
                Err(e) => {
                    log::error!("vmm: virtio-mmio: invalid queue configuration: {e}");
                    Err(super::ActivateError::InvalidQueue(0))
                }
            };
            match result {
                Ok(()) => self.activated = true,
                Err(e) => {
                    log::error!("vmm: virtio-mmio: activating device: {e}");
                    self.device_status |= DEVICE_NEEDS_RESET;
                    self.interrupt
                        .status
                        .fetch_or(super::VIRTIO_MMIO_INT_CONFIG, Ordering::SeqCst);
                    let _ = self.interrupt.evt.write(1);
                }
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MMIO_MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.with_device(|d| d.device_type()),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let f = self.with_device(|d| d.avail_features()) | VIRTIO_F_VERSION_1;
                match self.device_features_select {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status.load(Ordering::SeqCst),
            reg::STATUS => self.device_status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                log::debug!("vmm: virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let driver_ready = |s: u32| {
            s & (status::ACKNOWLEDGE | status::DRIVER) == (status::ACKNOWLEDGE | status::DRIVER)
                && s & status::FEATURES_OK == 0
        };
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = v,
            reg::DRIVER_FEATURES => {
                if !driver_ready(self.device_status) {
                    log::debug!("vmm: virtio-mmio: DriverFeatures write in wrong state ignored");
                    return;
                }
                let avail = self.with_device(|d| d.avail_features()) | VIRTIO_F_VERSION_1;
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                self.acked_features =
                    (self.acked_features & !mask) | ((u64::from(v) << shift) & avail);
            }
            reg::QUEUE_SEL => self.queue_select = v,
            reg::QUEUE_NUM => self.update_queue(|q| q.set_size(v as u16)),
            reg::QUEUE_READY => self.update_queue(|q| q.set_ready(v == 1)),
            reg::QUEUE_DESC_LOW => self.update_queue(|q| q.set_desc_table_address(Some(v), None)),
            reg::QUEUE_DESC_HIGH => self.update_queue(|q| q.set_desc_table_address(None, Some(v))),
            reg::QUEUE_AVAIL_LOW => self.update_queue(|q| q.set_avail_ring_address(Some(v), None)),
            reg::QUEUE_AVAIL_HIGH => self.update_queue(|q| q.set_avail_ring_address(None, Some(v))),
            reg::QUEUE_USED_LOW => self.update_queue(|q| q.set_used_ring_address(Some(v), None)),
            reg::QUEUE_USED_HIGH => self.update_queue(|q| q.set_used_ring_address(None, Some(v))),
            reg::QUEUE_NOTIFY => {
                // Normally KVM's ioeventfd catches this write; this path is the fallback.
                match self.queue_evts.get(v as usize) {
                    Some(evt) => {
                        if let Err(e) = evt.write(1) {
                            log::error!("vmm: virtio-mmio: queue notify: {e}");
                        }
                    }
                    None => log::debug!("vmm: virtio-mmio: notify of unknown queue {v}"),
                }
            }
            reg::INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            reg::STATUS => self.set_status(v),
            _ => log::debug!("vmm: virtio-mmio: write of unknown register {offset:#x}"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.with_device(|d| d.read_config(offset - reg::CONFIG, data));
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::debug!(
                "vmm: virtio-mmio: bad read size {} at {offset:#x}",
                data.len()
            );
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.with_device(|d| d.write_config(offset - reg::CONFIG, data));
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "vmm: virtio-mmio: bad write size {} at {offset:#x}",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ActivateError;
    use vm_memory::GuestAddress;

    struct Dummy {
        sizes: [u16; 1],
        acked: u64,
        activated: usize,
        resets: usize,
        config: [u8; 8],
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn avail_features(&self) -> u64 {
            1 << 9
        }
        fn set_acked_features(&mut self, f: u64) {
            self.acked = f;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            if o + data.len() <= self.config.len() {
                data.copy_from_slice(&self.config[o..o + data.len()]);
            }
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, _mem: GuestMem, queues: Vec<Queue>) -> Result<(), ActivateError> {
            assert_eq!(queues.len(), 1);
            assert!(queues[0].ready());
            assert_eq!(queues[0].size(), 16);
            assert_eq!(queues[0].desc_table(), 0x1_0000_1000);
            self.activated += 1;
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>, Interrupt) {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let dev = Arc::new(Mutex::new(Dummy {
            sizes: [256],
            acked: 0,
            activated: 0,
            resets: 0,
            config: [1, 2, 3, 4, 5, 6, 7, 8],
        }));
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let t = MmioTransport::new(
            mem,
            dev.clone(),
            irq.clone(),
            vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
        )
        .unwrap();
        (t, dev, irq)
    }

    #[test]
    fn identification_registers() {
        let (mut t, _, _) = setup();
        assert_eq!(rd(&mut t, reg::MAGIC), MMIO_MAGIC_VALUE);
        assert_eq!(rd(&mut t, reg::VERSION), 2);
        assert_eq!(rd(&mut t, reg::DEVICE_ID), 2);
        assert_eq!(rd(&mut t, reg::VENDOR_ID), VENDOR_ID);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1 << 9);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 256);
        wr(&mut t, reg::QUEUE_SEL, 5);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0);
        let mut b = [0u8; 4];
        t.read(reg::CONFIG + 4, &mut b);
        assert_eq!(b, [5, 6, 7, 8]);
        // Wrong-size register access is ignored, not a panic.
        let mut b2 = [0u8; 2];
        t.read(reg::MAGIC, &mut b2);
        t.write(reg::STATUS, &[1]);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
    }

    #[test]
    fn driver_init_sequence_activates_and_resets() {
        let (mut t, dev, irq) = setup();
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(&mut t, reg::DRIVER_FEATURES_SEL, 0);
        wr(&mut t, reg::DRIVER_FEATURES, (1 << 9) | (1 << 5)); // bit 5 not offered
        wr(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        wr(&mut t, reg::DRIVER_FEATURES, 1);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        wr(&mut t, reg::STATUS, s);
        assert_eq!(rd(&mut t, reg::STATUS), s);
        wr(&mut t, reg::QUEUE_SEL, 0);
        wr(&mut t, reg::QUEUE_NUM, 16);
        wr(&mut t, reg::QUEUE_DESC_LOW, 0x1000);
        wr(&mut t, reg::QUEUE_DESC_HIGH, 1);
        wr(&mut t, reg::QUEUE_AVAIL_LOW, 0x2000);
        wr(&mut t, reg::QUEUE_USED_LOW, 0x3000);
        wr(&mut t, reg::QUEUE_READY, 1);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 1);
        wr(&mut t, reg::STATUS, s | status::DRIVER_OK);
        {
            let d = dev.lock().unwrap();
            assert_eq!(d.activated, 1);
            assert_eq!(d.acked, (1 << 9) | VIRTIO_F_VERSION_1);
        }
        // Queue config is frozen after DRIVER_OK.
        wr(&mut t, reg::QUEUE_NUM, 8);
        // Interrupt status / ack.
        irq.signal_used_queue();
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 1);
        wr(&mut t, reg::INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);
        // Notify falls back to the queue eventfd.
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(t.queue_evts[0].read().unwrap(), 1);
        wr(&mut t, reg::QUEUE_NOTIFY, 7);
        // Reset.
        wr(&mut t, reg::STATUS, 0);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
        assert_eq!(dev.lock().unwrap().resets, 1);
    }

    #[test]
    fn legacy_driver_refused() {
        let (mut t, dev, _) = setup();
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(&mut t, reg::DRIVER_FEATURES, 1 << 9);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        wr(&mut t, reg::STATUS, s);
        assert_eq!(rd(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        wr(&mut t, reg::STATUS, s | status::DRIVER_OK);
        assert_eq!(dev.lock().unwrap().activated, 0);
    }
}

//! Port-I/O and MMIO buses, and placement of virtio-mmio devices (MMIO
//! window + IRQ) with the `virtio_mmio.device=` command-line entries the
//! guest needs to find them.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::{Address, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{
    FIRST_DEVICE_IRQ, LAST_DEVICE_IRQ, MMIO_DEVICES_START, MMIO_DEVICE_SIZE,
};
use crate::devices::virtio::mmio::reg::QUEUE_NOTIFY;
use crate::devices::BusDevice;

/// Errors of the device manager.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// Two devices claim overlapping ranges.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the new range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// No IRQ lines left for devices.
    #[error("out of device IRQs")]
    OutOfIrqs,
    /// KVM_IRQFD failed.
    #[error("registering irqfd for GSI {0}")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    /// KVM_IOEVENTFD failed.
    #[error("registering ioeventfd at {0:#x}")]
    Ioeventfd(u64, #[source] kvm_ioctls::Error),
}

struct BusRange {
    base: u64,
    len: u64,
    dev: Arc<Mutex<dyn BusDevice>>,
}

/// A flat address space of devices (port I/O or MMIO).
#[derive(Default)]
pub struct Bus {
    ranges: Vec<BusRange>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `dev` at [base, base+len).
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), DeviceManagerError> {
        let end = base.saturating_add(len);
        if len == 0
            || self
                .ranges
                .iter()
                .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(DeviceManagerError::Overlap { base, len });
        }
        self.ranges.push(BusRange { base, len, dev });
        self.ranges.sort_by_key(|r| r.base);
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&BusRange, u64)> {
        let i = self.ranges.partition_point(|r| r.base <= addr);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (addr < r.base + r.len).then(|| (r, addr - r.base))
    }

    /// Reads from the device at `addr`; false if none is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((r, off)) = self.find(addr) else {
            return false;
        };
        match r.dev.lock() {
            Ok(mut d) => d.read(off, data),
            Err(p) => p.into_inner().read(off, data),
        }
        true
    }

    /// Writes to the device at `addr`; false if none is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((r, off)) = self.find(addr) else {
            return false;
        };
        match r.dev.lock() {
            Ok(mut d) => d.write(off, data),
            Err(p) => p.into_inner().write(off, data),
        }
        true
    }
}

/// Where a virtio-mmio device was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Base of the register window.
    pub addr: GuestAddress,
    /// Window size.
    pub size: u64,
    /// IRQ (GSI) line.
    pub irq: u32,
}

impl MmioSlot {
    /// The kernel parameter declaring this device: `virtio_mmio.device=<size>@<addr>:<irq>`.
    pub fn cmdline_entry(&self) -> String {
        let size = if self.size.is_multiple_of(1024) {
            format!("{}K", self.size / 1024)
        } else {
            self.size.to_string()
        };
        format!(
            "virtio_mmio.device={}@{:#x}:{}",
            size,
            self.addr.raw_value(),
            self.irq
        )
    }
}

/// Hands out MMIO windows and IRQ lines in order.
pub struct MmioAllocator {
    next_addr: GuestAddress,
    next_irq: u32,
}

impl Default for MmioAllocator {
    fn default() -> Self {
        MmioAllocator {
            next_addr: MMIO_DEVICES_START,
            next_irq: FIRST_DEVICE_IRQ,
        }
    }
}

impl MmioAllocator {
    /// The next free slot.
    pub fn allocate(&mut self) -> Result<MmioSlot, DeviceManagerError> {
        // Without an MP table (one vCPU) the guest uses the 8259 PIC: 16 lines.
        if self.next_irq > LAST_DEVICE_IRQ {
            return Err(DeviceManagerError::OutOfIrqs);
        }
        let slot = MmioSlot {
            addr: self.next_addr,
            size: MMIO_DEVICE_SIZE,
            irq: self.next_irq,
        };
        self.next_addr = self.next_addr.unchecked_add(MMIO_DEVICE_SIZE);
        self.next_irq += 1;
        Ok(slot)
    }
}

/// The buses plus the virtio-mmio placement.
#[derive(Default)]
pub struct DeviceManager {
    /// Port I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    allocator: MmioAllocator,
    slots: Vec<MmioSlot>,
}

impl DeviceManager {
    /// An empty device manager.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts a legacy device on the port-I/O bus.
    pub fn add_pio(
        &mut self,
        port: u16,
        count: u64,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), DeviceManagerError> {
        self.pio.insert(u64::from(port), count, dev)
    }

    /// Reserves the next virtio-mmio slot (window + IRQ).
    pub fn allocate_mmio(&mut self) -> Result<MmioSlot, DeviceManagerError> {
        self.allocator.allocate()
    }

    /// Places a virtio-mmio transport at `slot`, wiring its interrupt as an
    /// irqfd and its queue notifications as ioeventfds (QueueNotify written
    /// with the queue index).
    pub fn add_virtio_mmio(
        &mut self,
        vm: &VmFd,
        slot: MmioSlot,
        transport: Arc<Mutex<dyn BusDevice>>,
        irq_evt: &EventFd,
        queue_evts: &[EventFd],
    ) -> Result<(), DeviceManagerError> {
        vm.register_irqfd(irq_evt, slot.irq)
            .map_err(|e| DeviceManagerError::Irqfd(slot.irq, e))?;
        let notify = slot.addr.raw_value() + QUEUE_NOTIFY;
        for (i, evt) in queue_evts.iter().enumerate() {
            let res = if queue_evts.len() == 1 {
                vm.register_ioevent(evt, &IoEventAddress::Mmio(notify), NoDatamatch)
            } else {
                vm.register_ioevent(evt, &IoEventAddress::Mmio(notify), i as u32)
            };
            res.map_err(|e| DeviceManagerError::Ioeventfd(notify, e))?;
        }
        self.mmio
            .insert(slot.addr.raw_value(), slot.size, transport)?;
        self.slots.push(slot);
        Ok(())
    }

    /// The `virtio_mmio.device=` entries of all placed devices.
    pub fn cmdline_entries(&self) -> Vec<String> {
        self.slots.iter().map(MmioSlot::cmdline_entry).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn bus_dispatch_and_overlap() {
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Echo(10))))
            .unwrap();
        bus.insert(0x60, 5, Arc::new(Mutex::new(Echo(20)))).unwrap();
        assert!(bus.insert(0x3fc, 8, Arc::new(Mutex::new(Echo(0)))).is_err());
        assert!(bus.insert(0x3f0, 9, Arc::new(Mutex::new(Echo(0)))).is_err());
        assert!(bus.insert(0x400, 0, Arc::new(Mutex::new(Echo(0)))).is_err());
        let mut b = [0u8];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 12);
        assert!(bus.read(0x64, &mut b));
        assert_eq!(b[0], 24);
        assert!(!bus.read(0x65, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
        assert!(!bus.read(0x400, &mut b));
        assert!(bus.write(0x3f8, &[1]));
        bus.read(0x3f8, &mut b);
        assert_eq!(b[0], 1);
        assert!(!bus.write(0x80, &[1]));
    }

    #[test]
    fn mmio_slots_and_cmdline() {
        let mut a = MmioAllocator::default();
        let s0 = a.allocate().unwrap();
        let s1 = a.allocate().unwrap();
        assert_eq!(s0.addr, MMIO_DEVICES_START);
        assert_eq!(s1.addr.raw_value(), MMIO_DEVICES_START.raw_value() + 0x1000);
        assert_eq!(s0.irq, FIRST_DEVICE_IRQ);
        assert_eq!(s1.irq, FIRST_DEVICE_IRQ + 1);
        assert_eq!(s0.cmdline_entry(), "virtio_mmio.device=4K@0xd0000000:5");
        assert_eq!(s1.cmdline_entry(), "virtio_mmio.device=4K@0xd0001000:6");
        let n = (LAST_DEVICE_IRQ - FIRST_DEVICE_IRQ + 1) as usize;
        for _ in 2..n {
            a.allocate().unwrap();
        }
        assert!(matches!(a.allocate(), Err(DeviceManagerError::OutOfIrqs)));
    }
}

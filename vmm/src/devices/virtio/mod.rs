//! virtio devices over the virtio-mmio transport.

pub mod balloon;
pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory type used by devices.
pub type GuestMem = GuestMemoryMmap<()>;

/// VIRTIO_F_VERSION_1: modern device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Interrupt status bit: a used buffer was added.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x1;
/// Interrupt status bit: the configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x2;

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Device's queue count.
        expected: usize,
        /// Queues handed over.
        got: usize,
    },
    /// A queue is not valid in guest memory.
    #[error("queue {0} is not valid")]
    InvalidQueue(usize),
}

/// The device's interrupt line: the interrupt status register shared with the
/// transport and the irqfd that raises the IRQ.
#[derive(Clone)]
pub struct Interrupt {
    /// VIRTIO_MMIO InterruptStatus.
    pub status: Arc<AtomicU32>,
    /// Registered with KVM as an irqfd.
    pub evt: Arc<EventFd>,
}

impl Interrupt {
    /// A new line signalling `evt`.
    pub fn new(evt: EventFd) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            evt: Arc::new(evt),
        }
    }

    /// Tells the driver that used buffers are available.
    pub fn signal_used_queue(&self) {
        self.status
            .fetch_or(VIRTIO_MMIO_INT_VRING, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::error!("vmm: virtio interrupt: {e}");
        }
    }
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// virtio device id (1 = net, 2 = block, 5 = balloon, 19 = vsock, 26 = fs).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered feature bits.
    fn avail_features(&self) -> u64;
    /// Records the feature bits the driver accepted.
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the driver's queues (on DRIVER_OK).
    fn activate(&mut self, mem: GuestMem, queues: Vec<Queue>) -> Result<(), ActivateError>;
    /// Stops the device (the driver wrote 0 to Status); returns to pre-activation state.
    fn reset(&mut self);
}

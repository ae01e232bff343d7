//! Event-loop subscriber for a virtio-blk device: serves the queue when the
//! driver's QueueNotify (an ioeventfd) fires.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::device::Block;

/// Subscriber owning a clone of the block device's queue eventfd.
pub struct BlockEventHandler {
    device: Arc<Mutex<Block>>,
    queue_evt: EventFd,
}

impl BlockEventHandler {
    /// Handler for `device`; fails if its eventfd cannot be duplicated.
    pub fn new(device: Arc<Mutex<Block>>) -> std::io::Result<Self> {
        let queue_evt = match device.lock() {
            Ok(d) => d.queue_evt().try_clone()?,
            Err(p) => p.into_inner().queue_evt().try_clone()?,
        };
        Ok(BlockEventHandler { device, queue_evt })
    }
}

impl MutEventSubscriber for BlockEventHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            return;
        }
        // Non-blocking eventfd: EAGAIN only means a spurious wake-up.
        let _ = self.queue_evt.read();
        match self.device.lock() {
            Ok(mut d) => d.process_queue_event(),
            Err(_) => log::error!("vmm: virtio-blk: device lock poisoned"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evt, EventSet::IN)) {
            log::error!("vmm: virtio-blk: registering queue eventfd: {e}");
        }
    }
}

//! Event-loop subscriber for the virtio-balloon device: serves a queue when
//! the driver's QueueNotify for it (an ioeventfd per queue) fires.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::device::Balloon;

/// Subscriber owning clones of the device's queue eventfds; each is
/// registered with its queue index as event data.
pub struct BalloonEventHandler {
    device: Arc<Mutex<Balloon>>,
    queue_evts: Vec<EventFd>,
}

impl BalloonEventHandler {
    /// Handler for `device`; fails if its eventfds cannot be duplicated.
    pub fn new(device: Arc<Mutex<Balloon>>) -> std::io::Result<Self> {
        let queue_evts = {
            let d = match device.lock() {
                Ok(d) => d,
                Err(p) => p.into_inner(),
            };
            d.queue_evts()
                .iter()
                .map(EventFd::try_clone)
                .collect::<std::io::Result<Vec<_>>>()?
        };
        Ok(BalloonEventHandler { device, queue_evts })
    }
}

impl MutEventSubscriber for BalloonEventHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            return;
        }
        let index = events.data() as usize;
        let Some(evt) = self.queue_evts.get(index) else {
            return;
        };
        // Non-blocking eventfd: EAGAIN only means a spurious wake-up.
        let _ = evt.read();
        match self.device.lock() {
            Ok(mut d) => d.process_queue_event(index),
            Err(_) => log::error!("vmm: virtio-balloon: device lock poisoned"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("vmm: virtio-balloon: registering queue {i} eventfd: {e}");
            }
        }
    }
}

//! Event-loop subscriber for a virtio-net device: serves the tx queue on its
//! notification, and moves frames from the tap to the rx queue while the tap
//! is readable and the guest has buffers.
//!
//! Back-pressure: when the guest has no rx buffer left the tap is taken out
//! of the epoll set (at most one frame waits inside the device) and put back
//! when the driver kicks the rx queue — no busy loop, no unbounded buffering;
//! further frames wait in the tap's own (bounded) queue.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::device::Net;

/// Subscriber owning duplicates of the device's eventfds and tap descriptor.
pub struct NetEventHandler {
    device: Arc<Mutex<Net>>,
    rx_evt: EventFd,
    tx_evt: EventFd,
    activate_evt: EventFd,
    tap: File,
    tap_polled: bool,
}

impl NetEventHandler {
    /// Handler for `device`; fails if its descriptors cannot be duplicated.
    pub fn new(device: Arc<Mutex<Net>>) -> std::io::Result<Self> {
        let (rx_evt, tx_evt, activate_evt, tap) = {
            let d = match device.lock() {
                Ok(d) => d,
                Err(p) => p.into_inner(),
            };
            (
                d.rx_evt().try_clone()?,
                d.tx_evt().try_clone()?,
                d.activate_evt().try_clone()?,
                d.tap().try_clone_file()?,
            )
        };
        Ok(NetEventHandler {
            device,
            rx_evt,
            tx_evt,
            activate_evt,
            tap,
            tap_polled: false,
        })
    }

    /// Whether the tap is in the epoll set (for tests).
    pub fn tap_polled(&self) -> bool {
        self.tap_polled
    }

    fn rx(&mut self, ops: &mut EventOps) {
        let res = match self.device.lock() {
            Ok(mut d) => d.process_rx_event(),
            Err(_) => {
                log::error!("vmm: virtio-net: device lock poisoned");
                return;
            }
        };
        self.set_tap_polling(ops, !res.blocked);
    }

    fn tx(&mut self) {
        match self.device.lock() {
            Ok(mut d) => d.process_tx_event(),
            Err(_) => log::error!("vmm: virtio-net: device lock poisoned"),
        }
    }

    fn set_tap_polling(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.tap_polled {
            return;
        }
        let events = Events::new(&self.tap, EventSet::IN);
        let res = if on {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match res {
            Ok(()) => self.tap_polled = on,
            Err(e) => log::error!(
                "vmm: virtio-net: {} the tap: {e}",
                if on { "polling" } else { "unpolling" }
            ),
        }
    }
}

impl MutEventSubscriber for NetEventHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.tap.as_raw_fd() {
            // Readable, or an error condition: process_rx reads, and stops
            // polling on a read error until the next rx kick.
            self.rx(ops);
        } else if fd == self.rx_evt.as_raw_fd() {
            // Non-blocking eventfds: EAGAIN only means a spurious wake-up.
            let _ = self.rx_evt.read();
            self.rx(ops);
        } else if fd == self.tx_evt.as_raw_fd() {
            let _ = self.tx_evt.read();
            self.tx();
        } else if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            // Serve what the driver queued before DRIVER_OK, then poll the tap.
            self.tx();
            self.rx(ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (evt, what) in [
            (&self.rx_evt, "rx queue"),
            (&self.tx_evt, "tx queue"),
            (&self.activate_evt, "activation"),
        ] {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("vmm: virtio-net: registering the {what} eventfd: {e}");
            }
        }
    }
}

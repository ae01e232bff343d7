//! COM1 (8250 UART at 0x3f8, IRQ 4) on vm-superio's `Serial`.
//!
//! The interrupt is an EventFd registered as a KVM irqfd: THRE interrupts are
//! what lets user-space writes to /dev/console drain through the tty layer
//! (docs/KVM-ON-CI.md gap 4; printk alone polls).
//!
//! Host→guest input goes through a [`SerialInput`] handle (usable from any
//! thread): bytes are queued on a channel, an EventFd wakes the event loop,
//! which moves them into the UART's receive FIFO as space allows.
//!
//! Input is held back until the guest has written BOOT_MARK_PORT (guest-init
//! is running): the kernel's 8250 driver discards whatever sits in the FIFO
//! when it probes and opens the port, so earlier bytes would be lost.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
use crate::shared::VmShared;

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// Number of UART registers.
pub const COM1_PORT_COUNT: u64 = 8;

/// Errors of the serial device set-up.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Creating an EventFd failed.
    #[error("creating an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Serial interrupt: writes the irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Guest-visible serial output sink.
pub type SerialOut = Box<dyn Write + Send>;

/// The UART on the port-I/O bus.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, NoEvents, SerialOut>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing guest output to `out`.
    pub fn new(irq: EventFd, out: SerialOut) -> Self {
        SerialDevice {
            serial: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Moves as many of `pending` into the receive FIFO as fit.
    pub fn feed(&mut self, pending: &mut VecDeque<u8>) {
        let room = self.serial.fifo_capacity();
        if room == 0 || pending.is_empty() {
            return;
        }
        let n = room.min(pending.len());
        let chunk: Vec<u8> = pending.drain(..n).collect();
        match self.serial.enqueue_raw_bytes(&chunk) {
            Ok(written) if written < chunk.len() => {
                for b in chunk[written..].iter().rev() {
                    pending.push_front(*b);
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("vmm: serial input: {e}"),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.serial.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            if let Err(e) = self.serial.write(offset as u8, *b) {
                log::warn!("vmm: serial write: {e}");
            }
        }
    }
}

/// Handle for injecting bytes into the guest's serial receive path from any
/// thread. Cloneable.
#[derive(Clone)]
pub struct SerialInput {
    tx: Sender<Vec<u8>>,
    evt: Arc<EventFd>,
}

impl SerialInput {
    /// Queues `bytes` for the guest. Fails only once the VM is gone.
    pub fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.tx
            .send(bytes.to_vec())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "VM stopped"))?;
        self.evt.write(1)
    }
}

/// Event-loop side of [`SerialInput`].
pub struct SerialInputHandler {
    rx: Receiver<Vec<u8>>,
    evt: Arc<EventFd>,
    pending: VecDeque<u8>,
    serial: Arc<Mutex<SerialDevice>>,
    gate: Option<Arc<VmShared>>,
}

/// Creates the input handle and its event-loop subscriber for `serial`.
/// With `gate`, bytes are delivered only once the guest wrote BOOT_MARK_PORT.
pub fn serial_input(
    serial: Arc<Mutex<SerialDevice>>,
    gate: Option<Arc<VmShared>>,
) -> Result<(SerialInput, SerialInputHandler), SerialError> {
    let (tx, rx) = channel();
    let evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::EventFd)?);
    Ok((
        SerialInput {
            tx,
            evt: evt.clone(),
        },
        SerialInputHandler {
            rx,
            evt,
            pending: VecDeque::new(),
            serial,
            gate,
        },
    ))
}

impl SerialInputHandler {
    /// Moves queued bytes into the UART FIFO; called on input and
    /// periodically while bytes are pending (the guest drains the FIFO).
    pub fn pump(&mut self) {
        while let Ok(bytes) = self.rx.try_recv() {
            self.pending.extend(bytes);
        }
        if self.pending.is_empty() {
            return;
        }
        if let Some(shared) = &self.gate {
            if shared.boot_mark.get().is_none() {
                return;
            }
        }
        if let Ok(mut serial) = self.serial.lock() {
            serial.feed(&mut self.pending);
        }
    }

    /// Whether bytes are still waiting for FIFO space.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

impl MutEventSubscriber for SerialInputHandler {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.pump();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.evt.as_ref(), EventSet::IN)) {
            log::error!("vmm: registering serial input: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_and_input() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = Arc::new(Mutex::new(SerialDevice::new(
            irq.try_clone().unwrap(),
            Box::new(sink.clone()),
        )));
        dev.lock().unwrap().write(0, b"h");
        assert_eq!(&*sink.0.lock().unwrap(), b"h");

        let shared = Arc::new(VmShared::new(
            std::time::Instant::now(),
            EventFd::new(0).unwrap(),
        ));
        let (input, mut handler) = serial_input(dev.clone(), Some(shared.clone())).unwrap();
        // Enable the RX interrupt (IER bit 0).
        dev.lock().unwrap().write(1, &[1]);
        let big = vec![b'x'; 100];
        input.send(&big).unwrap();
        handler.pump();
        // Held until the guest marks boot.
        assert!(handler.has_pending());
        let mut lsr = [0u8];
        dev.lock().unwrap().read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 0);
        shared.boot_mark.set(std::time::Instant::now()).unwrap();
        handler.pump();
        assert!(handler.has_pending());
        assert!(irq.read().unwrap() >= 1);
        let mut got = 0;
        for _ in 0..200 {
            let mut lsr = [0u8];
            dev.lock().unwrap().read(5, &mut lsr);
            if lsr[0] & 1 == 0 {
                handler.pump();
                dev.lock().unwrap().read(5, &mut lsr);
                if lsr[0] & 1 == 0 {
                    break;
                }
            }
            let mut b = [0u8];
            dev.lock().unwrap().read(0, &mut b);
            assert_eq!(b[0], b'x');
            got += 1;
        }
        assert_eq!(got, 100);
        assert!(!handler.has_pending());
    }
}

//! virtio-vsock device: state, features, activation, and the pure queue
//! processors [`process_tx_queue`] / [`process_rx_queue`] over a
//! [`VsockBackend`].

use std::os::fd::RawFd;
use std::path::Path;
use std::time::Instant;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::super::{ActivateError, GuestMem, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use super::backend::VsockBackend;
use super::muxer::{FdOp, MuxerError, UnixMuxer};
use super::packet::{self, MAX_CHAIN_DESCS, MAX_PKT_PAYLOAD};

/// virtio device id of a socket device.
pub const TYPE_VSOCK: u32 = 19;
/// Queue size offered (each of the three queues).
pub const QUEUE_SIZE: u16 = 256;
/// Index of the rx queue (device → guest).
pub const RXQ: usize = 0;
/// Index of the tx queue (guest → device).
pub const TXQ: usize = 1;
/// Index of the event queue (unused: no transport-reset events are sent).
pub const EVQ: usize = 2;
/// Most tx chains served per call, so one call's work is bounded.
pub const TX_BATCH: usize = 256;

/// Errors of the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved.
    #[error("invalid vsock guest CID {0}: must be 3..=4294967294")]
    InvalidCid(u32),
    /// Setting up the unix socket failed.
    #[error("setting up the vsock host socket")]
    Muxer(#[source] MuxerError),
    /// Creating an eventfd failed.
    #[error("creating a queue eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Serves the tx queue: each chain is one packet for `backend`. Stops when
/// the queue is empty, after [`TX_BATCH`] chains, or when the backend is
/// blocked. Returns whether any chain was completed.
pub fn process_tx_queue<M: GuestMemory, B: VsockBackend>(
    mem: &M,
    queue: &mut Queue,
    backend: &mut B,
    payload: &mut Vec<u8>,
) -> bool {
    let mut used_any = false;
    for _ in 0..TX_BATCH {
        if backend.tx_blocked() {
            break;
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let descs: Vec<Descriptor> = chain.take(MAX_CHAIN_DESCS).collect();
        match packet::read_tx_header(mem, &descs) {
            Ok((hdr, avail)) => match packet::read_tx_payload(mem, &descs, &hdr, avail, payload) {
                Ok(()) => backend.send_pkt(&hdr, payload),
                Err(e) => {
                    log::debug!("vmm: vsock: bad tx packet: {e}");
                    backend.reject_pkt(&hdr);
                }
            },
            Err(e) => log::debug!("vmm: vsock: bad tx chain dropped: {e}"),
        }
        if let Err(e) = queue.add_used(mem, head, 0) {
            log::error!("vmm: vsock: tx add_used: {e}");
            break;
        }
        used_any = true;
    }
    used_any
}

/// Fills rx buffers with the backend's pending packets. A buffer that cannot
/// hold a packet (device-readable, too short, outside guest memory) is
/// returned empty. Returns whether any chain was completed.
pub fn process_rx_queue<M: GuestMemory, B: VsockBackend>(
    mem: &M,
    queue: &mut Queue,
    backend: &mut B,
    payload: &mut Vec<u8>,
) -> bool {
    let mut used_any = false;
    // Bounded by the queue size: each pass consumes a chain or stops.
    for _ in 0..=usize::from(QUEUE_SIZE) {
        if !backend.has_pending_rx() {
            break;
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let descs: Vec<Descriptor> = chain.take(MAX_CHAIN_DESCS).collect();
        let used_len = match packet::rx_payload_room(mem, &descs) {
            Ok(room) => {
                payload.resize(room.min(MAX_PKT_PAYLOAD), 0);
                let Some((hdr, n)) = backend.recv_pkt(payload) else {
                    // Nothing after all: leave the buffer for later.
                    queue.go_to_previous_position();
                    break;
                };
                let n = n.min(payload.len());
                match packet::write_rx(mem, &descs, &hdr, &payload[..n]) {
                    Ok(len) => len,
                    Err(e) => {
                        // Cannot happen on a chain that passed the checks.
                        log::error!("vmm: vsock: writing an rx packet: {e}");
                        0
                    }
                }
            }
            Err(e) => {
                log::debug!("vmm: vsock: bad rx buffer returned empty: {e}");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, used_len) {
            log::error!("vmm: vsock: rx add_used: {e}");
            break;
        }
        used_any = true;
    }
    used_any
}

/// The virtio-vsock device with a unix-socket host side.
pub struct Vsock {
    guest_cid: u64,
    muxer: UnixMuxer,
    acked_features: u64,
    queue_sizes: [u16; 3],
    queues: Vec<Queue>,
    mem: Option<GuestMem>,
    interrupt: Interrupt,
    queue_evts: [EventFd; 3],
    scratch: Vec<u8>,
}

impl Vsock {
    /// A device for guest CID `guest_cid` whose host side listens on `uds_path`.
    pub fn new(guest_cid: u32, uds_path: &Path, interrupt: Interrupt) -> Result<Self, VsockError> {
        if guest_cid < 3 || guest_cid == u32::MAX {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let muxer = UnixMuxer::bind(uds_path, u64::from(guest_cid)).map_err(VsockError::Muxer)?;
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Vsock {
            guest_cid: u64::from(guest_cid),
            muxer,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE; 3],
            queues: Vec::new(),
            mem: None,
            interrupt,
            queue_evts: [evt()?, evt()?, evt()?],
            scratch: Vec::with_capacity(MAX_PKT_PAYLOAD),
        })
    }

    /// The eventfds the driver's QueueNotify signals (rx, tx, event).
    pub fn queue_evts(&self) -> &[EventFd; 3] {
        &self.queue_evts
    }

    /// The host side.
    pub fn muxer(&mut self) -> &mut UnixMuxer {
        &mut self.muxer
    }

    /// The listening socket's descriptor.
    pub fn listener_fd(&self) -> RawFd {
        self.muxer.listener_fd()
    }

    /// The driver notified queue `index`.
    pub fn handle_queue_event(&mut self, index: usize) {
        if index == EVQ {
            // Event buffers are only held; nothing is ever sent on them.
            return;
        }
        self.process_queues();
    }

    /// The listening socket is readable.
    pub fn handle_listener(&mut self) {
        self.muxer.accept(Instant::now());
        self.process_queues();
    }

    /// A host stream is ready.
    pub fn handle_stream(&mut self, fd: RawFd, set: EventSet) {
        self.muxer.notify(fd, set, Instant::now());
        self.process_queues();
    }

    /// A deadline may have passed.
    pub fn handle_timeouts(&mut self) {
        self.muxer.handle_timeouts(Instant::now());
        self.process_queues();
    }

    /// Interest changes for the event loop.
    pub fn take_fd_ops(&mut self) -> Vec<FdOp> {
        self.muxer.take_fd_ops()
    }

    /// Moves packets both ways until neither queue makes progress (bounded),
    /// then interrupts the driver if any buffer was used.
    pub fn process_queues(&mut self) {
        let Some(mem) = self.mem.as_ref() else {
            return;
        };
        if self.queues.len() != 3 {
            return;
        }
        let mut used = false;
        for _ in 0..4 {
            let rx = process_rx_queue(
                mem,
                &mut self.queues[RXQ],
                &mut self.muxer,
                &mut self.scratch,
            );
            let tx = process_tx_queue(
                mem,
                &mut self.queues[TXQ],
                &mut self.muxer,
                &mut self.scratch,
            );
            used |= rx || tx;
            // tx may have produced replies for rx; rx ran first, so a tx
            // blocked on full replies has had its chance.
            if !tx {
                break;
            }
        }
        if used {
            self.interrupt.signal_used_queue();
        }
    }

    fn kick(&self) {
        // Wakes the event handler (which then serves the queues and applies
        // interest changes on its own thread).
        if let Err(e) = self.queue_evts[RXQ].write(1) {
            log::error!("vmm: vsock: waking the event loop: {e}");
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Config space: guest_cid (u64, le).
        let config = self.guest_cid.to_le_bytes();
        data.fill(0);
        if let Ok(start) = usize::try_from(offset) {
            if start < config.len() {
                let n = data.len().min(config.len() - start);
                data[..n].copy_from_slice(&config[start..start + n]);
            }
        }
    }
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("vmm: vsock: config write at {offset:#x} ignored");
    }
    fn activate(&mut self, mem: GuestMem, queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != 3 {
            return Err(ActivateError::QueueCount {
                expected: 3,
                got: queues.len(),
            });
        }
        if let Some(i) = queues.iter().position(|q| !q.is_valid(&mem)) {
            return Err(ActivateError::InvalidQueue(i));
        }
        self.queues = queues;
        self.mem = Some(mem);
        self.kick();
        Ok(())
    }
    fn reset(&mut self) {
        self.queues.clear();
        self.mem = None;
        self.acked_features = 0;
        self.muxer.reset();
        self.kick();
    }
}

//! virtio-net device: state, features, activation, and the pure frame
//! processors [`process_tx`] and [`process_rx`] over a [`NetBackend`].
//!
//! No offloads are offered (no CSUM, GSO or MRG_RXBUF): every frame is one
//! complete Ethernet frame behind a 12-byte `virtio_net_hdr_v1`, and every rx
//! buffer chain takes at most one frame.

use std::io;

use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::super::{ActivateError, GuestMem, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use super::tap::{Tap, TapError};

/// virtio device id of a network device.
pub const TYPE_NET: u32 = 1;
/// Queue size offered (rx and tx).
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of `virtio_net_hdr_v1` (with `num_buffers`), as VERSION_1 requires.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame (after the virtio header) accepted in either direction.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Ethernet header: shortest frame accepted from the guest.
pub const ETH_HLEN: usize = 14;
/// Frames handled per [`process_rx`] call before yielding to the event loop.
pub const RX_BUDGET: usize = 256;

/// Errors of the network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MAC address is multicast or all zero.
    #[error("invalid MAC address {0}: must be unicast and not zero")]
    InvalidMac(String),
    /// Opening the tap failed.
    #[error("opening the tap backend")]
    Tap(#[source] TapError),
    /// Creating an eventfd failed.
    #[error("creating an eventfd")]
    EventFd(#[source] io::Error),
}

/// Where frames go to and come from. Frames are bare Ethernet frames; the
/// virtio header is the device's business.
pub trait NetBackend: Send {
    /// Reads one frame into `buf`; returns its length (a length above
    /// `buf.len()` means the frame was truncated).
    /// [`io::ErrorKind::WouldBlock`] when no frame is pending.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
}

/// What happened to frames, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames the guest sent that reached the backend.
    pub tx_frames: u64,
    /// Their bytes (without the virtio header).
    pub tx_bytes: u64,
    /// tx chains dropped as malformed (too short or long, device-writable
    /// descriptors, outside guest memory).
    pub tx_malformed: u64,
    /// Valid frames the backend refused.
    pub tx_backend_errors: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes (without the virtio header).
    pub rx_bytes: u64,
    /// Frames dropped because they did not fit the guest's buffer.
    pub rx_oversize: u64,
    /// rx chains returned empty as malformed (device-readable descriptors,
    /// shorter than the header, outside guest memory).
    pub rx_malformed: u64,
    /// Backend read failures (other than "nothing pending").
    pub rx_backend_errors: u64,
}

/// What [`process_tx`] and [`process_rx`] need: the backend, one pending rx
/// frame at most, and the counters.
pub struct NetState<B: NetBackend> {
    /// Where frames go.
    pub backend: B,
    /// Counters.
    pub counters: NetCounters,
    /// Virtio header + frame, as written to the guest.
    rx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` that waits for a guest buffer.
    rx_pending: Option<usize>,
    /// Gathered tx chain (header + frame).
    tx_buf: Vec<u8>,
}

impl<B: NetBackend> NetState<B> {
    /// State for `backend`.
    pub fn new(backend: B) -> Self {
        NetState {
            backend,
            counters: NetCounters::default(),
            rx_buf: vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN],
            rx_pending: None,
            tx_buf: Vec::new(),
        }
    }

    /// Whether a frame read from the backend waits for a guest buffer.
    pub fn rx_pending(&self) -> bool {
        self.rx_pending.is_some()
    }

    /// Drops the pending rx frame (device reset).
    pub fn clear_pending(&mut self) {
        self.rx_pending = None;
    }
}

/// Outcome of [`process_rx`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RxResult {
    /// Used buffers were added (the caller interrupts the driver).
    pub used_any: bool,
    /// The device stopped reading for a reason other than "backend
    /// drained" — no guest buffer, a broken queue, a backend error. The
    /// caller stops polling the backend until the driver kicks the rx queue.
    pub blocked: bool,
}

/// Copies a tx chain (header + frame) into `buf`.
fn gather<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
    buf: &mut Vec<u8>,
) -> Result<(), &'static str> {
    buf.clear();
    if descs.iter().any(|d| d.is_write_only()) {
        return Err("device-writable descriptor in a tx chain");
    }
    let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if total < (VNET_HDR_LEN + ETH_HLEN) as u64 {
        return Err("shorter than the virtio and Ethernet headers");
    }
    if total > (VNET_HDR_LEN + MAX_FRAME_LEN) as u64 {
        return Err("longer than 64 KiB");
    }
    buf.resize(total as usize, 0);
    let mut off = 0usize;
    for d in descs {
        let end = off + d.len() as usize;
        mem.read_slice(&mut buf[off..end], d.addr())
            .map_err(|_| "buffer not in guest memory")?;
        off = end;
    }
    Ok(())
}

/// Sends every available tx chain to the backend. Returns whether any chain
/// was completed (the caller then interrupts the driver).
///
/// Malformed chains and frames the backend refuses are dropped (counted, and
/// logged at debug level) and returned to the driver; nothing here panics on
/// guest input.
pub fn process_tx<M: GuestMemory, B: NetBackend>(
    mem: &M,
    queue: &mut Queue,
    net: &mut NetState<B>,
) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        // The iterator stops at loops or out-of-table indices; cap the length
        // anyway so a hostile chain cannot make us allocate without bound.
        let descs: Vec<Descriptor> = chain.take(usize::from(QUEUE_SIZE) + 1).collect();
        match gather(mem, &descs, &mut net.tx_buf) {
            Ok(()) => {
                let frame = &net.tx_buf[VNET_HDR_LEN..];
                match net.backend.write_frame(frame) {
                    Ok(()) => {
                        net.counters.tx_frames += 1;
                        net.counters.tx_bytes += frame.len() as u64;
                    }
                    Err(e) => {
                        net.counters.tx_backend_errors += 1;
                        log::debug!("vmm: virtio-net: tx frame dropped: {e}");
                    }
                }
            }
            Err(why) => {
                net.counters.tx_malformed += 1;
                log::debug!("vmm: virtio-net: tx chain dropped: {why}");
            }
        }
        if let Err(e) = queue.add_used(mem, head, 0) {
            log::error!("vmm: virtio-net: tx add_used: {e}");
            break;
        }
        used_any = true;
    }
    used_any
}

/// Why an rx chain did not take the pending frame.
enum RxFault {
    /// The chain is fine but smaller than the frame.
    TooSmall,
    /// The chain is unusable.
    Malformed(&'static str),
}

/// Scatters `data` (header + frame) over an rx chain; returns the used length.
fn scatter<M: GuestMemory>(mem: &M, descs: &[Descriptor], data: &[u8]) -> Result<u32, RxFault> {
    if descs.iter().any(|d| !d.is_write_only()) {
        return Err(RxFault::Malformed(
            "device-readable descriptor in an rx chain",
        ));
    }
    let capacity: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if capacity < VNET_HDR_LEN as u64 {
        return Err(RxFault::Malformed(
            "rx buffer shorter than the virtio header",
        ));
    }
    if capacity < data.len() as u64 {
        return Err(RxFault::TooSmall);
    }
    let mut off = 0usize;
    for d in descs {
        if off == data.len() {
            break;
        }
        let n = (d.len() as usize).min(data.len() - off);
        mem.write_slice(&data[off..off + n], d.addr())
            .map_err(|_| RxFault::Malformed("rx buffer not in guest memory"))?;
        off += n;
    }
    // data.len() <= VNET_HDR_LEN + MAX_FRAME_LEN.
    Ok(data.len() as u32)
}

/// Moves frames from the backend into available rx chains, at most
/// [`RX_BUDGET`] per call.
///
/// Each frame gets a zeroed `virtio_net_hdr_v1` with `num_buffers = 1`. A
/// frame read while no chain is available stays pending (one frame at most)
/// and the result says `blocked`. A frame larger than the chain it meets is
/// dropped (counted) and the chain kept for the next frame; a malformed chain
/// is returned empty. Nothing here panics on guest input.
pub fn process_rx<M: GuestMemory, B: NetBackend>(
    mem: &M,
    queue: &mut Queue,
    net: &mut NetState<B>,
) -> RxResult {
    let mut res = RxResult::default();
    for _ in 0..RX_BUDGET {
        let len = match net.rx_pending {
            Some(len) => len,
            None => match net.backend.read_frame(&mut net.rx_buf[VNET_HDR_LEN..]) {
                Ok(n) if n > MAX_FRAME_LEN => {
                    net.counters.rx_oversize += 1;
                    log::debug!("vmm: virtio-net: rx frame of {n} bytes dropped (too long)");
                    continue;
                }
                Ok(n) => {
                    net.rx_pending = Some(n);
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return res,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    net.counters.rx_backend_errors += 1;
                    log::warn!("vmm: virtio-net: reading from the backend: {e}");
                    res.blocked = true;
                    return res;
                }
            },
        };
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            res.blocked = true;
            return res;
        };
        let head = chain.head_index();
        let descs: Vec<Descriptor> = chain.take(usize::from(QUEUE_SIZE) + 1).collect();
        // Zeroed header: no flags, GSO_NONE; num_buffers = 1 (bytes 10..12).
        net.rx_buf[..VNET_HDR_LEN].fill(0);
        net.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
        let used_len = match scatter(mem, &descs, &net.rx_buf[..VNET_HDR_LEN + len]) {
            Ok(n) => {
                net.rx_pending = None;
                net.counters.rx_frames += 1;
                net.counters.rx_bytes += len as u64;
                n
            }
            Err(RxFault::TooSmall) => {
                net.rx_pending = None;
                net.counters.rx_oversize += 1;
                log::debug!(
                    "vmm: virtio-net: rx frame of {len} bytes dropped (guest buffer too small)"
                );
                // Keep the chain for the next frame.
                queue.go_to_previous_position();
                continue;
            }
            Err(RxFault::Malformed(why)) => {
                net.counters.rx_malformed += 1;
                log::debug!("vmm: virtio-net: rx chain returned empty: {why}");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, used_len) {
            log::error!("vmm: virtio-net: rx add_used: {e}");
            res.blocked = true;
            return res;
        }
        res.used_any = true;
    }
    res
}

/// FNV-1a, 64 bit: stable across Rust releases (unlike `DefaultHasher`).
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A stable MAC address for `id` (a pod uuid or name): locally administered
/// (bit 1 of the first byte set) and unicast (bit 0 clear).
pub fn mac_from_id(id: &[u8]) -> [u8; 6] {
    let h = fnv1a(id).to_be_bytes();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&h[..6]);
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The virtio-net device on a tap.
pub struct Net {
    state: NetState<Tap>,
    mac: [u8; 6],
    acked_features: u64,
    queue_sizes: [u16; 2],
    rx_queue: Option<Queue>,
    tx_queue: Option<Queue>,
    mem: Option<GuestMem>,
    interrupt: Interrupt,
    rx_evt: EventFd,
    tx_evt: EventFd,
    activate_evt: EventFd,
}

impl Net {
    /// A device on the tap `tap_name` (attached, or created if missing),
    /// answering `mac` in its configuration space.
    pub fn new(tap_name: &str, mac: [u8; 6], interrupt: Interrupt) -> Result<Self, NetError> {
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(NetError::InvalidMac(format_mac(&mac)));
        }
        let tap = Tap::open(tap_name).map_err(NetError::Tap)?;
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd);
        Ok(Net {
            state: NetState::new(tap),
            mac,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE; 2],
            rx_queue: None,
            tx_queue: None,
            mem: None,
            interrupt,
            rx_evt: evt()?,
            tx_evt: evt()?,
            activate_evt: evt()?,
        })
    }

    /// The eventfd the driver's QueueNotify for the rx queue signals.
    pub fn rx_evt(&self) -> &EventFd {
        &self.rx_evt
    }

    /// The eventfd the driver's QueueNotify for the tx queue signals.
    pub fn tx_evt(&self) -> &EventFd {
        &self.tx_evt
    }

    /// Signalled on activation, so the event loop starts polling the tap.
    pub fn activate_evt(&self) -> &EventFd {
        &self.activate_evt
    }

    /// The tap backend.
    pub fn tap(&self) -> &Tap {
        &self.state.backend
    }

    /// The MAC address offered to the guest.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Frame counters.
    pub fn counters(&self) -> NetCounters {
        self.state.counters
    }

    /// Whether the driver has started the device.
    pub fn is_active(&self) -> bool {
        self.mem.is_some()
    }

    /// Sends the guest's frames after a tx notification.
    pub fn process_tx_event(&mut self) {
        let (Some(queue), Some(mem)) = (self.tx_queue.as_mut(), self.mem.as_ref()) else {
            return;
        };
        if process_tx(mem, queue, &mut self.state) {
            self.interrupt.signal_used_queue();
        }
    }

    /// Moves frames from the tap to the guest (tap readable, or the driver
    /// added rx buffers). `blocked` when inactive.
    pub fn process_rx_event(&mut self) -> RxResult {
        let (Some(queue), Some(mem)) = (self.rx_queue.as_mut(), self.mem.as_ref()) else {
            return RxResult {
                used_any: false,
                blocked: true,
            };
        };
        let res = process_rx(mem, queue, &mut self.state);
        if res.used_any {
            self.interrupt.signal_used_queue();
        }
        res
    }

    fn config(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS)
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Config space: mac[6], status (u16); nothing else is offered.
        let config = self.config();
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start < config.len() {
            let n = data.len().min(config.len() - start);
            data[..n].copy_from_slice(&config[start..start + n]);
        }
    }
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("vmm: virtio-net: config write at {offset:#x} ignored");
    }
    fn activate(&mut self, mem: GuestMem, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let got = queues.len();
        let Ok([rx, tx]) = <[Queue; 2]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        if !rx.is_valid(&mem) {
            return Err(ActivateError::InvalidQueue(RX_QUEUE));
        }
        if !tx.is_valid(&mem) {
            return Err(ActivateError::InvalidQueue(TX_QUEUE));
        }
        self.rx_queue = Some(rx);
        self.tx_queue = Some(tx);
        self.mem = Some(mem);
        // The event loop starts polling the tap and serves frames queued
        // before activation.
        if let Err(e) = self.activate_evt.write(1) {
            log::error!("vmm: virtio-net: signalling activation: {e}");
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.rx_queue = None;
        self.tx_queue = None;
        self.mem = None;
        self.acked_features = 0;
        self.state.clear_pending();
    }
}

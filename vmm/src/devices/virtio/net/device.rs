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
use super::backend::{NetBackend, VNET_HDR_LEN};
use super::tap::{Tap, TapError};

/// virtio device id of a network device.
pub const TYPE_NET: u32 = 1;
/// Queue size offered (rx and tx).
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Largest frame (after the virtio header) accepted in either direction.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Ethernet header: shortest frame accepted from the guest.
pub const ETH_HLEN: usize = 14;
/// Room for any frame a tap can hold (MTU 65535 + Ethernet and VLAN
/// headers), so an over-long frame is read whole and counted as oversize.
const RX_READ_LEN: usize = MAX_FRAME_LEN + 64;
/// Frames handled per [`process_rx`] call before yielding to the event loop.
pub const RX_BUDGET: usize = 256;

/// Errors of the network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MAC address is multicast or all zero.
    #[error("invalid MAC address {0}: must be unicast and not zero")]
    InvalidMac(String),
    /// Opening the tap failed (or its name is invalid).
    #[error("opening the tap backend")]
    Tap(#[source] TapError),
    /// Creating an eventfd failed.
    #[error("creating an eventfd")]
    EventFd(#[source] io::Error),
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
            rx_buf: vec![0u8; VNET_HDR_LEN + RX_READ_LEN],
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

/// Where a [`Net`] device's tap comes from.
#[derive(Debug)]
pub enum TapSource {
    /// Open `/dev/net/tun` and attach to (or create) the named tap.
    Name,
    /// A tap descriptor opened elsewhere (see [`Tap::from_fd`]).
    Fd(std::os::fd::OwnedFd),
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

/// Checks that `mac` can be a NIC's address: unicast and not all zero.
pub fn validate_mac(mac: &[u8; 6]) -> Result<(), NetError> {
    if mac[0] & 1 != 0 || *mac == [0; 6] {
        return Err(NetError::InvalidMac(format_mac(mac)));
    }
    Ok(())
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
    pub fn new(
        tap_name: &str,
        source: TapSource,
        mac: [u8; 6],
        interrupt: Interrupt,
    ) -> Result<Self, NetError> {
        validate_mac(&mac)?;
        let tap = match source {
            TapSource::Name => Tap::open(tap_name),
            TapSource::Fd(fd) => Tap::from_fd(fd, tap_name),
        }
        .map_err(NetError::Tap)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestAddress, GuestMemoryMmap};

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const F_INDIRECT: u16 = 4;

    const BUF0: u64 = 0x10_0000;
    const BUF1: u64 = 0x20_0000;
    const BUF2: u64 = 0x30_0000;
    /// Buffer the Linux driver posts without MRG_RXBUF: 1518 + padding + header.
    const RX_BUF_LEN: u32 = 1526 + VNET_HDR_LEN as u32;

    #[derive(Default)]
    struct MemBackend {
        rx: VecDeque<Vec<u8>>,
        tx: Vec<Vec<u8>>,
        fail_writes: bool,
        reads: usize,
    }

    impl NetBackend for MemBackend {
        fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let f = self.rx.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
            self.reads += 1;
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            Ok(f.len())
        }
        fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
            if self.fail_writes {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.tx.push(frame.to_vec());
            Ok(())
        }
    }

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Links `descs` into one chain starting at table index `first`.
    fn chain(descs: &[RawDescriptor], first: u16) -> Vec<RawDescriptor> {
        descs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let s = SplitDescriptor::from(*r);
                let last = i + 1 == descs.len();
                let flags = if last {
                    s.flags() & !F_NEXT
                } else {
                    s.flags() | F_NEXT
                };
                let next = if last { 0 } else { first + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(s.addr().0, s.len(), flags, next))
            })
            .collect()
    }

    /// A frame of `len` bytes: broadcast destination, then a counter pattern.
    fn frame(len: usize, seed: u8) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(seed)).collect();
        if len >= 6 {
            f[..6].fill(0xff);
        }
        f
    }

    fn used_idx(m: &GuestMemoryMmap<()>, vq: &MockSplitQueue<GuestMemoryMmap<()>>) -> u16 {
        m.read_obj(vq.used_addr().unchecked_add(2)).unwrap()
    }

    /// (head, len) of used ring entry `i`.
    fn used_elem(
        m: &GuestMemoryMmap<()>,
        vq: &MockSplitQueue<GuestMemoryMmap<()>>,
        i: u64,
    ) -> (u32, u32) {
        let base = vq.used_addr().unchecked_add(4 + 8 * i);
        (
            m.read_obj(base).unwrap(),
            m.read_obj(base.unchecked_add(4)).unwrap(),
        )
    }

    fn read(m: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        m.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn rx_header() -> [u8; VNET_HDR_LEN] {
        let mut h = [0u8; VNET_HDR_LEN];
        h[10] = 1;
        h
    }

    #[test]
    fn tx_frame_arrives_without_header() {
        let m = mem();
        let mut net = NetState::new(MemBackend::default());
        let f = frame(98, 3);
        // Header plus the first 20 bytes in one descriptor, the rest in another.
        let mut first = vec![0u8; VNET_HDR_LEN];
        first.extend_from_slice(&f[..20]);
        m.write_slice(&first, GuestAddress(BUF0)).unwrap();
        m.write_slice(&f[20..], GuestAddress(BUF1)).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &chain(&[d(BUF0, first.len() as u32, 0), d(BUF1, 78, 0)], 0),
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(process_tx(&m, &mut q, &mut net));
        assert_eq!(net.backend.tx, vec![f]);
        assert_eq!(used_idx(&m, &vq), 1);
        assert_eq!(used_elem(&m, &vq, 0), (0, 0));
        assert_eq!(net.counters.tx_frames, 1);
        assert_eq!(net.counters.tx_bytes, 98);
        // Nothing more to do.
        assert!(!process_tx(&m, &mut q, &mut net));
    }

    #[test]
    fn rx_frame_lands_with_zeroed_header() {
        let m = mem();
        let mut net = NetState::new(MemBackend::default());
        m.write_slice(&[0xee; 2048], GuestAddress(BUF0)).unwrap();
        m.write_slice(&[0xee; 2048], GuestAddress(BUF2)).unwrap();
        let f1 = frame(100, 1);
        let f2 = frame(1514, 2);
        net.backend.rx.extend([f1.clone(), f2.clone()]);
        let vq = MockSplitQueue::new(&m, 16);
        let mut descs = chain(&[d(BUF0, RX_BUF_LEN, F_WRITE)], 0);
        // Second chain: header alone, then the frame.
        descs.extend(chain(
            &[
                d(BUF1, VNET_HDR_LEN as u32, F_WRITE),
                d(BUF2, 1526, F_WRITE),
            ],
            1,
        ));
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let res = process_rx(&m, &mut q, &mut net);
        assert_eq!(
            res,
            RxResult {
                used_any: true,
                blocked: false
            }
        );
        assert_eq!(used_idx(&m, &vq), 2);
        assert_eq!(used_elem(&m, &vq, 0), (0, 112));
        assert_eq!(used_elem(&m, &vq, 1), (1, 1514 + 12));
        assert_eq!(read(&m, BUF0, 12), rx_header());
        assert_eq!(read(&m, BUF0 + 12, 100), f1);
        assert_eq!(read(&m, BUF0 + 112, 1), [0xee]);
        assert_eq!(read(&m, BUF1, 12), rx_header());
        assert_eq!(read(&m, BUF2, 1514), f2);
        assert_eq!(net.counters.rx_frames, 2);
        assert_eq!(net.counters.rx_bytes, 1614);
        assert!(!net.rx_pending());
    }

    #[test]
    fn rx_stalls_without_buffers_and_resumes_after_refill() {
        let m = mem();
        let mut net = NetState::new(MemBackend::default());
        let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(60 + i, i as u8)).collect();
        net.backend.rx.extend(frames.iter().cloned());
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&chain(&[d(BUF0, RX_BUF_LEN, F_WRITE)], 0), 0)
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let res = process_rx(&m, &mut q, &mut net);
        assert!(res.used_any && res.blocked);
        // One delivered, one pending inside the device, two left in the backend.
        assert!(net.rx_pending());
        assert_eq!(net.backend.reads, 2);
        // Polling again without new buffers reads nothing.
        for _ in 0..3 {
            let res = process_rx(&m, &mut q, &mut net);
            assert_eq!(
                res,
                RxResult {
                    used_any: false,
                    blocked: true
                }
            );
        }
        assert_eq!(net.backend.reads, 2);
        assert_eq!(used_idx(&m, &vq), 1);
        // The driver refills: three chains.
        let mut descs = Vec::new();
        for (i, a) in [BUF1, BUF2, BUF2 + 0x1000].into_iter().enumerate() {
            descs.extend(chain(&[d(a, RX_BUF_LEN, F_WRITE)], 1 + i as u16));
        }
        vq.add_desc_chains(&descs, 1).unwrap();
        let res = process_rx(&m, &mut q, &mut net);
        assert_eq!(
            res,
            RxResult {
                used_any: true,
                blocked: false
            }
        );
        assert_eq!(used_idx(&m, &vq), 4);
        for (i, a) in [BUF0, BUF1, BUF2].into_iter().enumerate() {
            assert_eq!(read(&m, a + 12, frames[i].len()), frames[i]);
            assert_eq!(
                used_elem(&m, &vq, i as u64).1 as usize,
                12 + frames[i].len()
            );
        }
        assert_eq!(read(&m, BUF2 + 0x1000 + 12, 63), frames[3]);
        assert_eq!(net.counters.rx_frames, 4);
        assert!(!net.rx_pending());
    }

    #[test]
    fn oversize_frames_dropped() {
        let m = mem();
        let mut net = NetState::new(MemBackend::default());
        // 1600 bytes do not fit a 1538-byte buffer; the chain then takes the next frame.
        let small = frame(60, 9);
        net.backend
            .rx
            .extend([frame(1600, 1), frame(MAX_FRAME_LEN + 1, 2), small.clone()]);
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&chain(&[d(BUF0, RX_BUF_LEN, F_WRITE)], 0), 0)
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let res = process_rx(&m, &mut q, &mut net);
        assert!(res.used_any && !res.blocked);
        assert_eq!(net.counters.rx_oversize, 2);
        assert_eq!(net.counters.rx_frames, 1);
        assert_eq!(used_idx(&m, &vq), 1);
        assert_eq!(used_elem(&m, &vq, 0), (0, 72));
        assert_eq!(read(&m, BUF0 + 12, 60), small);

        // tx: 64 KiB frames pass, one byte more is dropped.
        let vq = MockSplitQueue::new(&m, 16);
        let max = (VNET_HDR_LEN + MAX_FRAME_LEN) as u32;
        let mut descs = chain(&[d(BUF0, max, 0)], 0);
        descs.extend(chain(&[d(BUF0, 12, 0), d(BUF2, max - 11, 0)], 1));
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(process_tx(&m, &mut q, &mut net));
        assert_eq!(net.backend.tx.len(), 1);
        assert_eq!(net.backend.tx[0].len(), MAX_FRAME_LEN);
        assert_eq!(net.counters.tx_malformed, 1);
        assert_eq!(used_idx(&m, &vq), 2);
    }

    #[test]
    fn malformed_tx_chains_dropped() {
        let m = mem();
        let mut net = NetState::new(MemBackend::default());
        let vq = MockSplitQueue::new(&m, 16);
        let bad: Vec<Vec<RawDescriptor>> = vec![
            vec![d(BUF0, 12, 0)],                         // header only
            vec![d(BUF0, 12, 0), d(BUF1, 13, 0)],         // runt frame
            vec![d(BUF0, 12, 0), d(BUF1, 60, F_WRITE)],   // device-writable
            vec![d(BUF0, 12, F_WRITE), d(BUF1, 60, 0)],   // writable header
            vec![d(BUF0, 12, 0), d(0x1000_0000, 60, 0)],  // outside memory
            vec![d(BUF0, 12, 0), d(0x3f_fff0, 60, 0)],    // straddles the end
            vec![d(u64::MAX - 4, 12, 0), d(BUF1, 60, 0)], // address overflow
            vec![d(BUF0, 12, 0), d(BUF1, u32::MAX, 0)],   // huge
        ];
        let mut descs = Vec::new();
        for c in &bad {
            let first = descs.len() as u16;
            descs.extend(chain(c, first));
        }
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(process_tx(&m, &mut q, &mut net));
        assert!(net.backend.tx.is_empty());
        assert_eq!(net.counters.tx_malformed, bad.len() as u64);
        assert_eq!(used_idx(&m, &vq), bad.len() as u16);

        // A valid frame the backend refuses is counted, and the chain returned.
        net.backend.fail_writes = true;
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&chain(&[d(BUF0, 12, 0), d(BUF1, 60, 0)], 0), 0)
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(process_tx(&m, &mut q, &mut net));
        assert_eq!(net.counters.tx_backend_errors, 1);
        assert_eq!(used_idx(&m, &vq), 1);
    }

    #[test]
    fn malformed_rx_chains_returned_empty() {
        let m = mem();
        let mut net = NetState::new(MemBackend::default());
        let f = frame(60, 5);
        net.backend.rx.push_back(f.clone());
        let vq = MockSplitQueue::new(&m, 16);
        let bad: Vec<Vec<RawDescriptor>> = vec![
            vec![d(BUF0, RX_BUF_LEN, 0)],                       // device-readable
            vec![d(BUF0, 12, F_WRITE), d(BUF1, RX_BUF_LEN, 0)], // mixed
            vec![d(BUF0, 8, F_WRITE)],                          // shorter than header
            vec![d(0x1000_0000, RX_BUF_LEN, F_WRITE)],          // outside memory
            vec![d(BUF0, 12, F_WRITE), d(0x3f_fff0, 100, F_WRITE)], // straddles the end
        ];
        let mut descs = Vec::new();
        for c in &bad {
            let first = descs.len() as u16;
            descs.extend(chain(c, first));
        }
        let good = descs.len() as u16;
        descs.extend(chain(&[d(BUF2, RX_BUF_LEN, F_WRITE)], good));
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let res = process_rx(&m, &mut q, &mut net);
        assert!(res.used_any && !res.blocked);
        assert_eq!(net.counters.rx_malformed, bad.len() as u64);
        assert_eq!(net.counters.rx_frames, 1);
        assert_eq!(used_idx(&m, &vq), bad.len() as u16 + 1);
        for i in 0..bad.len() {
            assert_eq!(used_elem(&m, &vq, i as u64).1, 0);
        }
        assert_eq!(used_elem(&m, &vq, bad.len() as u64), (u32::from(good), 72));
        assert_eq!(read(&m, BUF2 + 12, 60), f);
    }

    #[test]
    fn broken_queue_blocks_instead_of_spinning() {
        let m = mem();
        let mut net = NetState::new(MemBackend::default());
        net.backend.rx.push_back(frame(60, 0));
        // Not ready: pop fails; the frame waits and the device reports blocked.
        let mut q = Queue::new(16).unwrap();
        let res = process_rx(&m, &mut q, &mut net);
        assert_eq!(
            res,
            RxResult {
                used_any: false,
                blocked: true
            }
        );
        assert!(net.rx_pending());
        assert!(!process_tx(&m, &mut q, &mut net));
    }

    #[test]
    fn mac_from_id_is_stable_local_unicast() {
        let a = mac_from_id(b"6f1c1d3e-5f7a-4c1b-9d2e-0a1b2c3d4e5f");
        assert_eq!(a, mac_from_id(b"6f1c1d3e-5f7a-4c1b-9d2e-0a1b2c3d4e5f"));
        assert_ne!(a, mac_from_id(b"6f1c1d3e-5f7a-4c1b-9d2e-0a1b2c3d4e60"));
        // Pinned: the value must not change between releases.
        assert_eq!(format_mac(&mac_from_id(b"web")), "5e:a0:e1:19:48:72");
        assert_eq!(mac_from_id(b""), {
            let h = 0xcbf2_9ce4_8422_2325u64.to_be_bytes();
            [(h[0] & 0xfc) | 2, h[1], h[2], h[3], h[4], h[5]]
        });
        for id in [&b"a"[..], b"b", b"berth-0001", &[0xff; 64]] {
            let m = mac_from_id(id);
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
    }

    /// xorshift64: small, seeded, reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<T: Copy>(&mut self, v: &[T]) -> T {
            v[self.below(v.len() as u64) as usize]
        }
    }

    /// Random descriptor tables, rings and frames; the processors must
    /// neither panic nor hang, and never report more than they got.
    #[test]
    fn fuzz_random_queues_never_panic_or_hang() {
        let seed = std::env::var("BERTH_NET_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x9e37_79b9_7f4a_7c15u64);
        let mut rng = Rng(seed);
        let started = std::time::Instant::now();
        let mut total = NetCounters::default();
        for iter in 0..1500 {
            // Two regions with a hole: addresses in the gap or straddling fail.
            let m = GuestMemoryMmap::<()>::from_ranges(&[
                (GuestAddress(0), 0x10_0000),
                (GuestAddress(0x20_0000), 0x10_0000),
            ])
            .unwrap();
            let size = rng.pick(&[1u16, 2, 4, 8, 16, 64, 256]);
            let vq = MockSplitQueue::new(&m, size);
            let addrs = |r: &mut Rng| match r.below(6) {
                0 => 0x1_0000 + r.below(0xe_0000),
                1 => 0x20_0000 + r.below(0x10_0000),
                2 => 0x10_0000 - r.below(64),  // straddles the hole
                3 => 0x15_0000,                // in the hole
                4 => u64::MAX - r.below(4096), // wraps
                _ => r.next(),
            };
            for i in 0..size {
                let len = match rng.below(8) {
                    0 => 0,
                    1 => rng.below(12) as u32,
                    2 => 12,
                    3 => 12 + rng.below(64) as u32,
                    4 => RX_BUF_LEN,
                    5 => (VNET_HDR_LEN + MAX_FRAME_LEN) as u32 + rng.below(3) as u32 - 1,
                    6 => rng.next() as u32,
                    _ => rng.below(4096) as u32,
                };
                let flags = (rng.next() as u16) & (F_NEXT | F_WRITE | F_INDIRECT)
                    | if rng.below(2) == 0 { F_NEXT } else { 0 };
                let next = rng.below(u64::from(size) + 2) as u16;
                let addr = addrs(&mut rng);
                vq.desc_table()
                    .store(
                        i,
                        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next)),
                    )
                    .unwrap();
            }
            let avail = vq.avail_addr();
            for i in 0..u64::from(size) {
                let head = rng.below(u64::from(size) + 2) as u16;
                m.write_obj(head, avail.unchecked_add(4 + 2 * i)).unwrap();
            }
            let avail_idx = match rng.below(4) {
                0 => rng.next() as u16,
                _ => rng.below(u64::from(size) + 1) as u16,
            };
            m.write_obj(avail_idx, avail.unchecked_add(2)).unwrap();

            let mut backend = MemBackend::default();
            let nframes = rng.below(8) as usize;
            for _ in 0..nframes {
                let len = match rng.below(5) {
                    0 => rng.below(20) as usize,
                    1 => MAX_FRAME_LEN + 1 + rng.below(100) as usize,
                    _ => rng.below(1600) as usize,
                };
                backend.rx.push_back(frame(len, iter as u8));
            }
            let mut net = NetState::new(backend);
            net.backend.fail_writes = rng.below(4) == 0;
            // Same ring processed as rx or tx (or both), like a confused driver.
            let mut q: Queue = vq.create_queue().unwrap();
            match rng.below(3) {
                0 => {
                    process_tx(&m, &mut q, &mut net);
                }
                1 => {
                    for _ in 0..3 {
                        process_rx(&m, &mut q, &mut net);
                    }
                }
                _ => {
                    process_tx(&m, &mut q, &mut net);
                    process_rx(&m, &mut q, &mut net);
                }
            }
            let c = net.counters;
            assert!(
                c.rx_frames + c.rx_oversize + u64::from(net.rx_pending()) <= nframes as u64,
                "iteration {iter}: {c:?}"
            );
            assert!(c.tx_frames + c.tx_malformed + c.tx_backend_errors <= u64::from(avail_idx));
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "too slow"
            );
            total.rx_frames += c.rx_frames;
            total.rx_malformed += c.rx_malformed;
            total.rx_oversize += c.rx_oversize;
            total.tx_frames += c.tx_frames;
            total.tx_malformed += c.tx_malformed;
        }
        eprintln!("fuzz totals (seed {seed:#x}): {total:?}");
        // The generator reaches every path, not just the early rejections.
        assert!(total.rx_frames > 0 && total.rx_malformed > 0 && total.rx_oversize > 0);
        assert!(total.tx_frames > 0 && total.tx_malformed > 0);
    }
}

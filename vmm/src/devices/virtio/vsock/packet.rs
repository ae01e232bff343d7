//! The virtio-vsock packet: the 44-byte header, and moving packets between
//! descriptor chains and host buffers without trusting anything the guest
//! wrote (every length is bounded, every address checked).

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The host's CID (VMADDR_CID_HOST).
pub const HOST_CID: u64 = 2;
/// VIRTIO_VSOCK_TYPE_STREAM, the only socket type offered.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload accepted from or sent to the guest
/// (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Longest descriptor chain looked at; longer chains are cut (the iterator
/// already stops at loops, this bounds the work per chain).
pub const MAX_CHAIN_DESCS: usize = 257;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Packet operations.
pub mod op {
    #![allow(missing_docs)]
    pub const INVALID: u16 = 0;
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// Why a descriptor chain could not carry a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// A tx chain contains a device-writable descriptor.
    #[error("device-writable descriptor in a tx chain")]
    WritableInTx,
    /// An rx chain contains a device-readable descriptor.
    #[error("device-readable descriptor in an rx chain")]
    ReadableInRx,
    /// The chain cannot hold a header.
    #[error("chain of {0} bytes is shorter than the packet header")]
    ShortChain(u64),
    /// The header's `len` exceeds the bytes following it in the chain.
    #[error("payload length {len} exceeds the {avail} bytes in the chain")]
    LenExceedsChain {
        /// `len` from the header.
        len: u32,
        /// Bytes after the header.
        avail: u64,
    },
    /// The header's `len` exceeds [`MAX_PKT_PAYLOAD`].
    #[error("payload length {0} exceeds the maximum packet size")]
    LenTooLarge(u32),
    /// A descriptor lies (partly) outside guest memory.
    #[error("descriptor outside guest memory")]
    OutOfGuestMemory,
}

/// `struct virtio_vsock_hdr`, all fields little endian on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type (only [`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation ([`op`]).
    pub op: u16,
    /// Operation flags (SHUTDOWN: [`SHUTDOWN_RCV`] | [`SHUTDOWN_SEND`]).
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, in total.
    pub fwd_cnt: u32,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl VsockHeader {
    /// Decodes a header.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        VsockHeader {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            type_: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Total length of `descs`, after checking that each has the expected
/// direction and (if `check_ranges`) lies in guest memory.
fn chain_len<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
    writable: bool,
    check_ranges: bool,
) -> Result<u64, PacketError> {
    let mut total = 0u64;
    for d in descs {
        if d.is_write_only() != writable {
            return Err(if writable {
                PacketError::ReadableInRx
            } else {
                PacketError::WritableInTx
            });
        }
        if check_ranges && d.len() > 0 && !mem.check_range(d.addr(), d.len() as usize) {
            return Err(PacketError::OutOfGuestMemory);
        }
        total += u64::from(d.len());
    }
    Ok(total)
}

/// Copies chain bytes [`skip`, `skip + buf.len()`) into `buf` (tx) or
/// `buf` into them (rx). The caller has checked lengths and ranges.
fn copy_chain<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
    mut skip: u64,
    mut read_into: Option<&mut [u8]>,
    mut write_from: Option<&[u8]>,
) -> Result<(), PacketError> {
    for d in descs {
        let len = u64::from(d.len());
        if skip >= len {
            skip -= len;
            continue;
        }
        let addr = d
            .addr()
            .0
            .checked_add(skip)
            .ok_or(PacketError::OutOfGuestMemory)?;
        let room = (len - skip) as usize;
        skip = 0;
        if let Some(buf) = read_into.take() {
            let n = room.min(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            mem.read_slice(now, GuestAddress(addr))
                .map_err(|_| PacketError::OutOfGuestMemory)?;
            if rest.is_empty() {
                return Ok(());
            }
            read_into = Some(rest);
        } else if let Some(buf) = write_from.take() {
            let n = room.min(buf.len());
            let (now, rest) = buf.split_at(n);
            mem.write_slice(now, GuestAddress(addr))
                .map_err(|_| PacketError::OutOfGuestMemory)?;
            if rest.is_empty() {
                return Ok(());
            }
            write_from = Some(rest);
        } else {
            return Ok(());
        }
    }
    let left = read_into.map_or(0, |b| b.len()) + write_from.map_or(0, |b| b.len());
    if left == 0 {
        Ok(())
    } else {
        Err(PacketError::ShortChain(left as u64))
    }
}

/// Reads the header of a tx (guest → device) chain; returns it with the
/// number of bytes that follow it in the chain. Ranges are checked as bytes
/// are copied, so a payload outside guest memory fails only in
/// [`read_tx_payload`] (and the connection can be reset).
pub fn read_tx_header<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
) -> Result<(VsockHeader, u64), PacketError> {
    let total = chain_len(mem, descs, false, false)?;
    if total < HDR_LEN as u64 {
        return Err(PacketError::ShortChain(total));
    }
    let mut b = [0u8; HDR_LEN];
    copy_chain(mem, descs, 0, Some(&mut b), None)?;
    Ok((VsockHeader::from_bytes(&b), total - HDR_LEN as u64))
}

/// Reads the `hdr.len` payload bytes of a tx chain into `payload`.
pub fn read_tx_payload<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
    hdr: &VsockHeader,
    avail: u64,
    payload: &mut Vec<u8>,
) -> Result<(), PacketError> {
    if hdr.len as usize > MAX_PKT_PAYLOAD {
        return Err(PacketError::LenTooLarge(hdr.len));
    }
    if u64::from(hdr.len) > avail {
        return Err(PacketError::LenExceedsChain {
            len: hdr.len,
            avail,
        });
    }
    payload.clear();
    payload.resize(hdr.len as usize, 0);
    copy_chain(mem, descs, HDR_LEN as u64, Some(payload), None)
}

/// Payload room of an rx (device → guest) chain: the bytes after the header,
/// capped at [`MAX_PKT_PAYLOAD`]. Checks directions and guest-memory ranges,
/// so that [`write_rx`] cannot fail on a chain that passed.
pub fn rx_payload_room<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
) -> Result<usize, PacketError> {
    let total = chain_len(mem, descs, true, true)?;
    if total < HDR_LEN as u64 {
        return Err(PacketError::ShortChain(total));
    }
    Ok((total - HDR_LEN as u64).min(MAX_PKT_PAYLOAD as u64) as usize)
}

/// Writes `hdr` (its `len` set to `payload.len()`) and `payload` into an rx
/// chain; returns the bytes written (the used length).
pub fn write_rx<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
    hdr: &VsockHeader,
    payload: &[u8],
) -> Result<u32, PacketError> {
    let mut h = *hdr;
    h.len = payload.len() as u32;
    copy_chain(mem, descs, 0, None, Some(&h.to_bytes()))?;
    if !payload.is_empty() {
        copy_chain(mem, descs, HDR_LEN as u64, None, Some(payload))?;
    }
    Ok((HDR_LEN + payload.len()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const W: u16 = 2;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn hdr() -> VsockHeader {
        VsockHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234,
            dst_port: 0x5678_9abc,
            len: 5,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 3,
            buf_alloc: 0x4_0000,
            fwd_cnt: 0xdead_beef,
        }
    }

    #[test]
    fn header_round_trip_and_layout() {
        let h = hdr();
        let b = h.to_bytes();
        assert_eq!(VsockHeader::from_bytes(&b), h);
        assert_eq!(b[0], 3);
        assert_eq!(b[8], 2);
        assert_eq!(&b[24..28], &5u32.to_le_bytes());
        assert_eq!(&b[30..32], &op::RW.to_le_bytes());
        assert_eq!(&b[40..44], &0xdead_beefu32.to_le_bytes());
    }

    #[test]
    fn split_header_and_payload_across_descriptors() {
        let m = mem();
        let h = hdr();
        let b = h.to_bytes();
        // Header split 10/34, payload in the second and third descriptors.
        m.write_slice(&b[..10], GuestAddress(0x1000)).unwrap();
        m.write_slice(&b[10..], GuestAddress(0x2000)).unwrap();
        m.write_slice(b"he", GuestAddress(0x2000 + 34)).unwrap();
        m.write_slice(b"llo", GuestAddress(0x3000)).unwrap();
        let descs = [
            Descriptor::new(0x1000, 10, 0, 0),
            Descriptor::new(0x2000, 36, 0, 0),
            Descriptor::new(0x3000, 100, 0, 0),
        ];
        let (got, avail) = read_tx_header(&m, &descs).unwrap();
        assert_eq!(got, h);
        assert_eq!(avail, 102);
        let mut p = Vec::new();
        read_tx_payload(&m, &descs, &got, avail, &mut p).unwrap();
        assert_eq!(p, b"hello");

        let rx = [
            Descriptor::new(0x4000, 44, W, 0),
            Descriptor::new(0x5000, 3, W, 0),
            Descriptor::new(0x6000, 10, W, 0),
        ];
        assert_eq!(rx_payload_room(&m, &rx).unwrap(), 13);
        assert_eq!(write_rx(&m, &rx, &h, b"world").unwrap(), 49);
        let mut back = [0u8; 44];
        m.read_slice(&mut back, GuestAddress(0x4000)).unwrap();
        assert_eq!(VsockHeader::from_bytes(&back), h);
        let mut w = [0u8; 5];
        m.read_slice(&mut w[..3], GuestAddress(0x5000)).unwrap();
        m.read_slice(&mut w[3..], GuestAddress(0x6000)).unwrap();
        assert_eq!(&w, b"world");
    }

    #[test]
    fn bad_chains() {
        let m = mem();
        let short = [Descriptor::new(0x1000, 43, 0, 0)];
        assert_eq!(read_tx_header(&m, &short), Err(PacketError::ShortChain(43)));
        assert_eq!(read_tx_header(&m, &[]), Err(PacketError::ShortChain(0)));
        let writable = [Descriptor::new(0x1000, 44, W, 0)];
        assert_eq!(
            read_tx_header(&m, &writable),
            Err(PacketError::WritableInTx)
        );
        let outside = [Descriptor::new(0xff000, 0x2000, 0, 0)];
        let mut p = Vec::new();
        let (h, avail) = read_tx_header(&m, &outside).unwrap();
        assert_eq!(
            read_tx_payload(
                &m,
                &outside,
                &VsockHeader { len: 0x1000, ..h },
                avail,
                &mut p
            ),
            Err(PacketError::OutOfGuestMemory)
        );
        let outside = [Descriptor::new(0x1000_0000, 0x2000, 0, 0)];
        assert_eq!(
            read_tx_header(&m, &outside),
            Err(PacketError::OutOfGuestMemory)
        );
        let wrap = [Descriptor::new(u64::MAX - 10, 44, 0, 0)];
        assert_eq!(
            read_tx_header(&m, &wrap),
            Err(PacketError::OutOfGuestMemory)
        );
        let mut h = hdr();
        h.len = 100;
        let mut p = Vec::new();
        assert!(matches!(
            read_tx_payload(&m, &short, &h, 10, &mut p),
            Err(PacketError::LenExceedsChain {
                len: 100,
                avail: 10
            })
        ));
        h.len = u32::MAX;
        assert_eq!(
            read_tx_payload(&m, &short, &h, u64::MAX, &mut p),
            Err(PacketError::LenTooLarge(u32::MAX))
        );
        let readable = [Descriptor::new(0x1000, 100, 0, 0)];
        assert_eq!(
            rx_payload_room(&m, &readable),
            Err(PacketError::ReadableInRx)
        );
        let small = [Descriptor::new(0x1000, 40, W, 0)];
        assert_eq!(
            rx_payload_room(&m, &small),
            Err(PacketError::ShortChain(40))
        );
        let huge = [Descriptor::new(0x1000, 0x8_0000, W, 0)];
        assert_eq!(rx_payload_room(&m, &huge), Ok(MAX_PKT_PAYLOAD));
    }
}

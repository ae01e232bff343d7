//! virtio-blk device: state, features, activation, and the pure request
//! processor [`process_queue`] over a [`BlockBackend`].

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::super::{ActivateError, GuestMem, Interrupt, VirtioDevice};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID answer.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// virtio device id of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;

const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Request completed.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Request type not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Header length (type, reserved, sector).
const REQUEST_HEADER_LEN: u32 = 16;

/// Errors of the block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Opening the backing file failed.
    #[error("opening disk image {path}")]
    Open {
        /// The image.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading the backing file's size failed.
    #[error("reading the size of disk image {path}")]
    Metadata {
        /// The image.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating the queue eventfd failed.
    #[error("creating the queue eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Storage behind a block device.
pub trait BlockBackend: Send {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the size is 0.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from byte `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Writes `buf` at byte `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Makes writes durable.
    fn flush(&mut self) -> std::io::Result<()>;
}

/// A raw image file.
pub struct FileBackend {
    file: File,
    len: u64,
}

impl FileBackend {
    /// Opens `path` (read-only if `read_only`).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| BlockError::Metadata {
                path: path.display().to_string(),
                source,
            })?
            .len();
        Ok(FileBackend { file, len })
    }
}

impl BlockBackend for FileBackend {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// What [`process_queue`] needs to serve requests.
pub struct DiskState<B: BlockBackend> {
    /// The storage.
    pub backend: B,
    /// Refuse writes.
    pub read_only: bool,
    /// GET_ID answer (NUL-padded).
    pub id: [u8; VIRTIO_BLK_ID_BYTES],
}

impl<B: BlockBackend> DiskState<B> {
    /// State for `backend`, with `id` truncated to 20 bytes.
    pub fn new(backend: B, read_only: bool, id: &str) -> Self {
        let mut buf = [0u8; VIRTIO_BLK_ID_BYTES];
        let n = id.len().min(VIRTIO_BLK_ID_BYTES);
        buf[..n].copy_from_slice(&id.as_bytes()[..n]);
        DiskState {
            backend,
            read_only,
            id: buf,
        }
    }
}

/// Why a request was answered with an error status.
#[derive(Debug, PartialEq, Eq)]
enum RequestFault {
    /// The chain's shape is wrong (→ IOERR).
    Malformed(&'static str),
    /// The request is valid but failed (→ IOERR).
    Io(&'static str),
    /// Unknown request type (→ UNSUPP).
    Unsupported(u32),
}

/// Serves one request; returns the number of bytes written to the
/// device-writable data buffers.
fn serve<M: GuestMemory, B: BlockBackend>(
    mem: &M,
    descs: &[Descriptor],
    disk: &mut DiskState<B>,
) -> Result<u32, RequestFault> {
    let header = descs.first().ok_or(RequestFault::Malformed("no header"))?;
    if header.is_write_only() {
        return Err(RequestFault::Malformed("header is device-writable"));
    }
    if header.len() < REQUEST_HEADER_LEN {
        return Err(RequestFault::Malformed("header too short"));
    }
    let mut hdr = [0u8; REQUEST_HEADER_LEN as usize];
    mem.read_slice(&mut hdr, header.addr())
        .map_err(|_| RequestFault::Malformed("header not in guest memory"))?;
    let req_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&hdr[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    let data = &descs[1..];

    match req_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let write = req_type == VIRTIO_BLK_T_OUT;
            if write && disk.read_only {
                return Err(RequestFault::Io("write to a read-only disk"));
            }
            if data.iter().any(|d| d.is_write_only() == write) {
                return Err(RequestFault::Malformed(
                    "data buffer has the wrong direction",
                ));
            }
            let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
            let start = sector
                .checked_mul(SECTOR_SIZE)
                .ok_or(RequestFault::Io("sector out of range"))?;
            let end = start
                .checked_add(total)
                .ok_or(RequestFault::Io("sector out of range"))?;
            if end > disk.backend.len() {
                return Err(RequestFault::Io("sector out of range"));
            }
            let mut offset = start;
            let mut written = 0u32;
            let mut buf = Vec::new();
            for d in data {
                buf.resize(d.len() as usize, 0);
                if write {
                    mem.read_slice(&mut buf, d.addr())
                        .map_err(|_| RequestFault::Malformed("data not in guest memory"))?;
                    disk.backend
                        .write_at(&buf, offset)
                        .map_err(|_| RequestFault::Io("backend write failed"))?;
                } else {
                    disk.backend
                        .read_at(&mut buf, offset)
                        .map_err(|_| RequestFault::Io("backend read failed"))?;
                    mem.write_slice(&buf, d.addr())
                        .map_err(|_| RequestFault::Malformed("data not in guest memory"))?;
                    written = written.saturating_add(d.len());
                }
                offset += u64::from(d.len());
            }
            Ok(written)
        }
        VIRTIO_BLK_T_FLUSH => {
            if !disk.read_only {
                disk.backend
                    .flush()
                    .map_err(|_| RequestFault::Io("backend flush failed"))?;
            }
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            let d = data
                .first()
                .ok_or(RequestFault::Malformed("GET_ID without a buffer"))?;
            if !d.is_write_only() {
                return Err(RequestFault::Malformed("GET_ID buffer is device-readable"));
            }
            let n = (d.len() as usize).min(VIRTIO_BLK_ID_BYTES);
            mem.write_slice(&disk.id[..n], d.addr())
                .map_err(|_| RequestFault::Malformed("GET_ID buffer not in guest memory"))?;
            Ok(n as u32)
        }
        other => Err(RequestFault::Unsupported(other)),
    }
}

/// Processes every available request on `queue`. Returns whether any chain
/// was completed (the caller then interrupts the driver).
///
/// A chain whose last descriptor is not a device-writable status byte cannot
/// be answered; it is returned to the driver with used length 0. Any other
/// malformed chain gets VIRTIO_BLK_S_IOERR. Nothing here panics on guest input.
pub fn process_queue<M: GuestMemory, B: BlockBackend>(
    mem: &M,
    queue: &mut Queue,
    disk: &mut DiskState<B>,
) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        // The iterator stops at loops or out-of-table indices; cap the length
        // anyway so a hostile chain cannot make us allocate without bound.
        let descs: Vec<Descriptor> = chain.take(usize::from(QUEUE_SIZE) + 1).collect();
        let used_len = match descs.split_last() {
            Some((status, rest)) if status.is_write_only() && status.len() >= 1 => {
                let (code, written) = match serve(mem, rest, disk) {
                    Ok(n) => (VIRTIO_BLK_S_OK, n),
                    Err(RequestFault::Unsupported(t)) => {
                        log::debug!("vmm: virtio-blk: unsupported request type {t}");
                        (VIRTIO_BLK_S_UNSUPP, 0)
                    }
                    Err(RequestFault::Malformed(why)) | Err(RequestFault::Io(why)) => {
                        log::debug!("vmm: virtio-blk: request failed: {why}");
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                };
                match mem.write_obj(code, status.addr()) {
                    Ok(()) => written.saturating_add(1),
                    Err(_) => {
                        log::debug!("vmm: virtio-blk: status byte not in guest memory");
                        0
                    }
                }
            }
            _ => {
                log::debug!("vmm: virtio-blk: chain without a writable status byte rejected");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, used_len) {
            log::error!("vmm: virtio-blk: add_used: {e}");
            break;
        }
        used_any = true;
    }
    used_any
}

/// The virtio-blk device.
pub struct Block {
    disk: DiskState<FileBackend>,
    acked_features: u64,
    queue_sizes: [u16; 1],
    queue: Option<Queue>,
    mem: Option<GuestMem>,
    interrupt: Interrupt,
    queue_evt: EventFd,
}

impl Block {
    /// A block device on `path`; `id` is answered to GET_ID.
    pub fn new(
        path: &Path,
        read_only: bool,
        id: &str,
        interrupt: Interrupt,
    ) -> Result<Self, BlockError> {
        let backend = FileBackend::open(path, read_only)?;
        Ok(Block {
            disk: DiskState::new(backend, read_only, id),
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE],
            queue: None,
            mem: None,
            interrupt,
            queue_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?,
        })
    }

    /// The eventfd the driver's QueueNotify signals.
    pub fn queue_evt(&self) -> &EventFd {
        &self.queue_evt
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.backend.len() / SECTOR_SIZE
    }

    /// Serves the queue after a notification.
    pub fn process_queue_event(&mut self) {
        let (Some(queue), Some(mem)) = (self.queue.as_mut(), self.mem.as_ref()) else {
            return;
        };
        if process_queue(mem, queue, &mut self.disk) {
            self.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_BLK_F_FLUSH;
        if self.disk.read_only {
            f |= VIRTIO_BLK_F_RO;
        }
        f
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Config space: capacity (u64, sectors); nothing else is offered.
        let config = self.capacity().to_le_bytes();
        let start = offset as usize;
        data.fill(0);
        if start < config.len() {
            let n = data.len().min(config.len() - start);
            data[..n].copy_from_slice(&config[start..start + n]);
        }
    }
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("vmm: virtio-blk: config write at {offset:#x} ignored");
    }
    fn activate(&mut self, mem: GuestMem, mut queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: queues.len(),
            });
        }
        let queue = queues.remove(0);
        if !queue.is_valid(&mem) {
            return Err(ActivateError::InvalidQueue(0));
        }
        self.queue = Some(queue);
        self.mem = Some(mem);
        // Requests may have been queued before activation: have the event
        // loop serve them (activation runs on a vCPU thread, whose seccomp
        // filter allows no disk I/O).
        if let Err(e) = self.queue_evt.write(1) {
            log::error!("vmm: virtio-blk: waking the event loop: {e}");
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.queue = None;
        self.mem = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    struct MemBackend {
        data: Vec<u8>,
        flushes: usize,
    }
    impl BlockBackend for MemBackend {
        fn len(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let o = offset as usize;
            buf.copy_from_slice(&self.data[o..o + buf.len()]);
            Ok(())
        }
        fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            let o = offset as usize;
            self.data[o..o + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.flushes += 1;
            Ok(())
        }
    }

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn disk(read_only: bool) -> DiskState<MemBackend> {
        let data = (0..8 * 512).map(|i| (i / 512) as u8).collect();
        DiskState::new(MemBackend { data, flushes: 0 }, read_only, "berth-disk-0")
    }

    fn header(m: &GuestMemoryMmap<()>, t: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Runs one chain; returns (status byte, used len, used ring entries).
    fn run(
        m: &GuestMemoryMmap<()>,
        disk: &mut DiskState<MemBackend>,
        descs: &[RawDescriptor],
    ) -> (u8, u32) {
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let vq = MockSplitQueue::new(m, 16);
        // Chain descriptors through `next` (the mock keeps given flags).
        let chained: Vec<RawDescriptor> = descs
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
                RawDescriptor::from(SplitDescriptor::new(
                    s.addr().0,
                    s.len(),
                    flags,
                    if last { 0 } else { i as u16 + 1 },
                ))
            })
            .collect();
        vq.add_desc_chains(&chained, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(process_queue(m, &mut q, disk));
        let used_idx: u16 = m.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 1);
        let used_len: u32 = m.read_obj(vq.used_addr().unchecked_add(8)).unwrap();
        let status: u8 = m.read_obj(GuestAddress(STATUS)).unwrap();
        (status, used_len)
    }

    use vm_memory::Address;

    #[test]
    fn read_request() {
        let m = mem();
        let mut disk = disk(false);
        header(&m, VIRTIO_BLK_T_IN, 2);
        let (s, len) = run(
            &m,
            &mut disk,
            &[d(HDR, 16, 0), d(DATA, 1024, F_WRITE), d(STATUS, 1, F_WRITE)],
        );
        assert_eq!(s, VIRTIO_BLK_S_OK);
        assert_eq!(len, 1025);
        let mut buf = vec![0u8; 1024];
        m.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 2));
        assert!(buf[512..].iter().all(|b| *b == 3));
    }

    #[test]
    fn write_request() {
        let m = mem();
        let mut disk = disk(false);
        header(&m, VIRTIO_BLK_T_OUT, 7);
        m.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        let (s, len) = run(
            &m,
            &mut disk,
            &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, F_WRITE)],
        );
        assert_eq!(s, VIRTIO_BLK_S_OK);
        assert_eq!(len, 1);
        assert!(disk.backend.data[7 * 512..].iter().all(|b| *b == 0xab));
        assert_eq!(disk.backend.data[6 * 512], 6);
    }

    #[test]
    fn flush_and_get_id() {
        let m = mem();
        let mut disk = disk(false);
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let (s, _) = run(&m, &mut disk, &[d(HDR, 16, 0), d(STATUS, 1, F_WRITE)]);
        assert_eq!(s, VIRTIO_BLK_S_OK);
        assert_eq!(disk.backend.flushes, 1);

        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let (s, len) = run(
            &m,
            &mut disk,
            &[d(HDR, 16, 0), d(DATA, 20, F_WRITE), d(STATUS, 1, F_WRITE)],
        );
        assert_eq!(s, VIRTIO_BLK_S_OK);
        assert_eq!(len, 21);
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..12], b"berth-disk-0");
        assert_eq!(id[12], 0);
    }

    #[test]
    fn write_to_read_only_fails() {
        let m = mem();
        let mut disk = disk(true);
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let (s, len) = run(
            &m,
            &mut disk,
            &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, F_WRITE)],
        );
        assert_eq!(s, VIRTIO_BLK_S_IOERR);
        assert_eq!(len, 1);
        assert_eq!(disk.backend.data[0], 0);
    }

    #[test]
    fn unsupported_type() {
        let m = mem();
        let mut disk = disk(false);
        header(&m, 11, 0); // DISCARD, not offered
        let (s, _) = run(&m, &mut disk, &[d(HDR, 16, 0), d(STATUS, 1, F_WRITE)]);
        assert_eq!(s, VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn out_of_range_sector() {
        let m = mem();
        let mut disk = disk(false);
        for sector in [8, 7 + 1, u64::MAX / 256] {
            header(&m, VIRTIO_BLK_T_IN, sector);
            let (s, len) = run(
                &m,
                &mut disk,
                &[d(HDR, 16, 0), d(DATA, 512, F_WRITE), d(STATUS, 1, F_WRITE)],
            );
            assert_eq!(s, VIRTIO_BLK_S_IOERR);
            assert_eq!(len, 1);
        }
        // Straddling the end.
        header(&m, VIRTIO_BLK_T_IN, 7);
        let (s, _) = run(
            &m,
            &mut disk,
            &[d(HDR, 16, 0), d(DATA, 1024, F_WRITE), d(STATUS, 1, F_WRITE)],
        );
        assert_eq!(s, VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn malformed_chains_rejected() {
        let m = mem();
        let mut disk = disk(false);
        header(&m, VIRTIO_BLK_T_IN, 0);
        // Missing status descriptor: last descriptor is device-readable.
        let (s, len) = run(&m, &mut disk, &[d(HDR, 16, 0), d(DATA, 512, 0)]);
        assert_eq!((s, len), (0xff, 0));
        // Only one descriptor at all (writable, so taken as status, no header).
        let (s, len) = run(&m, &mut disk, &[d(STATUS, 1, F_WRITE)]);
        assert_eq!((s, len), (VIRTIO_BLK_S_IOERR, 1));
        // Zero-length status.
        let (s, len) = run(&m, &mut disk, &[d(HDR, 16, 0), d(STATUS, 0, F_WRITE)]);
        assert_eq!((s, len), (0xff, 0));
        // Header too short.
        let (s, _) = run(
            &m,
            &mut disk,
            &[d(HDR, 8, 0), d(DATA, 512, F_WRITE), d(STATUS, 1, F_WRITE)],
        );
        assert_eq!(s, VIRTIO_BLK_S_IOERR);
        // Header device-writable.
        let (s, _) = run(
            &m,
            &mut disk,
            &[
                d(HDR, 16, F_WRITE),
                d(DATA, 512, F_WRITE),
                d(STATUS, 1, F_WRITE),
            ],
        );
        assert_eq!(s, VIRTIO_BLK_S_IOERR);
        // Read into a device-readable buffer (wrong direction).
        let (s, _) = run(
            &m,
            &mut disk,
            &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, F_WRITE)],
        );
        assert_eq!(s, VIRTIO_BLK_S_IOERR);
        // Write from a device-writable buffer (wrong direction).
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let (s, _) = run(
            &m,
            &mut disk,
            &[d(HDR, 16, 0), d(DATA, 512, F_WRITE), d(STATUS, 1, F_WRITE)],
        );
        assert_eq!(s, VIRTIO_BLK_S_IOERR);
        // Data outside guest memory.
        header(&m, VIRTIO_BLK_T_IN, 0);
        let (s, _) = run(
            &m,
            &mut disk,
            &[
                d(HDR, 16, 0),
                d(0x1000_0000, 512, F_WRITE),
                d(STATUS, 1, F_WRITE),
            ],
        );
        assert_eq!(s, VIRTIO_BLK_S_IOERR);
        // Status outside guest memory: not answerable, used len 0, no panic.
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &[
                RawDescriptor::from(SplitDescriptor::new(HDR, 16, F_NEXT, 1)),
                RawDescriptor::from(SplitDescriptor::new(0x1000_0000, 1, F_WRITE, 0)),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(process_queue(&m, &mut q, &mut disk));
        // GET_ID into a readable buffer.
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let (s, _) = run(
            &m,
            &mut disk,
            &[d(HDR, 16, 0), d(DATA, 20, 0), d(STATUS, 1, F_WRITE)],
        );
        assert_eq!(s, VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn empty_queue_uses_nothing() {
        let m = mem();
        let mut disk = disk(false);
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(!process_queue(&m, &mut q, &mut disk));
    }
}

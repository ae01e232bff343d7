//! virtio-fs device: state, features, activation, and the pure request
//! processor [`process_queue`] over a fuse-backend-rs [`Server`].

use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use super::super::{ActivateError, GuestMem, Interrupt, VirtioDevice};
use super::share::{passthrough_config, root_str, ShareFs};

/// virtio device id of a file-system device.
pub const TYPE_FS: u32 = 26;
/// Queue size offered (both queues).
pub const QUEUE_SIZE: u16 = 256;
/// Maximum tag length (config space `tag[36]`).
pub const FS_TAG_LEN: usize = 36;
/// Number of request queues (after the hiprio queue).
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// Queues: hiprio (FORGET, INTERRUPT), then the request queues.
pub const NUM_QUEUES: usize = 1 + NUM_REQUEST_QUEUES as usize;
/// Index of the high-priority queue.
pub const HIPRIO_QUEUE: usize = 0;
/// Config space: tag[36], num_request_queues (le32).
const CONFIG_LEN: usize = FS_TAG_LEN + 4;
const IN_HEADER_LEN: usize = size_of::<InHeader>();
const OUT_HEADER_LEN: usize = size_of::<OutHeader>();

/// The file system a berth share is served by.
pub type SharePassthrough = ShareFs<PassthroughFs>;

/// Errors creating a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag does not fit the config space or is not printable.
    #[error("virtio-fs tag {0:?} must be 1 to 36 bytes without NUL or control characters")]
    InvalidTag(String),
    /// The shared path cannot be resolved.
    #[error("virtio-fs share {0}")]
    Resolve(PathBuf, #[source] std::io::Error),
    /// The shared path is not a directory.
    #[error("virtio-fs share {0} is not a directory")]
    NotADirectory(PathBuf),
    /// The resolved path is not UTF-8 (fuse-backend-rs keeps it as a String).
    #[error("virtio-fs share {0} is not a UTF-8 path")]
    NotUtf8(PathBuf),
    /// fuse-backend-rs could not set up the passthrough file system.
    #[error("setting up the passthrough file system for {0}")]
    Passthrough(PathBuf, #[source] std::io::Error),
    /// Creating a queue eventfd failed.
    #[error("creating a virtio-fs queue eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Checks `tag` and returns it NUL-padded as it appears in config space.
pub fn tag_bytes(tag: &str) -> Result<[u8; FS_TAG_LEN], FsError> {
    let b = tag.as_bytes();
    if b.is_empty() || b.len() > FS_TAG_LEN || tag.chars().any(char::is_control) {
        return Err(FsError::InvalidTag(tag.to_string()));
    }
    let mut out = [0u8; FS_TAG_LEN];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

/// Checks that `path` is a directory and returns its canonical path.
pub fn resolve_share(path: &Path) -> Result<PathBuf, FsError> {
    let meta = std::fs::metadata(path).map_err(|e| FsError::Resolve(path.to_path_buf(), e))?;
    if !meta.is_dir() {
        return Err(FsError::NotADirectory(path.to_path_buf()));
    }
    std::fs::canonicalize(path).map_err(|e| FsError::Resolve(path.to_path_buf(), e))
}

/// Builds the server for the share at `path` (a directory).
pub fn share_server(
    path: &Path,
    read_only: bool,
) -> Result<(Arc<SharePassthrough>, Server<Arc<SharePassthrough>>), FsError> {
    let root = resolve_share(path)?;
    let root_s = root_str(&root).ok_or_else(|| FsError::NotUtf8(root.clone()))?;
    let passthrough = PassthroughFs::new(passthrough_config(root_s))
        .map_err(|e| FsError::Passthrough(root.clone(), e))?;
    let fs = Arc::new(ShareFs::new(passthrough, read_only));
    Ok((fs.clone(), Server::new(fs)))
}

/// Writes a bare FUSE error reply; returns the used length (0 if the chain
/// has no room for it).
fn reply_error<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    unique: u64,
    errno: i32,
) -> u32 {
    let Ok(mut w) = VirtioFsWriter::new(mem, chain) else {
        return 0;
    };
    let header = OutHeader {
        len: OUT_HEADER_LEN as u32,
        error: -errno,
        unique,
    };
    match w.write_obj(header) {
        Ok(()) => header.len,
        Err(_) => 0,
    }
}

/// Serves one chain; returns the used length.
fn serve<M: GuestMemory, F: FileSystem + Sync>(
    mem: &M,
    chain: DescriptorChain<&M>,
    server: &Server<F>,
) -> u32 {
    // Look at the header first: the server trusts `len` to size its reads.
    let mut peek = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            log::debug!("vmm: virtio-fs: unreadable request chain: {e}");
            return 0;
        }
    };
    let readable = peek.available_bytes();
    let header: InHeader = match peek.read_obj() {
        Ok(h) => h,
        Err(_) => {
            log::debug!("vmm: virtio-fs: request shorter than a FUSE header ({readable} bytes)");
            return 0;
        }
    };
    let len = header.len as usize;
    if len < IN_HEADER_LEN || len > readable {
        log::debug!(
            "vmm: virtio-fs: request len {len} outside [{IN_HEADER_LEN}, {readable}] (opcode {})",
            header.opcode
        );
        return reply_error(mem, chain, header.unique, libc::EINVAL);
    }
    let writer = match VirtioFsWriter::new(mem, chain.clone()) {
        Ok(w) => w,
        Err(e) => {
            log::debug!("vmm: virtio-fs: unwritable reply buffer: {e}");
            return 0;
        }
    };
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(_) => return 0,
    };
    match server.handle_message(reader, Writer::from(writer), None, None) {
        Ok(n) => u32::try_from(n).unwrap_or(0),
        Err(e) => {
            // Requests the server could not decode; FORGET has no reply and
            // its chain has no writable part, so this writes nothing there.
            log::debug!(
                "vmm: virtio-fs: request (opcode {}) failed: {e}",
                header.opcode
            );
            reply_error(mem, chain, header.unique, libc::EINVAL)
        }
    }
}

/// Serves every available request on `queue` with `server`. Returns whether
/// any chain was completed (the caller then interrupts the driver).
///
/// Each chain's device-readable part is one FUSE request, its device-writable
/// part receives the reply. A chain that cannot carry a FUSE header, or
/// whose buffers are not in guest memory, is returned with used length 0; a
/// header whose `len` is smaller than a header or larger than the readable
/// part, or a request the server cannot decode, gets an EINVAL reply when
/// there is room for one. Nothing here panics on guest input.
pub fn process_queue<M: GuestMemory, F: FileSystem + Sync>(
    mem: &M,
    queue: &mut Queue,
    server: &Server<F>,
) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let used_len = serve(mem, chain, server);
        if let Err(e) = queue.add_used(mem, head, used_len) {
            log::error!("vmm: virtio-fs: add_used: {e}");
            break;
        }
        used_any = true;
    }
    used_any
}

/// The virtio-fs device.
pub struct Fs {
    tag: String,
    config: [u8; CONFIG_LEN],
    fs: Arc<SharePassthrough>,
    server: Server<Arc<SharePassthrough>>,
    acked_features: u64,
    queue_sizes: [u16; NUM_QUEUES],
    queues: Vec<Queue>,
    mem: Option<GuestMem>,
    interrupt: Interrupt,
    queue_evts: Vec<EventFd>,
}

impl Fs {
    /// A device exporting directory `path` under `tag`.
    pub fn new(
        tag: &str,
        path: &Path,
        read_only: bool,
        interrupt: Interrupt,
    ) -> Result<Self, FsError> {
        let tag_b = tag_bytes(tag)?;
        let (fs, server) = share_server(path, read_only)?;
        let mut config = [0u8; CONFIG_LEN];
        config[..FS_TAG_LEN].copy_from_slice(&tag_b);
        config[FS_TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        let queue_evts = (0..NUM_QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Fs {
            tag: tag.to_string(),
            config,
            fs,
            server,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            queues: Vec::new(),
            mem: None,
            interrupt,
            queue_evts,
        })
    }

    /// The mount tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether the share refuses writes.
    pub fn read_only(&self) -> bool {
        self.fs.read_only()
    }

    /// The eventfds the driver's QueueNotify signals, one per queue (hiprio first).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Serves queue `index` after a notification.
    pub fn process_queue_event(&mut self, index: usize) {
        let (Some(queue), Some(mem)) = (self.queues.get_mut(index), self.mem.as_ref()) else {
            return;
        };
        if process_queue(mem, queue, &self.server) {
            self.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn avail_features(&self) -> u64 {
        // No VIRTIO_FS_F_NOTIFICATION; VERSION_1 is added by the transport.
        0
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start < CONFIG_LEN {
            let n = data.len().min(CONFIG_LEN - start);
            data[..n].copy_from_slice(&self.config[start..start + n]);
        }
    }
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("vmm: virtio-fs: config write at {offset:#x} ignored");
    }
    fn activate(&mut self, mem: GuestMem, queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: queues.len(),
            });
        }
        if let Some(i) = queues.iter().position(|q| !q.is_valid(&mem)) {
            return Err(ActivateError::InvalidQueue(i));
        }
        self.queues = queues;
        self.mem = Some(mem);
        // Requests may have been queued before activation.
        for i in 0..NUM_QUEUES {
            self.process_queue_event(i);
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.queues.clear();
        self.mem = None;
        self.acked_features = 0;
        // Close every host file the guest had open; the driver will INIT again.
        self.fs.destroy();
    }
}

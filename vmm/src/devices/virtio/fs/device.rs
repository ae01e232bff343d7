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
use super::share::{passthrough_config, root_str, ShareCache, ShareFs, GUEST_OWNED_TIMEOUT};

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

/// Builds the server for the share at `path` (a directory), cached as
/// `cache` allows.
pub fn share_server(
    path: &Path,
    read_only: bool,
    cache: ShareCache,
) -> Result<(Arc<SharePassthrough>, Server<Arc<SharePassthrough>>), FsError> {
    let root = resolve_share(path)?;
    let root_s = root_str(&root).ok_or_else(|| FsError::NotUtf8(root.clone()))?;
    let passthrough = PassthroughFs::new(passthrough_config(root_s, cache))
        .map_err(|e| FsError::Passthrough(root.clone(), e))?;
    let mut fs =
        ShareFs::new(passthrough, read_only).map_err(|e| FsError::Passthrough(root.clone(), e))?;
    if cache == ShareCache::GuestOwned {
        fs = fs.guest_owned(GUEST_OWNED_TIMEOUT);
    }
    let fs = Arc::new(fs);
    Ok((fs.clone(), Server::new(fs)))
}

/// Environment variable naming a file where each virtio-fs device keeps
/// its request counts by FUSE opcode (a measuring aid, off by default):
/// lines `TAG OPCODE COUNT HOST_MICROSECONDS`, rewritten at most once a
/// second while the guest sends requests and when the device goes away.
pub const FUSE_STATS_ENV: &str = "BERTH_VMM_FUSE_STATS";

/// Request counts (and host time spent) by FUSE opcode.
struct FuseStats {
    path: PathBuf,
    count: [u64; 64],
    micros: [u64; 64],
    /// IOCTL requests by command.
    ioctls: std::collections::BTreeMap<u32, u64>,
    written: std::time::Instant,
}

impl FuseStats {
    fn from_env() -> Option<FuseStats> {
        let path = std::env::var_os(FUSE_STATS_ENV)?;
        Some(FuseStats {
            path: PathBuf::from(path),
            count: [0; 64],
            micros: [0; 64],
            ioctls: std::collections::BTreeMap::new(),
            written: std::time::Instant::now(),
        })
    }

    fn add(&mut self, opcode: u32, took: std::time::Duration) {
        // Opcodes above 63 (CUSE, notifications) share the last slot.
        let i = (opcode as usize).min(63);
        self.count[i] += 1;
        self.micros[i] += u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    }

    /// Rewrite this tag's lines of the file (other devices' lines kept).
    fn write(&mut self, tag: &str) {
        self.written = std::time::Instant::now();
        let old = std::fs::read_to_string(&self.path).unwrap_or_default();
        let prefix = format!("{tag} ");
        let mut out: String = old
            .lines()
            .filter(|l| !l.starts_with(&prefix))
            .map(|l| format!("{l}\n"))
            .collect();
        for (op, (n, us)) in self.count.iter().zip(self.micros.iter()).enumerate() {
            if *n > 0 {
                out.push_str(&format!("{tag} {} {n} {us}\n", opcode_name(op as u32)));
            }
        }
        for (cmd, n) in &self.ioctls {
            out.push_str(&format!("{tag} IOCTL:{cmd:#x} {n} 0\n"));
        }
        if let Err(e) = std::fs::write(&self.path, out) {
            log::warn!("vmm: virtio-fs: writing {}: {e}", self.path.display());
        }
    }
}

/// FUSE opcode names (fuse_kernel.h) for the statistics.
fn opcode_name(op: u32) -> String {
    const NAMES: &[&str] = &[
        "0",
        "LOOKUP",
        "FORGET",
        "GETATTR",
        "SETATTR",
        "READLINK",
        "SYMLINK",
        "7",
        "MKNOD",
        "MKDIR",
        "UNLINK",
        "RMDIR",
        "RENAME",
        "LINK",
        "OPEN",
        "READ",
        "WRITE",
        "STATFS",
        "RELEASE",
        "19",
        "FSYNC",
        "SETXATTR",
        "GETXATTR",
        "LISTXATTR",
        "REMOVEXATTR",
        "FLUSH",
        "INIT",
        "OPENDIR",
        "READDIR",
        "RELEASEDIR",
        "FSYNCDIR",
        "GETLK",
        "SETLK",
        "SETLKW",
        "ACCESS",
        "CREATE",
        "INTERRUPT",
        "BMAP",
        "DESTROY",
        "IOCTL",
        "POLL",
        "NOTIFY_REPLY",
        "BATCH_FORGET",
        "FALLOCATE",
        "READDIRPLUS",
        "RENAME2",
        "LSEEK",
        "COPY_FILE_RANGE",
        "SETUPMAPPING",
        "REMOVEMAPPING",
        "SYNCFS",
        "TMPFILE",
    ];
    NAMES
        .get(op as usize)
        .map_or_else(|| op.to_string(), |n| n.to_string())
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
    process_queue_counted(mem, queue, server, None)
}

fn process_queue_counted<M: GuestMemory, F: FileSystem + Sync>(
    mem: &M,
    queue: &mut Queue,
    server: &Server<F>,
    mut stats: Option<&mut FuseStats>,
) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let used_len = match stats.as_deref_mut() {
            None => serve(mem, chain, server),
            Some(st) => {
                let mut r = Reader::from_descriptor_chain(mem, chain.clone()).ok();
                let opcode = r
                    .as_mut()
                    .and_then(|r| r.read_obj::<InHeader>().ok())
                    .map_or(0, |h| h.opcode);
                if opcode == 39 {
                    if let Some(io) = r
                        .as_mut()
                        .and_then(|r| r.read_obj::<fuse_backend_rs::abi::fuse_abi::IoctlIn>().ok())
                    {
                        *st.ioctls.entry(io.cmd).or_default() += 1;
                    }
                }
                let t = std::time::Instant::now();
                let n = serve(mem, chain, server);
                st.add(opcode, t.elapsed());
                n
            }
        };
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
    stats: Option<FuseStats>,
}

impl Fs {
    /// A device exporting directory `path` under `tag`, cached as `cache`
    /// allows.
    pub fn new(
        tag: &str,
        path: &Path,
        read_only: bool,
        cache: ShareCache,
        interrupt: Interrupt,
    ) -> Result<Self, FsError> {
        let tag_b = tag_bytes(tag)?;
        let (fs, server) = share_server(path, read_only, cache)?;
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
            stats: FuseStats::from_env(),
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
        if process_queue_counted(mem, queue, &self.server, self.stats.as_mut()) {
            self.interrupt.signal_used_queue();
        }
        if let Some(st) = self.stats.as_mut() {
            if st.written.elapsed() >= std::time::Duration::from_secs(1) {
                st.write(&self.tag);
            }
        }
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        if let Some(st) = self.stats.as_mut() {
            st.write(&self.tag);
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
        // Requests may have been queued before activation: have the event
        // loop serve them (activation runs on a vCPU thread, whose seccomp
        // filter allows no file-system calls).
        for evt in &self.queue_evts {
            if let Err(e) = evt.write(1) {
                log::error!("vmm: virtio-fs: waking the event loop: {e}");
            }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fuse_backend_rs::abi::fuse_abi::{
        AttrOut, CreateIn, Dirent, EntryOut, GetattrIn, InitIn, InitOut, MkdirIn, Opcode, OpenIn,
        OpenOut, ReadIn, ReleaseIn, SetattrIn, WriteIn, WriteOut, ROOT_ID,
    };
    use std::os::unix::fs::MetadataExt;
    use std::sync::mpsc;
    use std::time::Duration;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

    pub const F_NEXT: u16 = 1;
    pub const F_WRITE: u16 = 2;
    /// Request buffer.
    pub const IN: u64 = 0x10_0000;
    /// Reply buffer.
    pub const OUT: u64 = 0x40_0000;
    pub const MEM_SIZE: usize = 0x80_0000;
    const FOPEN_DIRECT_IO: u32 = 1;
    const FATTR_SIZE: u32 = 1 << 3;

    pub type TestServer = Server<Arc<SharePassthrough>>;

    /// Runs `f` on another thread and fails the test if it takes longer
    /// than `secs` (a hang is a failure, not a stuck test run).
    pub fn bounded<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(Duration::from_secs(secs)) {
            Ok(v) => v,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("test work did not finish within {secs} s")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("test work panicked"),
        }
    }

    /// Submits one chain (descriptors linked in order unless `raw`) and
    /// serves it; returns the used length.
    pub fn run_chain(
        m: &GuestMemoryMmap<()>,
        server: &TestServer,
        descs: &[(u64, u32, u16)],
        raw: bool,
    ) -> u32 {
        let vq = MockSplitQueue::new(m, 16);
        let chained: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == descs.len();
                let (flags, next) = if raw {
                    (flags, (flags >> 8) & 0xf)
                } else if last {
                    (flags & !F_NEXT, 0)
                } else {
                    (flags | F_NEXT, i as u16 + 1)
                };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags & 0xff, next))
            })
            .collect();
        vq.add_desc_chains(&chained, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(process_queue(m, &mut q, server));
        let used_idx: u16 = m.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 1);
        m.read_obj(vq.used_addr().unchecked_add(8)).unwrap()
    }

    /// A share in a temporary directory: `<tmp>/share` is shared, `<tmp>`
    /// also holds `outside.txt`, which must never be reachable.
    pub struct Harness {
        pub m: GuestMemoryMmap<()>,
        pub server: Arc<TestServer>,
        pub tmp: tempfile::TempDir,
        pub unique: u64,
        pub uid: u32,
        pub gid: u32,
    }

    /// A reply: FUSE error (0 or -errno) and body.
    pub struct Reply {
        pub error: i32,
        pub body: Vec<u8>,
    }

    impl Reply {
        pub fn obj<T: ByteValued + Default>(&self, at: usize) -> T {
            let mut v = T::default();
            v.as_mut_slice()
                .copy_from_slice(&self.body[at..at + size_of::<T>()]);
            v
        }
    }

    impl Harness {
        pub fn new(read_only: bool) -> Self {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::create_dir(tmp.path().join("share")).unwrap();
            std::fs::write(tmp.path().join("outside.txt"), b"host secret").unwrap();
            std::fs::write(tmp.path().join("share/hello.txt"), b"hello from the host\n").unwrap();
            let (_fs, server) =
                share_server(&tmp.path().join("share"), read_only, ShareCache::Shared).unwrap();
            let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
            Harness {
                m,
                server: Arc::new(server),
                tmp,
                unique: 0,
                uid: 0,
                gid: 0,
            }
        }

        pub fn share(&self) -> PathBuf {
            self.tmp.path().join("share")
        }

        /// Sends one FUSE request; the reply buffer holds `out_len` bytes.
        pub fn req(&mut self, opcode: u32, nodeid: u64, args: &[&[u8]], out_len: u32) -> Reply {
            self.unique += 1;
            let body: Vec<u8> = args.concat();
            let header = InHeader {
                len: (IN_HEADER_LEN + body.len()) as u32,
                opcode,
                unique: self.unique,
                nodeid,
                uid: self.uid,
                gid: self.gid,
                pid: 1,
                padding: 0,
            };
            let mut msg = header.as_slice().to_vec();
            msg.extend_from_slice(&body);
            self.m.write_slice(&msg, GuestAddress(IN)).unwrap();
            self.m
                .write_slice(&vec![0u8; out_len as usize], GuestAddress(OUT))
                .unwrap();
            let used = run_chain(
                &self.m,
                &self.server,
                &[(IN, msg.len() as u32, 0), (OUT, out_len, F_WRITE)],
                false,
            );
            assert!(
                used as usize >= OUT_HEADER_LEN,
                "no reply to opcode {opcode}"
            );
            let out: OutHeader = self.m.read_obj(GuestAddress(OUT)).unwrap();
            assert_eq!(out.unique, self.unique);
            assert_eq!(out.len, used);
            let mut body = vec![0u8; used as usize - OUT_HEADER_LEN];
            self.m
                .read_slice(&mut body, GuestAddress(OUT + OUT_HEADER_LEN as u64))
                .unwrap();
            Reply {
                error: out.error,
                body,
            }
        }

        pub fn init(&mut self) -> InitOut {
            let init = InitIn {
                major: 7,
                minor: 31,
                max_readahead: 0x20000,
                flags: 0,
            };
            let r = self.req(Opcode::Init as u32, 0, &[init.as_slice()], 0x1000);
            assert_eq!(r.error, 0);
            r.obj(0)
        }

        pub fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
            let name = cstr(name);
            let r = self.req(Opcode::Lookup as u32, parent, &[&name], 0x1000);
            if r.error != 0 {
                return Err(r.error);
            }
            Ok(r.obj(0))
        }

        pub fn getattr(&mut self, node: u64) -> Result<AttrOut, i32> {
            let r = self.req(
                Opcode::Getattr as u32,
                node,
                &[GetattrIn::default().as_slice()],
                0x1000,
            );
            if r.error != 0 {
                return Err(r.error);
            }
            Ok(r.obj(0))
        }

        pub fn open(&mut self, node: u64, flags: i32) -> Result<OpenOut, i32> {
            let o = OpenIn {
                flags: flags as u32,
                fuse_flags: 0,
            };
            let r = self.req(Opcode::Open as u32, node, &[o.as_slice()], 0x1000);
            if r.error != 0 {
                return Err(r.error);
            }
            Ok(r.obj(0))
        }

        pub fn read(&mut self, node: u64, fh: u64, size: u32) -> Result<Vec<u8>, i32> {
            let ri = ReadIn {
                fh,
                offset: 0,
                size,
                ..Default::default()
            };
            let r = self.req(Opcode::Read as u32, node, &[ri.as_slice()], size + 0x100);
            if r.error != 0 {
                return Err(r.error);
            }
            Ok(r.body)
        }

        pub fn write(&mut self, node: u64, fh: u64, data: &[u8]) -> Result<u32, i32> {
            let wi = WriteIn {
                fh,
                offset: 0,
                size: data.len() as u32,
                ..Default::default()
            };
            let r = self.req(Opcode::Write as u32, node, &[wi.as_slice(), data], 0x1000);
            if r.error != 0 {
                return Err(r.error);
            }
            Ok(r.obj::<WriteOut>(0).size)
        }

        pub fn create(
            &mut self,
            parent: u64,
            name: &str,
            flags: i32,
        ) -> Result<(EntryOut, OpenOut), i32> {
            let ci = CreateIn {
                flags: flags as u32,
                mode: libc::S_IFREG | 0o644,
                umask: 0o022,
                fuse_flags: 0,
            };
            let r = self.req(
                Opcode::Create as u32,
                parent,
                &[ci.as_slice(), &cstr(name)],
                0x1000,
            );
            if r.error != 0 {
                return Err(r.error);
            }
            Ok((r.obj(0), r.obj(size_of::<EntryOut>())))
        }

        pub fn mkdir(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
            let mi = MkdirIn {
                mode: 0o755,
                umask: 0,
            };
            let r = self.req(
                Opcode::Mkdir as u32,
                parent,
                &[mi.as_slice(), &cstr(name)],
                0x1000,
            );
            if r.error != 0 {
                return Err(r.error);
            }
            Ok(r.obj(0))
        }

        pub fn release(&mut self, node: u64, fh: u64) {
            let ri = ReleaseIn {
                fh,
                ..Default::default()
            };
            let r = self.req(Opcode::Release as u32, node, &[ri.as_slice()], 0x1000);
            assert_eq!(r.error, 0);
        }

        /// OPENDIR + READDIR + RELEASEDIR: the entry names.
        pub fn readdir(&mut self, node: u64) -> Result<Vec<String>, i32> {
            let o = OpenIn {
                flags: libc::O_RDONLY as u32,
                fuse_flags: 0,
            };
            let r = self.req(Opcode::Opendir as u32, node, &[o.as_slice()], 0x1000);
            if r.error != 0 {
                return Err(r.error);
            }
            let fh = r.obj::<OpenOut>(0).fh;
            let ri = ReadIn {
                fh,
                offset: 0,
                size: 0x2000,
                ..Default::default()
            };
            let r = self.req(Opcode::Readdir as u32, node, &[ri.as_slice()], 0x2100);
            assert_eq!(r.error, 0);
            let mut names = Vec::new();
            let mut at = 0;
            while at + size_of::<Dirent>() <= r.body.len() {
                let d: Dirent = r.obj(at);
                let start = at + size_of::<Dirent>();
                let name = &r.body[start..start + d.namelen as usize];
                names.push(String::from_utf8_lossy(name).into_owned());
                at = (start + d.namelen as usize + 7) & !7;
            }
            let rel = ReleaseIn {
                fh,
                ..Default::default()
            };
            let r = self.req(Opcode::Releasedir as u32, node, &[rel.as_slice()], 0x1000);
            assert_eq!(r.error, 0);
            Ok(names)
        }
    }

    pub fn cstr(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    #[test]
    fn init_lookup_getattr_open_read() {
        let mut h = Harness::new(false);
        let init = h.init();
        assert_eq!(init.major, 7);
        let e = h.lookup(ROOT_ID, "hello.txt").unwrap();
        assert_ne!(e.nodeid, 0);
        assert_ne!(e.nodeid, ROOT_ID);
        assert_eq!(e.attr.size, 20);
        assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFREG);
        let a = h.getattr(e.nodeid).unwrap();
        assert_eq!(a.attr.size, 20);
        assert_eq!(a.attr.ino, e.attr.ino);
        let root = h.getattr(ROOT_ID).unwrap();
        assert_eq!(root.attr.mode & libc::S_IFMT, libc::S_IFDIR);
        let o = h.open(e.nodeid, libc::O_RDONLY).unwrap();
        // Shared writable mmap in the guest needs page-cache I/O.
        assert_eq!(o.open_flags & FOPEN_DIRECT_IO, 0);
        let data = h.read(e.nodeid, o.fh, 4096).unwrap();
        assert_eq!(data, b"hello from the host\n");
        h.release(e.nodeid, o.fh);
        assert_eq!(h.lookup(ROOT_ID, "missing").err(), Some(-libc::ENOENT));
    }

    #[test]
    fn init_negotiates_big_writes_but_not_max_pages() {
        const BIG_WRITES: u32 = 1 << 5;
        const MAX_PAGES: u32 = 1 << 22;
        let mut h = Harness::new(false);
        let init = InitIn {
            major: 7,
            minor: 38,
            max_readahead: 0x20000,
            flags: BIG_WRITES | MAX_PAGES,
        };
        let r = h.req(Opcode::Init as u32, 0, &[init.as_slice()], 0x1000);
        assert_eq!(r.error, 0);
        let out: InitOut = r.obj(0);
        assert_ne!(out.flags & BIG_WRITES, 0);
        assert_eq!(out.flags & MAX_PAGES, 0);
        assert_eq!(out.max_write, 1 << 20);
        // A 64 KiB write in one request.
        let (e, o) = h
            .create(ROOT_ID, "big", libc::O_WRONLY | libc::O_CREAT)
            .unwrap();
        let data = vec![0x5au8; 64 << 10];
        assert_eq!(h.write(e.nodeid, o.fh, &data).unwrap(), 64 << 10);
        assert_eq!(std::fs::read(h.share().join("big")).unwrap(), data);
    }

    #[test]
    fn create_write_mkdir_readdir_reach_the_host() {
        let mut h = Harness::new(false);
        h.init();
        // The guest's caller is uid/gid 1000, in a directory they own (the
        // guest kernel checked their permissions; the host applies its own
        // too, as the server switches to their uid): the file is theirs.
        std::os::unix::fs::chown(h.share(), Some(1000), Some(1000)).unwrap();
        h.uid = 1000;
        h.gid = 1000;
        let (e, o) = h
            .create(ROOT_ID, "new.txt", libc::O_WRONLY | libc::O_CREAT)
            .unwrap();
        assert_eq!(o.open_flags & FOPEN_DIRECT_IO, 0);
        assert_eq!(
            h.write(e.nodeid, o.fh, b"written by the guest").unwrap(),
            20
        );
        h.release(e.nodeid, o.fh);
        let path = h.share().join("new.txt");
        assert_eq!(std::fs::read(&path).unwrap(), b"written by the guest");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
        assert_eq!(meta.mode() & 0o777, 0o644);

        let d = h.mkdir(ROOT_ID, "sub").unwrap();
        assert_eq!(d.attr.mode & libc::S_IFMT, libc::S_IFDIR);
        assert!(h.share().join("sub").is_dir());
        h.uid = 0;
        h.gid = 0;

        // Host-side changes are visible to the next lookup.
        std::fs::write(h.share().join("sub/from-host"), b"x").unwrap();
        // (fuse-backend-rs leaves out "." and "..".)
        let mut names = h.readdir(d.nodeid).unwrap();
        names.retain(|n| n != "." && n != "..");
        assert_eq!(names, ["from-host"]);
        let mut names = h.readdir(ROOT_ID).unwrap();
        names.retain(|n| n != "." && n != "..");
        names.sort();
        assert_eq!(names, ["hello.txt", "new.txt", "sub"]);

        // Truncate through SETATTR.
        let sa = SetattrIn {
            valid: FATTR_SIZE,
            size: 7,
            ..Default::default()
        };
        let r = h.req(Opcode::Setattr as u32, e.nodeid, &[sa.as_slice()], 0x1000);
        assert_eq!(r.error, 0);
        assert_eq!(std::fs::read(&path).unwrap(), b"written");
    }

    #[test]
    fn read_only_share_refuses_writes() {
        let mut h = Harness::new(true);
        h.init();
        let hello = h.lookup(ROOT_ID, "hello.txt").unwrap();
        assert_eq!(
            h.create(ROOT_ID, "new.txt", libc::O_WRONLY | libc::O_CREAT)
                .err(),
            Some(-libc::EROFS)
        );
        assert_eq!(h.mkdir(ROOT_ID, "sub").err(), Some(-libc::EROFS));
        for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
            assert_eq!(h.open(hello.nodeid, flags).err(), Some(-libc::EROFS));
        }
        let o = h.open(hello.nodeid, libc::O_RDONLY).unwrap();
        assert_eq!(
            h.write(hello.nodeid, o.fh, b"nope").err(),
            Some(-libc::EROFS)
        );
        let sa = SetattrIn {
            valid: FATTR_SIZE,
            size: 0,
            ..Default::default()
        };
        let r = h.req(
            Opcode::Setattr as u32,
            hello.nodeid,
            &[sa.as_slice()],
            0x1000,
        );
        assert_eq!(r.error, -libc::EROFS);
        let r = h.req(
            Opcode::Unlink as u32,
            ROOT_ID,
            &[&cstr("hello.txt")],
            0x1000,
        );
        assert_eq!(r.error, -libc::EROFS);
        // Reading still works.
        assert_eq!(
            h.read(hello.nodeid, o.fh, 100).unwrap(),
            b"hello from the host\n"
        );
        assert_eq!(
            std::fs::read(h.share().join("hello.txt")).unwrap(),
            b"hello from the host\n"
        );
        assert!(!h.share().join("new.txt").exists());
        assert!(!h.share().join("sub").exists());
    }

    #[test]
    fn dotdot_of_root_is_root() {
        let mut h = Harness::new(false);
        h.init();
        let share_ino = std::fs::metadata(h.share()).unwrap().ino();
        let parent_ino = std::fs::metadata(h.tmp.path()).unwrap().ino();
        let up = h.lookup(ROOT_ID, "..").unwrap();
        assert_eq!(up.nodeid, ROOT_ID);
        assert_eq!(up.attr.ino, share_ino);
        assert_ne!(up.attr.ino, parent_ino);
        // ../.. from a subdirectory ends at the root too.
        std::fs::create_dir(h.share().join("sub")).unwrap();
        let sub = h.lookup(ROOT_ID, "sub").unwrap();
        let up = h.lookup(sub.nodeid, "..").unwrap();
        assert_eq!(up.nodeid, ROOT_ID);
        let up2 = h.lookup(up.nodeid, "..").unwrap();
        assert_eq!(up2.attr.ino, share_ino);
        // The root's parent listing is the root's.
        let names = h.readdir(up2.nodeid).unwrap();
        assert!(names.iter().any(|n| n == "hello.txt"));
        assert!(!names.iter().any(|n| n == "outside.txt" || n == "share"));
        // Multi-component names are refused.
        for name in ["../outside.txt", "sub/..", "/etc", "sub/", "/"] {
            assert_eq!(h.lookup(ROOT_ID, name).err(), Some(-libc::EINVAL), "{name}");
        }
        assert_eq!(h.mkdir(ROOT_ID, "..").err(), Some(-libc::EINVAL));
        assert_eq!(h.mkdir(ROOT_ID, "a/b").err(), Some(-libc::EINVAL));
        assert!(!h.tmp.path().join("b").exists());
    }

    #[test]
    fn symlinks_are_not_followed() {
        let mut h = Harness::new(false);
        h.init();
        let share = h.share();
        std::os::unix::fs::symlink("/etc", share.join("etc-link")).unwrap();
        std::os::unix::fs::symlink("../../", share.join("up-link")).unwrap();
        std::os::unix::fs::symlink("../outside.txt", share.join("secret-link")).unwrap();
        for (name, target) in [
            ("etc-link", "/etc"),
            ("up-link", "../../"),
            ("secret-link", "../outside.txt"),
        ] {
            let e = h.lookup(ROOT_ID, name).unwrap();
            assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{name}");
            let r = h.req(Opcode::Readlink as u32, e.nodeid, &[], 0x1000);
            assert_eq!(r.error, 0);
            assert_eq!(r.body, target.as_bytes());
            // Not opened, not listed, not traversed.
            assert!(h.open(e.nodeid, libc::O_RDONLY).is_err(), "{name}");
            assert!(h.readdir(e.nodeid).is_err(), "{name}");
            assert!(h.lookup(e.nodeid, "passwd").is_err(), "{name}");
            assert!(h.lookup(e.nodeid, "..").is_err(), "{name}");
            assert!(h.lookup(e.nodeid, "outside.txt").is_err(), "{name}");
            let a = h.getattr(e.nodeid).unwrap();
            assert_eq!(a.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        }
        // Creating through a symlinked "directory" fails instead of writing
        // into /etc or the share's parent.
        let up = h.lookup(ROOT_ID, "up-link").unwrap();
        assert!(h.create(up.nodeid, "planted", libc::O_WRONLY).is_err());
        assert!(h.mkdir(up.nodeid, "planted").is_err());
        assert!(!h.tmp.path().join("planted").exists());
        // A guest-created symlink is stored as-is and not followed either.
        let r = h.req(
            Opcode::Symlink as u32,
            ROOT_ID,
            &[&cstr("guest-link"), &cstr("/etc/shadow")],
            0x1000,
        );
        assert_eq!(r.error, 0);
        assert_eq!(
            std::fs::read_link(share.join("guest-link")).unwrap(),
            Path::new("/etc/shadow")
        );
        let e: EntryOut = r.obj(0);
        assert!(h.open(e.nodeid, libc::O_RDONLY).is_err());
    }

    #[test]
    fn unknown_inodes_reach_nothing() {
        let mut h = Harness::new(false);
        h.init();
        std::fs::create_dir(h.share().join("sub")).unwrap();
        let _ = h.lookup(ROOT_ID, "hello.txt").unwrap();
        let _ = h.lookup(ROOT_ID, "sub").unwrap();
        let inside: Vec<u64> = ["", "hello.txt", "sub"]
            .iter()
            .map(|n| std::fs::metadata(h.share().join(n)).unwrap().ino())
            .collect();
        let outside = [
            std::fs::metadata(h.tmp.path()).unwrap().ino(),
            std::fs::metadata(h.tmp.path().join("outside.txt"))
                .unwrap()
                .ino(),
            std::fs::metadata("/").unwrap().ino(),
        ];
        let mut probes: Vec<u64> = (0..64).collect();
        probes.extend(outside);
        probes.extend([u64::MAX, 1 << 47, (1 << 56) - 1, 1 << 56]);
        for node in probes {
            if let Ok(a) = h.getattr(node) {
                assert!(
                    inside.contains(&a.attr.ino),
                    "inode {node} -> host ino {}",
                    a.attr.ino
                );
            }
            if let Ok(o) = h.open(node, libc::O_RDONLY) {
                let data = h.read(node, o.fh, 100).unwrap_or_default();
                assert_ne!(data, b"host secret");
            }
        }
    }

    #[test]
    fn device_config_and_queues() {
        let tmp = tempfile::tempdir().unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let fs = Fs::new(
            "rootfs",
            tmp.path(),
            true,
            ShareCache::Shared,
            Interrupt::new(evt),
        )
        .unwrap();
        assert_eq!(fs.device_type(), 26);
        assert_eq!(fs.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
        assert_eq!(fs.queue_evts().len(), 2);
        assert!(fs.read_only());
        let mut cfg = [0xffu8; 48];
        fs.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], b"rootfs");
        assert!(cfg[6..36].iter().all(|b| *b == 0));
        assert_eq!(&cfg[36..40], &1u32.to_le_bytes());
        assert!(cfg[40..].iter().all(|b| *b == 0));
        let mut n = [0u8; 4];
        fs.read_config(36, &mut n);
        assert_eq!(u32::from_le_bytes(n), 1);
        fs.read_config(u64::MAX, &mut n);
        assert_eq!(n, [0; 4]);

        let long = "x".repeat(37);
        for bad in ["", long.as_str(), "a\0b", "tab\there"] {
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let err = Fs::new(
                bad,
                tmp.path(),
                false,
                ShareCache::Shared,
                Interrupt::new(evt),
            )
            .err();
            assert!(
                matches!(err, Some(FsError::InvalidTag(ref t)) if t == bad),
                "{bad:?}"
            );
        }
        assert!(tag_bytes(&"y".repeat(36)).is_ok());
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let err = Fs::new("t", &file, false, ShareCache::Shared, Interrupt::new(evt))
            .err()
            .unwrap();
        assert!(matches!(err, FsError::NotADirectory(ref p) if p == &file));
        assert!(err.to_string().contains(&file.display().to_string()));
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let missing = tmp.path().join("missing");
        let err = Fs::new(
            "t",
            &missing,
            false,
            ShareCache::Shared,
            Interrupt::new(evt),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("missing"));
    }

    #[test]
    fn activate_has_the_event_loop_serve_pending_requests() {
        let tmp = tempfile::tempdir().unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = evt.try_clone().unwrap();
        let mut fs = Fs::new(
            "t",
            tmp.path(),
            false,
            ShareCache::Shared,
            Interrupt::new(evt),
        )
        .unwrap();
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0,
            flags: 0,
        };
        let header = InHeader {
            len: (IN_HEADER_LEN + size_of::<InitIn>()) as u32,
            opcode: Opcode::Init as u32,
            unique: 9,
            ..Default::default()
        };
        m.write_obj(header, GuestAddress(IN)).unwrap();
        m.write_obj(init, GuestAddress(IN + IN_HEADER_LEN as u64))
            .unwrap();
        // Request queue at 0x0, hiprio queue (empty) at 0x8000.
        let hiprio = MockSplitQueue::create(&m, GuestAddress(0x8000), 16);
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &[
                RawDescriptor::from(SplitDescriptor::new(IN, header.len, F_NEXT, 1)),
                RawDescriptor::from(SplitDescriptor::new(OUT, 0x1000, F_WRITE, 0)),
            ],
            0,
        )
        .unwrap();
        let queues = vec![hiprio.create_queue().unwrap(), vq.create_queue().unwrap()];
        assert!(matches!(
            fs.activate(m.clone(), vec![vq.create_queue().unwrap()]),
            Err(ActivateError::QueueCount {
                expected: 2,
                got: 1
            })
        ));
        fs.activate(m.clone(), queues).unwrap();
        // Served by the event loop, woken through both queues' eventfds.
        let out: OutHeader = m.read_obj(GuestAddress(OUT)).unwrap();
        assert_eq!(out.unique, 0);
        assert_eq!(fs.queue_evts()[0].read().unwrap(), 1);
        assert_eq!(fs.queue_evts()[1].read().unwrap(), 1);
        fs.process_queue_event(1);
        let out: OutHeader = m.read_obj(GuestAddress(OUT)).unwrap();
        assert_eq!((out.unique, out.error), (9, 0));
        assert_eq!(irq.read().unwrap(), 1);
        fs.reset();
        fs.process_queue_event(1); // no queues: nothing, no panic
        fs.process_queue_event(7);
    }

    /// xorshift64*: a small deterministic PRNG for the fuzz tests.
    pub struct Rng(u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn raw_header(m: &GuestMemoryMmap<()>, len: u32, opcode: u32, nodeid: u64) {
        let h = InHeader {
            len,
            opcode,
            unique: 77,
            nodeid,
            ..Default::default()
        };
        m.write_obj(h, GuestAddress(IN)).unwrap();
    }

    fn out_error(m: &GuestMemoryMmap<()>) -> i32 {
        m.read_obj::<OutHeader>(GuestAddress(OUT)).unwrap().error
    }

    #[test]
    fn malformed_headers_get_errors_or_are_dropped() {
        let h = Harness::new(false);
        let (m, s) = (&h.m, &*h.server);
        // Fewer readable bytes than a FUSE header: dropped.
        for n in 0..IN_HEADER_LEN as u32 {
            raw_header(m, 40, Opcode::Getattr as u32, ROOT_ID);
            let used = run_chain(m, s, &[(IN, n, 0), (OUT, 0x100, F_WRITE)], false);
            assert_eq!(used, 0, "{n} readable bytes");
        }
        // `len` smaller than a header, or larger than the readable part.
        for len in [0, 1, 39, 41, 200, 0x10_0000, 0x10_1001, u32::MAX] {
            raw_header(m, len, Opcode::Lookup as u32, ROOT_ID);
            m.write_obj(0u32, GuestAddress(OUT)).unwrap();
            let used = run_chain(m, s, &[(IN, 40, 0), (OUT, 0x100, F_WRITE)], false);
            assert_eq!(used, 16, "len {len}");
            assert_eq!(out_error(m), -libc::EINVAL, "len {len}");
        }
        // A larger-than-allowed `len` that the chain does carry.
        raw_header(m, 0x20_0000, Opcode::Write as u32, ROOT_ID);
        let used = run_chain(m, s, &[(IN, 0x20_0000, 0), (OUT, 0x100, F_WRITE)], false);
        assert_eq!(used, 16);
        assert_eq!(out_error(m), -libc::ENOMEM);
        // Unknown opcodes.
        for op in [0, 53, 99, 4095, 4096, 0xffff_ffff] {
            raw_header(m, 40, op, ROOT_ID);
            let used = run_chain(m, s, &[(IN, 40, 0), (OUT, 0x100, F_WRITE)], false);
            assert_eq!(used, 16, "opcode {op}");
            assert_eq!(out_error(m), -libc::ENOSYS, "opcode {op}");
        }
        // Known opcodes with a missing or truncated body.
        for op in [
            Opcode::Lookup,
            Opcode::Init,
            Opcode::Read,
            Opcode::Write,
            Opcode::Create,
            Opcode::Rename,
            Opcode::Setattr,
            Opcode::BatchForget,
            Opcode::Setxattr,
            Opcode::SetupMapping,
            Opcode::RemoveMapping,
        ] {
            for body in [0u32, 3, 8] {
                raw_header(m, 40 + body, op as u32, ROOT_ID);
                let used = run_chain(m, s, &[(IN, 40 + body, 0), (OUT, 0x100, F_WRITE)], false);
                assert!(used == 0 || used >= 16, "{op:?}");
                if used >= 16 {
                    assert!(out_error(m) < 0, "{op:?} with a {body}-byte body");
                }
            }
        }
    }

    #[test]
    fn malformed_chains_are_dropped() {
        let h = Harness::new(false);
        let (m, s) = (&h.m, &*h.server);
        raw_header(m, 40, Opcode::Getattr as u32, ROOT_ID);
        // Only readable: no room for a reply.
        assert_eq!(run_chain(m, s, &[(IN, 40, 0)], false), 0);
        assert_eq!(run_chain(m, s, &[(IN, 20, 0), (IN + 20, 20, 0)], false), 0);
        // Only writable: no request.
        assert_eq!(run_chain(m, s, &[(OUT, 0x100, F_WRITE)], false), 0);
        // Reply buffer too small for a header: nothing written.
        assert_eq!(run_chain(m, s, &[(IN, 40, 0), (OUT, 8, F_WRITE)], false), 0);
        // Reply buffer too small for the attributes: an error header fits.
        let used = run_chain(m, s, &[(IN, 40, 0), (OUT, 20, F_WRITE)], false);
        assert!(used == 0 || used == 16);
        // Outside guest memory, or straddling its end.
        let end = MEM_SIZE as u64;
        for descs in [
            vec![(0x1_0000_0000, 40, 0), (OUT, 0x100, F_WRITE)],
            vec![(IN, 40, 0), (0x1_0000_0000, 0x100, F_WRITE)],
            vec![(end - 8, 40, 0), (OUT, 0x100, F_WRITE)],
            vec![(IN, 40, 0), (end - 8, 0x100, F_WRITE)],
            vec![(u64::MAX - 4, 40, 0), (OUT, 0x100, F_WRITE)],
            vec![(IN, 40, 0), (OUT, u32::MAX, F_WRITE)],
            vec![(IN, u32::MAX, 0), (OUT, 0x100, F_WRITE)],
        ] {
            assert_eq!(run_chain(m, s, &descs, false), 0, "{descs:x?}");
        }
        // Zero-length descriptors around a valid request.
        let used = run_chain(
            m,
            s,
            &[
                (IN, 0, 0),
                (IN, 40, 0),
                (OUT, 0, F_WRITE),
                (OUT, 0x100, F_WRITE),
            ],
            false,
        );
        assert!(used >= 16);
        // Writable before readable (the header is split by the writer's
        // buffer): served from the readable descriptors only.
        let used = run_chain(m, s, &[(OUT, 0x100, F_WRITE), (IN, 40, 0)], false);
        assert!(used == 0 || used >= 16);
        // A descriptor loop (0 -> 1 -> 0): bounded by the queue size.
        let used = run_chain(
            m,
            s,
            &[(IN, 40, F_NEXT | (1 << 8)), (OUT, 0x100, F_WRITE | F_NEXT)],
            true,
        );
        assert!(used <= 0x100 * 16);
        // A next index outside the table.
        let used = run_chain(m, s, &[(IN, 40, F_NEXT | (0xf << 8))], true);
        assert_eq!(used, 0);
        // FORGET on the hiprio queue: no writable part, no reply.
        let forget = 1u64.to_le_bytes();
        raw_header(m, 48, Opcode::Forget as u32, 2);
        m.write_slice(&forget, GuestAddress(IN + 40)).unwrap();
        assert_eq!(run_chain(m, s, &[(IN, 48, 0)], false), 0);
    }

    /// Thousands of random requests and chain shapes from a seeded PRNG:
    /// every chain is answered (error reply or used length 0) and the
    /// share's parent directory is untouched.
    #[test]
    fn random_requests_never_panic_or_escape() {
        let h = Harness::new(false);
        let before: Vec<_> = std::fs::read_dir(h.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let outside = h.tmp.path().join("outside.txt");
        let server = h.server.clone();
        let m = h.m.clone();
        let stats = bounded(120, move || {
            let mut rng = Rng(0x5eed_1234_abcd_0001);
            let mut replied = 0u32;
            let mut dropped = 0u32;
            // INIT first so most requests reach the file system.
            let init = InitIn {
                major: 7,
                minor: 31,
                max_readahead: 0,
                flags: 0,
            };
            raw_header(&m, 56, Opcode::Init as u32, 0);
            m.write_obj(init, GuestAddress(IN + 40)).unwrap();
            assert!(run_chain(&m, &server, &[(IN, 56, 0), (OUT, 0x100, F_WRITE)], false) > 0);
            for i in 0..10_000u32 {
                // Opcodes: mostly real ones (FALLOCATE excluded: a random
                // length would really allocate host disk space).
                let opcode = match rng.below(10) {
                    0 => rng.next() as u32,
                    _ => loop {
                        let op = rng.below(54) as u32;
                        if op != Opcode::Fallocate as u32 {
                            break op;
                        }
                    },
                };
                let nodeid = match rng.below(4) {
                    0 => rng.next(),
                    _ => rng.below(8),
                };
                let body_len = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(16),
                    2 => rng.below(128),
                    _ => rng.below(2048),
                } as usize;
                let mut body: Vec<u8> = (0..body_len).map(|_| rng.next() as u8).collect();
                // Some bodies are names, some small structs.
                if rng.below(3) == 0 && body_len > 1 {
                    for b in body.iter_mut() {
                        *b = b"ab./\0x"[rng.below(6) as usize];
                    }
                    body[body_len - 1] = 0;
                }
                let true_len = (IN_HEADER_LEN + body_len) as u32;
                let len = match rng.below(8) {
                    0 => rng.next() as u32,
                    1 => true_len.saturating_sub(rng.below(8) as u32),
                    2 => true_len + rng.below(8) as u32,
                    _ => true_len,
                };
                let header = InHeader {
                    len,
                    opcode,
                    unique: u64::from(i),
                    nodeid,
                    uid: if rng.below(4) == 0 { 1000 } else { 0 },
                    gid: 0,
                    pid: 1,
                    padding: 0,
                };
                let mut msg = header.as_slice().to_vec();
                msg.extend_from_slice(&body);
                m.write_slice(&msg, GuestAddress(IN)).unwrap();
                // Chain shape: split the request over 1-3 readable
                // descriptors, 0-2 writable ones, sometimes bad addresses.
                let mut descs = Vec::new();
                let parts = 1 + rng.below(3) as usize;
                let mut at = 0usize;
                for p in 0..parts {
                    let n = if p + 1 == parts {
                        msg.len() - at
                    } else {
                        rng.below((msg.len() - at) as u64 + 1) as usize
                    };
                    descs.push((IN + at as u64, n as u32, 0));
                    at += n;
                }
                let mut writable = 0u64;
                for w in 0..rng.below(3) {
                    let n = match rng.below(4) {
                        0 => rng.below(32),
                        _ => 0x100 + rng.below(0x2000),
                    };
                    descs.push((OUT + w * 0x4000, n as u32, F_WRITE));
                    writable += n;
                }
                if rng.below(20) == 0 {
                    let k = rng.below(descs.len() as u64) as usize;
                    descs[k].0 = rng.next();
                }
                if rng.below(20) == 0 {
                    let k = rng.below(descs.len() as u64) as usize;
                    descs[k].1 = rng.next() as u32;
                }
                let used = run_chain(&m, &server, &descs, false);
                if used == 0 {
                    dropped += 1;
                } else {
                    assert!(u64::from(used) <= writable.max(0x1_0000_0000));
                    replied += 1;
                }
            }
            (replied, dropped)
        });
        assert!(stats.0 > 3000, "only {} replies", stats.0);
        let after: Vec<_> = std::fs::read_dir(h.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(before, after);
        assert_eq!(std::fs::read(outside).unwrap(), b"host secret");
        // The server still works afterwards.
        let mut h = h;
        h.init();
        assert!(h.lookup(ROOT_ID, "..").is_ok());
    }
}

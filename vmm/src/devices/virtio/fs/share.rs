//! The share behind a virtio-fs device: fuse-backend-rs' `PassthroughFs`
//! configured for berth ([`passthrough_config`]), wrapped in [`ShareFs`],
//! which enforces read-only shares host side and re-checks that every name
//! the guest sends is a single path component.
//!
//! Confinement comes from `PassthroughFs` itself and is proven by this
//! module's tests: every lookup is an `openat(parent, name, O_PATH |
//! O_NOFOLLOW)` relative to an inode the server already holds (so symlinks
//! are never followed host side; the guest resolves them in its own
//! namespace, inside the share), `..` from the root inode resolves to the
//! root itself, names containing `/` are refused, and inode numbers are
//! server-assigned indices into a table of opened files (a guessed number
//! that was never handed out names nothing).

use std::ffi::CStr;
use std::io;
use std::path::Path;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, FsOptions, OpenOptions};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::{CachePolicy, Config};
use fuse_backend_rs::transport::FsCacheReqHandler;

/// How long the guest may cache names and attributes of a
/// [`ShareCache::Shared`] share. Short, so that changes made on the host
/// show up in the guest within a second.
pub const CACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the guest may cache names (found and missing), attributes and
/// directory listings of a [`ShareCache::GuestOwned`] share: a day, as
/// virtiofsd's `cache=always` (nothing but the guest changes the share,
/// so nothing goes stale).
pub const GUEST_OWNED_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Who may change a share while the guest runs, which decides how much
/// the guest may cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ShareCache {
    /// The host may change it at any time (volumes): names and attributes
    /// are cached for [`CACHE_TIMEOUT`], file data until the next open
    /// (close-to-open consistency).
    #[default]
    Shared,
    /// Only this guest changes it while it runs (a pod's root file
    /// system: the image and seed layers are read-only, and the pod's
    /// upper directory is written by no one but the guest, through this
    /// server, until the VM stops). Everything the guest learns stays true
    /// until the guest itself changes it — and then its own kernel updates
    /// its caches, since every change is a request of its own — so it may
    /// cache for [`GUEST_OWNED_TIMEOUT`]: names and attributes, missing
    /// names (negative entries: a lookup that finds nothing answers
    /// "no such entry" with a timeout, so the next lookup of that name
    /// sends nothing), file pages across opens and directory listings. No
    /// OPEN/OPENDIR/RELEASE requests either (`no_open`, `no_opendir`: the
    /// kernel then keeps each file's cache, as FOPEN_KEEP_CACHE and
    /// FOPEN_CACHE_DIR would). Writes stay write-through (no write-back
    /// cache), so the host sees file contents as before — what the pod
    /// writes lands in its upper directory when the write (or, for a
    /// shared mapping, its write-back) happens. Host readers (e.g. of the
    /// journal) stay correct; a host *writer* into a running pod's root
    /// would not be seen reliably, which is why volumes are `Shared`.
    GuestOwned,
}

/// `PassthroughFs` configuration for a share rooted at `root` (an absolute,
/// canonical directory path, as `root_dir` is opened with `O_NOFOLLOW` on
/// its last component only), cached as `cache` allows. For
/// [`ShareCache::GuestOwned`] see there; [`ShareCache::Shared`]:
///
/// - Cache policy `Auto`: files are opened without `FOPEN_DIRECT_IO` and
///   without `FOPEN_KEEP_CACHE`. The guest page cache is used, so
///   `mmap(MAP_SHARED)` writes work (Linux 6.1 refuses shared writable
///   mappings of direct-I/O FUSE files, which journald and systemd need), and
///   the guest drops a file's cached pages on every open, so host changes
///   are seen by the next open; `Never` would break shared mmap, `Always`
///   would keep stale pages across opens.
/// - Write-back caching off: guest writes (including dirty shared-mmap pages
///   when they are written back) reach the host file as WRITE requests, in
///   order, and size/mtime stay owned by the host; write-back would let the
///   guest keep dirty data and its own idea of the file size for longer.
/// - Entry/attribute timeout [`CACHE_TIMEOUT`].
/// - No DAX (this VMM has no shared-memory window), no xattrs (so no
///   `security.capability` writes), no file handles (`open_by_handle_at`
///   would need CAP_DAC_READ_SEARCH).
/// - `do_import` on: `PassthroughFs` owns the root and validates every path
///   component itself.
pub fn passthrough_config(root: &str, cache: ShareCache) -> Config {
    let guest_owned = cache == ShareCache::GuestOwned;
    let timeout = if guest_owned {
        GUEST_OWNED_TIMEOUT
    } else {
        CACHE_TIMEOUT
    };
    Config {
        root_dir: root.to_string(),
        cache_policy: if guest_owned {
            CachePolicy::Always
        } else {
            CachePolicy::Auto
        },
        writeback: false,
        xattr: false,
        entry_timeout: timeout,
        attr_timeout: timeout,
        dir_entry_timeout: None,
        dir_attr_timeout: None,
        do_import: true,
        no_open: guest_owned,
        no_opendir: guest_owned,
        killpriv_v2: false,
        inode_file_handles: false,
        no_readdir: false,
        seal_size: false,
        enable_mntid: false,
        dax_file_size: None,
        use_host_ino: false,
        allow_direct_io: true,
    }
}

/// Whether `path` can be handed to [`passthrough_config`]: absolute and
/// valid UTF-8 (fuse-backend-rs keeps the root as a `String`).
pub fn root_str(path: &Path) -> Option<&str> {
    path.is_absolute().then_some(())?;
    path.to_str()
}

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn enosys() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSYS)
}

/// A name the guest sent must be one path component: no `/`, not empty.
/// (`.` and `..` are allowed in LOOKUP only; the inner file system resolves
/// them relative to the parent inode and maps `..` of the root to the root.)
fn check_name(name: &CStr) -> io::Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b.contains(&b'/') {
        return Err(einval());
    }
    Ok(())
}

/// A name that creates or removes a directory entry: one component, and
/// neither `.` nor `..`.
fn check_new_name(name: &CStr) -> io::Result<()> {
    check_name(name)?;
    match name.to_bytes() {
        b"." | b".." => Err(einval()),
        _ => Ok(()),
    }
}

/// Whether open flags ask for anything a read-only share cannot give.
fn open_writes(flags: u32) -> bool {
    let flags = flags as i32;
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// A [`FileSystem`] around a share: delegates everything to `inner`, except
/// that when `read_only` every operation that could change the share fails
/// with EROFS before reaching `inner` (create, mknod, mkdir, symlink, link,
/// unlink, rmdir, rename, setattr, write, fallocate, setxattr, removexattr,
/// ioctl, open with write access or O_TRUNC, access with W_OK), and that
/// names are checked to be single path components whatever `inner` does.
/// fuse-backend-rs 0.14 has no copy_file_range in its `FileSystem` trait, so
/// there is nothing to refuse there; DAX mappings are refused (no window).
pub struct ShareFs<F> {
    inner: F,
    read_only: bool,
    /// A server that is not root: it switches ids itself around the
    /// operations that create files ([`super::creds`]).
    ids: Option<super::creds::ServerIds>,
    /// Cache missing names for this long (a negative entry); zero: don't.
    negative_timeout: Duration,
}

impl<F: FileSystem> ShareFs<F> {
    /// Wraps `inner`. Called on the thread (and with the credentials) the
    /// server will run with: a non-root server is recognised here.
    pub fn new(inner: F, read_only: bool) -> io::Result<Self> {
        Ok(ShareFs {
            inner,
            read_only,
            ids: super::creds::ServerIds::current()?,
            negative_timeout: Duration::ZERO,
        })
    }

    /// Run `op` (one of the passthrough's file-creating operations) as the
    /// guest caller: with a non-root server, under [`super::creds::as_caller`]
    /// and with a root context (the passthrough then leaves the ids alone);
    /// with a root server, as the passthrough does it.
    fn creating<T>(
        &self,
        ctx: &Context,
        op: impl FnOnce(&Context) -> io::Result<T>,
    ) -> io::Result<T> {
        match &self.ids {
            None => op(ctx),
            Some(ids) => {
                let _caller = super::creds::as_caller(ids, ctx.uid, ctx.gid)?;
                op(&Context {
                    uid: 0,
                    gid: 0,
                    pid: ctx.pid,
                })
            }
        }
    }

    /// For a [`ShareCache::GuestOwned`] share: answer a lookup of a missing
    /// name with a negative entry the guest keeps for `timeout` (the name
    /// cannot appear but through the guest), and let the guest cache
    /// symlink targets (FUSE_CACHE_SYMLINKS: without it every path walk
    /// through a symlink — `/lib` on a merged-/usr image — is a READLINK).
    pub fn guest_owned(mut self, timeout: Duration) -> Self {
        self.negative_timeout = timeout;
        self
    }

    /// Whether mutating operations are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The wrapped file system.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(erofs())
        } else {
            Ok(())
        }
    }
}

impl<F: FileSystem> FileSystem for ShareFs<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    /// Adds BIG_WRITES to what `inner` wants: the server then offers
    /// max_write 1 MiB instead of 4 KiB, and the guest sends WRITEs of up to
    /// its max_pages (32 pages, 128 KiB, by default) instead of one per
    /// page. MAX_PAGES stays off: 256-page requests do not fit a 256-entry
    /// queue without indirect descriptors, and Linux 6.1 does not cap
    /// max_pages by the queue size.
    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut opts = self.inner.init(capable)? | FsOptions::BIG_WRITES;
        if !self.negative_timeout.is_zero() && capable.contains(FsOptions::CACHE_SYMLINKS) {
            opts |= FsOptions::CACHE_SYMLINKS;
        }
        Ok(opts)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        check_name(name)?;
        match self.inner.lookup(ctx, parent, name) {
            // Node id 0 with a timeout: "no such entry", cached (FUSE's
            // negative entry; the kernel answers ENOENT meanwhile).
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT) && !self.negative_timeout.is_zero() =>
            {
                Ok(Entry {
                    inode: 0,
                    generation: 0,
                    // SAFETY: stat64 is plain data; all-zero is valid.
                    attr: unsafe { std::mem::zeroed() },
                    attr_flags: 0,
                    attr_timeout: Duration::ZERO,
                    entry_timeout: self.negative_timeout,
                })
            }
            r => r,
        }
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Self::Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_new_name(name)?;
        // `linkname` is the link's content: any string is allowed, the guest
        // resolves it in its own namespace.
        self.creating(ctx, |c| self.inner.symlink(c, linkname, parent, name))
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_new_name(name)?;
        self.creating(ctx, |c| self.inner.mknod(c, inode, name, mode, rdev, umask))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_new_name(name)?;
        self.creating(ctx, |c| self.inner.mkdir(c, parent, name, mode, umask))
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_new_name(name)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_new_name(name)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        check_new_name(oldname)?;
        check_new_name(newname)?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        newparent: Self::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_new_name(newname)?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        if open_writes(flags) {
            self.writable()?;
        }
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.writable()?;
        check_new_name(name)?;
        self.creating(ctx, |c| self.inner.create(c, parent, name, args))
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn setupmapping(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _handle: Self::Handle,
        _foffset: u64,
        _len: u64,
        _flags: u64,
        _moffset: u64,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        // No DAX window on this VMM.
        Err(enosys())
    }

    fn removemapping(
        &self,
        _ctx: &Context,
        _inode: Self::Inode,
        _requests: Vec<RemovemappingOne>,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        Err(enosys())
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        if mask & libc::W_OK as u32 != 0 {
            self.writable()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        // An ioctl may change the file (FS_IOC_SETFLAGS...); none is read-only
        // by construction, so a read-only share refuses them all.
        self.writable()?;
        self.inner
            .ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        block: u64,
        blocksize: u32,
    ) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        khandle: Self::Handle,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuse_backend_rs::abi::fuse_abi::ROOT_ID;
    use fuse_backend_rs::common::file_traits::FileReadWriteVolatile;
    use fuse_backend_rs::passthrough::PassthroughFs;
    use std::ffi::CString;

    /// A request body that must never be read.
    struct NoData;
    impl io::Read for NoData {
        fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
            panic!("a refused write read its data")
        }
    }
    impl ZeroCopyReader for NoData {
        fn read_to(
            &mut self,
            _f: &mut dyn FileReadWriteVolatile,
            _count: usize,
            _off: u64,
        ) -> io::Result<usize> {
            panic!("a refused write read its data")
        }
    }

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    fn share(read_only: bool) -> (tempfile::TempDir, ShareFs<PassthroughFs>) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("file"), b"data").unwrap();
        std::fs::create_dir(tmp.path().join("dir")).unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let cfg = passthrough_config(root_str(&root).unwrap(), ShareCache::Shared);
        let fs = ShareFs::new(PassthroughFs::new(cfg).unwrap(), read_only).unwrap();
        fs.init(FsOptions::empty()).unwrap();
        (tmp, fs)
    }

    fn errno<T>(r: io::Result<T>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn read_only_refuses_every_mutation() {
        let (tmp, fs) = share(true);
        let ctx = Context::default();
        let file = fs.lookup(&ctx, ROOT_ID, &c("file")).unwrap().inode;
        let dir = fs.lookup(&ctx, ROOT_ID, &c("dir")).unwrap().inode;
        let (fh, _, _) = fs.open(&ctx, file, libc::O_RDONLY as u32, 0).unwrap();
        let fh = fh.unwrap();
        let rofs = Some(libc::EROFS);
        let args = CreateIn {
            flags: (libc::O_CREAT | libc::O_WRONLY) as u32,
            mode: 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        assert_eq!(errno(fs.create(&ctx, ROOT_ID, &c("new"), args)), rofs);
        assert_eq!(
            errno(fs.mknod(&ctx, ROOT_ID, &c("fifo"), libc::S_IFIFO | 0o644, 0, 0)),
            rofs
        );
        assert_eq!(errno(fs.mkdir(&ctx, ROOT_ID, &c("d2"), 0o755, 0)), rofs);
        assert_eq!(errno(fs.symlink(&ctx, &c("/etc"), ROOT_ID, &c("l"))), rofs);
        assert_eq!(errno(fs.link(&ctx, file, ROOT_ID, &c("hard"))), rofs);
        assert_eq!(errno(fs.unlink(&ctx, ROOT_ID, &c("file"))), rofs);
        assert_eq!(errno(fs.rmdir(&ctx, ROOT_ID, &c("dir"))), rofs);
        assert_eq!(
            errno(fs.rename(&ctx, ROOT_ID, &c("file"), dir, &c("moved"), 0)),
            rofs
        );
        // SAFETY: stat64 is plain data; all-zero is a valid value.
        let attr: stat64 = unsafe { std::mem::zeroed() };
        assert_eq!(
            errno(fs.setattr(&ctx, file, attr, None, SetattrValid::SIZE)),
            rofs
        );
        assert_eq!(
            errno(fs.setattr(&ctx, file, attr, None, SetattrValid::MODE)),
            rofs
        );
        assert_eq!(
            errno(fs.write(&ctx, file, fh, &mut NoData, 4, 0, None, false, 0, 0)),
            rofs
        );
        assert_eq!(errno(fs.fallocate(&ctx, file, fh, 0, 0, 1 << 20)), rofs);
        assert_eq!(errno(fs.setxattr(&ctx, file, &c("user.x"), b"1", 0)), rofs);
        assert_eq!(errno(fs.removexattr(&ctx, file, &c("user.x"))), rofs);
        for flags in [
            libc::O_WRONLY,
            libc::O_RDWR,
            libc::O_RDONLY | libc::O_TRUNC,
            libc::O_WRONLY | libc::O_APPEND,
            libc::O_ACCMODE,
        ] {
            assert_eq!(
                errno(fs.open(&ctx, file, flags as u32, 0)),
                rofs,
                "{flags:#o}"
            );
        }
        assert_eq!(errno(fs.access(&ctx, file, libc::W_OK as u32)), rofs);
        assert_eq!(
            errno(fs.ioctl(&ctx, file, fh, 0, 0x4004_6602, IoctlData::default(), 0)),
            rofs
        );
        // Reads still work.
        fs.access(&ctx, file, libc::R_OK as u32).unwrap();
        fs.getattr(&ctx, file, None).unwrap();
        fs.opendir(&ctx, dir, libc::O_RDONLY as u32).unwrap();
        fs.release(&ctx, file, 0, fh, false, false, None).unwrap();
        // Nothing changed on the host.
        let mut names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["dir", "file"]);
        assert_eq!(std::fs::read(tmp.path().join("file")).unwrap(), b"data");
    }

    #[test]
    fn names_must_be_one_component() {
        let (tmp, fs) = share(false);
        let ctx = Context::default();
        let einval = Some(libc::EINVAL);
        for name in ["", "a/b", "/", "../x", "dir/"] {
            assert_eq!(
                errno(fs.lookup(&ctx, ROOT_ID, &c(name))),
                einval,
                "{name:?}"
            );
        }
        // A sibling of the share that no one else creates (a fixed name
        // such as /tmp/escape may exist on a shared host).
        let sibling = format!(
            "{}-escape",
            tmp.path().file_name().unwrap().to_string_lossy()
        );
        let escape = format!("../{sibling}");
        for name in ["", ".", "..", "a/b", escape.as_str()] {
            assert_eq!(errno(fs.mkdir(&ctx, ROOT_ID, &c(name), 0o755, 0)), einval);
            assert_eq!(errno(fs.unlink(&ctx, ROOT_ID, &c(name))), einval);
            assert_eq!(errno(fs.symlink(&ctx, &c("x"), ROOT_ID, &c(name))), einval);
            assert_eq!(
                errno(fs.rename(&ctx, ROOT_ID, &c("file"), ROOT_ID, &c(name), 0)),
                einval
            );
        }
        assert!(!tmp.path().parent().unwrap().join(&sibling).exists());
        // A plain name works on a writable share.
        fs.mkdir(&ctx, ROOT_ID, &c("ok"), 0o755, 0).unwrap();
        assert!(tmp.path().join("ok").is_dir());
        // No DAX.
        assert!(!fs.read_only());
    }

    #[test]
    fn config_is_page_cache_without_writeback() {
        let cfg = passthrough_config("/srv", ShareCache::Shared);
        assert_eq!(cfg.cache_policy, CachePolicy::Auto);
        assert!(!cfg.writeback);
        assert!(!cfg.xattr);
        assert!(cfg.dax_file_size.is_none());
        assert!(cfg.do_import);
        assert!(!cfg.inode_file_handles);
        assert_eq!(cfg.root_dir, "/srv");
        assert!(root_str(Path::new("relative")).is_none());
    }
}

//! Id-mapping helpers shared by both stage1s for pods in a user namespace
//! (`security.userns`): the maps, detached idmapped mounts (`open_tree` +
//! `mount_setattr(MOUNT_ATTR_IDMAP)`), attaching them (`move_mount`),
//! becoming the namespace's root, and a user namespace object of the
//! pod's mapping for processes that are not cloned into one (the VMM).

use crate::{PodDir, PodSpec, UserNamespace};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("cannot write {path}")]
    Map {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot clone the mount of {path}")]
    Clone {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot make an idmapped mount of {path} (the file system must support idmapped mounts)"
    )]
    Idmap {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the pod's user namespace")]
    UserNs(#[source] std::io::Error),
    #[error("cannot prepare {path} for the pod's root")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("path {0} contains a NUL byte")]
    Nul(String),
}

/// Where init attaches the idmapped lower layers (image first, then
/// `spec.rootfs.layers` in order) inside the pod directory.
pub fn lower_dir(pod: &PodDir, i: usize) -> PathBuf {
    pod.path().join("lower").join(i.to_string())
}

/// Host-side set-up before the clone: the overlay's upper and work
/// directories belong to the pod's root, the lower mount points exist.
pub fn prepare_dirs(pod: &PodDir, spec: &PodSpec, u: &UserNamespace) -> Result<(), IdmapError> {
    for d in [pod.overlay_dir(), pod.upper(), pod.work()] {
        let err = |source| IdmapError::Dir {
            path: d.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&d).map_err(err)?;
        std::os::unix::fs::chown(&d, Some(u.host_uid), Some(u.host_gid)).map_err(err)?;
    }
    for i in 0..spec.rootfs.lowers().len() {
        let d = lower_dir(pod, i);
        std::fs::create_dir_all(&d).map_err(|source| IdmapError::Dir {
            path: d.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Write the child's uid_map and gid_map (stage1 holds CAP_SETUID/SETGID
/// in the parent namespace, so setgroups stays allowed).
pub fn write_maps(child: i32, u: &UserNamespace) -> Result<(), IdmapError> {
    for (file, text) in [("uid_map", u.uid_map()), ("gid_map", u.gid_map())] {
        let path = format!("/proc/{child}/{file}");
        std::fs::write(&path, &text).map_err(|source| IdmapError::Map { path, source })?;
    }
    Ok(())
}

#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: u32 = 1;
const AT_RECURSIVE: u32 = 0x8000;
const AT_EMPTY_PATH: u32 = 0x1000;

/// A detached copy of `path` (nosuid, nodev), read-only with `read_only`;
/// with `idmap`, its ids are seen through `userns`.
pub fn detached(
    path: &Path,
    userns: &OwnedFd,
    read_only: bool,
    idmap: bool,
) -> Result<OwnedFd, IdmapError> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| IdmapError::Nul(path.display().to_string()))?;
    // SAFETY: open_tree(2) with a NUL-terminated path; returns a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as u32,
        )
    };
    if fd < 0 {
        return Err(IdmapError::Clone {
            path: path.display().to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the kernel returned a new descriptor that we alone own.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        ..Default::default()
    };
    if idmap {
        attr.attr_set |= MOUNT_ATTR_IDMAP;
        attr.userns_fd = userns.as_raw_fd() as u64;
    }
    if read_only {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    // SAFETY: mount_setattr(2) reads `attr` (of the size given), which
    // outlives the call; the path is the empty C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            AT_EMPTY_PATH | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(IdmapError::Idmap {
            path: path.display().to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(tree)
}

/// Attach a detached mount at `target` (an O_PATH or directory fd).
pub fn attach(tree: &OwnedFd, target: RawFd) -> std::io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
    // SAFETY: move_mount(2) with two fds and empty paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target,
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Become root of the user namespace we are in (the pod's root,
/// `host_uid` on the host).
pub fn become_root() -> nix::Result<()> {
    let root_gid = nix::unistd::Gid::from_raw(0);
    let root_uid = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid)?;
    nix::unistd::setgroups(&[])?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid)
}

/// A user namespace with the pod's mapping, for a process that joins it
/// later (`setns`): made by a short-lived child (clone with
/// CLONE_NEWUSER), whose maps we write; returns its namespace.
pub fn new_userns(u: &UserNamespace) -> Result<OwnedFd, IdmapError> {
    let err = IdmapError::UserNs;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| err(std::io::Error::from(e)))?;
    let mut stack = vec![0u8; 64 * 1024];
    let wr_fd = wr.as_raw_fd();
    let cb = Box::new(|| {
        // Wait until the parent has the namespace (it closes its end; ours
        // goes first), then go.
        // SAFETY: closing our copy of the write end, which nothing else in
        // this process uses.
        unsafe { libc::close(wr_fd) };
        let mut b = [0u8; 1];
        let _ = nix::unistd::read(rd.as_raw_fd(), &mut b);
        0
    });
    // SAFETY: without CLONE_VM the child runs `cb` on `stack` in its own
    // copy of our address space (like fork) and only reads a pipe; the
    // caller is single-threaded.
    let child = unsafe {
        nix::sched::clone(
            cb,
            &mut stack,
            nix::sched::CloneFlags::CLONE_NEWUSER,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| err(std::io::Error::from(e)))?;
    let done = (|| {
        write_maps(child.as_raw(), u)?;
        let ns = std::fs::File::open(format!("/proc/{}/ns/user", child.as_raw())).map_err(err)?;
        Ok(OwnedFd::from(ns))
    })();
    drop(wr);
    let _ = nix::sys::wait::waitpid(child, None);
    done
}

//! A pod in a user namespace (`--user-remap`, `--private-users`): root in
//! the pod is `host_uid` on the host.
//!
//! The pod's init is cloned into a new user namespace together with its
//! other namespaces (so they belong to it, and systemd in a service pod can
//! mount and make namespaces of its own). stage1, still privileged on the
//! host, then
//! 1. writes the id maps ([`write_maps`]);
//! 2. makes an *idmapped* mount of the image, each read-only layer and each
//!    volume ([`idmapped_mounts`]: `open_tree` + `mount_setattr
//!    (MOUNT_ATTR_IDMAP)` with the pod's user namespace), so one image,
//!    never copied or chowned, serves pods of any range: its root-owned
//!    files are the pod's root's;
//! 3. hands those detached mounts to init on the channel (`mapped`).
//!
//! init attaches them (`move_mount`) while it still has the host's root
//! uid — which owns the 0700 state directories it has to traverse — builds
//! the overlay (`userxattr`) whose upper layer, chowned to the pod's root
//! ([`prepare_dirs`]), receives files owned by the mapped ids, pivots, and
//! only then becomes root of the user namespace.

use anyhow::{Context, Result};
use berth_spec::{PodDir, PodSpec, UserNamespace};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Where init attaches the idmapped lower layers (image first, then
/// `spec.rootfs.layers` in order) inside the pod directory.
pub fn lower_dir(pod: &PodDir, i: usize) -> PathBuf {
    pod.path().join("lower").join(i.to_string())
}

/// Host-side set-up before the clone: the overlay's upper and work
/// directories belong to the pod's root, the lower mount points exist.
pub fn prepare_dirs(pod: &PodDir, spec: &PodSpec, u: &UserNamespace) -> Result<()> {
    for d in [pod.overlay_dir(), pod.upper(), pod.work()] {
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        std::os::unix::fs::chown(&d, Some(u.host_uid), Some(u.host_gid))
            .with_context(|| format!("cannot give {} to the pod's root", d.display()))?;
    }
    for i in 0..spec.rootfs.lowers().len() {
        let d = lower_dir(pod, i);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    Ok(())
}

/// Write the child's uid_map and gid_map (stage1 holds CAP_SETUID/SETGID
/// in the parent namespace, so setgroups stays allowed).
pub fn write_maps(child: i32, u: &UserNamespace) -> Result<()> {
    for (file, text) in [("uid_map", u.uid_map()), ("gid_map", u.gid_map())] {
        let p = format!("/proc/{child}/{file}");
        std::fs::write(&p, &text).with_context(|| format!("cannot write {p}"))?;
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
fn idmapped(path: &Path, userns: &OwnedFd, read_only: bool, idmap: bool) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .context("path contains a NUL byte")?;
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
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot clone the mount of {}", path.display()));
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
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot make an idmapped mount of {} (the file system must support idmapped mounts)", path.display()));
    }
    Ok(tree)
}

/// The detached mounts init needs, in the order it attaches them: each
/// lower layer (`spec.rootfs.lowers()`, idmapped, read-only), then each
/// volume — idmapped when read-only (the host's files look like the pod's
/// own, and nothing can be written through it); a read-write volume is not
/// idmapped, so that what the pod writes there carries its mapped ids on
/// the host (through an idmap, pod root would create host-root files:
/// set-uid programs for the host's users to run).
pub fn idmapped_mounts(child: i32, spec: &PodSpec) -> Result<Vec<OwnedFd>> {
    let ns: OwnedFd = std::fs::File::open(format!("/proc/{child}/ns/user"))
        .context("cannot open the pod's user namespace")?
        .into();
    let mut v = Vec::new();
    for l in spec.rootfs.lowers() {
        v.push(idmapped(l, &ns, true, true)?);
    }
    for m in &spec.mounts {
        v.push(idmapped(&m.source, &ns, m.read_only, m.read_only)?);
    }
    Ok(v)
}

/// In init: attach a detached mount at `target` (an O_PATH fd).
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

/// In init, once its mounts are built: become root of the user namespace
/// (the pod's root, `host_uid` on the host).
pub fn become_root() -> nix::Result<()> {
    let root_gid = nix::unistd::Gid::from_raw(0);
    let root_uid = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid)?;
    nix::unistd::setgroups(&[])?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid)
}

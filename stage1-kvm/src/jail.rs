//! The VMM's jail (Firecracker's jailer is the model): the VMM process is
//! cloned into its own mount, pid, ipc, uts and network namespaces (its tap
//! is an fd it already holds), and before it boots it pivots into a tmpfs
//! holding exactly what it needs:
//!
//! ```text
//! /rootfs        the pod's overlay (the rootfs share)
//! /vol/<i>       each volume share
//! /run           POD_DIR/run: its vsock sockets (ctl.sock, ctl.sock_<port>)
//! /log           POD_DIR/log: the console log (console.log, console.log.1)
//! /kernel        the guest kernel, read-only
//! /dev/kvm       the only device node
//! /proc          of its own pid namespace (the FUSE server reopens inodes
//!                through /proc/self/fd)
//! ```
//!
//! Nothing else of the host is reachable from it; with a user namespace it
//! then runs as the pod's mapped root, so a VMM compromise lands in an
//! unprivileged uid, in an empty jail.

use anyhow::{Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// What goes into the jail.
pub struct JailPlan<'a> {
    pub jail: PathBuf,
    pub rootfs: PathBuf,
    pub volumes: Vec<PathBuf>,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub kernel: PathBuf,
    /// With a user namespace: the detached idmapped (read-only volumes) or
    /// plain (read-write volumes) mounts of the volumes, attached instead of
    /// binds.
    pub volume_trees: Option<&'a [OwnedFd]>,
}

/// Paths inside the jail.
pub const ROOTFS: &str = "/rootfs";
pub const RUN: &str = "/run";
pub const LOG: &str = "/log";
pub const KERNEL: &str = "/kernel";

pub fn volume(i: usize) -> PathBuf {
    PathBuf::from(format!("/vol/{i}"))
}

fn m(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(src, target, fstype, flags, data).with_context(|| {
        format!(
            "cannot mount {} on {} in the VMM's jail",
            src.map_or_else(
                || fstype.unwrap_or("-").to_string(),
                |s| s.display().to_string()
            ),
            target.display()
        )
    })
}

fn bind(src: &Path, target: &Path, read_only: bool) -> Result<()> {
    if src.is_dir() {
        std::fs::create_dir_all(target)
    } else {
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::File::create(target).map(drop)
    }
    .with_context(|| format!("cannot create {}", target.display()))?;
    m(
        Some(src),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    m(None, target, None, flags, None)
}

/// Build the jail on `plan.jail` (in the caller's private mount namespace,
/// as the host's root) and pivot into it. Single-threaded callers only.
pub fn enter(plan: &JailPlan) -> Result<()> {
    let j = &plan.jail;
    m(
        Some(Path::new("tmpfs")),
        j,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )?;
    let at = |p: &str| j.join(p.trim_start_matches('/'));
    bind(&plan.rootfs, &at(ROOTFS), false)?;
    for (i, v) in plan.volumes.iter().enumerate() {
        let target = at(&volume(i).to_string_lossy());
        match plan.volume_trees {
            Some(trees) => {
                std::fs::create_dir_all(&target)
                    .with_context(|| format!("cannot create {}", target.display()))?;
                let dir: OwnedFd = std::fs::File::open(&target)
                    .with_context(|| format!("cannot open {}", target.display()))?
                    .into();
                let tree = trees.get(i).context("a volume's mount is missing")?;
                attach(tree, &dir).with_context(|| format!("cannot attach volume {i}"))?;
            }
            None => bind(v, &target, false)?,
        }
    }
    bind(&plan.run_dir, &at(RUN), false)?;
    bind(&plan.log_dir, &at(LOG), false)?;
    bind(&plan.kernel, &at(KERNEL), true)?;
    bind(Path::new("/dev/kvm"), &at("/dev/kvm"), false)?;
    // /dev/kvm needs device access on its mount; nothing else does.
    m(
        None,
        &at("/dev/kvm"),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID,
        None,
    )?;
    std::fs::create_dir_all(at("/proc")).context("cannot create /proc in the jail")?;
    m(
        Some(Path::new("proc")),
        &at("/proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("hidepid=2"),
    )?;
    // The jail's own root directory read-only: the VMM writes only to its
    // shares, sockets and log.
    m(
        None,
        j,
        None,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )?;
    nix::unistd::chdir(j).context("cannot enter the jail")?;
    nix::unistd::pivot_root(".", ".").context("cannot pivot_root into the jail")?;
    umount2(".", MntFlags::MNT_DETACH).context("cannot detach the host's root from the jail")?;
    nix::unistd::chdir("/").context("cannot enter the jail")?;
    Ok(())
}

/// Attach a detached mount on a directory (move_mount).
fn attach(tree: &OwnedFd, dir: &OwnedFd) -> std::io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
    // SAFETY: move_mount(2) with two fds and empty paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            dir.as_raw_fd(),
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

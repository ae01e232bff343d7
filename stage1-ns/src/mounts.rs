//! The pod's filesystem view, built by the pod's init inside its own mount
//! namespace: overlay rootfs, /proc, minimal /dev, read-only /sys, volumes,
//! pivot_root, then the runc/nspawn-style masks over sensitive /proc files.

use berth_spec::confine::{MASKED_PATHS, READONLY_PATHS};
use berth_spec::{Mount, PodDir, PodSpec};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount {what} on {target}")]
    Mount {
        what: String,
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot create {path} in the pod")]
    Create {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("volume source {0} does not exist")]
    MissingSource(PathBuf),
    #[error("rootfs image {0} is not a directory")]
    MissingImage(PathBuf),
    #[error(transparent)]
    Disk(#[from] berth_spec::disk::DiskError),
    #[error("cannot write the pod's /etc/resolv.conf and /etc/hosts")]
    Etc(#[source] std::io::Error),
    #[error("cannot become root of the pod's user namespace")]
    UserNs(#[source] nix::Error),
    #[error("idmapped mounts: {0}")]
    Idmapped(String),
    #[error("cannot pivot_root into {path}")]
    Pivot {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Character devices created in the pod's /dev: (name, major, minor).
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

pub(crate) fn do_mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    mount(source, target, fstype, flags, data).map_err(|e| MountError::Mount {
        what: fstype.or(source).unwrap_or("bind").to_string(),
        target: target.display().to_string(),
        source: e,
    })
}

/// Mount the overlay rootfs and everything below it, then pivot_root into it.
/// Runs in the pod's init, in its fresh mount namespace, as real root.
/// With a user namespace, `idmapped` holds the detached idmapped mounts
/// stage1 made: the lower layers (image first), then the volumes.
pub fn build_root(
    spec: &PodSpec,
    pod: &PodDir,
    idmapped: Option<&[OwnedFd]>,
) -> Result<(), MountError> {
    // Nothing we mount from here on may propagate back to the host.
    do_mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None,
    )?;
    if !spec.rootfs.image.is_dir() {
        return Err(MountError::MissingImage(spec.rootfs.image.clone()));
    }
    if spec.resources.disk.is_some() {
        berth_spec::disk::mount(pod)?;
    }
    // Everything below is reached through descriptors opened now, while we
    // still have the host's root uid (which owns the 0700 state
    // directories): a pod in a user namespace becomes its own root before
    // mounting its overlay (overlayfs wants a mounter with a mapped uid).
    let dirs = PodDirs::open(
        pod,
        spec.rootfs.lowers().len(),
        idmapped.is_some(),
        spec.oci.is_none(),
    )?;
    let nlowers = spec.rootfs.lowers().len();
    let lowers: Vec<PathBuf> = match idmapped {
        None => spec
            .rootfs
            .lowers()
            .iter()
            .map(|l| l.to_path_buf())
            .collect(),
        Some(trees) => {
            if trees.len() != nlowers + spec.mounts.len() {
                return Err(MountError::Idmapped(format!(
                    "{} idmapped mounts for {} layers and {} volumes",
                    trees.len(),
                    nlowers,
                    spec.mounts.len()
                )));
            }
            let mut v = Vec::new();
            for (tree, at) in trees[..nlowers].iter().zip(&dirs.lowers) {
                crate::userns::attach(tree, at.as_raw_fd()).map_err(|e| MountError::Mount {
                    what: "idmapped layer".into(),
                    target: fd_path(at).display().to_string(),
                    source: io_to_nix(e),
                })?;
                // The tree's own descriptor names the attached mount (a
                // look-up of `at` would name the directory under it).
                v.push(fd_path(tree));
            }
            v
        }
    };
    let notify = match spec.service {
        Some(_) => Some(open_path(&pod.notify_socket())?),
        None => None,
    };
    if idmapped.is_some() {
        crate::userns::become_root().map_err(MountError::UserNs)?;
    }
    if let (Some(net), Some(upper)) = (&spec.network.private, &dirs.upper) {
        // Into the overlay's upper layer before it is mounted: the pod sees
        // them as its /etc/resolv.conf and /etc/hosts.
        berth_net::etc::write(&fd_path(upper), &spec.hostname, net).map_err(MountError::Etc)?;
    }
    let lower_refs: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    // The mount's own descriptor is the pod's root from here on (a path or
    // /proc/self/fd look-up could land under it).
    let root_fd = if spec.oci.is_some() {
        // An OCI bundle's root is used in place (see crate::oci).
        crate::oci::bind_root(spec, &pod.rootfs())?;
        open_dir(&pod.rootfs())?
    } else {
        // The new mount API.
        let (upper, work) = dirs.overlay()?;
        mount_overlay(&lower_refs, &upper, &work, idmapped.is_some(), &dirs.rootfs)?
    };
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = ensure_dir(&root_fd, "/proc")?;
    do_mount(
        Some("proc"),
        &fd_path(&proc_dir),
        Some("proc"),
        nosuid_nodev_noexec,
        None,
    )?;
    let dev = ensure_dir(&root_fd, "/dev")?;
    build_dev(&root_fd, &fd_path(&dev))?;
    let sys = ensure_dir(&root_fd, "/sys")?;
    do_mount(
        Some("sysfs"),
        &fd_path(&sys),
        Some("sysfs"),
        nosuid_nodev_noexec | MsFlags::MS_RDONLY,
        None,
    )?;
    for dir in ["/tmp", "/run"] {
        // Only created if missing; the image's own directories are kept.
        ensure_dir(&root_fd, dir)?;
    }
    for (j, m) in spec.mounts.iter().enumerate() {
        bind_volume(&root_fd, m, idmapped.map(|t| &t[nlowers + j]))?;
    }
    if let Some(sock) = &notify {
        run_host(&root_fd, sock)?;
    }
    let root = fd_path(&root_fd);
    if let Some(o) = &spec.oci {
        crate::oci::apply_mounts(&root_fd, o)?;
        crate::oci::finish_root(&root, o)?;
    }
    pivot(&root)
}

/// Mount the pod's overlay (fsopen/fsconfig/fsmount) and attach it on
/// `at`; returns the mount's root. `userxattr`: in a user namespace
/// overlayfs keeps its metadata in user.* xattrs.
fn mount_overlay(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    userxattr: bool,
    at: &OwnedFd,
) -> Result<OwnedFd, MountError> {
    const FSCONFIG_SET_FLAG: u32 = 0;
    const FSCONFIG_SET_STRING: u32 = 1;
    const FSCONFIG_CMD_CREATE: u32 = 6;
    let fail = |what: &str, e: std::io::Error| MountError::Mount {
        what: format!("overlay ({what})"),
        target: fd_path(at).display().to_string(),
        source: io_to_nix(e),
    };
    // SAFETY: fsopen(2) with a NUL-terminated name; returns a new fd.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), 1u32) };
    if fs < 0 {
        return Err(fail("fsopen", std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel returned a new descriptor that we alone own.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
    let set = |cmd: u32, key: &str, value: Option<&str>| -> Result<(), MountError> {
        let k = CString::new(key)
            .map_err(|_| fail(key, std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        let v = value
            .map(CString::new)
            .transpose()
            .map_err(|_| fail(key, std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        let vp = v.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
        // SAFETY: fsconfig(2) with NUL-terminated strings (or NULL) that
        // outlive the call.
        let r =
            unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, k.as_ptr(), vp, 0) };
        if r < 0 {
            return Err(fail(key, std::io::Error::last_os_error()));
        }
        Ok(())
    };
    let esc = |p: &Path| -> String {
        // Within one lowerdir value, ':' separates layers.
        p.to_string_lossy()
            .replace('\\', "\\\\")
            .replace(':', "\\:")
    };
    let lowerdir: Vec<String> = lowers.iter().map(|l| esc(l)).collect();
    set(FSCONFIG_SET_STRING, "lowerdir", Some(&lowerdir.join(":")))?;
    set(
        FSCONFIG_SET_STRING,
        "upperdir",
        Some(&upper.to_string_lossy()),
    )?;
    set(
        FSCONFIG_SET_STRING,
        "workdir",
        Some(&work.to_string_lossy()),
    )?;
    if userxattr {
        set(FSCONFIG_SET_FLAG, "userxattr", None)?;
    }
    // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        return Err(fail("create", std::io::Error::last_os_error()));
    }
    // SAFETY: fsmount(2) on the configured fs context; returns a new fd.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), 1u32, 0u32) };
    if m < 0 {
        return Err(fail("fsmount", std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel returned a new descriptor that we alone own.
    let m = unsafe { OwnedFd::from_raw_fd(m as i32) };
    crate::userns::attach(&m, at.as_raw_fd()).map_err(|e| fail("attach", e))?;
    Ok(m)
}

/// Descriptors (O_PATH) of the pod directory's parts init mounts with.
struct PodDirs {
    rootfs: OwnedFd,
    /// The overlay's upper and work directories (an OCI bundle's root is
    /// used in place: none).
    upper: Option<OwnedFd>,
    work: Option<OwnedFd>,
    /// A user-namespace pod's mount points for its idmapped lower layers.
    lowers: Vec<OwnedFd>,
}

impl PodDirs {
    fn open(
        pod: &PodDir,
        nlowers: usize,
        userns: bool,
        overlay: bool,
    ) -> Result<PodDirs, MountError> {
        let lowers = if userns {
            (0..nlowers)
                .map(|i| open_dir(&crate::userns::lower_dir(pod, i)))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        let dir = |p: PathBuf| -> Result<Option<OwnedFd>, MountError> {
            if overlay {
                open_dir(&p).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(PodDirs {
            rootfs: open_dir(&pod.rootfs())?,
            upper: dir(pod.upper())?,
            work: dir(pod.work())?,
            lowers,
        })
    }

    /// The upper and work directories, as paths init can mount with.
    fn overlay(&self) -> Result<(PathBuf, PathBuf), MountError> {
        match (&self.upper, &self.work) {
            (Some(u), Some(w)) => Ok((fd_path(u), fd_path(w))),
            _ => Err(MountError::Idmapped(
                "the pod has no overlay directories".into(),
            )),
        }
    }
}

fn open_path(path: &Path) -> Result<OwnedFd, MountError> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| MountError::Create {
        path: path.display().to_string(),
        source,
    })?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A service pod's /run (a fresh tmpfs, as systemd expects of a container
/// manager) with systemd's container interface in /run/host:
/// `container-manager` naming berth and `notify`, stage1's socket for
/// systemd's sd_notify messages (its READY=1).
fn run_host(root: &OwnedFd, sock: &OwnedFd) -> Result<(), MountError> {
    let run = ensure_dir(root, "/run")?;
    do_mount(
        Some("tmpfs"),
        &fd_path(&run),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=20%"),
    )?;
    let host = ensure_dir(root, "/run/host")?;
    let host = fd_path(&host);
    let manager = host.join("container-manager");
    std::fs::write(&manager, "berth\n").map_err(|e| MountError::Create {
        path: "/run/host/container-manager".into(),
        source: io_to_nix(e),
    })?;
    let notify = ensure_file(root, berth_spec::SERVICE_NOTIFY_SOCKET)?;
    do_mount(
        Some(&fd_path(sock).to_string_lossy()),
        &fd_path(&notify),
        None,
        MsFlags::MS_BIND,
        None,
    )
}

/// A service pod's /sys/fs/cgroup: cgroup2, read-write, rooted (through the
/// pod's cgroup namespace) at the pod's own cgroup, for its systemd to
/// manage. Called once init is in that namespace.
pub fn mount_cgroup2() -> Result<(), MountError> {
    do_mount(
        Some("cgroup2"),
        Path::new("/sys/fs/cgroup"),
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
}

/// The pod's /dev: a small tmpfs with the usual character devices, a private
/// devpts instance, /dev/shm and /dev/mqueue.
fn build_dev(root: &OwnedFd, mountpoint: &Path) -> Result<(), MountError> {
    do_mount(
        Some("tmpfs"),
        mountpoint,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    // The descriptor behind `mountpoint` still names the directory *under*
    // the new tmpfs; look the path up again to land on the tmpfs itself.
    let dev_fd =
        open_in_root(root, "/dev", libc::O_PATH | libc::O_DIRECTORY).map_err(|source| {
            MountError::Create {
                path: "/dev".into(),
                source,
            }
        })?;
    let dev = &fd_path(&dev_fd);
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        let made = mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        );
        if let Err(e) = made {
            // mknod can be refused (e.g. a nodev parent); bind the host node.
            std::fs::File::create(&p).map_err(|_| MountError::Create {
                path: p.display().to_string(),
                source: e,
            })?;
            do_mount(
                Some(&format!("/dev/{name}")),
                &p,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
        }
        // mknod honours the umask; make the mode exact.
        let _ = nix::sys::stat::fchmodat(
            None,
            &p,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        );
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let p = dev.join(link);
        std::os::unix::fs::symlink(to, &p).map_err(|e| MountError::Create {
            path: p.display().to_string(),
            source: io_to_nix(e),
        })?;
    }
    for (dir, fstype, flags, data) in [
        (
            "pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        ),
        (
            "shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            "mode=1777,size=65536k",
        ),
        (
            "mqueue",
            "mqueue",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            "",
        ),
    ] {
        let p = dev.join(dir);
        std::fs::create_dir(&p).map_err(|e| MountError::Create {
            path: p.display().to_string(),
            source: io_to_nix(e),
        })?;
        let data = (!data.is_empty()).then_some(data);
        do_mount(Some(fstype), &p, Some(fstype), flags, data)?;
    }
    Ok(())
}

/// Bind a volume at its destination, creating the mount point inside the pod
/// rootfs with every path component resolved *inside* the rootfs (a symlink
/// in the image can never send the mount outside it).
fn bind_volume(root: &OwnedFd, m: &Mount, idmapped: Option<&OwnedFd>) -> Result<(), MountError> {
    let meta =
        std::fs::metadata(&m.source).map_err(|_| MountError::MissingSource(m.source.clone()))?;
    let target = if meta.is_dir() {
        ensure_dir(root, &m.destination)?
    } else {
        ensure_file(root, &m.destination)?
    };
    if let Some(tree) = idmapped {
        // Made by stage1, read-only already when asked.
        return crate::userns::attach(tree, target.as_raw_fd()).map_err(|e| MountError::Mount {
            what: format!("idmapped {}", m.source.display()),
            target: m.destination.clone(),
            source: io_to_nix(e),
        });
    }
    let target = fd_path(&target);
    let src = m.source.to_string_lossy();
    do_mount(
        Some(&src),
        &target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    if m.read_only {
        // As for /dev: look the destination up again to reach the new mount.
        let mounted = open_in_root(root, &m.destination, libc::O_PATH).map_err(|source| {
            MountError::Create {
                path: m.destination.clone(),
                source,
            }
        })?;
        let target = fd_path(&mounted);
        do_mount(
            None,
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        )
        .map_err(|e| match e {
            MountError::Mount { source, .. } => MountError::Mount {
                what: format!("read-only {}", m.source.display()),
                target: m.destination.clone(),
                source,
            },
            other => other,
        })?;
    }
    Ok(())
}

/// pivot_root into `root` and detach the old root (runc's `pivot_root(".", ".")`).
fn pivot(root: &Path) -> Result<(), MountError> {
    let err = |source| MountError::Pivot {
        path: root.to_path_buf(),
        source,
    };
    nix::unistd::chdir(root).map_err(err)?;
    nix::unistd::pivot_root(".", ".").map_err(err)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err)?;
    nix::unistd::chdir("/").map_err(err)
}

/// After pivot_root: hide or freeze the sensitive parts of /proc and /sys.
pub fn mask_paths() -> Result<(), MountError> {
    mask_these(MASKED_PATHS, READONLY_PATHS)
}

/// [`mask_paths`] with other lists (an OCI config's `maskedPaths` and
/// `readonlyPaths`).
pub fn mask_these<M: AsRef<str>, R: AsRef<str>>(
    masked: &[M],
    readonly: &[R],
) -> Result<(), MountError> {
    for p in readonly.iter().map(AsRef::as_ref) {
        let path = Path::new(p);
        if !path.exists() {
            continue;
        }
        do_mount(
            Some(p),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        do_mount(
            None,
            path,
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_REC,
            None,
        )?;
    }
    for p in masked.iter().map(AsRef::as_ref) {
        let path = Path::new(p);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => do_mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )?,
            Ok(_) => do_mount(Some("/dev/null"), path, None, MsFlags::MS_BIND, None)?,
            Err(_) => {}
        }
    }
    Ok(())
}

/// Make `/dev/console` the pod's terminal (bind mount of the pty slave).
pub fn bind_console(slave_path: &Path) -> Result<(), MountError> {
    let console = Path::new("/dev/console");
    if !console.exists() {
        std::fs::File::create(console).map_err(|e| MountError::Create {
            path: "/dev/console".into(),
            source: io_to_nix(e),
        })?;
    }
    let src = slave_path.to_string_lossy();
    do_mount(Some(&src), console, None, MsFlags::MS_BIND, None)
}

fn io_to_nix(e: std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// `/proc/self/fd/N` for an O_PATH descriptor: lets mount(2) act on exactly
/// the inode we resolved, with no second path lookup to race against.
pub(crate) fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd, MountError> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| MountError::Create {
        path: path.display().to_string(),
        source,
    })?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// openat2(root, path, RESOLVE_IN_ROOT): symlinks and `..` resolve as if
/// `root` were `/`.
pub fn open_in_root(root: &OwnedFd, path: &str, flags: i32) -> nix::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| nix::Error::EINVAL)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `c` is a valid NUL-terminated string and `how` a valid open_how
    // of the size we pass; both outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if r < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: the kernel returned a new descriptor that we alone own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Create every missing directory of `path` inside `root`; returns an O_PATH
/// descriptor of the final directory.
pub(crate) fn ensure_dir(root: &OwnedFd, path: &str) -> Result<OwnedFd, MountError> {
    let err = |source| MountError::Create {
        path: path.to_string(),
        source,
    };
    let mut sofar = String::new();
    for comp in Path::new(path).components() {
        let Component::Normal(name) = comp else {
            continue;
        };
        let parent = if sofar.is_empty() { "/" } else { &sofar };
        let parent_fd =
            open_in_root(root, parent, libc::O_PATH | libc::O_DIRECTORY).map_err(err)?;
        match nix::sys::stat::mkdirat(
            Some(parent_fd.as_raw_fd()),
            name,
            Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(err(e)),
        }
        sofar.push('/');
        sofar.push_str(&name.to_string_lossy());
    }
    open_in_root(root, path, libc::O_PATH | libc::O_DIRECTORY).map_err(err)
}

/// Create (if missing) an empty file at `path` inside `root`, its parent
/// directories too; returns an O_PATH descriptor of it.
pub(crate) fn ensure_file(root: &OwnedFd, path: &str) -> Result<OwnedFd, MountError> {
    let err = |source| MountError::Create {
        path: path.to_string(),
        source,
    };
    if let Some(parent) = Path::new(path).parent() {
        ensure_dir(root, &parent.to_string_lossy())?;
    }
    match open_in_root(root, path, libc::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(err(e)),
    }
    drop(open_in_root(root, path, libc::O_CREAT | libc::O_WRONLY).map_err(err)?);
    open_in_root(root, path, libc::O_PATH).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_dir_stays_inside_root_through_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // An absolute symlink and a `..` escape attempt in the image.
        std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("rel")).unwrap();
        let rfd = open_dir(&root).unwrap();
        // Targets that do not exist inside the root: an error, never an escape.
        assert!(ensure_dir(&rfd, "/abs/x").is_err());
        assert!(ensure_dir(&rfd, "/rel/y").is_err());
        assert!(!outside.join("x").exists() && !outside.join("y").exists());
        // Once the targets exist inside the root, the links resolve there.
        let inside = root.join(outside.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(root.join("outside")).unwrap();
        ensure_dir(&rfd, "/abs/x").unwrap();
        ensure_dir(&rfd, "/rel/y").unwrap();
        ensure_file(&rfd, "/abs/f").unwrap();
        assert!(!outside.join("x").exists());
        assert!(!outside.join("y").exists());
        assert!(!outside.join("f").exists());
        assert!(inside.join("x").is_dir());
        assert!(inside.join("f").is_file());
        assert!(root.join("outside").join("y").is_dir());
    }
}

//! The guest's mounts, as data first ([`pod_plan`]) and then carried out
//! ([`apply`]), plus the switch into the pod's root filesystem.
//!
//! Syscall economy: a mount point is only created when the mount fails with
//! ENOENT ([`MkDir::IfMissing`]), except inside the fresh devtmpfs where the
//! directories never exist ([`MkDir::First`]).

use std::ffi::{CStr, CString};

use berth_spec::confine::{MASKED_PATHS, READONLY_PATHS};
use berth_spec::PodSpec;
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

/// The pod's root filesystem: the virtio-fs share of the host's pod
/// rootfs (the overlay), so changes are seen on both sides.
pub const ROOT_FSTYPE: &str = "virtiofs";
/// Where the pod's root is mounted inside the initramfs before switching.
pub const NEWROOT: &str = "/newroot";

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount {fstype} {source_path} on {target}")]
    Mount {
        fstype: String,
        source_path: String,
        target: String,
        #[source]
        source: Errno,
    },
    #[error("cannot bind device node {from} to {to}")]
    BindNode {
        from: String,
        to: String,
        #[source]
        source: Errno,
    },
    #[error("cannot create mount point {path}")]
    MkDir {
        path: String,
        #[source]
        source: Errno,
    },
    #[error("cannot create symlink {link} -> {target}")]
    Symlink {
        link: String,
        target: String,
        #[source]
        source: Errno,
    },
    #[error("cannot switch root to {NEWROOT}: {step} failed")]
    SwitchRoot {
        step: &'static str,
        #[source]
        source: Errno,
    },
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
}

/// When to create a mount point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MkDir {
    /// Try the mount; on ENOENT create the directory and try once more.
    IfMissing,
    /// Create the directory first (it cannot exist yet).
    First,
    /// Like `IfMissing`, creating missing parents too (volume mount points).
    Parents,
}

/// One step of a mount plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Mount {
        source: String,
        target: String,
        fstype: &'static str,
        flags: MsFlags,
        data: Option<&'static str>,
        mkdir: MkDir,
    },
    /// A device node of the initramfs' devtmpfs bound onto a new empty file
    /// `to` (in the pod's nodev /dev: only bound nodes open there).
    BindNode { from: &'static str, to: String },
    /// An empty file (a service pod's /dev/console, which systemd's child
    /// binds its terminal over).
    File { path: String },
    /// A directory, created if missing.
    Dir { path: String },
    /// A symlink; an existing entry is left alone.
    Symlink { target: &'static str, link: String },
    /// Bind `path` onto itself and remount it read-only (skipped when
    /// missing).
    ReadOnly { path: String },
    /// Hide `path`: `null` (the pod's /dev/null) bound over a file, an
    /// empty read-only tmpfs over a directory (skipped when missing).
    Mask { path: String, null: String },
}

#[cfg(test)]
impl Step {
    /// Where this step puts something.
    pub fn path(&self) -> &str {
        match self {
            Step::Mount { target, .. } => target,
            Step::BindNode { to, .. } => to,
            Step::File { path } => path,
            Step::Dir { path } => path,
            Step::Symlink { link, .. } => link,
            Step::ReadOnly { path } | Step::Mask { path, .. } => path,
        }
    }
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Mounts in the initramfs before anything else: devtmpfs on /dev, for the
/// root disk's node and /dev/console. (/proc and /sys are not needed there.)
pub fn initramfs_plan() -> Vec<Step> {
    vec![Step::Mount {
        source: "devtmpfs".into(),
        target: "/dev".into(),
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("mode=0755"),
        mkdir: MkDir::IfMissing,
    }]
}

/// The device nodes a pod's /dev holds (berth's device policy; the ns
/// stage1 makes the same ones), bound from the initramfs' devtmpfs.
const POD_DEVICES: [&str; 6] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// The mounts inside the pod's root (mounted at `root`), like the namespace
/// stage1's: proc, sys (read-only), a /dev of [`POD_DEVICES`],
/// a private devpts, /dev/shm, the /dev/fd and /dev/std* links, and /tmp and
/// /run directories (not tmpfs, as in the ns stage1).
/// Then each volume (`spec.mounts[i]`): the virtio-fs share tagged
/// `vol<i>` at its destination (missing directories created), read-only
/// when asked (the host's server refuses writes to it too). Last, as the ns
/// stage1 does after its pivot_root, the read-only and masked parts of
/// /proc and /sys (`berth_spec::confine`).
///
/// A service pod (`spec.service`) differs: its /proc is mounted by
/// systemd's child once it is in the pod's PID namespace, with /proc's
/// read-only and masked parts ([`service_child_plan`]), so the plan has
/// neither; and /run is a fresh tmpfs (systemd expects that of a container
/// manager, as the ns stage1 gives it).
pub fn pod_plan(spec: &PodSpec, root: &str) -> Result<Vec<Step>, MountError> {
    let at = |p: &str| format!("{}{p}", root.trim_end_matches('/'));
    let service = spec.service.is_some();
    let mut plan = Vec::with_capacity(40);
    if !service {
        plan.push(Step::Mount {
            source: "proc".into(),
            target: at("/proc"),
            fstype: "proc",
            flags: NOSUID_NODEV_NOEXEC,
            data: None,
            mkdir: MkDir::IfMissing,
        });
    }
    plan.extend([
        Step::Mount {
            source: "sysfs".into(),
            target: at("/sys"),
            fstype: "sysfs",
            flags: NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY,
            data: None,
            mkdir: MkDir::IfMissing,
        },
        // The device policy inside the VM, as the ns stage1's: a nodev
        // tmpfs holding only bound nodes (null, zero, full, random,
        // urandom, tty) and the private devpts, so pod root can neither
        // open the guest's other devices (kmsg, port, mem, the console,
        // the disks) nor make a node that opens (the root share is nodev
        // too).
        Step::Mount {
            source: "tmpfs".into(),
            target: at("/dev"),
            fstype: "tmpfs",
            flags: NOSUID_NODEV_NOEXEC.union(MsFlags::MS_STRICTATIME),
            data: Some("mode=755,size=65536k"),
            mkdir: MkDir::IfMissing,
        },
    ]);
    for n in POD_DEVICES {
        plan.push(Step::BindNode { from: n, to: at(n) });
    }
    if service {
        plan.push(Step::File {
            path: at("/dev/console"),
        });
    }
    plan.extend([
        Step::Mount {
            source: "devpts".into(),
            target: at("/dev/pts"),
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
            mkdir: MkDir::First,
        },
        Step::Mount {
            source: "tmpfs".into(),
            target: at("/dev/shm"),
            fstype: "tmpfs",
            flags: NOSUID_NODEV_NOEXEC,
            data: Some("mode=1777,size=65536k"),
            mkdir: MkDir::First,
        },
        // Like the ns stage1: the image's own /tmp and /run are kept (on
        // the writable root disk), only created when missing.
        Step::Dir { path: at("/tmp") },
    ]);
    plan.push(if service {
        Step::Mount {
            source: "tmpfs".into(),
            target: at("/run"),
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
            data: Some("mode=755,size=20%"),
            mkdir: MkDir::IfMissing,
        }
    } else {
        Step::Dir { path: at("/run") }
    });
    for (target, link) in [
        ("pts/ptmx", "/dev/ptmx"),
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        plan.push(Step::Symlink {
            target,
            link: at(link),
        });
    }
    for (i, m) in spec.mounts.iter().enumerate() {
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if m.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        plan.push(Step::Mount {
            source: berth_spec::kvm::volume_tag(i),
            target: at(&m.destination),
            fstype: ROOT_FSTYPE,
            flags,
            data: None,
            mkdir: MkDir::Parents,
        });
    }
    let here = |p: &&&str| !(service && p.starts_with("/proc/"));
    for p in READONLY_PATHS.iter().filter(here) {
        plan.push(Step::ReadOnly { path: at(p) });
    }
    for p in MASKED_PATHS.iter().filter(here) {
        plan.push(Step::Mask {
            path: at(p),
            null: at("/dev/null"),
        });
    }
    Ok(plan)
}

/// A mount made by systemd's child between clone and exec (see
/// [`service_child_plan`]): prepared as C strings before the clone, carried
/// out with raw syscalls (the child shares guest-init's memory while
/// guest-init waits for its exec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawStep {
    Mount {
        source: CString,
        target: CString,
        fstype: CString,
        flags: MsFlags,
    },
    ReadOnly(CString),
    Mask {
        path: CString,
        null: CString,
    },
}

impl RawStep {
    /// Carry the step out: raw syscalls only, no allocation.
    pub fn apply(&self) -> Result<(), Errno> {
        match self {
            RawStep::Mount {
                source,
                target,
                fstype,
                flags,
            } => raw_mount(source, target, Some(fstype), *flags, None),
            RawStep::ReadOnly(path) => read_only_raw(path),
            RawStep::Mask { path, null } => mask_raw(path, null),
        }
    }
}

/// What systemd's child mounts once it is in the pod's PID and cgroup
/// namespaces: cgroup2 on /sys/fs/cgroup (writable, rooted at the pod's
/// payload cgroup through the new cgroup namespace, for systemd to
/// manage), a /proc of the new PID namespace (so the pod's processes, and
/// `berth exec` ones, see only the pod's processes), then /proc's read-only
/// and masked parts, as [`pod_plan`] does for a command pod.
pub fn service_child_plan() -> Result<Vec<RawStep>, MountError> {
    let c = cstr;
    let mut plan = vec![
        RawStep::Mount {
            source: c("cgroup2")?,
            target: c(CGROUP_MOUNT)?,
            fstype: c("cgroup2")?,
            flags: NOSUID_NODEV_NOEXEC,
        },
        RawStep::Mount {
            source: c("proc")?,
            target: c("/proc")?,
            fstype: c("proc")?,
            flags: NOSUID_NODEV_NOEXEC,
        },
    ];
    let proc_only = |p: &&&str| p.starts_with("/proc/");
    for p in READONLY_PATHS.iter().filter(proc_only) {
        plan.push(RawStep::ReadOnly(c(p)?));
    }
    for p in MASKED_PATHS.iter().filter(proc_only) {
        plan.push(RawStep::Mask {
            path: c(p)?,
            null: c("/dev/null")?,
        });
    }
    Ok(plan)
}

/// mount(2) without nix (which may allocate for long paths).
fn raw_mount(
    source: &CStr,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: MsFlags,
    data: Option<&CStr>,
) -> Result<(), Errno> {
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call, or null where mount(2) allows it.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.map_or(std::ptr::null(), CStr::as_ptr),
            flags.bits(),
            data.map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    Errno::result(r).map(drop)
}

fn cstr(s: &str) -> Result<CString, MountError> {
    CString::new(s).map_err(|_| MountError::Nul(s.to_string()))
}

fn mkdir(path: &CStr, shown: &str) -> Result<(), MountError> {
    match nix::unistd::mkdir(path, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(source) => Err(MountError::MkDir {
            path: shown.to_string(),
            source,
        }),
    }
}

/// Run `op`; with [`MkDir::IfMissing`] retry once after creating `path` if
/// it failed with ENOENT, with [`MkDir::First`] create `path` first.
/// Create an empty file (mode 0666 before the umask) if `path` is missing.
fn touch(path: &CStr) -> Result<(), Errno> {
    // SAFETY: open(2) on a NUL-terminated path; the descriptor is closed at once.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o666,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `fd` was just opened here and is owned by nothing else.
    unsafe { libc::close(fd) };
    Ok(())
}

fn with_mountpoint(
    path: &str,
    policy: MkDir,
    mut op: impl FnMut() -> Result<(), Errno>,
) -> Result<Result<(), Errno>, MountError> {
    let c = cstr(path)?;
    if policy == MkDir::First {
        mkdir(&c, path)?;
    }
    match op() {
        Err(Errno::ENOENT) if policy == MkDir::IfMissing => {
            mkdir(&c, path)?;
            Ok(op())
        }
        Err(Errno::ENOENT) if policy == MkDir::Parents => {
            let mut prefix = String::new();
            for part in path.split('/').filter(|p| !p.is_empty()) {
                prefix.push('/');
                prefix.push_str(part);
                mkdir(&cstr(&prefix)?, &prefix)?;
            }
            Ok(op())
        }
        r => Ok(r),
    }
}

/// Carry out one step.
pub fn apply_step(step: &Step) -> Result<(), MountError> {
    match step {
        Step::Mount {
            source,
            target,
            fstype,
            flags,
            data,
            mkdir,
        } => {
            let r = with_mountpoint(target, *mkdir, || {
                mount(
                    Some(source.as_str()),
                    target.as_str(),
                    Some(*fstype),
                    *flags,
                    *data,
                )
            })?;
            r.map_err(|e| mount_error(fstype, source, target, e))
        }
        Step::BindNode { from, to } => {
            let fail = |source| MountError::BindNode {
                from: from.to_string(),
                to: to.clone(),
                source,
            };
            touch(&cstr(to)?).map_err(fail)?;
            mount(
                Some(*from),
                to.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(fail)
        }
        Step::File { path } => touch(&cstr(path)?).map_err(|source| MountError::MkDir {
            path: path.clone(),
            source,
        }),
        Step::Dir { path } => mkdir(&cstr(path)?, path),
        Step::ReadOnly { path } => read_only(path),
        Step::Mask { path, null } => mask(path, null),
        Step::Symlink { target, link } => {
            match nix::unistd::symlinkat(*target, None, link.as_str()) {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(source) => Err(MountError::Symlink {
                    link: link.clone(),
                    target: target.to_string(),
                    source,
                }),
            }
        }
    }
}

fn mount_error(fstype: &str, source: &str, target: &str, e: Errno) -> MountError {
    MountError::Mount {
        fstype: fstype.to_string(),
        source_path: source.to_string(),
        target: target.to_string(),
        source: e,
    }
}

/// [`Step::ReadOnly`]: 2 syscalls, 1 when `path` is missing.
fn read_only(path: &str) -> Result<(), MountError> {
    read_only_raw(&cstr(path)?).map_err(|e| mount_error("bind,ro", path, path, e))
}

fn read_only_raw(path: &CStr) -> Result<(), Errno> {
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    match raw_mount(path, path, None, bind, None) {
        Err(Errno::ENOENT) => return Ok(()),
        r => r?,
    }
    let ro = bind | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC;
    raw_mount(path, path, None, ro, None)
}

/// [`Step::Mask`]: 1 syscall for a file or a missing path, 2 for a
/// directory (binding a file over it fails with ENOTDIR first).
fn mask(path: &str, null: &str) -> Result<(), MountError> {
    mask_raw(&cstr(path)?, &cstr(null)?).map_err(|e| mount_error("mask", null, path, e))
}

fn mask_raw(path: &CStr, null: &CStr) -> Result<(), Errno> {
    match raw_mount(null, path, None, MsFlags::MS_BIND, None) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::ENOTDIR) => raw_mount(
            c"tmpfs",
            path,
            Some(c"tmpfs"),
            MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC,
            Some(c"size=0"),
        ),
        Err(e) => Err(e),
    }
}

/// Carry out a plan, in order, stopping at the first failure.
pub fn apply(plan: &[Step]) -> Result<(), MountError> {
    plan.iter().try_for_each(apply_step)
}

/// Tolerate "already mounted" for the initramfs devtmpfs (a kernel built
/// with DEVTMPFS_MOUNT may have mounted it).
pub fn apply_initramfs(plan: &[Step]) -> Result<(), MountError> {
    for step in plan {
        match apply_step(step) {
            Err(MountError::Mount {
                source: Errno::EBUSY,
                ..
            }) => {}
            r => r?,
        }
    }
    Ok(())
}

/// Mount the pod's root share on [`NEWROOT`] (the virtio device was probed
/// before /init ran; 1 syscall, +1 if /newroot is missing).
pub fn mount_root() -> Result<(), MountError> {
    apply_step(&Step::Mount {
        source: berth_spec::kvm::ROOT_FS_TAG.into(),
        target: NEWROOT.into(),
        fstype: ROOT_FSTYPE,
        // nodev: a node pod root makes in its rootfs never opens (the
        // device policy); setuid binaries of the image keep working.
        flags: MsFlags::MS_NODEV,
        data: None,
        mkdir: MkDir::IfMissing,
    })
}

/// Make [`NEWROOT`] the root, the switch_root way: the initramfs cannot be
/// pivot_root-ed, so move the new root's mount onto `/` and chroot into it.
/// The cwd is the new root already, so no final chdir("/") is needed.
/// (The initramfs' few files are not deleted: ~1 MB, not worth the syscalls.)
pub fn switch_root() -> Result<(), MountError> {
    let fail = |step| move |source| MountError::SwitchRoot { step, source };
    nix::unistd::chdir(NEWROOT).map_err(fail("chdir"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(fail("mount --move"))?;
    nix::unistd::chroot(".").map_err(fail("chroot"))?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("cannot mount cgroup2 on {CGROUP_MOUNT}")]
    Mount(#[source] Errno),
    #[error("cannot write {value:?} to {file}")]
    Write {
        file: &'static str,
        value: String,
        #[source]
        source: Errno,
    },
    #[error("cannot create the pod's guest cgroup")]
    MkDir(#[source] Errno),
}

/// Where the guest's cgroup2 is mounted, briefly, to set the pids limit.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// `--pids N` in the VM, with the ns stage1's meaning: the pod's processes
/// (guest-init counts as one, like the ns pod's init) live in a cgroup with
/// `pids.max = N`. guest-init moves itself there, so the app and every exec
/// process inherit it, then unmounts the hierarchy again: the pod's
/// processes never see it, so they cannot raise their own limit.
pub fn limit_pids(max: u32) -> Result<(), LimitError> {
    mount(
        Some("cgroup2"),
        CGROUP_MOUNT,
        Some("cgroup2"),
        NOSUID_NODEV_NOEXEC,
        None::<&str>,
    )
    .map_err(LimitError::Mount)?;
    let r = (|| {
        let write = |file: &'static str, value: String| {
            std::fs::write(file, value.as_bytes()).map_err(|e| LimitError::Write {
                file,
                value,
                source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })
        };
        match nix::unistd::mkdir("/sys/fs/cgroup/pod", Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(LimitError::MkDir(e)),
        }
        write("/sys/fs/cgroup/cgroup.subtree_control", "+pids".into())?;
        write("/sys/fs/cgroup/pod/pids.max", max.to_string())?;
        write("/sys/fs/cgroup/pod/cgroup.procs", "0".into())
    })();
    let _ = nix::mount::umount2(CGROUP_MOUNT, nix::mount::MntFlags::MNT_DETACH);
    r
}

/// A service pod's cgroups, below the guest's root cgroup (guest-init, PID
/// 1 of the VM, starts there):
///
/// - `pod`: the whole pod; `pids.max` with `--pids`, as for a command pod
///   (guest-init and every exec process count, as the ns pod's init does);
/// - `pod/supervisor`: guest-init moves itself here, so the processes it
///   starts for `berth exec` inherit it;
/// - `pod/payload`: systemd's, the root of its cgroup namespace (systemd
///   must be alone at the root of the tree it manages: cgroup v2 keeps
///   processes out of inner cgroups that delegate controllers).
///
/// Returns `pod/payload/cgroup.procs` open for writing: systemd's child
/// writes itself there, then roots a new cgroup namespace at it. The
/// hierarchy is unmounted again (that fd keeps working): the child mounts
/// its own view of it.
pub fn service_cgroups(pids: Option<u32>) -> Result<std::os::fd::OwnedFd, LimitError> {
    mount(
        Some("cgroup2"),
        CGROUP_MOUNT,
        Some("cgroup2"),
        NOSUID_NODEV_NOEXEC,
        None::<&str>,
    )
    .map_err(LimitError::Mount)?;
    let r = (|| {
        for dir in [
            c"/sys/fs/cgroup/pod",
            c"/sys/fs/cgroup/pod/supervisor",
            c"/sys/fs/cgroup/pod/payload",
        ] {
            match nix::unistd::mkdir(dir, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(LimitError::MkDir(e)),
            }
        }
        if let Some(max) = pids {
            write_cgroup("/sys/fs/cgroup/cgroup.subtree_control", "+pids".into())?;
            write_cgroup("/sys/fs/cgroup/pod/pids.max", max.to_string())?;
        }
        write_cgroup("/sys/fs/cgroup/pod/supervisor/cgroup.procs", "0".into())?;
        crate::sys::open(c"/sys/fs/cgroup/pod/payload/cgroup.procs", libc::O_WRONLY).map_err(
            |source| LimitError::Write {
                file: "/sys/fs/cgroup/pod/payload/cgroup.procs",
                value: String::new(),
                source,
            },
        )
    })();
    let _ = nix::mount::umount2(CGROUP_MOUNT, nix::mount::MntFlags::MNT_DETACH);
    r
}

fn write_cgroup(file: &'static str, value: String) -> Result<(), LimitError> {
    std::fs::write(file, value.as_bytes()).map_err(|e| LimitError::Write {
        file,
        value,
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })
}

/// Remount the root read-only at shutdown, which also flushes it. Falls back
/// to sync(2) when the remount fails (e.g. a file still open for writing).
pub fn remount_root_ro() -> Result<(), Errno> {
    let r = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    );
    if r.is_err() {
        nix::unistd::sync();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_spec::Mount;

    use crate::test_support::spec;

    #[test]
    fn pod_plan_lists_the_standard_mounts() {
        let plan = pod_plan(&spec(), NEWROOT).expect("plan");
        let paths: Vec<&str> = plan.iter().map(Step::path).collect();
        let hidden: Vec<String> = READONLY_PATHS
            .iter()
            .chain(MASKED_PATHS)
            .map(|p| format!("/newroot{p}"))
            .collect();
        let (standard, confined) = paths.split_at(paths.len() - hidden.len());
        assert_eq!(confined, hidden, "read-only then masked paths last");
        assert!(matches!(
            plan.iter().find(|s| s.path() == "/newroot/proc/sys"),
            Some(Step::ReadOnly { .. })
        ));
        assert!(matches!(
            plan.iter().find(|s| s.path() == "/newroot/proc/kcore"),
            Some(Step::Mask { null, .. }) if null == "/newroot/dev/null"
        ));
        assert_eq!(
            standard,
            [
                "/newroot/proc",
                "/newroot/sys",
                "/newroot/dev",
                "/newroot/dev/null",
                "/newroot/dev/zero",
                "/newroot/dev/full",
                "/newroot/dev/random",
                "/newroot/dev/urandom",
                "/newroot/dev/tty",
                "/newroot/dev/pts",
                "/newroot/dev/shm",
                "/newroot/tmp",
                "/newroot/run",
                "/newroot/dev/ptmx",
                "/newroot/dev/fd",
                "/newroot/dev/stdin",
                "/newroot/dev/stdout",
                "/newroot/dev/stderr",
            ]
        );
        let find = |p: &str| plan.iter().find(|s| s.path() == p).cloned();
        match find("/newroot/sys") {
            Some(Step::Mount { fstype, flags, .. }) => {
                assert_eq!(fstype, "sysfs");
                assert!(flags.contains(MsFlags::MS_RDONLY));
            }
            other => panic!("{other:?}"),
        }
        match find("/newroot/proc") {
            Some(Step::Mount { fstype, flags, .. }) => {
                assert_eq!(fstype, "proc");
                assert!(flags.contains(NOSUID_NODEV_NOEXEC));
                assert!(!flags.contains(MsFlags::MS_RDONLY));
            }
            other => panic!("{other:?}"),
        }
        // The device policy: a nodev tmpfs with bound nodes only, and no
        // console for a command pod (the guest's is the host's console.log).
        match find("/newroot/dev") {
            Some(Step::Mount { fstype, flags, .. }) => {
                assert_eq!(fstype, "tmpfs");
                assert!(flags.contains(NOSUID_NODEV_NOEXEC));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            find("/newroot/dev/null"),
            Some(Step::BindNode {
                from: "/dev/null",
                to: "/newroot/dev/null".into()
            })
        );
        assert!(find("/newroot/dev/console").is_none());
        assert!(find("/newroot/dev/kmsg").is_none());
        // Mount points inside the fresh /dev are created first; the
        // rootfs' own directories only when missing.
        for (p, want) in [
            ("/newroot/dev/pts", MkDir::First),
            ("/newroot/dev/shm", MkDir::First),
        ] {
            match find(p) {
                Some(Step::Mount { mkdir, .. }) => assert_eq!(mkdir, want, "{p}"),
                other => panic!("{other:?}"),
            }
        }
        // /dev/pts must come after /dev is in place.
        let pos = |p: &str| paths.iter().position(|x| *x == p);
        assert!(pos("/newroot/dev") < pos("/newroot/dev/pts"));
        assert!(pos("/newroot/dev") < pos("/newroot/dev/fd"));
    }

    #[test]
    fn service_pod_plan_leaves_proc_to_systemds_child_and_mounts_run() {
        let mut s = spec();
        s.service = Some(berth_spec::Service {
            units: vec!["nginx.service".into()],
        });
        let plan = pod_plan(&s, NEWROOT).unwrap();
        assert!(
            plan.iter()
                .all(|st| !st.path().starts_with("/newroot/proc")),
            "{plan:?}"
        );
        assert!(matches!(
            plan.iter().find(|st| st.path() == "/newroot/run"),
            Some(Step::Mount {
                fstype: "tmpfs",
                ..
            })
        ));
        // /sys's masks stay in guest-init's plan.
        assert!(plan.iter().any(|st| st.path() == "/newroot/sys/firmware"));
        let child = service_child_plan().unwrap();
        let mounts: Vec<(&str, &str)> = child
            .iter()
            .filter_map(|st| match st {
                RawStep::Mount { target, fstype, .. } => {
                    Some((target.to_str().unwrap(), fstype.to_str().unwrap()))
                }
                _ => None,
            })
            .collect();
        // cgroup2 first (in the new cgroup namespace), then a /proc of the
        // new PID namespace, then /proc's hidden parts.
        assert_eq!(mounts, [("/sys/fs/cgroup", "cgroup2"), ("/proc", "proc")]);
        let hidden: Vec<&str> = child[2..]
            .iter()
            .map(|st| match st {
                RawStep::ReadOnly(p) | RawStep::Mask { path: p, .. } => p.to_str().unwrap(),
                RawStep::Mount { .. } => panic!("{st:?}"),
            })
            .collect();
        let want: Vec<&str> = READONLY_PATHS
            .iter()
            .chain(MASKED_PATHS)
            .filter(|p| p.starts_with("/proc/"))
            .copied()
            .collect();
        assert_eq!(hidden, want);
        // A command pod is unchanged: /proc first, /run a directory.
        let plan = pod_plan(&spec(), NEWROOT).unwrap();
        assert_eq!(plan[0].path(), "/newroot/proc");
        assert!(matches!(
            plan.iter().find(|st| st.path() == "/newroot/run"),
            Some(Step::Dir { .. })
        ));
    }

    #[test]
    fn raw_steps_on_missing_paths_do_nothing() {
        // Without privileges: a missing path is skipped before any mount.
        RawStep::ReadOnly(c"/nonexistent/berth-test".into())
            .apply()
            .unwrap();
        RawStep::Mask {
            path: c"/nonexistent/berth-test".into(),
            null: c"/dev/null".into(),
        }
        .apply()
        .unwrap();
    }

    #[test]
    fn pod_plan_at_another_root() {
        let plan = pod_plan(&spec(), "/mnt/x/").expect("plan");
        assert!(plan.iter().all(|s| s.path().starts_with("/mnt/x/")));
    }

    #[test]
    fn volumes_are_virtiofs_shares_by_index() {
        let mut s = spec();
        for (dst, ro) in [("/data", false), ("/a/b/c", true)] {
            s.mounts.push(Mount {
                source: "/srv".into(),
                destination: dst.into(),
                read_only: ro,
            });
        }
        let plan = pod_plan(&s, NEWROOT).unwrap();
        let vols: Vec<_> = plan
            .iter()
            .filter_map(|st| match st {
                Step::Mount {
                    source,
                    target,
                    fstype: "virtiofs",
                    flags,
                    mkdir: MkDir::Parents,
                    ..
                } => Some((
                    source.as_str(),
                    target.as_str(),
                    flags.contains(MsFlags::MS_RDONLY),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            vols,
            [
                ("vol0", "/newroot/data", false),
                ("vol1", "/newroot/a/b/c", true)
            ]
        );
    }

    #[test]
    fn parents_of_a_mount_point_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let target = format!("{}/x/y/z", dir.path().display());
        let mut calls = 0;
        let r = with_mountpoint(&target, MkDir::Parents, || {
            calls += 1;
            if std::path::Path::new(&target).is_dir() {
                Ok(())
            } else {
                Err(Errno::ENOENT)
            }
        })
        .unwrap();
        assert_eq!(r, Ok(()));
        assert_eq!(calls, 2);
    }

    #[test]
    fn initramfs_plan_is_just_devtmpfs() {
        let plan = initramfs_plan();
        assert_eq!(plan.len(), 1);
        assert!(matches!(
            &plan[0],
            Step::Mount { fstype: "devtmpfs", target, .. } if target == "/dev"
        ));
    }

    #[test]
    fn symlinks_and_mkdir_against_a_temp_dir() {
        // The filesystem-only steps can be checked without privileges.
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_str().expect("utf8");
        let plan = pod_plan(&spec(), root).expect("plan");
        std::fs::create_dir(dir.path().join("dev")).expect("mkdir dev");
        for step in plan.iter().filter(|s| matches!(s, Step::Symlink { .. })) {
            apply_step(step).expect("symlink");
            apply_step(step).expect("existing symlink is fine");
        }
        let fd = std::fs::read_link(dir.path().join("dev/fd")).expect("readlink");
        assert_eq!(fd, std::path::Path::new("/proc/self/fd"));
        let p = format!("{root}/newdir");
        with_mountpoint(&p, MkDir::First, || Ok(()))
            .expect("mkdir")
            .expect("op");
        assert!(dir.path().join("newdir").is_dir());
        // IfMissing: ENOENT creates the directory and retries once.
        let p = format!("{root}/later");
        let mut calls = 0;
        let r = with_mountpoint(&p, MkDir::IfMissing, || {
            calls += 1;
            if calls == 1 {
                Err(Errno::ENOENT)
            } else {
                Ok(())
            }
        })
        .expect("mkdir");
        assert_eq!((r, calls), (Ok(()), 2));
        assert!(dir.path().join("later").is_dir());
    }
}

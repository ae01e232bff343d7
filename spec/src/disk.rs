//! `--disk SIZE`: the pod's writable layer on a file system of its own, so a
//! pod cannot fill the host's disk. The overlay's upper and work
//! directories live on an ext4 image, `POD_DIR/disk.img` (sparse: it takes
//! only what the pod wrote), created on the pod's first start and kept
//! across stop/start, and loop-mounted (`LO_FLAGS_AUTOCLEAR`) on
//! `POD_DIR/overlay` by the process that builds the pod's root (ns: the
//! pod's init; kvm: the VMM process), in its own mount namespace: the mount
//! and the loop device go when that process does, even after `kill -9`.
//! A pod that writes past its size gets ENOSPC.

use crate::PodDir;
use std::os::fd::AsRawFd;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot create the pod's disk image {path}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mkfs.ext4 failed on {path}: {stderr}")]
    Mkfs { path: String, stderr: String },
    #[error("cannot attach {path} to a loop device")]
    Loop {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount the pod's disk on {path}")]
    Mount {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {path} on the pod's disk")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Create the pod's ext4 image of `size` bytes unless it exists (a pod keeps
/// its disk, and its size, for its life). Call before any thread exists:
/// it runs mkfs.ext4.
pub fn ensure_image(pod: &PodDir, size: u64) -> Result<(), DiskError> {
    let path = pod.disk_image();
    if path.is_file() {
        return Ok(());
    }
    let tmp = path.with_extension("img.tmp");
    let err = |source| DiskError::Create {
        path: tmp.display().to_string(),
        source,
    };
    let f = std::fs::File::create(&tmp).map_err(err)?;
    f.set_len(size).map_err(err)?;
    drop(f);
    // No reserved blocks (it is all the pod's), root-owned root directory.
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-E", "nodiscard,root_owner=0:0"])
        .arg(&tmp)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(err)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(DiskError::Mkfs {
            path: path.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    std::fs::rename(&tmp, &path).map_err(|source| DiskError::Create {
        path: path.display().to_string(),
        source,
    })
}

// linux/loop.h
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attach `image` to a free loop device that clears itself once unmounted;
/// returns the device's path and an open fd of it (close it after mounting).
fn attach(image: &Path) -> std::io::Result<(String, std::fs::File)> {
    let backing = std::fs::File::options()
        .read(true)
        .write(true)
        .open(image)?;
    let ctl = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // Another process may take the free device between the two calls.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let dev = format!("/dev/loop{n}");
        let loopf = std::fs::File::options().read(true).write(true).open(&dev)?;
        // SAFETY: LoopConfig is plain data; all-zero is valid.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = backing.as_raw_fd() as u32;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads the struct we pass, which outlives it.
        let r = unsafe { libc::ioctl(loopf.as_raw_fd(), LOOP_CONFIGURE, &cfg) };
        if r == 0 {
            return Ok((dev, loopf));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::EBUSY))
}

/// The pod's disk image on a loop device, not mounted yet. The device
/// clears itself once it is unmounted and the last fd of it is closed.
#[derive(Debug)]
pub struct Attached {
    /// `/dev/loopN`.
    pub dev: String,
    /// The loop device's minor number (its major is 7).
    pub minor: u32,
    file: std::fs::File,
}

/// Attach the pod's disk image to a free loop device. A caller whose
/// device cgroup allows only what it names (the kvm VMM) attaches first
/// and then allows exactly `b 7:minor`.
pub fn attach_image(pod: &PodDir) -> Result<Attached, DiskError> {
    use std::os::unix::fs::MetadataExt;
    let image = pod.disk_image();
    let loop_err = |source| DiskError::Loop {
        path: image.display().to_string(),
        source,
    };
    let (dev, file) = attach(&image).map_err(loop_err)?;
    let minor = libc::minor(file.metadata().map_err(loop_err)?.rdev());
    Ok(Attached { dev, minor, file })
}

/// Mount the pod's disk on `POD_DIR/overlay` (in the caller's mount
/// namespace, which must be private) and make sure the overlay's upper and
/// work directories exist on it.
pub fn mount(pod: &PodDir) -> Result<(), DiskError> {
    let a = attach_image(pod)?;
    mount_attached(pod, a)
}

/// [`mount`] of a disk [`attach_image`] attached.
pub fn mount_attached(pod: &PodDir, a: Attached) -> Result<(), DiskError> {
    let target = pod.overlay_dir();
    let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let (src, tgt) = (c(&a.dev), c(&target.to_string_lossy()));
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            c"ext4".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            std::ptr::null(),
        )
    };
    drop(a.file);
    if r != 0 {
        return Err(DiskError::Mount {
            path: target.display().to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    for d in [pod.upper(), pod.work()] {
        std::fs::create_dir_all(&d).map_err(|source| DiskError::Dir {
            path: d.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

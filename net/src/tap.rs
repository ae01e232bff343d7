//! Tap devices for the kvm stage1's virtio-net.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// _IOW('T', 202, int), _IOW('T', 208, unsigned int), _IOW('T', 216, int)
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// Size of `struct virtio_net_hdr_v1` (virtio 1.0, with `num_buffers`).
pub const VNET_HDR_LEN: i32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun")]
    Open(#[source] std::io::Error),
    #[error("cannot create tap {name} (TUNSETIFF)")]
    SetIff {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot configure tap {name} ({what})")]
    Configure {
        name: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// How the VMM will use the tap.
#[derive(Debug, Clone, Copy, Default)]
pub struct TapOptions {
    /// Frames carry a 12-byte `virtio_net_hdr_v1` (IFF_VNET_HDR +
    /// TUNSETVNETHDRSZ 12), so the device can pass them through unchanged.
    /// Offloads stay off either way (TUNSETOFFLOAD 0): no checksum or
    /// segmentation offload is negotiated with the guest.
    pub vnet_hdr: bool,
}

/// Open a new, non-persistent tap `name` (IFF_TAP | IFF_NO_PI, close-on-exec,
/// blocking; set O_NONBLOCK yourself if the event loop wants it). The
/// interface exists exactly as long as a descriptor of it is open, so a VMM
/// killed with SIGKILL leaves nothing behind.
pub fn open(name: &str, opts: TapOptions) -> Result<OwnedFd, TapError> {
    let path = CString::new("/dev/net/tun").map_err(|e| TapError::Open(e.into()))?;
    // SAFETY: open(2) on a NUL-terminated path; returns a new fd or -1.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(TapError::Open(std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    let tap = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        return Err(TapError::SetIff {
            name: name.into(),
            source: std::io::Error::from_raw_os_error(libc::ENAMETOOLONG),
        });
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if opts.vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads (and may update the name of) the ifreq we own.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETIFF as _, &mut ifr) } < 0 {
        return Err(TapError::SetIff {
            name: name.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let cfg = |what, req: libc::c_ulong, arg: libc::c_ulong| {
        // SAFETY: these tun ioctls take an integer argument by value.
        if unsafe { libc::ioctl(tap.as_raw_fd(), req as _, arg) } < 0 {
            Err(TapError::Configure {
                name: name.into(),
                what,
                source: std::io::Error::last_os_error(),
            })
        } else {
            Ok(())
        }
    };
    cfg("TUNSETOFFLOAD", TUNSETOFFLOAD, 0)?;
    if opts.vnet_hdr {
        let len: i32 = VNET_HDR_LEN;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which
        // points at a live local.
        if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETVNETHDRSZ as _, &len) } < 0 {
            return Err(TapError::Configure {
                name: name.into(),
                what: "TUNSETVNETHDRSZ",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(tap)
}

//! A tap device opened through `/dev/net/tun`: `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`, a 12-byte `virtio_net_hdr_v1` in front of every frame, no
//! offloads, non-blocking. The [`NetBackend`] it implements speaks bare
//! Ethernet frames: the tap adds and strips the virtio header.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::backend::{NetBackend, VNET_HDR_LEN};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

const TUN_PATH: &str = "/dev/net/tun";

/// Errors of the tap backend.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is not acceptable.
    #[error("invalid tap interface name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Opening /dev/net/tun failed.
    #[error("opening {TUN_PATH}")]
    OpenTun(#[source] io::Error),
    /// TUNSETIFF failed (the name is in use by a non-tap device, or no permission).
    #[error("attaching to tap {name} (TUNSETIFF)")]
    SetIff {
        /// The interface.
        name: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// TUNSETVNETHDRSZ failed.
    #[error("setting the virtio header size of tap {name} (TUNSETVNETHDRSZ)")]
    SetVnetHdrSize {
        /// The interface.
        name: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// TUNSETOFFLOAD failed.
    #[error("turning offloads off on tap {name} (TUNSETOFFLOAD)")]
    SetOffload {
        /// The interface.
        name: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Checks a network interface name: 1 to 15 characters out of
/// `[A-Za-z0-9_.-]`, not `.` or `..`.
pub fn validate_tap_name(name: &str) -> Result<(), TapError> {
    let bad = |reason| {
        Err(TapError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return bad("only A-Z a-z 0-9 _ . - are allowed");
    }
    Ok(())
}

/// An open tap queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the tap interface `name`, or creates it (a non-persistent
    /// tap that disappears when this is dropped) if it does not exist. The
    /// descriptor is non-blocking and close-on-exec; frames carry a 12-byte
    /// virtio header; all offloads are off.
    pub fn open(name: &str) -> Result<Self, TapError> {
        validate_tap_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        Self::attach(file, name)
    }

    /// Takes over a tap another component already opened (TUNSETIFF done,
    /// e.g. put on a bridge by berth's host networking): makes it
    /// non-blocking and applies the same header size and offload settings.
    pub fn from_fd(fd: std::os::fd::OwnedFd, name: &str) -> Result<Self, TapError> {
        validate_tap_name(name)?;
        let file = File::from(fd);
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
        let ret = unsafe {
            let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if flags < 0 {
                flags
            } else {
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
            }
        };
        if ret < 0 {
            return Err(TapError::OpenTun(io::Error::last_os_error()));
        }
        // SAFETY: ifreq is plain old data; TUNGETIFF fills it.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one ifreq into the live local.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut ifr) };
        // SAFETY: reading the flags member the kernel just wrote.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        if ret < 0 || i32::from(flags) & libc::IFF_VNET_HDR == 0 {
            return Err(TapError::SetIff {
                name: name.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the descriptor is not a tap opened with IFF_VNET_HDR",
                ),
            });
        }
        Self::finish(file, name)
    }

    fn attach(file: File, name: &str) -> Result<Self, TapError> {
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: `file` is an open tun descriptor and `ifr` a valid ifreq
        // (NUL-terminated name, validated to fit) that outlives the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            return Err(TapError::SetIff {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        Self::finish(file, name)
    }

    fn finish(file: File, name: &str) -> Result<Self, TapError> {
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which
        // points to a live local.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(TapError::SetVnetHdrSize {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }

        // SAFETY: TUNSETOFFLOAD takes its argument by value (no pointer).
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
        if ret < 0 {
            return Err(TapError::SetOffload {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        log::debug!("vmm: virtio-net: opened tap {name}");
        Ok(Tap {
            file,
            name: name.to_owned(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A duplicate of the descriptor (for the event loop to poll).
    pub fn try_clone_file(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut hdr = [0u8; VNET_HDR_LEN];
        let n = self
            .file
            .read_vectored(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)])?;
        // Offloads are off, so the kernel's header carries at most
        // DATA_VALID; the device writes its own (zeroed) header to the guest.
        n.checked_sub(VNET_HDR_LEN)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short read from tap"))
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        // No offloads were negotiated: the header is all zero (no checksum
        // request, GSO_NONE), whatever the guest put in its own.
        let hdr = [0u8; VNET_HDR_LEN];
        let n = self
            .file
            .write_vectored(&[IoSlice::new(&hdr), IoSlice::new(frame)])?;
        if n != VNET_HDR_LEN + frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to tap",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names() {
        for ok in ["tap0", "berth-1a2b3c4d", "a", "x.y_z-0", "123456789012345"] {
            validate_tap_name(ok).unwrap();
        }
        for bad in [
            "",
            "1234567890123456",
            ".",
            "..",
            "tap 0",
            "tap/0",
            "tap:0",
            "tåp",
        ] {
            let e = validate_tap_name(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}

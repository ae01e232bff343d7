//! Networking inside the VM. In this part a pod has no network device: only
//! loopback, brought up like the ns stage1's private network namespace.

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("--net=host is impossible in a VM (use --stage1=ns)")]
    HostUnsupported,
    #[error("cannot open a socket to configure lo")]
    Socket(#[source] Errno),
    #[error("cannot bring lo up")]
    Up(#[source] Errno),
}

/// Bring `lo` up: socket + SIOCSIFFLAGS (2 syscalls; the socket is
/// close-on-exec and simply left open).
pub fn loopback_up() -> Result<(), NetError> {
    // SAFETY: socket(2) returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetError::Socket(Errno::last()));
    }
    // SAFETY: ifreq is plain data; all-zero is valid. The name is copied
    // within bounds ("lo" plus NUL fits IFNAMSIZ).
    let r = unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
        libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr as *const libc::ifreq)
    };
    Errno::result(r).map(drop).map_err(NetError::Up)
}

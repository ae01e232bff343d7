//! AF_VSOCK sockets for the control protocol (see `berth_spec::control`).

use std::os::fd::{FromRawFd, OwnedFd};

use nix::errno::Errno;

/// The host's CID.
pub const HOST_CID: u32 = libc::VMADDR_CID_HOST;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("cannot create a vsock socket")]
    Socket(#[source] Errno),
    #[error("cannot connect to the host's vsock port {0}")]
    Connect(u32, #[source] Errno),
    #[error("cannot listen on vsock port {0}")]
    Listen(u32, #[source] Errno),
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn socket() -> Result<OwnedFd, VsockError> {
    // SAFETY: socket(2) returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let fd = Errno::result(fd).map_err(VsockError::Socket)?;
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_len() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_vm>()).unwrap_or(0)
}

/// A blocking stream connected to `port` on the host.
pub fn connect_host(port: u32) -> Result<OwnedFd, VsockError> {
    use std::os::fd::AsRawFd;
    let fd = socket()?;
    let a = addr(HOST_CID, port);
    loop {
        // SAFETY: connect with a live sockaddr_vm of the stated length.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&a as *const libc::sockaddr_vm).cast(),
                sockaddr_len(),
            )
        };
        match Errno::result(r) {
            Ok(_) => return Ok(fd),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(VsockError::Connect(port, e)),
        }
    }
}

/// A listening socket on `port` (any CID: the guest's own).
pub fn listen(port: u32) -> Result<OwnedFd, VsockError> {
    use std::os::fd::AsRawFd;
    let fd = socket()?;
    let a = addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: bind with a live sockaddr_vm of the stated length; listen on
    // the fd we own.
    let r = unsafe {
        let r = libc::bind(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            sockaddr_len(),
        );
        if r < 0 {
            r
        } else {
            libc::listen(fd.as_raw_fd(), 16)
        }
    };
    Errno::result(r).map_err(|e| VsockError::Listen(port, e))?;
    Ok(fd)
}

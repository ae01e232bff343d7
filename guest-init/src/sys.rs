//! Thin syscall helpers where libc would add hidden syscalls.

use std::ffi::CStr;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::errno::Errno;

/// openat(AT_FDCWD, path, flags | O_CLOEXEC) as one syscall. musl's open()
/// follows an O_CLOEXEC open with an fcntl(F_SETFD) for kernels older than
/// 2.6.23, costing an extra guest syscall per open.
pub fn open(path: &CStr, flags: libc::c_int) -> Result<OwnedFd, Errno> {
    // SAFETY: openat with a NUL-terminated path; mode 0 is ignored without O_CREAT.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags | libc::O_CLOEXEC,
            0,
        )
    };
    let fd = Errno::result(fd)?;
    let fd = libc::c_int::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn open_is_cloexec() {
        let fd = open(c"/dev/null", libc::O_RDONLY).unwrap();
        // SAFETY: F_GETFD on an fd we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        assert_eq!(
            open(c"/nonexistent", libc::O_RDONLY).unwrap_err(),
            Errno::ENOENT
        );
    }
}

//! Re-executing stage1-ns from a sealed in-memory copy of itself (runc's
//! answer to CVE-2019-5736): a process that joins a pod's namespaces while
//! still running the host's binary exposes that binary as /proc/PID/exe.
//! Non-dumpable processes are out of reach for pod processes without
//! CAP_SYS_PTRACE; for a pod that has it, the binary is copied into a memfd
//! that is sealed against every write, and executed from there: its
//! /proc/PID/exe is then a file nobody can change.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot create a memfd")]
    Create(#[source] std::io::Error),
    #[error("cannot copy /proc/self/exe")]
    Copy(#[source] std::io::Error),
    #[error("cannot seal the copy")]
    Seal(#[source] std::io::Error),
    #[error("cannot execute the sealed copy")]
    Exec(#[source] std::io::Error),
}

/// The environment a sealed re-execution keeps (what stage1 reads).
const KEPT_ENV: &[&str] = &[
    berth_spec::ENV_LOCK_FD,
    berth_spec::ENV_READY_FD,
    berth_spec::ENV_PASS_FDS,
    berth_spec::ENV_LISTEN_FDNAMES,
    "BERTH_NO_SYSTEMD",
    "BERTH_DELEGATED",
    "BERTH_LOG",
];

/// Are we running from a sealed memfd already?
fn running_sealed() -> bool {
    std::fs::read_link("/proc/self/exe")
        .is_ok_and(|p| p.to_string_lossy().starts_with("/memfd:berth-stage1-ns"))
}

/// Re-execute the current command line from a sealed copy of our binary;
/// returns only on failure, or at once when already sealed.
pub fn reexec_sealed() -> Result<(), SealError> {
    if running_sealed() {
        return Ok(());
    }
    let name = c"berth-stage1-ns";
    // SAFETY: memfd_create with a valid C string; returns a new fd or -1.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(SealError::Create(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a descriptor we alone own.
    let mem = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut src = std::fs::File::open("/proc/self/exe").map_err(SealError::Copy)?;
    let mut dst = std::fs::File::from(mem.try_clone().map_err(SealError::Copy)?);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).map_err(SealError::Copy)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).map_err(SealError::Copy)?;
    }
    drop(dst);
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on our memfd; no memory involved.
    if unsafe { libc::fcntl(mem.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(SealError::Seal(std::io::Error::last_os_error()));
    }
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.into_encoded_bytes()).ok())
        .collect();
    // Only the variables the stage1 itself reads: the caller's environment
    // would be readable in /proc/PID/environ by pod root (which, with
    // CAP_SYS_PTRACE, passes the checks non-dumpable would make).
    let env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| {
            KEPT_ENV
                .iter()
                .any(|keep| k.as_encoded_bytes() == keep.as_bytes())
        })
        .filter_map(|(k, v)| {
            let mut e = k.into_encoded_bytes();
            e.push(b'=');
            e.extend(v.into_encoded_bytes());
            CString::new(e).ok()
        })
        .collect();
    let err = nix::unistd::fexecve(mem.as_raw_fd(), &args, &env).unwrap_err();
    Err(SealError::Exec(std::io::Error::from_raw_os_error(
        err as i32,
    )))
}

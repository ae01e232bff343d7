//! The file descriptors stage0 inherited: exactly the ones the user means to
//! pass reach the pod, every other one is closed before any stage1 runs.
//!
//! A pod must start with 0, 1 and 2 only: a descriptor of the caller's
//! shell or supervisor (a directory of the host, a socket) in a pod is a way
//! out of it (the runc CVE-2024-21626 class). The exceptions, always the
//! lowest fds from 3 on, are
//! - systemd socket activation: when `LISTEN_PID` is our pid, the
//!   `LISTEN_FDS` fds from 3 (with `LISTEN_FDNAMES`) — the app gets them as
//!   3.. with `LISTEN_FDS`/`LISTEN_FDNAMES` and its own pid in `LISTEN_PID`;
//! - `--preserve-fds N` (as runc has it): N more fds after those.

use anyhow::{bail, Result};
use berth_spec::{ENV_LISTEN_FDNAMES, ENV_PASS_FDS};
use std::os::fd::RawFd;
use std::process::Command;

/// The descriptors passed through to the pod: 3 .. 3 + `count`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassFds {
    pub count: u32,
    /// Socket activation: the names to give the app (`LISTEN_FDNAMES`).
    pub listen_fdnames: Option<String>,
}

impl PassFds {
    /// The fd numbers passed.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> {
        3..3 + self.count as RawFd
    }

    /// Name them in the stage1's environment.
    pub fn export(&self, c: &mut Command) {
        c.env_remove(ENV_PASS_FDS).env_remove(ENV_LISTEN_FDNAMES);
        if self.count > 0 {
            c.env(ENV_PASS_FDS, self.count.to_string());
            if let Some(n) = &self.listen_fdnames {
                c.env(ENV_LISTEN_FDNAMES, n);
            }
        }
    }
}

/// First thing `berth` does: mark every inherited fd from 3 on close-on-exec
/// (so no child of ours, stage1 included, inherits it by accident), and take
/// the socket-activation fds out of the environment. Returns how many
/// activation fds there are.
pub fn sanitize() -> PassFds {
    let listen = socket_activation();
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only changes flags of
    // our own descriptors; it touches no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        // Kernels before 5.11: walk the fd table.
        for fd in open_fds().into_iter().filter(|fd| *fd > 2) {
            // SAFETY: F_SETFD on a descriptor number; harmless if it closed.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    listen
}

/// `LISTEN_FDS` meant for us (`LISTEN_PID` = our pid); the variables are
/// removed so that they never reach a child by inheritance.
fn socket_activation() -> PassFds {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let ours = pid.and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    match fds.and_then(|n| n.parse::<u32>().ok()) {
        Some(n) if ours && n > 0 => PassFds {
            count: n,
            listen_fdnames: Some(names.unwrap_or_default()),
        },
        _ => PassFds::default(),
    }
}

/// The fds to pass: the activation fds plus `--preserve-fds N`; each one
/// must be open.
pub fn pass(listen: &PassFds, preserve: u32) -> Result<PassFds> {
    let Some(count) = listen.count.checked_add(preserve).filter(|c| *c < 1 << 16) else {
        bail!("invalid --preserve-fds {preserve}: too many descriptors");
    };
    let p = PassFds {
        count,
        listen_fdnames: listen.listen_fdnames.clone(),
    };
    for fd in p.fds() {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            if preserve > 0 {
                bail!("invalid --preserve-fds {preserve}: fd {fd} is not open");
            }
            bail!(
                "socket activation passed LISTEN_FDS={} but fd {fd} is not open",
                listen.count
            );
        }
    }
    Ok(p)
}

fn open_fds() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preserve_needs_open_fds() {
        let none = PassFds::default();
        assert_eq!(pass(&none, 0).unwrap().count, 0);
        // fd 1000 is not open in the test process.
        let e = pass(&none, 998).unwrap_err().to_string();
        assert!(e.contains("--preserve-fds 998"), "{e}");
        assert!(pass(&none, u32::MAX).is_err());
    }
}

//! The stage1 side of a running process (the pod's init for `run`, the
//! command for `exec`): forward signals to it, relay a pty if there is one,
//! and return its exit status once it has been reaped.

use crate::app;
use crate::init::is_forwarded;
use berth_spec::stage1_cli::RawMode;
use berth_spec::EXIT_BERTH_FAILED;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Copy the host terminal's window size to the pod's pty.
pub fn sync_winsize(master: BorrowedFd) {
    if let Some((rows, cols)) = berth_spec::stage1_cli::host_winsize() {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads the winsize we pass; master is a pty.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

/// Supervise `child` until it exits; returns its status in shell convention.
pub fn supervise(child: Pid, sfd: &SignalFd, master: Option<OwnedFd>, relay_stdin: bool) -> i32 {
    let _raw = match &master {
        Some(m) => {
            sync_winsize(m.as_fd());
            if relay_stdin {
                RawMode::enter()
            } else {
                None
            }
        }
        None => None,
    };
    let mut stdin_open = relay_stdin && master.is_some();
    let mut master_open = master.is_some();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let stdin = std::io::stdin();
        if let (true, Some(m)) = (master_open, &master) {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
        }
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| {
                f.revents().is_some_and(|r| {
                    !(r & (PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)).is_empty()
                })
            })
            .collect();
        drop(fds);
        let mut idx = 1;
        if let (true, Some(m)) = (master_open, &master) {
            if ready[idx] && !copy(m.as_fd(), std::io::stdout().as_fd(), &mut buf) {
                master_open = false;
            }
            idx += 1;
        }
        if stdin_open && ready[idx] {
            if let Some(m) = &master {
                if !copy(std::io::stdin().as_fd(), m.as_fd(), &mut buf) {
                    stdin_open = false;
                    // Forward EOF the way a terminal would: VEOF (^D).
                    let _ = nix::unistd::write(m, &[4u8]);
                }
            }
        }
        if ready[0] {
            if let Some(code) = handle_signals(child, sfd, master.as_ref()) {
                if let (true, Some(m)) = (master_open, &master) {
                    drain(m.as_fd(), &mut buf);
                }
                return code;
            }
        }
    }
    // poll failed: fall back to a plain wait.
    match waitpid(child, None) {
        Ok(st) => app::exit_code(st).unwrap_or(EXIT_BERTH_FAILED),
        Err(_) => EXIT_BERTH_FAILED,
    }
}

/// Read every queued signal; Some(code) once `child` has exited.
fn handle_signals(child: Pid, sfd: &SignalFd, master: Option<&OwnedFd>) -> Option<i32> {
    let mut exited = None;
    while let Ok(Some(info)) = sfd.read_signal() {
        let signo = info.ssi_signo as i32;
        match Signal::try_from(signo) {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => break,
                    Ok(st) => {
                        if let Some(code) = app::exit_code(st) {
                            exited = Some(code);
                            break;
                        }
                    }
                    Err(_) => break,
                }
            },
            Ok(Signal::SIGWINCH) => {
                if let Some(m) = master {
                    sync_winsize(m.as_fd());
                }
            }
            Ok(s) if is_forwarded(s) => {
                let _ = kill(child, s);
            }
            _ => {}
        }
    }
    exited
}

/// Copy one chunk; false on EOF or error.
fn copy(from: BorrowedFd, to: BorrowedFd, buf: &mut [u8]) -> bool {
    match nix::unistd::read(from.as_raw_fd(), buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => write_all(to, &buf[..n]),
    }
}

fn write_all(to: BorrowedFd, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        match nix::unistd::write(to, data) {
            Ok(n) => data = &data[n..],
            Err(nix::Error::EINTR) | Err(nix::Error::EAGAIN) => {}
            Err(_) => return false,
        }
    }
    true
}

/// After the process exits, print whatever output is still in the pty.
fn drain(master: BorrowedFd, buf: &mut [u8]) {
    loop {
        let mut fds = [PollFd::new(master, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        if !copy(master, std::io::stdout().as_fd(), buf) {
            return;
        }
    }
}

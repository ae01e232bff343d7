//! The stage1 side of a running process (the pod's init for `run`, the
//! command for `exec`): forward signals to it, relay its streams, and return
//! its exit status once it has been reaped.
//!
//! No process of a pod ever holds a terminal of the host: with `-t` it gets
//! a pty of its own (the master stays here), and without `-t` each of our
//! stdin/stdout/stderr that is a terminal is replaced by a pipe that this
//! side relays ([`Streams::for_pod`]) — a terminal fd in the pod would let
//! pod root push input into the host shell (TIOCSTI) or change its modes.
//! Streams that are not terminals (files, pipes, /dev/null) are handed over
//! as they are, with no copying.

use crate::app;
use crate::init::is_forwarded;
use berth_spec::stage1_cli::RawMode;
use berth_spec::EXIT_BERTH_FAILED;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

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

/// Is `fd` a terminal?
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only queries the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The pod's ends of the pipes that stand in for our terminals: what its
/// fds 0, 1, 2 become (`None`: it keeps ours, which is no terminal).
#[derive(Default)]
pub struct PodStdio {
    pub fds: [Option<OwnedFd>; 3],
}

impl PodStdio {
    /// In the pod's process (between fork/clone and exec): put the pipes in
    /// place as 0, 1, 2. Async-signal-safe.
    pub fn install(&self) -> nix::Result<()> {
        for (target, fd) in self.fds.iter().enumerate() {
            if let Some(fd) = fd {
                nix::unistd::dup2(fd.as_raw_fd(), target as RawFd)?;
            }
        }
        Ok(())
    }
}

/// Our side of the process's streams.
pub enum Streams {
    /// Nothing to relay: it holds our 0, 1, 2 (none is a terminal).
    Direct,
    /// Its own pty: the master is relayed to our stdout, our stdin (with
    /// `stdin`) to the master, our window size follows. `escape`: a byte
    /// on our stdin that detaches (`berth connect`'s ^]): the pty hangs up.
    Pty {
        master: OwnedFd,
        stdin: bool,
        escape: Option<u8>,
    },
    /// Pipes in place of our terminals.
    Pipes {
        /// Write end: our stdin goes there.
        stdin: Option<OwnedFd>,
        /// Read ends: relayed to our stdout / stderr.
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
}

impl Streams {
    /// Pipes for each of our stdin (only with `interactive`; otherwise the
    /// pod reads /dev/null anyway), stdout and stderr that is a terminal.
    pub fn for_pod(interactive: bool) -> nix::Result<(Streams, PodStdio)> {
        let tty = [interactive && is_tty(0), is_tty(1), is_tty(2)];
        if !tty.iter().any(|t| *t) {
            return Ok((Streams::Direct, PodStdio::default()));
        }
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
        let mut pod = PodStdio::default();
        let stdin = if tty[0] {
            let (r, w) = pipe()?;
            pod.fds[0] = Some(r);
            Some(w)
        } else {
            None
        };
        let mut out = [None, None];
        for (i, slot) in out.iter_mut().enumerate() {
            if tty[i + 1] {
                let (r, w) = pipe()?;
                pod.fds[i + 1] = Some(w);
                *slot = Some(r);
            }
        }
        let [stdout, stderr] = out;
        Ok((
            Streams::Pipes {
                stdin,
                stdout,
                stderr,
            },
            pod,
        ))
    }
}

/// One direction of the relay.
struct Copy {
    from: OwnedFd,
    /// Our fd it goes to (1 or 2), or the pod's end (`to_pod`).
    to: RawFd,
    /// Our stdin → the pod: on EOF, a pty gets ^D, a pipe is closed.
    to_pod: Option<OwnedFd>,
    is_pty_input: bool,
    /// Our stdin → the pod: this byte detaches instead of being copied.
    escape: Option<u8>,
}

/// What the relay loop ended with.
enum Ended {
    Exited(i32),
    /// The escape byte came: stop relaying, hang up.
    Detached,
}

/// A service pod's systemd tells its readiness on this socket (sd_notify):
/// `on_ready` runs once, at its first `READY=1`.
pub struct Notify<'a> {
    pub sock: &'a std::os::unix::net::UnixDatagram,
    pub on_ready: &'a mut dyn FnMut(),
}

/// Does an sd_notify datagram say `READY=1`? (Newline-separated
/// assignments; anything else is ignored.)
pub fn says_ready(datagram: &[u8]) -> bool {
    datagram.split(|b| *b == b'\n').any(|l| l == b"READY=1")
}

/// How a signal we got reaches the supervised process.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// As it is.
    AsIs,
    /// It is a service pod's systemd: a request to stop (SIGTERM, SIGINT,
    /// SIGHUP, SIGQUIT) becomes SIGRTMIN+3, its "halt" (SIGTERM would make
    /// it re-execute itself).
    Systemd,
}

impl Forward {
    fn map(self, sig: Signal) -> i32 {
        match (self, sig) {
            (
                Forward::Systemd,
                Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT,
            ) => libc::SIGRTMIN() + 3,
            _ => sig as i32,
        }
    }
}

/// Supervise `child` until it exits; returns its status in shell convention.
pub fn supervise(
    child: Pid,
    sfd: &SignalFd,
    streams: Streams,
    notify: Option<Notify>,
    forward: Forward,
) -> i32 {
    let mut raw = None;
    let mut master_for_winsize = None;
    let mut copies: Vec<Copy> = Vec::new();
    match streams {
        Streams::Direct => {}
        Streams::Pty {
            master,
            stdin,
            escape,
        } => {
            sync_winsize(master.as_fd());
            master_for_winsize = master.try_clone().ok();
            if stdin {
                raw = RawMode::enter();
                if let (Ok(input), Ok(dst)) = (dup_stdin(), master.try_clone()) {
                    copies.push(Copy {
                        from: input,
                        to: -1,
                        to_pod: Some(dst),
                        is_pty_input: true,
                        escape,
                    });
                }
            }
            copies.push(Copy {
                from: master,
                to: 1,
                to_pod: None,
                is_pty_input: false,
                escape: None,
            });
        }
        Streams::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            if let (Some(w), Ok(input)) = (stdin, dup_stdin()) {
                copies.push(Copy {
                    from: input,
                    to: -1,
                    to_pod: Some(w),
                    is_pty_input: false,
                    escape: None,
                });
            }
            for (r, to) in [(stdout, 1), (stderr, 2)] {
                if let Some(r) = r {
                    copies.push(Copy {
                        from: r,
                        to,
                        to_pod: None,
                        is_pty_input: false,
                        escape: None,
                    });
                }
            }
        }
    }
    let code = match relay(
        child,
        sfd,
        &mut copies,
        master_for_winsize.as_ref(),
        notify,
        forward,
    ) {
        Ended::Exited(code) => code,
        Ended::Detached => {
            drop(raw);
            // Every end of the pty closes: the session gets SIGHUP.
            copies.clear();
            drop(master_for_winsize);
            return hang_up(child);
        }
    };
    // The process is gone: print what it wrote before, without waiting for
    // descendants that may still hold the streams.
    let mut buf = vec![0u8; 16 * 1024];
    for c in copies.iter().filter(|c| c.to_pod.is_none()) {
        drain(c.from.as_fd(), c.to, &mut buf);
    }
    drop(raw);
    code
}

/// A duplicate of our stdin, so the copy owns what it polls.
fn dup_stdin() -> nix::Result<OwnedFd> {
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)))
}

fn relay(
    child: Pid,
    sfd: &SignalFd,
    copies: &mut Vec<Copy>,
    master: Option<&OwnedFd>,
    mut notify: Option<Notify>,
    forward: Forward,
) -> Ended {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            copies
                .iter()
                .map(|c| PollFd::new(c.from.as_fd(), PollFlags::POLLIN)),
        );
        if let Some(n) = &notify {
            fds.push(PollFd::new(n.sock.as_fd(), PollFlags::POLLIN));
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
        if ready.len() > copies.len() + 1 && ready[copies.len() + 1] {
            let mut got_ready = false;
            if let Some(n) = &notify {
                // Drain what is queued; a datagram is at most one page.
                while let Ok(len) = n.sock.recv(&mut buf) {
                    got_ready |= says_ready(&buf[..len]);
                }
            }
            if got_ready {
                if let Some(n) = notify.take() {
                    (n.on_ready)();
                }
            }
        }
        // Copies first (output before the exit status), then signals.
        let mut i = copies.len();
        while i > 0 {
            i -= 1;
            if !ready[i + 1] {
                continue;
            }
            let c = &copies[i];
            let to = match &c.to_pod {
                Some(p) => p.as_raw_fd(),
                None => c.to,
            };
            // SAFETY: `to` is one of our open descriptors for as long as
            // `copies[i]` lives (ours 1/2, or the owned pod end).
            let to = unsafe { BorrowedFd::borrow_raw(to) };
            if let Some(esc) = c.escape {
                match copy_until(c.from.as_fd(), to, &mut buf, esc) {
                    Copied::Escaped => return Ended::Detached,
                    Copied::More => continue,
                    Copied::Eof => {}
                }
            } else if copy(c.from.as_fd(), to, &mut buf) {
                continue;
            }
            let c = copies.remove(i);
            if c.is_pty_input {
                if let Some(p) = &c.to_pod {
                    // Forward EOF the way a terminal would: VEOF (^D).
                    let _ = nix::unistd::write(p, &[4u8]);
                }
            }
            // A pipe's write end closes with `c`: the pod reads EOF.
        }
        if ready[0] {
            if let Some(code) = handle_signals(child, sfd, master, forward) {
                return Ended::Exited(code);
            }
        }
    }
    // poll failed: fall back to a plain wait.
    Ended::Exited(match waitpid(child, None) {
        Ok(st) => app::exit_code(st).unwrap_or(EXIT_BERTH_FAILED),
        Err(_) => EXIT_BERTH_FAILED,
    })
}

/// After a detach: the process got SIGHUP from its terminal's hang-up;
/// give it a moment, then kill it. The session ended as the user asked: 0.
fn hang_up(child: Pid) -> i32 {
    let _ = kill(child, Signal::SIGHUP);
    for _ in 0..100 {
        if !matches!(
            waitpid(child, Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::StillAlive)
        ) {
            return 0;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = kill(child, Signal::SIGKILL);
    let _ = waitpid(child, None);
    0
}

enum Copied {
    More,
    Eof,
    Escaped,
}

/// Copy one chunk up to the escape byte (not included).
fn copy_until(from: BorrowedFd, to: BorrowedFd, buf: &mut [u8], esc: u8) -> Copied {
    match nix::unistd::read(from.as_raw_fd(), buf) {
        Ok(0) | Err(_) => Copied::Eof,
        Ok(n) => match buf[..n].iter().position(|b| *b == esc) {
            Some(i) => {
                write_all(to, &buf[..i]);
                Copied::Escaped
            }
            None if write_all(to, &buf[..n]) => Copied::More,
            None => Copied::Eof,
        },
    }
}

/// Read every queued signal; Some(code) once `child` has exited.
fn handle_signals(
    child: Pid,
    sfd: &SignalFd,
    master: Option<&OwnedFd>,
    forward: Forward,
) -> Option<i32> {
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
                // SAFETY: kill(2) with a pid and a signal number.
                unsafe { libc::kill(child.as_raw(), forward.map(s)) };
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

/// After the process exits, copy what is already buffered in `from`.
fn drain(from: BorrowedFd, to: RawFd, buf: &mut [u8]) {
    // SAFETY: `to` is our stdout or stderr, open for the whole process.
    let to = unsafe { BorrowedFd::borrow_raw(to) };
    loop {
        let mut fds = [PollFd::new(from, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        if !copy(from, to, buf) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_one_assignment_among_others() {
        assert!(says_ready(b"READY=1"));
        assert!(says_ready(b"STATUS=Startup finished\nREADY=1\n"));
        assert!(!says_ready(b"READY=0"));
        assert!(!says_ready(b"XREADY=1"));
        assert!(!says_ready(b""));
    }
}

//! Host side of the control protocol (`berth_spec::control`): the main
//! connection that guest-init opens to us, exec connections we open to
//! guest-init through the VMM's hybrid vsock socket, and the relay of a
//! process' streams, signals and window size.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_spec::control::{io, Decoder, Message, Process, EXEC_PORT, MAX_DATA, VERSION};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// How a process started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Started,
    /// It could not be started; it exits with `status` (126/127 for exec
    /// errors, 125 for set-up errors) and `message` says why.
    Failed {
        status: i32,
        message: String,
    },
}

/// One control connection.
pub struct Session {
    conn: UnixStream,
    dec: Decoder,
}

/// The signals a stage1 relays to the process it serves (plus SIGWINCH for
/// terminals). Block them in every thread before creating the relay's
/// signalfd.
pub fn relayed_signals() -> SigSet {
    let mut mask = SigSet::empty();
    for s in berth_spec::FORWARDED_SIGNALS {
        if let Ok(sig) = Signal::try_from(*s) {
            mask.add(sig);
        }
    }
    mask.add(Signal::SIGWINCH);
    mask
}

impl Session {
    fn new(conn: UnixStream) -> Session {
        Session {
            conn,
            dec: Decoder::new(),
        }
    }

    fn recv(&mut self) -> Result<Message> {
        match io::recv(&mut self.conn, &mut self.dec)? {
            Some(m) => Ok(m),
            None => bail!("guest-init closed the control connection"),
        }
    }

    fn send(&mut self, m: &Message) -> Result<()> {
        io::send(&mut self.conn, m).context("control connection")
    }

    /// Wait for guest-init's main connection on `listener` (the VMM's
    /// `<ctl.sock>_1024`) and exchange Hellos.
    pub fn accept_main(listener: &UnixListener) -> Result<Session> {
        let (conn, _) = listener
            .accept()
            .context("cannot accept guest-init's connection")?;
        let mut s = Session::new(conn);
        s.recv()?.expect_hello().map_err(io::invalid)?;
        s.send(&Message::Hello { version: VERSION })?;
        Ok(s)
    }

    /// Open an exec connection to guest-init through the VMM's socket `ctl`
    /// (`CONNECT <port>` / `OK <port>`), and ask it to start `p`.
    pub fn connect_exec(ctl: &Path, p: Process) -> Result<Session> {
        let mut conn = UnixStream::connect(ctl)
            .with_context(|| format!("cannot connect to {}", ctl.display()))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.write_all(format!("CONNECT {EXEC_PORT}\n").as_bytes())?;
        // The VMM answers one short line, or closes when nobody listens.
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.len() < 32 {
            match conn.read(&mut b)? {
                0 => break,
                _ if b[0] == b'\n' => break,
                _ => line.push(b[0]),
            }
        }
        if !line.starts_with(b"OK ") {
            bail!("guest-init is not accepting exec connections (the pod is starting or stopping)");
        }
        conn.set_read_timeout(None)?;
        let mut s = Session::new(conn);
        s.send(&Message::Hello { version: VERSION })?;
        s.send(&Message::Exec(p))?;
        s.recv()?.expect_hello().map_err(io::invalid)?;
        Ok(s)
    }

    /// The Started/Failed report.
    pub fn start(&mut self) -> Result<Start> {
        match self.recv()? {
            Message::Started => Ok(Start::Started),
            Message::Failed { status, message } => Ok(Start::Failed { status, message }),
            other => bail!("guest-init sent {} instead of a start report", other.name()),
        }
    }

    /// Relay until the process' Exit: its stdout/stderr to ours, our stdin
    /// (when `stdin`) to it, our signals (`sigs`, already blocked) to it, and
    /// with `tty` our terminal's size. Returns the exit status, or None when
    /// the connection closed first (the VM stopped).
    ///
    /// With `on_start`, the start report has not come yet: it is handed to
    /// `on_start` whenever it arrives, while the process' output and our
    /// signals are relayed meanwhile (a service pod's systemd writes to its
    /// console and can be stopped while its units start; its report comes
    /// once they are active). A second report is a protocol error.
    ///
    /// With `escape`, that byte on our stdin ends the session (the
    /// connection closes, which makes guest-init hang the process up):
    /// `Some(0)`.
    pub fn relay(
        mut self,
        stdin: bool,
        tty: bool,
        sigs: &SigSet,
        mut on_start: Option<&mut dyn FnMut(Start)>,
        escape: Option<u8>,
    ) -> Result<Option<i32>> {
        let sfd = SignalFd::with_flags(sigs, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .context("cannot create a signalfd")?;
        if tty {
            if let Some((rows, cols)) = berth_spec::stage1_cli::host_winsize() {
                self.send(&Message::Resize { rows, cols })?;
            }
        }
        let mut stdin_open = stdin;
        let mut buf = vec![0u8; MAX_DATA];
        let host_in = std::io::stdin();
        loop {
            // Whole messages first (a start report may have read ahead).
            while let Some(m) = self.dec.next_message().map_err(io::invalid)? {
                match m {
                    Message::Stdout(d) => write_out(&mut std::io::stdout().lock(), &d),
                    Message::Stderr(d) => write_out(&mut std::io::stderr().lock(), &d),
                    Message::Exit(code) => return Ok(Some(code)),
                    Message::Started if on_start.is_some() => {
                        if let Some(f) = on_start.take() {
                            f(Start::Started);
                        }
                    }
                    Message::Failed { status, message } if on_start.is_some() => {
                        if let Some(f) = on_start.take() {
                            f(Start::Failed { status, message });
                        }
                    }
                    other => bail!("guest-init sent an unexpected {} frame", other.name()),
                }
            }
            let mut fds = vec![
                PollFd::new(self.conn.as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            ];
            if stdin_open {
                fds.push(PollFd::new(host_in.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("poll"),
            }
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let (conn_ready, sig_ready, in_ready) = (ready(0), ready(1), ready(2));
            drop(fds);
            if sig_ready {
                while let Ok(Some(info)) = sfd.read_signal() {
                    let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
                    if signo == libc::SIGWINCH {
                        if tty {
                            if let Some((rows, cols)) = berth_spec::stage1_cli::host_winsize() {
                                self.send(&Message::Resize { rows, cols })?;
                            }
                        }
                    } else {
                        self.send(&Message::Signal(signo))?;
                    }
                }
            }
            if in_ready {
                match nix::unistd::read(host_in.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(_) => {
                        stdin_open = false;
                        self.send(&Message::Stdin(Vec::new()))?;
                    }
                    Ok(n) => match escape.and_then(|e| buf[..n].iter().position(|b| *b == e)) {
                        Some(i) => {
                            if i > 0 {
                                self.send(&Message::Stdin(buf[..i].to_vec()))?;
                            }
                            return Ok(Some(0));
                        }
                        None => self.send(&Message::Stdin(buf[..n].to_vec()))?,
                    },
                }
            }
            if conn_ready {
                match self.conn.read(&mut buf) {
                    Ok(0) => return Ok(None),
                    Ok(n) => self.dec.feed(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return Ok(None),
                }
            }
        }
    }
}

/// Write all of `d`; a closed stdout/stderr (a pipe whose reader left) is
/// not an error of the pod's: the rest of its output is dropped.
fn write_out(w: &mut impl Write, d: &[u8]) {
    let _ = w.write_all(d).and_then(|()| w.flush());
}

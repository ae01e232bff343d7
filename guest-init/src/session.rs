//! PID 1's loop over the control protocol (`berth_spec::control`): the main
//! session (the pod's app) and any number of exec sessions, each a process
//! whose stdout/stderr (or terminal) are relayed to its connection as
//! separate streams, whose stdin, signals and window size come from it, and
//! whose exit status ends it. Every child is reaped here, orphans included.
//!
//! One `poll` over raw fds: the SIGCHLD signalfd, the exec listener, each
//! connection and each process' stream ends. No busy loop and no timer.
//! Reads happen only on readiness (they never block); writes to a
//! connection block until the host takes the bytes (the host side always
//! drains its connections), writes to a process' stdin never block (input is
//! queued, bounded, and the connection is not read while the queue is full).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use berth_spec::control::{Decoder, Message, Process, ProtocolError, MAX_DATA, VERSION};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::app::{self, encode_status, AppConfig};
use crate::console;
use crate::service::{self, Readiness, Verdict, Watch};

/// Stop reading a connection while this much stdin is queued for its process.
const MAX_PENDING_INPUT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("control connection")]
    Io(#[source] Errno),
    #[error("control connection closed before the handshake")]
    Closed,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("poll failed")]
    Poll(#[source] Errno),
    #[error("waitpid failed")]
    Wait(#[source] Errno),
    #[error("cannot start the app")]
    App(#[source] app::AppError),
}

/// A control-protocol connection (vsock in the VM, a unix socket in
/// supervise mode). Blocking fd.
pub struct Conn {
    fd: OwnedFd,
    dec: Decoder,
    /// False once the peer closed or broke the connection.
    open: bool,
    wbuf: Vec<u8>,
}

impl Conn {
    pub fn new(fd: OwnedFd) -> Conn {
        Conn {
            fd,
            dec: Decoder::new(),
            open: true,
            wbuf: Vec::new(),
        }
    }

    /// Send one message; a broken connection is marked closed (the process
    /// it serves goes on, as with a closed terminal).
    pub fn send(&mut self, m: &Message) {
        if !self.open {
            return;
        }
        self.wbuf.clear();
        m.encode_into(&mut self.wbuf);
        if let Err(e) = write_all(self.fd.as_raw_fd(), &self.wbuf) {
            console::say(&format!("control connection lost: {}", e.desc()));
            self.open = false;
        }
    }

    /// One read into the decoder. Ok(false) at end of stream.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, Errno> {
        let n = read(self.fd.as_raw_fd(), buf)?;
        self.dec.feed(buf.get(..n).unwrap_or(&[]));
        Ok(n > 0)
    }

    /// Block until one whole message arrives (handshakes only).
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Message, SessionError> {
        loop {
            if let Some(m) = self.dec.next_message()? {
                return Ok(m);
            }
            match self.fill(buf) {
                Ok(true) => {}
                Ok(false) => return Err(SessionError::Closed),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(SessionError::Io(e)),
            }
        }
    }
}

fn read(fd: RawFd, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: reads into a live buffer of the given length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    Errno::result(n).map(|n| usize::try_from(n).unwrap_or(0))
}

fn write_all(fd: RawFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        // SAFETY: writes from a live buffer of the given length.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        match Errno::result(n) {
            Ok(n) => data = data.get(usize::try_from(n).unwrap_or(0)..).unwrap_or(&[]),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A process and the parent's ends of its streams.
struct Proc {
    pid: Pid,
    /// stdout pipe, or the terminal's master in tty mode.
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    /// stdin pipe (None in tty mode: input goes to `out`, the master).
    input: Option<OwnedFd>,
    tty: bool,
    pending_in: Vec<u8>,
    /// Close stdin once `pending_in` is written.
    eof_in: bool,
    /// Exit status once reaped.
    status: Option<i32>,
    /// A service pod's systemd: the host's SIGTERM is its halt request.
    systemd: bool,
    /// A slave end of the terminal, held so that the master never reads
    /// EIO while the process has none open (a service pod's console).
    _console_hold: Option<OwnedFd>,
}

impl Proc {
    fn from_started(s: app::Started) -> Proc {
        let tty = s.tty.is_some();
        Proc {
            systemd: false,
            _console_hold: s.console_hold,
            pid: s.pid,
            out: s.tty.or(s.stdout),
            err: s.stderr,
            input: s.stdin,
            tty,
            pending_in: Vec::new(),
            eof_in: false,
            status: None,
        }
    }

    fn input_fd(&self) -> Option<RawFd> {
        if self.tty {
            self.out.as_ref().map(|f| f.as_raw_fd())
        } else {
            self.input.as_ref().map(|f| f.as_raw_fd())
        }
    }

    /// Write queued input without blocking.
    fn flush_input(&mut self) {
        let Some(fd) = self.input_fd() else {
            self.pending_in.clear();
            return;
        };
        while !self.pending_in.is_empty() {
            // SAFETY: writes from a live buffer to a non-blocking fd.
            let n =
                unsafe { libc::write(fd, self.pending_in.as_ptr().cast(), self.pending_in.len()) };
            match Errno::result(n) {
                Ok(n) => {
                    self.pending_in.drain(..usize::try_from(n).unwrap_or(0));
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                // The process closed its stdin: stop feeding it.
                Err(_) => {
                    self.pending_in.clear();
                    self.input = None;
                    return;
                }
            }
        }
        if self.eof_in && !self.tty {
            self.input = None;
        }
    }

    fn signal(&self, signo: i32) {
        let signo = if self.systemd {
            service::signal_for_systemd(signo)
        } else {
            signo
        };
        if !(1..=64).contains(&signo) {
            console::say(&format!("ignoring signal {signo} from the host"));
            return;
        }
        // SAFETY: kill(2) on a child we started.
        let r = unsafe { libc::kill(self.pid.as_raw(), signo) };
        if r < 0 && Errno::last() != Errno::ESRCH {
            console::say(&format!(
                "cannot send signal {signo} to pid {}: {}",
                self.pid,
                Errno::last().desc()
            ));
        }
    }

    fn resize(&self, rows: u16, cols: u16) {
        let Some(fd) = self.out.as_ref().filter(|_| self.tty) else {
            return;
        };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a live local.
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

/// A connection and the process it serves.
struct Session {
    conn: Conn,
    proc: Proc,
    /// The pod's app: its exit ends the VM.
    main: bool,
}

/// How exec'd processes are confined, inherited from the pod's app.
#[derive(Debug, Clone, Default)]
pub struct ExecPolicy {
    pub confinement: app::Confinement,
    pub drop_ioperm: Option<(u16, u16)>,
}

/// Main-connection handshake: our Hello, the host's Hello, then start the
/// app and report Started or Failed. A service pod's systemd (`systemd`)
/// is only reported here when it could not be started: its Started (or
/// Failed) waits for its units ([`run`] with a [`Readiness`]).
pub fn start_main(
    mut conn: Conn,
    cfg: &AppConfig,
    systemd: bool,
) -> Result<MainSession, SessionError> {
    let mut buf = vec![0u8; 4096];
    conn.send(&Message::Hello { version: VERSION });
    conn.recv(&mut buf)?.expect_hello()?;
    let mut started = app::spawn(cfg).map_err(SessionError::App)?;
    let failed = started.failure.is_some();
    if !systemd || failed {
        report_start(&mut conn, &started, cfg);
    }
    let pidfd = started.pidfd.take();
    let mut proc = Proc::from_started(started);
    proc.systemd = systemd;
    Ok(MainSession {
        session: Session {
            conn,
            proc,
            main: true,
        },
        pidfd,
        failed,
    })
}

/// The pod's app, started.
pub struct MainSession {
    session: Session,
    /// A pidfd of the app when it got its own PID namespace (a service
    /// pod's systemd).
    pub pidfd: Option<OwnedFd>,
    /// It could not be started (and exits at once); reported already.
    pub failed: bool,
}

impl MainSession {
    pub fn pid(&self) -> Pid {
        self.session.proc.pid
    }
}

fn report_start(conn: &mut Conn, started: &app::Started, cfg: &AppConfig) {
    match started.failure {
        Some(f) => conn.send(&Message::Failed {
            status: f.status(),
            // The protocol's message has no "berth: " prefix: the host adds
            // it where it prints the line.
            message: f
                .message(cfg)
                .trim_end()
                .trim_start_matches("berth: ")
                .to_string(),
        }),
        None => conn.send(&Message::Started),
    }
}

#[derive(Clone, Copy)]
enum Tag {
    Service(Watch),
    Sig,
    Listen,
    Pending(usize),
    Conn(usize),
    Out(usize),
    Err(usize),
    In(usize),
}

/// Run until the app exits; return its status (exit code or 128+signal).
/// `listener` accepts exec connections. With `service` (a service pod's
/// systemd that started), the main connection's start report is sent once
/// [`Readiness`] reaches its verdict.
pub fn run(
    sfd: BorrowedFd<'_>,
    main: MainSession,
    listener: Option<BorrowedFd<'_>>,
    policy: ExecPolicy,
    mut service: Option<Readiness>,
) -> Result<i32, SessionError> {
    let mut sessions = vec![main.session];
    let mut pending: Vec<Conn> = Vec::new();
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        for s in sessions
            .iter_mut()
            .filter(|s| s.conn.open && s.conn.dec.pending() > 0)
        {
            apply_messages(s);
        }
        // Finish sessions whose process was reaped: the rest of its output,
        // then its status.
        let mut i = 0;
        while i < sessions.len() {
            if let Some(status) = sessions[i].proc.status {
                let mut s = sessions.swap_remove(i);
                drain_output(&mut s, &mut buf);
                if let Some(r) = service.as_mut().filter(|r| s.main && !r.reported()) {
                    s.conn.send(&Message::Failed {
                        status: berth_spec::EXIT_BERTH_FAILED,
                        message: r.exited_early(status),
                    });
                }
                s.conn.send(&Message::Exit(status));
                if s.main {
                    return Ok(status);
                }
            } else {
                i += 1;
            }
        }

        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut tags: Vec<Tag> = Vec::new();
        let mut add = |fd: RawFd, events: libc::c_short, tag: Tag| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            tags.push(tag);
        };
        add(sfd.as_raw_fd(), libc::POLLIN, Tag::Sig);
        if let Some(r) = &service {
            for (fd, w) in r.fds() {
                add(fd, libc::POLLIN, Tag::Service(w));
            }
        }
        if let Some(l) = listener {
            add(l.as_raw_fd(), libc::POLLIN, Tag::Listen);
        }
        for (i, c) in pending.iter().enumerate() {
            add(c.fd.as_raw_fd(), libc::POLLIN, Tag::Pending(i));
        }
        for (i, s) in sessions.iter().enumerate() {
            if s.conn.open && s.proc.pending_in.len() < MAX_PENDING_INPUT {
                add(s.conn.fd.as_raw_fd(), libc::POLLIN, Tag::Conn(i));
            }
            if let Some(f) = &s.proc.out {
                add(f.as_raw_fd(), libc::POLLIN, Tag::Out(i));
            }
            if let Some(f) = &s.proc.err {
                add(f.as_raw_fd(), libc::POLLIN, Tag::Err(i));
            }
            if !s.proc.pending_in.is_empty() {
                if let Some(fd) = s.proc.input_fd() {
                    add(fd, libc::POLLOUT, Tag::In(i));
                }
            }
        }
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: poll over a live array of `nfds` pollfd structs.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), nfds, -1) };
        match Errno::result(r) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(SessionError::Poll(e)),
        }

        let mut accepted = false;
        let mut finished_pending = Vec::new();
        for (pfd, tag) in fds.iter().zip(tags.iter()) {
            let ev = pfd.revents;
            if ev == 0 {
                continue;
            }
            match *tag {
                Tag::Service(w) => {
                    if let Some(v) = service.as_mut().and_then(|r| r.readable(w)) {
                        report_verdict(&mut sessions, v);
                    }
                }
                Tag::Sig => {
                    drain_signalfd(sfd);
                    reap(&mut sessions, service.as_mut())?;
                }
                Tag::Listen => accepted = true,
                Tag::Pending(i) => {
                    if let Some(c) = pending.get_mut(i) {
                        match handshake_step(c, &mut buf) {
                            Ok(None) => {}
                            Ok(Some(p)) => finished_pending.push((i, Some(p))),
                            Err(e) => {
                                console::say(&format!(
                                    "exec connection refused: {}",
                                    berth_spec::ErrorChain(&e)
                                ));
                                finished_pending.push((i, None));
                            }
                        }
                    }
                }
                Tag::Conn(i) => {
                    if let Some(s) = sessions.get_mut(i) {
                        conn_readable(s, &mut buf);
                    }
                }
                Tag::Out(i) | Tag::Err(i) => {
                    if let Some(s) = sessions.get_mut(i) {
                        let is_err = matches!(tag, Tag::Err(_));
                        relay_output(s, is_err, &mut buf);
                    }
                }
                Tag::In(i) => {
                    if let Some(s) = sessions.get_mut(i) {
                        s.proc.flush_input();
                    }
                }
            }
        }
        if let Some(v) = service.as_mut().and_then(Readiness::verdict) {
            report_verdict(&mut sessions, v);
        }
        // Start the processes whose handshakes completed (highest index
        // first so the others keep theirs).
        finished_pending.sort_by_key(|p| std::cmp::Reverse(p.0));
        for (i, process) in finished_pending {
            if i >= pending.len() {
                continue;
            }
            let conn = pending.swap_remove(i);
            if let Some(p) = process {
                if let Some(s) = start_exec(conn, &p, &policy) {
                    sessions.push(s);
                }
            }
        }
        if accepted {
            if let Some(l) = listener {
                match accept(l) {
                    Ok(Accepted::Host(fd)) => pending.push(Conn::new(fd)),
                    Ok(Accepted::Refused(cid)) => console::say(&format!(
                        "refused an exec connection from vsock CID {cid}: only the host may connect"
                    )),
                    Err(Errno::EAGAIN | Errno::EINTR) => {}
                    Err(e) => {
                        console::say(&format!("cannot accept an exec connection: {}", e.desc()))
                    }
                }
            }
        }
    }
}

/// A service pod's start report, on the main connection.
fn report_verdict(sessions: &mut [Session], v: Verdict) {
    let Some(main) = sessions.iter_mut().find(|s| s.main) else {
        return;
    };
    main.conn.send(&match v {
        Verdict::Started => Message::Started,
        Verdict::Failed(message) => Message::Failed {
            status: berth_spec::EXIT_BERTH_FAILED,
            message,
        },
    });
}

enum Accepted {
    /// A connection from the host (or, in supervise mode, a unix socket).
    Host(OwnedFd),
    /// A vsock connection from another CID — in practice the guest itself
    /// (vsock loopback): closed. Only the host may start exec processes, or
    /// any guest process could get a root shell past `--user`.
    Refused(u32),
}

fn accept(l: BorrowedFd<'_>) -> Result<Accepted, Errno> {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len =
        libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_storage>()).unwrap_or(0);
    // SAFETY: accept4 writes at most `len` bytes of the peer's address into
    // `peer`, which outlives the call; the new fd is ours.
    let fd = unsafe {
        libc::accept4(
            l.as_raw_fd(),
            (&mut peer as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    };
    let fd = Errno::result(fd)?;
    // SAFETY: the kernel just returned this fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(check_peer(fd, &peer))
}

/// Keep the connection only if it comes from the host's CID.
fn check_peer(fd: OwnedFd, peer: &libc::sockaddr_storage) -> Accepted {
    if i32::from(peer.ss_family) != libc::AF_VSOCK {
        return Accepted::Host(fd);
    }
    // SAFETY: the family says the storage holds a sockaddr_vm, which is
    // smaller than sockaddr_storage.
    let vm: &libc::sockaddr_vm =
        unsafe { &*(peer as *const libc::sockaddr_storage).cast::<libc::sockaddr_vm>() };
    if vm.svm_cid == crate::vsock::HOST_CID {
        Accepted::Host(fd)
    } else {
        Accepted::Refused(vm.svm_cid)
    }
}

/// One read of an exec connection still in its handshake (host Hello, then
/// Exec). Returns the process once both arrived.
fn handshake_step(c: &mut Conn, buf: &mut [u8]) -> Result<Option<Process>, SessionError> {
    match c.fill(buf) {
        Ok(true) => {}
        Ok(false) => return Err(SessionError::Closed),
        Err(Errno::EINTR | Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(SessionError::Io(e)),
    }
    // The Hello is consumed once; remember it by the decoder having
    // yielded it (the host sends both frames back to back).
    loop {
        match c.dec.next_message()? {
            None => return Ok(None),
            Some(Message::Hello { version }) => {
                if version != VERSION {
                    return Err(ProtocolError::Version(version).into());
                }
            }
            Some(Message::Exec(p)) => return Ok(Some(p)),
            Some(other) => return Err(ProtocolError::Unexpected(other.name()).into()),
        }
    }
}

fn start_exec(mut conn: Conn, p: &Process, policy: &ExecPolicy) -> Option<Session> {
    conn.send(&Message::Hello { version: VERSION });
    let started = AppConfig::from_process(p, &policy.confinement)
        .map(|mut cfg| {
            // Whatever the user (see main: root too).
            cfg.drop_ioperm = policy.drop_ioperm;
            cfg
        })
        .and_then(|cfg| app::spawn(&cfg).map(|st| (st, cfg)));
    match started {
        Ok((started, cfg)) => {
            report_start(&mut conn, &started, &cfg);
            Some(Session {
                conn,
                proc: Proc::from_started(started),
                main: false,
            })
        }
        // Nothing was started: the set-up failure is the whole session.
        Err(e) => {
            conn.send(&Message::Failed {
                status: berth_spec::EXIT_BERTH_FAILED,
                message: berth_spec::ErrorChain(&e).to_string(),
            });
            conn.send(&Message::Exit(berth_spec::EXIT_BERTH_FAILED));
            None
        }
    }
}

/// The connection has bytes (or closed): apply its messages.
fn conn_readable(s: &mut Session, buf: &mut [u8]) {
    match s.conn.fill(buf) {
        Ok(true) => {}
        Ok(false) => return hang_up(s),
        Err(Errno::EINTR | Errno::EAGAIN) => return,
        Err(_) => return hang_up(s),
    }
    apply_messages(s);
}

/// Apply the whole messages the connection's decoder holds (a handshake
/// read may have taken the first stdin or signal frames with it).
fn apply_messages(s: &mut Session) {
    loop {
        match s.conn.dec.next_message() {
            Ok(None) => break,
            Ok(Some(Message::Stdin(data))) => {
                if data.is_empty() {
                    s.proc.eof_in = true;
                } else if s.proc.input_fd().is_some() {
                    s.proc.pending_in.extend_from_slice(&data);
                }
            }
            Ok(Some(Message::Signal(n))) => s.proc.signal(n),
            Ok(Some(Message::Resize { rows, cols })) => s.proc.resize(rows, cols),
            Ok(Some(other)) => {
                console::say(&format!("control: unexpected {} frame", other.name()));
                return hang_up(s);
            }
            Err(e) => {
                console::say(&format!("control: {e}"));
                return hang_up(s);
            }
        }
    }
    s.proc.flush_input();
}

/// The host went away: a process nobody can see any more is killed (its
/// process group: it is a session leader), as a terminal hang-up would.
fn hang_up(s: &mut Session) {
    s.conn.open = false;
    if s.proc.status.is_none() {
        // SAFETY: kill(2) on the process group of a child we started.
        unsafe { libc::kill(-s.proc.pid.as_raw(), libc::SIGKILL) };
    }
}

/// Relay one chunk of stdout/stderr (or the terminal) to the connection.
fn relay_output(s: &mut Session, is_err: bool, buf: &mut [u8]) {
    let slot = if is_err {
        &mut s.proc.err
    } else {
        &mut s.proc.out
    };
    let Some(fd) = slot.as_ref() else { return };
    match read(fd.as_raw_fd(), buf) {
        Ok(0) => *slot = None,
        Ok(n) => {
            let data = buf.get(..n).unwrap_or(&[]).to_vec();
            s.conn.send(&if is_err {
                Message::Stderr(data)
            } else {
                Message::Stdout(data)
            });
        }
        Err(Errno::EINTR | Errno::EAGAIN) => {}
        // EIO: the terminal's last slave closed.
        Err(_) => *slot = None,
    }
}

/// After the process exited: forward what its streams still hold (without
/// waiting for other writers, e.g. its background children). Bounded: at
/// most 64 chunks per stream.
fn drain_output(s: &mut Session, buf: &mut [u8]) {
    for is_err in [false, true] {
        for _ in 0..64 {
            let fd = if is_err { &s.proc.err } else { &s.proc.out };
            let Some(raw) = fd.as_ref().map(|f| f.as_raw_fd()) else {
                break;
            };
            let mut probe = libc::pollfd {
                fd: raw,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll over one live pollfd, without waiting.
            if unsafe { libc::poll(&mut probe, 1, 0) } <= 0 {
                break;
            }
            relay_output(s, is_err, buf);
        }
    }
}

/// Consume pending signalfd records (SIGCHLDs coalesce anyway).
fn drain_signalfd(sfd: BorrowedFd<'_>) {
    let mut b = [0u8; 16 * std::mem::size_of::<libc::signalfd_siginfo>()];
    let _ = read(sfd.as_raw_fd(), &mut b);
}

/// Reap every exited child; record the status of the ones we serve (and
/// of a service pod's check).
fn reap(sessions: &mut [Session], mut service: Option<&mut Readiness>) -> Result<(), SessionError> {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
            Ok(ws) => {
                let Some(pid) = ws.pid() else { continue };
                let Some(code) = encode_status(ws) else {
                    continue;
                };
                if let Some(s) = sessions.iter_mut().find(|s| s.proc.pid == pid) {
                    s.proc.status = Some(code);
                } else if let Some(r) = service.as_deref_mut() {
                    r.reaped(pid, code);
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(SessionError::Wait(e)),
        }
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;

    #[test]
    fn only_the_hosts_cid_may_exec() {
        let vm = |cid: u32| {
            // SAFETY: plain data, all-zero is valid.
            let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            // SAFETY: sockaddr_vm fits in sockaddr_storage.
            let v = unsafe {
                &mut *(&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_vm>()
            };
            v.svm_family = libc::AF_VSOCK as libc::sa_family_t;
            v.svm_cid = cid;
            s
        };
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        assert!(matches!(check_peer(fd(), &vm(2)), Accepted::Host(_)));
        assert!(matches!(check_peer(fd(), &vm(3)), Accepted::Refused(3)));
        assert!(matches!(check_peer(fd(), &vm(1)), Accepted::Refused(1)));
        // SAFETY: plain data, all-zero is valid.
        let mut unix: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        unix.ss_family = libc::AF_UNIX as libc::sa_family_t;
        assert!(matches!(check_peer(fd(), &unix), Accepted::Host(_)));
    }
}

//! One stream connection between a guest vsock socket and a host unix
//! stream: the state machine, credit accounting in both directions, and
//! bounded buffering of guest → host bytes.
//!
//! Credit (virtio spec 5.10.6.3): every packet we send carries our
//! `buf_alloc` ([`CONN_BUF_SIZE`]) and `fwd_cnt` (bytes written to the unix
//! stream); the guest may have at most `buf_alloc` bytes in flight, so the
//! pending buffer toward the host never exceeds it (a guest that overruns is
//! reset). In the other direction we never send more RW bytes than the
//! guest's `buf_alloc - (tx_cnt - fwd_cnt)`, and read from the unix stream
//! only what fits that credit and the guest's rx buffer.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::packet::{op, VsockHeader, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Receive buffer we advertise per connection (`buf_alloc`), and the bound
/// of bytes buffered toward the host.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Send a CREDIT_UPDATE once this many bytes were forwarded since the guest
/// last heard our `fwd_cnt`, or once its view of our free space drops below it.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;
/// How long the guest has to answer our REQUEST.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection waits for the peer (the guest's RST after
/// our full SHUTDOWN, or the host draining our buffer after the guest's).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reset connection waits for an rx buffer to deliver its RST.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

const RX_RST: u8 = 1;
const RX_REQUEST: u8 = 2;
const RX_RESPONSE: u8 = 4;
const RX_RW: u8 = 8;
const RX_CREDIT_UPDATE: u8 = 16;
const RX_CREDIT_REQUEST: u8 = 32;
const RX_SHUTDOWN: u8 = 64;

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST queued or sent, waiting for the guest's RESPONSE.
    LocalInit,
    /// Data flows.
    Established,
    /// Reset: an RST is queued for the guest; removed once it is delivered.
    Killed,
}

/// One connection. Ports: `local_port` is the host side, `peer_port` the guest's.
pub struct Connection {
    stream: UnixStream,
    local_port: u32,
    peer_port: u32,
    guest_cid: u64,
    state: ConnState,
    rx_flags: u8,
    shutdown_flags: u32,
    // Guest → host.
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_sent: Wrapping<u32>,
    to_host: VecDeque<u8>,
    ctl_to_host: Vec<u8>,
    guest_shut: u32,
    host_write_shut: bool,
    // Host → guest.
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    credit_requested: bool,
    host_eof: bool,
    deadline: Option<Instant>,
    finished: bool,
    /// Interest currently registered with the event loop (None: not registered).
    pub registered: Option<EventSet>,
    /// Whether the connection sits in the muxer's rx queue.
    pub queued: bool,
}

/// `send(2)` without SIGPIPE and without blocking.
fn send_nosignal(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is a valid readable slice of `buf.len()` bytes for the
    // duration of the call; `fd` is a socket owned by the caller.
    let r = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Whether the peer of `fd` has closed both directions (POLLHUP), as
/// opposed to a half-close (`shutdown(SHUT_WR)`).
fn peer_hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid, initialised pollfd; zero timeout, so no blocking.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

impl Connection {
    fn new(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
        state: ConnState,
        rx_flags: u8,
    ) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            guest_cid,
            state,
            rx_flags,
            shutdown_flags: 0,
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_sent: Wrapping(0),
            to_host: VecDeque::new(),
            ctl_to_host: Vec::new(),
            guest_shut: 0,
            host_write_shut: false,
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            credit_requested: false,
            host_eof: false,
            deadline: None,
            finished: false,
            registered: None,
            queued: false,
        }
    }

    /// A host-initiated connection (after `CONNECT <peer_port>`): a REQUEST
    /// is queued for the guest.
    pub fn new_local(stream: UnixStream, local_port: u32, peer_port: u32, guest_cid: u64) -> Self {
        Self::new(
            stream,
            local_port,
            peer_port,
            guest_cid,
            ConnState::LocalInit,
            RX_REQUEST,
        )
    }

    /// A guest-initiated connection whose host end is connected: a RESPONSE
    /// is queued for the guest.
    pub fn new_peer(stream: UnixStream, req: &VsockHeader, guest_cid: u64) -> Self {
        let mut c = Self::new(
            stream,
            req.dst_port,
            req.src_port,
            guest_cid,
            ConnState::Established,
            RX_RESPONSE,
        );
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c
    }

    /// The unix stream's descriptor.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The connection state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// Host-side port.
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// Whether packets wait for the guest.
    pub fn has_rx(&self) -> bool {
        self.rx_flags != 0
    }

    /// Whether the connection is over and can be dropped.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// When [`Connection::timeout`] must run.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Takes the stream (for deregistration before it is closed).
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// Credit the guest has left for our RW bytes.
    fn peer_free(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub((self.tx_cnt - self.peer_fwd_cnt).0)
    }

    /// Resets the connection: RST queued for the guest, unix stream shut.
    pub fn kill(&mut self, now: Instant) {
        if self.state == ConnState::Killed {
            return;
        }
        self.state = ConnState::Killed;
        self.rx_flags = RX_RST;
        self.to_host.clear();
        self.ctl_to_host.clear();
        let _ = self.stream.shutdown(Shutdown::Both);
        self.deadline = Some(now + KILL_TIMEOUT);
    }

    /// Header of a packet to the guest; records that the guest now knows
    /// our `fwd_cnt` (so a pending CREDIT_UPDATE is no longer needed).
    fn header(&mut self, op: u16, flags: u32, len: usize) -> VsockHeader {
        self.last_fwd_sent = self.fwd_cnt;
        self.rx_flags &= !RX_CREDIT_UPDATE;
        VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: len as u32,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Interest the unix stream needs now.
    pub fn desired_interest(&self) -> EventSet {
        let mut s = EventSet::empty();
        if self.state != ConnState::Established {
            return s;
        }
        if !self.host_eof
            && self.guest_shut & SHUTDOWN_RCV == 0
            && self.rx_flags & RX_RW == 0
            && self.peer_free() > 0
        {
            s |= EventSet::IN;
        }
        if !self.to_host.is_empty() || !self.ctl_to_host.is_empty() {
            s |= EventSet::OUT;
        }
        s
    }

    /// Readiness of the unix stream.
    pub fn notify(&mut self, set: EventSet, now: Instant) {
        if self.state != ConnState::Established {
            return;
        }
        let readable = set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR);
        if readable && self.desired_interest().contains(EventSet::IN) {
            self.rx_flags |= RX_RW;
        }
        if set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            self.flush(now);
        }
    }

    /// Writes buffered guest bytes to the unix stream, as far as it takes them.
    fn flush(&mut self, now: Instant) {
        let fd = self.stream.as_raw_fd();
        while !self.ctl_to_host.is_empty() {
            match send_nosignal(fd, &self.ctl_to_host) {
                Ok(n) => {
                    self.ctl_to_host.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vmm: vsock: writing to the host stream: {e}");
                    self.kill(now);
                    return;
                }
            }
        }
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match send_nosignal(fd, front) {
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vmm: vsock: writing to the host stream: {e}");
                    self.kill(now);
                    return;
                }
            }
        }
        let unacked = (self.fwd_cnt - self.last_fwd_sent).0;
        let guest_view_free = CONN_BUF_SIZE.saturating_sub((self.rx_cnt - self.last_fwd_sent).0);
        if unacked > 0
            && (unacked >= CREDIT_UPDATE_THRESHOLD || guest_view_free < CREDIT_UPDATE_THRESHOLD)
        {
            self.rx_flags |= RX_CREDIT_UPDATE;
        }
        self.check_close(now);
    }

    /// Half- and full-close bookkeeping after progress.
    fn check_close(&mut self, now: Instant) {
        if self.state != ConnState::Established {
            return;
        }
        let drained = self.to_host.is_empty() && self.ctl_to_host.is_empty();
        if drained && self.guest_shut & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            let _ = self.stream.shutdown(Shutdown::Write);
            self.host_write_shut = true;
        }
        let guest_closed = self.guest_shut == SHUTDOWN_RCV | SHUTDOWN_SEND;
        let both_done = self.guest_shut & SHUTDOWN_SEND != 0 && self.host_eof;
        if guest_closed || both_done {
            if drained {
                // Nothing can flow any more: RST ends it on both sides.
                self.kill(now);
            } else if self.deadline.is_none() {
                self.deadline = Some(now + SHUTDOWN_TIMEOUT);
            }
        }
    }

    /// A packet from the guest for this connection.
    pub fn send_pkt(&mut self, hdr: &VsockHeader, payload: &[u8], now: Instant) {
        if hdr.op == op::RST {
            // The guest dropped the connection (or refused our REQUEST):
            // close the unix stream, no reply.
            self.rx_flags = 0;
            self.finished = true;
            return;
        }
        if self.state == ConnState::Killed {
            return;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_free() > 0 {
            self.credit_requested = false;
        }
        match (self.state, hdr.op) {
            (ConnState::LocalInit, op::RESPONSE) => {
                self.state = ConnState::Established;
                self.deadline = None;
                self.ctl_to_host = format!("OK {}\n", self.local_port).into_bytes();
                self.flush(now);
            }
            (ConnState::Established, op::RW) => {
                if self.guest_shut & SHUTDOWN_SEND != 0 {
                    log::debug!("vmm: vsock: RW after SHUTDOWN(SEND); resetting");
                    self.kill(now);
                    return;
                }
                let in_flight = (self.rx_cnt - self.fwd_cnt).0 as usize;
                if in_flight + payload.len() > CONN_BUF_SIZE as usize {
                    log::debug!("vmm: vsock: guest exceeded its credit; resetting");
                    self.kill(now);
                    return;
                }
                self.to_host.extend(payload);
                self.rx_cnt += Wrapping(payload.len() as u32);
                self.flush(now);
            }
            (ConnState::Established, op::CREDIT_UPDATE) => {}
            (ConnState::Established, op::CREDIT_REQUEST) => self.rx_flags |= RX_CREDIT_UPDATE,
            (ConnState::Established, op::SHUTDOWN) => {
                self.guest_shut |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if self.guest_shut & SHUTDOWN_RCV != 0 {
                    self.rx_flags &= !RX_RW;
                }
                self.check_close(now);
            }
            (state, o) => {
                log::debug!("vmm: vsock: op {o} in state {state:?}; resetting");
                self.kill(now);
            }
        }
    }

    /// The deadline passed.
    pub fn timeout(&mut self, now: Instant) {
        match self.deadline {
            Some(d) if d <= now => {}
            _ => return,
        }
        if self.state == ConnState::Killed {
            self.finished = true;
        } else {
            log::debug!(
                "vmm: vsock: connection {}:{} timed out in {:?}",
                self.local_port,
                self.peer_port,
                self.state
            );
            self.kill(now);
        }
    }

    /// The next packet for the guest; RW payload (at most `buf.len()` bytes,
    /// and at most the guest's credit) is read from the unix stream into
    /// `buf`. Returns None when nothing is pending.
    pub fn recv_pkt(&mut self, buf: &mut [u8], now: Instant) -> Option<(VsockHeader, usize)> {
        let mut rw_tried = false;
        // Each pass returns, or clears a flag, or tries RW (once).
        loop {
            if self.rx_flags & RX_RST != 0 {
                self.rx_flags = 0;
                self.finished = true;
                return Some((self.header(op::RST, 0, 0), 0));
            }
            if self.rx_flags & RX_REQUEST != 0 {
                self.rx_flags &= !RX_REQUEST;
                self.deadline = Some(now + REQUEST_TIMEOUT);
                return Some((self.header(op::REQUEST, 0, 0), 0));
            }
            if self.rx_flags & RX_RESPONSE != 0 {
                self.rx_flags &= !RX_RESPONSE;
                return Some((self.header(op::RESPONSE, 0, 0), 0));
            }
            if self.rx_flags & RX_RW != 0 && !rw_tried {
                rw_tried = true;
                self.rx_flags &= !RX_RW;
                if let Some(pkt) = self.read_rw(buf, now) {
                    return Some(pkt);
                }
                continue;
            }
            if self.rx_flags & RX_CREDIT_UPDATE != 0 {
                return Some((self.header(op::CREDIT_UPDATE, 0, 0), 0));
            }
            if self.rx_flags & RX_CREDIT_REQUEST != 0 {
                self.rx_flags &= !RX_CREDIT_REQUEST;
                return Some((self.header(op::CREDIT_REQUEST, 0, 0), 0));
            }
            if self.rx_flags & RX_SHUTDOWN != 0 {
                self.rx_flags &= !RX_SHUTDOWN;
                let flags = self.shutdown_flags;
                return Some((self.header(op::SHUTDOWN, flags, 0), 0));
            }
            return None;
        }
    }

    /// Reads host bytes for an RW packet (flag already cleared).
    fn read_rw(&mut self, buf: &mut [u8], now: Instant) -> Option<(VsockHeader, usize)> {
        if self.state != ConnState::Established
            || self.host_eof
            || self.guest_shut & SHUTDOWN_RCV != 0
        {
            return None;
        }
        if buf.is_empty() {
            // An rx buffer with room for a header only: keep the data for
            // the next buffer.
            self.rx_flags |= RX_RW;
            return None;
        }
        let max = buf.len().min(self.peer_free() as usize);
        if max == 0 {
            // No credit: ask once; the guest's next header re-opens reading.
            if !self.credit_requested {
                self.credit_requested = true;
                self.rx_flags |= RX_CREDIT_REQUEST;
            }
            return None;
        }
        loop {
            match (&self.stream).read(&mut buf[..max]) {
                Ok(0) => {
                    self.host_eof = true;
                    if peer_hung_up(self.stream.as_raw_fd()) {
                        // The host closed its socket: tell the guest both
                        // directions are done and wait for its RST.
                        self.shutdown_flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                        self.to_host.clear();
                        self.deadline = Some(now + SHUTDOWN_TIMEOUT);
                    } else {
                        self.shutdown_flags = SHUTDOWN_SEND;
                    }
                    self.rx_flags |= RX_SHUTDOWN;
                    // If the guest is done sending too, this ends it (RST).
                    self.check_close(now);
                    return None;
                }
                Ok(n) => {
                    self.tx_cnt += Wrapping(n as u32);
                    if n == max {
                        // There may be more.
                        self.rx_flags |= RX_RW;
                    }
                    return Some((self.header(op::RW, 0, n), n));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vmm: vsock: reading the host stream: {e}");
                    self.kill(now);
                    return None;
                }
            }
        }
    }
}

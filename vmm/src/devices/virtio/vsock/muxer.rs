//! The unix-socket host side (see the protocol in the [module doc](super)):
//! the listening socket at `uds_path`, host connections waiting for their
//! `CONNECT` line, and the table of [`Connection`]s. Implements
//! [`VsockBackend`] for the device.
//!
//! Event-loop interest is not touched here: every change is recorded as an
//! [`FdOp`] which the event handler applies, so this code stays testable
//! without an epoll loop, and a socket is only closed after it left the loop.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::backend::VsockBackend;
use super::connection::Connection;
use super::packet::{op, VsockHeader, HOST_CID, TYPE_STREAM};

/// Most connections at once; more are refused (RST / closed).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most accepted host streams still waiting for their CONNECT line.
pub const MAX_PENDING_CONNECTS: usize = 64;
/// Longest CONNECT line, newline included.
pub const MAX_CONNECT_LINE: usize = 32;
/// How long a host stream has to send its CONNECT line.
pub const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// First host-side port given to host-initiated connections.
pub const LOCAL_PORT_START: u32 = 1 << 30;
/// Replies (RST) to packets without a connection that may wait for rx
/// buffers; while full, the device stops taking packets from the guest.
pub const CONTROL_QUEUE_MAX: usize = 256;

/// Errors setting up the host side.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Removing a stale socket failed.
    #[error("removing stale socket {0}")]
    RemoveStale(PathBuf, #[source] std::io::Error),
    /// Binding the listening socket failed.
    #[error("binding {0}")]
    Bind(PathBuf, #[source] std::io::Error),
}

/// A change of event-loop interest, applied by the event handler in order.
#[derive(Debug)]
pub enum FdOp {
    /// Start watching `fd`.
    Add(RawFd, EventSet),
    /// Change what `fd` is watched for.
    Modify(RawFd, EventSet),
    /// Stop watching `fd`; the stream, if any, is closed afterwards.
    Remove(RawFd, Option<UnixStream>),
    /// Close an unwatched stream — in order, since earlier operations in
    /// the same batch may still name its descriptor.
    Close(UnixStream),
}

/// Parses a `CONNECT <port>` line (without its newline); None if malformed.
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    if words.next()? != "CONNECT" {
        return None;
    }
    let port = words.next()?;
    if words.next().is_some() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 10 {
        return None;
    }
    port.parse().ok()
}

/// `<uds_path>_<port>`: where a guest connection to host port `port` goes.
pub fn host_port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = OsString::from(uds_path.as_os_str());
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects to a unix listener without blocking (a full backlog is EAGAIN).
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data for which all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::from(ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain system call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is an initialised sockaddr_un and `len` does not exceed
    // its size (checked above).
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// A connection's key: (host-side port, guest-side port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
}

struct PendingConnect {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// The host side of the device.
pub struct UnixMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    listener_id: Option<(u64, u64)>,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    pending: HashMap<RawFd, PendingConnect>,
    rxq: VecDeque<ConnKey>,
    control: VecDeque<VsockHeader>,
    fd_ops: Vec<FdOp>,
    next_local_port: u32,
}

impl UnixMuxer {
    /// Listens on `uds_path` (a stale socket there is removed first) for
    /// a guest with CID `guest_cid`.
    pub fn bind(uds_path: &Path, guest_cid: u64) -> Result<Self, MuxerError> {
        match std::fs::symlink_metadata(uds_path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(uds_path)
                .map_err(|e| MuxerError::RemoveStale(uds_path.to_owned(), e))?,
            Ok(_) => return Err(MuxerError::NotASocket(uds_path.to_owned())),
            Err(_) => {}
        }
        let listener =
            UnixListener::bind(uds_path).map_err(|e| MuxerError::Bind(uds_path.to_owned(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| MuxerError::Bind(uds_path.to_owned(), e))?;
        let listener_id = std::fs::symlink_metadata(uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(UnixMuxer {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            listener_id,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            pending: HashMap::new(),
            rxq: VecDeque::new(),
            control: VecDeque::new(),
            fd_ops: Vec::new(),
            next_local_port: LOCAL_PORT_START,
        })
    }

    /// The listening socket's descriptor (watched for EPOLLIN).
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Number of connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Interest changes since the last call, to apply in order.
    pub fn take_fd_ops(&mut self) -> Vec<FdOp> {
        std::mem::take(&mut self.fd_ops)
    }

    /// The earliest deadline of a connection or a pending CONNECT.
    pub fn next_deadline(&self) -> Option<Instant> {
        let c = self.conns.values().filter_map(Connection::deadline).min();
        let p = self.pending.values().map(|p| p.deadline).min();
        match (c, p) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Accepts host connections until none is waiting.
    pub fn accept(&mut self, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("vmm: vsock: accepting on {}: {e}", self.uds_path.display());
                    return;
                }
            };
            if self.pending.len() >= MAX_PENDING_CONNECTS
                || self.conns.len() >= MAX_CONNECTIONS
                || stream.set_nonblocking(true).is_err()
            {
                log::debug!("vmm: vsock: too many host connections; closing one");
                continue;
            }
            let fd = stream.as_raw_fd();
            self.fd_ops.push(FdOp::Add(fd, EventSet::IN));
            self.pending.insert(
                fd,
                PendingConnect {
                    stream,
                    line: Vec::new(),
                    deadline: now + CONNECT_LINE_TIMEOUT,
                },
            );
        }
    }

    fn drop_pending(&mut self, fd: RawFd) {
        if let Some(p) = self.pending.remove(&fd) {
            self.fd_ops.push(FdOp::Remove(fd, Some(p.stream)));
        }
    }

    /// Reads a pending stream's CONNECT line, byte by byte so that nothing
    /// after the newline is consumed (it is data for the guest).
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match (&p.stream).read(&mut byte) {
                Ok(0) => break None,
                Ok(_) if byte[0] == b'\n' => break parse_connect_line(&p.line),
                Ok(_) => {
                    p.line.push(byte[0]);
                    if p.line.len() >= MAX_CONNECT_LINE {
                        break None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
        };
        let Some(port) = port else {
            log::debug!("vmm: vsock: bad CONNECT line from the host; closing");
            self.drop_pending(fd);
            return;
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let Some(local_port) = self.alloc_local_port() else {
            self.fd_ops.push(FdOp::Remove(fd, Some(p.stream)));
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let mut conn = Connection::new_local(p.stream, local_port, port, self.guest_cid);
        conn.registered = Some(EventSet::IN);
        log::debug!("vmm: vsock: host connects to guest port {port} (host port {local_port})");
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.after_touch(key);
    }

    fn alloc_local_port(&mut self) -> Option<u32> {
        if self.conns.len() >= MAX_CONNECTIONS {
            return None;
        }
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(LOCAL_PORT_START);
            if !self.conns.keys().any(|k| k.local_port == p) {
                return Some(p);
            }
        }
        None
    }

    /// Readiness of a pending or connected host stream.
    pub fn notify(&mut self, fd: RawFd, set: EventSet, now: Instant) {
        if self.pending.contains_key(&fd) {
            self.read_connect_line(fd);
            return;
        }
        let Some(key) = self.by_fd.get(&fd).copied() else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.notify(set, now);
        }
        self.after_touch(key);
    }

    /// Expires pending CONNECTs and connections whose deadline passed.
    pub fn handle_timeouts(&mut self, now: Instant) {
        let late: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            log::debug!("vmm: vsock: no CONNECT line in time; closing");
            self.drop_pending(fd);
        }
        let late: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            if let Some(c) = self.conns.get_mut(&key) {
                c.timeout(now);
            }
            self.after_touch(key);
        }
    }

    /// Drops every connection (the driver reset the device); host streams
    /// are closed, pending CONNECTs kept.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_conn(key);
        }
        self.rxq.clear();
        self.control.clear();
    }

    fn remove_conn(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        let fd = conn.fd();
        self.by_fd.remove(&fd);
        let registered = conn.registered.is_some();
        let stream = conn.into_stream();
        self.fd_ops.push(if registered {
            FdOp::Remove(fd, Some(stream))
        } else {
            FdOp::Close(stream)
        });
    }

    /// After any change to a connection: drop it if over, sync its
    /// interest, queue it for rx if it has packets.
    fn after_touch(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.finished() {
            self.remove_conn(key);
            return;
        }
        let want = conn.desired_interest();
        let fd = conn.fd();
        match conn.registered {
            None if !want.is_empty() => {
                self.fd_ops.push(FdOp::Add(fd, want));
                conn.registered = Some(want);
            }
            Some(_) if want.is_empty() => {
                self.fd_ops.push(FdOp::Remove(fd, None));
                conn.registered = None;
            }
            Some(have) if have != want => {
                self.fd_ops.push(FdOp::Modify(fd, want));
                conn.registered = Some(want);
            }
            _ => {}
        }
        if conn.has_rx() && !conn.queued {
            conn.queued = true;
            self.rxq.push_back(key);
        }
    }

    /// Queues an RST answering `hdr` (a packet without a connection).
    fn reply_rst(&mut self, hdr: &VsockHeader) {
        if hdr.op == op::RST {
            return;
        }
        if self.control.len() >= CONTROL_QUEUE_MAX {
            log::debug!("vmm: vsock: control queue full; RST dropped");
            return;
        }
        self.control.push_back(VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            len: 0,
            type_: hdr.type_,
            op: op::RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    /// A guest REQUEST to host port `hdr.dst_port`: connect to `<uds>_<port>`.
    fn connect_to_host(&mut self, hdr: &VsockHeader) {
        if self.conns.len() >= MAX_CONNECTIONS {
            log::debug!("vmm: vsock: too many connections; refusing");
            self.reply_rst(hdr);
            return;
        }
        let path = host_port_path(&self.uds_path, hdr.dst_port);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let key = ConnKey {
                    local_port: hdr.dst_port,
                    peer_port: hdr.src_port,
                };
                let conn = Connection::new_peer(stream, hdr, self.guest_cid);
                self.by_fd.insert(conn.fd(), key);
                self.conns.insert(key, conn);
                self.after_touch(key);
            }
            Err(e) => {
                log::debug!("vmm: vsock: guest connect to {}: {e}", path.display());
                self.reply_rst(hdr);
            }
        }
    }
}

impl VsockBackend for UnixMuxer {
    fn send_pkt(&mut self, hdr: &VsockHeader, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            log::debug!(
                "vmm: vsock: packet from CID {} to CID {} dropped",
                hdr.src_cid,
                hdr.dst_cid
            );
            return;
        }
        let now = Instant::now();
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.type_ != TYPE_STREAM {
            log::debug!("vmm: vsock: socket type {} not supported", hdr.type_);
            self.reply_rst(hdr);
            return;
        }
        match self.conns.get_mut(&key) {
            Some(conn) => {
                conn.send_pkt(hdr, payload, now);
                self.after_touch(key);
            }
            None if hdr.op == op::REQUEST => self.connect_to_host(hdr),
            None => self.reply_rst(hdr),
        }
    }

    fn reject_pkt(&mut self, hdr: &VsockHeader) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        match self.conns.get_mut(&key) {
            Some(conn) => {
                conn.kill(Instant::now());
                self.after_touch(key);
            }
            None => self.reply_rst(hdr),
        }
    }

    fn has_pending_rx(&self) -> bool {
        !self.control.is_empty() || !self.rxq.is_empty()
    }

    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(VsockHeader, usize)> {
        if let Some(h) = self.control.pop_front() {
            return Some((h, 0));
        }
        let now = Instant::now();
        // Round robin; each queued connection is looked at most once.
        for _ in 0..self.rxq.len() {
            let Some(key) = self.rxq.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let pkt = conn.recv_pkt(buf, now);
            self.after_touch(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    fn tx_blocked(&self) -> bool {
        self.control.len() >= CONTROL_QUEUE_MAX
    }
}

impl Drop for UnixMuxer {
    fn drop(&mut self) {
        // Remove our socket file, unless someone replaced it meanwhile.
        let same = std::fs::symlink_metadata(&self.uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if same.is_some() && same == self.listener_id {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parser() {
        assert_eq!(parse_connect_line(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 0"), Some(0));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect_line(b"CONNECT  7\r"), Some(7));
        assert_eq!(parse_connect_line(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect_line(b"CONNECT 00000000001"), None);
        assert_eq!(parse_connect_line(b"CONNECT"), None);
        assert_eq!(parse_connect_line(b"CONNECT "), None);
        assert_eq!(parse_connect_line(b"CONNECT -1"), None);
        assert_eq!(parse_connect_line(b"CONNECT +1"), None);
        assert_eq!(parse_connect_line(b"CONNECT 1 2"), None);
        assert_eq!(parse_connect_line(b"CONNECT x"), None);
        assert_eq!(parse_connect_line(b"connect 1"), None);
        assert_eq!(parse_connect_line(b"LISTEN 1"), None);
        assert_eq!(parse_connect_line(b""), None);
        assert_eq!(parse_connect_line(b"CONNECT \xff"), None);
    }

    #[test]
    fn host_port_path_appends_port() {
        assert_eq!(
            host_port_path(Path::new("/run/x/v.sock"), 1024),
            PathBuf::from("/run/x/v.sock_1024")
        );
    }
}

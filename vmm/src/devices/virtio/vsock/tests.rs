//! The test is the guest driver: it owns three split virtqueues in an
//! in-memory guest, posts rx buffers, sends tx packets and reads the used
//! rings, while the real event handler runs the device in an
//! `EventManager` and real unix sockets are the host side.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::connection::CONN_BUF_SIZE;
use super::event_handler::VsockEventHandler;
use super::muxer::{host_port_path, LOCAL_PORT_START};
use super::packet::{op, HDR_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::super::{GuestMem, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use super::device::*;
use super::packet::{VsockHeader, MAX_PKT_PAYLOAD};

const GUEST_CID: u32 = 42;
const QSZ: u16 = QUEUE_SIZE;
const SLOT: u64 = 0x1_0000;
const MEM_SIZE: u64 = 64 << 20;
const RX_ROOM: u32 = 4096;
const GUEST_BUF: u32 = 64 * 1024;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// Driver side of one split virtqueue.
struct TestQueue {
    desc: u64,
    avail: u64,
    used: u64,
    data: u64,
    free: Vec<u16>,
    avail_idx: u16,
    last_used: u16,
    chains: HashMap<u16, Vec<u16>>,
}

impl TestQueue {
    fn new(index: u64) -> (Self, Queue) {
        let base = 0x1_0000 * (index + 1);
        let t = TestQueue {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            data: 0x100_0000 * (index + 1),
            free: (0..QSZ).rev().collect(),
            avail_idx: 0,
            last_used: 0,
            chains: HashMap::new(),
        };
        let mut q = Queue::new(QSZ).unwrap();
        q.set_size(QSZ);
        q.set_desc_table_address(Some(t.desc as u32), Some(0));
        q.set_avail_ring_address(Some(t.avail as u32), Some(0));
        q.set_used_ring_address(Some(t.used as u32), Some(0));
        q.set_ready(true);
        (t, q)
    }

    fn slot(&self, idx: u16) -> u64 {
        self.data + u64::from(idx) * SLOT
    }

    /// Publishes a chain; `f(slot index)` gives each descriptor's
    /// (addr, len, flags) — addr None means the descriptor's own slot.
    fn add(
        &mut self,
        mem: &GuestMem,
        parts: &[(Option<u64>, u32, u16)],
        data: &[&[u8]],
    ) -> Option<u16> {
        if parts.is_empty() || self.free.len() < parts.len() {
            return None;
        }
        let idxs: Vec<u16> = (0..parts.len()).map(|_| self.free.pop().unwrap()).collect();
        for (k, (addr, len, flags)) in parts.iter().enumerate() {
            let i = idxs[k];
            let addr = addr.unwrap_or(self.slot(i));
            if let Some(d) = data.get(k) {
                mem.write_slice(d, GuestAddress(self.slot(i))).unwrap();
            }
            let last = k + 1 == parts.len();
            let flags = if last { *flags } else { *flags | F_NEXT };
            let next = if last { 0 } else { idxs[k + 1] };
            let at = self.desc + 16 * u64::from(i);
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(*len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        let head = idxs[0];
        let ring = self.avail + 4 + 2 * u64::from(self.avail_idx % QSZ);
        mem.write_obj(head, GuestAddress(ring)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        self.chains.insert(head, idxs);
        Some(head)
    }

    /// New used entries: (head, used len, descriptor slots of the chain).
    fn take_used(&mut self, mem: &GuestMem) -> Vec<(u16, u32, Vec<u16>)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.last_used != idx {
            let at = self.used + 4 + 8 * u64::from(self.last_used % QSZ);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            let head = id as u16;
            let chain = self
                .chains
                .remove(&head)
                .expect("used head was not available");
            self.free.extend(chain.iter().copied());
            out.push((head, len, chain));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }
}

type Em = EventManager<Arc<Mutex<VsockEventHandler>>>;

struct Harness {
    dir: PathBuf,
    uds: PathBuf,
    mem: GuestMem,
    dev: Arc<Mutex<Vsock>>,
    handler: Arc<Mutex<VsockEventHandler>>,
    em: Em,
    q: Vec<TestQueue>,
    evts: Vec<EventFd>,
    rx_split: bool,
    rx_posted: usize,
    rx_target: usize,
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bvs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Harness {
    fn new(name: &str) -> Self {
        Self::with_rx(name, 64)
    }

    /// A harness keeping `rx_target` rx buffers posted.
    fn with_rx(name: &str, rx_target: usize) -> Self {
        // RUST_LOG=debug shows the device's view.
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = temp_dir(name);
        let uds = dir.join("v.sock");
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut dev = Vsock::new(GUEST_CID, &uds, irq).unwrap();
        let evts = dev
            .queue_evts()
            .iter()
            .map(|e| e.try_clone().unwrap())
            .collect();
        let mut q = Vec::new();
        let mut queues = Vec::new();
        for i in 0..3 {
            let (t, qq) = TestQueue::new(i);
            q.push(t);
            queues.push(qq);
        }
        dev.activate(mem.clone(), queues).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = Em::new().unwrap();
        let handler = Arc::new(Mutex::new(VsockEventHandler::new(dev.clone()).unwrap()));
        em.add_subscriber(handler.clone());
        let mut h = Harness {
            dir,
            uds,
            mem,
            dev,
            handler,
            em,
            q,
            evts,
            rx_split: false,
            rx_posted: 0,
            rx_target,
        };
        h.restock_rx();
        h.pump();
        h
    }

    /// Runs the event loop until nothing is ready; a loop that never
    /// quiesces is a busy loop and fails the test.
    fn pump(&mut self) {
        for _ in 0..20_000 {
            if self.em.run_with_timeout(0).unwrap() == 0 {
                return;
            }
        }
        panic!("the event loop never quiesces (busy loop)");
    }

    /// Waits up to `ms` for an event (deadlines), then pumps.
    fn wait(&mut self, ms: i32) {
        self.em.run_with_timeout(ms).unwrap();
        self.pump();
    }

    fn restock_rx(&mut self) {
        while self.rx_posted < self.rx_target {
            let ok = if self.rx_split {
                self.q[RXQ].add(
                    &self.mem,
                    &[(None, HDR_LEN as u32, F_WRITE), (None, RX_ROOM, F_WRITE)],
                    &[],
                )
            } else {
                self.q[RXQ].add(&self.mem, &[(None, HDR_LEN as u32 + RX_ROOM, F_WRITE)], &[])
            };
            if ok.is_none() {
                break;
            }
            self.rx_posted += 1;
        }
        self.evts[RXQ].write(1).unwrap();
    }

    /// Sends one packet (header and payload in separate descriptors).
    fn send(&mut self, hdr: &VsockHeader, payload: &[u8]) -> bool {
        let h = hdr.to_bytes();
        let ok = if payload.is_empty() {
            self.q[TXQ].add(&self.mem, &[(None, HDR_LEN as u32, 0)], &[&h])
        } else {
            self.q[TXQ].add(
                &self.mem,
                &[(None, HDR_LEN as u32, 0), (None, payload.len() as u32, 0)],
                &[&h, payload],
            )
        };
        self.evts[TXQ].write(1).unwrap();
        ok.is_some()
    }

    /// Reads packets from used rx buffers (then re-posts buffers).
    fn collect(&mut self) -> Vec<(VsockHeader, Vec<u8>)> {
        self.q[TXQ].take_used(&self.mem);
        let mut out = Vec::new();
        for (_, len, chain) in self.q[RXQ].take_used(&self.mem) {
            self.rx_posted -= 1;
            if len == 0 {
                continue;
            }
            assert!(len as usize >= HDR_LEN);
            // Gather the chain's bytes.
            let mut bytes = Vec::new();
            let sizes: Vec<u32> = if chain.len() == 2 {
                vec![HDR_LEN as u32, RX_ROOM]
            } else {
                vec![HDR_LEN as u32 + RX_ROOM]
            };
            for (i, s) in chain.iter().zip(sizes) {
                let mut b = vec![0u8; s as usize];
                self.mem
                    .read_slice(&mut b, GuestAddress(self.q[RXQ].slot(*i)))
                    .unwrap();
                bytes.extend(b);
            }
            let mut hb = [0u8; HDR_LEN];
            hb.copy_from_slice(&bytes[..HDR_LEN]);
            let hdr = VsockHeader::from_bytes(&hb);
            assert_eq!(hdr.len as usize + HDR_LEN, len as usize);
            assert_eq!(hdr.src_cid, HOST_CID);
            assert_eq!(hdr.dst_cid, u64::from(GUEST_CID));
            out.push((hdr, bytes[HDR_LEN..len as usize].to_vec()));
        }
        self.restock_rx();
        out
    }

    /// Pumps and collects until nothing more arrives.
    fn recv(&mut self) -> Vec<(VsockHeader, Vec<u8>)> {
        let mut all = Vec::new();
        for _ in 0..1000 {
            self.pump();
            let got = self.collect();
            if got.is_empty() {
                self.pump();
                let more = self.collect();
                if more.is_empty() {
                    return all;
                }
                all.extend(more);
            } else {
                all.extend(got);
            }
        }
        all
    }

    fn conn_count(&self) -> usize {
        self.dev.lock().unwrap().muxer().connection_count()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let errors = self.handler.lock().unwrap().interest_errors();
            assert_eq!(errors, 0, "the event loop refused interest changes");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pkt(src_port: u32, dst_port: u32, op: u16) -> VsockHeader {
    VsockHeader {
        src_cid: u64::from(GUEST_CID),
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF,
        fwd_cnt: 0,
    }
}

fn rw(src_port: u32, dst_port: u32, len: usize, fwd_cnt: u32) -> VsockHeader {
    let mut h = pkt(src_port, dst_port, op::RW);
    h.len = len as u32;
    h.fwd_cnt = fwd_cnt;
    h
}

fn ops(pkts: &[(VsockHeader, Vec<u8>)]) -> Vec<u16> {
    pkts.iter().map(|(h, _)| h.op).collect()
}

fn read_some(s: &mut UnixStream, want: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = vec![0u8; want];
    s.read_exact(&mut out).unwrap();
    out
}

/// Reads until EOF or a timeout; true on EOF (or reset).
fn sees_eof(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Guest connects to host port `port`; returns the accepted host stream.
fn guest_connect(h: &mut Harness, l: &UnixListener, gport: u32, port: u32) -> UnixStream {
    h.send(&pkt(gport, port, op::REQUEST), &[]);
    let got = h.recv();
    assert_eq!(ops(&got), [op::RESPONSE]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (port, gport));
    assert_eq!(got[0].0.buf_alloc, CONN_BUF_SIZE);
    let (s, _) = l.accept().unwrap();
    s
}

#[test]
fn config_space_and_features() {
    let h = Harness::new("cfg");
    let d = h.dev.lock().unwrap();
    assert_eq!(d.device_type(), 19);
    assert_eq!(d.queue_max_sizes(), &[QUEUE_SIZE; 3]);
    assert_eq!(d.avail_features(), VIRTIO_F_VERSION_1);
    let mut b = [0xffu8; 8];
    d.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), u64::from(GUEST_CID));
    let mut b = [0xffu8; 4];
    d.read_config(4, &mut b);
    assert_eq!(b, [0; 4]);
    d.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4]);
}

#[test]
fn invalid_cid_and_stale_socket() {
    let dir = temp_dir("cid");
    let uds = dir.join("v.sock");
    let irq = || Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    for cid in [0, 1, 2, u32::MAX] {
        let e = Vsock::new(cid, &uds, irq()).err().unwrap();
        assert!(e.to_string().contains(&cid.to_string()), "{e}");
    }
    // A stale socket is replaced; a regular file is not touched.
    drop(UnixListener::bind(&uds).unwrap());
    let dev = Vsock::new(3, &uds, irq()).unwrap();
    assert!(UnixStream::connect(&uds).is_ok());
    drop(dev);
    assert!(!uds.exists(), "socket removed on drop");
    std::fs::write(&uds, b"x").unwrap();
    assert!(Vsock::new(3, &uds, irq()).is_err());
    assert_eq!(std::fs::read(&uds).unwrap(), b"x");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_half_close_then_guest_close() {
    let mut h = Harness::new("hhalf");
    let l = UnixListener::bind(host_port_path(&h.uds, 82)).unwrap();
    let mut s = guest_connect(&mut h, &l, 6002, 82);
    s.write_all(b"req").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let got = h.recv();
    assert_eq!(ops(&got), [op::RW, op::SHUTDOWN]);
    assert_eq!(got[0].1, b"req");
    assert_eq!(got[1].0.flags, SHUTDOWN_SEND, "half-close only");
    // The guest still answers; then closes its side: RST, host EOF.
    h.send(&rw(6002, 82, 5, 3), b"reply");
    h.pump();
    assert_eq!(read_some(&mut s, 5), b"reply");
    let mut sh = pkt(6002, 82, op::SHUTDOWN);
    sh.flags = SHUTDOWN_SEND;
    h.send(&sh, &[]);
    assert_eq!(ops(&h.recv()), [op::RST]);
    assert!(sees_eof(&mut s));
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn guest_to_host_connect_data_shutdown() {
    let mut h = Harness::new("g2h");
    let l = UnixListener::bind(host_port_path(&h.uds, 1234)).unwrap();
    let mut s = guest_connect(&mut h, &l, 5000, 1234);

    h.send(&rw(5000, 1234, 4, 0), b"ping");
    h.pump();
    assert_eq!(read_some(&mut s, 4), b"ping");

    s.write_all(b"pong").unwrap();
    let got = h.recv();
    assert_eq!(ops(&got), [op::RW]);
    assert_eq!(got[0].1, b"pong");
    assert_eq!(got[0].0.fwd_cnt, 4, "our fwd_cnt counts forwarded bytes");

    // Guest half-close: the host reads EOF but can still answer.
    let mut sh = pkt(5000, 1234, op::SHUTDOWN);
    sh.flags = SHUTDOWN_SEND;
    h.send(&sh, &[]);
    h.pump();
    assert!(sees_eof(&mut s));
    s.write_all(b"bye").unwrap();
    let got = h.recv();
    assert_eq!(ops(&got), [op::RW]);
    assert_eq!(got[0].1, b"bye");
    // Host closes too: both directions done, the guest gets RST.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let got = h.recv();
    assert_eq!(*ops(&got).last().unwrap(), op::RST, "{got:?}");
    assert_eq!(h.conn_count(), 0);
    // Anything more on that connection is answered with RST.
    h.send(&rw(5000, 1234, 1, 0), b"x");
    assert_eq!(ops(&h.recv()), [op::RST]);
}

#[test]
fn guest_full_shutdown_gets_rst_and_host_eof() {
    let mut h = Harness::new("g2hfull");
    let l = UnixListener::bind(host_port_path(&h.uds, 80)).unwrap();
    let mut s = guest_connect(&mut h, &l, 6000, 80);
    h.send(&rw(6000, 80, 3, 0), b"abc");
    let mut sh = pkt(6000, 80, op::SHUTDOWN);
    sh.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(&sh, &[]);
    let got = h.recv();
    assert_eq!(*ops(&got).last().unwrap(), op::RST, "{got:?}");
    assert_eq!(read_some(&mut s, 3), b"abc");
    assert!(sees_eof(&mut s));
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn host_close_sends_full_shutdown_then_guest_rst() {
    let mut h = Harness::new("hclose");
    let l = UnixListener::bind(host_port_path(&h.uds, 81)).unwrap();
    let s = guest_connect(&mut h, &l, 6001, 81);
    drop(s);
    let got = h.recv();
    assert_eq!(ops(&got), [op::SHUTDOWN]);
    assert_eq!(got[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    h.send(&pkt(6001, 81, op::RST), &[]);
    assert!(h.recv().is_empty());
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn guest_connect_without_listener_is_reset() {
    let mut h = Harness::new("nolisten");
    h.send(&pkt(5001, 999, op::REQUEST), &[]);
    let got = h.recv();
    assert_eq!(ops(&got), [op::RST]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (999, 5001));
    assert_eq!(h.conn_count(), 0);
}

fn host_connect(h: &mut Harness, line: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(line).unwrap();
    s
}

#[test]
fn host_to_guest_connect_and_data() {
    let mut h = Harness::new("h2g");
    h.rx_split = true; // Linux 6.1 style: header and data descriptors
    let mut s = host_connect(&mut h, b"CONNECT 52\nearly");
    let got = h.recv();
    assert_eq!(ops(&got), [op::REQUEST]);
    let req = got[0].0;
    assert_eq!(req.dst_port, 52);
    assert!(req.src_port >= LOCAL_PORT_START);
    assert_eq!(req.type_, TYPE_STREAM);
    let local = req.src_port;

    h.send(&pkt(52, local, op::RESPONSE), &[]);
    let got = h.recv();
    assert_eq!(ops(&got), [op::RW]);
    assert_eq!(got[0].1, b"early");
    let ok = format!("OK {local}\n");
    assert_eq!(read_some(&mut s, ok.len()), ok.as_bytes());

    s.write_all(b"to guest").unwrap();
    let got = h.recv();
    assert_eq!(got[0].1, b"to guest");
    h.send(&rw(52, local, 8, 13), b"to host!");
    h.pump();
    assert_eq!(read_some(&mut s, 8), b"to host!");

    // A second connection gets another host port.
    let _s2 = host_connect(&mut h, b"CONNECT 52\n");
    let got = h.recv();
    assert_eq!(ops(&got), [op::REQUEST]);
    assert_ne!(got[0].0.src_port, local);
    assert_eq!(h.conn_count(), 2);
}

#[test]
fn host_connect_refused_by_guest_closes_stream() {
    let mut h = Harness::new("h2grst");
    let mut s = host_connect(&mut h, b"CONNECT 53\n");
    let got = h.recv();
    assert_eq!(ops(&got), [op::REQUEST]);
    h.send(&pkt(53, got[0].0.src_port, op::RST), &[]);
    h.pump();
    assert!(sees_eof(&mut s));
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn bad_connect_lines_close_the_stream() {
    let mut h = Harness::new("badline");
    let long = [b'7'; 40];
    let lines: [&[u8]; 6] = [
        b"CONNECT x\n",
        b"HELLO 5\n",
        b"CONNECT 99999999999\n",
        b"CONNECT 1 2\n",
        b"CONNECT \xff\n",
        &long,
    ];
    for line in lines {
        let mut s = host_connect(&mut h, line);
        h.pump();
        assert!(sees_eof(&mut s), "{line:?}");
    }
    // A stream closed before its line is simply dropped.
    drop(host_connect(&mut h, b"CONN"));
    h.pump();
    assert!(h.recv().is_empty());
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn device_respects_guest_credit() {
    let mut h = Harness::new("credit");
    let l = UnixListener::bind(host_port_path(&h.uds, 90)).unwrap();
    let mut req = pkt(7000, 90, op::REQUEST);
    req.buf_alloc = 1000;
    h.send(&req, &[]);
    assert_eq!(ops(&h.recv()), [op::RESPONSE]);
    let (mut s, _) = l.accept().unwrap();
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&data).unwrap();
    let mut got = Vec::new();
    let mut fwd = 0u32;
    for round in 1..=5u32 {
        let pkts = h.recv();
        let rw: Vec<u8> = pkts
            .iter()
            .filter(|(h, _)| h.op == op::RW)
            .flat_map(|(_, p)| p.clone())
            .collect();
        assert_eq!(rw.len(), 1000, "round {round}: {:?}", ops(&pkts));
        assert!(ops(&pkts).contains(&op::CREDIT_REQUEST) || round == 5);
        got.extend(rw);
        // Nothing more without credit.
        assert!(h.recv().is_empty());
        fwd += 1000;
        let mut up = pkt(7000, 90, op::CREDIT_UPDATE);
        up.buf_alloc = 1000;
        up.fwd_cnt = fwd;
        h.send(&up, &[]);
    }
    assert_eq!(got, data);
}

#[test]
fn device_credit_updates_and_overrun() {
    let mut h = Harness::new("ourcredit");
    let l = UnixListener::bind(host_port_path(&h.uds, 91)).unwrap();
    let mut s = guest_connect(&mut h, &l, 7001, 91);
    // Fill most of our advertised buffer while the host does not read.
    let chunk = vec![7u8; 16 * 1024];
    let mut sent = 0usize;
    while sent + chunk.len() <= CONN_BUF_SIZE as usize {
        assert!(h.send(&rw(7001, 91, chunk.len(), 0), &chunk));
        sent += chunk.len();
        h.pump();
    }
    h.q[TXQ].take_used(&h.mem);
    // The host drains it all: the guest hears our fwd_cnt.
    s.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0;
    let mut pkts = Vec::new();
    for _ in 0..10_000 {
        match s.read(&mut buf) {
            Ok(n) => read += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        h.pump();
        pkts.extend(h.collect());
        if read == sent {
            break;
        }
    }
    assert_eq!(read, sent);
    pkts.extend(h.recv());
    assert!(
        pkts.iter().all(|(h, _)| h.op == op::CREDIT_UPDATE),
        "{pkts:?}"
    );
    let last = pkts.last().expect("a CREDIT_UPDATE");
    assert_eq!(last.0.op, op::CREDIT_UPDATE);
    assert_eq!(last.0.fwd_cnt as usize, sent);
    // CREDIT_REQUEST is answered.
    h.send(&pkt(7001, 91, op::CREDIT_REQUEST), &[]);
    let pkts = h.recv();
    assert_eq!(ops(&pkts), [op::CREDIT_UPDATE]);
    // A guest ignoring our credit (host not reading) is reset.
    let mut reset = false;
    for _ in 0..4096 {
        h.send(&rw(7001, 91, chunk.len(), 0), &chunk);
        h.pump();
        if ops(&h.collect()).contains(&op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset);
    assert_eq!(h.conn_count(), 0);
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn large_transfer_both_ways() {
    const SIZE: usize = 3 << 20;
    let mut h = Harness::new("large");
    let l = UnixListener::bind(host_port_path(&h.uds, 2000)).unwrap();
    h.send(&pkt(9000, 2000, op::REQUEST), &[]);
    let got = h.recv();
    assert_eq!(ops(&got), [op::RESPONSE]);
    let (mut dev_alloc, mut dev_fwd) = (got[0].0.buf_alloc, got[0].0.fwd_cnt);
    let (mut s, _) = l.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    let up = pattern(SIZE, 1);
    let down = pattern(SIZE, 2);
    let (mut up_sent, mut down_written) = (0usize, 0usize);
    let (mut up_recv, mut down_recv) = (Vec::new(), Vec::new());
    let mut advertised = 0u32; // fwd_cnt the device has heard from us
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..200_000 {
        if down_written < SIZE {
            let end = SIZE.min(down_written + 64 * 1024);
            match s.write(&down[down_written..end]) {
                Ok(n) => down_written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => up_recv.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let consumed = down_recv.len() as u32;
        while up_sent < SIZE {
            let in_flight = (up_sent as u32).wrapping_sub(dev_fwd);
            let free = dev_alloc.saturating_sub(in_flight) as usize;
            let n = free.min(4096).min(SIZE - up_sent);
            if n == 0 || !h.send(&rw(9000, 2000, n, consumed), &up[up_sent..up_sent + n]) {
                break;
            }
            advertised = consumed;
            up_sent += n;
        }
        h.pump();
        for (hdr, p) in h.collect() {
            assert_eq!((hdr.src_port, hdr.dst_port), (2000, 9000));
            dev_alloc = hdr.buf_alloc;
            dev_fwd = hdr.fwd_cnt;
            match hdr.op {
                op::RW => {
                    down_recv.extend_from_slice(&p);
                    // Never more than the credit we gave.
                    assert!(down_recv.len() as u32 - advertised <= GUEST_BUF);
                }
                op::CREDIT_UPDATE | op::CREDIT_REQUEST => {}
                o => panic!("unexpected op {o}"),
            }
        }
        let consumed = down_recv.len() as u32;
        if consumed - advertised >= GUEST_BUF / 2 {
            let mut upd = pkt(9000, 2000, op::CREDIT_UPDATE);
            upd.fwd_cnt = consumed;
            h.send(&upd, &[]);
            advertised = consumed;
        }
        if up_recv.len() == SIZE && down_recv.len() == SIZE {
            break;
        }
    }
    assert_eq!(up_recv.len(), SIZE);
    assert!(up_recv == up, "guest → host data corrupted");
    assert_eq!(down_recv.len(), SIZE);
    assert!(down_recv == down, "host → guest data corrupted");
}

#[test]
fn many_concurrent_connections() {
    let mut h = Harness::new("many");
    h.rx_target = 200;
    let l = UnixListener::bind(host_port_path(&h.uds, 3000)).unwrap();
    let n = 100u32;
    for i in 0..n {
        h.send(&pkt(10_000 + i, 3000, op::REQUEST), &[]);
    }
    let got = h.recv();
    assert_eq!(got.len(), n as usize);
    assert!(got.iter().all(|(h, _)| h.op == op::RESPONSE));
    let mut streams: Vec<UnixStream> = (0..n).map(|_| l.accept().unwrap().0).collect();
    for i in 0..n {
        let msg = format!("conn {i}");
        h.send(&rw(10_000 + i, 3000, msg.len(), 0), msg.as_bytes());
    }
    h.pump();
    // Accept order is connect order.
    for (i, s) in streams.iter_mut().enumerate() {
        let msg = format!("conn {i}");
        assert_eq!(read_some(s, msg.len()), msg.as_bytes());
        s.write_all(format!("back {i}").as_bytes()).unwrap();
    }
    let got = h.recv();
    assert_eq!(got.len(), n as usize);
    for (hdr, p) in got {
        let i = hdr.dst_port - 10_000;
        assert_eq!(p, format!("back {i}").as_bytes());
    }
    assert_eq!(h.conn_count(), n as usize);
}

#[test]
fn host_request_times_out_without_response() {
    let mut h = Harness::new("reqtimeout");
    let mut s = host_connect(&mut h, b"CONNECT 60\n");
    assert_eq!(ops(&h.recv()), [op::REQUEST]);
    // Pretend the deadline passed.
    {
        let mut d = h.dev.lock().unwrap();
        d.muxer()
            .handle_timeouts(std::time::Instant::now() + Duration::from_secs(60));
        d.process_queues();
    }
    let got = h.recv();
    assert_eq!(ops(&got), [op::RST]);
    assert!(sees_eof(&mut s));
    // Pending CONNECT lines expire too.
    let _quiet = UnixStream::connect(&h.uds).unwrap();
    h.pump();
    {
        let mut d = h.dev.lock().unwrap();
        assert!(d.muxer().next_deadline().is_some());
        d.muxer()
            .handle_timeouts(std::time::Instant::now() + Duration::from_secs(60));
        assert!(d.muxer().next_deadline().is_none());
    }
    h.wait(1);
}

/// Small xorshift PRNG: reproducible "random" guest input, no crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Sends a raw tx chain of (addr or own slot, len, flags) descriptors.
fn send_raw(h: &mut Harness, parts: &[(Option<u64>, u32, u16)], data: &[&[u8]]) {
    h.q[TXQ].add(&h.mem, parts, data);
    h.evts[TXQ].write(1).unwrap();
}

fn tx_all_returned(h: &mut Harness) -> bool {
    h.q[TXQ].take_used(&h.mem);
    h.q[TXQ].free.len() == usize::from(QSZ)
}

#[test]
fn malformed_tx_packets_are_dropped_or_reset() {
    let mut h = Harness::new("malformed");
    let l = UnixListener::bind(host_port_path(&h.uds, 100)).unwrap();
    let hb = |hd: VsockHeader| hd.to_bytes();

    // Short header: dropped silently.
    let b = hb(pkt(1, 100, op::REQUEST));
    send_raw(&mut h, &[(None, 43, 0)], &[&b[..43]]);
    assert!(h.recv().is_empty());
    // Header in a device-writable descriptor: dropped.
    send_raw(&mut h, &[(None, 44, F_WRITE)], &[&b]);
    assert!(h.recv().is_empty());
    // Header outside guest memory, straddling its end, or wrapping.
    for addr in [1 << 40, MEM_SIZE - 10, u64::MAX - 20] {
        send_raw(&mut h, &[(Some(addr), 44, 0)], &[]);
        assert!(h.recv().is_empty());
    }
    // Payload outside guest memory: the header is readable → RST.
    let mut bad = pkt(1, 100, op::RW);
    bad.len = 10;
    send_raw(
        &mut h,
        &[(None, 44, 0), (Some(1 << 40), 10, 0)],
        &[&hb(bad)],
    );
    assert_eq!(ops(&h.recv()), [op::RST]);
    // len larger than the chain, or than any packet may be.
    for len in [100, MAX_PKT_PAYLOAD as u32 + 1, u32::MAX] {
        let mut hd = pkt(1, 100, op::RW);
        hd.len = len;
        send_raw(
            &mut h,
            &[(None, 44, 0), (None, 10, 0)],
            &[&hb(hd), &[0; 10]],
        );
        assert_eq!(ops(&h.recv()), [op::RST], "len {len}");
    }
    // Unknown op / INVALID / unsupported type without a connection: RST.
    for (o, t) in [
        (99, TYPE_STREAM),
        (op::INVALID, TYPE_STREAM),
        (op::REQUEST, 2),
    ] {
        let mut hd = pkt(1, 100, o);
        hd.type_ = t;
        h.send(&hd, &[]);
        let got = h.recv();
        assert_eq!(ops(&got), [op::RST], "op {o} type {t}");
        assert_eq!((got[0].0.src_port, got[0].0.dst_port), (100, 1));
    }
    // Wrong CIDs: dropped without a word; RST for unknown: ignored.
    for (src, dst) in [
        (3, 2),
        (u64::from(GUEST_CID), 3),
        (2, 2),
        (u64::MAX, u64::MAX),
    ] {
        let mut hd = pkt(1, 100, op::REQUEST);
        hd.src_cid = src;
        hd.dst_cid = dst;
        h.send(&hd, &[]);
    }
    h.send(&pkt(1, 100, op::RST), &[]);
    assert!(h.recv().is_empty());
    assert_eq!(h.conn_count(), 0);
    assert!(tx_all_returned(&mut h));

    // On a live connection: an unknown op, a RESPONSE, a duplicate
    // REQUEST, a truncated RW each reset it (host sees EOF).
    for (i, (o, len)) in [
        (99u16, 0u32),
        (op::RESPONSE, 0),
        (op::REQUEST, 0),
        (op::RW, 50),
    ]
    .into_iter()
    .enumerate()
    {
        let gport = 200 + i as u32;
        let mut s = guest_connect(&mut h, &l, gport, 100);
        let mut hd = pkt(gport, 100, o);
        hd.len = len;
        send_raw(
            &mut h,
            &[(None, 44, 0), (None, 10, 0)],
            &[&hb(hd), &[0; 10]],
        );
        assert_eq!(ops(&h.recv()), [op::RST], "op {o}");
        assert!(sees_eof(&mut s));
    }
    assert_eq!(h.conn_count(), 0);

    // A descriptor loop and a `next` outside the table: bounded, dropped.
    let b = hb(pkt(1, 100, op::RW));
    let head = h.q[TXQ].add(&h.mem, &[(None, 44, 0)], &[&b]).unwrap();
    let at = h.q[TXQ].desc + 16 * u64::from(head);
    h.mem.write_obj(F_NEXT, GuestAddress(at + 12)).unwrap();
    h.mem.write_obj(head, GuestAddress(at + 14)).unwrap();
    h.evts[TXQ].write(1).unwrap();
    let got = h.recv();
    assert!(got.len() <= 1, "{got:?}");
    let head = h.q[TXQ].add(&h.mem, &[(None, 44, 0)], &[&b]).unwrap();
    let at = h.q[TXQ].desc + 16 * u64::from(head);
    h.mem.write_obj(F_NEXT, GuestAddress(at + 12)).unwrap();
    h.mem.write_obj(1000u16, GuestAddress(at + 14)).unwrap();
    h.evts[TXQ].write(1).unwrap();
    h.recv();
    assert!(tx_all_returned(&mut h));
}

#[test]
fn bad_rx_buffers_are_returned_empty() {
    let mut h = Harness::with_rx("badrx", 0);
    // Readable-only, outside memory, too short: each returned with len 0.
    let bad: [(Option<u64>, u32, u16); 4] = [
        (None, 4096, 0),
        (Some(1 << 40), 4096, F_WRITE),
        (Some(MEM_SIZE - 100), 4096, F_WRITE),
        (None, 43, F_WRITE),
    ];
    for b in bad {
        h.q[RXQ].add(&h.mem, &[b], &[]);
        h.rx_posted += 1;
    }
    // A writable header followed by a readable descriptor.
    h.q[RXQ].add(&h.mem, &[(None, 44, F_WRITE), (None, 100, 0)], &[]);
    h.rx_posted += 1;
    // Then one good 44-byte buffer: enough for an RST.
    h.q[RXQ].add(&h.mem, &[(None, 44, F_WRITE)], &[]);
    h.rx_posted += 1;
    h.send(&pkt(1, 555, op::RW), &[]);
    h.pump();
    let used = h.q[RXQ].take_used(&h.mem);
    let lens: Vec<u32> = used.iter().map(|(_, l, _)| *l).collect();
    assert_eq!(lens, [0, 0, 0, 0, 0, 44]);
    let mut hb = [0u8; HDR_LEN];
    h.mem
        .read_slice(&mut hb, GuestAddress(h.q[RXQ].slot(used[5].2[0])))
        .unwrap();
    assert_eq!(VsockHeader::from_bytes(&hb).op, op::RST);
    h.rx_posted = 0;
}

#[test]
fn random_packets_never_panic_or_hang() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut h = Harness::new("fuzz");
    let l = UnixListener::bind(host_port_path(&h.uds, 77)).unwrap();
    l.set_nonblocking(true).unwrap();
    let mut host_streams: Vec<UnixStream> = Vec::new();
    let mut requests: Vec<VsockHeader> = Vec::new();
    let gports = [5000u32, 5001, 5002];
    let hports = [77u32, 78, LOCAL_PORT_START, LOCAL_PORT_START + 1];
    let ops_all = [
        op::INVALID,
        op::REQUEST,
        op::RESPONSE,
        op::RST,
        op::SHUTDOWN,
        op::RW,
        op::CREDIT_UPDATE,
        op::CREDIT_REQUEST,
        8,
        0xffff,
    ];
    let mut payload = vec![0u8; 70 * 1024];
    for i in 0..4000u32 {
        let (r1, r2) = (rng.next() as u32, rng.next() as u32);
        let mut hd = VsockHeader {
            src_cid: if rng.below(20) == 0 {
                rng.next()
            } else {
                u64::from(GUEST_CID)
            },
            dst_cid: if rng.below(20) == 0 {
                rng.next()
            } else {
                HOST_CID
            },
            src_port: if rng.below(8) == 0 {
                rng.next() as u32
            } else {
                rng.pick(&gports)
            },
            dst_port: if rng.below(8) == 0 {
                rng.next() as u32
            } else {
                rng.pick(&hports)
            },
            len: 0,
            type_: if rng.below(20) == 0 {
                rng.next() as u16
            } else {
                TYPE_STREAM
            },
            op: rng.pick(&ops_all),
            flags: if rng.below(2) == 0 {
                rng.below(4) as u32
            } else {
                rng.next() as u32
            },
            buf_alloc: rng.pick(&[0, 1, 4096, GUEST_BUF, u32::MAX, r1]),
            fwd_cnt: rng.pick(&[0, 1, r2]),
        };
        // Answer some of the device's REQUESTs like a guest would.
        if !requests.is_empty() && rng.below(4) == 0 {
            let r = requests.swap_remove(rng.below(requests.len() as u64) as usize);
            hd.src_port = r.dst_port;
            hd.dst_port = r.src_port;
            hd.op = rng.pick(&[op::RESPONSE, op::RESPONSE, op::RST]);
        }
        let plen = rng.pick(&[0usize, 1, 100, 4096, 65536, 70 * 1024]);
        hd.len = match rng.below(4) {
            0 => rng.next() as u32,
            1 => (plen as u32).saturating_add(1),
            _ => plen as u32,
        };
        for b in payload[..plen].iter_mut() {
            *b = rng.next() as u8;
        }
        let hb = hd.to_bytes();
        match rng.below(10) {
            // Header cut short.
            0 => {
                let n = rng.below(44) as u32;
                send_raw(&mut h, &[(None, n, 0)], &[&hb[..n as usize]]);
            }
            // Random descriptors: anywhere, any direction, any length.
            1 => {
                let n = 1 + rng.below(4) as usize;
                let parts: Vec<(Option<u64>, u32, u16)> = (0..n)
                    .map(|_| {
                        let addr = match rng.below(4) {
                            0 => None,
                            1 => Some(rng.next()),
                            2 => Some(MEM_SIZE - rng.below(100)),
                            _ => Some(rng.below(MEM_SIZE)),
                        };
                        let r = rng.next() as u32;
                        let len = rng.pick(&[0, 1, 44, 4096, r]);
                        (addr, len, rng.pick(&[0, F_WRITE]))
                    })
                    .collect();
                send_raw(&mut h, &parts, &[&hb]);
            }
            // Header and payload in one descriptor.
            2 => {
                let mut b = hb.to_vec();
                b.extend_from_slice(&payload[..plen.min(SLOT as usize - 44)]);
                send_raw(&mut h, &[(None, b.len() as u32, 0)], &[&b]);
            }
            _ => {
                let p = &payload[..plen.min(SLOT as usize)];
                h.send(&hd, p);
            }
        }
        // Random bad rx buffers now and then.
        if rng.below(16) == 0 {
            let addr = rng.pick(&[Some(1u64 << 40), Some(MEM_SIZE - 1), None]);
            let flags = if addr.is_none() { 0 } else { F_WRITE };
            if h.q[RXQ].add(&h.mem, &[(addr, 4096, flags)], &[]).is_some() {
                h.rx_posted += 1;
            }
        }
        // Host side: connect with good or bad lines, write, hang up.
        match rng.below(16) {
            0 => {
                if let Ok(mut s) = UnixStream::connect(&h.uds) {
                    let line: &[u8] = rng.pick(&[
                        b"CONNECT 5000\n".as_slice(),
                        b"CONNECT 5001\nxyz",
                        b"CONNECT nope\n",
                        b"CONNECT 5002",
                    ]);
                    let _ = s.write_all(line);
                    s.set_nonblocking(true).unwrap();
                    host_streams.push(s);
                }
            }
            1 if !host_streams.is_empty() => {
                let k = rng.below(host_streams.len() as u64) as usize;
                drop(host_streams.swap_remove(k));
            }
            2 if !host_streams.is_empty() => {
                let k = rng.below(host_streams.len() as u64) as usize;
                let _ = host_streams[k].write(&payload[..rng.below(8192) as usize]);
            }
            _ => {}
        }
        while let Ok((s, _)) = l.accept() {
            s.set_nonblocking(true).unwrap();
            host_streams.push(s);
        }
        if host_streams.len() > 40 {
            host_streams.remove(0);
        }
        if i % 8 == 0 {
            for (got, _) in h.recv() {
                if got.op == op::REQUEST {
                    requests.push(got);
                }
            }
            let mut sink = [0u8; 4096];
            for s in host_streams.iter_mut() {
                let _ = s.read(&mut sink);
            }
        }
    }
    h.recv();
    drop(host_streams);
    h.recv();
    assert!(h.conn_count() <= super::muxer::MAX_CONNECTIONS);
    // Still a working device.
    let l2 = UnixListener::bind(host_port_path(&h.uds, 88)).unwrap();
    let mut s = guest_connect(&mut h, &l2, 60_000, 88);
    h.send(&rw(60_000, 88, 2, 0), b"ok");
    h.pump();
    assert_eq!(read_some(&mut s, 2), b"ok");
}

//! Event-loop subscriber for a virtio-net device: serves the tx queue on its
//! notification, and moves frames from the tap to the rx queue while the tap
//! is readable and the guest has buffers.
//!
//! Back-pressure: when the guest has no rx buffer left the tap is taken out
//! of the epoll set (at most one frame waits inside the device) and put back
//! when the driver kicks the rx queue — no busy loop, no unbounded buffering;
//! further frames wait in the tap's own (bounded) queue.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::device::Net;

/// Subscriber owning duplicates of the device's eventfds and tap descriptor.
pub struct NetEventHandler {
    device: Arc<Mutex<Net>>,
    rx_evt: EventFd,
    tx_evt: EventFd,
    activate_evt: EventFd,
    tap: File,
    tap_polled: bool,
}

impl NetEventHandler {
    /// Handler for `device`; fails if its descriptors cannot be duplicated.
    pub fn new(device: Arc<Mutex<Net>>) -> std::io::Result<Self> {
        let (rx_evt, tx_evt, activate_evt, tap) = {
            let d = match device.lock() {
                Ok(d) => d,
                Err(p) => p.into_inner(),
            };
            (
                d.rx_evt().try_clone()?,
                d.tx_evt().try_clone()?,
                d.activate_evt().try_clone()?,
                d.tap().try_clone_file()?,
            )
        };
        Ok(NetEventHandler {
            device,
            rx_evt,
            tx_evt,
            activate_evt,
            tap,
            tap_polled: false,
        })
    }

    /// Whether the tap is in the epoll set (for tests).
    pub fn tap_polled(&self) -> bool {
        self.tap_polled
    }

    fn rx(&mut self, ops: &mut EventOps) {
        let res = match self.device.lock() {
            Ok(mut d) => d.process_rx_event(),
            Err(_) => {
                log::error!("vmm: virtio-net: device lock poisoned");
                return;
            }
        };
        self.set_tap_polling(ops, !res.blocked);
    }

    fn tx(&mut self) {
        match self.device.lock() {
            Ok(mut d) => d.process_tx_event(),
            Err(_) => log::error!("vmm: virtio-net: device lock poisoned"),
        }
    }

    fn set_tap_polling(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.tap_polled {
            return;
        }
        let events = Events::new(&self.tap, EventSet::IN);
        let res = if on {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match res {
            Ok(()) => self.tap_polled = on,
            Err(e) => log::error!(
                "vmm: virtio-net: {} the tap: {e}",
                if on { "polling" } else { "unpolling" }
            ),
        }
    }
}

impl MutEventSubscriber for NetEventHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.tap.as_raw_fd() {
            // Readable, or an error condition: process_rx reads, and stops
            // polling on a read error until the next rx kick.
            self.rx(ops);
        } else if fd == self.rx_evt.as_raw_fd() {
            // Non-blocking eventfds: EAGAIN only means a spurious wake-up.
            let _ = self.rx_evt.read();
            self.rx(ops);
        } else if fd == self.tx_evt.as_raw_fd() {
            let _ = self.tx_evt.read();
            self.tx();
        } else if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            // Serve what the driver queued before DRIVER_OK, then poll the tap.
            self.tx();
            self.rx(ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (evt, what) in [
            (&self.rx_evt, "rx queue"),
            (&self.tx_evt, "tx queue"),
            (&self.activate_evt, "activation"),
        ] {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("vmm: virtio-net: registering the {what} eventfd: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::net::backend::VNET_HDR_LEN;
    use crate::devices::virtio::net::device::TYPE_NET;
    use crate::devices::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
    use event_manager::{EventManager, SubscriberOps};
    use std::net::UdpSocket;
    use std::process::Command;
    use std::time::{Duration, Instant};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

    const TAP: &str = "bvnet0";
    const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const GUEST_MAC: [u8; 6] = [0x02, 0xbe, 0x27, 0x00, 0x00, 0x02];
    const HOST_IP: [u8; 4] = [10, 200, 0, 1];
    const GUEST_IP: [u8; 4] = [10, 200, 0, 2];
    const RX_BUF_LEN: u32 = 1526 + VNET_HDR_LEN as u32;

    /// Runs `f` on a thread of its own inside a new, anonymous network
    /// namespace. Nothing outside it is touched, and nothing outlives it:
    /// the namespace and every tap created in it (non-persistent) are freed
    /// by the kernel when the thread and its descriptors go away — also when
    /// `f` panics or the test process is killed. The guard below checks that.
    fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                // SAFETY: unshare only changes this thread's namespaces.
                let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                assert_eq!(ret, 0, "unshare: {}", std::io::Error::last_os_error());
                let _guard = NetnsGuard;
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Deletes the test's tap on the way out, including on panic, in case
    /// something (a leaked `ip` child) keeps the namespace alive.
    struct NetnsGuard;
    impl Drop for NetnsGuard {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["link", "del", TAP])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    fn ip(args: &[&str]) {
        let st = Command::new("ip").args(args).status().expect("running ip");
        assert!(st.success(), "ip {args:?}: {st}");
    }

    fn mac_str(m: &[u8; 6]) -> String {
        crate::devices::virtio::net::format_mac(m)
    }

    fn ipv4_udp_frame(payload: &[u8], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&HOST_MAC);
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = (20 + 8 + payload.len()) as u16;
        let mut iph = [0u8; 20];
        iph[0] = 0x45;
        iph[2..4].copy_from_slice(&total.to_be_bytes());
        iph[8] = 64;
        iph[9] = 17;
        iph[12..16].copy_from_slice(&GUEST_IP);
        iph[16..20].copy_from_slice(&HOST_IP);
        let mut sum: u32 = iph
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        iph[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        f.extend_from_slice(&iph);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed on IPv4)
        f.extend_from_slice(payload);
        f
    }

    fn chain(descs: &[(u64, u32, u16)], first: u16) -> Vec<RawDescriptor> {
        descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == descs.len();
                let (flags, next) = if last {
                    (flags, 0)
                } else {
                    (flags | 1, first + i as u16 + 1)
                };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect()
    }

    #[test]
    fn real_tap_in_netns_tx_and_rx() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping real_tap_in_netns_tx_and_rx: needs root (CAP_NET_ADMIN for a netns and a tap)");
            return;
        }
        in_new_netns(real_tap_body);
    }

    fn real_tap_body() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(irq.try_clone().unwrap());
        let net = Net::new(
            TAP,
            super::super::TapSource::Name,
            GUEST_MAC,
            interrupt.clone(),
        )
        .unwrap();
        // Identity and config space.
        assert_eq!(net.device_type(), TYPE_NET);
        assert_eq!(
            net.avail_features(),
            VIRTIO_F_VERSION_1 | (1 << 5) | (1 << 16)
        );
        let mut cfg = [0xffu8; 10];
        net.read_config(0, &mut cfg);
        assert_eq!(cfg, [0x02, 0xbe, 0x27, 0, 0, 2, 1, 0, 0, 0]);

        let host_mac = mac_str(&HOST_MAC);
        ip(&["link", "set", TAP, "address", &host_mac, "up"]);
        ip(&["addr", "add", "10.200.0.1/24", "dev", TAP]);
        ip(&[
            "neigh",
            "add",
            "10.200.0.2",
            "lladdr",
            &mac_str(&GUEST_MAC),
            "dev",
            TAP,
        ]);

        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let rxq_mock = MockSplitQueue::create(&m, GuestAddress(0), 16);
        let txq_mock = MockSplitQueue::create(&m, GuestAddress(0x1_0000), 16);
        let rxq: Queue = rxq_mock.create_queue().unwrap();
        let txq: Queue = txq_mock.create_queue().unwrap();
        let net = Arc::new(Mutex::new(net));
        let handler = Arc::new(Mutex::new(NetEventHandler::new(net.clone()).unwrap()));
        let mut em = EventManager::<Arc<Mutex<NetEventHandler>>>::new().unwrap();
        em.add_subscriber(handler.clone());
        net.lock()
            .unwrap()
            .activate(m.clone(), vec![rxq, txq])
            .unwrap();
        em.run_with_timeout(100).unwrap();

        // TX: a UDP datagram from the "guest" reaches a socket in the netns.
        let sock = UdpSocket::bind("10.200.0.1:5555").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let payload = b"hello from the guest";
        let frame = ipv4_udp_frame(payload, 4444, 5555);
        let mut pkt = vec![0u8; VNET_HDR_LEN];
        pkt.extend_from_slice(&frame[..30]);
        m.write_slice(&pkt, GuestAddress(0x10_0000)).unwrap();
        m.write_slice(&frame[30..], GuestAddress(0x11_0000))
            .unwrap();
        txq_mock
            .add_desc_chains(
                &chain(
                    &[
                        (0x10_0000, pkt.len() as u32, 0),
                        (0x11_0000, (frame.len() - 30) as u32, 0),
                    ],
                    0,
                ),
                0,
            )
            .unwrap();
        net.lock().unwrap().tx_evt().write(1).unwrap();
        em.run_with_timeout(100).unwrap();
        let mut buf = [0u8; 128];
        let (n, from) = sock.recv_from(&mut buf).expect("datagram from the guest");
        assert_eq!(&buf[..n], payload);
        assert_eq!(from.to_string(), "10.200.0.2:4444");
        let used: u16 = m.read_obj(txq_mock.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used, 1);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(net.lock().unwrap().counters().tx_frames, 1);

        // RX with no guest buffers: the device reads one frame, stops polling
        // the tap, and the loop goes idle (no busy loop).
        let out = UdpSocket::bind("10.200.0.1:0").unwrap();
        out.send_to(b"hello guest", "10.200.0.2:7777").unwrap();
        let t = Instant::now();
        while handler.lock().unwrap().tap_polled() && t.elapsed() < Duration::from_secs(5) {
            em.run_with_timeout(50).unwrap();
        }
        assert!(!handler.lock().unwrap().tap_polled(), "tap still polled");
        assert_eq!(em.run_with_timeout(200).unwrap(), 0, "event loop not idle");
        let used: u16 = m.read_obj(rxq_mock.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used, 0);

        // The driver posts buffers and kicks: frames flow, polling resumes.
        let mut descs = Vec::new();
        for i in 0..8u16 {
            descs.extend(chain(
                &[(0x20_0000 + u64::from(i) * 0x1000, RX_BUF_LEN, 2)],
                i,
            ));
        }
        rxq_mock.add_desc_chains(&descs, 0).unwrap();
        net.lock().unwrap().rx_evt().write(1).unwrap();
        let t = Instant::now();
        let mut found = false;
        let mut seen = 0u16;
        while !found && t.elapsed() < Duration::from_secs(5) {
            em.run_with_timeout(50).unwrap();
            let used: u16 = m.read_obj(rxq_mock.used_addr().unchecked_add(2)).unwrap();
            for i in seen..used {
                let e = rxq_mock.used_addr().unchecked_add(4 + 8 * u64::from(i));
                let head: u32 = m.read_obj(e).unwrap();
                let len: u32 = m.read_obj(e.unchecked_add(4)).unwrap();
                let mut data = vec![0u8; len as usize];
                m.read_slice(
                    &mut data,
                    GuestAddress(0x20_0000 + u64::from(head) * 0x1000),
                )
                .unwrap();
                assert_eq!(data[..VNET_HDR_LEN], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
                let f = &data[VNET_HDR_LEN..];
                // IPv4/UDP to 10.200.0.2:7777 (other frames: IPv6 noise).
                if f.len() >= 42
                    && f[12..14] == [0x08, 0x00]
                    && f[23] == 17
                    && f[30..34] == GUEST_IP
                    && f[36..38] == 7777u16.to_be_bytes()
                {
                    assert_eq!(f[..6], GUEST_MAC);
                    assert_eq!(&f[42..], b"hello guest");
                    found = true;
                }
            }
            seen = used;
        }
        assert!(found, "UDP frame not delivered to the rx queue");
        assert!(interrupt.status.load(std::sync::atomic::Ordering::SeqCst) & 1 != 0);
        // Drained the tap with buffers to spare: polling is back on.
        em.run_with_timeout(50).unwrap();
        assert!(
            handler.lock().unwrap().tap_polled(),
            "tap polling not resumed"
        );
        assert!(net.lock().unwrap().counters().rx_frames >= 1);
    }
}

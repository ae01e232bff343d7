//! berth-net against the real kernel: bridge, veth "pods", nftables tables
//! and anti-spoofing, in network namespaces the tests create (the host's
//! own network is never touched). Root only; skipped with a message
//! otherwise.
//!
//! Each test runs in a thread that first unshares its network namespace,
//! so the bridge, the tables and every `nft` child live there and vanish
//! with it. A "pod" is a `sleep` in a network namespace of its own, plugged
//! in with the real `attach_veth`.

// Test code: a failing step panics, and the panic is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_net::{HostConfig, PodRequest, Subnet};
use berth_spec::{PortMapping, PrivateNetwork, Protocol};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Why this host cannot run these tests, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if Command::new("nft").arg("--version").output().is_err() {
        return Some("no nft binary".into());
    }
    None
}

/// Run `f` in a thread with a network namespace of its own, one test at a
/// time: a child forked by one test's thread holds every open descriptor of
/// the process until it execs, the other test's pod locks included, which
/// would make a dead test pod look alive for a moment.
fn in_new_netns(name: &str, f: impl FnOnce() + Send + 'static) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Some(why) = unsupported() {
        eprintln!("skipping {name}: {why}");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespaces.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

fn cfg(tag: &str) -> HostConfig {
    HostConfig {
        bridge: format!("bth{tag}"),
        subnet: Subnet::parse("198.18.90.0/24").unwrap(),
        nft_table: format!("berth_t_{tag}"),
        dns: Some(vec![]),
        source: None,
        ..HostConfig::default()
    }
}

/// A pod as the net layer sees it: a live lease (the pod directory's life
/// lock is held), and a process in a network namespace of its own.
struct Pod {
    net: PrivateNetwork,
    uuid: String,
    lock: Option<std::fs::File>,
    proc: Option<Child>,
}

impl Pod {
    fn new(root: &Path, cfg: &HostConfig, n: u32, ports: &[PortMapping]) -> Pod {
        let name = format!("pod{n}");
        let uuid = format!("{n:08x}-1111-4222-8333-444455556666");
        let dir = root.join("pods").join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let lock = std::fs::File::create(dir.join("lock")).unwrap();
        berth_spec::state::flock(&lock, libc::LOCK_EX).unwrap();
        let req = PodRequest {
            name: &name,
            uuid: &uuid,
            ports,
            kvm: false,
        };
        let net = berth_net::prepare(root, cfg, &req).expect("prepare");
        Pod {
            net,
            uuid,
            lock: Some(lock),
            proc: None,
        }
    }

    /// Start the pod's process in a new network namespace and plug it in.
    fn attach(&mut self) {
        let mut c = Command::new("sleep");
        c.arg("1000");
        // SAFETY: unshare is async-signal-safe; it only changes the child.
        unsafe {
            c.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().unwrap();
        // The child may not have unshared yet: wait until its netns differs.
        let me = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let pid = child.id();
        let t = Instant::now();
        while std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .as_ref()
            == Some(&me)
        {
            assert!(t.elapsed() < Duration::from_secs(5), "child never unshared");
            std::thread::sleep(Duration::from_millis(2));
        }
        berth_net::attach_veth(&self.net, pid as i32).expect("attach_veth");
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            me,
            "attach_veth left this thread in another network namespace"
        );
        self.proc = Some(child);
    }

    fn pid(&self) -> i32 {
        self.proc.as_ref().unwrap().id() as i32
    }

    /// Run `f` in a thread inside the pod's network namespace.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.pid())).unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns on an open namespace file; this thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            f()
        })
    }

    /// kill -9 of the whole pod: its process and (its stage1 gone) its
    /// life lock.
    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        self.lock = None;
    }

    fn release(&self, root: &Path) {
        berth_net::release(root, &self.uuid, &self.net).expect("release");
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kill();
    }
}

fn nft_json(args: &[&str]) -> Option<serde_json::Value> {
    let o = Command::new("nft").arg("-j").args(args).output().unwrap();
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

/// The elements of set/map `name` in table `family t`, as nft prints them;
/// None when the set (or table) does not exist.
fn elements(family: &str, t: &str, kind: &str, name: &str) -> Option<Vec<String>> {
    let v = nft_json(&["list", kind, family, t, name])?;
    let sets = v["nftables"].as_array()?.clone();
    let s = sets.iter().find_map(|o| o.get(kind))?;
    Some(
        s["elem"]
            .as_array()
            .map(|a| a.iter().map(|e| e.to_string()).collect())
            .unwrap_or_default(),
    )
}

fn all_elements(t: &str) -> Vec<String> {
    let mut v = Vec::new();
    for (family, kind, name) in [
        ("bridge", "set", "ports"),
        ("bridge", "set", "pods"),
        ("ip", "map", "port_addr"),
        ("ip", "map", "port_port"),
    ] {
        v.extend(
            elements(family, t, kind, name).unwrap_or_else(|| panic!("{family} {name} missing")),
        );
    }
    v
}

/// Does interface `name` exist in this thread's network namespace? (Not
/// /sys/class/net: sysfs shows the namespace it was mounted in.)
fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

// ---------------------------------------------------------------------------
// Raw frames.

fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(dst);
    f.extend(src);
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

const BCAST: [u8; 6] = [0xff; 6];

fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr, marker: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4];
    p.extend(op.to_be_bytes());
    p.extend(sha);
    p.extend(spa.octets());
    p.extend([0u8; 6]);
    p.extend(tpa.octets());
    // The marker rides in the Ethernet padding after the ARP payload.
    p.extend(marker);
    p
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An IPv4 UDP datagram to 255.255.255.255:9 carrying `marker`.
fn udp4(src: Ipv4Addr, marker: &[u8]) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend(4000u16.to_be_bytes());
    udp.extend(9u16.to_be_bytes());
    udp.extend(((8 + marker.len()) as u16).to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(marker);
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + udp.len()) as u16).to_be_bytes());
    ip.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend(src.octets());
    ip.extend([255, 255, 255, 255]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend(udp);
    ip
}

/// An IPv6 UDP datagram from a link-local address to ff02::1 carrying
/// `marker` (UDP checksum left 0: only the bridge's verdict matters).
fn udp6(marker: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend(((8 + marker.len()) as u16).to_be_bytes());
    p.extend([17, 64]);
    p.extend(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x66).octets());
    p.extend(std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets());
    p.extend(4000u16.to_be_bytes());
    p.extend(9u16.to_be_bytes());
    p.extend(((8 + marker.len()) as u16).to_be_bytes());
    p.extend([0, 0]);
    p.extend(marker);
    p
}

fn packet_socket(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: a NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(idx > 0, "no interface {ifname}");
    // SAFETY: sockaddr_ll is plain old data.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto;
    sa.sll_ifindex = idx as i32;
    // SAFETY: binds our socket to a sockaddr_ll of the right size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: SO_RCVTIMEO reads a timeval from a live local.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    fd
}

fn send_frame(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: writes `frame` from a live buffer to our bound packet socket.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        n,
        frame.len() as isize,
        "send: {}",
        std::io::Error::last_os_error()
    );
}

/// Receive on `ifname` until every marker of `wanted` was seen or `within`
/// passed; returns the markers (of `all`) seen.
fn sniff(
    ifname: String,
    all: Vec<Vec<u8>>,
    wanted: usize,
    within: Duration,
) -> impl FnOnce() -> Vec<Vec<u8>> {
    move || {
        let fd = packet_socket(&ifname);
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let t = Instant::now();
        let mut all_ok: Option<Instant> = None;
        let mut buf = [0u8; 2048];
        // Until the legitimate frames arrived (and a little longer, for
        // anything sent before them that would still come), or `within`.
        while t.elapsed() < within
            && all_ok.is_none_or(|at| at.elapsed() < Duration::from_millis(200))
        {
            // SAFETY: reads into a live buffer of the given size.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                let f = &buf[..n as usize];
                for m in &all {
                    if !seen.contains(m) && f.windows(m.len()).any(|w| w == &m[..]) {
                        seen.push(m.clone());
                    }
                }
            }
            if all_ok.is_none() && seen.iter().filter(|m| m.starts_with(b"ok-")).count() == wanted {
                all_ok = Some(Instant::now());
            }
        }
        seen
    }
}

fn host_neigh(addr: Ipv4Addr, dev: &str) -> String {
    let o = Command::new("ip")
        .args(["neigh", "show", &addr.to_string(), "dev", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn spoofed_arp_and_ip_are_dropped_legitimate_traffic_passes() {
    in_new_netns(
        "spoofed_arp_and_ip_are_dropped_legitimate_traffic_passes",
        || {
            let root = tempfile::tempdir().unwrap();
            let c = cfg("sp");
            let mut p1 = Pod::new(root.path(), &c, 1, &[]);
            let mut p2 = Pod::new(root.path(), &c, 2, &[]);
            p1.attach();
            p2.attach();
            let (m1, a1) = (mac(&p1.net.mac), p1.net.address);
            let (m2, a2) = (mac(&p2.net.mac), p2.net.address);
            let gw = c.subnet.gateway();
            let fake = mac("02:66:66:66:66:66");

            // Normal traffic, through the pods' own stacks (ARP included).
            let l = p2.run(move || {
                let s = UdpSocket::bind((a2, 7777)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut b = [0u8; 64];
                let (n, from) = s.recv_from(&mut b).unwrap();
                (String::from_utf8_lossy(&b[..n]).into_owned(), from)
            });
            std::thread::sleep(Duration::from_millis(100));
            p1.run(move || {
                let s = UdpSocket::bind((a1, 0)).unwrap();
                s.send_to(b"hello", (a2, 7777)).unwrap();
            })
            .join()
            .unwrap();
            let (got, from) = l.join().unwrap();
            assert_eq!(
                (got.as_str(), from.ip()),
                ("hello", std::net::IpAddr::V4(a1))
            );

            // Hand-made frames from pod 1, seen (or not) by pod 2: every frame
            // is broadcast, so anything the bridge lets through reaches pod 2.
            let frames: Vec<(&[u8], Vec<u8>)> = vec![
                (
                    b"bad-arp-claims-pod2",
                    eth(
                        BCAST,
                        m1,
                        0x0806,
                        &arp(1, m1, a2, gw, b"bad-arp-claims-pod2"),
                    ),
                ),
                (
                    b"bad-arp-claims-gw",
                    eth(BCAST, m1, 0x0806, &arp(2, m1, gw, a2, b"bad-arp-claims-gw")),
                ),
                (
                    b"bad-arp-sender-mac",
                    eth(
                        BCAST,
                        m1,
                        0x0806,
                        &arp(1, fake, a1, a2, b"bad-arp-sender-mac"),
                    ),
                ),
                (
                    b"bad-arp-eth-src",
                    eth(
                        BCAST,
                        fake,
                        0x0806,
                        &arp(1, fake, a1, a2, b"bad-arp-eth-src"),
                    ),
                ),
                (
                    b"bad-ip-src-pod2",
                    eth(BCAST, m1, 0x0800, &udp4(a2, b"bad-ip-src-pod2")),
                ),
                (
                    b"bad-ip-src-other",
                    eth(
                        BCAST,
                        m1,
                        0x0800,
                        &udp4(Ipv4Addr::new(198, 18, 90, 77), b"bad-ip-src-other"),
                    ),
                ),
                (
                    b"bad-mac-of-pod2",
                    eth(BCAST, m2, 0x0800, &udp4(a2, b"bad-mac-of-pod2")),
                ),
                (
                    b"bad-mac-fake",
                    eth(BCAST, fake, 0x0800, &udp4(a1, b"bad-mac-fake")),
                ),
                (b"bad-ipv6", eth(BCAST, m1, 0x86dd, &udp6(b"bad-ipv6"))),
                (b"bad-vlan", {
                    let mut tagged = vec![0, 5, 8, 0];
                    tagged.extend(udp4(a1, b"bad-vlan"));
                    eth(BCAST, m1, 0x8100, &tagged)
                }),
                (
                    b"ok-arp",
                    eth(BCAST, m1, 0x0806, &arp(1, m1, a1, a2, b"ok-arp")),
                ),
                (b"ok-ip", eth(BCAST, m1, 0x0800, &udp4(a1, b"ok-ip"))),
            ];
            let markers: Vec<Vec<u8>> = frames.iter().map(|(m, _)| m.to_vec()).collect();
            let sniffer = p2.run(sniff("eth0".into(), markers, 2, Duration::from_secs(5)));
            std::thread::sleep(Duration::from_millis(200));
            p1.run(move || {
                let fd = packet_socket("eth0");
                for (_, f) in &frames {
                    send_frame(&fd, f);
                }
            })
            .join()
            .unwrap();
            let seen = sniffer.join().unwrap();
            let seen: Vec<String> = seen
                .iter()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .collect();
            assert!(
                seen.contains(&"ok-arp".to_string()) && seen.contains(&"ok-ip".to_string()),
                "legitimate frames lost: {seen:?}"
            );
            let bad: Vec<&String> = seen.iter().filter(|m| m.starts_with("bad-")).collect();
            assert!(bad.is_empty(), "spoofed frames got through: {bad:?}");
            // Nor did the host believe pod 1 is pod 2.
            let n = host_neigh(a2, &c.bridge);
            assert!(
                !n.contains(&p1.net.mac),
                "host neighbour entry poisoned: {n}"
            );

            // Release: each pod's elements go, the tables stay (empty).
            let t = c.nft_table.clone();
            assert_eq!(all_elements(&t).len(), 4, "{:?}", all_elements(&t));
            p1.kill();
            p1.release(root.path());
            p1.release(root.path());
            let left = all_elements(&t);
            assert_eq!(left.len(), 2, "{left:?}");
            assert!(
                left.iter().all(|e| e.contains(&p2.net.host_ifname)),
                "{left:?}"
            );
            p2.release(root.path());
            assert_eq!(all_elements(&t), Vec::<String>::new());
            assert!(
                link_exists(&c.bridge),
                "the bridge stays after the last pod"
            );
            assert!(!link_exists(&p2.net.host_ifname));
        },
    );
}

#[test]
fn lifetime_of_the_host_side() {
    in_new_netns("lifetime_of_the_host_side", || {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let c = cfg("lt");
        let t = c.nft_table.clone();
        let web = [PortMapping {
            host_port: 18080,
            pod_port: 80,
            protocol: Protocol::Tcp,
        }];
        let info = berth_net::inspect(r, &c).unwrap();
        assert_eq!(info.state, "not set up");
        assert!(!info.bridge_exists && !info.ip_table_exists && !info.bridge_table_exists);

        // First pod: bridge, both tables and the record appear.
        let mut p1 = Pod::new(r, &c, 1, &web);
        p1.attach();
        let info = berth_net::inspect(r, &c).unwrap();
        assert_eq!(info.state, "set up");
        assert!(info.bridge_exists && info.ip_table_exists && info.bridge_table_exists);
        assert_eq!(info.leases.len(), 1);
        assert!(info.leases[0].live);
        assert_eq!(
            elements("ip", &t, "map", "port_addr").unwrap(),
            vec![r#"[{"concat":["tcp",18080]},"198.18.90.2"]"#.to_string()]
        );
        // DNAT to the pod's port: a connection to the gateway's port 18080
        // reaches a listener on the pod's port 80.
        let a1 = p1.net.address;
        let srv = p1.run(move || {
            let l = std::net::TcpListener::bind((a1, 80)).unwrap();
            let (_, peer) = l.accept().unwrap();
            peer
        });
        std::thread::sleep(Duration::from_millis(100));
        let conn = std::net::TcpStream::connect_timeout(
            &(c.subnet.gateway(), 18080).into(),
            Duration::from_secs(3),
        );
        assert!(conn.is_ok(), "dnat via the map: {conn:?}");
        srv.join().unwrap();

        // The same port again is refused; a second pod shares the tables.
        let e = berth_net::prepare(
            r,
            &c,
            &PodRequest {
                name: "pod9",
                uuid: "99999999-1111-4222-8333-444455556666",
                ports: &web,
                kvm: false,
            },
        );
        assert!(
            matches!(e, Err(berth_net::NetError::PortInUse { .. })),
            "{e:?}"
        );

        // Someone deletes the bridge table: the next pod rebuilds it, with
        // the live pod's elements.
        assert!(Command::new("nft")
            .args(["delete", "table", "bridge", &t])
            .status()
            .unwrap()
            .success());
        let mut p2 = Pod::new(r, &c, 2, &[]);
        p2.attach();
        let pods = elements("bridge", &t, "set", "pods").unwrap();
        assert_eq!(pods.len(), 2, "{pods:?}");
        assert!(
            pods.iter().any(|e| e.contains(&p1.net.host_ifname)),
            "{pods:?}"
        );

        // The ip table deleted: a pod without ports rebuilds it too.
        assert!(Command::new("nft")
            .args(["delete", "table", "ip", &t])
            .status()
            .unwrap()
            .success());
        let p6 = Pod::new(r, &c, 6, &[]);
        assert_eq!(
            elements("ip", &t, "map", "port_addr").unwrap().len(),
            1,
            "pod 1's port is back"
        );
        p6.release(r);
        drop(p6);

        // kill -9 of pod 2 and the gc path (release with the lease still
        // there): its elements go.
        p2.kill();
        p2.release(r);
        assert_eq!(elements("bridge", &t, "set", "pods").unwrap().len(), 1);

        // A pod whose stage1 died without anyone calling release: the next
        // prepare reclaims its lease and elements.
        let mut p3 = Pod::new(
            r,
            &c,
            3,
            &[PortMapping {
                host_port: 5353,
                pod_port: 53,
                protocol: Protocol::Udp,
            }],
        );
        p3.attach();
        assert_eq!(elements("ip", &t, "map", "port_port").unwrap().len(), 2);
        p3.kill();
        // (A child being forked can hold the lock's file description for a
        // moment: wait until the lease shows as dead.)
        let t0 = Instant::now();
        while berth_net::inspect(r, &c)
            .unwrap()
            .leases
            .iter()
            .any(|l| l.uuid == p3.uuid && l.live)
        {
            assert!(t0.elapsed() < Duration::from_secs(5), "pod 3 still live");
            std::thread::sleep(Duration::from_millis(10));
        }
        let p4 = Pod::new(r, &c, 4, &[]);
        assert_eq!(
            elements("ip", &t, "map", "port_port").unwrap().len(),
            1,
            "{:?} {:?}",
            elements("ip", &t, "map", "port_port"),
            std::fs::read_dir(r.join("net/leases"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );
        let pods = elements("bridge", &t, "set", "pods").unwrap();
        assert!(
            !pods.iter().any(|e| e.contains(&p3.net.host_ifname)),
            "{pods:?}"
        );
        assert_eq!(
            p4.net.address, p3.net.address,
            "the reclaimed address is reused"
        );

        // A changed berth.toml is refused while pods use the old network...
        let mut c2 = cfg("l2");
        c2.subnet = Subnet::parse("198.18.91.0/24").unwrap();
        let e = berth_net::prepare(
            r,
            &c2,
            &PodRequest {
                name: "pod8",
                uuid: "88888888-1111-4222-8333-444455556666",
                ports: &[],
                kvm: false,
            },
        );
        assert!(
            matches!(e, Err(berth_net::NetError::ConfigChanged { .. })),
            "{e:?}"
        );
        assert_eq!(berth_net::inspect(r, &c2).unwrap().state, "config changed");
        // ... and so is `network rm`, even forced.
        assert!(matches!(
            berth_net::remove(r, &c, true),
            Err(berth_net::NetError::InUse(_))
        ));

        // Once they are gone, the new network replaces the old one.
        p1.kill();
        p1.release(r);
        drop(p4); // dead, its lease left behind
        assert!(matches!(
            berth_net::remove(r, &c, false),
            Err(berth_net::NetError::DeadLeases(_))
        ));
        let p5 = Pod::new(r, &c2, 5, &[]);
        assert!(!link_exists(&c.bridge), "old bridge removed");
        assert!(
            nft_json(&["list", "table", "ip", &t]).is_none(),
            "old table removed"
        );
        assert!(link_exists(&c2.bridge));
        assert_eq!(p5.net.address, Ipv4Addr::new(198, 18, 91, 2));
        drop(p5);

        // network rm --force: dead leases collected, everything gone.
        let removed = berth_net::remove(r, &c2, true).unwrap();
        assert_eq!(removed[0].bridge, c2.bridge);
        assert!(!link_exists(&c2.bridge));
        assert!(nft_json(&["list", "table", "bridge", &c2.nft_table]).is_none());
        assert!(!berth_net::setup::path(r).exists());
        assert!(!r.join("net/leases").exists());
        assert_eq!(berth_net::inspect(r, &c2).unwrap().state, "not set up");
    });
}

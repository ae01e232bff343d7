//! Networking inside the VM: loopback (like the ns stage1's network
//! namespace), and for `--net private` the virtio-net interface configured
//! from the spec over rtnetlink (no DHCP, no `ip=` kernel autoconfig).

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("--net=host is impossible in a VM (use --stage1=ns)")]
    HostUnsupported,
    #[error("cannot open a socket to configure lo")]
    Socket(#[source] Errno),
    #[error("cannot bring lo up")]
    Up(#[source] Errno),
}

/// Bring `lo` up: socket + SIOCSIFFLAGS (2 syscalls; the socket is
/// close-on-exec and simply left open).
pub fn loopback_up() -> Result<(), NetError> {
    // SAFETY: socket(2) returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetError::Socket(Errno::last()));
    }
    // SAFETY: ifreq is plain data; all-zero is valid. The name is copied
    // within bounds ("lo" plus NUL fits IFNAMSIZ).
    let r = unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
        libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr as *const libc::ifreq)
    };
    Errno::result(r).map(drop).map_err(NetError::Up)
}

/// The kernel's name for the (only) virtio-net device.
pub const KERNEL_IFNAME: &str = "eth0";

/// Why the pod's interface could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("no network interface {0} (is the virtio-net device missing?)")]
    NoInterface(String, #[source] Errno),
    #[error("interface name {0:?} is too long")]
    Name(String),
    #[error("cannot open a netlink socket")]
    Socket(#[source] Errno),
    #[error("netlink request failed")]
    Io(#[source] Errno),
    #[error("{step} failed")]
    Refused {
        step: &'static str,
        #[source]
        source: Errno,
    },
    #[error("malformed netlink reply")]
    Reply,
}

/// The pod's interface as the spec describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface<'a> {
    /// The kernel's name for the virtio-net device (`eth0`).
    pub kernel_name: &'a str,
    /// The name the pod sees (renamed when different).
    pub name: &'a str,
    pub address: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: std::net::Ipv4Addr,
}

// rtnetlink constants not (all) in libc for musl.
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_IFNAME: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const NLMSG_ERROR: u16 = 2;

/// A netlink request under construction (header + body + attributes),
/// 4-byte aligned as rtnetlink requires.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Msg {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&0u32.to_ne_bytes()); // length, fixed in finish
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        let mut m = Msg(v);
        m.put(body);
        m
    }

    fn put(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        let mut a = Vec::with_capacity(4 + data.len());
        a.extend_from_slice(&len.to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        self.put(&a);
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len()).unwrap_or(u32::MAX);
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// The three requests that configure the interface: link up (renamed if
/// needed), address, default route — sequence numbers 1, 2, 3.
fn requests(ifindex: i32, iface: &Iface<'_>) -> Vec<u8> {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    let create = flags | (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut out = Vec::new();

    // struct ifinfomsg: family, pad, type, index, flags, change.
    let mut ifi = vec![libc::AF_UNSPEC as u8, 0];
    ifi.extend_from_slice(&0u16.to_ne_bytes());
    ifi.extend_from_slice(&ifindex.to_ne_bytes());
    ifi.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    ifi.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    let mut link = Msg::new(RTM_NEWLINK, flags, 1, &ifi);
    if iface.name != iface.kernel_name {
        let mut n = iface.name.as_bytes().to_vec();
        n.push(0);
        link.attr(IFLA_IFNAME, &n);
    }
    out.extend(link.finish());

    // struct ifaddrmsg: family, prefixlen, flags, scope, index.
    let mut ifa = vec![libc::AF_INET as u8, iface.prefix_len, 0, RT_SCOPE_UNIVERSE];
    ifa.extend_from_slice(&(ifindex as u32).to_ne_bytes());
    let mut addr = Msg::new(RTM_NEWADDR, create, 2, &ifa);
    addr.attr(IFA_LOCAL, &iface.address.octets());
    addr.attr(IFA_ADDRESS, &iface.address.octets());
    out.extend(addr.finish());

    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
    // type, flags.
    let mut rtm = vec![
        libc::AF_INET as u8,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ];
    rtm.extend_from_slice(&0u32.to_ne_bytes());
    let mut route = Msg::new(RTM_NEWROUTE, create, 3, &rtm);
    route.attr(RTA_GATEWAY, &iface.gateway.octets());
    route.attr(RTA_OIF, &ifindex.to_ne_bytes());
    out.extend(route.finish());
    out
}

/// Walk a buffer of netlink messages; for each NLMSG_ERROR, report
/// (sequence number, errno) — errno 0 is an ACK.
fn acks(buf: &[u8]) -> Result<Vec<(u32, i32)>, IfaceError> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 16 <= buf.len() {
        let word = |o: usize| -> Result<[u8; 4], IfaceError> {
            buf.get(o..o + 4)
                .and_then(|b| b.try_into().ok())
                .ok_or(IfaceError::Reply)
        };
        let len = u32::from_ne_bytes(word(off)?) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let seq = u32::from_ne_bytes(word(off + 8)?);
        if len < 16 || off + len > buf.len() {
            return Err(IfaceError::Reply);
        }
        if kind == NLMSG_ERROR {
            out.push((seq, i32::from_ne_bytes(word(off + 16)?)));
        }
        off += (len + 3) & !3;
    }
    Ok(out)
}

/// Configure the pod's interface over rtnetlink, in one sendmsg of three
/// requests (guest syscalls are expensive): up (and renamed), address,
/// default route via the gateway. ~5 syscalls.
pub fn configure(iface: &Iface<'_>) -> Result<(), IfaceError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let name = std::ffi::CString::new(iface.kernel_name)
        .map_err(|_| IfaceError::Name(iface.kernel_name.into()))?;
    if iface.name.len() >= libc::IFNAMSIZ {
        return Err(IfaceError::Name(iface.name.into()));
    }
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(IfaceError::NoInterface(
            iface.kernel_name.into(),
            Errno::last(),
        ));
    }
    let index = i32::try_from(index).map_err(|_| IfaceError::Reply)?;
    // SAFETY: socket(2) returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    let fd = Errno::result(fd).map_err(IfaceError::Socket)?;
    // SAFETY: the kernel just returned this fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let req = requests(index, iface);
    // SAFETY: sockaddr_nl is plain data; all-zero addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: sendto from a live buffer to a live sockaddr_nl.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    Errno::result(n).map_err(IfaceError::Io)?;
    let steps = [
        "bringing the interface up",
        "adding the address",
        "adding the default route",
    ];
    let mut done = [false; 3];
    let mut buf = vec![0u8; 8192];
    while done.iter().any(|d| !d) {
        // SAFETY: recv into a live buffer of the given length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(Errno::result(n).map_err(IfaceError::Io)?).unwrap_or(0);
        if n == 0 {
            return Err(IfaceError::Reply);
        }
        for (seq, err) in acks(buf.get(..n).unwrap_or(&[]))? {
            let i = usize::try_from(seq).unwrap_or(0).wrapping_sub(1);
            let Some(step) = steps.get(i) else { continue };
            if err != 0 {
                return Err(IfaceError::Refused {
                    step,
                    source: Errno::from_raw(-err),
                });
            }
            done[i] = true;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn iface(name: &'static str) -> Iface<'static> {
        Iface {
            kernel_name: "eth0",
            name,
            address: Ipv4Addr::new(10, 88, 0, 5),
            prefix_len: 16,
            gateway: Ipv4Addr::new(10, 88, 0, 1),
        }
    }

    #[test]
    fn requests_are_three_aligned_messages() {
        let r = requests(7, &iface("eth0"));
        let mut off = 0;
        let mut kinds = Vec::new();
        while off < r.len() {
            let len = u32::from_ne_bytes(r[off..off + 4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            kinds.push(u16::from_ne_bytes([r[off + 4], r[off + 5]]));
            off += len;
        }
        assert_eq!(off, r.len());
        assert_eq!(kinds, [RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE]);
        // The address and gateway are in there, in network order.
        let has = |b: &[u8]| r.windows(b.len()).any(|w| w == b);
        assert!(has(&[10, 88, 0, 5]) && has(&[10, 88, 0, 1]));
        // Renaming adds IFLA_IFNAME.
        let renamed = requests(7, &iface("net0"));
        assert!(renamed.windows(5).any(|w| w == b"net0\0"));
        assert!(!r.windows(5).any(|w| w == b"eth0\0"));
    }

    #[test]
    fn acks_parse_errors_and_reject_garbage() {
        let mut reply = Vec::new();
        for (seq, err) in [(1u32, 0i32), (2, -17)] {
            reply.extend_from_slice(&36u32.to_ne_bytes());
            reply.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            reply.extend_from_slice(&0u16.to_ne_bytes());
            reply.extend_from_slice(&seq.to_ne_bytes());
            reply.extend_from_slice(&0u32.to_ne_bytes());
            reply.extend_from_slice(&err.to_ne_bytes());
            reply.extend_from_slice(&[0u8; 16]);
        }
        assert_eq!(acks(&reply).unwrap(), [(1, 0), (2, -17)]);
        assert!(acks(&[0xff; 20]).is_err());
        assert!(acks(&[]).unwrap().is_empty());
    }

    #[test]
    fn configures_a_dummy_interface_in_a_private_netns() {
        // Needs root (CI is root): a throw-away network namespace on a
        // thread of its own, with a dummy-like veth pair created by ip(8).
        // SAFETY: geteuid(2) has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let h = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            let ns = format!("/proc/{}/task/{tid}/ns/net", std::process::id());
            let ip = |args: &[&str]| {
                let st = std::process::Command::new("nsenter")
                    .arg(format!("--net={ns}"))
                    .arg("ip")
                    .args(args)
                    .status()
                    .unwrap();
                assert!(st.success(), "ip {args:?}");
            };
            ip(&[
                "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
            ]);
            ip(&["link", "set", "peer0", "up"]);
            configure(&iface("pod0")).unwrap();
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net={ns}"))
                .args(["ip", "-4", "-o", "addr", "show", "dev", "pod0"])
                .output()
                .unwrap();
            let addrs = String::from_utf8_lossy(&out.stdout).into_owned();
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net={ns}"))
                .args(["ip", "-4", "route", "show", "default"])
                .output()
                .unwrap();
            let routes = String::from_utf8_lossy(&out.stdout).into_owned();
            // Adding the same address again is refused, naming the step.
            let again = configure(&iface("pod0")).map(|_| ()).unwrap_err();
            (addrs, routes, again.to_string())
        });
        let (addrs, routes, again) = h.join().unwrap();
        assert!(addrs.contains("10.88.0.5/16"), "{addrs}");
        assert!(
            routes.contains("default via 10.88.0.1 dev pod0"),
            "{routes}"
        );
        assert!(again.contains("no network interface eth0"), "{again}");
    }
}

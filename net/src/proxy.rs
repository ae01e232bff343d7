//! The userspace localhost proxy for published ports.
//!
//! DNAT cannot send connections to 127.0.0.1 anywhere else without
//! `route_localnet` (which exposes the host's loopback to the network), so
//! `127.0.0.1:HOSTPORT` is served by this proxy instead: listeners in the
//! host's network namespace, owned by the stage1 process (they live exactly
//! as long as the pod). A TCP client is connected to `POD_ADDRESS:PODPORT`
//! and the bytes are copied both ways. A UDP client (one source address and
//! port) gets a session: a socket connected to `POD_ADDRESS:PODPORT` that
//! carries its datagrams to the pod and the pod's replies back to it, closed
//! after [`UDP_IDLE`] without traffic either way (at most
//! [`UDP_MAX_SESSIONS`] at a time; datagrams from further clients are
//! dropped, as a full conntrack table would). Connections to the host's
//! other addresses are DNATed by nftables and never reach the proxy.

use berth_spec::{PortMapping, Protocol};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A UDP session without a datagram either way for this long is closed
/// (conntrack's default for an answered UDP flow is 120 s, docker-proxy's
/// is 90 s; pods that need longer keep their flows busy).
pub const UDP_IDLE: Duration = Duration::from_secs(90);

/// Concurrent UDP sessions per published port.
pub const UDP_MAX_SESSIONS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on 127.0.0.1:{port}/{} (is the port in use on the host?)", protocol.as_str())]
    Bind {
        port: u16,
        protocol: Protocol,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the proxy thread")]
    Thread(#[source] std::io::Error),
}

/// Listeners for the pod's published ports. The threads run until the
/// process exits; dropping this value does not stop them.
pub struct LocalProxy {
    /// The bound `(port, protocol)` pairs, in the order of the mappings.
    pub ports: Vec<(u16, Protocol)>,
}

enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Bind `127.0.0.1:host_port` for every mapping (TCP and UDP) and start
/// serving. All ports are bound before any thread starts, so a port
/// conflict fails the whole call.
pub fn start(ports: &[PortMapping], pod: Ipv4Addr) -> Result<LocalProxy, ProxyError> {
    let mut listeners = Vec::new();
    for p in ports {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, p.host_port);
        let bind_error = |source| ProxyError::Bind {
            port: p.host_port,
            protocol: p.protocol,
            source,
        };
        let l = match p.protocol {
            Protocol::Tcp => Listener::Tcp(TcpListener::bind(addr).map_err(bind_error)?),
            Protocol::Udp => Listener::Udp(UdpSocket::bind(addr).map_err(bind_error)?),
        };
        listeners.push((l, SocketAddrV4::new(pod, p.pod_port)));
    }
    for (l, target) in listeners {
        let protocol = match &l {
            Listener::Tcp(_) => Protocol::Tcp,
            Listener::Udp(_) => Protocol::Udp,
        };
        std::thread::Builder::new()
            .name(format!("proxy-{}-{}", protocol.as_str(), target.port()))
            .spawn(move || match l {
                Listener::Tcp(l) => serve(l, target),
                Listener::Udp(l) => serve_udp(l, target, UDP_IDLE),
            })
            .map_err(ProxyError::Thread)?;
    }
    Ok(LocalProxy {
        ports: ports.iter().map(|p| (p.host_port, p.protocol)).collect(),
    })
}

fn serve(l: TcpListener, target: SocketAddrV4) {
    for client in l.incoming() {
        let Ok(client) = client else { continue };
        let _ = std::thread::Builder::new().spawn(move || match TcpStream::connect(target) {
            Ok(upstream) => splice(client, upstream),
            Err(e) => log::debug!("net: proxy to {target}: {e}"),
        });
    }
}

/// Copy both ways until each side has sent EOF.
fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let t = std::thread::Builder::new().spawn(move || copy(a2, b2));
    copy(b, a);
    if let Ok(t) = t {
        let _ = t.join();
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// One UDP client's session: its socket towards the pod and when a
/// datagram last went either way.
struct UdpSession {
    upstream: UdpSocket,
    last: Mutex<Instant>,
    idle: Duration,
}

impl UdpSession {
    fn touch(&self) {
        if let Ok(mut t) = self.last.lock() {
            *t = Instant::now();
        }
    }

    fn idle(&self) -> bool {
        self.last
            .lock()
            .map(|t| t.elapsed() >= self.idle)
            .unwrap_or(true)
    }
}

type UdpSessions = Arc<Mutex<HashMap<SocketAddr, Arc<UdpSession>>>>;

/// Relay datagrams from clients of `l` to `target`, one session per client,
/// each closed after `idle` without traffic.
fn serve_udp(l: UdpSocket, target: SocketAddrV4, idle: Duration) {
    let l = Arc::new(l);
    let sessions: UdpSessions = Arc::default();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let Ok((n, client)) = l.recv_from(&mut buf) else {
            continue;
        };
        let Some(session) = udp_session(&l, &sessions, client, target, idle) else {
            continue;
        };
        // A refused earlier datagram (ICMP port unreachable) shows up as an
        // error here; UDP has no connection to fail, so it is dropped.
        let _ = session.upstream.send(&buf[..n]);
    }
}

/// The session for `client`, marked active, or started (socket connected to
/// `target`, reply thread running) if it has none; `None` when the table is
/// full or the socket cannot be made. Marking it under the table's lock is
/// what lets the reply thread's idle check (under the same lock) never close
/// a session a datagram is on its way through.
fn udp_session(
    l: &Arc<UdpSocket>,
    sessions: &UdpSessions,
    client: SocketAddr,
    target: SocketAddrV4,
    idle: Duration,
) -> Option<Arc<UdpSession>> {
    let mut table = sessions.lock().ok()?;
    if let Some(s) = table.get(&client) {
        s.touch();
        return Some(s.clone());
    }
    if table.len() >= UDP_MAX_SESSIONS {
        log::debug!("net: udp proxy to {target}: {UDP_MAX_SESSIONS} sessions, dropping {client}");
        return None;
    }
    let upstream = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    upstream.connect(target).ok()?;
    // Wake up now and then to notice an idle session.
    upstream.set_read_timeout(Some(idle / 4)).ok()?;
    let session = Arc::new(UdpSession {
        upstream,
        last: Mutex::new(Instant::now()),
        idle,
    });
    let (l2, s2, t2) = (l.clone(), session.clone(), sessions.clone());
    std::thread::Builder::new()
        .name(format!("proxy-udp-{}", target.port()))
        .spawn(move || udp_replies(&l2, &s2, &t2, client))
        .ok()?;
    table.insert(client, session.clone());
    Some(session)
}

/// Send the pod's replies in `session` back to `client` through the
/// listener, until the session has been idle for its `idle` time.
fn udp_replies(
    l: &UdpSocket,
    session: &Arc<UdpSession>,
    sessions: &UdpSessions,
    client: SocketAddr,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match session.upstream.recv(&mut buf) {
            Ok(n) => {
                session.touch();
                let _ = l.send_to(&buf[..n], client);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Checked under the table's lock (see udp_session).
                let Ok(mut table) = sessions.lock() else {
                    return;
                };
                if session.idle() {
                    table.remove(&client);
                    return;
                }
            }
            // The pod has no listener (yet): keep the session.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            // Anything else would repeat on every call: end the session.
            Err(_) => {
                if let Ok(mut table) = sessions.lock() {
                    table.remove(&client);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_tcp_on_loopback() {
        // The "pod": an echo server on another loopback port.
        let pod = TcpListener::bind("127.0.0.1:0").unwrap();
        let pod_port = pod.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = pod.accept().unwrap();
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            s.write_all(&v).unwrap();
        });
        // Pick a free host port.
        let host_port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = start(
            &[PortMapping {
                host_port,
                pod_port,
                protocol: Protocol::Tcp,
            }],
            Ipv4Addr::LOCALHOST,
        )
        .unwrap();
        assert_eq!(p.ports, vec![(host_port, Protocol::Tcp)]);
        let mut c = TcpStream::connect(("127.0.0.1", host_port)).unwrap();
        c.write_all(b"hello").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        c.read_to_string(&mut back).unwrap();
        assert_eq!(back, "hello");
        // The port is taken now.
        assert!(matches!(
            start(
                &[PortMapping {
                    host_port,
                    pod_port,
                    protocol: Protocol::Tcp
                }],
                Ipv4Addr::LOCALHOST
            ),
            Err(ProxyError::Bind { .. })
        ));
    }

    /// A UDP "pod" on loopback answering every datagram with
    /// `<datagram> from <source port>`.
    fn udp_pod() -> u16 {
        let pod = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = pod.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                let (n, from) = pod.recv_from(&mut buf).unwrap();
                let reply = format!(
                    "{} from {}",
                    String::from_utf8_lossy(&buf[..n]),
                    from.port()
                );
                pod.send_to(reply.as_bytes(), from).unwrap();
            }
        });
        port
    }

    fn ask(c: &UdpSocket, to: SocketAddr, what: &str) -> String {
        c.send_to(what.as_bytes(), to).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(from, to, "the reply comes from the published address");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn client() -> UdpSocket {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    }

    #[test]
    fn proxies_udp_per_client_sessions() {
        let pod_port = udp_pod();
        let host_port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mapping = [PortMapping {
            host_port,
            pod_port,
            protocol: Protocol::Udp,
        }];
        let p = start(&mapping, Ipv4Addr::LOCALHOST).unwrap();
        assert_eq!(p.ports, vec![(host_port, Protocol::Udp)]);
        let to: SocketAddr = ([127, 0, 0, 1], host_port).into();
        let (a, b) = (client(), client());
        let a1 = ask(&a, to, "a1");
        let b1 = ask(&b, to, "b1");
        let a2 = ask(&a, to, "a2");
        // Each client keeps its own session (source port at the pod).
        let port_of = |r: &str| r.rsplit(' ').next().unwrap().to_string();
        assert!(
            a1.starts_with("a1 from ") && a2.starts_with("a2 from "),
            "{a1} {a2}"
        );
        assert_eq!(port_of(&a1), port_of(&a2));
        assert!(b1.starts_with("b1 from "));
        assert_ne!(port_of(&a1), port_of(&b1));
        // The UDP port is taken now.
        assert!(matches!(
            start(&mapping, Ipv4Addr::LOCALHOST),
            Err(ProxyError::Bind {
                protocol: Protocol::Udp,
                ..
            })
        ));
    }

    #[test]
    fn idle_udp_sessions_are_closed() {
        let pod_port = udp_pod();
        let l = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let idle = Duration::from_millis(200);
        std::thread::spawn(move || {
            serve_udp(l, SocketAddrV4::new(Ipv4Addr::LOCALHOST, pod_port), idle)
        });
        let c = client();
        let port_of = |r: String| r.rsplit(' ').next().unwrap().to_string();
        let first = port_of(ask(&c, to, "x"));
        // Traffic within the idle time keeps the session.
        std::thread::sleep(idle / 2);
        assert_eq!(port_of(ask(&c, to, "x")), first);
        // After it, the next datagram gets a new session (new socket).
        std::thread::sleep(idle * 3);
        assert_ne!(port_of(ask(&c, to, "x")), first);
    }
}

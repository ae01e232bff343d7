//! The userspace localhost proxy for published TCP ports.
//!
//! DNAT cannot send connections to 127.0.0.1 anywhere else without
//! `route_localnet` (which exposes the host's loopback to the network), so
//! `127.0.0.1:HOSTPORT` is served by this proxy instead: a listener in the
//! host's network namespace, owned by the stage1 process (it lives exactly as
//! long as the pod), that connects each client to `POD_ADDRESS:PODPORT`.
//! Connections to the host's other addresses are DNATed by nftables and never
//! reach it. UDP ports are DNATed from the host's addresses only.

use berth_spec::{PortMapping, Protocol};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on 127.0.0.1:{port} (is the port in use on the host?)")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the proxy thread")]
    Thread(#[source] std::io::Error),
}

/// Listeners for the pod's TCP ports. The accept threads run until the
/// process exits; dropping this value does not stop them.
pub struct LocalProxy {
    pub ports: Vec<u16>,
}

/// Bind `127.0.0.1:host_port` for every TCP mapping and start serving.
/// All ports are bound before any thread starts, so a port conflict fails
/// the whole call.
pub fn start(ports: &[PortMapping], pod: Ipv4Addr) -> Result<LocalProxy, ProxyError> {
    let mut listeners = Vec::new();
    for p in ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
        let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p.host_port)).map_err(
            |source| ProxyError::Bind {
                port: p.host_port,
                source,
            },
        )?;
        listeners.push((l, SocketAddrV4::new(pod, p.pod_port)));
    }
    let bound = listeners
        .iter()
        .filter_map(|(l, _)| l.local_addr().ok().map(|a| a.port()))
        .collect();
    for (l, target) in listeners {
        std::thread::Builder::new()
            .name(format!("proxy-{}", target.port()))
            .spawn(move || serve(l, target))
            .map_err(ProxyError::Thread)?;
    }
    Ok(LocalProxy { ports: bound })
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
        assert_eq!(p.ports, vec![host_port]);
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
}

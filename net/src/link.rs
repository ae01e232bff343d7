//! Links, addresses and routes over rtnetlink (no `ip` subprocesses), driven
//! by a tokio current-thread runtime owned by [`Netlink`].

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot start the netlink runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot enter the pod's network namespace")]
    Setns(#[source] std::io::Error),
    #[error("cannot {what} {name}")]
    Request {
        what: &'static str,
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("interface {0} does not exist")]
    Missing(String),
    #[error("mac address {0:?} is not valid")]
    Mac(String),
}

/// A netlink connection in one network namespace.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(s: &str) -> Result<Vec<u8>, LinkError> {
    let b: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| LinkError::Mac(s.into()))?;
    if b.len() == 6 {
        Ok(b)
    } else {
        Err(LinkError::Mac(s.into()))
    }
}

impl Netlink {
    /// A connection in the calling thread's network namespace.
    pub fn new() -> Result<Netlink, LinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(LinkError::Runtime)?;
        let handle = {
            let _g = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
            rt.spawn(conn);
            handle
        };
        Ok(Netlink { rt, handle })
    }

    /// A connection in the network namespace `ns` (an open
    /// `/proc/PID/ns/net`). The socket is created by a short-lived thread
    /// that entered the namespace; a socket stays in the namespace it was
    /// created in, so the caller's own namespace is never changed.
    pub fn in_netns(ns: BorrowedFd<'_>) -> Result<Netlink, LinkError> {
        let fd = ns.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on a namespace fd the caller keeps open for
                // this call; it only changes this (scoped) thread.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(LinkError::Setns(std::io::Error::last_os_error()));
                }
                Netlink::new()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(LinkError::Setns(std::io::Error::other(
                    "netns thread panicked",
                )))
            })
        })
    }

    fn req(what: &'static str, name: &str) -> impl FnOnce(rtnetlink::Error) -> LinkError {
        let name = name.to_string();
        move |source| LinkError::Request { what, name, source }
    }

    /// The index of interface `name`, or None when it does not exist.
    pub fn index(&self, name: &str) -> Result<Option<u32>, LinkError> {
        let h = self.handle.clone();
        let r = self.rt.block_on(async move {
            h.link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
        });
        match r {
            Ok(m) => Ok(m.map(|m| m.header.index)),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(Self::req("look up", name)(e)),
        }
    }

    /// Create bridge `name` with address `gateway/prefix_len` unless it
    /// exists, and bring it up. Returns its index.
    pub fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<u32, LinkError> {
        let h = self.handle.clone();
        let idx = match self.index(name)? {
            Some(i) => i,
            None => {
                let r = self
                    .rt
                    .block_on(h.link().add(LinkBridge::new(name).build()).execute());
                match r {
                    Ok(()) => {}
                    Err(e) if errno_of(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(Self::req("create bridge", name)(e)),
                }
                self.index(name)?
                    .ok_or_else(|| LinkError::Missing(name.into()))?
            }
        };
        let r = self.rt.block_on(
            h.address()
                .add(idx, IpAddr::V4(gateway), prefix_len)
                .execute(),
        );
        match r {
            Ok(()) => {}
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(Self::req("add the gateway address to", name)(e)),
        }
        self.rt
            .block_on(
                h.link()
                    .set(LinkUnspec::new_with_index(idx).up().build())
                    .execute(),
            )
            .map_err(Self::req("bring up", name))?;
        Ok(idx)
    }

    /// Delete interface `name`; Ok(false) if it did not exist.
    pub fn delete(&self, name: &str) -> Result<bool, LinkError> {
        let Some(idx) = self.index(name)? else {
            return Ok(false);
        };
        match self.rt.block_on(self.handle.link().del(idx).execute()) {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(Self::req("delete", name)(e)),
        }
    }

    /// Create a veth pair in one request: `host` attached to bridge
    /// `bridge_idx` and up, its peer named `peer` with address `mac` created
    /// directly in the network namespace `peer_ns`.
    pub fn add_veth(
        &self,
        host: &str,
        bridge_idx: u32,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
        mac: &str,
    ) -> Result<(), LinkError> {
        let peer_msg = LinkUnspec::new_with_name(peer)
            .setns_by_fd(peer_ns.as_raw_fd())
            .address(parse_mac(mac)?)
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .controller(bridge_idx)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(Self::req("create veth", host))
    }

    /// Attach existing interface `name` to bridge `bridge_idx` and bring it up.
    pub fn attach(&self, name: &str, bridge_idx: u32) -> Result<(), LinkError> {
        let idx = self
            .index(name)?
            .ok_or_else(|| LinkError::Missing(name.into()))?;
        self.rt
            .block_on(
                self.handle
                    .link()
                    .set(
                        LinkUnspec::new_with_index(idx)
                            .controller(bridge_idx)
                            .up()
                            .build(),
                    )
                    .execute(),
            )
            .map_err(Self::req("attach to the bridge", name))
    }

    /// Inside a pod: bring `ifname` up with `address/prefix_len` and a
    /// default route via `gateway`.
    pub fn configure(
        &self,
        ifname: &str,
        address: Ipv4Addr,
        prefix_len: u8,
        gateway: Ipv4Addr,
    ) -> Result<(), LinkError> {
        let idx = self
            .index(ifname)?
            .ok_or_else(|| LinkError::Missing(ifname.into()))?;
        let h = self.handle.clone();
        self.rt
            .block_on(
                h.link()
                    .set(LinkUnspec::new_with_index(idx).up().build())
                    .execute(),
            )
            .map_err(Self::req("bring up", ifname))?;
        self.rt
            .block_on(
                h.address()
                    .add(idx, IpAddr::V4(address), prefix_len)
                    .execute(),
            )
            .map_err(Self::req("add the address to", ifname))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(idx)
            .build();
        self.rt
            .block_on(h.route().add(route).execute())
            .map_err(Self::req("add the default route via", ifname))
    }
}

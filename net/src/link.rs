//! Links, addresses and routes over rtnetlink (no `ip` subprocesses): the
//! messages are built with rtnetlink's builders and exchanged on a blocking
//! netlink socket ([`crate::nlsock`]) — no async runtime to start per call.
//! Requests that do not depend on each other's answers go in one `sendmsg`.

use crate::nlsock::NlSocket;
use rtnetlink::packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{
    AddressMessageBuilder, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot enter the pod's network namespace")]
    Setns(#[source] std::io::Error),
    #[error("no answer from rtnetlink")]
    Recv(#[source] std::io::Error),
    #[error("cannot {what} {name}")]
    Request {
        what: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {0} does not exist")]
    Missing(String),
    #[error("mac address {0:?} is not valid")]
    Mac(String),
}

/// A netlink connection in one network namespace.
pub struct Netlink {
    sock: NlSocket,
}

/// One request of a [`Netlink::send`]: the message, what it does (for the
/// error) and errnos that count as success.
struct Req {
    msg: RouteNetlinkMessage,
    flags: u16,
    what: &'static str,
    ok_errnos: &'static [i32],
}

const NEW: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
const ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;

impl Netlink {
    /// A connection in the calling thread's network namespace.
    pub fn new() -> Result<Netlink, LinkError> {
        Ok(Netlink {
            sock: NlSocket::open(rtnetlink::sys::protocols::NETLINK_ROUTE)
                .map_err(LinkError::Socket)?,
        })
    }

    /// A connection in the network namespace `ns` (an open
    /// `/proc/PID/ns/net`). The calling thread enters the namespace, opens
    /// the socket (a socket stays in the namespace it was created in) and
    /// returns to its own namespace at once. (A helper thread doing the same
    /// cost 80 µs to several ms here; this costs 15 µs.) Should the way back
    /// fail — it cannot, short of the kernel refusing a namespace the thread
    /// was just in — the process aborts rather than go on in the pod's
    /// network namespace.
    pub fn in_netns(ns: BorrowedFd<'_>) -> Result<Netlink, LinkError> {
        let own = std::fs::File::open("/proc/thread-self/ns/net").map_err(LinkError::Setns)?;
        // SAFETY: setns on a namespace fd the caller keeps open for this
        // call; it changes only this thread, which goes back below.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(LinkError::Setns(std::io::Error::last_os_error()));
        }
        let r = Netlink::new();
        // SAFETY: as above, with the thread's own namespace, which it held
        // a moment ago.
        if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "berth: cannot return to the host network namespace: {}",
                std::io::Error::last_os_error()
            );
            std::process::abort();
        }
        r
    }

    /// Send `reqs` in one `sendmsg` and wait for all answers; the first
    /// refusal (not in its `ok_errnos`) is the error. GET replies go to
    /// `on_reply`.
    fn send(
        &self,
        name: &str,
        reqs: Vec<Req>,
        on_reply: impl FnMut(&crate::nlsock::Msg<'_>),
    ) -> Result<(), LinkError> {
        let mut buf = Vec::new();
        let mut seqs = Vec::with_capacity(reqs.len());
        let mut meta = Vec::with_capacity(reqs.len());
        for r in reqs {
            let mut m = NetlinkMessage::from(r.msg);
            m.header.flags = r.flags;
            m.header.sequence_number = self.sock.next_seq();
            m.finalize();
            let at = buf.len();
            buf.resize(at + m.buffer_len(), 0);
            m.serialize(&mut buf[at..]);
            // Messages are 4-byte aligned in a multi-message buffer.
            buf.resize(buf.len().div_ceil(4) * 4, 0);
            seqs.push(m.header.sequence_number);
            meta.push((r.what, r.ok_errnos));
        }
        let refused = self
            .sock
            .exchange(&buf, &seqs, on_reply)
            .map_err(LinkError::Recv)?;
        match refused.into_iter().find(|r| {
            meta.get(r.index)
                .is_none_or(|(_, ok)| !ok.contains(&r.errno))
        }) {
            None => Ok(()),
            Some(r) => Err(LinkError::Request {
                what: meta.get(r.index).map_or("configure", |m| m.0),
                name: name.to_string(),
                source: std::io::Error::from_raw_os_error(r.errno),
            }),
        }
    }

    /// The index of interface `name`, or None when it does not exist.
    pub fn index(&self, name: &str) -> Result<Option<u32>, LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let mut idx = None;
        let r = self.send(
            name,
            vec![Req {
                msg: RouteNetlinkMessage::GetLink(msg),
                flags: ACK,
                what: "look up",
                ok_errnos: &[],
            }],
            |m| {
                // RTM_NEWLINK: struct ifinfomsg, index at bytes 4..8.
                if m.ty == libc::RTM_NEWLINK && m.payload.len() >= 8 {
                    let p = m.payload;
                    idx = Some(u32::from_ne_bytes([p[4], p[5], p[6], p[7]]));
                }
            },
        );
        match r {
            Err(LinkError::Request { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(idx),
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
        let idx = match self.index(name)? {
            Some(i) => i,
            None => {
                self.send(
                    name,
                    vec![Req {
                        msg: RouteNetlinkMessage::NewLink(LinkBridge::new(name).build()),
                        flags: NEW,
                        what: "create bridge",
                        ok_errnos: &[libc::EEXIST],
                    }],
                    |_| {},
                )?;
                self.index(name)?
                    .ok_or_else(|| LinkError::Missing(name.into()))?
            }
        };
        self.send(
            name,
            vec![Req {
                msg: RouteNetlinkMessage::NewAddress(
                    AddressMessageBuilder::<Ipv4Addr>::new()
                        .index(idx)
                        .address(gateway, prefix_len)
                        .build(),
                ),
                flags: NEW,
                what: "add the gateway address to",
                ok_errnos: &[libc::EEXIST],
            }],
            |_| {},
        )?;
        self.send(
            name,
            vec![Req {
                msg: RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(idx).up().build()),
                flags: ACK,
                what: "bring up",
                ok_errnos: &[],
            }],
            |_| {},
        )?;
        Ok(idx)
    }

    /// Delete interface `name`; Ok(false) if it did not exist.
    pub fn delete(&self, name: &str) -> Result<bool, LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let r = self.send(
            name,
            vec![Req {
                msg: RouteNetlinkMessage::DelLink(msg),
                flags: ACK,
                what: "delete",
                ok_errnos: &[],
            }],
            |_| {},
        );
        match r {
            Ok(()) => Ok(true),
            Err(LinkError::Request { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Create a veth pair in one request: `host` attached to bridge
    /// `bridge_idx` and up, its peer named `peer` with address `mac` created
    /// directly in the network namespace `peer_ns` (down: a veth end cannot
    /// be brought up before its pair exists, ENOTCONN).
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
            .address(
                berth_spec::parse_mac(mac)
                    .ok_or_else(|| LinkError::Mac(mac.into()))?
                    .to_vec(),
            )
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .controller(bridge_idx)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.send(
            host,
            vec![Req {
                msg: RouteNetlinkMessage::NewLink(msg),
                flags: NEW,
                what: "create veth",
                ok_errnos: &[],
            }],
            |_| {},
        )
    }

    /// Attach existing interface `name` to bridge `bridge_idx` and bring it up.
    pub fn attach(&self, name: &str, bridge_idx: u32) -> Result<(), LinkError> {
        let idx = self
            .index(name)?
            .ok_or_else(|| LinkError::Missing(name.into()))?;
        self.send(
            name,
            vec![Req {
                msg: RouteNetlinkMessage::SetLink(
                    LinkUnspec::new_with_index(idx)
                        .controller(bridge_idx)
                        .up()
                        .build(),
                ),
                flags: ACK,
                what: "attach to the bridge",
                ok_errnos: &[],
            }],
            |_| {},
        )
    }

    /// Inside a pod: bring `ifname` up with `address/prefix_len` and a
    /// default route via `gateway`: three requests in one `sendmsg`, handled
    /// by the kernel in order.
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
        let addr = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(idx)
            .address(address, prefix_len)
            .build();
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(idx)
            .build();
        self.send(
            ifname,
            vec![
                Req {
                    msg: RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(idx).up().build()),
                    flags: ACK,
                    what: "bring up",
                    ok_errnos: &[],
                },
                Req {
                    msg: RouteNetlinkMessage::NewAddress(addr),
                    flags: NEW,
                    what: "add the address to",
                    ok_errnos: &[],
                },
                Req {
                    msg: RouteNetlinkMessage::NewRoute(route),
                    flags: NEW,
                    what: "add the default route via",
                    ok_errnos: &[],
                },
            ],
            |_| {},
        )
    }
}

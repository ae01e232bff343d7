//! nf_tables over netlink, for the per-pod changes: set and map elements
//! added and deleted in one atomic batch (`NFNL_MSG_BATCH_BEGIN` … `END`),
//! and table look-ups — no `nft` process. Messages are built with
//! `netlink-packet-netfilter` and sent on a blocking `netlink-sys` socket.
//!
//! The tables, sets and rules themselves are created once by [`crate::nft`]
//! (through the `nft` binary, which knows how to describe set types for
//! `nft list`); the element encodings here follow nft's (see
//! [`crate::nft::pod_elements`]).

use crate::nlsock::NlSocket;
use netlink_packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
    SetElementMessage, TableAttribute, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::protocols::NETLINK_NETFILTER;

const NFNL_SUBSYS_NFTABLES: u16 = 10;

#[derive(Debug, thiserror::Error)]
pub enum NfnlError {
    #[error("cannot open an nf_tables netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("no answer from nf_tables")]
    Recv(#[source] std::io::Error),
    #[error("cannot {what}")]
    Request {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl NfnlError {
    /// The errno the kernel answered with, if this is a refused request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NfnlError::Request { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The address families berth's tables use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ip,
    Bridge,
}

impl Family {
    fn proto(self) -> NetfilterProtoFamily {
        match self {
            Family::Ip => NetfilterProtoFamily::IPv4,
            Family::Bridge => NetfilterProtoFamily::Bridge,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Bridge => "bridge",
        }
    }
}

/// One set element (or map element, with `data`), in the kernel's encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub family: Family,
    pub table: String,
    pub set: String,
    pub key: Vec<u8>,
    pub data: Option<Vec<u8>>,
}

impl std::fmt::Display for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "element of {} {} {}",
            self.family.as_str(),
            self.table,
            self.set
        )
    }
}

/// A netlink socket to nf_tables in the calling thread's network namespace.
pub struct Nfnl {
    sock: NlSocket,
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Add,
    Delete,
}

impl Nfnl {
    pub fn new() -> Result<Nfnl, NfnlError> {
        Ok(Nfnl {
            sock: NlSocket::open(NETLINK_NETFILTER).map_err(NfnlError::Socket)?,
        })
    }

    fn message(
        &self,
        family: NetfilterProtoFamily,
        res_id: u16,
        flags: u16,
        inner: impl Into<netlink_packet_netfilter::NetfilterMessageInner>,
    ) -> (u32, Vec<u8>) {
        let mut m = NetlinkMessage::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, res_id),
            inner,
        ));
        let seq = self.sock.next_seq();
        m.header.flags = flags;
        m.header.sequence_number = seq;
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        (seq, buf)
    }

    fn exchange(&self, buf: &[u8], seqs: &[u32]) -> Result<Option<(usize, i32)>, NfnlError> {
        let refused = self
            .sock
            .exchange(buf, seqs, |_| {})
            .map_err(NfnlError::Recv)?;
        Ok(refused.first().map(|r| (r.index, r.errno)))
    }

    fn batch(&mut self, op: Op, elems: &[Element]) -> Result<(), NfnlError> {
        let (_, mut buf) = self.message(
            NetfilterProtoFamily::Unspec,
            NFNL_SUBSYS_NFTABLES,
            NLM_F_REQUEST,
            ControlMessage::BatchBegin,
        );
        let mut seqs = Vec::with_capacity(elems.len());
        for e in elems {
            let mut attrs = vec![SetElementAttribute::Key(DataAttribute::Value(
                e.key.clone(),
            ))];
            if let (Op::Add, Some(d)) = (op, &e.data) {
                attrs.push(SetElementAttribute::Data(DataAttribute::Value(d.clone())));
            }
            let msg = SetElementMessage {
                attributes: vec![
                    SetElementList::Table(e.table.clone()),
                    SetElementList::Set(e.set.clone()),
                    SetElementList::Elements(vec![ListAttribute::Element(attrs)]),
                ],
            };
            let (inner, flags) = match op {
                Op::Add => (
                    NfTablesMessage::NewSetElement(msg),
                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
                ),
                Op::Delete => (
                    NfTablesMessage::DeleteSetElement(msg),
                    NLM_F_REQUEST | NLM_F_ACK,
                ),
            };
            let (seq, m) = self.message(e.family.proto(), 0, flags, inner);
            seqs.push(seq);
            buf.extend_from_slice(&m);
        }
        let (_, end) = self.message(
            NetfilterProtoFamily::Unspec,
            NFNL_SUBSYS_NFTABLES,
            NLM_F_REQUEST,
            ControlMessage::BatchEnd,
        );
        buf.extend_from_slice(&end);
        match self.exchange(&buf, &seqs)? {
            None => Ok(()),
            Some((i, errno)) => {
                let verb = if op == Op::Add { "add" } else { "delete" };
                let what = match elems.get(i) {
                    Some(e) => format!("{verb} an {e} (nf_tables)"),
                    None => format!("{verb} set elements (nf_tables)"),
                };
                Err(NfnlError::Request {
                    what,
                    source: std::io::Error::from_raw_os_error(errno),
                })
            }
        }
    }

    /// Add all `elems` in one transaction: all or none. ENOENT (see
    /// [`NfnlError::errno`]) means a table or set is missing.
    pub fn add(&mut self, elems: &[Element]) -> Result<(), NfnlError> {
        if elems.is_empty() {
            return Ok(());
        }
        self.batch(Op::Add, elems)
    }

    /// Delete `elems`; elements (or tables) that do not exist are not an
    /// error. One transaction when all exist, else one per element.
    pub fn delete(&mut self, elems: &[Element]) -> Result<(), NfnlError> {
        if elems.is_empty() {
            return Ok(());
        }
        match self.batch(Op::Delete, elems) {
            Err(e) if e.errno() == Some(libc::ENOENT) && elems.len() > 1 => {
                for el in elems {
                    match self.batch(Op::Delete, std::slice::from_ref(el)) {
                        Err(e) if e.errno() == Some(libc::ENOENT) => {}
                        r => r?,
                    }
                }
                Ok(())
            }
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Does table `family name` exist?
    pub fn table_exists(&mut self, family: Family, name: &str) -> Result<bool, NfnlError> {
        let (seq, buf) = self.message(
            family.proto(),
            0,
            NLM_F_REQUEST | NLM_F_ACK,
            NfTablesMessage::GetTable(TableMessage {
                attributes: vec![TableAttribute::Name(name.to_string())],
            }),
        );
        match self.exchange(&buf, &[seq])? {
            None => Ok(true),
            Some((_, libc::ENOENT)) => Ok(false),
            Some((_, errno)) => Err(NfnlError::Request {
                what: format!("look up nft table {} {name}", family.as_str()),
                source: std::io::Error::from_raw_os_error(errno),
            }),
        }
    }
}

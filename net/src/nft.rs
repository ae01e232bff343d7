//! berth's two nftables tables (both named by `nft_table` in `berth.toml`):
//! created once per host set-up through the `nftables` crate (typed JSON
//! objects, applied by `nft -j -f -` as one atomic transaction), with
//! everything per pod held in sets and maps whose elements stage0 adds and
//! removes over netlink ([`crate::nfnl`], no `nft` process):
//!
//! ```text
//! table ip berth {                       # NAT and published ports
//!   map port_addr { type inet_proto . inet_service : ipv4_addr }     # tcp . 18080 : 10.88.0.2
//!   map port_port { type inet_proto . inet_service : inet_service }  # tcp . 18080 : 80
//!   chain prerouting  { type nat hook prerouting priority dstnat;
//!                       fib daddr type local
//!                       dnat to meta l4proto . th dport map @port_addr : meta l4proto . th dport map @port_port }
//!   chain output      { type nat hook output priority dstnat;
//!                       ip daddr != 127.0.0.0/8 fib daddr type local dnat to (the same) }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!                       ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade
//!                       ip saddr 10.88.0.0/16 ct status dnat masquerade }   # hairpin
//! }
//! table bridge berth {                   # anti-spoofing on the pods' bridge ports
//!   set ports { type ifname }                                  # "bv0b9f3c2e6a1d"
//!   set pods  { type ifname . ether_addr . ipv4_addr }         # "bv…" . 02:0b:9f:3c:2e:6a . 10.88.0.2
//!   chain prerouting { type filter hook prerouting priority -400; policy accept;
//!     iifname != @ports accept                                 # not a port of ours
//!     ether type ip iifname . ether saddr . ip saddr @pods accept  # IPv4 from its own MAC and address
//!     arp htype 1 arp ptype 0x0800 arp hlen 6 arp plen 4
//!       iifname . ether saddr . arp saddr ip @pods
//!       iifname . arp saddr ether . arp saddr ip @pods accept  # ARP about itself
//!     counter drop                                             # anything else from a pod port
//!   }
//! }
//! ```
//!
//! A map lookup that finds nothing ends the rule, so traffic to an
//! unpublished port is not translated. The bridge chain sees every frame a
//! pod (ns veth end `bv…` or kvm tap `bt…`) sends into any bridge, before
//! the bridge forwards or delivers it: a frame whose source MAC is not the
//! pod's, IPv4 from another source address, ARP whose sender MAC or IP is
//! not the pod's, and every other ethertype (IPv6 — pods get no IPv6
//! configuration, and dropping it stops router advertisements and
//! neighbour-discovery spoofing between pods —, VLAN tags, STP, …) are
//! dropped. Ports of the bridge that are not pods (not in `@ports`) are left
//! alone, as are other bridges.

use crate::config::Subnet;
use crate::nfnl::{Element, Family};
use berth_spec::{PrivateNetwork, Protocol};
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Map, Meta, MetaKey, NamedExpression, Payload,
    PayloadField, Prefix, CT,
};
use nftables::schema::{Chain, NfListObject, Rule, Set, SetTypeValue, Table};
use nftables::stmt::{Match, NATFamily, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot {what} (nft)")]
    Apply {
        what: String,
        #[source]
        source: Box<nftables::helper::NftablesError>,
    },
    #[error("mac address {0:?} is not valid")]
    Mac(String),
}

/// Map of published (protocol, host port) to the pod's address.
pub const PORT_ADDR: &str = "port_addr";
/// Map of published (protocol, host port) to the pod's port.
pub const PORT_PORT: &str = "port_port";
/// Set of the pods' host-side interfaces.
pub const PORTS: &str = "ports";
/// Set of (host-side interface, MAC, IPv4 address), one per pod.
pub const PODS: &str = "pods";
/// Priority of the anti-spoofing chain: before the bridge's own filter
/// (-200), dnat (-300) and conntrack hooks.
const BRIDGE_PRIO: i32 = -400;

fn table(family: NfFamily, name: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family,
        name: Cow::Owned(name.to_string()),
        handle: None,
    })
}

fn chain(
    family: NfFamily,
    t: &str,
    name: &str,
    ty: NfChainType,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family,
        table: Cow::Owned(t.to_string()),
        name: Cow::Owned(name.to_string()),
        _type: Some(ty),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn rule(
    family: NfFamily,
    t: &str,
    chain: &str,
    expr: Vec<Statement<'static>>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family,
        table: Cow::Owned(t.to_string()),
        chain: Cow::Owned(chain.to_string()),
        expr: Cow::Owned(expr),
        ..Rule::default()
    })
}

fn field(protocol: &'static str, f: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(f),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

fn set_ref(name: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(format!("@{name}")))
}

fn s(v: impl ToString) -> Expression<'static> {
    Expression::String(Cow::Owned(v.to_string()))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn prefix(s: Subnet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(s.network.to_string()))),
        len: u32::from(s.prefix_len),
    }))
}

fn daddr_is_local() -> Statement<'static> {
    matches(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: [FibFlag::Daddr].into_iter().collect(),
        })),
        Operator::EQ,
        Expression::String(Cow::Borrowed("local")),
    )
}

/// `dnat to meta l4proto . th dport map @port_addr : meta l4proto . th dport map @port_port`
fn dnat_published() -> Statement<'static> {
    let key = || concat(vec![meta(MetaKey::L4proto), field("th", "dport")]);
    let lookup = |m: &str| {
        Expression::Named(NamedExpression::Map(Box::new(Map {
            key: key(),
            data: set_ref(m),
        })))
    };
    Statement::DNAT(Some(NAT {
        addr: Some(lookup(PORT_ADDR)),
        family: Some(NATFamily::IP),
        port: Some(lookup(PORT_PORT)),
        flags: None,
    }))
}

fn set(
    family: NfFamily,
    t: &str,
    name: &str,
    ty: SetTypeValue<'static>,
    map: Option<SetTypeValue<'static>>,
) -> NfListObject<'static> {
    match map {
        None => NfListObject::Set(Box::new(Set {
            family,
            table: Cow::Owned(t.to_string()),
            name: Cow::Owned(name.to_string()),
            handle: None,
            set_type: ty,
            policy: None,
            flags: None,
            elem: None,
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        })),
        Some(data) => NfListObject::Map(Box::new(nftables::schema::Map {
            family,
            table: Cow::Owned(t.to_string()),
            name: Cow::Owned(name.to_string()),
            handle: None,
            set_type: ty,
            map: data,
            policy: None,
            flags: None,
            elem: None,
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        })),
    }
}

fn element(
    family: NfFamily,
    t: &str,
    name: &str,
    elem: Expression<'static>,
) -> NfListObject<'static> {
    NfListObject::Element(nftables::schema::Element {
        family,
        table: Cow::Owned(t.to_string()),
        name: Cow::Owned(name.to_string()),
        elem: Cow::Owned(vec![elem]),
    })
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn ip_table(t: &str, subnet: Subnet, pods: &[&PrivateNetwork], b: &mut Batch<'static>) {
    use nftables::schema::SetType as T;
    let f = NfFamily::IP;
    // "add; delete; add" makes this idempotent: a leftover table is replaced.
    b.add(table(f, t));
    b.delete(table(f, t));
    b.add(table(f, t));
    let key = || SetTypeValue::Concatenated(Cow::Owned(vec![T::InetProto, T::InetService]));
    b.add(set(
        f,
        t,
        PORT_ADDR,
        key(),
        Some(SetTypeValue::Single(T::Ipv4Addr)),
    ));
    b.add(set(
        f,
        t,
        PORT_PORT,
        key(),
        Some(SetTypeValue::Single(T::InetService)),
    ));
    b.add(chain(
        f,
        t,
        "prerouting",
        NfChainType::NAT,
        NfHook::Prerouting,
        -100,
    ));
    b.add(chain(
        f,
        t,
        "output",
        NfChainType::NAT,
        NfHook::Output,
        -100,
    ));
    b.add(chain(
        f,
        t,
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
    ));
    b.add(rule(
        f,
        t,
        "prerouting",
        vec![daddr_is_local(), dnat_published()],
    ));
    b.add(rule(
        f,
        t,
        "output",
        vec![
            matches(
                field("ip", "daddr"),
                Operator::NEQ,
                prefix(Subnet {
                    network: Ipv4Addr::new(127, 0, 0, 0),
                    prefix_len: 8,
                }),
            ),
            daddr_is_local(),
            dnat_published(),
        ],
    ));
    b.add(rule(
        f,
        t,
        "postrouting",
        vec![
            matches(field("ip", "saddr"), Operator::EQ, prefix(subnet)),
            matches(field("ip", "daddr"), Operator::NEQ, prefix(subnet)),
            Statement::Masquerade(None),
        ],
    ));
    // A pod reaching another pod (or itself) through a published host port:
    // masquerade so the reply comes back through the host's conntrack.
    b.add(rule(
        f,
        t,
        "postrouting",
        vec![
            matches(field("ip", "saddr"), Operator::EQ, prefix(subnet)),
            matches(
                Expression::Named(NamedExpression::CT(CT {
                    key: Cow::Borrowed("status"),
                    family: None,
                    dir: None,
                })),
                Operator::IN,
                Expression::String(Cow::Borrowed("dnat")),
            ),
            Statement::Masquerade(None),
        ],
    ));
    for net in pods {
        for p in &net.ports {
            let k = || {
                concat(vec![
                    s(proto_name(p.protocol)),
                    Expression::Number(u32::from(p.host_port)),
                ])
            };
            b.add(element(
                f,
                t,
                PORT_ADDR,
                Expression::List(vec![k(), s(net.address)]),
            ));
            b.add(element(
                f,
                t,
                PORT_PORT,
                Expression::List(vec![k(), Expression::Number(u32::from(p.pod_port))]),
            ));
        }
    }
}

fn bridge_table(t: &str, pods: &[&PrivateNetwork], b: &mut Batch<'static>) {
    use nftables::schema::SetType as T;
    let f = NfFamily::Bridge;
    b.add(table(f, t));
    b.delete(table(f, t));
    b.add(table(f, t));
    b.add(set(f, t, PORTS, SetTypeValue::Single(T::Ifname), None));
    b.add(set(
        f,
        t,
        PODS,
        SetTypeValue::Concatenated(Cow::Owned(vec![T::Ifname, T::EtherAddr, T::Ipv4Addr])),
        None,
    ));
    let c = "prerouting";
    b.add(chain(
        f,
        t,
        c,
        NfChainType::Filter,
        NfHook::Prerouting,
        BRIDGE_PRIO,
    ));
    let iif = || meta(MetaKey::Iifname);
    b.add(rule(
        f,
        t,
        c,
        vec![
            matches(iif(), Operator::NEQ, set_ref(PORTS)),
            Statement::Accept(None),
        ],
    ));
    b.add(rule(
        f,
        t,
        c,
        vec![
            // Explicitly the Ethernet type, not the (VLAN-untagged)
            // skb protocol nft would test: a tagged frame must not pass.
            matches(field("ether", "type"), Operator::EQ, s("ip")),
            matches(
                concat(vec![iif(), field("ether", "saddr"), field("ip", "saddr")]),
                Operator::EQ,
                set_ref(PODS),
            ),
            Statement::Accept(None),
        ],
    ));
    let eq =
        |fl: &'static str, v: u32| matches(field("arp", fl), Operator::EQ, Expression::Number(v));
    b.add(rule(
        f,
        t,
        c,
        vec![
            eq("htype", 1),
            eq("ptype", 0x0800),
            eq("hlen", 6),
            eq("plen", 4),
            matches(
                concat(vec![
                    iif(),
                    field("ether", "saddr"),
                    field("arp", "saddr ip"),
                ]),
                Operator::EQ,
                set_ref(PODS),
            ),
            matches(
                concat(vec![
                    iif(),
                    field("arp", "saddr ether"),
                    field("arp", "saddr ip"),
                ]),
                Operator::EQ,
                set_ref(PODS),
            ),
            Statement::Accept(None),
        ],
    ));
    // Counted, so that `nft list table bridge …` shows what was dropped.
    b.add(rule(
        f,
        t,
        c,
        vec![
            Statement::Counter(nftables::stmt::Counter::Anonymous(None)),
            Statement::Drop(None),
        ],
    ));
    for net in pods {
        b.add(element(f, t, PORTS, s(&net.host_ifname)));
        b.add(element(
            f,
            t,
            PODS,
            concat(vec![s(&net.host_ifname), s(&net.mac), s(net.address)]),
        ));
    }
}

fn apply(batch: Batch<'_>, what: impl Into<String>) -> Result<(), NftError> {
    nftables::helper::apply_ruleset(&batch.to_nftables()).map_err(|source| NftError::Apply {
        what: what.into(),
        source: Box::new(source),
    })
}

/// (Re)create both tables for `subnet` in one transaction, with the
/// elements of `pods` (the live pods, when the tables are rebuilt under
/// them).
pub fn create(t: &str, subnet: Subnet, pods: &[&PrivateNetwork]) -> Result<(), NftError> {
    let mut b = Batch::new();
    ip_table(t, subnet, pods, &mut b);
    bridge_table(t, pods, &mut b);
    apply(b, format!("create nft tables ip {t} and bridge {t}"))
}

/// Delete both tables, if they exist.
pub fn delete(t: &str) -> Result<(), NftError> {
    let mut b = Batch::new();
    for f in [NfFamily::IP, NfFamily::Bridge] {
        b.add(table(f, t));
        b.delete(table(f, t));
    }
    apply(b, format!("delete nft tables ip {t} and bridge {t}"))
}

fn mac_bytes(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// nft's encoding of an `ifname` key: the name, NUL-padded to IFNAMSIZ.
fn ifname_key(name: &str) -> Vec<u8> {
    let mut k = vec![0u8; libc::IFNAMSIZ];
    let n = name.len().min(libc::IFNAMSIZ - 1);
    k[..n].copy_from_slice(&name.as_bytes()[..n]);
    k
}

/// Each field of a concatenation takes a whole number of 32-bit registers.
fn pad4(mut v: Vec<u8>) -> Vec<u8> {
    v.resize(v.len().div_ceil(4) * 4, 0);
    v
}

/// The elements that make up one pod in the two tables: its host interface
/// in `ports`, (interface, MAC, address) in `pods`, and for each published
/// port one element in each port map.
pub fn pod_elements(t: &str, net: &PrivateNetwork) -> Result<Vec<Element>, NftError> {
    let mac = mac_bytes(&net.mac).ok_or_else(|| NftError::Mac(net.mac.clone()))?;
    let el = |family, set: &str, key: Vec<u8>, data: Option<Vec<u8>>| Element {
        family,
        table: t.to_string(),
        set: set.to_string(),
        key,
        data,
    };
    let ifname = ifname_key(&net.host_ifname);
    let mut key = ifname.clone();
    key.extend(pad4(mac.to_vec()));
    key.extend(net.address.octets());
    let mut v = vec![
        el(Family::Bridge, PORTS, ifname, None),
        el(Family::Bridge, PODS, key, None),
    ];
    for p in &net.ports {
        let proto = match p.protocol {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
        };
        let mut k = pad4(vec![proto]);
        k.extend(pad4(p.host_port.to_be_bytes().to_vec()));
        v.push(el(
            Family::Ip,
            PORT_ADDR,
            k.clone(),
            Some(net.address.octets().to_vec()),
        ));
        v.push(el(
            Family::Ip,
            PORT_PORT,
            k,
            Some(p.pod_port.to_be_bytes().to_vec()),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_spec::PortMapping;

    fn net() -> PrivateNetwork {
        PrivateNetwork {
            address: Ipv4Addr::new(10, 88, 0, 3),
            prefix_len: 16,
            gateway: Ipv4Addr::new(10, 88, 0, 1),
            ifname: "eth0".into(),
            mac: "02:01:02:03:04:06".into(),
            bridge: "berth0".into(),
            host_ifname: "bvx".into(),
            nft_table: "berth".into(),
            dns: vec![],
            ports: vec![PortMapping {
                host_port: 53,
                pod_port: 5353,
                protocol: Protocol::Udp,
            }],
        }
    }

    #[test]
    fn elements_are_encoded_like_nft() {
        // From `nft --debug=netlink add element ...` (nft 1.0.6), which
        // prints 32-bit words in host (little-endian) order:
        //   pods:  00787662 00000000 00000000 00000000 03020102 00000604 0300580a
        //   ports: 00787662 00000000 00000000 00000000
        let words = |ws: &[u32]| ws.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
        let e = pod_elements("berth", &net()).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!((e[0].family, e[0].set.as_str()), (Family::Bridge, PORTS));
        assert_eq!(e[0].key, words(&[0x00787662, 0, 0, 0]));
        assert_eq!(
            e[1].key,
            words(&[0x00787662, 0, 0, 0, 0x03020102, 0x00000604, 0x0300580a])
        );
        // udp . 53 : 10.88.0.3 and udp . 53 : 5353
        //   port_addr: 00000011 00003500 : 0300580a
        assert_eq!((e[2].family, e[2].set.as_str()), (Family::Ip, PORT_ADDR));
        assert_eq!(e[2].key, words(&[0x00000011, 0x00003500]));
        assert_eq!(e[2].data.as_deref(), Some(&[10, 88, 0, 3][..]));
        assert_eq!(e[3].set, PORT_PORT);
        assert_eq!(e[3].data.as_deref(), Some(&5353u16.to_be_bytes()[..]));
        let mut bad = net();
        bad.mac = "02:01".into();
        assert!(pod_elements("berth", &bad).is_err());
    }

    #[test]
    fn ruleset_serializes() {
        let n = net();
        let mut b = Batch::new();
        ip_table(
            "berth",
            Subnet::parse("10.88.0.0/16").unwrap(),
            &[&n],
            &mut b,
        );
        bridge_table("berth", &[&n], &mut b);
        let j = serde_json::to_string(&b.to_nftables()).unwrap();
        for want in [
            r#""map":{"key":{"concat":[{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},"data":"@port_addr"}"#,
            r#""elem":[[{"concat":["udp",53]},"10.88.0.3"]]"#,
            r#""elem":[{"concat":["bvx","02:01:02:03:04:06","10.88.0.3"]}]"#,
            r#"{"payload":{"protocol":"arp","field":"saddr ether"}}"#,
            r#"{"drop":null}"#,
        ] {
            assert!(j.contains(want), "{want} not in {j}");
        }
    }
}

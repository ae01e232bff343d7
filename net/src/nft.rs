//! berth's nftables table (family `ip`, name from `berth.toml`), through the
//! `nftables` crate: typed JSON objects, applied by `nft -j -f -` as one
//! atomic transaction per call.
//!
//! ```text
//! table ip berth {
//!   chain prerouting  { type nat hook prerouting priority dstnat; fib daddr type local jump ports }
//!   chain output      { type nat hook output priority dstnat;
//!                       ip daddr != 127.0.0.0/8 fib daddr type local jump ports }
//!   chain ports       { tcp dport 18080 dnat ip to 10.88.0.2:80 comment "<pod uuid>" ... }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!                       ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade
//!                       ip saddr 10.88.0.0/16 ct status dnat masquerade }   # hairpin
//! }
//! ```
//!
//! Port rules carry the pod's uuid as their comment, so a pod's rules are
//! found (and deleted by handle) without any other state.

use crate::config::Subnet;
use berth_spec::{PortMapping, Protocol};
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::schema::{Chain, NfListObject, Rule, Table};
use nftables::stmt::{JumpTarget, Match, NATFamily, Operator, Statement, NAT};
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
    #[error("cannot list nft table {table}")]
    List {
        table: String,
        #[source]
        source: Box<nftables::helper::NftablesError>,
    },
}

const PORTS: &str = "ports";
const FAMILY: NfFamily = NfFamily::IP;

fn table(name: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: FAMILY,
        name: Cow::Owned(name.to_string()),
        handle: None,
    })
}

fn chain(t: &str, name: &str, hook: Option<(NfHook, i32)>) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: FAMILY,
        table: Cow::Owned(t.to_string()),
        name: Cow::Owned(name.to_string()),
        _type: hook.map(|_| NfChainType::NAT),
        hook: hook.map(|(h, _)| h),
        prio: hook.map(|(_, p)| p),
        policy: hook.map(|_| NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn rule(
    t: &str,
    chain: &str,
    expr: Vec<Statement<'static>>,
    comment: Option<&str>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: FAMILY,
        table: Cow::Owned(t.to_string()),
        chain: Cow::Owned(chain.to_string()),
        expr: Cow::Owned(expr),
        comment: comment.map(|c| Cow::Owned(c.to_string())),
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

fn jump_ports() -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: Cow::Borrowed(PORTS),
    })
}

fn apply(batch: Batch<'_>, what: impl Into<String>) -> Result<(), NftError> {
    nftables::helper::apply_ruleset(&batch.to_nftables()).map_err(|source| NftError::Apply {
        what: what.into(),
        source: Box::new(source),
    })
}

fn port_rules(
    t: &str,
    uuid: &str,
    address: Ipv4Addr,
    ports: &[PortMapping],
    b: &mut Batch<'static>,
) {
    for p in ports {
        let proto = match p.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        b.add(rule(
            t,
            PORTS,
            vec![
                matches(
                    field(proto, "dport"),
                    Operator::EQ,
                    Expression::Number(u32::from(p.host_port)),
                ),
                Statement::DNAT(Some(NAT {
                    addr: Some(Expression::String(Cow::Owned(address.to_string()))),
                    family: Some(NATFamily::IP),
                    port: Some(Expression::Number(u32::from(p.pod_port))),
                    flags: None,
                })),
            ],
            Some(uuid),
        ));
    }
}

/// (Re)create the whole table for `subnet` in one transaction, with the port
/// rules of one pod (the first one) included.
pub fn create_table(
    t: &str,
    subnet: Subnet,
    first_pod: Option<(&str, Ipv4Addr, &[PortMapping])>,
) -> Result<(), NftError> {
    let mut b = Batch::new();
    // "add; delete; add" makes this idempotent: a leftover table is replaced.
    b.add(table(t));
    b.delete(table(t));
    b.add(table(t));
    b.add(chain(t, "prerouting", Some((NfHook::Prerouting, -100))));
    b.add(chain(t, "output", Some((NfHook::Output, -100))));
    b.add(chain(t, "postrouting", Some((NfHook::Postrouting, 100))));
    b.add(chain(t, PORTS, None));
    b.add(rule(
        t,
        "prerouting",
        vec![daddr_is_local(), jump_ports()],
        None,
    ));
    b.add(rule(
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
            jump_ports(),
        ],
        None,
    ));
    b.add(rule(
        t,
        "postrouting",
        vec![
            matches(field("ip", "saddr"), Operator::EQ, prefix(subnet)),
            matches(field("ip", "daddr"), Operator::NEQ, prefix(subnet)),
            Statement::Masquerade(None),
        ],
        None,
    ));
    // A pod reaching another pod (or itself) through a published host port:
    // masquerade so the reply comes back through the host's conntrack.
    b.add(rule(
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
        None,
    ));
    if let Some((uuid, address, ports)) = first_pod {
        port_rules(t, uuid, address, ports, &mut b);
    }
    apply(b, format!("create nft table ip {t}"))
}

/// Add one pod's port rules to the existing table.
pub fn add_ports(
    t: &str,
    uuid: &str,
    address: Ipv4Addr,
    ports: &[PortMapping],
) -> Result<(), NftError> {
    if ports.is_empty() {
        return Ok(());
    }
    let mut b = Batch::new();
    port_rules(t, uuid, address, ports, &mut b);
    apply(b, format!("add port rules to nft table ip {t}"))
}

/// Handles of the rules in chain `ports` whose comment is `uuid`; empty when
/// the table does not exist.
pub fn pod_rule_handles(t: &str, uuid: &str) -> Result<Vec<u32>, NftError> {
    let out = match nftables::helper::get_current_ruleset_raw(
        None::<&str>,
        ["list", "chain", "ip", t, PORTS],
    ) {
        Ok(o) => o,
        Err(nftables::helper::NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            return Ok(Vec::new())
        }
        Err(source) => {
            return Err(NftError::List {
                table: t.into(),
                source: Box::new(source),
            })
        }
    };
    Ok(handles_with_comment(&out, uuid))
}

fn handles_with_comment(json: &str, comment: &str) -> Vec<u32> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    v.get("nftables")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|o| o.get("rule"))
                .filter(|r| r.get("comment").and_then(|c| c.as_str()) == Some(comment))
                .filter_map(|r| r.get("handle").and_then(|h| h.as_u64()))
                .filter_map(|h| u32::try_from(h).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Delete every port rule of pod `uuid`. Idempotent.
pub fn remove_ports(t: &str, uuid: &str) -> Result<(), NftError> {
    let handles = pod_rule_handles(t, uuid)?;
    if handles.is_empty() {
        return Ok(());
    }
    let mut b = Batch::new();
    for h in handles {
        b.delete(NfListObject::Rule(Rule {
            family: FAMILY,
            table: Cow::Owned(t.to_string()),
            chain: Cow::Borrowed(PORTS),
            handle: Some(h),
            ..Rule::default()
        }));
    }
    apply(
        b,
        format!("delete port rules of pod {uuid} from nft table ip {t}"),
    )
}

/// Delete the table if it exists.
pub fn delete_table(t: &str) -> Result<(), NftError> {
    let mut b = Batch::new();
    b.add(table(t));
    b.delete(table(t));
    apply(b, format!("delete nft table ip {t}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rules_by_comment() {
        let json = r#"{"nftables": [{"metainfo": {}}, {"chain": {"name": "ports"}},
            {"rule": {"chain": "ports", "handle": 7, "comment": "u1", "expr": []}},
            {"rule": {"chain": "ports", "handle": 8, "comment": "u2", "expr": []}},
            {"rule": {"chain": "ports", "handle": 9, "comment": "u1", "expr": []}}]}"#;
        assert_eq!(handles_with_comment(json, "u1"), vec![7, 9]);
        assert!(handles_with_comment("garbage", "u1").is_empty());
    }

    #[test]
    fn table_batch_serializes() {
        let mut b = Batch::new();
        port_rules(
            "berth",
            "u",
            Ipv4Addr::new(10, 88, 0, 2),
            &[PortMapping {
                host_port: 18080,
                pod_port: 80,
                protocol: Protocol::Tcp,
            }],
            &mut b,
        );
        let j = serde_json::to_string(&b.to_nftables()).unwrap();
        assert!(
            j.contains(r#""dnat":{"addr":"10.88.0.2","family":"ip","port":80}"#),
            "{j}"
        );
        assert!(j.contains(r#""comment":"u""#), "{j}");
    }
}

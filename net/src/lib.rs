//! berth's host networking, shared by stage0 and both stage1s.
//!
//! `--net private` in four calls:
//!
//! 1. stage0: [`prepare`] — under the network lock: reclaim stale leases,
//!    check host-port conflicts, lease an address, make sure the bridge
//!    (gateway = first address of the subnet) is up, `ip_forward` is on and
//!    berth's nftables table exists (masquerade for the subnet), add the
//!    pod's port DNAT rules. Returns the [`PrivateNetwork`] written into
//!    `pod.json`.
//! 2. stage1: plug the pod in — ns: [`attach_veth`] (veth pair, pod end
//!    created directly in the pod's netns as `eth0` and configured there over
//!    netlink); kvm: [`create_tap`] (a non-persistent tap on the bridge whose
//!    fd goes to the VMM's virtio-net). Both: [`etc::write`] for resolv.conf
//!    and hosts, and [`proxy::start`] for `127.0.0.1:HOSTPORT`.
//! 3. stage1 when the app exits, `gc` after a `kill -9`, stage0 after a
//!    failed start: [`release`] — idempotent: port rules, host interface,
//!    lease; with the last lease gone, the nftables table and the bridge.
//!
//! Everything a stage1 needs is in the spec; only `prepare` reads
//! `berth.toml` ([`config`]).

pub mod config;
pub mod etc;
pub mod lease;
pub mod link;
pub mod nft;
pub mod proxy;
pub mod tap;

use berth_spec::{PortMapping, PrivateNetwork};
pub use config::{HostConfig, Subnet};
use lease::{Lease, LeaseDir, NetLock};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// Name of the pod's interface inside the pod or guest.
pub const POD_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error(transparent)]
    Nft(#[from] nft::NftError),
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    #[error("no free address left in {0}")]
    Exhausted(Subnet),
    #[error("host port {port}/{proto} is already published by pod {pod}")]
    PortInUse {
        port: u16,
        proto: &'static str,
        pod: String,
    },
    #[error("cannot enable IPv4 forwarding (/proc/sys/net/ipv4/ip_forward)")]
    Forwarding(#[source] std::io::Error),
    #[error("cannot open the network namespace of pid {pid}")]
    Netns {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("bridge {0} is missing: was it deleted while pods use it?")]
    NoBridge(String),
}

/// What stage0 asks for.
pub struct PodRequest<'a> {
    pub name: &'a str,
    pub uuid: &'a str,
    pub ports: &'a [PortMapping],
    /// kvm: the host interface is a tap (`bt…`), else a veth end (`bv…`).
    pub kvm: bool,
}

fn hex12(uuid: &str) -> String {
    uuid.chars().filter(|c| *c != '-').take(12).collect()
}

/// The pod's host-side interface name: `bv` (veth) or `bt` (tap) + the first
/// 12 hex digits of its uuid (14 characters, below IFNAMSIZ).
pub fn host_ifname(uuid: &str, kvm: bool) -> String {
    format!("{}{}", if kvm { "bt" } else { "bv" }, hex12(uuid))
}

/// The pod's MAC: `02:` (locally administered, unicast) + 5 uuid bytes.
pub fn mac_for(uuid: &str) -> String {
    let h = hex12(uuid);
    let mut m = String::from("02");
    for i in 0..5 {
        m.push(':');
        m.push_str(h.get(2 * i..2 * i + 2).unwrap_or("00"));
    }
    m
}

fn enable_forwarding() -> Result<(), NetError> {
    const P: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(P).is_ok_and(|s| s.trim() == "1") {
        return Ok(());
    }
    std::fs::write(P, "1\n").map_err(NetError::Forwarding)
}

/// Tear down one pod's host side (lock held): its port rules, its host
/// interface (if still there) and its lease.
fn teardown(
    leases: &LeaseDir,
    lock: &NetLock,
    nl: &link::Netlink,
    uuid: &str,
    net: &PrivateNetwork,
) -> Result<bool, NetError> {
    if !net.ports.is_empty() {
        nft::remove_ports(&net.nft_table, uuid)?;
    }
    nl.delete(&net.host_ifname)?;
    Ok(leases.remove(lock, net.address, uuid)?)
}

/// Tear down stale leases; return the live ones.
fn reclaim(leases: &LeaseDir, lock: &NetLock, nl: &link::Netlink) -> Result<Vec<Lease>, NetError> {
    let mut live = Vec::new();
    for l in leases.all(lock) {
        if leases.is_live(&l) {
            live.push(l);
        } else {
            log::info!(
                "net: reclaiming stale lease {} of pod {}",
                l.network.address,
                l.pod
            );
            teardown(leases, lock, nl, &l.uuid, &l.network)?;
        }
    }
    Ok(live)
}

/// stage0: lease an address and set up the host side (see the crate docs).
/// On error nothing is leased.
pub fn prepare(
    root: &Path,
    cfg: &HostConfig,
    req: &PodRequest,
) -> Result<PrivateNetwork, NetError> {
    let leases = LeaseDir::new(root);
    let lock = leases.lock()?;
    let nl = link::Netlink::new()?;
    let live = reclaim(&leases, &lock, &nl)?;
    for p in req.ports {
        if let Some(other) = live.iter().find(|l| {
            l.network
                .ports
                .iter()
                .any(|q| q.host_port == p.host_port && q.protocol == p.protocol)
        }) {
            return Err(NetError::PortInUse {
                port: p.host_port,
                proto: p.protocol.as_str(),
                pod: other.pod.clone(),
            });
        }
    }
    let address = cfg
        .subnet
        .hosts()
        .find(|a| !live.iter().any(|l| l.network.address == *a))
        .ok_or(NetError::Exhausted(cfg.subnet))?;
    let net = PrivateNetwork {
        address,
        prefix_len: cfg.subnet.prefix_len,
        gateway: cfg.subnet.gateway(),
        ifname: POD_IFNAME.into(),
        mac: mac_for(req.uuid),
        bridge: cfg.bridge.clone(),
        host_ifname: host_ifname(req.uuid, req.kvm),
        nft_table: cfg.nft_table.clone(),
        dns: cfg.pod_dns(),
        ports: req.ports.to_vec(),
    };
    enable_forwarding()?;
    let bridge_existed = nl.index(&cfg.bridge)?.is_some();
    nl.ensure_bridge(&cfg.bridge, net.gateway, net.prefix_len)?;
    if live.is_empty() || !bridge_existed {
        // First pod (or the bridge was gone): a fresh table.
        nft::create_table(
            &cfg.nft_table,
            cfg.subnet,
            Some((req.uuid, address, req.ports)),
        )?;
    } else {
        nft::add_ports(&cfg.nft_table, req.uuid, address, req.ports)?;
    }
    let lease = Lease {
        pod: req.name.into(),
        uuid: req.uuid.into(),
        network: net.clone(),
    };
    if let Err(e) = leases.write(&lock, &lease) {
        let _ = nft::remove_ports(&cfg.nft_table, req.uuid);
        return Err(e.into());
    }
    log::debug!("net: pod {} leased {}", req.name, address);
    Ok(net)
}

/// Release everything of pod `uuid` on the host; with no live lease left,
/// also delete the nftables table and the bridge. Idempotent: safe to call
/// from stage1's exit, `stop`, `gc` and stage0, in any order and repeatedly.
pub fn release(root: &Path, uuid: &str, net: &PrivateNetwork) -> Result<(), NetError> {
    let leases = LeaseDir::new(root);
    let lock = leases.lock()?;
    let nl = link::Netlink::new()?;
    let had_lease = teardown(&leases, &lock, &nl, uuid, net)?;
    let live = reclaim(&leases, &lock, &nl)?;
    if live.is_empty() && (had_lease || nl.index(&net.bridge)?.is_some()) {
        nft::delete_table(&net.nft_table)?;
        nl.delete(&net.bridge)?;
        log::debug!(
            "net: last pod gone: removed table {} and bridge {}",
            net.nft_table,
            net.bridge
        );
    }
    Ok(())
}

/// Release a pod's network from its spec, if it has a private one; a
/// failure is logged (every caller retries later: the stage1 at exit, `gc`,
/// stage0), never fatal.
pub fn release_pod(root: &Path, spec: &berth_spec::PodSpec) {
    if let Some(net) = &spec.network.private {
        if let Err(e) = release(root, &spec.uuid, net) {
            log::warn!(
                "cannot release the network of pod {}: {}",
                spec.name,
                berth_spec::ErrorChain(&e)
            );
        }
    }
}

/// ns stage1: create the veth pair for the pod whose init is `pod_pid`: the
/// host end (`net.host_ifname`) on the bridge and up, the pod end created
/// directly in the pod's network namespace as `net.ifname` with `net.mac`,
/// then configured there (up, address, default route via the gateway).
/// Loopback is brought up by the pod's init.
pub fn attach_veth(net: &PrivateNetwork, pod_pid: i32) -> Result<(), NetError> {
    let ns: OwnedFd = std::fs::File::open(format!("/proc/{pod_pid}/ns/net"))
        .map_err(|source| NetError::Netns {
            pid: pod_pid,
            source,
        })?
        .into();
    let host = link::Netlink::new()?;
    let bridge = host
        .index(&net.bridge)?
        .ok_or_else(|| NetError::NoBridge(net.bridge.clone()))?;
    host.add_veth(&net.host_ifname, bridge, &net.ifname, ns.as_fd(), &net.mac)?;
    let inside = link::Netlink::in_netns(ns.as_fd())?;
    inside.configure(&net.ifname, net.address, net.prefix_len, net.gateway)?;
    Ok(())
}

/// kvm stage1: create the pod's tap (`net.host_ifname`), attach it to the
/// bridge and bring it up; returns its fd for the VMM's virtio-net device.
/// The tap is not persistent: it disappears when the last fd closes (VMM
/// exit, even SIGKILL). The guest's MAC is `net.mac` (set it in the
/// virtio-net config space, not on the tap); guest-init configures
/// `net.ifname` with `net.address/prefix_len` and a default route via
/// `net.gateway`.
pub fn create_tap(net: &PrivateNetwork, opts: tap::TapOptions) -> Result<OwnedFd, NetError> {
    let fd = tap::open(&net.host_ifname, opts)?;
    let host = link::Netlink::new()?;
    let bridge = host
        .index(&net.bridge)?
        .ok_or_else(|| NetError::NoBridge(net.bridge.clone()))?;
    host.attach(&net.host_ifname, bridge)?;
    Ok(fd)
}

/// The addresses a pod may be reached at from the host, for messages.
pub fn describe(net: &PrivateNetwork) -> String {
    let ports: Vec<String> = net.ports.iter().map(|p| p.to_string()).collect();
    format!(
        "{}/{} ports [{}]",
        net.address,
        net.prefix_len,
        ports.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let u = "0b9f3c2e-6a1d-4c8e-9f00-1234567890ab";
        assert_eq!(host_ifname(u, false), "bv0b9f3c2e6a1d");
        assert_eq!(host_ifname(u, true), "bt0b9f3c2e6a1d");
        assert_eq!(mac_for(u), "02:0b:9f:3c:2e:6a");
        assert!(berth_spec::valid_ifname(&host_ifname(u, true)));
    }
}

//! berth's host networking, shared by stage0 and both stage1s.
//!
//! `--net private` in four calls:
//!
//! 1. stage0: [`prepare`] — under the network lock: reclaim stale leases,
//!    check host-port conflicts, lease an address, make sure the host side
//!    exists ([`setup`]: the bridge with the gateway = first address of the
//!    subnet, `ip_forward`, berth's nftables tables — created on first use
//!    and kept), then add the pod's elements to the tables' sets and maps in
//!    one nf_tables netlink transaction ([`nfnl`]; anti-spoofing binding of
//!    its host interface to its MAC and address, its published ports).
//!    Returns the [`PrivateNetwork`] written into `pod.json`.
//! 2. stage1: plug the pod in — ns: [`attach_veth`] (veth pair, pod end
//!    created directly in the pod's netns as `eth0` and configured there over
//!    netlink); kvm: [`create_tap`] (a non-persistent tap on the bridge whose
//!    fd goes to the VMM's virtio-net). Both: [`etc::write`] for resolv.conf
//!    and hosts, and [`proxy::start`] for `127.0.0.1:HOSTPORT`.
//! 3. stage1 when the app exits, `gc` after a `kill -9`, stage0 after a
//!    failed start: [`release`] — idempotent: host interface, the pod's set
//!    elements, lease. The bridge and the tables stay for the next pod.
//! 4. `berth network rm`: [`remove`] — the bridge, the tables and the record
//!    of them, once no pod holds a lease. ([`inspect`] shows them.)
//!
//! Everything a stage1 needs is in the spec; only `prepare`, `inspect` and
//! `remove` read `berth.toml` ([`config`]). No `nft` process runs for a pod:
//! only when the tables are (re)built.

pub mod config;
pub mod etc;
pub mod lease;
pub mod link;
pub mod nfnl;
pub mod nft;
pub mod nlsock;
pub mod proxy;
pub mod setup;
pub mod tap;

use berth_spec::{PortMapping, PrivateNetwork};
pub use config::{HostConfig, Subnet};
use lease::{Lease, LeaseDir, NetLock};
use serde::Serialize;
use setup::Setup;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

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
    Nfnl(#[from] nfnl::NfnlError),
    #[error(transparent)]
    Setup(#[from] setup::SetupError),
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
    #[error(
        "the network in berth.toml (bridge {bridge}, subnet {subnet}, table {table}) differs from \
         the one running pods use ({pods}): stop them, then run again"
    )]
    ConfigChanged {
        bridge: String,
        subnet: Subnet,
        table: String,
        pods: String,
    },
    #[error("the network is in use by running pods: {0} (stop them first)")]
    InUse(String),
    #[error(
        "pods that no longer run still hold leases: {0} (berth gc, or --force, collects them)"
    )]
    DeadLeases(String),
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

/// Step timings of one call, logged at debug level (`--log-level debug`;
/// `bench/ns-run.sh` reads them for its breakdown).
struct Steps {
    op: &'static str,
    t0: std::time::Instant,
    last: std::time::Instant,
}

impl Steps {
    fn new(op: &'static str) -> Steps {
        let now = std::time::Instant::now();
        Steps {
            op,
            t0: now,
            last: now,
        }
    }

    fn mark(&mut self, step: &str) {
        let now = std::time::Instant::now();
        log::debug!(
            "net: {}: {step} {:.3} ms (total {:.3} ms)",
            self.op,
            (now - self.last).as_secs_f64() * 1e3,
            (now - self.t0).as_secs_f64() * 1e3
        );
        self.last = now;
    }
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

/// Tear down one stale lease's host side (lock held): its host interface,
/// then its set and map elements, then the lease. ([`release`] does the
/// first two at once.)
fn teardown(
    leases: &LeaseDir,
    lock: &NetLock,
    nl: &link::Netlink,
    nf: &mut nfnl::Nfnl,
    uuid: &str,
    net: &PrivateNetwork,
) -> Result<bool, NetError> {
    nl.delete(&net.host_ifname)?;
    nf.delete(&nft::pod_elements(&net.nft_table, net)?)?;
    Ok(leases.remove(lock, net.address, uuid)?)
}

/// Tear down stale leases; return the live ones.
fn reclaim(
    leases: &LeaseDir,
    lock: &NetLock,
    nl: &link::Netlink,
    nf: &mut nfnl::Nfnl,
) -> Result<Vec<Lease>, NetError> {
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
            teardown(leases, lock, nl, nf, &l.uuid, &l.network)?;
        }
    }
    Ok(live)
}

fn names(leases: &[Lease]) -> String {
    leases
        .iter()
        .map(|l| l.pod.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Make sure the host side is what `cfg` asks for (lock held). The common
/// case — recorded as set up, bridge and tables present — costs three
/// netlink look-ups.
/// Otherwise (first use, a changed `berth.toml`, another table layout): the
/// recorded bridge and tables go if they differ, then the bridge, forwarding
/// and both tables (with the elements of the `live` pods) are created and
/// recorded.
fn ensure_host(
    root: &Path,
    lock: &NetLock,
    nl: &link::Netlink,
    nf: &mut nfnl::Nfnl,
    cfg: &HostConfig,
    live: &[Lease],
) -> Result<(), NetError> {
    let want = Setup::of(cfg);
    let rec = setup::load(root, lock);
    if rec.as_ref() == Some(&want) {
        enable_forwarding()?;
        if nl.index(&cfg.bridge)?.is_none() {
            log::warn!("net: bridge {} is gone: creating it again", cfg.bridge);
            nl.ensure_bridge(&cfg.bridge, cfg.subnet.gateway(), cfg.subnet.prefix_len)?;
        }
        // Both tables still there? (Someone may have flushed the ruleset;
        // a pod without ports would not notice a missing ip table.)
        if !nf.table_exists(nfnl::Family::Ip, &cfg.nft_table)?
            || !nf.table_exists(nfnl::Family::Bridge, &cfg.nft_table)?
        {
            log::warn!(
                "net: nft tables {} are gone: rebuilding them",
                cfg.nft_table
            );
            let pods: Vec<&PrivateNetwork> = live.iter().map(|l| &l.network).collect();
            nft::create(&cfg.nft_table, cfg.subnet, &pods)?;
        }
        return Ok(());
    }
    // Pods on another bridge, subnet or table keep it until they stop.
    let elsewhere: Vec<Lease> = live
        .iter()
        .filter(|l| {
            let n = &l.network;
            n.bridge != cfg.bridge
                || n.nft_table != cfg.nft_table
                || n.prefix_len != cfg.subnet.prefix_len
                || !cfg.subnet.contains(n.address)
        })
        .cloned()
        .collect();
    if !elsewhere.is_empty() {
        return Err(NetError::ConfigChanged {
            bridge: cfg.bridge.clone(),
            subnet: cfg.subnet,
            table: cfg.nft_table.clone(),
            pods: names(&elsewhere),
        });
    }
    if let Some(old) = &rec {
        if old.nft_table != want.nft_table {
            nft::delete(&old.nft_table)?;
        }
        // A new subnet: a new gateway address, so a fresh bridge.
        if old.bridge != want.bridge || old.subnet != want.subnet {
            nl.delete(&old.bridge)?;
        }
        log::info!(
            "net: berth.toml changed: replacing bridge {} ({}) and table {}",
            old.bridge,
            old.subnet,
            old.nft_table
        );
    }
    enable_forwarding()?;
    nl.ensure_bridge(&cfg.bridge, cfg.subnet.gateway(), cfg.subnet.prefix_len)?;
    let pods: Vec<&PrivateNetwork> = live.iter().map(|l| &l.network).collect();
    nft::create(&cfg.nft_table, cfg.subnet, &pods)?;
    setup::store(root, lock, &want)?;
    log::info!(
        "net: set up bridge {} ({}) and nft tables ip/bridge {}",
        cfg.bridge,
        cfg.subnet,
        cfg.nft_table
    );
    Ok(())
}

/// Add the pod's elements in one transaction. If a table or set is missing
/// (someone flushed the ruleset), rebuild both tables with every live pod
/// and this one; if a published port still maps somewhere (a leftover of a
/// failed teardown — no live pod holds it, `prepare` checked), replace it.
fn add_elements(
    nf: &mut nfnl::Nfnl,
    cfg: &HostConfig,
    live: &[Lease],
    net: &PrivateNetwork,
) -> Result<(), NetError> {
    let elems = nft::pod_elements(&net.nft_table, net)?;
    match nf.add(&elems) {
        Ok(()) => Ok(()),
        Err(e) if e.errno() == Some(libc::ENOENT) => {
            log::warn!(
                "net: nft tables {} are incomplete: rebuilding them",
                cfg.nft_table
            );
            let mut pods: Vec<&PrivateNetwork> = live.iter().map(|l| &l.network).collect();
            pods.push(net);
            Ok(nft::create(&cfg.nft_table, cfg.subnet, &pods)?)
        }
        Err(e) if e.errno() == Some(libc::EEXIST) => {
            let ports: Vec<nfnl::Element> = elems
                .iter()
                .filter(|e| e.family == nfnl::Family::Ip)
                .cloned()
                .collect();
            nf.delete(&ports)?;
            Ok(nf.add(&elems)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// stage0: lease an address and set up the host side (see the crate docs).
/// On error nothing is leased.
pub fn prepare(
    root: &Path,
    cfg: &HostConfig,
    req: &PodRequest,
) -> Result<PrivateNetwork, NetError> {
    let mut t = Steps::new("prepare");
    let leases = LeaseDir::new(root);
    let lock = leases.lock()?;
    t.mark("lock");
    let nl = link::Netlink::new()?;
    let mut nf = nfnl::Nfnl::new()?;
    t.mark("netlink sockets");
    let live = reclaim(&leases, &lock, &nl, &mut nf)?;
    t.mark("leases read");
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
    ensure_host(root, &lock, &nl, &mut nf, cfg, &live)?;
    t.mark("host side checked");
    // The lease before the elements: should stage0 die in between, the
    // lease is stale and its reclaim removes whatever elements made it in.
    let lease = Lease {
        pod: req.name.into(),
        uuid: req.uuid.into(),
        network: net.clone(),
    };
    leases.write(&lock, &lease)?;
    t.mark("lease written");
    if let Err(e) = add_elements(&mut nf, cfg, &live, &net) {
        let _ = leases.remove(&lock, address, req.uuid);
        return Err(e);
    }
    t.mark("nft elements added");
    log::debug!("net: pod {} leased {}", req.name, address);
    Ok(net)
}

/// Release everything of pod `uuid` on the host: its host interface, its
/// set elements and its lease (the bridge and tables stay). Idempotent: safe
/// to call from stage1's exit, `stop`, `gc` and stage0, in any order and
/// repeatedly; once the lease is gone, so is the rest, and a call costs one
/// file read.
pub fn release(root: &Path, uuid: &str, net: &PrivateNetwork) -> Result<(), NetError> {
    let mut t = Steps::new("release");
    let leases = LeaseDir::new(root);
    let lock = leases.lock()?;
    if !leases.holds(&lock, net.address, uuid) {
        t.mark("nothing left to release");
        return Ok(());
    }
    t.mark("lock");
    // The pod's processes are gone by now (its init or VMM exited, or its
    // stage1 died and took them along), so its interface and its elements
    // can go at the same time: both wait out an RCU grace period in the
    // kernel — deleting a netdev (synchronize_net) and closing an nf_tables
    // socket after a commit that deleted elements (NETLINK_URELEASE flushes
    // nf_tables' destroy work) — about 10 ms each here, so in parallel.
    let elems = nft::pod_elements(&net.nft_table, net)?;
    let (iface, elements) = std::thread::scope(|s| {
        let h = s.spawn(|| -> Result<bool, NetError> {
            Ok(link::Netlink::new()?.delete(&net.host_ifname)?)
        });
        let r = (|| -> Result<(), NetError> {
            let mut nf = nfnl::Nfnl::new()?;
            nf.delete(&elems)?;
            Ok(())
        })();
        let l = h.join().unwrap_or_else(|_| {
            Err(NetError::Link(link::LinkError::Recv(
                std::io::Error::other("interface deletion thread panicked"),
            )))
        });
        (l, r)
    });
    iface?;
    elements?;
    t.mark("interface and elements deleted");
    leases.remove(&lock, net.address, uuid)?;
    t.mark("lease removed");
    Ok(())
}

/// A lease as `berth network inspect` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseInfo {
    pub pod: String,
    pub uuid: String,
    pub address: std::net::Ipv4Addr,
    pub host_interface: String,
    pub ports: Vec<PortMapping>,
    /// false: its pod no longer runs (the next `run`, `gc` or `network rm
    /// --force` collects it).
    pub live: bool,
}

/// The host network of a state root, for `berth network ls/inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkInfo {
    /// "set up", "not set up" or "config changed" (berth.toml names another
    /// bridge, subnet or table than the ones set up; the next `run` replaces
    /// them once no pod uses them).
    pub state: &'static str,
    pub bridge: String,
    pub subnet: String,
    pub gateway: Option<std::net::Ipv4Addr>,
    pub nft_table: String,
    pub bridge_exists: bool,
    pub ip_table_exists: bool,
    pub bridge_table_exists: bool,
    /// berth.toml, when one is used.
    pub config: Option<PathBuf>,
    /// What berth.toml asks for, when it differs from what is set up.
    pub configured: Option<Setup>,
    pub leases: Vec<LeaseInfo>,
}

/// Describe the host network of `root` (what is set up, or else what
/// `cfg` would set up) and its leases.
pub fn inspect(root: &Path, cfg: &HostConfig) -> Result<NetworkInfo, NetError> {
    let leases = LeaseDir::new(root);
    let lock = leases.lock()?;
    let want = Setup::of(cfg);
    let rec = setup::load(root, &lock);
    let (state, shown) = match &rec {
        None => ("not set up", want.clone()),
        Some(r) if *r == want => ("set up", r.clone()),
        Some(r) => ("config changed", r.clone()),
    };
    let nl = link::Netlink::new()?;
    let mut nf = nfnl::Nfnl::new()?;
    let info = NetworkInfo {
        state,
        bridge_exists: nl.index(&shown.bridge)?.is_some(),
        ip_table_exists: nf.table_exists(nfnl::Family::Ip, &shown.nft_table)?,
        bridge_table_exists: nf.table_exists(nfnl::Family::Bridge, &shown.nft_table)?,
        gateway: shown.subnet().map(|s| s.gateway()),
        configured: (rec.is_some() && rec.as_ref() != Some(&want)).then_some(want),
        bridge: shown.bridge,
        subnet: shown.subnet,
        nft_table: shown.nft_table,
        config: cfg.source.clone(),
        leases: leases
            .all(&lock)
            .into_iter()
            .map(|l| LeaseInfo {
                live: leases.is_live(&l),
                pod: l.pod,
                uuid: l.uuid,
                address: l.network.address,
                host_interface: l.network.host_ifname,
                ports: l.network.ports,
            })
            .collect(),
    };
    Ok(info)
}

/// `berth network rm`: delete the bridge and both nft tables that were set
/// up (and those `cfg` names, if different) and the record of them. Refused
/// while any pod holds a lease; with `force`, the leases of pods that no
/// longer run are collected first (their host side torn down), and only
/// running pods refuse it. Returns what was removed.
pub fn remove(root: &Path, cfg: &HostConfig, force: bool) -> Result<Vec<Setup>, NetError> {
    let leases = LeaseDir::new(root);
    let lock = leases.lock()?;
    let nl = link::Netlink::new()?;
    let all = leases.all(&lock);
    if !all.is_empty() {
        let (live, dead): (Vec<Lease>, Vec<Lease>) =
            all.into_iter().partition(|l| leases.is_live(l));
        if !live.is_empty() {
            return Err(NetError::InUse(names(&live)));
        }
        if !force {
            return Err(NetError::DeadLeases(names(&dead)));
        }
        let mut nf = nfnl::Nfnl::new()?;
        let live = reclaim(&leases, &lock, &nl, &mut nf)?;
        if !live.is_empty() {
            return Err(NetError::InUse(names(&live)));
        }
    }
    let mut targets: Vec<Setup> = setup::load(root, &lock).into_iter().collect();
    let want = Setup::of(cfg);
    if !targets
        .iter()
        .any(|t| t.bridge == want.bridge && t.nft_table == want.nft_table)
    {
        targets.push(want);
    }
    for t in &targets {
        nft::delete(&t.nft_table)?;
        nl.delete(&t.bridge)?;
        log::info!(
            "net: removed bridge {} and nft tables ip/bridge {}",
            t.bridge,
            t.nft_table
        );
    }
    setup::forget(root, &lock)?;
    leases.remove_dir_if_empty(&lock);
    Ok(targets)
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
    let mut t = Steps::new("attach_veth");
    let ns: OwnedFd = std::fs::File::open(format!("/proc/{pod_pid}/ns/net"))
        .map_err(|source| NetError::Netns {
            pid: pod_pid,
            source,
        })?
        .into();
    let host = link::Netlink::new()?;
    t.mark("host socket");
    let bridge = host
        .index(&net.bridge)?
        .ok_or_else(|| NetError::NoBridge(net.bridge.clone()))?;
    t.mark("bridge looked up");
    host.add_veth(&net.host_ifname, bridge, &net.ifname, ns.as_fd(), &net.mac)?;
    t.mark("veth created");
    let inside = link::Netlink::in_netns(ns.as_fd())?;
    t.mark("pod socket");
    inside.configure(&net.ifname, net.address, net.prefix_len, net.gateway)?;
    t.mark("pod side configured");
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

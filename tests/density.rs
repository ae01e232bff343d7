//! Density on the ns stage1 (issue 13 part 2, the seed's scalability test):
//! a create / start / fetch / stop / rm cycle of [`PODS`] nginx service pods
//! from the Debian image, started (and stopped) all at once, each serving
//! its page at its address on the Env's bridge, each running only nginx and
//! journald under its systemd, and nothing of them left afterwards: mounts,
//! cgroups, host links, leases, nft set/map elements, pod directories,
//! processes.
//!
//! [`PODS`] is 10, not the 100: CI runs the whole suite in a
//! 90-minute budget on 2 cores, most of it already spent on kvm boots under
//! PVM. 10 pods take under a minute there (debug build); 100 took about
//! 2 minutes of create/start/stop/rm in bench/density.sh's release run and
//! scale linearly (a service pod's systemd boot is about a second of CPU),
//! so 5-8 minutes in the debug build for what 10 already show: concurrent
//! starts and stops racing for leases, ports, cgroups and nft elements,
//! and a clean host afterwards. The 100-pod cycle, with memory and idle CPU
//! measured, is bench/density.sh (results in bench/RESULTS.md).

// A test binary: a failing step panics, and the panic is the report
// (helpers outside #[test] functions included, which clippy.toml's
// allow-*-in-tests does not cover).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{stderr, stdout, Env};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

/// How many pods the cycle runs at once (see the module's comment).
const PODS: usize = 10;

/// The least `fs.inotify.max_user_instances` the ns stage1 gives a host
/// running service pods (stage1-ns `service::INOTIFY_INSTANCES_FLOOR`):
/// every pod's systemd holds 4 of them, all charged to the host's root, and
/// the kernel's default of 128 runs out at the 33rd pod.
const INOTIFY_INSTANCES_FLOOR: u64 = 8192;

/// Where a pod's cgroup may be: the unified root (cgroup v2) or a v1
/// hierarchy of a hybrid host.
const CGROUP_HIERARCHIES: &[&str] = &[
    "",
    "memory",
    "pids",
    "cpu,cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "unified",
    "systemd",
];

/// The directory of cgroup `cg` (`/berth/<uuid>`) in hierarchy `h`.
fn cgroup_dir(h: &str, cg: &str) -> std::path::PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(h)
        .join(cg.trim_start_matches('/'))
}

fn ok(what: &str, o: &Output) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}: stdout {:?} stderr {:?}",
        stdout(o),
        stderr(o)
    );
}

/// `GET /` over HTTP/1.0 from `addr:80`: the whole response.
fn fetch(addr: &str) -> std::io::Result<String> {
    let to: SocketAddr = format!("{addr}:80")
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")?;
    let mut r = String::new();
    s.read_to_string(&mut r)?;
    Ok(r)
}

/// Run `f(name)` for every pod at once, one thread each; the outputs in
/// the order of `names`.
fn all_at_once(names: &[String], f: impl Fn(&str) -> Output + Sync) -> Vec<Output> {
    std::thread::scope(|s| {
        let handles: Vec<_> = names.iter().map(|n| s.spawn(|| f(n))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a berth thread panicked"))
            .collect()
    })
}

/// The processes running in a pod, by command name, sorted, without the
/// `ps` that lists them.
fn pod_processes(e: &Env, name: &str) -> Vec<String> {
    let o = e.berth(&["exec", name, "--", "ps", "-e", "-o", "comm="]);
    ok("ps", &o);
    let mut v: Vec<String> = stdout(&o)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|c| c != "ps")
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Processes on the host that mention `needle` in their command line or
/// their cgroup: "pid comm" of each.
fn processes_with(needles: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if needles
            .iter()
            .any(|n| cmdline.contains(n.as_str()) || cgroup.contains(n.as_str()))
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push(format!("{pid} {}", comm.trim()));
        }
    }
    found
}

/// The elements in the sets and maps of nft table `family table`, or None
/// (printed) when this host has no `nft` to list them with.
fn nft_elements(family: &str, table: &str) -> Option<usize> {
    let o = match std::process::Command::new("nft")
        .args(["-j", "list", "table", family, table])
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("not checking nft elements: cannot run nft: {e}");
            return None;
        }
    };
    if !o.status.success() {
        // No table, no elements.
        return Some(0);
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("nft -j output");
    let n = v["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|o| o.get("set").or_else(|| o.get("map")))
        .map(|s| s["elem"].as_array().map_or(0, |e| e.len()))
        .sum();
    Some(n)
}

#[test]
fn ten_service_pods_start_at_once_serve_and_leave_nothing() {
    if !common::have_root() || !common::available("ns") {
        return;
    }
    let t0 = Instant::now();
    let e = Env::new();
    let img = common::debian().to_string_lossy().into_owned();
    let root = e.root.path().to_string_lossy().into_owned();
    let names: Vec<String> = (1..=PODS).map(|i| format!("dens{i}")).collect();
    for n in &names {
        ok(
            &format!("create {n}"),
            &e.berth(&["create", "--rootfs", &img, "-u", "nginx.service", n]),
        );
    }
    let created = t0.elapsed();

    // All at once: leases, ports, cgroups, nft elements and the pods' own
    // set-up race each other here.
    let t1 = Instant::now();
    let starts = all_at_once(&names, |n| e.berth(&["start", n]));
    for (n, o) in names.iter().zip(&starts) {
        ok(&format!("start {n}"), o);
    }
    let started = t1.elapsed();
    let limit: u64 = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .expect("read fs.inotify.max_user_instances")
        .trim()
        .parse()
        .expect("a number");
    assert!(
        limit >= INOTIFY_INSTANCES_FLOOR,
        "fs.inotify.max_user_instances is {limit} with service pods running"
    );

    let v: serde_json::Value =
        serde_json::from_str(&stdout(&e.berth(&["list", "--format", "json"]))).unwrap();
    let pods = v.as_array().expect("list is an array");
    assert_eq!(pods.len(), PODS, "{v}");
    let mut uuids = Vec::new();
    let mut addrs = BTreeSet::new();
    let mut cgroups = Vec::new();
    let mut leaders = Vec::new();
    for p in pods {
        let name = p["name"].as_str().expect("name");
        assert_eq!(p["state"], "running", "{p}");
        let addr = p["address"].as_str().expect("an address").to_string();
        assert!(addr.starts_with(&format!("{}.", e.net.prefix)), "{p}");
        // Ready means ready: every pod answers when its start returned.
        let page = fetch(&addr).unwrap_or_else(|err| panic!("{name} at {addr}: {err}"));
        assert!(
            page.starts_with("HTTP/1.1 200") && page.contains("Welcome to nginx"),
            "{name} at {addr}: {page}"
        );
        assert_eq!(
            pod_processes(&e, name),
            ["nginx", "systemd", "systemd-journal"],
            "{name}: only the requested unit and journald run under systemd"
        );
        assert!(addrs.insert(addr), "two pods share an address: {v}");
        uuids.push(p["uuid"].as_str().expect("uuid").to_string());
        cgroups.push(
            std::fs::read_to_string(e.pod(name).cgroup_file())
                .unwrap_or_else(|err| panic!("{name} records no cgroup: {err}"))
                .trim()
                .to_string(),
        );
        leaders.push(p["pid"].as_i64().expect("pid"));
    }
    let links: Vec<String> = uuids
        .iter()
        .map(|u| berth_net::host_ifname(u, false))
        .collect();
    for l in &links {
        assert!(
            Path::new("/sys/class/net").join(l).exists(),
            "{l} is not on the host"
        );
    }
    let bridge_ports = || {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", e.net.bridge))
            .map(|rd| rd.count())
            .unwrap_or(0)
    };
    assert_eq!(bridge_ports(), PODS, "one port on the bridge per pod");
    if let Some(n) = nft_elements("bridge", &e.net.nft_table) {
        assert!(n >= PODS, "{n} nft elements for {PODS} pods");
    }
    // The leak checks below look where the pods really are. A pod's mounts
    // are in its own mount namespace (its overlay names its upper layer in
    // the state root); the host's must not get any of them, now or later.
    for pid in &leaders {
        let m = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        assert!(
            m.lines().any(|l| l.contains(root.as_str())),
            "pod leader {pid}'s mounts do not name the state root {root}"
        );
    }
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for cg in &cgroups {
        assert!(
            CGROUP_HIERARCHIES
                .iter()
                .any(|h| cgroup_dir(h, cg).exists()),
            "pod cgroup {cg} is in none of the hierarchies checked"
        );
    }

    let t2 = Instant::now();
    let stops = all_at_once(&names, |n| e.berth(&["stop", n]));
    for (n, o) in names.iter().zip(&stops) {
        ok(&format!("stop {n}"), o);
    }
    let stopped = t2.elapsed();
    for n in &names {
        ok(&format!("rm {n}"), &e.berth(&["rm", n]));
    }

    // Nothing is left.
    assert!(e.pods().is_empty(), "pod directories left: {:?}", e.pods());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(root.as_str()) || uuids.iter().any(|u| l.contains(u.as_str())))
        .collect();
    assert!(
        left.is_empty(),
        "mounts left on the host: {left:?} (while the pods ran: {})",
        mounts_before
            .lines()
            .filter(|l| l.contains(root.as_str()))
            .count()
    );
    for cg in &cgroups {
        for h in CGROUP_HIERARCHIES {
            let d = cgroup_dir(h, cg);
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }
    for l in &links {
        assert!(
            !Path::new("/sys/class/net").join(l).exists(),
            "link {l} left behind"
        );
    }
    assert_eq!(bridge_ports(), 0, "ports left on the bridge");
    let leases: Vec<_> = std::fs::read_dir(e.root.path().join("net/leases"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leases.is_empty(), "leases left: {leases:?}");
    for family in ["ip", "bridge"] {
        if let Some(n) = nft_elements(family, &e.net.nft_table) {
            assert_eq!(n, 0, "nft elements left in {family} {}", e.net.nft_table);
        }
    }
    for pid in &leaders {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pod leader {pid} still runs"
        );
    }
    let mut needles = vec![root.clone()];
    needles.extend(uuids.iter().cloned());
    let procs = processes_with(&needles);
    assert!(procs.is_empty(), "processes left: {procs:?}");
    eprintln!(
        "density: {PODS} service pods: create {created:?}, start all at once {started:?}, \
         stop all at once {stopped:?}, whole cycle {:?}",
        t0.elapsed()
    );
}

//! End-to-end: a service pod in a microVM (`berth create -u nginx.service
//! --stage1 kvm`), on the Debian image (images/debian.sh). systemd boots in
//! the VM twice here — once per `berth start` — which is all a PVM CI host
//! can afford (each boot there takes minutes of emulated guest-kernel
//! work), so one case checks the whole life of the pod.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{curl, free_port, stderr, stdout, Env};
use std::process::Command;
use std::time::{Duration, Instant};

fn status_file(e: &Env, name: &str) -> String {
    std::fs::read_to_string(e.pod(name).status_file())
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `berth logs -u nginx.service NAME` succeeds and shows nginx's start.
fn logs_show_nginx_started(e: &Env, name: &str, when: &str) {
    let o = e.berth(&["logs", "-u", "nginx.service", name]);
    assert_eq!(o.status.code(), Some(0), "logs ({when}): {}", stderr(&o));
    assert!(
        stdout(&o).contains("Started nginx.service"),
        "logs ({when}): {}",
        stdout(&o)
    );
}

/// `berth exec NAME -- argv`, which must succeed; its stdout.
fn exec(e: &Env, name: &str, argv: &[&str]) -> String {
    let mut args = vec!["exec", name, "--"];
    args.extend_from_slice(argv);
    let o = e.berth(&args);
    assert_eq!(o.status.code(), Some(0), "exec {argv:?}: {}", stderr(&o));
    stdout(&o)
}

/// Refusals at create, then the first boot with every check of a running
/// pod; returns the pod's name and published port.
fn boot_and_check(e: &Env) -> (&'static str, u16) {
    let img = common::debian().to_string_lossy().into_owned();
    let bb = common::busybox().to_string_lossy().into_owned();

    // Refused at create, before any boot, leaving no pod behind.
    for (args, want) in [
        (
            vec![
                "create",
                "--stage1",
                "kvm",
                "--rootfs",
                &img,
                "-u",
                "nope.service",
                "x",
            ],
            format!("berth: unit nope.service not found in rootfs {img}\n"),
        ),
        (
            vec![
                "create",
                "--stage1",
                "kvm",
                "--rootfs",
                &bb,
                "-u",
                "nginx.service",
                "x",
            ],
            format!(
                "berth: rootfs {bb} has no systemd (looked for /usr/lib/systemd/systemd, \
                 /lib/systemd/systemd): a service pod boots systemd\n"
            ),
        ),
    ] {
        let o = e.berth(&args);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), want, "{args:?}");
        assert!(e.pods().is_empty(), "{args:?} left a pod");
    }

    let port = free_port();
    let name = "web-kvm";
    let publish = format!("{port}:80");
    let o = e.berth(&[
        "create",
        "--stage1",
        "kvm",
        "--rootfs",
        &img,
        "-u",
        "nginx.service",
        "-p",
        &publish,
        name,
    ]);
    assert_eq!(o.status.code(), Some(0), "create: {}", stderr(&o));

    // First boot: `start` returns once nginx.service is active.
    let t0 = Instant::now();
    let o = e.berth(&["start", name]);
    assert_eq!(o.status.code(), Some(0), "start: {}", stderr(&o));
    eprintln!("kvm service pod: unit active after {:?}", t0.elapsed());
    let page = curl(port).unwrap_or_default();
    assert!(page.contains("Welcome to nginx"), "{page:?}");

    // `berth exec` runs in systemd's PID namespace: its /proc shows the
    // pod (systemd as PID 1, journald, nginx) and nothing of the VM's
    // (guest-init, kernel threads).
    let ps = exec(e, name, &["ps", "-e", "-o", "pid=,comm="]);
    let procs: Vec<(u32, String)> = ps
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.to_string()))
        })
        .collect();
    assert!(procs.contains(&(1, "systemd".into())), "{ps}");
    for (_, comm) in &procs {
        assert!(
            ["systemd", "systemd-journal", "nginx", "ps"].contains(&comm.as_str()),
            "unexpected process {comm} in the pod:\n{ps}"
        );
    }
    assert!(procs.iter().any(|(_, c)| c == "nginx"), "{ps}");
    assert!(procs.iter().any(|(_, c)| c == "systemd-journal"), "{ps}");
    // Only the requested unit and journald run.
    let units = exec(
        e,
        name,
        &[
            "systemctl",
            "list-units",
            "--type=service",
            "--state=running",
            "--no-legend",
            "--plain",
        ],
    );
    let running: Vec<&str> = units
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        running,
        ["nginx.service", "systemd-journald.service"],
        "{units}"
    );
    let o = e.berth(&["status", name]);
    assert_eq!(o.status.code(), Some(0), "status: {}", stderr(&o));
    assert!(
        stdout(&o).contains("unit:    nginx.service: active (running)"),
        "{}",
        stdout(&o)
    );
    // The running pod's journal, read by journalctl inside.
    logs_show_nginx_started(e, name, "running");
    (name, port)
}

/// The running pod (nginx only, served, status, logs, exec), stop
/// (systemd halts, status 0), the persistent journal read on the host,
/// `rm -f`. One systemd boot in a VM.
#[test]
fn kvm_service_pod_runs_and_stops_cleanly() {
    life(false);
}

/// The same, then a second boot keeping the pod's state and a journal
/// holding both boots, then `rm -f` of the running pod. Not in CI: the
/// second boot (minutes on a PVM host) does not fit CI's 90 minutes beside
/// tests/host.rs's VM boot; run it with `--ignored`.
#[test]
#[ignore = "a second systemd boot in a VM: past CI's time budget on a PVM host"]
fn kvm_service_pod_keeps_its_state_across_a_restart() {
    life(true);
}

fn life(restart: bool) {
    if !common::have_root() || !common::available("kvm") {
        return;
    }
    let t_all = Instant::now();
    let e = Env::new();
    let (name, port) = boot_and_check(&e);
    // A file written now must survive the restart.
    exec(
        &e,
        name,
        &["sh", "-c", "echo kept > /var/lib/berth-e2e-kept"],
    );

    // Stop: SIGTERM reaches systemd as its halt request; it stops the
    // units and exits 0, and the VM powers off with that status.
    let o = e.berth(&["stop", "--timeout", "600", name]);
    assert_eq!(o.status.code(), Some(0), "stop: {}", stderr(&o));
    assert_eq!(status_file(&e, name), "0");
    let app_log = std::fs::read_to_string(e.pod(name).app_log()).unwrap_or_default();
    assert!(
        app_log.contains("nginx"),
        "systemd's console (the pty) reaches app.log:\n{app_log}"
    );
    assert!(curl(port).is_none(), "nginx still answers after stop");

    // journald in the VM wrote its journal persistently, over virtio-fs,
    // into the pod's upper layer: the host reads it directly (as
    // `journalctl -M` does through the machined leader rooted there) and
    // `berth logs` of the stopped pod does the same.
    let mid = std::fs::read_to_string(e.pod(name).seed_layer().join("etc/machine-id")).unwrap();
    let jdir = e.pod(name).upper().join("var/log/journal").join(mid.trim());
    let o = Command::new("journalctl")
        .arg("-D")
        .arg(&jdir)
        .args(["--no-pager", "-o", "cat", "-u", "nginx.service"])
        .output()
        .expect("run journalctl");
    assert!(
        stdout(&o).contains("Started nginx.service"),
        "host journalctl -D {}: {} {}",
        jdir.display(),
        stdout(&o),
        stderr(&o)
    );
    logs_show_nginx_started(&e, name, "stopped");

    if restart {
        second_boot(&e, name, port);
    }
    // rm -f stops it (when running) and removes the pod.
    let t0 = Instant::now();
    let o = e.berth(&["rm", "-f", name]);
    assert_eq!(o.status.code(), Some(0), "rm: {}", stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(600));
    assert!(!e.pod(name).path().exists(), "the pod directory is gone");
    assert!(e.pods().is_empty());
    eprintln!("kvm service pod test: {:?} in all", t_all.elapsed());
}

/// Second boot: the pod's state (its upper layer) is kept.
fn second_boot(e: &Env, name: &str, port: u16) {
    let o = e.berth(&["start", name]);
    assert_eq!(o.status.code(), Some(0), "second start: {}", stderr(&o));
    assert_eq!(exec(e, name, &["cat", "/var/lib/berth-e2e-kept"]), "kept\n");
    let page = curl(port).unwrap_or_default();
    assert!(page.contains("Welcome to nginx"), "{page:?}");
    // The persistent journal holds both boots (each VM boot has a boot id
    // of its own).
    let boots = exec(e, name, &["journalctl", "--no-pager", "--list-boots"]);
    let ids = boots
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .any(|w| w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .count();
    assert_eq!(ids, 2, "{boots}");
}

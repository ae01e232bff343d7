//! Service pods on the ns stage1: systemd inside running only the requested
//! units, from the Debian image and with --host-share (the kvm stage1's
//! case is in service_kvm.rs: it costs a systemd boot in a VM).

// Test code: a failing step panics, and the panic is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{stderr, stdout, Env};
use std::path::Path;

use common::{curl, free_port};

fn ok(what: &str, o: &std::process::Output) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}: stdout {:?} stderr {:?}",
        stdout(o),
        stderr(o)
    );
}

/// The processes running in a pod, by command name, sorted, without the
/// `ps` that lists them and its shell.
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

#[test]
fn service_pod_runs_only_its_units_and_keeps_its_state() {
    if !common::have_root() || !common::available("ns") {
        return;
    }
    let e = Env::new();
    let img = common::debian().to_string_lossy().into_owned();
    let port = free_port();
    let p = format!("{port}:80");
    ok(
        "create",
        &e.berth(&[
            "create",
            "--rootfs",
            &img,
            "-u",
            "nginx.service",
            "-p",
            &p,
            "web",
        ]),
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&e.berth(&["list", "--format", "json"]))).unwrap();
    assert_eq!(v[0]["state"], "created");
    assert_eq!(v[0]["units"][0], "nginx.service");
    ok("start", &e.berth(&["start", "web"]));
    // Ready means ready: the unit is active when `start` returns.
    let page = curl(port).expect("nginx answers through -p");
    assert!(page.contains("Welcome to nginx"), "{page}");
    assert_eq!(
        pod_processes(&e, "web"),
        ["nginx", "systemd", "systemd-journal"],
        "only the requested unit and journald run"
    );
    let o = e.berth(&["status", "web"]);
    ok("status", &o);
    assert!(
        stdout(&o).contains("unit:    nginx.service: active (running)"),
        "{}",
        stdout(&o)
    );
    // systemd's container interface.
    let o = e.berth(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo $(cat /run/host/container-manager) $(systemd-detect-virt -c) \
         $(stat -f -c %T /sys/fs/cgroup) $(cat /proc/1/comm); \
         test -c /dev/console && echo console; ls /var/log/journal/",
    ]);
    ok("container interface", &o);
    let mid = std::fs::read_to_string(e.pod("web").seed_layer().join("etc/machine-id")).unwrap();
    assert_eq!(
        stdout(&o),
        format!("berth container-other cgroup2fs systemd\nconsole\n{}", mid)
    );
    let o = e.berth(&["logs", "-u", "nginx.service", "web"]);
    ok("logs", &o);
    assert!(
        stdout(&o).contains("Started nginx.service"),
        "{}",
        stdout(&o)
    );
    // State survives stop/start.
    ok(
        "write",
        &e.berth(&[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo kept > /etc/berth-test",
        ]),
    );
    ok("stop", &e.berth(&["stop", "web"]));
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&e.berth(&["list", "--format", "json"]))).unwrap();
    assert_eq!(v[0]["state"], "exited", "{v}");
    assert!(curl(port).is_none(), "stopped pod still serves");
    ok("start again", &e.berth(&["start", "web"]));
    let o = e.berth(&[
        "exec",
        "web",
        "--",
        "cat",
        "/etc/berth-test",
        "/etc/machine-id",
    ]);
    assert_eq!(stdout(&o), format!("kept\n{mid}"));
    assert!(curl(port).is_some(), "serves again");
    // The journal persisted across the restart: both starts are in it (one
    // boot id: a container shares the host kernel's).
    let o = e.berth(&[
        "exec",
        "web",
        "--",
        "journalctl",
        "--no-pager",
        "-o",
        "cat",
        "_PID=1",
    ]);
    let starts = stdout(&o)
        .lines()
        .filter(|l| l.starts_with("Startup finished"))
        .count();
    assert_eq!(starts, 2, "{}", stdout(&o));
    let uuid: String =
        serde_json::from_str::<serde_json::Value>(&stdout(&e.berth(&["list", "--format", "json"])))
            .unwrap()[0]["uuid"]
            .as_str()
            .unwrap()
            .to_string();
    ok("rm -f", &e.berth(&["rm", "-f", "web"]));
    assert!(e.pods().is_empty());
    for h in ["memory", "pids", "unified", "systemd"] {
        let d = format!("/sys/fs/cgroup/{h}/berth/{uuid}");
        assert!(!Path::new(&d).exists(), "{d} left behind");
    }
}

#[test]
fn bad_service_pods_fail_clearly_and_leave_nothing() {
    if !common::have_root() || !common::available("ns") {
        return;
    }
    let e = Env::new();
    let deb = common::debian().to_string_lossy().into_owned();
    let bb = common::busybox().to_string_lossy().into_owned();
    for (args, want) in [
        (
            vec!["create", "--rootfs", &deb, "-u", "nope.service", "x"],
            format!("berth: unit nope.service not found in rootfs {deb}\n"),
        ),
        (
            vec!["create", "--rootfs", &bb, "-u", "nginx.service", "x"],
            format!(
                "berth: rootfs {bb} has no systemd (looked for /usr/lib/systemd/systemd, \
                 /lib/systemd/systemd): a service pod boots systemd\n"
            ),
        ),
        (
            vec!["create", "--rootfs", &deb, "-u", "nginx", "x"],
            "berth: invalid unit \"nginx\": expected a unit name such as nginx.service or getty@tty1.service\n"
                .into(),
        ),
        (
            vec!["create", "-u", "nginx.service", "x"],
            "berth: a service pod needs --rootfs DIR or --host-share\n".into(),
        ),
        (
            vec!["create", "--rootfs", &deb, "--host-share", "-u", "nginx.service", "x"],
            "berth: --rootfs and --host-share exclude each other\n".into(),
        ),
    ] {
        let o = e.berth(&args);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), want, "{args:?}");
        assert!(e.pods().is_empty(), "{args:?} left a pod");
    }
    // A unit that fails to start: `start` says which and why, and the pod
    // is halted (nginx with a broken configuration, via --host-share's
    // private /etc).
    if Path::new("/usr/sbin/nginx").exists() {
        ok(
            "create",
            &e.berth(&[
                "create",
                "--host-share",
                "-u",
                "nginx.service",
                "--net",
                "none",
                "bad",
            ]),
        );
        std::fs::write(
            e.pod("bad").host_share_tree().join("etc/nginx/nginx.conf"),
            "this is not nginx's syntax\n",
        )
        .unwrap();
        let o = e.berth(&["start", "bad"]);
        assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
        assert_eq!(
            stderr(&o),
            "berth: unit nginx.service: failed (exit-code)\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&stdout(&e.berth(&["list", "--format", "json"]))).unwrap();
        assert_ne!(v[0]["state"], "running", "a failed start halts the pod");
    } else {
        eprintln!("skipping the failing-unit case: the host has no nginx (make setup installs it)");
    }
}

#[test]
fn host_share_pods_run_the_hosts_nginx_each_with_its_own_data() {
    if !common::have_root() || !common::available("ns") {
        return;
    }
    if !Path::new("/usr/sbin/nginx").exists() {
        eprintln!("skipping: the host has no nginx (make setup installs it without starting it)");
        return;
    }
    let e = Env::new();
    let ports = [free_port(), free_port()];
    for (i, port) in ports.iter().enumerate() {
        let name = format!("hs{i}");
        let p = format!("{port}:80");
        ok(
            "create",
            &e.berth(&[
                "create",
                "--host-share",
                "-u",
                "nginx.service",
                "-p",
                &p,
                &name,
            ]),
        );
        ok("start", &e.berth(&["start", &name]));
        ok(
            "data",
            &e.berth(&[
                "exec",
                &name,
                "--",
                "sh",
                "-c",
                &format!("echo pod-{i} > /var/www/html/index.html"),
            ]),
        );
    }
    for (i, port) in ports.iter().enumerate() {
        assert_eq!(curl(*port).as_deref(), Some(format!("pod-{i}\n").as_str()));
    }
    // The rules: /usr is the host's, read-only; /etc and /var are private
    // (a write never reaches the host); secrets are not copied.
    let o = e.berth(&[
        "exec",
        "hs0",
        "--",
        "sh",
        "-c",
        "touch /usr/berth-x 2>/dev/null && echo usr-writable; \
         echo x > /etc/berth-hs-test; echo x > /var/berth-hs-test; \
         grep -c '!\\*' /etc/shadow >/dev/null && echo shadow-locked; \
         test -e /etc/ssh/ssh_host_rsa_key && echo host-key; \
         test \"$(readlink /bin)\" = \"$(readlink /proc/1/root/bin)\" && echo same-layout",
    ]);
    ok("rules", &o);
    assert_eq!(stdout(&o), "shadow-locked\nsame-layout\n");
    assert!(!Path::new("/etc/berth-hs-test").exists());
    assert!(!Path::new("/var/berth-hs-test").exists());
    assert!(!Path::new("/usr/berth-x").exists());
    let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    let pod_shadow =
        std::fs::read_to_string(e.pod("hs0").host_share_tree().join("etc/shadow")).unwrap();
    assert_ne!(host_shadow, pod_shadow, "the host's shadow is never copied");
    for i in 0..2 {
        ok("rm", &e.berth(&["rm", "-f", &format!("hs{i}")]));
    }
    assert!(e.pods().is_empty());
}

//! Host integration on a systemd host (berth@NAME units, readiness,
//! machined, `journalctl -M`, `systemd-run`), run against the real
//! programs inside a systemd-booted test host (tests/testhost: a Debian
//! image under `systemd-nspawn -b`), since the machines running this suite
//! do not boot systemd. Written to pass on a real systemd host as well: the
//! commands are the ones a user types.

// Test code: a failing step panics, and the panic is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The berth binaries of this build, laid out as `make install` would
/// (bin/, lib/berth/): the test host binds them in. Copies, not links: the
/// directory is bind-mounted, and links out of it would not resolve.
fn install_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("berth-host-install-")
        .tempdir()
        .unwrap();
    let bin = d.path().join("bin");
    let lib = d.path().join("lib/berth");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&lib).unwrap();
    let built = common::berth_bin();
    for b in ["berth", "berth-stage1-ns", "berth-stage1-kvm"] {
        std::fs::copy(built.with_file_name(b), bin.join(b)).unwrap();
    }
    // The kvm stage1's guest kernel and a static guest-init: those of this
    // build when there is one, else the installed ones.
    let musl = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-musl/debug/berth-guest-init");
    let init = std::env::var_os("BERTH_GUEST_INIT")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| musl.is_file().then_some(musl))
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/berth/berth-guest-init"));
    let kernel = std::env::var_os("BERTH_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/berth/vmlinux"));
    for (from, to) in [(init, "berth-guest-init"), (kernel, "vmlinux")] {
        if from.is_file() {
            std::fs::copy(&from, lib.join(to)).unwrap();
        }
    }
    d
}

fn testhost() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testhost/testhost.sh")
}

/// A running test host, stopped at drop.
struct Host {
    name: String,
    _install: tempfile::TempDir,
}

impl Host {
    fn start(tag: &str) -> Host {
        let install = install_dir();
        let name = format!("bt{tag}{}", std::process::id() % 100_000);
        let o = Command::new("bash")
            .arg(testhost())
            .args(["start", &name])
            .env("BERTH_INSTALL_DIR", install.path())
            .output()
            .expect("run testhost.sh");
        assert!(
            o.status.success(),
            "testhost.sh start: {}{}",
            stdout(&o),
            stderr(&o)
        );
        let h = Host {
            name,
            _install: install,
        };
        // berth's template unit, as `make setup` installs it.
        let unit = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/berth@.service"),
        )
        .unwrap()
        .replace("@BINDIR@", "/usr/local/bin");
        let o = h.sh(&format!(
            "mkdir -p /usr/local/lib/systemd/system && cat > /usr/local/lib/systemd/system/berth@.service <<'UNIT'\n{unit}UNIT\nsystemctl daemon-reload"
        ));
        assert!(o.status.success(), "install the unit: {}", stderr(&o));
        h
    }

    /// `sh -c SCRIPT` inside the host.
    fn sh(&self, script: &str) -> Output {
        Command::new("bash")
            .arg(testhost())
            .args(["exec", &self.name, "--", "sh", "-c", script])
            .output()
            .expect("run testhost.sh exec")
    }

    /// Like [`Host::sh`], asserting success; returns stdout.
    fn ok(&self, what: &str, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.status.success(),
            "{what}: status {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            o.status,
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let o = self.sh(
                "berth list; systemctl --no-pager status 'berth@*' 2>&1 | tail -40; \
                 journalctl --no-pager -n 60 2>&1",
            );
            eprintln!(
                "--- test host {} at the failure:\n{}{}",
                self.name,
                stdout(&o),
                stderr(&o)
            );
        }
        let _ = Command::new("bash")
            .arg(testhost())
            .args(["stop", &self.name])
            .output();
    }
}

fn can_run() -> bool {
    if !common::have_root() || !common::available("ns") {
        return false;
    }
    if Command::new("systemd-nspawn")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: no systemd-nspawn (make setup installs systemd-container)");
        return false;
    }
    true
}

#[test]
fn berth_units_machined_and_journal_on_a_systemd_host() {
    if !can_run() {
        return;
    }
    let deb = common::debian().to_string_lossy().into_owned();
    let h = Host::start("u");
    h.ok(
        "create",
        &format!("berth create --rootfs {deb} -u nginx.service -p 18090:80 web"),
    );
    // Ready means every unit inside is active: the page is there as soon as
    // systemctl start returns.
    let t0 = std::time::Instant::now();
    h.ok("systemctl start", "systemctl start berth@web");
    let took = t0.elapsed();
    eprintln!("systemctl start berth@web: active after {took:?}");
    let page = h.ok("curl", "curl -s -m 5 http://127.0.0.1:18090/");
    assert!(page.contains("Welcome to nginx"), "{page}");
    assert_eq!(
        h.ok("is-active", "systemctl is-active berth@web"),
        "active\n"
    );
    // The pod lives in the unit's delegated subtree, not in a cgroup
    // systemd does not know.
    let cg = h.ok("cgroup", "cat /var/lib/berth/pods/web/cgroup");
    assert_eq!(cg, "/machine.slice/berth@web.service/pod\n");
    // machined knows it.
    let list = h.ok("machinectl list", "machinectl list --no-legend");
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().next() == Some("web") && l.contains("container")),
        "{list}"
    );
    let st = h.ok("machinectl status", "machinectl status web --no-pager");
    assert!(st.contains("Unit: berth@web.service"), "{st}");
    // The pod's journal through machined.
    let j = h.ok(
        "journalctl -M",
        "journalctl -M web -u nginx.service --no-pager",
    );
    assert!(j.contains("nginx.service"), "{j}");
    // Live: an entry written now shows up.
    h.ok(
        "log",
        "berth exec web -- logger -t berth-live hello-from-the-pod",
    );
    let j = h.ok(
        "journalctl -M live",
        "sleep 1; journalctl -M web -t berth-live --no-pager -o cat",
    );
    assert_eq!(j.trim(), "hello-from-the-pod");
    // systemctl reload reaches the units inside.
    h.ok("reload", "systemctl reload berth@web");
    // machinectl poweroff stops it cleanly; berth and systemd agree.
    h.ok("poweroff", "machinectl poweroff web");
    h.ok(
        "stopped",
        "for i in $(seq 100); do systemctl is-active -q berth@web || break; sleep 0.2; done; \
         ! systemctl is-active -q berth@web",
    );
    let v: serde_json::Value =
        serde_json::from_str(&h.ok("list", "berth list --format json")).unwrap();
    assert_eq!(v[0]["state"], "exited", "{v}");
    assert_eq!(v[0]["exit_code"], 0, "{v}");
    // berth start on a systemd host goes through the unit; systemctl stop
    // is clean too.
    h.ok("berth start", "berth start web");
    assert_eq!(
        h.ok("is-active", "systemctl is-active berth@web"),
        "active\n"
    );
    h.ok("systemctl stop", "systemctl stop berth@web");
    let v: serde_json::Value =
        serde_json::from_str(&h.ok("list", "berth list --format json")).unwrap();
    assert_eq!(v[0]["state"], "exited", "{v}");
    assert_eq!(v[0]["exit_code"], 0, "a clean stop: {v}");
    h.ok("rm", "berth rm web");
}

/// The same for a VM service pod (`--stage1 kvm`): systemd boots in the
/// microVM, `berth@NAME` is active once nginx inside is, machined lists the
/// pod with its unit, `journalctl -M` reads the guest's journal (written
/// over virtio-fs, read through the machined leader rooted in the VMM's
/// view of the pod's root), `machinectl poweroff` halts the guest's
/// systemd cleanly, and `systemd-run` of a VM command pod reports its
/// status. One boot: minutes on a nested PVM host. (`systemctl stop
/// berth@NAME` of a VM pod takes the same path as `berth stop`, which
/// tests/service_kvm.rs checks; a second boot here to run it does not fit
/// CI's 90 minutes.)
#[test]
fn berth_unit_of_a_vm_service_pod_machined_and_journal() {
    if !can_run() || !common::available("kvm") {
        return;
    }
    let deb = common::debian().to_string_lossy().into_owned();
    let h = Host::start("k");
    h.ok(
        "create",
        &format!("berth create --stage1 kvm --rootfs {deb} -u nginx.service -p 18092:80 vmweb"),
    );
    let t0 = std::time::Instant::now();
    h.ok("systemctl start", "systemctl start berth@vmweb");
    eprintln!(
        "systemctl start berth@vmweb (kvm): active after {:?}",
        t0.elapsed()
    );
    let page = h.ok("curl", "curl -s -m 10 http://127.0.0.1:18092/");
    assert!(page.contains("Welcome to nginx"), "{page}");
    assert_eq!(
        h.ok("is-active", "systemctl is-active berth@vmweb"),
        "active\n"
    );
    let cg = h.ok("cgroup", "cat /var/lib/berth/pods/vmweb/cgroup");
    assert_eq!(cg, "/machine.slice/berth@vmweb.service/pod\n");
    let list = h.ok("machinectl list", "machinectl list --no-legend");
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().next() == Some("vmweb")),
        "{list}"
    );
    let st = h.ok("machinectl status", "machinectl status vmweb --no-pager");
    assert!(st.contains("Unit: berth@vmweb.service"), "{st}");
    // journald writes its file through a shared mapping: the guest kernel
    // writes the dirty pages back over virtio-fs within its writeback
    // interval (30 s), or at journald's sync, so an entry reaches the host
    // that much later than it was logged.
    let t0 = std::time::Instant::now();
    let j = h.ok(
        "journalctl -M",
        "for i in $(seq 300); do \
           journalctl -M vmweb -u nginx.service --no-pager -o cat | grep -q 'Started nginx.service' && break; \
           sleep 1; done; journalctl -M vmweb -u nginx.service --no-pager -o cat",
    );
    assert!(j.contains("Started nginx.service"), "{j}");
    eprintln!(
        "journalctl -M vmweb: nginx's start entry on the host after {:?}",
        t0.elapsed()
    );
    // A clean halt of the guest's systemd, however long it takes there.
    let t0 = std::time::Instant::now();
    h.ok("poweroff", "machinectl poweroff vmweb");
    h.ok(
        "stopped",
        "for i in $(seq 1800); do systemctl is-active -q berth@vmweb || break; sleep 0.5; done; \
         ! systemctl is-active -q berth@vmweb",
    );
    eprintln!(
        "machinectl poweroff vmweb: stopped after {:?}",
        t0.elapsed()
    );
    let v: serde_json::Value =
        serde_json::from_str(&h.ok("list", "berth list --format json")).unwrap();
    assert_eq!(v[0]["state"], "exited", "{v}");
    assert_eq!(v[0]["exit_code"], 0, "a clean halt: {v}");
    h.ok("rm", "berth rm vmweb");
    // Headless, no TTY, a VM: the transient unit's result is the app's
    // status.
    let bb = common::busybox().to_string_lossy().into_owned();
    let o = h.sh(&format!(
        "systemd-run --wait --quiet -p Type=notify berth run --rm --stage1 kvm --net none --rootfs {bb} -- sh -c 'exit 3'"
    ));
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn systemd_run_reports_the_apps_status_and_tree() {
    if !can_run() {
        return;
    }
    let bb = common::busybox().to_string_lossy().into_owned();
    let h = Host::start("r");
    // Headless, no TTY: the transient unit's result carries the status.
    let o = h.sh(&format!(
        "systemd-run --wait --quiet -p Type=notify berth run --rm --net none --rootfs {bb} -- sh -c 'exit 3'"
    ));
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
    // A running ns pod under systemd-run: below the transient unit's cgroup
    // (its status shows the pod's process tree), registered with machined,
    // and `systemctl stop` reaches the app as SIGTERM.
    h.ok(
        "systemd-run",
        &format!(
            "systemd-run --unit=berth-run-test -p Type=notify berth run --name tree --net none --rootfs {bb} -- \
             sh -c 'trap \"echo got-term > /tmp/term; exit 0\" TERM; sleep 1000 & wait'"
        ),
    );
    let cg = h.ok("cgroup", "cat /var/lib/berth/pods/tree/cgroup");
    assert_eq!(
        cg.trim(),
        "/system.slice/berth-run-test.service/pod",
        "{cg}"
    );
    let st = h.ok(
        "systemctl status",
        "systemctl status berth-run-test --no-pager --lines=0",
    );
    assert!(st.contains("sleep 1000"), "the pod's tree: {st}");
    let st = h.ok(
        "machinectl status",
        "machinectl status tree --no-pager --lines=0",
    );
    assert!(st.contains("Unit: berth-run-test.service"), "{st}");
    // A limit needs a controller the unit does not delegate.
    let o = h.sh(&format!(
        "systemd-run --wait --quiet berth run --rm --net none --memory 64m --rootfs {bb} -- true"
    ));
    assert_ne!(o.status.code(), Some(0));
    // From a login shell (no unit): a machined scope.
    h.ok(
        "scope",
        &format!("berth run -d --name sc --net none --rootfs {bb} -- sleep 1000"),
    );
    let cg = h.ok("cgroup", "cat /var/lib/berth/pods/sc/cgroup");
    assert_eq!(cg.trim(), "/machine.slice/machine-sc.scope", "{cg}");
    h.ok("rm sc", "berth rm -f sc");
    h.ok("systemctl stop", "systemctl stop berth-run-test");
    let upper = h.ok(
        "term",
        "cat /var/lib/berth/pods/tree/overlay/upper/tmp/term",
    );
    assert_eq!(upper, "got-term\n");
    h.ok("rm", "berth rm tree");
}

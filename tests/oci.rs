//! berth-oci, the OCI runtime: its runc command line on a bundle, then the
//! real clients — podman (through conmon) and containerd (`ctr`, through
//! containerd-shim-runc-v2 with `--runc-binary`) — on the ns stage1.
//! Needs root, and podman/containerd installed (`make setup` does).

// Test code: a failing step panics, and the panic is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn oci_bin() -> PathBuf {
    let p = common::berth_bin().with_file_name("berth-oci");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

fn out(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        common::stdout(o),
        common::stderr(o)
    )
}

fn need(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} is not installed (make setup installs it)");
}

/// A bundle whose config is runc's default (`runc spec`) edited by `edit`.
struct Bundle {
    dir: tempfile::TempDir,
}

impl Bundle {
    fn new(root: &Path, readonly: bool, args: &[&str]) -> Bundle {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Command::new("runc")
            .arg("spec")
            .current_dir(dir.path())
            .output()
            .expect("runc spec");
        assert!(o.status.success(), "runc spec: {}", out(&o));
        let b = Bundle { dir };
        b.edit(|c| {
            c["root"] = serde_json::json!({"path": root, "readonly": readonly});
            c["process"]["terminal"] = false.into();
            c["process"]["args"] = serde_json::json!(args);
        });
        b
    }

    fn edit(&self, f: impl FnOnce(&mut serde_json::Value)) {
        let p = self.dir.path().join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("json");
        f(&mut c);
        std::fs::write(&p, c.to_string()).expect("write config");
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

struct Runtime {
    root: tempfile::TempDir,
}

impl Runtime {
    fn new() -> Runtime {
        Runtime {
            root: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(oci_bin());
        c.arg("--root").arg(self.root.path()).args(args);
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("berth-oci")
    }

    /// `create` (and `run --detach`): the container's leader keeps the
    /// streams it was given, so they are files here, not pipes whose end
    /// `output()` would wait for.
    fn spawn_detached(&self, args: &[&str]) -> Output {
        let dir = tempfile::tempdir().expect("tempdir");
        let (o, e) = (dir.path().join("out"), dir.path().join("err"));
        let status = self
            .cmd(args)
            .stdout(std::fs::File::create(&o).expect("out"))
            .stderr(std::fs::File::create(&e).expect("err"))
            .status()
            .expect("berth-oci");
        Output {
            status,
            stdout: std::fs::read(&o).unwrap_or_default(),
            stderr: std::fs::read(&e).unwrap_or_default(),
        }
    }

    fn state(&self, id: &str) -> serde_json::Value {
        let o = self.run(&["state", id]);
        assert!(o.status.success(), "state: {}", out(&o));
        serde_json::from_slice(&o.stdout).expect("state json")
    }

    fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.state(id)["status"] == want {
                return;
            }
            assert!(Instant::now() < deadline, "{id} never became {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// runc's life cycle on a bundle, the output file showing that the app ran
/// only after `start`, and errors named as runc names them.
#[test]
fn runc_command_line() {
    if !common::have_root() {
        return;
    }
    need("runc");
    let rt = Runtime::new();
    let host = tempfile::tempdir().expect("tempdir");
    let mark = host.path().join("mark");
    let b = Bundle::new(
        common::busybox(),
        true,
        &["sh", "-c", "echo ran > /out/mark; exit 7"],
    );
    let hdir = host.path().display().to_string();
    b.edit(|c| {
        c["mounts"].as_array_mut().expect("mounts").push(
            serde_json::json!({"destination": "/out", "type": "bind", "source": hdir, "options": ["rbind", "rw"]}),
        );
    });
    let bundle = b.path().display().to_string();
    let pidfile = host.path().join("pid");
    let o = rt.spawn_detached(&[
        "create",
        "--bundle",
        &bundle,
        "--pid-file",
        pidfile.to_str().expect("utf8"),
        "c1",
    ]);
    assert!(o.status.success(), "create: {}", out(&o));
    let st = rt.state("c1");
    assert_eq!(st["status"], "created", "{st}");
    let pid: i64 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(st["pid"], pid);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!mark.exists(), "the app ran before start");
    let dup = rt.spawn_detached(&["create", "--bundle", &bundle, "c1"]);
    assert!(
        common::stderr(&dup).contains("already exists"),
        "{}",
        out(&dup)
    );
    let o = rt.run(&["delete", "c1x"]);
    assert!(common::stderr(&o).contains("does not exist"), "{}", out(&o));
    let o = rt.run(&["start", "c1"]);
    assert!(o.status.success(), "start: {}", out(&o));
    rt.wait_status("c1", "stopped");
    assert_eq!(
        std::fs::read_to_string(&mark).expect("mark").trim(),
        "ran",
        "the app's bind mount"
    );
    let o = rt.run(&["start", "c1"]);
    assert!(!o.status.success(), "a stopped container started again");
    let o = rt.run(&["kill", "c1", "KILL"]);
    assert!(
        common::stderr(&o).contains("not running"),
        "kill of a stopped container: {}",
        out(&o)
    );
    let o = rt.run(&["delete", "c1"]);
    assert!(o.status.success(), "delete: {}", out(&o));
    assert!(!rt.root.path().join("c1").exists());

    // A running container: kill, delete refused until it stopped; ps.
    let b2 = Bundle::new(common::busybox(), true, &["sleep", "100"]);
    let bundle2 = b2.path().display().to_string();
    assert!(rt
        .spawn_detached(&["create", "--bundle", &bundle2, "c2"])
        .status
        .success());
    assert!(rt.run(&["start", "c2"]).status.success());
    rt.wait_status("c2", "running");
    let o = rt.run(&["ps", "--format", "json", "c2"]);
    let pids: Vec<i32> = serde_json::from_slice(&o.stdout).expect("ps json");
    assert!(!pids.is_empty(), "ps: {}", out(&o));
    let o = rt.run(&["exec", "c2", "sh", "-c", "echo $(hostname) in; exit 6"]);
    assert_eq!(o.status.code(), Some(6), "exec: {}", out(&o));
    assert!(common::stdout(&o).contains(" in"), "{}", out(&o));
    let o = rt.run(&["delete", "c2"]);
    assert!(
        common::stderr(&o).contains("not stopped"),
        "delete of a running container: {}",
        out(&o)
    );
    assert!(rt.run(&["kill", "c2", "TERM"]).status.success());
    rt.wait_status("c2", "stopped");
    assert!(rt.run(&["delete", "c2"]).status.success());
}

/// What berth cannot honour fails `create`, naming the field, in the
/// runc-style JSON log when asked; nothing is left behind.
#[test]
fn unsupported_fields_fail_by_name() {
    if !common::have_root() {
        return;
    }
    need("runc");
    let rt = Runtime::new();
    let b = Bundle::new(common::busybox(), true, &["true"]);
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .expect("ns")
            .push(serde_json::json!({"type": "user"}));
        c["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    let log = rt.root.path().join("log.json");
    let bundle = b.path().display().to_string();
    let o = rt.spawn_detached(&[
        "--log",
        log.to_str().expect("utf8"),
        "--log-format",
        "json",
        "create",
        "--bundle",
        &bundle,
        "u1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        common::stderr(&o).contains("linux.namespaces[user]"),
        "{}",
        out(&o)
    );
    let line = std::fs::read_to_string(&log).expect("log");
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("json log line");
    assert_eq!(v["level"], "error");
    assert!(v["msg"].as_str().expect("msg").contains("user"), "{v}");
    assert!(
        !rt.root.path().join("u1").exists(),
        "a failed create left its directory"
    );
}

/// Hostile bundles: a mount whose destination goes through a symlink in
/// the image to `/` lands inside the root, never on the host; a read-only
/// root refuses writes; a writable root takes them in the bundle's own
/// files (never an overlay elsewhere).
#[test]
fn mounts_stay_in_the_root() {
    if !common::have_root() {
        return;
    }
    need("runc");
    let rt = Runtime::new();
    let img = tempfile::tempdir().expect("tempdir");
    let o = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", common::busybox().display()))
        .arg(img.path())
        .output()
        .expect("cp");
    assert!(o.status.success());
    std::os::unix::fs::symlink("/", img.path().join("evil")).expect("symlink");
    let marker = format!("berth-oci-escape-{}", std::process::id());
    let b = Bundle::new(
        img.path(),
        false,
        &[
            "sh",
            "-c",
            &format!("touch /evil/tmp/{marker}/x && echo written > /written"),
        ],
    );
    b.edit(|c| {
        c["mounts"].as_array_mut().expect("mounts").push(serde_json::json!(
            {"destination": format!("/evil/tmp/{marker}"), "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}
        ));
    });
    let bundle = b.path().display().to_string();
    let o = rt.run(&["run", "--bundle", &bundle, "m1"]);
    assert!(o.status.success(), "run: {}", out(&o));
    assert!(
        !Path::new("/tmp").join(&marker).exists(),
        "the mount escaped the root onto the host's /tmp"
    );
    assert_eq!(
        std::fs::read_to_string(img.path().join("written"))
            .expect("the write landed in the bundle's root")
            .trim(),
        "written"
    );
    assert!(rt.run(&["delete", "m1"]).status.success());

    let b = Bundle::new(img.path(), true, &["sh", "-c", "echo x > /ro-test"]);
    let bundle = b.path().display().to_string();
    let o = rt.run(&["run", "--bundle", &bundle, "m2"]);
    assert!(o.status.success(), "run: {}", out(&o));
    assert!(
        !img.path().join("ro-test").exists(),
        "a read-only root was written"
    );
    assert!(rt.run(&["delete", "m2"]).status.success());
}

fn podman(storage: &Path) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(storage.join("root"))
        .arg("--runroot")
        .arg(storage.join("run"))
        .arg("--cgroup-manager")
        .arg("cgroupfs")
        .arg("--runtime")
        .arg(oci_bin())
        .stdin(Stdio::null());
    c
}

const ULIMITS: &[&str] = &[
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

fn import_image(storage: &Path) {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(common::busybox())
        .arg("-c")
        .arg(".")
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let o = podman(storage)
        .args(["import", "-", "localhost/berth-busybox:latest"])
        .stdin(tar.stdout.take().expect("tar stdout"))
        .output()
        .expect("podman import");
    assert!(tar.wait().expect("tar").success(), "tar failed");
    assert!(o.status.success(), "podman import: {}", out(&o));
}

/// podman on the ns stage1: exit status, -d -p (podman's netavark network
/// namespace joined), exec, logs, stop, rm.
#[test]
fn podman_on_ns() {
    if !common::have_root() {
        return;
    }
    need("podman");
    let storage = tempfile::tempdir().expect("tempdir");
    import_image(storage.path());
    let p = |args: &[&str]| podman(storage.path()).args(args).output().expect("podman");
    let mut run = vec!["run", "--rm"];
    run.extend(ULIMITS);
    run.extend(["localhost/berth-busybox", "sh", "-c", "echo hi; exit 3"]);
    let o = p(&run);
    assert_eq!(o.status.code(), Some(3), "podman run: {}", out(&o));
    assert_eq!(common::stdout(&o), "hi\n");

    let port = 18000 + (std::process::id() % 1000) as u16;
    let publish = format!("{port}:80");
    let mut run = vec!["run", "-d", "--name", "web", "-p", &publish];
    run.extend(ULIMITS);
    run.extend([
        "localhost/berth-busybox",
        "sh",
        "-c",
        "mkdir -p /www; echo hi-from-berth > /www/index.html; echo started; exec httpd -f -p 80 -h /www",
    ]);
    let o = p(&run);
    assert!(o.status.success(), "podman run -d: {}", out(&o));
    let url = format!("http://127.0.0.1:{port}/index.html");
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let c = Command::new("curl")
            .args(["-s", "-m", "2", &url])
            .output()
            .expect("curl");
        if c.status.success() || Instant::now() > deadline {
            break common::stdout(&c);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(body, "hi-from-berth\n", "published port");
    let o = p(&["exec", "web", "sh", "-c", "echo in-exec; exit 4"]);
    assert_eq!(o.status.code(), Some(4), "podman exec: {}", out(&o));
    assert_eq!(common::stdout(&o), "in-exec\n");
    let o = p(&["logs", "web"]);
    assert!(
        common::stdout(&o).contains("started"),
        "podman logs: {}",
        out(&o)
    );
    let o = p(&["stop", "-t", "5", "web"]);
    assert!(o.status.success(), "podman stop: {}", out(&o));
    let o = p(&["inspect", "--format", "{{.State.ExitCode}}", "web"]);
    assert_eq!(common::stdout(&o).trim(), "143", "httpd ended by SIGTERM");
    let o = p(&["rm", "web"]);
    assert!(o.status.success(), "podman rm: {}", out(&o));
}

/// A private containerd (own root, state and socket), stopped on drop.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{r}/sock\"\n",
            r = d.display()
        );
        std::fs::write(d.join("config.toml"), config).expect("config");
        let log = std::fs::File::create(d.join("log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("containerd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d.join("sock").exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Containerd { dir, child }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.dir.path().join("sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// containerd's runc shim with berth-oci as its runc: `ctr run` returns the
/// app's status; `ctr task kill` stops a detached task.
#[test]
fn containerd_on_ns() {
    if !common::have_root() {
        return;
    }
    need("containerd");
    need("podman");
    let storage = tempfile::tempdir().expect("tempdir");
    import_image(storage.path());
    let tar = storage.path().join("bb.tar");
    let o = podman(storage.path())
        .args(["save", "--format", "oci-archive", "-o"])
        .arg(&tar)
        .arg("localhost/berth-busybox")
        .output()
        .expect("podman save");
    assert!(o.status.success(), "podman save: {}", out(&o));
    let c = Containerd::start();
    let tar_s = tar.display().to_string();
    let o = c.ctr(&[
        "image",
        "import",
        "--base-name",
        "localhost/berth-busybox",
        &tar_s,
    ]);
    assert!(o.status.success(), "ctr import: {}", out(&o));
    let bin = oci_bin().display().to_string();
    let image = "localhost/berth-busybox:latest";
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        &bin,
        image,
        "t1",
        "sh",
        "-c",
        "echo hello from ctr; exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5), "ctr run: {}", out(&o));
    assert_eq!(common::stdout(&o), "hello from ctr\n");
    let o = c.ctr(&[
        "run",
        "-d",
        "--runc-binary",
        &bin,
        image,
        "t2",
        "sleep",
        "100",
    ]);
    assert!(o.status.success(), "ctr run -d: {}", out(&o));
    let o = c.ctr(&["task", "kill", "t2"]);
    assert!(o.status.success(), "ctr task kill: {}", out(&o));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = c.ctr(&["task", "ls"]);
        let ls = common::stdout(&o);
        if ls
            .lines()
            .any(|l| l.starts_with("t2 ") && l.contains("STOPPED"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "t2 did not stop: {ls}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.ctr(&["task", "delete", "t2"]).status.success());
    assert!(c.ctr(&["container", "delete", "t2"]).status.success());
}

//! Shared harness for the end-to-end tests: drives the real `berth` binary
//! (and through it the stage1 executables) against a throw-away state root.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The stage1s every case runs against. A stage1 that cannot pass a case yet
/// lists it in [`unsupported`] with the reason.
pub const STAGE1S: &[&str] = &["ns", "kvm"];

/// Why `stage1` skips `case`, or None when it must pass it.
///
/// kvm: cases that would cost one boot per assertion on the PVM CI hosts
/// run on kvm in their one-boot form, `probe_parity`.
pub fn unsupported(stage1: &str, case: &str) -> Option<&'static str> {
    if stage1 != "kvm" {
        return None;
    }
    Some(match case {
        "env-cwd-hostname-user" | "overlay" | "reaper" => "covered in one boot by probe_parity",
        _ => return None,
    })
}

/// Can this host run `stage1` at all? Prints why not. `BERTH_E2E_STAGE1S`
/// (comma-separated, e.g. `ns`) restricts the run to those stage1s.
pub fn available(stage1: &str) -> bool {
    if let Ok(only) = std::env::var("BERTH_E2E_STAGE1S") {
        if !only.split(',').any(|s| s.trim() == stage1) {
            eprintln!("skipping stage1 {stage1}: not in BERTH_E2E_STAGE1S={only}");
            return false;
        }
    }
    if stage1 == "kvm" && !Path::new("/dev/kvm").exists() {
        eprintln!("skipping stage1 kvm: this host has no /dev/kvm");
        return false;
    }
    true
}

pub fn berth_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth"))
}

/// Root is needed for namespaces, mounts and cgroups. Prints why when not.
pub fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping: end-to-end tests need root (namespaces, mounts, cgroups)");
        false
    }
}

/// The busybox test image, built (and cached) by images/busybox.sh.
pub fn busybox() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/busybox.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run images/busybox.sh");
        assert!(out.status.success(), "images/busybox.sh failed");
        let text = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(text.lines().last().expect("image path").trim())
    })
}

/// The Debian 12 image with systemd and nginx (images/debian.sh, cached:
/// the first build takes about a minute).
pub fn debian() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/debian.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run images/debian.sh");
        assert!(out.status.success(), "images/debian.sh failed");
        let text = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(text.lines().last().expect("image path").trim())
    })
}

/// A private state root, removed (after a `gc`) at drop. Its `berth.toml`
/// gives it a network of its own, so tests never touch the host's `berth0`
/// and parallel tests never share a bridge: bridge `bte<pid>x<n>`, nft table
/// `berth_e2e_<pid>_<n>`, subnet a /24 of 198.18.0.0/15 (RFC 2544's
/// benchmarking range, never routed on real networks).
pub struct Env {
    pub root: tempfile::TempDir,
    pub net: TestNet,
}

/// The network an [`Env`] configures.
#[derive(Clone, Debug)]
pub struct TestNet {
    pub bridge: String,
    pub nft_table: String,
    /// First three octets of the /24, e.g. "198.18.7".
    pub prefix: String,
}

/// The host's IPv4 routes (network, mask) from /proc/net/route, without the
/// default route.
fn routed_networks() -> Vec<(u32, u32)> {
    let word = |f: &str| {
        u32::from_str_radix(f, 16)
            .ok()
            .map(|v| u32::from_be_bytes(v.to_ne_bytes()))
    };
    std::fs::read_to_string("/proc/net/route")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((word(f.get(1)?)?, word(f.get(7)?)?))
        })
        .filter(|(_, mask)| *mask != 0)
        .collect()
}

impl TestNet {
    fn next() -> TestNet {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // A /24 no interface routes yet (berth refuses a subnet in use: a
        // bridge left by a killed test run would fail every case that
        // lands on it). Same-process Envs differ by `n`.
        let routed = routed_networks();
        let base = pid.wrapping_mul(37).wrapping_add(n.wrapping_mul(7));
        let slot = (0..512)
            .map(|k| base.wrapping_add(k) % 512)
            .find(|slot| {
                let net = [198, 18 + (slot / 256) as u8, (slot % 256) as u8, 0];
                !routed.iter().any(|(dst, mask)| {
                    let ours = u32::from_be_bytes(net);
                    let common = mask & 0xffff_ff00;
                    dst & common == ours & common
                })
            })
            .unwrap_or(base % 512);
        TestNet {
            bridge: format!("bte{}x{}", pid % 100_000, n % 100),
            nft_table: format!("berth_e2e_{pid}_{n}"),
            prefix: format!("198.{}.{}", 18 + slot / 256, slot % 256),
        }
    }

    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    pub fn toml(&self) -> String {
        format!(
            "[network]\nbridge = \"{}\"\nsubnet = \"{}.0/24\"\nnft_table = \"{}\"\ndns = [\"192.0.2.53\"]\n",
            self.bridge, self.prefix, self.nft_table
        )
    }
}

impl Env {
    pub fn new() -> Env {
        for s in STAGE1S {
            let stage1 = berth_bin().with_file_name(format!("berth-stage1-{s}"));
            assert!(
                stage1.exists(),
                "{} is missing: build the whole workspace first (make test does)",
                stage1.display()
            );
        }
        let root = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .expect("tempdir");
        let net = TestNet::next();
        std::fs::write(root.path().join("berth.toml"), net.toml()).expect("write berth.toml");
        Env { root, net }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(berth_bin());
        c.arg("--root").arg(self.root.path());
        c.stdin(Stdio::null());
        c
    }

    /// `berth <args>` with stdin from /dev/null.
    pub fn berth(&self, args: &[&str]) -> Output {
        self.retrying_pvm_exec(args, || self.cmd().args(args).output().expect("run berth"))
    }

    /// `berth <args>` with `input` on stdin.
    pub fn berth_input(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        self.retrying_pvm_exec(args, || {
            let mut child = self
                .cmd()
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn berth");
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(input.as_bytes()).expect("write stdin");
            drop(stdin);
            child.wait_with_output().expect("wait berth")
        })
    }

    /// The PVM static-TLS defect (see [`retrying_pvm_flake`]) at the
    /// granularity of one `berth exec NAME -- CMD` into a kvm pod: when the
    /// command exits 139 *and* the guest kernel logged, during it, a
    /// user-mode fault of a process other than guest-init in the pod's
    /// console.log, the command is run again ([`PVM_RERUNS`] times at most,
    /// announced).
    /// Anything else — other statuses, a 139 without a fault line (a
    /// `kill -SEGV`), ns pods (no console.log), real KVM hosts — is
    /// returned as is. Re-running one exec costs a second, re-running the
    /// case a boot.
    fn retrying_pvm_exec(&self, args: &[&str], mut run: impl FnMut() -> Output) -> Output {
        match (args.first(), args.iter().position(|a| *a == "--")) {
            (Some(&"exec"), Some(i)) if i > 1 && on_pvm() => {
                rerun_on_guest_fault(args[i - 1], &self.pod(args[i - 1]).console_log(), run)
            }
            _ => run(),
        }
    }

    /// `berth run --rm --stage1=S --rootfs <busybox> <opts> -- <cmd>`.
    pub fn run(&self, stage1: &str, opts: &[&str], cmd: &[&str]) -> Output {
        let img = busybox().to_string_lossy().into_owned();
        let mut args = vec!["run", "--rm", "--stage1", stage1, "--rootfs", &img];
        args.extend_from_slice(opts);
        args.push("--");
        args.extend_from_slice(cmd);
        self.berth(&args)
    }

    /// After a failure: what became of each pod still in the root (its
    /// exit status, the end of its app.log, the guest's trap and panic
    /// lines from console.log), on stderr. A detached pod that crashed with
    /// the PVM static-TLS signature marks the case as having hit that flake,
    /// which the test's own assertion message cannot show.
    fn report_pods(&self) {
        for pod in self.pods() {
            let dir = self.pod(&pod);
            let read = |f: PathBuf| std::fs::read_to_string(f).unwrap_or_default();
            let status = read(dir.status_file());
            let app = read(dir.app_log());
            let console = read(dir.console_log());
            let traps: Vec<&str> = console
                .lines()
                .filter(|l| {
                    [
                        "segfault at",
                        "general protection",
                        "traps:",
                        "Kernel panic",
                        "berth",
                    ]
                    .iter()
                    .any(|k| l.contains(k))
                })
                .collect();
            let tail = |t: &str| {
                let v: Vec<&str> = t.lines().collect();
                v[v.len().saturating_sub(20)..].join("\n")
            };
            eprintln!(
                "--- pod {pod} after the failure: status {:?}\n--- app.log (end):\n{}\n--- console.log traps:\n{}",
                status.trim(),
                tail(&app),
                tail(&traps.join("\n"))
            );
            if pod_shows_pvm_tls_flake(status.trim(), &app, &console) {
                PVM_FLAKE_SEEN.with(|f| f.set(true));
            }
        }
    }

    /// The directory of pod `name` in this root.
    pub fn pod(&self, name: &str) -> berth_spec::PodDir {
        berth_spec::PodDir::new(self.root.path().join("pods").join(name))
    }

    pub fn pods(&self) -> Vec<String> {
        match std::fs::read_dir(self.root.path().join("pods")) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Env {
    /// A failed case may leave pods running: force-remove them (which also
    /// releases their network: taps, leases, nft set elements), then gc,
    /// then remove the Env's bridge and nft tables (`network rm`).
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report_pods();
        }
        for pod in self.pods() {
            let _ = self
                .cmd()
                .args(["rm", "-f", &pod])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self
            .cmd()
            .arg("gc")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self
            .cmd()
            .args(["network", "rm", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Expected result of a case.
pub struct Expect<'a> {
    pub stdout: &'a str,
    /// Exact stderr, or a substring when `stderr_contains`.
    pub stderr: &'a str,
    pub stderr_contains: bool,
    pub code: i32,
}

impl Expect<'_> {
    pub fn check(&self, what: &str, o: &Output) {
        let (out, err) = (stdout(o), stderr(o));
        let ctx = format!(
            "{what}\n--- stdout:\n{out}\n--- stderr:\n{err}\n--- status: {:?}",
            o.status
        );
        assert_eq!(o.status.code(), Some(self.code), "exit code of {ctx}");
        assert_eq!(out, self.stdout, "stdout of {ctx}");
        if self.stderr_contains {
            assert!(
                err.contains(self.stderr),
                "stderr should contain {:?}: {ctx}",
                self.stderr
            );
        } else {
            assert_eq!(err, self.stderr, "stderr of {ctx}");
        }
    }
}

/// Run `f` once per stage1, skipping (with the reason printed) those listed
/// as unsupported for `case`.
pub fn each_stage1(case: &str, mut f: impl FnMut(&str)) {
    if !have_root() {
        return;
    }
    for s in STAGE1S {
        if !available(s) {
            continue;
        }
        if let Some(why) = unsupported(s, case) {
            eprintln!("{case}: expected-unsupported on stage1 {s}: {why}");
            continue;
        }
        if *s == "kvm" && on_pvm() {
            retrying_pvm_flake(case, || f(s));
        } else {
            f(s);
        }
    }
}

/// Known defect of the nested PVM hosts (README, "kvm on PVM hosts"): now
/// and then a fresh guest process gets a corrupted static-TLS block (see
/// docs/pvm-tls-corruption.md) and dies on its first
/// TLS access. Only there, and only when a kvm case fails with that
/// signature in its message or in a pod it left, the case is run again from
/// scratch ([`PVM_RERUNS`] times at most, announced). ns cases and real KVM hosts are never retried.
pub fn retrying_pvm_flake(case: &str, mut f: impl FnMut()) {
    for attempt in 1..=PVM_RERUNS + 1 {
        // Only this attempt's pods count.
        PVM_FLAKE_SEEN.with(|f| f.set(false));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut f));
        let Err(payload) = result else { return };
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        let in_a_pod = PVM_FLAKE_SEEN.with(|f| f.get());
        if attempt > PVM_RERUNS || !(shows_pvm_tls_flake(msg) || in_a_pod) {
            std::panic::resume_unwind(payload);
        }
        eprintln!("{case}: kvm hit the PVM static-TLS flake (above); running the case again ({attempt} of {PVM_RERUNS})");
    }
}

thread_local! {
    /// Set when an [`Env`] dropped during a failure held a pod that crashed
    /// with the PVM static-TLS signature (see [`pod_shows_pvm_tls_flake`]).
    static PVM_FLAKE_SEEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The PVM static-TLS signature in a pod left behind by a failed case: its
/// app was killed by SIGSEGV (status 139), its shell reported a crashed
/// child, or the guest kernel logged a user-mode segfault or general
/// protection fault (no e2e case provokes either on purpose).
pub fn pod_shows_pvm_tls_flake(status: &str, app_log: &str, console_log: &str) -> bool {
    status == "139" || shows_pvm_tls_flake(app_log) || guest_user_fault(console_log).is_some()
}

/// How often a kvm case or exec that hit the PVM static-TLS defect is run
/// again, at most.
pub const PVM_RERUNS: u32 = 3;

/// Run `run` (a `berth exec` into `pod`); while it exits 139 and `console`
/// (the pod's console.log) gained a [`guest_user_fault`] line meanwhile,
/// announce it and run it again, [`PVM_RERUNS`] times at most.
pub fn rerun_on_guest_fault(pod: &str, console: &Path, mut run: impl FnMut() -> Output) -> Output {
    let mut rerun = 0;
    loop {
        let seen = std::fs::metadata(console).map_or(0, |m| m.len());
        let o = run();
        if rerun == PVM_RERUNS || o.status.code() != Some(139) {
            return o;
        }
        let log = std::fs::read(console).unwrap_or_default();
        let fresh = String::from_utf8_lossy(log.get(seen as usize..).unwrap_or_default());
        let Some(fault) = guest_user_fault(&fresh) else {
            return o;
        };
        rerun += 1;
        eprintln!(
            "exec in {pod}: the guest process hit the PVM static-TLS defect ({}); running it again ({rerun} of {PVM_RERUNS})",
            fault.trim()
        );
    }
}

/// The first line in a kvm pod's console output where the guest kernel
/// reports a user-mode process killed by a fault (`sh[42]: segfault at …`,
/// `traps: sh[42] general protection fault ip:…`), guest-init's own
/// processes excepted: a crash there is a berth bug, never retried.
pub fn guest_user_fault(console: &str) -> Option<&str> {
    console.lines().find(|l| {
        (l.contains("segfault at") || l.contains("general protection fault ip:"))
            && !l.contains("berth-guest-ini")
    })
}

/// Is /dev/kvm provided by the nested PVM hypervisor (the CI hosts)?
pub fn on_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// The trace of the PVM static-TLS defect in a failure message: a guest process
/// killed by SIGSEGV (busybox sh prints "Segmentation fault" for a crashed
/// child; a crashed app itself exits 139).
pub fn shows_pvm_tls_flake(failure: &str) -> bool {
    failure.contains("Segmentation fault") || failure.contains("Some(139)")
}

/// A directory holding `name`, built static from tests/data/`name`.c with
/// `cc` (cc from build-essential, or musl-gcc from musl-tools).
pub fn static_tool(cc: &str, name: &str) -> tempfile::TempDir {
    let tools = tempfile::tempdir().expect("tempdir");
    let src = format!("{}/tests/data/{name}.c", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(cc)
        .args(["-static", "-O2", "-o"])
        .arg(tools.path().join(name))
        .arg(src)
        .output()
        .unwrap_or_else(|e| panic!("run {cc}: {e}"));
    assert!(
        out.status.success(),
        "{cc}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A pod's users (-u 1000) must be able to reach it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tools.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod tools dir");
    tools
}

/// Poll `f` every 20 ms until it holds; panic after `secs` seconds.
pub fn wait_secs(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The pid of the `berth-stage1-* run POD_DIR` process supervising a pod.
pub fn stage1_pid(pod: &Path) -> Option<i32> {
    let want = pod.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (args.len() >= 3
                && args[0].contains("berth-stage1-")
                && args[1] == "run"
                && args[2] == want)
                .then_some(pid)
        })
}

/// Descriptors a caller of `berth` holds without close-on-exec (a shell's
/// `exec 7</root`): a directory, an O_PATH descriptor and a listening
/// socket, all of the host. None of them may reach a pod.
pub struct LeakedFds {
    pub dir: std::fs::File,
    pub path: std::os::fd::OwnedFd,
    pub socket: std::net::TcpListener,
}

impl LeakedFds {
    pub fn new() -> LeakedFds {
        use std::os::fd::FromRawFd;
        let dir = std::fs::File::open("/root").expect("open /root");
        // SAFETY: open(2) with a valid C string; the result is checked.
        let fd = unsafe { libc::open(c"/etc".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        assert!(fd >= 0, "open /etc O_PATH");
        // SAFETY: fd is a fresh descriptor we alone own.
        let path = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        LeakedFds { dir, path, socket }
    }

    /// The descriptor numbers, as the child sees them.
    pub fn fds(&self) -> [i32; 3] {
        use std::os::fd::AsRawFd;
        [
            self.dir.as_raw_fd(),
            self.path.as_raw_fd(),
            self.socket.as_raw_fd(),
        ]
    }

    /// Make `c` inherit them (clear close-on-exec in the child only).
    pub fn inherit_into(&self, c: &mut Command) {
        use std::os::unix::process::CommandExt;
        let fds = self.fds();
        // SAFETY: the closure only calls fcntl, which is async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                for fd in fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}

impl Default for LeakedFds {
    fn default() -> Self {
        Self::new()
    }
}

/// `curl` of http://127.0.0.1:PORT/ (5 s at most): the body, or None.
pub fn curl(port: u16) -> Option<String> {
    let o = Command::new("curl")
        .args(["-s", "-m", "5", &format!("http://127.0.0.1:{port}/")])
        .output()
        .ok()?;
    o.status.success().then(|| stdout(&o))
}

/// A loopback TCP port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

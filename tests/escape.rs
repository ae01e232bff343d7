//! The escape suite: one pod per stage1 in which `tests/data/escape.c`
//! (static, on a read-only volume) tries, as root, every way out of the pod
//! and into the host or another pod we know of, one line per attempt:
//! `<name>: blocked (<how>)` or `<name>: ESCAPED (<what>)`. It runs three
//! times in the same pod: as the pod's app (root), through `berth exec`
//! (root), and through `berth exec -u 1000`; every line must say blocked,
//! and the attempts are the same everywhere ([`ATTEMPTS`]).
//!
//! The host sets bait the pod must not reach: a second pod (ns, detached)
//! whose upper directory holds a marker file and whose leader pid is
//! passed, the test's own pid, a marker file in the host's `/` (for the
//! chroot breakout), a listening unix socket in the host's `/run`, an
//! abstract unix socket, a TCP listener on the host's 127.0.0.1, and three
//! descriptors left open without close-on-exec in every `berth` process
//! the test spawns (a directory, an O_PATH fd, a socket).
//!
//! Where the `how` differs between stage1s, and why:
//! - ns shares the host kernel, so most attempts end at berth's seccomp
//!   filter (EPERM) or capability set, device nodes at the device cgroup
//!   (mknod EPERM), host objects at the namespaces (ENOENT, ESRCH,
//!   ECONNREFUSED in the pod's own network namespace);
//! - kvm has its own kernel: the same filter and capabilities (guest-init
//!   applies `berth_spec::confine`), but the guest kernel lacks much of
//!   what is probed (no bpf, perf, keys, modules, kcore: ENOENT where the
//!   file is missing), host objects are simply not in the VM (ENOENT,
//!   ECONNREFUSED from the guest's own loopback), `/proc/1` is guest-init
//!   (visible: no pid namespace in the guest; its exe may be readable — an
//!   in-VM file, the attempt says so), and mknod on the virtio-fs root is
//!   refused by the host's FUSE server.
//!
//! Boot cost: one kvm boot for the whole suite (30-90 s on the PVM hosts).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{stderr, stdout, Env, LeakedFds};
use std::os::linux::net::SocketAddrExt;
use std::path::PathBuf;

/// The attempts escape.c makes, in its order.
const ATTEMPTS: &[&str] = &[
    "sysrq-trigger",
    "core-pattern",
    "proc-sys-write",
    "selinux-enforce",
    "sys-write",
    "ro-volume-write",
    "other-pod-files",
    "other-pod-pid",
    "host-pid-kill",
    "host-run-sockets",
    "host-abstract-socket",
    "host-loopback-tcp",
    "inherited-fds",
    "proc-self-exe-write",
    "proc-1-exe",
    "open-by-handle-at",
    "cgroup-release-agent",
    "mknod-block",
    "dev-kvm",
    "dev-kmsg",
    "dev-mem",
    "dev-loop-control",
    "console",
    "foreign-pty",
    "unshare-userns",
    "clone-userns",
    "keyring",
    "bpf",
    "perf-event-open",
    "userfaultfd",
    "io-uring",
    "mount-tmpfs",
    "mount-proc",
    "unmask-proc",
    "kexec",
    "kernel-module",
    "ptrace-pid1",
    "raw-socket",
    "vsock",
    "setns-pid1",
    "chroot-breakout",
    "sethostname",
    "set-time",
    "iopl-ioperm",
    "io-port-access",
    "reboot",
    "swapon",
    "tiocsti",
    "proc-kcore",
    "sys-firmware",
    "dmesg",
];

/// What the host offers the pod to reach; removed on drop.
struct Bait {
    tcp: std::net::TcpListener,
    _abstract_sock: std::os::unix::net::UnixListener,
    abstract_name: String,
    run_socket: PathBuf,
    _run_listener: std::os::unix::net::UnixListener,
    host_marker: PathBuf,
}

impl Bait {
    fn new(tag: &str) -> Bait {
        let abstract_name = format!("berth-escape-{tag}");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .expect("abstract address");
        let abstract_sock =
            std::os::unix::net::UnixListener::bind_addr(&addr).expect("bind abstract socket");
        let run_socket = PathBuf::from(format!("/run/berth-escape-{tag}.sock"));
        let _ = std::fs::remove_file(&run_socket);
        let run_listener =
            std::os::unix::net::UnixListener::bind(&run_socket).expect("bind /run socket");
        let host_marker = PathBuf::from(format!("/berth-escape-{tag}"));
        std::fs::write(&host_marker, "the host's root\n").expect("write the host marker");
        Bait {
            tcp: std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1"),
            _abstract_sock: abstract_sock,
            abstract_name,
            run_socket,
            _run_listener: run_listener,
            host_marker,
        }
    }
}

impl Drop for Bait {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.run_socket);
        let _ = std::fs::remove_file(&self.host_marker);
    }
}

/// One line of escape.c's output.
#[derive(Debug, PartialEq)]
struct Verdict {
    name: String,
    blocked: bool,
    text: String,
}

fn parse(out: &str) -> (Vec<Verdict>, Vec<String>) {
    let mut verdicts = Vec::new();
    let mut other = Vec::new();
    for line in out.lines() {
        let parsed = line.split_once(": ").and_then(|(name, rest)| {
            let (verdict, text) = rest.split_once(" (")?;
            let text = text.strip_suffix(')')?;
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            valid_name.then(|| Verdict {
                name: name.to_string(),
                blocked: verdict == "blocked",
                text: format!("{verdict} ({text})"),
            })
        });
        match parsed {
            Some(v) => verdicts.push(v),
            None => other.push(line.to_string()),
        }
    }
    (verdicts, other)
}

/// Everything wrong with one run's output (empty: all blocked).
fn problems(who: &str, uid: u32, out: &str) -> Vec<String> {
    let (verdicts, other) = parse(out);
    let mut p: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.blocked)
        .map(|v| format!("{who}: {}: {}", v.name, v.text))
        .collect();
    let names: Vec<&str> = verdicts.iter().map(|v| v.name.as_str()).collect();
    if names != ATTEMPTS {
        p.push(format!(
            "{who}: the attempts made differ from the list: {names:?}"
        ));
    }
    if verdicts.len() < 25 {
        p.push(format!("{who}: only {} attempts", verdicts.len()));
    }
    let summary = format!("escape: {} attempts as uid {uid}", ATTEMPTS.len());
    if !other.iter().any(|l| l == &summary) {
        p.push(format!(
            "{who}: no {summary:?} line (other lines: {other:?})"
        ));
    }
    p
}

fn escape_suite(s: &str) {
    let e = Env::new();
    let img = common::busybox().to_string_lossy().into_owned();
    let tag = format!("{}-{s}", std::process::id());
    let tools = common::static_tool("musl-gcc", "escape");
    let tools_vol = format!("{}:/tools:ro", tools.path().display());

    // The neighbour: an ns pod (cheap on every host) with a marker in its
    // upper directory, i.e. in its /.
    let o = e.berth(&[
        "run", "-d", "--name", "other", "--stage1", "ns", "--net", "none", "--rootfs", &img, "--",
        "sleep", "100000",
    ]);
    assert_eq!(
        (o.status.code(), stdout(&o)),
        (Some(0), "other\n".to_string()),
        "the neighbour pod: {}",
        stderr(&o)
    );
    let other = e.pod("other");
    let other_marker = format!("escape-other-{tag}");
    std::fs::write(other.upper().join(&other_marker), "the other pod's file\n").unwrap();
    let other_pid = std::fs::read_to_string(other.pid_file())
        .unwrap()
        .trim()
        .to_string();
    let bait = Bait::new(&tag);
    let args: Vec<String> = vec![
        format!("stage1={s}"),
        "ro=/tools".into(),
        format!("other_upper={}", other.upper().display()),
        format!("other_marker={other_marker}"),
        format!("other_pid={other_pid}"),
        format!("host_pid={}", std::process::id()),
        format!(
            "host_marker={}",
            bait.host_marker.file_name().unwrap().to_string_lossy()
        ),
        format!(
            "run_socket={}",
            bait.run_socket.file_name().unwrap().to_string_lossy()
        ),
        format!("abstract={}", bait.abstract_name),
        format!("tcp_port={}", bait.tcp.local_addr().unwrap().port()),
    ];
    let leaked = LeakedFds::new();

    // `berth run -d --name NAME [extra] …` of the escape tool (which then
    // stays up), with the leaked descriptors inherited.
    let start = |name: &str, extra: &[&str]| {
        let mut run = e.cmd();
        run.args(["run", "-d", "--name", name])
            .args(extra)
            .args([
                "--stage1",
                s,
                "--rootfs",
                &img,
                "-v",
                &tools_vol,
                "--",
                "/tools/escape",
            ])
            .args(&args)
            .args(["--", "sleep", "100000"]);
        leaked.inherit_into(&mut run);
        run.output().unwrap()
    };

    // 1. As the pod's app (root), which then stays up for the execs.
    let o = start("esc", &[]);
    assert_eq!(
        (o.status.code(), stdout(&o)),
        (Some(0), "esc\n".to_string()),
        "run -d esc: {}",
        stderr(&o)
    );
    let pod = e.pod("esc");
    let done = format!("escape: {} attempts as uid 0", ATTEMPTS.len());
    common::wait_secs("the escape suite as the pod's app", 900, || {
        std::fs::read_to_string(pod.app_log()).is_ok_and(|l| l.contains(&done))
            || common::stage1_pid(pod.path()).is_none()
    });
    let app = std::fs::read_to_string(pod.app_log()).unwrap_or_default();

    // 2. and 3. Through `berth exec`, as root and as uid 1000.
    let exec = |user: Option<&str>| {
        let mut c = e.cmd();
        c.arg("exec");
        if let Some(u) = user {
            c.args(["-u", u]);
        }
        c.args(["esc", "--", "/tools/escape"]).args(&args);
        leaked.inherit_into(&mut c);
        let o = common::rerun_on_guest_fault("esc", &pod.console_log(), || c.output().unwrap());
        format!(
            "{}{}",
            stdout(&o),
            if o.status.success() {
                String::new()
            } else {
                format!("(exec exited {:?}: {})\n", o.status.code(), stderr(&o))
            }
        )
    };
    let as_root = exec(None);
    let as_user = exec(Some("1000"));
    if s == "kvm" {
        vmm_runs_as_the_pods_own_uid(&e, &pod);
    }

    // 4. ns: the same list as remapped root (--private-users: root in the
    // pod is an unprivileged host uid). A kvm guest's root is the VM's
    // whatever the host-side mapping (only the VMM's uid changes), so
    // there it would repeat run 1 at the price of a boot.
    let remapped = (s == "ns").then(|| {
        let o = start("esc-remap", &["--private-users"]);
        assert_eq!(o.status.code(), Some(0), "run -d esc-remap: {}", stderr(&o));
        let pod = e.pod("esc-remap");
        common::wait_secs("the escape suite as remapped root", 300, || {
            std::fs::read_to_string(pod.app_log()).is_ok_and(|l| l.contains(&done))
                || common::stage1_pid(pod.path()).is_none()
        });
        std::fs::read_to_string(pod.app_log()).unwrap_or_default()
    });

    let mut p = problems(&format!("{s} app (root)"), 0, &app);
    if let Some(out) = &remapped {
        p.extend(problems(&format!("{s} app (remapped root)"), 0, out));
    }
    p.extend(problems(&format!("{s} exec (root)"), 0, &as_root));
    p.extend(problems(&format!("{s} exec -u 1000"), 1000, &as_user));
    // The bait is still in place on the host (nothing was removed or
    // replaced from inside).
    assert!(bait.host_marker.exists(), "the host marker is gone");
    assert!(
        other.upper().join(&other_marker).exists(),
        "the neighbour's marker is gone"
    );
    eprintln!(
        "--- {s}: as the app:\n{app}--- {s}: exec as root:\n{as_root}--- {s}: exec -u 1000:\n{as_user}"
    );
    assert!(
        p.is_empty(),
        "{} problem(s) on stage1 {s}:\n{}\n(full output above)",
        p.len(),
        p.join("\n")
    );
    if let Some(out) = &remapped {
        eprintln!("--- {s}: as remapped root:\n{out}");
    }
    let _ = e.berth(&["rm", "-f", "esc", "esc-remap", "other"]);
}

/// A kvm pod's VMM process: the stage1's child with a vCPU thread.
fn vmm_pid(stage1: i32) -> Option<i32> {
    let kids = std::fs::read_to_string(format!("/proc/{stage1}/task/{stage1}/children")).ok()?;
    kids.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .find(|p: &i32| {
            std::fs::read_dir(format!("/proc/{p}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("vcpu"))
                })
        })
}

/// Without a user namespace the jailed VMM is not root: it runs as the
/// pod's own id from berth's users pool (no groups, only the virtio-fs
/// server's capabilities), and what the guest creates is still owned by
/// the guest's users on the host — root's files by 0, uid 1000's by 1000.
fn vmm_runs_as_the_pods_own_uid(e: &Env, pod: &berth_spec::PodDir) {
    let spec = berth_spec::PodSpec::load(pod).unwrap();
    let id = spec.kvm.as_ref().and_then(|k| k.vmm_id).expect("a VMM id");
    assert!(id >= 0x80000, "the id {id} is from the users pool");
    let stage1 = common::stage1_pid(pod.path()).expect("the pod runs");
    let vmm = vmm_pid(stage1).expect("the VMM process");
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let ids = format!("{id} {id} {id} {id}");
    assert_eq!(field("Uid:"), ids, "the VMM's uids:\n{status}");
    assert_eq!(field("Gid:"), ids, "the VMM's gids:\n{status}");
    assert_eq!(field("Groups:"), "", "the VMM's groups:\n{status}");
    // CAP_CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID, MKNOD: what
    // its virtio-fs server needs, nothing else.
    assert_eq!(field("CapEff:"), "00000000080000db", "{status}");
    assert_eq!(field("CapBnd:"), "00000000080000db", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    for (user, path) in [
        (None, "/vmm-owner-root"),
        (Some("1000"), "/tmp/vmm-owner-user"),
    ] {
        let mut args = vec!["exec"];
        if let Some(u) = user {
            args.extend(["-u", u]);
        }
        args.extend(["esc", "--", "touch", path]);
        let o = common::rerun_on_guest_fault("esc", &pod.console_log(), || e.berth(&args));
        assert_eq!(o.status.code(), Some(0), "touch {path}: {}", stderr(&o));
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(pod.upper().join(path.trim_start_matches('/'))).unwrap();
        let want = user.map_or(0, |u| u.parse().unwrap());
        assert_eq!(
            (m.uid(), m.gid()),
            (want, want),
            "owner of {path} on the host"
        );
    }
}

fn on(stage1: &str, case: &str, f: impl FnMut()) {
    if !common::have_root() || !common::available(stage1) {
        return;
    }
    let mut f = f;
    if stage1 == "kvm" && common::on_pvm() {
        common::retrying_pvm_flake(case, f);
    } else {
        f();
    }
}

#[test]
fn escape_suite_ns() {
    on("ns", "escape", || escape_suite("ns"));
}

#[test]
fn escape_suite_kvm() {
    on("kvm", "escape", || escape_suite("kvm"));
}

#[test]
fn escape_output_parses() {
    let out = "a-b: blocked (x (y); z)\nc: ESCAPED (got in)\nescape: 2 attempts as uid 0\n";
    let (v, other) = parse(out);
    assert_eq!(
        v,
        vec![
            Verdict {
                name: "a-b".into(),
                blocked: true,
                text: "blocked (x (y); z)".into()
            },
            Verdict {
                name: "c".into(),
                blocked: false,
                text: "ESCAPED (got in)".into()
            },
        ]
    );
    assert_eq!(other, vec!["escape: 2 attempts as uid 0".to_string()]);
    // A missing attempt, an escape and a missing summary are all reported.
    let p = problems("t", 0, out);
    assert!(p.iter().any(|l| l.contains("c: ESCAPED (got in)")), "{p:?}");
    assert!(p.iter().any(|l| l.contains("differ")), "{p:?}");
    assert!(p.iter().any(|l| l.contains("only 2 attempts")), "{p:?}");
}

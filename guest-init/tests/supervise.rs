//! End-to-end tests of the real guest-init binary without a VM: its
//! `--supervise POD_JSON` mode runs the same app start, PID-1-style reaping
//! (as a child subreaper), control-line handling and status encoding as
//! inside the VM, in the current root, with control lines on stdin and the
//! app's status as its exit code. The VM-only steps (mounts, switch root,
//! ports, reboot) are not exercised here.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_spec::*;

const BIN: &str = env!("CARGO_BIN_EXE_berth-guest-init");

fn spec(argv: &[&str]) -> PodSpec {
    PodSpec {
        version: SPEC_VERSION,
        name: "t".into(),
        uuid: "0b9f3c2e-6a1d-4c8e-9f00-1234567890ab".into(),
        machine_id: "0b9f3c2e6a1d4c8e9f001234567890ab".into(),
        app: App {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: "/".into(),
            user: User { uid: 0, gid: 0 },
        },
        hostname: "t".into(),
        rootfs: Rootfs {
            image: "/img".into(),
        },
        mounts: vec![],
        network: Network::none(),
        resources: Resources::default(),
        security: Security::default(),
        stdio: berth_spec::Stdio::default(),
        kvm: None,
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The spec's user must be ours when not running as root (no setuid then).
fn fix_user(s: &mut PodSpec) {
    if !is_root() {
        // SAFETY: getuid/getgid have no preconditions.
        s.app.user = unsafe {
            User {
                uid: libc::getuid(),
                gid: libc::getgid(),
            }
        };
    }
}

struct Run {
    _dir: tempfile::TempDir,
    child: Child,
}

fn start(mut s: PodSpec) -> Run {
    fix_user(&mut s);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pod.json");
    std::fs::write(&p, s.to_json()).unwrap();
    let child = Command::new(BIN)
        .arg("--supervise")
        .arg(&p)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Run { _dir: dir, child }
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn send(&mut self, bytes: &[u8]) {
        self.child.stdin.as_mut().unwrap().write_all(bytes).unwrap();
    }

    fn finish(mut self) -> Outcome {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("guest-init did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = t0.elapsed();
        let mut stdout = String::new();
        let mut stderr = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        Outcome {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
            took,
        }
    }
}

fn run(s: PodSpec) -> Outcome {
    let mut r = start(s);
    drop(r.child.stdin.take());
    r.finish()
}

#[test]
fn exit_code_is_passed_through() {
    let o = run(spec(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]));
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert_eq!(o.stdout, "out\n");
    assert_eq!(o.stderr, "err\n");
}

#[test]
fn death_by_signal_is_128_plus_n() {
    let o = run(spec(&["/bin/sh", "-c", "kill -9 $$"]));
    assert_eq!(o.code, 137, "{}", o.stderr);
}

#[test]
fn signal_line_is_forwarded() {
    let mut r = start(spec(&["/bin/sleep", "100"]));
    std::thread::sleep(Duration::from_millis(200));
    // Junk is reported and ignored; the command may be split across writes.
    r.send(b"hello\nsig");
    std::thread::sleep(Duration::from_millis(50));
    r.send(b"nal 15\n");
    let o = r.finish();
    assert_eq!(o.code, 143, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("berth-guest-init: ignoring console input \"hello\""),
        "{}",
        o.stderr
    );
    assert!(o.took < Duration::from_secs(10));
}

#[test]
fn command_not_found_is_127() {
    let o = run(spec(&["no-such-command-xyz"]));
    assert_eq!(o.code, 127);
    assert_eq!(
        o.stderr,
        "berth: exec \"no-such-command-xyz\": command not found\n"
    );
    let o = run(spec(&["/nonexistent/cmd"]));
    assert_eq!(o.code, 127);
}

#[test]
fn not_executable_is_126() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("script");
    std::fs::write(&f, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut s = spec(&["script"]);
    s.app.env = vec![format!("PATH={}", dir.path().display())];
    let o = run(s);
    assert_eq!(o.code, 126);
    assert_eq!(o.stderr, "berth: exec \"script\": permission denied\n");
    // With the x bit it runs, found through PATH.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut s = spec(&["script"]);
    s.app.env = vec![format!("PATH={}:/bin:/usr/bin", dir.path().display())];
    let o = run(s);
    assert_eq!((o.code, o.stdout.as_str()), (0, "hi\n"), "{}", o.stderr);
}

#[test]
fn missing_working_directory_is_125() {
    let mut s = spec(&["/bin/true"]);
    s.app.cwd = "/nonexistent-dir".into();
    let o = run(s);
    assert_eq!(o.code, 125);
    assert_eq!(
        o.stderr,
        "berth: working directory \"/nonexistent-dir\": No such file or directory\n"
    );
}

#[test]
fn env_cwd_and_path_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&[
        "sh",
        "-c",
        "echo \"$PWD|$HOSTNAME|$container|$A|$HOME\"; test -t 0 || cat",
    ]);
    s.app.cwd = dir.path().display().to_string();
    s.app.env = vec!["A=1".into(), "A=2".into()];
    s.hostname = "pod-x".into();
    let o = run(s);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let home = if is_root() { "/root" } else { "/" };
    // stdin is /dev/null: `cat` ends at once.
    assert_eq!(
        o.stdout,
        format!("{}|pod-x|berth|2|{home}\n", dir.path().display())
    );
}

#[test]
fn leftover_processes_are_ended_after_the_app_exits() {
    let t0 = Instant::now();
    let o = run(spec(&["/bin/sh", "-c", "sleep 100 & sleep 100 & exit 5"]));
    assert_eq!(o.code, 5, "{}", o.stderr);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[test]
fn orphans_are_reaped_while_the_app_runs() {
    // Grandchildren exit while the app is still running; they are reparented
    // to guest-init (a subreaper here, PID 1 in the VM) and must not stop
    // the loop or be mistaken for the app.
    let o = run(spec(&[
        "/bin/sh",
        "-c",
        "for i in 1 2 3 4 5; do (sleep 0.05; exit 7) & done; sleep 0.5; exit 4",
    ]));
    assert_eq!(o.code, 4, "{}", o.stderr);
}

#[test]
fn interactive_stdin_is_fed_from_the_console() {
    let mut s = spec(&["/bin/cat"]);
    s.stdio.interactive = true;
    let mut r = start(s);
    r.send(b"hello\nsignal x\n");
    std::thread::sleep(Duration::from_millis(300));
    r.send(b"signal 15\n");
    let o = r.finish();
    assert_eq!(o.code, 143, "{}", o.stderr);
    assert_eq!(o.stdout, "hello\nsignal x\n");
}

#[test]
fn user_is_switched() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut s = spec(&["/bin/sh", "-c", "id -u; id -g; id -G"]);
    s.app.user = User {
        uid: 65534,
        gid: 65533,
    };
    let o = run(s);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "65534\n65533\n65533\n");
}

#[test]
fn bad_spec_is_a_berth_failure() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pod.json");
    std::fs::write(&p, "{\"version\": 1}").unwrap();
    let o = Command::new(BIN)
        .arg("--supervise")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("berth-guest-init: pod spec: pod.json is not valid: "),
        "{err}"
    );
    let mut s = spec(&["/bin/true"]);
    s.stdio.tty = true;
    let o = run(s);
    assert_eq!(o.code, 125);
    assert!(o.stderr.contains("--tty"), "{}", o.stderr);
}

#[test]
fn refuses_to_run_as_pid1_outside_a_vm() {
    let o = Command::new(BIN).output().unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("must run as PID 1"),
        "{:?}",
        o
    );
}

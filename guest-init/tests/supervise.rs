//! End-to-end tests of the real guest-init binary without a VM: its
//! `--supervise POD_JSON [EXEC_SOCKET]` mode runs the same app start,
//! PID-1-style reaping (as a child subreaper), control-protocol sessions
//! (`berth_spec::control`: the main connection on fd 0, exec connections on
//! a unix socket) and status encoding as inside the VM, in the current root.
//! The VM-only steps (mounts, switch root, vsock, ports, reboot) are not
//! exercised here.

// Test code: a failing step panics, and the panic is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_spec::control::{io, Decoder, Message, Process, VERSION};
use berth_spec::*;

const BIN: &str = env!("CARGO_BIN_EXE_berth-guest-init");

fn spec(argv: &[&str]) -> PodSpec {
    PodSpec::new(
        "t",
        "0b9f3c2e-6a1d-4c8e-9f00-1234567890ab",
        argv.iter().map(|s| s.to_string()).collect(),
        "/img",
    )
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
    conn: UnixStream,
    exec_socket: std::path::PathBuf,
}

fn start(s: PodSpec) -> Run {
    start_in(tempfile::tempdir().unwrap(), s)
}

/// Start guest-init in `dir` (where pod.json, exec.sock and a service
/// pod's notify socket go).
fn start_in(dir: tempfile::TempDir, mut s: PodSpec) -> Run {
    fix_user(&mut s);
    let p = dir.path().join("pod.json");
    std::fs::write(&p, s.to_json()).unwrap();
    let exec_socket = dir.path().join("exec.sock");
    let (mut conn, theirs) = UnixStream::pair().unwrap();
    let child = Command::new(BIN)
        .arg("--supervise")
        .arg(&p)
        .arg(&exec_socket)
        .arg(dir.path().join("notify.sock"))
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    io::send(&mut conn, &Message::Hello { version: VERSION }).unwrap();
    Run {
        _dir: dir,
        child,
        conn,
        exec_socket,
    }
}

/// What a control connection delivered.
#[derive(Debug, Default)]
struct Streams {
    started: Option<bool>,
    stdout: String,
    /// Stderr frames, plus the Failed message and a newline (as the host
    /// prints it).
    stderr: String,
    exit: Option<i32>,
    /// Messages in arrival order, data frames as (kind, text), start
    /// reports as (3, "") and (4, message).
    order: Vec<(u8, String)>,
}

/// Read a connection to its end (or the Exit frame), with a deadline.
fn collect(conn: &mut UnixStream) -> Streams {
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut dec = Decoder::new();
    let mut st = Streams::default();
    while let Ok(Some(m)) = io::recv(conn, &mut dec) {
        match m {
            Message::Hello { version } => assert_eq!(version, VERSION),
            Message::Started => {
                st.started = Some(true);
                st.order.push((3, String::new()));
            }
            Message::Failed { message, .. } => {
                st.started = Some(false);
                st.order.push((4, message.clone()));
                st.stderr.push_str("berth: ");
                st.stderr.push_str(&message);
                st.stderr.push('\n');
            }
            Message::Stdout(d) => {
                let t = String::from_utf8_lossy(&d).into_owned();
                st.stdout.push_str(&t);
                st.order.push((6, t));
            }
            Message::Stderr(d) => {
                let t = String::from_utf8_lossy(&d).into_owned();
                st.stderr.push_str(&t);
                st.order.push((7, t));
            }
            Message::Exit(code) => {
                st.exit = Some(code);
                break;
            }
            other => panic!("unexpected {other:?} from guest-init"),
        }
    }
    st
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
    /// guest-init's own diagnostics.
    diag: String,
    streams: Streams,
    took: Duration,
}

impl Run {
    fn send(&mut self, bytes: &[u8]) {
        io::send(&mut self.conn, &Message::Stdin(bytes.to_vec())).unwrap();
    }

    fn signal(&mut self, n: i32) {
        io::send(&mut self.conn, &Message::Signal(n)).unwrap();
    }

    /// Start `argv` through the exec socket; returns the connection.
    fn exec(&self, p: Process) -> UnixStream {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut c = loop {
            match UnixStream::connect(&self.exec_socket) {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("exec socket: {e}"),
            }
        };
        io::send(&mut c, &Message::Hello { version: VERSION }).unwrap();
        io::send(&mut c, &Message::Exec(p)).unwrap();
        c
    }

    fn finish(self) -> Outcome {
        self.finish_keeping(|| {})
    }

    /// Like `finish`, running `check` once the connection ended, before
    /// the temporary directory goes.
    fn finish_keeping(mut self, check: impl FnOnce()) -> Outcome {
        let t0 = Instant::now();
        let streams = collect(&mut self.conn);
        check();
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
        let mut diag = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut diag).unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut self.child.stdout.take().unwrap(), &mut out).unwrap();
        assert_eq!(out, "", "nothing may reach guest-init's own stdout");
        let code = status.code().unwrap_or(-1);
        assert_eq!(streams.exit, Some(code), "Exit frame vs status; {diag}");
        Outcome {
            code,
            stdout: streams.stdout.clone(),
            stderr: format!("{}{diag}", streams.stderr),
            diag,
            streams,
            took,
        }
    }
}

fn run(s: PodSpec) -> Outcome {
    start(s).finish()
}

fn process(argv: &[&str]) -> Process {
    Process {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/bin:/bin".into(), "X=exec".into()],
        cwd: "/".into(),
        user: if is_root() {
            User { uid: 0, gid: 0 }
        } else {
            // SAFETY: getuid/getgid have no preconditions.
            unsafe {
                User {
                    uid: libc::getuid(),
                    gid: libc::getgid(),
                }
            }
        },
        tty: false,
        stdin: false,
    }
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
fn signal_frame_is_forwarded() {
    let mut r = start(spec(&["/bin/sleep", "100"]));
    std::thread::sleep(Duration::from_millis(200));
    // Out-of-range numbers are reported and ignored.
    r.signal(0);
    r.signal(15);
    let o = r.finish();
    assert_eq!(o.code, 143, "{}", o.stderr);
    assert_eq!(o.streams.started, Some(true));
    assert!(
        o.diag
            .contains("berth-guest-init: ignoring signal 0 from the host"),
        "{}",
        o.diag
    );
    assert!(o.took < Duration::from_secs(10));
}

#[test]
fn command_not_found_is_127() {
    let o = run(spec(&["no-such-command-xyz"]));
    assert_eq!(o.code, 127);
    assert_eq!(o.streams.started, Some(false));
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
fn interactive_stdin_is_fed_and_closed() {
    let mut s = spec(&["/bin/sh", "-c", "cat; echo eof"]);
    s.stdio.interactive = true;
    let mut r = start(s);
    r.send(b"hello\n");
    r.send(b"world\n");
    r.send(b"");
    let o = r.finish();
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "hello\nworld\neof\n");
}

#[test]
fn stdout_and_stderr_are_separate_streams_in_order() {
    let o = run(spec(&[
        "/bin/sh",
        "-c",
        "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 2",
    ]));
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert_eq!(o.stdout, "out1\nout2\nout3\n");
    assert_eq!(o.stderr, "err1\nerr2\nerr3\n");
}

#[test]
fn large_output_arrives_intact() {
    let o = run(spec(&["/bin/sh", "-c", "seq 1 200000"]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let want: String = (1..=200000).map(|i| format!("{i}\n")).collect();
    assert!(
        o.stdout == want,
        "stdout differs ({} bytes)",
        o.stdout.len()
    );
}

#[test]
fn tty_mode_gives_a_terminal() {
    let mut s = spec(&[
        "/bin/sh",
        "-c",
        "test -t 0 && test -t 1 && echo tty; stty size",
    ]);
    s.stdio.tty = true;
    s.stdio.interactive = true;
    let mut r = start(s);
    io::send(
        &mut r.conn,
        &Message::Resize {
            rows: 33,
            cols: 101,
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let o = r.finish();
    assert_eq!(o.code, 0, "{}", o.stderr);
    // The terminal's line discipline turns \n into \r\n; stderr shares it.
    assert!(o.stdout.starts_with("tty\r\n"), "{:?}", o.stdout);
    assert_eq!(o.streams.order.iter().filter(|(k, _)| *k == 7).count(), 0);
}

#[test]
fn exec_runs_a_second_process_with_its_own_streams_and_status() {
    let r = start(spec(&["/bin/sleep", "100"]));
    let mut c = r.exec(process(&["sh", "-c", "echo $X; echo e >&2; exit 9"]));
    let st = collect(&mut c);
    assert_eq!(st.started, Some(true));
    assert_eq!((st.stdout.as_str(), st.stderr.as_str()), ("exec\n", "e\n"));
    assert_eq!(st.exit, Some(9));
    // Not found: Failed with the ns wording, then Exit 127.
    let mut c = r.exec(process(&["no-such-cmd-q"]));
    let st = collect(&mut c);
    assert_eq!(st.started, Some(false));
    assert_eq!(
        st.stderr,
        "berth: exec \"no-such-cmd-q\": command not found\n"
    );
    assert_eq!(st.exit, Some(127));
    // stdin and signals reach the exec'd process; the app is untouched.
    let mut p = process(&["cat"]);
    p.stdin = true;
    let mut c = r.exec(p);
    io::send(&mut c, &Message::Stdin(b"in\n".to_vec())).unwrap();
    io::send(&mut c, &Message::Stdin(vec![])).unwrap();
    let st = collect(&mut c);
    assert_eq!((st.stdout.as_str(), st.exit), ("in\n", Some(0)));
    let mut c = r.exec(process(&["sleep", "100"]));
    std::thread::sleep(Duration::from_millis(200));
    io::send(&mut c, &Message::Signal(9)).unwrap();
    assert_eq!(collect(&mut c).exit, Some(137));
    // A host that hangs up kills its process (and nothing else).
    let c = r.exec(process(&["sleep", "100"]));
    std::thread::sleep(Duration::from_millis(200));
    drop(c);
    // Junk on the exec socket is refused without harm.
    let mut j = UnixStream::connect(&r.exec_socket).unwrap();
    j.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut dec = Decoder::new();
    j.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(matches!(io::recv(&mut j, &mut dec), Ok(None) | Err(_)));
    let mut r = r;
    r.signal(15);
    let o = r.finish();
    assert_eq!(o.code, 143, "{}", o.stderr);
    assert!(o.diag.contains("exec connection refused"), "{}", o.diag);
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

/// `CapEff`, `CapBnd`, `NoNewPrivs` and `Seccomp` of /proc/self/status, in
/// the file's order.
const STATUS_LINES: &str = "grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/self/status";

fn cap_hex(names: &[String]) -> String {
    let caps = berth_spec::confine::parse_caps(names).unwrap();
    format!("{:016x}", berth_spec::confine::cap_mask(&caps))
}

#[test]
fn the_app_and_exec_processes_are_confined_like_in_an_ns_pod() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut s = spec(&["/bin/sh", "-c", &format!("{STATUS_LINES}; sleep 100")]);
    s.security.capabilities.retain(|c| c != "chown");
    let keep = cap_hex(&s.security.capabilities);
    let want = format!("CapEff:\t{keep}\nCapBnd:\t{keep}\nNoNewPrivs:\t1\nSeccomp:\t2\n");
    let mut r = start(s);
    // An exec'd process gets the same; a non-root one no capabilities.
    let mut c = r.exec(process(&["sh", "-c", STATUS_LINES]));
    let st = collect(&mut c);
    assert_eq!(
        (st.stdout.as_str(), st.exit),
        (want.as_str(), Some(0)),
        "{}",
        st.stderr
    );
    let mut p = process(&["sh", "-c", STATUS_LINES]);
    p.user = User {
        uid: 65534,
        gid: 65534,
    };
    let mut c = r.exec(p);
    let st = collect(&mut c);
    assert_eq!(
        st.stdout,
        format!("CapEff:\t0000000000000000\nCapBnd:\t{keep}\nNoNewPrivs:\t1\nSeccomp:\t2\n")
    );
    // The filter refuses what the capabilities would not stop either.
    let mut c = r.exec(process(&[
        "sh",
        "-c",
        "unshare -U true 2>/dev/null && echo ALLOWED || echo refused",
    ]));
    assert_eq!(collect(&mut c).stdout, "refused\n");
    r.signal(15);
    let o = r.finish();
    assert_eq!(o.code, 143, "{}", o.stderr);
    assert_eq!(o.stdout, want);
    // Without seccomp, only the capabilities and no_new_privs apply.
    let mut s = spec(&["/bin/sh", "-c", STATUS_LINES]);
    s.security.seccomp = false;
    s.security.no_new_privileges = false;
    let keep = cap_hex(&s.security.capabilities);
    let o = run(s);
    assert_eq!(
        o.stdout,
        format!("CapEff:\t{keep}\nCapBnd:\t{keep}\nNoNewPrivs:\t0\nSeccomp:\t0\n"),
        "{}",
        o.stderr
    );
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

// ------------------------------------------------------------ service pods --
//
// A service pod's main process is systemd; here a stand-in written in
// Python (the real binary's notify socket, start report, check and signal
// handling are what is tested; the VM's namespaces, cgroups and mounts are
// not part of supervise mode), with a stand-in `systemctl` first in PATH
// that prints `systemctl show` output for the state the test chose.

const PYTHON: &str = "/usr/bin/python3";

/// The stand-in systemd: says "booting", then (per $FAKE_MODE) sends
/// READY=1 to $NOTIFY_SOCKET itself, has a child send it, or exits 3;
/// prints "halting" and exits 0 on SIGRTMIN+3 (37, glibc's numbering, as
/// systemd's).
const FAKE_SYSTEMD: &str = r#"
import os, signal, socket, sys, time
def halt(sig, frame):
    print("halting %d" % sig, flush=True)
    sys.exit(0)
signal.signal(37, halt)
print("booting", flush=True)
mode = os.environ["FAKE_MODE"]
if mode == "exit":
    sys.exit(3)
def ready():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"STATUS=Startup finished.\nREADY=1\n", os.environ["NOTIFY_SOCKET"])
if mode == "child":
    if os.fork() == 0:
        ready()
        os._exit(0)
    os.wait()
else:
    time.sleep(0.2)
    ready()
while True:
    time.sleep(0.05)
"#;

/// A fake `systemctl` (in `dir`, first in PATH): logs its arguments to
/// dir/systemctl.log and prints the state $FAKE_STATE for each unit.
fn fake_systemctl(dir: &std::path::Path) {
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> {}/systemctl.log\n[ \"$FAKE_STATE\" = broken ] && {{ echo 'Failed to connect to bus' >&2; exit 1; }}\n\
         shift 3\nfor u in \"$@\"; do printf 'Id=%s\\nLoadState=loaded\\nActiveState=%s\\nSubState=x\\nResult=exit-code\\n\\n' \"$u\" \"$FAKE_STATE\"; done\n",
        dir.display()
    );
    let p = dir.join("systemctl");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Start a service pod whose "systemd" runs in `mode` and whose units are
/// in `state`; None (with the reason printed) without python3.
fn start_service(mode: &str, state: &str) -> Option<(Run, std::path::PathBuf)> {
    if !std::path::Path::new(PYTHON).exists() {
        eprintln!("skipping: {PYTHON} (the stand-in systemd) is missing");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    fake_systemctl(dir.path());
    let mut s = spec(&[PYTHON, "-c", FAKE_SYSTEMD]);
    s.service = Some(Service {
        units: vec!["a.service".into(), "b.service".into()],
    });
    s.stdio.tty = true;
    s.app.env = vec![
        format!("PATH={}:/usr/bin:/bin", dir.path().display()),
        format!("FAKE_MODE={mode}"),
        format!("FAKE_STATE={state}"),
    ];
    let log = dir.path().join("systemctl.log");
    Some((start_in(dir, s), log))
}

fn position(o: &Outcome, kind: u8, text: &str) -> Option<usize> {
    o.streams
        .order
        .iter()
        .position(|(k, t)| *k == kind && t.contains(text))
}

#[test]
fn service_pod_is_started_once_systemd_is_ready_and_its_units_active() {
    let Some((mut r, log)) = start_service("self", "active") else {
        return;
    };
    // Wait for the report, then stop the pod as `berth stop` would.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log).is_ok_and(|l| !l.is_empty()) {
        assert!(Instant::now() < deadline, "the units were never checked");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let checked = std::fs::read_to_string(&log).unwrap();
    r.signal(libc::SIGTERM);
    let o = r.finish();
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.streams.started, Some(true), "{:?}", o.streams.order);
    // The console's output before the report is relayed; the report comes
    // after READY=1 (so after "booting"), and SIGTERM arrived as SIGRTMIN+3.
    let booting = position(&o, 6, "booting").expect("booting relayed");
    let started = position(&o, 3, "").unwrap();
    assert!(booting < started, "{:?}", o.streams.order);
    assert!(o.stdout.contains("halting 37"), "{:?}", o.stdout);
    // One check, of exactly the pod's units.
    assert_eq!(
        checked,
        "show --property=Id,LoadState,ActiveState,SubState,Result -- a.service b.service\n"
    );
}

#[test]
fn service_pod_with_a_failed_unit_is_reported_and_halted() {
    let Some((r, _)) = start_service("self", "failed") else {
        return;
    };
    let o = r.finish();
    assert_eq!(o.streams.started, Some(false), "{:?}", o.streams.order);
    assert!(
        o.stderr
            .contains("berth: unit a.service: failed (exit-code)\n"),
        "{}",
        o.stderr
    );
    // guest-init halted systemd by itself, which exited cleanly.
    assert!(o.stdout.contains("halting 37"), "{:?}", o.stdout);
    assert_eq!(o.code, 0);
    assert!(
        o.diag
            .contains("unit a.service: failed (exit-code): halting the pod"),
        "{}",
        o.diag
    );
}

#[test]
fn service_pod_whose_check_fails_is_reported_with_the_reason() {
    let Some((r, _)) = start_service("self", "broken") else {
        return;
    };
    let o = r.finish();
    assert_eq!(o.streams.started, Some(false));
    assert!(
        o.stderr.contains(
            "berth: cannot read the units' state: systemctl show exited with status 1: Failed to connect to bus\n"
        ),
        "{}",
        o.stderr
    );
    assert!(o.stdout.contains("halting 37"), "{:?}", o.stdout);
}

#[test]
fn service_pod_whose_systemd_exits_early_fails_with_its_status() {
    let Some((r, log)) = start_service("exit", "active") else {
        return;
    };
    let o = r.finish_keeping(|| assert!(!log.exists(), "no check without READY=1"));
    assert_eq!(o.code, 3);
    assert_eq!(o.streams.started, Some(false));
    assert!(
        o.stderr
            .contains("berth: systemd exited (status 3) before the pod's units were active\n"),
        "{}",
        o.stderr
    );
}

#[test]
fn only_systemd_itself_can_say_ready() {
    // A child of "systemd" (a unit, say) sends READY=1: ignored.
    let Some((mut r, log)) = start_service("child", "active") else {
        return;
    };
    std::thread::sleep(Duration::from_millis(1500));
    r.signal(libc::SIGTERM);
    let o = r.finish_keeping(|| {
        assert!(
            !log.exists(),
            "checked after a READY=1 from another process"
        )
    });
    assert_eq!(o.streams.started, Some(false), "{:?}", o.streams.order);
    assert!(
        o.stderr.contains("systemd exited (status 0) before"),
        "{}",
        o.stderr
    );
    assert!(o.stdout.contains("halting 37"));
}

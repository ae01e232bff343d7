//! One case per hole the security audit found, written to fail if it
//! reopens. Each runs on every stage1 (`common::each_stage1`) unless the
//! hole is ns-only by nature (then the case says why). kvm boots cost
//! 30-90 s on the PVM hosts: a case needing a running kvm pod boots it
//! once and does all its checks there.
//!
//! The probes run inside pods come from `tests/data/probe.c` (static,
//! musl), given to the pod on a read-only volume at /tools.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{each_stage1, stderr, stdout, Env, LeakedFds};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

// ------------------------------------------------------------- helpers --

fn img() -> String {
    common::busybox().to_string_lossy().into_owned()
}

/// The probe helper, built, and its `-v` argument.
struct Tools {
    dir: tempfile::TempDir,
}

impl Tools {
    fn new() -> Tools {
        Tools {
            dir: common::static_tool("musl-gcc", "probe"),
        }
    }
    fn volume(&self) -> String {
        format!("{}:/tools:ro", self.dir.path().display())
    }
}

/// Exit 0 with exactly `out` on stdout.
fn assert_ok(what: &str, o: &Output, out: &str) {
    assert_eq!(
        (o.status.code(), stdout(o).as_str()),
        (Some(0), out),
        "{what}: stderr {:?}",
        stderr(o)
    );
}

/// Exit 125 with one `berth: ` line on stderr that contains `msg`, and no
/// pod left in `e`.
fn assert_refused(e: &Env, what: &str, o: &Output, msg: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(125), "{what}: {err:?}");
    assert_eq!(err.lines().count(), 1, "{what}: not one line: {err:?}");
    assert!(
        err.starts_with("berth: ") && err.contains(msg),
        "{what}: {err:?} lacks {msg:?}"
    );
    assert!(e.pods().is_empty(), "{what} left {:?}", e.pods());
}

/// `berth run -d --name NAME --stage1 S --rootfs IMG OPTS -- CMD`.
fn run_detached(e: &Env, s: &str, name: &str, opts: &[&str], cmd: &[&str]) {
    let img = img();
    let mut args = vec!["run", "-d", "--name", name, "--stage1", s, "--rootfs", &img];
    args.extend_from_slice(opts);
    args.push("--");
    args.extend_from_slice(cmd);
    assert_ok(
        &format!("run -d {name}"),
        &e.berth(&args),
        &format!("{name}\n"),
    );
}

/// Wait until the pod's app.log contains `what`; return the log.
fn wait_log(e: &Env, name: &str, what: &str) -> String {
    let log = e.pod(name).app_log();
    common::wait_secs(&format!("{what:?} in {name}'s app.log"), 900, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains(what))
    });
    std::fs::read_to_string(&log).unwrap()
}

fn uuid_of(e: &Env, name: &str) -> Option<String> {
    berth_spec::PodSpec::load(&e.pod(name))
        .ok()
        .map(|s| s.uuid.clone())
}

/// The cgroup directories of `uuid` in every hierarchy that has one.
fn cgroup_dirs(uuid: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in rd.filter_map(|d| d.ok()) {
            let p = h.path().join("berth").join(uuid);
            if p.exists() {
                found.push(p);
            }
        }
    }
    let v2 = Path::new("/sys/fs/cgroup/berth").join(uuid);
    if v2.exists() {
        found.push(v2);
    }
    found
}

fn links() -> String {
    stdout(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .expect("ip link"),
    )
}

fn nft_table(t: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "ip", t])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Host processes whose command line names `needle` (a pod directory).
fn processes_naming(needle: &str) -> Vec<(i32, String)> {
    let mut v = Vec::new();
    for d in std::fs::read_dir("/proc").unwrap().filter_map(|d| d.ok()) {
        let Some(pid) = d.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            v.push((pid, cmd));
        }
    }
    v
}

/// Is nothing holding pod `name`'s life lock (its stage1 and everything
/// that inherited the lock — ns: the pod's init; kvm: the VMM process,
/// whose exit, tearing the VM down, outlasts its /proc/PID/cmdline)?
fn lock_free(e: &Env, name: &str) -> bool {
    let Ok(f) = std::fs::File::open(e.pod(name).lock_file()) else {
        return true;
    };
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The host processes a pod's life hangs on: its stage1 and its leader
/// (`pid`: ns — the pod's init; kvm — the VMM process).
fn pod_pids(e: &Env, name: &str) -> Vec<i32> {
    let pod = e.pod(name);
    let mut v: Vec<i32> = common::stage1_pid(pod.path()).into_iter().collect();
    if let Some(p) = std::fs::read_to_string(pod.pid_file())
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        v.push(p);
    }
    v
}

/// Wait until `pids` are gone from /proc (reaped, not just exiting: a
/// killed VMM tears its VM down after it closed the pod's lock, and stays
/// in the pod's cgroup meanwhile) and pod `name`'s lock is free.
fn wait_gone(e: &Env, name: &str, pids: &[i32]) {
    common::wait_secs(&format!("{name}'s processes {pids:?} to go"), 300, || {
        pids.iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
            && lock_free(e, name)
    });
}

fn kill(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Run `c` with a new pty as its controlling terminal and 0, 1, 2 (like a
/// login shell's child). Returns its status, what it wrote to the terminal,
/// and how many bytes wait in the terminal's input queue afterwards
/// (something a pod pushed with TIOCSTI would be there).
fn under_pty(mut c: Command) -> (ExitStatus, String, i32) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave: OwnedFd = pty.slave;
    let master: OwnedFd = pty.master;
    // Non-canonical, so that FIONREAD counts every byte waiting (in
    // canonical mode it counts only completed lines).
    let mut t = nix::sys::termios::tcgetattr(&slave).expect("tcgetattr");
    t.local_flags.remove(nix::sys::termios::LocalFlags::ICANON);
    nix::sys::termios::tcsetattr(&slave, nix::sys::termios::SetArg::TCSANOW, &t)
        .expect("tcsetattr");
    for (i, s) in [0, 1, 2]
        .into_iter()
        .map(|i| (i, slave.try_clone().unwrap()))
    {
        match i {
            0 => c.stdin(Stdio::from(s)),
            1 => c.stdout(Stdio::from(s)),
            _ => c.stderr(Stdio::from(s)),
        };
    }
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().expect("spawn under a pty");
    drop(c);
    // SAFETY: F_SETFL on our master fd.
    unsafe {
        let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut out = Vec::new();
    let mut read_some = || {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into our buffer.
            let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        read_some();
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "timed out under a pty");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(100));
    read_some();
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(slave.as_raw_fd(), libc::FIONREAD, &mut queued) };
    (status, String::from_utf8_lossy(&out).into_owned(), queued)
}

/// Lines of a pty transcript, without the \r a terminal adds.
fn pty_lines(t: &str) -> Vec<String> {
    t.lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

/// The `probe tty` verdict in a transcript: (isatty line, tiocsti line).
fn tty_verdict(t: &str) -> (String, String) {
    let lines = pty_lines(t);
    // (What TIOCSTI pushed into a pod's own pty is echoed in front of
    // the next line: "ZZZZtiocsti: ...".)
    let find = |p: &str| {
        lines
            .iter()
            .find_map(|l| l.find(p).map(|i| l[i..].to_string()))
            .unwrap_or_else(|| panic!("no {p:?} line in {t:?}"))
    };
    (find("isatty:"), find("tiocsti:"))
}

// ---------------------------------------------------- inherited fds ----

/// A descriptor the caller of `berth` holds without close-on-exec — a
/// directory (`exec 7</root`), an O_PATH fd, a socket — never reaches a pod:
/// not the app of `run` (detached and, on ns, foreground) and not a command
/// of `exec`. (runc CVE-2024-21626: a leaked directory fd is a way out.)
#[test]
fn inherited_fds_never_reach_a_pod() {
    if !common::have_root() {
        return;
    }
    // The bait itself works: a plain child of ours gets all three.
    let leaked = LeakedFds::new();
    let mut ls = Command::new("ls");
    ls.arg("/proc/self/fd");
    leaked.inherit_into(&mut ls);
    let listed = stdout(&ls.output().unwrap());
    for fd in leaked.fds() {
        assert!(
            listed.lines().any(|l| l == fd.to_string()),
            "the leaked fd {fd} did not reach a child: {listed:?}"
        );
    }
    each_stage1("holes-fds", |s| {
        let e = Env::new();
        let tools = Tools::new();
        let vol = tools.volume();
        let img = img();
        let mut run = e.cmd();
        run.args([
            "run",
            "-d",
            "--name",
            "fds",
            "--stage1",
            s,
            "--rootfs",
            &img,
            "-v",
            &vol,
            "--",
            "/tools/probe",
            "fds",
            "--",
            "sleep",
            "100000",
        ]);
        leaked.inherit_into(&mut run);
        assert_ok("run -d with leaked fds", &run.output().unwrap(), "fds\n");
        let log = wait_log(&e, "fds", "fds:");
        assert_eq!(log, "fds: 0 1 2\n", "{s}: the app of run -d");
        let pod = e.pod("fds");
        let mut exec = e.cmd();
        exec.args(["exec", "fds", "--", "/tools/probe", "fds"]);
        leaked.inherit_into(&mut exec);
        let o = common::rerun_on_guest_fault("fds", &pod.console_log(), || exec.output().unwrap());
        assert_ok(&format!("{s}: exec with leaked fds"), &o, "fds: 0 1 2\n");
        // exec -t: the command's 0, 1, 2 are the pod's own pty.
        let mut exec = e.cmd();
        exec.args(["exec", "-t", "fds", "--", "/tools/probe", "fds"]);
        leaked.inherit_into(&mut exec);
        let o = common::rerun_on_guest_fault("fds", &pod.console_log(), || exec.output().unwrap());
        assert_ok(
            &format!("{s}: exec -t with leaked fds"),
            &o,
            "fds: 0 1 2\r\n",
        );
        if s == "ns" {
            // The foreground run (kvm: its app's stdio comes over vsock
            // either way; the detached run above covers stage0's handoff).
            let mut run = e.cmd();
            run.args([
                "run",
                "--rm",
                "--stage1",
                s,
                "--net",
                "none",
                "--rootfs",
                &img,
                "-v",
                &vol,
                "--",
                "/tools/probe",
                "fds",
            ]);
            leaked.inherit_into(&mut run);
            assert_ok(
                "run --rm with leaked fds",
                &run.output().unwrap(),
                "fds: 0 1 2\n",
            );
        }
        let _ = e.berth(&["rm", "-f", "fds"]);
    });
}

/// `--preserve-fds 1` passes exactly fd 3 (ns); on kvm it is refused with
/// one line before anything starts. Socket activation (LISTEN_FDS=1,
/// LISTEN_PID = berth's pid, a listening socket on fd 3): the app gets the
/// socket as fd 3 with LISTEN_FDS=1 and LISTEN_PID = its own pid, and can
/// accept on it (ns); refused on kvm like --preserve-fds.
#[test]
fn preserve_fds_and_socket_activation_pass_exactly_fd_3() {
    each_stage1("holes-preserve-fds", |s| {
        let e = Env::new();
        let tools = Tools::new();
        let vol = tools.volume();
        let img = img();
        let leaked = LeakedFds::new();
        let passed_dir = tempfile::tempdir().unwrap();
        let passed_path = passed_dir.path().join("passed-file");
        let passed = std::fs::File::create(&passed_path).unwrap();
        let passed_fd = passed.as_raw_fd();
        let on_fd3 = |c: &mut Command, fd: i32| {
            leaked.inherit_into(c);
            // SAFETY: dup2 is async-signal-safe; it clears close-on-exec.
            unsafe {
                c.pre_exec(move || {
                    if libc::dup2(fd, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        };
        let mut run = e.cmd();
        run.args([
            "run",
            "--rm",
            "--stage1",
            s,
            "--net",
            "none",
            "--preserve-fds",
            "1",
            "--rootfs",
            &img,
            "-v",
            &vol,
            "--",
            "/tools/probe",
            "fds",
        ]);
        on_fd3(&mut run, passed_fd);
        let o = run.output().unwrap();
        if s == "kvm" {
            assert_refused(&e, "kvm --preserve-fds 1", &o, "descriptor");
        } else {
            assert_ok(
                "--preserve-fds 1",
                &o,
                &format!("fds: 0 1 2 3({})\n", passed_path.display()),
            );
        }

        // Socket activation: the shell's pid ($$) is berth's once it execs.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let root = e.root.path().to_string_lossy().into_owned();
        let berth = common::berth_bin().to_string_lossy().into_owned();
        let mut act = Command::new("/bin/sh");
        act.args([
            "-c",
            "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"",
            &berth,
            "--root",
            &root,
            "run",
            "--rm",
            "--stage1",
            s,
            "--net",
            "none",
            "--rootfs",
            &img,
            "-v",
            &vol,
            "--",
            "/tools/probe",
            "fds",
            "accept",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        on_fd3(&mut act, listener.as_raw_fd());
        let child = act.spawn().unwrap();
        if s == "kvm" {
            let o = child.wait_with_output().unwrap();
            assert_refused(&e, "kvm socket activation", &o, "descriptor");
            return;
        }
        {
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(b"hello-activation").unwrap();
        }
        let o = child.wait_with_output().unwrap();
        let out = stdout(&o);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "socket activation: {out:?} {}", stderr(&o));
        assert!(
            lines[0].starts_with("fds: 0 1 2 3(socket:[") && lines[0].ends_with("])"),
            "socket activation fds: {out:?}"
        );
        assert!(
            lines[1].starts_with("listen: LISTEN_FDS=1 LISTEN_PID=")
                && lines[1].ends_with("own=yes"),
            "socket activation env: {out:?}"
        );
        assert_eq!(lines[2], "accepted: hello-activation", "{out:?}");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    });
}

// --------------------------------------------------- host terminal ----

/// No host terminal in a pod: `berth run` and `berth exec` under a pty of
/// the test's, without -t (even with -i), give the command no terminal at
/// all (isatty false on 0, 1, 2; TIOCSTI fails everywhere); with -t the
/// command has a pty of the pod's own, and whatever it pushes with TIOCSTI
/// never reaches the host pty (its input queue stays empty).
/// kvm: one boot; its foreground `run` is not repeated (the app's streams
/// come over vsock either way), the `exec` variants run under the pty.
#[test]
fn no_host_terminal_in_a_pod() {
    each_stage1("holes-tty", |s| {
        let e = Env::new();
        let tools = Tools::new();
        let vol = tools.volume();
        let img = img();
        let check = |what: &str, c: Command, tty: bool| {
            let (st, t, queued) = under_pty(c);
            assert_eq!(st.code(), Some(0), "{s} {what}: {t:?}");
            let (isatty, tiocsti) = tty_verdict(&t);
            let mut p = Vec::new();
            let want = if tty {
                "isatty: 0=1 1=1 2=1"
            } else {
                "isatty: 0=0 1=0 2=0"
            };
            if isatty != want {
                p.push(format!("{isatty:?}, expected {want:?}"));
            }
            if !tty && tiocsti.contains("=ok") {
                p.push(format!("TIOCSTI worked without -t: {tiocsti:?}"));
            }
            if queued != 0 {
                p.push(format!(
                    "the host pty has {queued} bytes of input queued: the pod typed into it"
                ));
            }
            assert!(
                p.is_empty(),
                "{s} {what}: {}\n(transcript {t:?})",
                p.join("; ")
            );
        };
        if s == "ns" {
            for (what, tty) in [("run -i", false), ("run -i -t", true)] {
                let mut c = e.cmd();
                c.args(["run", "--rm", "-i", "--stage1", s, "--net", "none"]);
                if tty {
                    c.arg("-t");
                }
                c.args(["--rootfs", &img, "-v", &vol, "--", "/tools/probe", "tty"]);
                check(what, c, tty);
            }
        }
        run_detached(
            &e,
            s,
            "tty",
            &["--net", "none", "-v", &vol],
            &["sh", "-c", "echo up; exec sleep 100000"],
        );
        wait_log(&e, "tty", "up\n");
        for (what, tty) in [("exec", false), ("exec -i", false), ("exec -i -t", true)] {
            let mut c = e.cmd();
            c.arg("exec");
            if what.contains("-i") {
                c.arg("-i");
            }
            if tty {
                c.arg("-t");
            }
            c.args(["tty", "--", "/tools/probe", "tty"]);
            check(what, c, tty);
        }
        let _ = e.berth(&["rm", "-f", "tty"]);
    });
}

// ------------------------------------------------- exec hijacking ----

/// `berth exec` is not hijackable (ns only by nature: on kvm nothing of
/// the host enters the VM, exec goes over vsock to guest-init). The
/// entering process forks the command inside the pod's pid namespace; in
/// the window before its execve that child runs the host's stage1 binary
/// with the caller's environment and all of stage1's capabilities. Pod root
/// races for it (`probe hijack`) while the test runs `berth exec -- true`
/// again and again: it must see such windows (or the case proves nothing)
/// and never open the host's binary through /proc/PID/exe, read the host
/// environment, open /proc/PID/mem or ptrace-attach. With `--cap-add
/// SYS_PTRACE` (which overrides non-dumpable) /proc/PID/exe is a sealed
/// memfd, never the host file, and no attached process may hold
/// CAP_SYS_ADMIN.
#[test]
fn exec_is_not_hijackable() {
    if !common::have_root() || !common::available("ns") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let stage1 = common::berth_bin().with_file_name("berth-stage1-ns");
    let meta = std::fs::metadata(&stage1).unwrap();
    for ptrace in [false, true] {
        let e = Env::new();
        let tools = Tools::new();
        let vol = tools.volume();
        let mut opts = vec!["--net", "none", "-v", &vol];
        if ptrace {
            opts.extend(["--cap-add", "SYS_PTRACE"]);
        }
        run_detached(&e, "ns", "hj", &opts, &["sleep", "100000"]);
        let marker = format!("secret-{}", std::process::id());
        let attacker_args = [
            "exec".to_string(),
            "hj".into(),
            "--".into(),
            "/tools/probe".into(),
            "hijack".into(),
            "secs=90".into(),
            "min=12".into(),
            format!("host_dev={}", meta.dev()),
            format!("host_ino={}", meta.ino()),
            format!("marker=BERTH_HIJACK_MARKER={marker}"),
        ];
        let summary = std::thread::scope(|sc| {
            let attacker = sc.spawn(|| {
                let a: Vec<&str> = attacker_args.iter().map(String::as_str).collect();
                e.berth(&a)
            });
            // Let it take stock of the pod first.
            std::thread::sleep(Duration::from_millis(500));
            let mut execs = 0;
            while !attacker.is_finished() {
                let o = e
                    .cmd()
                    .env("BERTH_HIJACK_MARKER", &marker)
                    .args(["exec", "hj", "--", "true"])
                    .output()
                    .unwrap();
                assert_eq!(o.status.code(), Some(0), "exec true: {}", stderr(&o));
                execs += 1;
            }
            let o = attacker.join().unwrap();
            assert_eq!(o.status.code(), Some(0), "the attacker: {}", stderr(&o));
            eprintln!(
                "hijack (SYS_PTRACE {ptrace}, {execs} execs): {}",
                stdout(&o)
            );
            stdout(&o)
        });
        let line = summary
            .lines()
            .find(|l| l.starts_with("hijack: procs="))
            .unwrap_or_else(|| panic!("no summary: {summary:?}"))
            .to_string();
        let count = |k: &str| -> u32 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
        };
        assert!(
            count("windows") > 0,
            "the attacker never saw an entering process: the case proves nothing: {line}"
        );
        assert_eq!(count("exe_host"), 0, "SYS_PTRACE {ptrace}: {line}");
        if ptrace {
            // CAP_SYS_PTRACE lets pod root attach to (and read) berth's
            // pre-exec child; what it must not find there is more than
            // the pod's own power: capabilities beyond the pod's set
            // (CAP_SYS_ADMIN: code injected there is out of the pod) or
            // the caller's host environment.
            for k in ["privileged", "environ"] {
                assert_eq!(count(k), 0, "SYS_PTRACE: {k}: {line}");
            }
        } else {
            for k in ["environ", "mem", "attached"] {
                assert_eq!(count(k), 0, "{k}: {line}");
            }
        }
        let _ = e.berth(&["rm", "-f", "hj"]);
    }
}

// -------------------------------------------------- device policy ----

/// Device policy: the pod's cgroup v1 device list grants only berth's
/// devices (no wildcard, no block device, nothing of kvm, loop-control,
/// kmsg, mem), and in the pod mknod + open of /dev/kvm (c 10:232),
/// /dev/loop-control (c 10:237) and /dev/kmsg (c 1:11) fail, as does
/// opening those paths. `--device /dev/fuse` gives the pod /dev/fuse (ns);
/// kvm refuses --device with one line.
#[test]
fn device_policy_holds() {
    each_stage1("holes-devices", |s| {
        let e = Env::new();
        let tools = Tools::new();
        let vol = tools.volume();
        run_detached(
            &e,
            s,
            "dev",
            &["--net", "none", "-v", &vol],
            &["sh", "-c", "echo up; exec sleep 100000"],
        );
        wait_log(&e, "dev", "up\n");
        if s == "ns" {
            let cg = std::fs::read_to_string(e.pod("dev").cgroup_file()).unwrap();
            let list = format!("/sys/fs/cgroup/devices{}/devices.list", cg.trim());
            if let Ok(list) = std::fs::read_to_string(&list) {
                let granted: Vec<&str> = list.lines().collect();
                for bad in [
                    "a *:* rwm",
                    "c 10:232 rwm",
                    "c 10:237 rwm",
                    "c 1:11 rwm",
                    "c 1:1 rwm",
                ] {
                    assert!(!granted.contains(&bad), "devices.list grants {bad}: {list}");
                }
                assert!(
                    !granted
                        .iter()
                        .any(|l| l.starts_with("b ") || l.starts_with("a ")),
                    "devices.list grants block or all devices: {list}"
                );
                assert!(granted.contains(&"c 1:3 rwm"), "no /dev/null: {list}");
            } else {
                eprintln!("device-policy: no cgroup v1 devices controller here ({list})");
            }
        }
        let script = "for d in 'kvm 10 232' 'loop-control 10 237' 'kmsg 1 11'; do \
                set -- $d; \
                if mknod /dev/berth-$1 c $2 $3 2>/dev/null; then \
                  echo \"mknod $1: made\"; /tools/probe open /dev/berth-$1 w; \
                else echo \"mknod $1: refused\"; fi; \
                if mknod /tmp/berth-$1 c $2 $3 2>/dev/null; then \
                  echo \"mknod $1 in /tmp: made\"; /tools/probe open /tmp/berth-$1 w; \
                else echo \"mknod $1 in /tmp: refused\"; fi; \
                /tools/probe open /dev/$1 w; \
              done";
        let o = e.berth(&["exec", "dev", "--", "sh", "-c", script]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{s}: {out} {}", stderr(&o));
        let opened: Vec<&str> = out.lines().filter(|l| l.ends_with(": ok")).collect();
        assert!(
            opened.is_empty(),
            "{s}: device nodes opened in the pod: {opened:?}\n{out}"
        );
        let _ = e.berth(&["rm", "-f", "dev"]);
        // --device
        let o = e.run(
            s,
            &["--net", "none", "--device", "/dev/fuse", "-v", &vol],
            &["/tools/probe", "open", "/dev/fuse", "w"],
        );
        if s == "kvm" {
            assert_refused(&e, "kvm --device", &o, "/dev/fuse");
        } else if Path::new("/dev/fuse").exists() {
            assert_ok("--device /dev/fuse", &o, "open /dev/fuse: ok\n");
        } else {
            eprintln!("device-policy: this host has no /dev/fuse to pass");
        }
    });
}

// --------------------------------------------------------- NET_RAW ----

/// NET_RAW is not in the default set: a raw socket is EPERM in a pod;
/// `--cap-add NET_RAW` gives it back. (kvm: one boot with the capability
/// added — root gets the raw socket, an `exec -u 1000` does not; the
/// default-capabilities side on kvm is the escape suite's `raw-socket`.)
#[test]
fn net_raw_is_dropped_by_default() {
    each_stage1("holes-net-raw", |s| {
        let e = Env::new();
        let tools = Tools::new();
        let vol = tools.volume();
        if s == "ns" {
            assert_ok(
                "default caps",
                &e.run(s, &["--net", "none", "-v", &vol], &["/tools/probe", "raw"]),
                "raw: EPERM\n",
            );
            assert_ok(
                "--cap-add NET_RAW",
                &e.run(
                    s,
                    &["--net", "none", "--cap-add", "NET_RAW", "-v", &vol],
                    &["/tools/probe", "raw"],
                ),
                "raw: ok\n",
            );
            return;
        }
        run_detached(
            &e,
            s,
            "raw",
            &["--net", "none", "--cap-add", "NET_RAW", "-v", &vol],
            &["sh", "-c", "/tools/probe raw; exec sleep 100000"],
        );
        let log = wait_log(&e, "raw", "raw: ");
        assert_eq!(log, "raw: ok\n", "--cap-add NET_RAW on kvm");
        assert_ok(
            "exec -u 1000",
            &e.berth(&["exec", "-u", "1000", "raw", "--", "/tools/probe", "raw"]),
            "raw: EPERM\n",
        );
        let _ = e.berth(&["rm", "-f", "raw"]);
    });
}

// ----------------------------------------------- pod dir permissions ----

/// What a pod writes lands in its upper directory on the host — here a
/// setuid-root copy of busybox and a device node attempt — but an
/// unprivileged host user (nobody) can neither list `<root>/pods` nor run
/// that file: the state root is 0711, `pods` and each pod dir 0700.
#[test]
fn pod_dirs_are_closed_to_other_users() {
    each_stage1("holes-pod-dirs", |s| {
        use std::os::unix::fs::PermissionsExt;
        let e = Env::new();
        run_detached(
            &e,
            s,
            "su",
            &["--net", "none"],
            &[
                "sh",
                "-c",
                "cp /bin/busybox /tmp/suid && chmod 4755 /tmp/suid; \
                 mknod /tmp/null-node c 1 3 2>/dev/null; echo up; exec sleep 100000",
            ],
        );
        wait_log(&e, "su", "up\n");
        let root = e.root.path();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(root), 0o711, "state root mode");
        assert_eq!(mode(&root.join("pods")), 0o700, "pods dir mode");
        assert_eq!(mode(e.pod("su").path()), 0o700, "pod dir mode");
        let suid = e.pod("su").upper().join("tmp/suid");
        let m = mode(&suid);
        eprintln!(
            "{s}: the pod's copy is {} with mode {m:o}; device node in the upper dir: {}",
            suid.display(),
            e.pod("su").upper().join("tmp/null-node").exists()
        );
        // Even a root that an admin made world-readable keeps them out.
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let nobody = |args: &[&str]| {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .args(args)
                .output()
                .expect("setpriv")
        };
        let pods = root.join("pods").to_string_lossy().into_owned();
        let o = nobody(&["ls", &pods]);
        assert!(
            !o.status.success() && stderr(&o).contains("Permission denied"),
            "{s}: nobody lists {pods}: {} {}",
            stdout(&o),
            stderr(&o)
        );
        let suid_s = suid.to_string_lossy().into_owned();
        let o = nobody(&[&suid_s, "id", "-u"]);
        assert!(
            !o.status.success() && stdout(&o).is_empty(),
            "{s}: nobody ran the pod's setuid copy: {} {}",
            stdout(&o),
            stderr(&o)
        );
        let _ = e.berth(&["rm", "-f", "su"]);
    });
}

// ------------------------------------------- two roots, one pod name ----

/// Two state roots with a pod of the same name: their cgroups differ, both
/// run at once with their own limits, and gc of one (after its stage1 was
/// killed) leaves the other running with its limits intact. kvm: the pod
/// of the first root is a VM, the second an ns pod (one boot).
#[test]
fn two_state_roots_one_pod_name() {
    each_stage1("holes-two-roots", |s| {
        let a = Env::new();
        let b = Env::new();
        run_detached(
            &a,
            s,
            "same",
            &["--net", "none", "--pids", "20"],
            &["sleep", "100000"],
        );
        run_detached(
            &b,
            "ns",
            "same",
            &["--net", "none", "--pids", "30"],
            &["sleep", "100000"],
        );
        let cg = |e: &Env| {
            std::fs::read_to_string(e.pod("same").cgroup_file())
                .unwrap()
                .trim()
                .to_string()
        };
        let (cga, cgb) = (cg(&a), cg(&b));
        assert_ne!(cga, cgb, "the two pods share a cgroup");
        let pids_max = |cg: &str| {
            std::fs::read_to_string(format!("/sys/fs/cgroup/pids{cg}/pids.max"))
                .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup{cg}/pids.max")))
                .unwrap_or_else(|e| panic!("pids.max of {cg}: {e}"))
                .trim()
                .to_string()
        };
        let (pa, pb) = (pids_max(&cga), pids_max(&cgb));
        assert_eq!(pb, "30", "the second root's limit");
        assert_ne!(pa, pb, "the two pods have the same limit");
        let pids = pod_pids(&a, "same");
        let stage1 = common::stage1_pid(a.pod("same").path()).expect("A's stage1");
        kill(stage1, nix::sys::signal::Signal::SIGKILL);
        wait_gone(&a, "same", &pids);
        let o = a.berth(&["gc"]);
        assert_ok("gc of A", &o, "same\n");
        assert!(a.pods().is_empty());
        let list: serde_json::Value =
            serde_json::from_str(&stdout(&b.berth(&["list", "--format", "json"]))).unwrap();
        assert_eq!(list[0]["state"], "running", "B after A's gc: {list}");
        assert_eq!(pids_max(&cgb), "30", "B's limit after A's gc");
        assert!(
            cgroup_dirs(cga.trim_start_matches("/berth/")).is_empty(),
            "A's cgroup left"
        );
        assert_ok("stop B", &b.berth(&["stop", "same"]), "");
        assert_ok("rm B", &b.berth(&["rm", "same"]), "");
    });
}

// ----------------------------------------- kill -9 during a start ----

/// kill -9 of berth and its stage1 at random points 0-30 ms into a start,
/// 20 times (foreground and detached runs alternating); afterwards `berth
/// gc` leaves nothing: no pod dir, no cgroup, no lease, no host interface,
/// no nft table or bridge (what a fresh root has).
#[test]
fn kill9_during_start_then_gc_leaves_nothing() {
    each_stage1("holes-kill9", |s| {
        use nix::sys::signal::Signal::SIGKILL;
        let e = Env::new();
        let img = img();
        let mut seed: u64 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
            | 1;
        eprintln!("{s}: kill9 seed {seed}");
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        // Whatever the assertions below find left, it goes afterwards.
        let _litter = NetLitter(e.net.bridge.clone(), e.net.nft_table.clone());
        let mut uuids = Vec::new();
        let mut seen = Vec::new();
        let root = e.root.path().to_string_lossy().into_owned();
        for i in 0..20 {
            let name = format!("k{i}");
            let detach = i % 2 == 1;
            let mut c = e.cmd();
            c.args(["run", "--name", &name, "--stage1", s, "--rootfs", &img]);
            if detach {
                c.arg("-d");
            }
            c.args(["--", "sleep", "100000"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0);
            let child = c.spawn().unwrap();
            let pgid = child.id() as i32;
            std::thread::sleep(Duration::from_micros(rnd(30_000)));
            // The whole group (berth, a foreground stage1), then a detached
            // stage1 (its own session) if one is up.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), SIGKILL);
            let mut child = child;
            let _ = child.wait();
            // A detached stage1 left its session already; one still on its
            // way there (forked, not yet exec'd) shows up a moment later.
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until {
                for (p, _) in processes_naming(&root) {
                    kill(p, SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(u) = uuid_of(&e, &name) {
                uuids.push(u);
            }
            seen.extend(pod_pids(&e, &name));
        }
        // Everything a stage1 forked (init, the VMM) dies with it.
        let pods_dir = e.root.path().join("pods").to_string_lossy().into_owned();
        common::wait_secs("the pods' processes to die", 300, || {
            processes_naming(&pods_dir).is_empty()
                && seen
                    .iter()
                    .all(|p| !Path::new(&format!("/proc/{p}")).exists())
                && e.pods().iter().all(|p| lock_free(&e, p))
        });
        let o = e.berth(&["gc"]);
        assert_eq!(o.status.code(), Some(0), "gc: {}", stderr(&o));
        // Everything left, at once.
        let mut left = Vec::new();
        if !e.pods().is_empty() {
            left.push(format!("pod dirs {:?}", e.pods()));
        }
        let l = links();
        for u in &uuids {
            for d in cgroup_dirs(u) {
                left.push(format!("cgroup {}", d.display()));
            }
            for kvm in [false, true] {
                let ifname = berth_net::host_ifname(u, kvm);
                if l.contains(&ifname) {
                    left.push(format!("interface {ifname}"));
                }
            }
        }
        let leases = e.root.path().join("net/leases");
        for f in std::fs::read_dir(&leases)
            .into_iter()
            .flatten()
            .filter_map(|d| d.ok())
        {
            left.push(format!("lease file {}", f.path().display()));
        }
        if nft_table(&e.net.nft_table) {
            left.push(format!("nft table {}", e.net.nft_table));
        }
        if l.contains(&e.net.bridge) {
            left.push(format!("bridge {}", e.net.bridge));
        }
        assert!(
            left.is_empty(),
            "{s}: after 20 kills and gc, left behind: {}",
            left.join(", ")
        );
    });
}

/// Removes an Env's bridge and nft table if a case left them (after its
/// assertions looked).
struct NetLitter(String, String);

impl Drop for NetLitter {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.1])
            .stderr(Stdio::null())
            .status();
    }
}

// ------------------------------------------------ memory and SIGTERM ----

/// `--memory` above the host's RAM is refused with one line naming the
/// value, before anything starts.
#[test]
fn memory_beyond_the_host_is_refused() {
    each_stage1("holes-memory-100g", |s| {
        let e = Env::new();
        let o = e.run(s, &["--net", "none", "--memory", "100g"], &["true"]);
        assert_refused(&e, "--memory 100g", &o, "100g");
    });
}

/// kvm only by nature (an ns pod has no boot): SIGTERM to a foreground
/// `berth run --stage1=kvm` ~1 s after it started, while the VM still
/// boots, ends it promptly (well before the boot would have finished) with
/// status 143, and leaves nothing behind: no pod (it had --rm), no process,
/// no cgroup, no host interface.
#[test]
fn sigterm_during_a_kvm_boot_ends_it_promptly() {
    if !common::have_root() || !common::available("kvm") {
        return;
    }
    let e = Env::new();
    let img = img();
    let mut child = e
        .cmd()
        .args([
            "run", "--rm", "--name", "boot", "--stage1", "kvm", "--rootfs", &img, "--", "true",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let uuid = uuid_of(&e, "boot");
    let sent = Instant::now();
    kill(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
    let deadline = sent + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth run still running 20 s after SIGTERM during the boot");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    let o = child.wait_with_output().unwrap();
    eprintln!("SIGTERM during the boot: ended after {took:?}");
    assert_eq!(
        status.code(),
        Some(143),
        "status after SIGTERM: {:?} {}",
        status,
        stderr(&o)
    );
    let pods_dir = e.root.path().join("pods").to_string_lossy().into_owned();
    common::wait_secs("the VMM to go", 30, || {
        processes_naming(&pods_dir).is_empty()
    });
    assert!(e.pods().is_empty(), "left {:?}", e.pods());
    if let Some(u) = uuid {
        assert!(
            cgroup_dirs(&u).is_empty(),
            "cgroups left: {:?}",
            cgroup_dirs(&u)
        );
        assert!(
            !links().contains(&berth_net::host_ifname(&u, true)),
            "tap left"
        );
    }
}

// -------------------------------------------------- weak messages ----

/// Values berth cannot honour are refused with one line each (exit 125)
/// and leave nothing: `--memory 1k`, `--pids 1`, `--pids 4294967295` (the
/// value named exactly once), `--stage1=/bin/false` (an executable that is
/// no stage1).
#[test]
fn weak_values_get_one_clear_line() {
    each_stage1("holes-weak-messages", |s| {
        let e = Env::new();
        for (opts, msg) in [
            (&["--memory", "1k"][..], "1k"),
            (&["--pids", "1"][..], "--pids \"1\""),
            (&["--pids", "4294967295"][..], "4294967295"),
        ] {
            let mut o2 = vec!["--net", "none"];
            o2.extend_from_slice(opts);
            let o = e.run(s, &o2, &["true"]);
            assert_refused(&e, &format!("{s} {opts:?}"), &o, msg);
            if msg == "4294967295" {
                assert_eq!(stderr(&o).matches(msg).count(), 1, "{}", stderr(&o));
            }
        }
        if s == "ns" {
            let o = e.run("/bin/false", &["--net", "none"], &["true"]);
            assert_refused(&e, "--stage1=/bin/false", &o, "stage1");
            let leases = e.root.path().join("net/leases");
            assert!(
                std::fs::read_dir(&leases).map_or(true, |mut r| r.next().is_none()),
                "a lease left"
            );
        }
    });
}

// --------------------------------------------- damaged pod state ----

/// A pod whose `pid` file is garbage ("xyz") can still be stopped and
/// removed; so can one whose `stage1` file is garbage. (kvm: one pod with
/// both damaged, one boot.)
#[test]
fn damaged_pid_or_stage1_file_still_stops_and_removes() {
    each_stage1("holes-garbage-state", |s| {
        let e = Env::new();
        let cases: &[(&str, &[&str])] = if s == "ns" {
            &[("gpid", &["pid"]), ("gstage1", &["stage1"])]
        } else {
            &[("gboth", &["pid", "stage1"])]
        };
        for (name, _) in cases {
            run_detached(
                &e,
                s,
                name,
                &["--net", "none"],
                &["sh", "-c", "echo up; exec sleep 100000"],
            );
        }
        for (name, files) in cases {
            wait_log(&e, name, "up\n");
            let pod = e.pod(name);
            let pids = pod_pids(&e, name);
            assert!(!pids.is_empty(), "{s}: no processes of {name}");
            let cg = std::fs::read_to_string(pod.cgroup_file()).unwrap();
            for f in *files {
                std::fs::write(pod.path().join(f), "xyz\n").unwrap();
            }
            let o = e.berth(&["stop", name]);
            assert_eq!(
                o.status.code(),
                Some(0),
                "{s}: stop with garbage {files:?}: {}",
                stderr(&o)
            );
            wait_gone(&e, name, &pids);
            let o = e.berth(&["rm", name]);
            assert_eq!(
                o.status.code(),
                Some(0),
                "{s}: rm with garbage {files:?}: {}",
                stderr(&o)
            );
            assert!(!pod.path().exists(), "{s}: {name} still there");
            let u = cg.trim().trim_start_matches("/berth/");
            assert!(cgroup_dirs(u).is_empty(), "{s}: cgroup of {name} left");
        }
    });
}

/// `--rm` with a foreground run killed by SIGKILL (berth and its stage1):
/// the next `berth gc` removes the pod.
#[test]
fn rm_pod_killed_in_the_foreground_is_collected_by_gc() {
    each_stage1("holes-rm-kill9", |s| {
        use nix::sys::signal::Signal::SIGKILL;
        let e = Env::new();
        let img = img();
        let mut child = e
            .cmd()
            .args([
                "run",
                "--rm",
                "--name",
                "fk",
                "--stage1",
                s,
                "--net",
                "none",
                "--rootfs",
                &img,
                "--",
                "sh",
                "-c",
                "echo up; exec sleep 100000",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut first = [0u8; 3];
        std::io::Read::read_exact(&mut out, &mut first).unwrap();
        assert_eq!(&first, b"up\n");
        let pod = e.pod("fk");
        let stage1 = common::stage1_pid(pod.path()).expect("the stage1");
        let pids = pod_pids(&e, "fk");
        let cg = std::fs::read_to_string(pod.cgroup_file()).unwrap();
        kill(child.id() as i32, SIGKILL);
        kill(stage1, SIGKILL);
        let _ = child.wait();
        wait_gone(&e, "fk", &pids);
        assert_ok("gc", &e.berth(&["gc"]), "fk\n");
        assert!(e.pods().is_empty(), "{s}: left {:?}", e.pods());
        let u = cg.trim().trim_start_matches("/berth/");
        assert!(cgroup_dirs(u).is_empty(), "{s}: cgroup left");
    });
}

// -------------------------------------------------- odd rootfs path ----

/// A rootfs whose path holds `,` and `:` (which mean something in mount
/// options and in virtio-fs/overlay option strings) works.
#[test]
fn rootfs_path_with_comma_and_colon() {
    each_stage1("holes-rootfs-path", |s| {
        let e = Env::new();
        let base = tempfile::tempdir().unwrap();
        let odd = base.path().join("img,lowerdir=x:y");
        let st = Command::new("cp")
            .arg("-a")
            .arg(common::busybox())
            .arg(&odd)
            .status()
            .unwrap();
        assert!(st.success(), "cp -a the image");
        let odd_s = odd.to_string_lossy().into_owned();
        let o = e.berth(&[
            "run",
            "--rm",
            "--stage1",
            s,
            "--net",
            "none",
            "--rootfs",
            &odd_s,
            "--",
            "cat",
            "/etc/hostname",
        ]);
        assert_ok(&format!("{s}: --rootfs {odd_s}"), &o, "busybox\n");
    });
}

// ------------------------------------------------- io_uring and OOM ----

/// io_uring_setup is refused (EPERM) in pods; a `--memory 32m` pod (kvm:
/// 64m) that allocates 200 MiB is OOM-killed (status 137) and its
/// `exit-reason` says `oom-killed`, as `berth inspect` does.
#[test]
fn io_uring_refused_and_oom_kill_reported() {
    each_stage1("holes-iouring-oom", |s| {
        let e = Env::new();
        let tools = Tools::new();
        let vol = tools.volume();
        let img = img();
        // kvm: 64m, as a debug build of guest-init (14 MB in the
        // initramfs) does not leave a 32 MiB VM room to boot.
        let memory = if s == "kvm" { "64m" } else { "32m" };
        let o = e.berth(&[
            "run",
            "--name",
            "oom",
            "--stage1",
            s,
            "--net",
            "none",
            "--memory",
            memory,
            "--rootfs",
            &img,
            "-v",
            &vol,
            "--",
            "sh",
            "-c",
            "/tools/probe iouring; exec /tools/probe alloc 200",
        ]);
        assert_eq!(
            (o.status.code(), stdout(&o).as_str()),
            (Some(137), "io_uring_setup: EPERM\n"),
            "{s}: {}",
            stderr(&o)
        );
        let reason = std::fs::read_to_string(e.pod("oom").exit_reason_file()).unwrap_or_default();
        assert_eq!(reason, "oom-killed\n", "{s}: exit-reason");
        let inspect: serde_json::Value =
            serde_json::from_str(&stdout(&e.berth(&["inspect", "oom", "--format", "json"])))
                .unwrap();
        assert_eq!(inspect["exit_reason"], "oom-killed", "{s}: inspect");
        let _ = e.berth(&["rm", "oom"]);
    });
}

// ------------------------------------------------------------ --disk ----

/// `--disk 64m`: writing 100 MB in the pod fails with "No space left on
/// device", and on the host the pod holds no more than its 64 MiB image.
#[test]
fn disk_limit_holds() {
    each_stage1("holes-disk", |s| {
        let e = Env::new();
        let img = img();
        let o = e.berth(&[
            "run",
            "--name",
            "dk",
            "--stage1",
            s,
            "--net",
            "none",
            "--disk",
            "64m",
            "--rootfs",
            &img,
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero of=/big bs=1M count=100 2>&1; echo \"dd: $?\"",
        ]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{s}: {out} {}", stderr(&o));
        assert!(
            out.contains("No space left on device") && !out.contains("dd: 0"),
            "{s}: 100 MB fit in --disk 64m: {out}"
        );
        // On the host: the image, and nothing else of size.
        let pod = e.pod("dk");
        let image = std::fs::metadata(pod.disk_image()).expect("the disk image");
        use std::os::unix::fs::MetadataExt;
        assert!(image.len() <= 64 << 20, "image of {} bytes", image.len());
        let mut outside = 0u64;
        let mut stack = vec![pod.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for f in std::fs::read_dir(&d)
                .into_iter()
                .flatten()
                .filter_map(|f| f.ok())
            {
                let p = f.path();
                let Ok(m) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if m.is_dir() {
                    stack.push(p);
                } else if p != pod.disk_image() {
                    outside += m.blocks() * 512;
                }
            }
        }
        assert!(
            outside < 4 << 20,
            "{s}: {outside} bytes written to the host outside the disk image"
        );
        let _ = e.berth(&["rm", "dk"]);
    });
}

// ------------------------------------------------------- app.log cap ----

/// A detached pod's output is capped like the kvm console log: a pod that
/// writes 12 MB leaves at most `APP_LOG_MAX` in `app.log` and as much in
/// `app.log.1` (less than it wrote: the oldest part went), its last line is
/// kept, and `berth logs` shows the newest output through its end. (kvm:
/// 5 MB, past one rotation — the guest's output crosses vsock at some
/// 25 KB/s on the PVM hosts.)
#[test]
fn app_log_is_capped() {
    each_stage1("holes-app-log", |s| {
        let e = Env::new();
        let written: u64 = if s == "kvm" { 5_000_000 } else { 12_000_000 };
        let script = format!(
            "yes 0123456789abcdef | head -c {written}; echo; echo end-of-output; \
             exec sleep 100000"
        );
        run_detached(&e, s, "lg", &["--net", "none"], &["sh", "-c", &script]);
        let pod = e.pod("lg");
        let log = pod.app_log();
        let mut old = log.clone().into_os_string();
        old.push(".1");
        let old = PathBuf::from(old);
        common::wait_secs("end-of-output in lg's app.log", 900, || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("end-of-output"))
        });
        // berth_spec::app_log::APP_LOG_MAX (the stage1 feature of berth-spec,
        // which this test crate does not build).
        let max: u64 = 4 << 20;
        let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let (live, prev) = (len(&log), len(&old));
        eprintln!("{s}: app.log {live} bytes, app.log.1 {prev} bytes");
        assert!(live <= max, "{s}: app.log holds {live} bytes, over {max}");
        assert!(prev <= max, "{s}: app.log.1 holds {prev} bytes, over {max}");
        assert!(
            prev > 0,
            "{s}: {written} bytes written and the log never rotated"
        );
        if written > 2 * max {
            assert!(
                live + prev < written,
                "{s}: {} bytes on disk for {written} bytes of output: not capped",
                live + prev
            );
        }
        let o = e.berth(&["logs", "-n", "2", "lg"]);
        assert_eq!(o.status.code(), Some(0), "{s}: logs: {}", stderr(&o));
        assert!(
            stdout(&o).ends_with("end-of-output\n"),
            "{s}: berth logs -n 2: {:?}",
            stdout(&o)
        );
        let _ = e.berth(&["rm", "-f", "lg"]);
    });
}

//! End-to-end tests: the real `berth` binary and stage1s, as root, against
//! the busybox image. Every case runs for each stage1 in `common::STAGE1S`.

// Test code: a failing step panics, and the panic is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{each_stage1, stderr, stdout, Env, Expect};
use std::time::{Duration, Instant};

fn ok(out: &str) -> Expect<'_> {
    Expect {
        stdout: out,
        stderr: "",
        stderr_contains: false,
        code: 0,
    }
}

#[test]
fn stdout_stderr_and_exit_code() {
    each_stage1("exit-code", |s| {
        let e = Env::new();
        // Interleaved writes: each stream arrives whole and in order, and
        // neither leaks into the other.
        let o = e.run(
            s,
            &[],
            &[
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6 7 8; do echo out$i; echo err$i >&2; done; exit 5",
            ],
        );
        let lines = |p: &str| (1..=8).map(|i| format!("{p}{i}\n")).collect::<String>();
        let (out, err) = (lines("out"), lines("err"));
        Expect {
            stdout: &out,
            stderr: &err,
            stderr_contains: false,
            code: 5,
        }
        .check("exit 5", &o);
        assert!(e.pods().is_empty(), "--rm left {:?}", e.pods());
    });
}

#[test]
fn killed_by_signal_is_128_plus_n() {
    each_stage1("signal-exit", |s| {
        let e = Env::new();
        let o = e.run(s, &[], &["sh", "-c", "kill -9 $$"]);
        Expect {
            stdout: "",
            stderr: "",
            stderr_contains: false,
            code: 137,
        }
        .check("kill -9", &o);
    });
}

#[test]
fn env_cwd_hostname_user() {
    each_stage1("env-cwd-hostname-user", |s| {
        let e = Env::new();
        ok("bar baz\n").check(
            "env",
            &e.run(
                s,
                &["-e", "FOO=bar", "-e", "X=baz"],
                &["sh", "-c", "echo $FOO $X"],
            ),
        );
        ok("/tmp\n").check("workdir", &e.run(s, &["-w", "/tmp"], &["pwd"]));
        ok("podhost\n").check(
            "hostname",
            &e.run(s, &["--hostname", "podhost"], &["hostname"]),
        );
        ok("named\n").check(
            "hostname from name",
            &e.run(s, &["--name", "named"], &["hostname"]),
        );
        ok("1000 1000\n").check(
            "user",
            &e.run(s, &["-u", "1000"], &["sh", "-c", "echo $(id -u) $(id -g)"]),
        );
        ok("1000 5\n").check(
            "user:group",
            &e.run(
                s,
                &["-u", "1000:5"],
                &["sh", "-c", "echo $(id -u) $(id -g)"],
            ),
        );
        ok("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /root berth\n").check(
            "default env",
            &e.run(s, &[], &["sh", "-c", "echo $PATH $HOME $container"]),
        );
    });
}

#[test]
fn command_not_found_and_not_executable() {
    each_stage1("exec-errors", |s| {
        let e = Env::new();
        Expect {
            stdout: "",
            stderr: "berth: exec \"nosuchcmd\": command not found\n",
            stderr_contains: false,
            code: 127,
        }
        .check("not found", &e.run(s, &[], &["nosuchcmd"]));
        Expect {
            stdout: "",
            stderr: "berth: exec \"/etc/passwd\": permission denied\n",
            stderr_contains: false,
            code: 126,
        }
        .check("not executable", &e.run(s, &[], &["/etc/passwd"]));
        // Not even without --rm: a pod that never started is not kept.
        let img = common::busybox().to_string_lossy().into_owned();
        let o = e.berth(&["run", "--stage1", s, "--rootfs", &img, "--", "nosuchcmd"]);
        assert_eq!(o.status.code(), Some(127));
        assert!(e.pods().is_empty(), "left behind: {:?}", e.pods());
    });
}

#[test]
fn stdin_only_with_interactive() {
    each_stage1("stdin", |s| {
        let e = Env::new();
        let img = common::busybox().to_string_lossy().into_owned();
        let base = ["run", "--rm", "--stage1", s, "--rootfs", img.as_str()];
        let mut with_i = base.to_vec();
        with_i.extend(["-i", "--", "cat"]);
        ok("line 1\nline 2\n").check("-i cat", &e.berth_input(&with_i, "line 1\nline 2\n"));
        let mut without = base.to_vec();
        without.extend(["--", "cat"]);
        ok("").check("cat without -i", &e.berth_input(&without, "ignored\n"));
    });
}

#[test]
fn tty_gives_the_app_a_terminal() {
    each_stage1("tty", |s| {
        let e = Env::new();
        let o = e.run(
            s,
            &["-t"],
            &["sh", "-c", "test -t 0 && test -t 1 && echo tty; tty"],
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        // A pty turns \n into \r\n.
        assert_eq!(stdout(&o), "tty\r\n/dev/pts/0\r\n");
    });
}

#[test]
fn volumes_rw_and_ro() {
    each_stage1("volumes", |s| {
        let e = Env::new();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("in.txt"), "from host\n").unwrap();
        let rw = format!("{}:/data", host.path().display());
        ok("from host\n").check(
            "rw volume",
            &e.run(
                s,
                &["-v", &rw],
                &[
                    "sh",
                    "-c",
                    "cat /data/in.txt; echo from pod > /data/out.txt",
                ],
            ),
        );
        assert_eq!(
            std::fs::read_to_string(host.path().join("out.txt")).unwrap(),
            "from pod\n"
        );
        let ro = format!("{}:/ro:ro", host.path().display());
        Expect {
            stdout: "",
            stderr: "Read-only file system",
            stderr_contains: true,
            code: 1,
        }
        .check(
            "ro volume",
            &e.run(s, &["-v", &ro], &["sh", "-c", "echo x > /ro/new"]),
        );
        assert!(!host.path().join("new").exists());
        // Nested destination created inside the pod's rootfs, not the image.
        let nested = format!("{}:/a/b/c:ro", host.path().display());
        ok("from host\n").check(
            "nested",
            &e.run(s, &["-v", &nested], &["cat", "/a/b/c/in.txt"]),
        );
        assert!(!common::busybox().join("a").exists(), "image was modified");
    });
}

/// A directory holding `name`, built static from tests/data/`name`.c with
/// `cc` (cc from build-essential, or musl-gcc from musl-tools).
fn static_tool(cc: &str, name: &str) -> tempfile::TempDir {
    let tools = tempfile::tempdir().unwrap();
    let src = format!("{}/tests/data/{name}.c", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(cc)
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
    tools
}

/// `mmap(MAP_SHARED)` writes (journald and systemd depend on them) reach
/// the host through a volume and the pod's rootfs.
#[test]
fn shared_mmap_writes_reach_the_host() {
    each_stage1("mmap", |s| {
        let e = Env::new();
        let tools = static_tool("cc", "mmap_shared");
        let data = tempfile::tempdir().unwrap();
        let img = common::busybox().to_string_lossy().into_owned();
        let tools_vol = format!("{}:/tools:ro", tools.path().display());
        let data_vol = format!("{}:/data", data.path().display());
        let o = e.berth(&[
            "run", "--stage1", s, "--name", "mm", "--rootfs", &img, "-v", &tools_vol, "-v",
            &data_vol, "--", "sh", "-c",
            "/tools/mmap_shared /data/shared vol-bytes && /tools/mmap_shared /root-shared root-bytes",
        ]);
        ok("vol-bytes\nroot-bytes\n").check("mmap writes", &o);
        let on_host = std::fs::read(data.path().join("shared")).unwrap();
        assert!(
            on_host.starts_with(b"vol-bytes\0"),
            "volume file: {:?}",
            &on_host[..16]
        );
        let upper = e.root.path().join("pods/mm/overlay/upper/root-shared");
        let on_host = std::fs::read(&upper).unwrap();
        assert!(
            on_host.starts_with(b"root-bytes\0"),
            "rootfs file: {:?}",
            &on_host[..16]
        );
        e.berth(&["rm", "mm"]);
    });
}

#[test]
fn rootfs_is_an_overlay_and_the_image_is_untouched() {
    each_stage1("overlay", |s| {
        let e = Env::new();
        ok("changed\n").check(
            "write to rootfs",
            &e.run(
                s,
                &[],
                &[
                    "sh",
                    "-c",
                    "echo changed > /etc/hostname; cat /etc/hostname; rm /bin/ls",
                ],
            ),
        );
        assert_eq!(
            std::fs::read_to_string(common::busybox().join("etc/hostname")).unwrap(),
            "busybox\n"
        );
        assert!(common::busybox().join("bin/ls").exists());
    });
}

#[test]
fn isolation_as_root_inside_the_pod() {
    each_stage1("isolation", |s| {
        let e = Env::new();
        let host_hostname = nix::unistd::gethostname().unwrap();
        // Each probe prints one line; a failing write/mount is the pass.
        let script = r#"
            echo h > /proc/sysrq-trigger 2>/dev/null && echo sysrq:WRITABLE || echo sysrq:denied
            mount -t tmpfs none /mnt 2>/dev/null && echo mount:ALLOWED || echo mount:denied
            insmod /bin/busybox 2>/dev/null && echo insmod:ALLOWED || echo insmod:denied
            echo "kcore:$(cat /proc/kcore 2>/dev/null | wc -c)"
            echo 1 > /proc/sys/kernel/panic 2>/dev/null && echo procsys:WRITABLE || echo procsys:denied
            echo "procs:$(grep -l . /proc/[0-9]*/cmdline 2>/dev/null | wc -l)"
            hostname changed 2>/dev/null && echo hostname:CHANGED || echo hostname:denied
            echo "pid1:$(cat /proc/1/comm)"
            grep CapBnd /proc/self/status
            grep NoNewPrivs /proc/self/status
            grep Seccomp: /proc/self/status
        "#;
        let o = e.run(s, &[], &["sh", "-c", script]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
        for line in [
            "sysrq:denied",
            "mount:denied",
            "insmod:denied",
            "kcore:0",
            "procsys:denied",
            "hostname:denied",
            "NoNewPrivs:\t1",
            "Seccomp:\t2",
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "missing {line:?} in:\n{out}"
            );
        }
        // Only the pod's processes are visible: init (berth's, or guest-init
        // in the VM), sh, and the grep/wc pipeline. (Counted by their
        // command lines: a guest's kernel threads have none.)
        let procs: usize = out
            .lines()
            .find_map(|l| l.strip_prefix("procs:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("procs line");
        assert!(procs <= 5, "pod sees {procs} processes:\n{out}");
        // CAP_SYS_ADMIN (bit 21) and CAP_SYS_MODULE (16) are not in the bounding set.
        let bnd = out
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .expect("CapBnd");
        let bnd = u64::from_str_radix(bnd.trim(), 16).unwrap();
        assert_eq!(bnd & (1 << 21), 0, "CAP_SYS_ADMIN kept");
        assert_eq!(bnd & (1 << 16), 0, "CAP_SYS_MODULE kept");
        assert_eq!(
            nix::unistd::gethostname().unwrap(),
            host_hostname,
            "host hostname changed"
        );
        // With CAP_SYS_ADMIN granted, a hostname change stays in the pod.
        ok("changed-inside\n").check(
            "hostname change",
            &e.run(
                s,
                &["--cap-add", "SYS_ADMIN"],
                &["sh", "-c", "hostname changed-inside && hostname"],
            ),
        );
        assert_eq!(
            nix::unistd::gethostname().unwrap(),
            host_hostname,
            "host hostname changed"
        );
        // Dropping a default capability takes effect.
        let o = e.run(
            s,
            &["--cap-drop", "chown"],
            &["chown", "1:1", "/etc/hostname"],
        );
        assert_eq!(
            o.status.code(),
            Some(1),
            "chown without CAP_CHOWN: {}",
            stderr(&o)
        );
    });
}

#[test]
fn pid1_reaps_orphans() {
    each_stage1("reaper", |s| {
        let e = Env::new();
        // A grandchild orphaned to PID 1 exits; it must not stay a zombie.
        let o = e.run(
            s,
            &[],
            &[
                "sh",
                "-c",
                "(sh -c 'exit 0' &); sleep 0.3; grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l",
            ],
        );
        ok("0\n").check("zombies", &o);
    });
}

#[test]
fn signals_to_berth_run_reach_the_app() {
    each_stage1("signal-forward", |s| {
        let e = Env::new();
        let img = common::busybox().to_string_lossy().into_owned();
        let mut child = e
            .cmd()
            .args(["run", "--rm", "--stage1", s, "--rootfs", &img, "--"])
            .args([
                "sh",
                "-c",
                "trap 'echo got TERM; exit 3' TERM; echo ready; sleep 1000 & wait",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut first = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut first).unwrap();
        assert_eq!(&first, b"ready\n");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        let st = child.wait().unwrap();
        assert_eq!(rest, "got TERM\n");
        assert_eq!(st.code(), Some(3));
    });
}

/// The cgroup a pod's stage1 recorded (`/berth/<uuid>`).
fn pod_cgroup(e: &Env, name: &str) -> String {
    std::fs::read_to_string(e.pod(name).cgroup_file())
        .unwrap_or_else(|err| panic!("pod {name} records no cgroup: {err}"))
        .trim()
        .to_string()
}

/// Read a cgroup limit of pod `name` on v1 or v2.
fn cgroup_value(e: &Env, v1: (&str, &str), v2: &str, name: &str) -> String {
    let cg = pod_cgroup(e, name);
    let p1 = format!("/sys/fs/cgroup/{}{cg}/{}", v1.0, v1.1);
    let p2 = format!("/sys/fs/cgroup{cg}/{v2}");
    std::fs::read_to_string(&p1)
        .or_else(|_| std::fs::read_to_string(&p2))
        .unwrap_or_else(|_| panic!("neither {p1} nor {p2}"))
        .trim()
        .to_string()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(240);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn lifecycle_detach_exec_stop_rm_and_limits() {
    each_stage1("lifecycle", |s| {
        let e = Env::new();
        let img = common::busybox().to_string_lossy().into_owned();
        let name = format!("life-{s}");
        let tools = static_tool("musl-gcc", "forkmax");
        let tools_vol = format!("{}:/tools:ro", tools.path().display());
        let o = e.berth(&[
            "run",
            "-d",
            "--name",
            &name,
            "--stage1",
            s,
            "--rootfs",
            &img,
            "-v",
            &tools_vol,
            "--memory",
            "64m",
            "--pids",
            "20",
            "--cpus",
            "0.5",
            "--",
            "sh",
            "-c",
            // One `sleep` for the pod's whole life, not one per loop turn:
            // on PVM hosts every guest exec risks the static-TLS defect.
            "trap 'echo stopping; exit 0' TERM; echo up; sleep 1000 & wait",
        ]);
        ok(&format!("{name}\n")).check("run -d", &o);
        let list = stdout(&e.berth(&["list", "--format", "json"]));
        let v: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert_eq!(v[0]["name"], name.as_str());
        assert_eq!(v[0]["state"], "running");
        assert!(v[0]["pid"].as_i64().unwrap() > 1);
        // The limits mean the same on both stage1s. Memory: ns — the pod's
        // processes; kvm — the VM's RAM, and the VMM process' cgroup holds
        // that plus the VMM's bounded overhead (64 MiB). CPU: the same
        // quota (kvm: on the VMM; the guest has 1 vCPU). Tasks: the pod's
        // processes (kvm: in the guest; the VMM cgroup bounds its threads).
        let (mem, tasks) = if s == "ns" {
            ("67108864", "20")
        } else {
            ("134217728", "17")
        };
        let cg = |v1, v2| cgroup_value(&e, v1, v2, &name);
        assert_eq!(cg(("memory", "memory.limit_in_bytes"), "memory.max"), mem);
        assert_eq!(cg(("pids", "pids.max"), "pids.max"), tasks);
        assert_eq!(
            cg(("cpu", "cpu.cfs_quota_us"), "cpu.max")
                .split(' ')
                .next()
                .unwrap(),
            "50000"
        );
        // No swap beyond the memory limit where the host accounts swap.
        let memsw = format!(
            "/sys/fs/cgroup/memory{}/memory.memsw.limit_in_bytes",
            pod_cgroup(&e, &name)
        );
        if let Ok(v) = std::fs::read_to_string(&memsw) {
            assert_eq!(v.trim(), mem, "memory+swap limit");
        }
        // --pids holds inside the pod: of up to 30 processes forked at once,
        // fewer than the 20 allowed start (the pod's own count too).
        let o = e.berth(&["exec", &name, "--", "/tools/forkmax", "30"]);
        assert_eq!(o.status.code(), Some(0), "forkmax: {}", stderr(&o));
        let forked: u32 = stdout(&o)
            .strip_prefix("forked ")
            .and_then(|r| r.strip_suffix(" (EAGAIN)\n"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("forkmax printed {:?}", stdout(&o)));
        assert!(
            (5..20).contains(&forked),
            "{forked} processes forked under --pids 20"
        );
        Expect {
            stdout: "in-pod\n",
            stderr: "",
            stderr_contains: false,
            code: 4,
        }
        .check(
            "exec",
            &e.berth(&["exec", &name, "--", "sh", "-c", "echo in-pod; exit 4"]),
        );
        ok("life\n").check(
            "exec sees the pod's hostname and env",
            &e.berth(&["exec", "-e", "Q=life", &name, "--", "sh", "-c", "echo $Q"]),
        );
        Expect {
            stdout: "",
            stderr: "berth: exec \"nope\": command not found\n",
            stderr_contains: false,
            code: 127,
        }
        .check("exec not found", &e.berth(&["exec", &name, "--", "nope"]));
        ok("1000 1000 /tmp\n").check(
            "exec -u -w",
            &e.berth(&[
                "exec",
                "-u",
                "1000",
                "-w",
                "/tmp",
                &name,
                "--",
                "sh",
                "-c",
                "echo $(id -u) $(id -g) $(pwd)",
            ]),
        );
        ok("via stdin\n").check(
            "exec -i",
            &e.berth_input(&["exec", "-i", &name, "--", "sh"], "echo via stdin\n"),
        );
        let o = e.berth(&[
            "exec",
            "-t",
            &name,
            "--",
            "sh",
            "-c",
            "test -t 0 && echo tty",
        ]);
        assert_eq!(
            (o.status.code(), stdout(&o)),
            (Some(0), "tty\r\n".to_string()),
            "exec -t: {}",
            stderr(&o)
        );
        let o = e.berth(&["rm", &name]);
        assert_eq!(o.status.code(), Some(125));
        assert!(stderr(&o).contains("is running"), "{}", stderr(&o));
        ok("").check("stop", &e.berth(&["stop", &name]));
        let log = std::fs::read_to_string(e.pod(&name).app_log()).unwrap();
        assert_eq!(log, "up\nstopping\n");
        let list = stdout(&e.berth(&["list", "--format", "json"]));
        let v: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert_eq!(v[0]["state"], "exited");
        assert_eq!(v[0]["exit_code"], 0);
        let o = e.berth(&["exec", &name, "--", "true"]);
        assert_eq!(o.status.code(), Some(125), "exec in a stopped pod");
        let cg = pod_cgroup(&e, &name);
        ok("").check("rm", &e.berth(&["rm", &name]));
        assert!(e.pods().is_empty());
        for h in ["pids", "memory", "unified"] {
            let dir = format!("/sys/fs/cgroup/{h}{cg}");
            assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
        }
    });
}

#[test]
fn detached_rm_removes_the_pod_when_it_exits() {
    each_stage1("detach-rm", |s| {
        let e = Env::new();
        let img = common::busybox().to_string_lossy().into_owned();
        ok("gone\n").check(
            "run -d --rm",
            &e.berth(&[
                "run", "-d", "--rm", "--name", "gone", "--stage1", s, "--rootfs", &img, "--",
                "true",
            ]),
        );
        wait_for("the pod to remove itself", || e.pods().is_empty());
    });
}

/// The pid of the `berth-stage1-* run POD_DIR` process supervising a pod.
fn stage1_of(pod: &std::path::Path) -> Option<i32> {
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

#[test]
fn gc_cleans_up_after_a_killed_stage1() {
    each_stage1("gc", |s| {
        let e = Env::new();
        let img = common::busybox().to_string_lossy().into_owned();
        let name = format!("gc-{s}");
        ok(&format!("{name}\n")).check(
            "run -d",
            &e.berth(&[
                "run", "-d", "--name", &name, "--stage1", s, "--rootfs", &img, "--", "sleep",
                "1000",
            ]),
        );
        let pod = e.pod(&name);
        let leader: i32 = std::fs::read_to_string(pod.pid_file())
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let stage1 = stage1_of(pod.path()).expect("the pod's stage1 process");
        let cg = pod_cgroup(&e, &name);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(stage1),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        wait_for("the pod to die with its stage1", || {
            !std::path::Path::new(&format!("/proc/{leader}")).exists()
                && !std::path::Path::new(&format!("/proc/{stage1}")).exists()
        });
        let v: serde_json::Value =
            serde_json::from_str(&stdout(&e.berth(&["list", "--format", "json"]))).unwrap();
        assert_eq!(v[0]["state"], "dead");
        ok(&format!("{name}\n")).check("gc", &e.berth(&["gc"]));
        ok("").check("gc again", &e.berth(&["gc"]));
        assert!(e.pods().is_empty());
        for h in ["memory", "pids", "unified"] {
            let dir = format!("/sys/fs/cgroup/{h}{cg}");
            assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
        }
    });
}

#[test]
fn bad_input_is_125_with_one_line_and_leaves_nothing() {
    if !common::have_root() {
        return;
    }
    let e = Env::new();
    let img = common::busybox().to_string_lossy().into_owned();
    // Arguments split on spaces; IMG is the busybox image.
    let cases: &[(&str, &str)] = &[
        (
            "run --rootfs /nonexistent -- true",
            "rootfs /nonexistent does not exist",
        ),
        (
            "run --rootfs IMG -v /nope:/x -- true",
            "invalid volume \"/nope:/x\"",
        ),
        (
            "run --rootfs IMG -v /tmp -- true",
            "invalid volume \"/tmp\"",
        ),
        (
            "run --rootfs IMG -v /tmp:rel -- true",
            "invalid volume \"/tmp:rel\"",
        ),
        (
            "run --stage1 bogus --rootfs IMG -- true",
            "unknown stage1 \"bogus\"",
        ),
        (
            "run --rootfs IMG --memory lots -- true",
            "invalid size \"lots\"",
        ),
        ("run --rootfs IMG --cpus -1 -- true", "invalid cpus \"-1\""),
        ("run --rootfs IMG -u bob -- true", "invalid user \"bob\""),
        (
            "run --rootfs IMG --name a/b -- true",
            "invalid pod name \"a/b\"",
        ),
        (
            "run --rootfs IMG --net wifi -- true",
            "invalid --net \"wifi\"",
        ),
        ("run --rootfs IMG -w tmp -- true", "invalid workdir \"tmp\""),
        ("run --rootfs IMG -p 80 -- true", "invalid port \"80\""),
        ("run --rootfs IMG -p 0:80 -- true", "invalid port \"0:80\""),
        (
            "run --rootfs IMG -p 1:2/sctp -- true",
            "invalid port \"1:2/sctp\"",
        ),
        (
            "run --rootfs IMG --net host -p 8080:80 -- true",
            "invalid --port \"8080:80\": publishing ports needs --net private",
        ),
        (
            "run --rootfs IMG --net none -p 8080:80 -- true",
            "invalid --port \"8080:80\"",
        ),
        (
            "run --rootfs IMG -p 8080:80 -p 8080:81 -- true",
            "host port 8080/tcp is published twice",
        ),
        ("inspect ghost", "no such pod: ghost"),
        ("inspect ghost --format xml", "invalid --format \"xml\""),
        ("exec ghost -- true", "no such pod: ghost"),
        ("stop ghost", "no such pod: ghost"),
        ("rm ghost", "no such pod: ghost"),
        ("list --format xml", "invalid --format \"xml\""),
        (
            "run --rootfs IMG --cap-add frob -- true",
            "invalid capability \"frob\"",
        ),
        ("run --rootfs IMG --bogus-flag -- true", "--bogus-flag"),
    ];
    for (args, msg) in cases {
        let args: Vec<&str> = args
            .split(' ')
            .map(|a| if a == "IMG" { img.as_str() } else { a })
            .collect();
        let msg = *msg;
        let o = e.berth(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(
            err.starts_with("berth: ") && err.contains(msg),
            "{args:?}: {err:?} lacks {msg:?}"
        );
        assert!(e.pods().is_empty(), "{args:?} left {:?}", e.pods());
    }
    // A name already in use: the second run fails, the first pod is kept.
    ok("").check(
        "first",
        &e.berth(&["run", "--name", "dup", "--rootfs", &img, "--", "true"]),
    );
    let o = e.berth(&["run", "--name", "dup", "--rootfs", &img, "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(stderr(&o), "berth: pod name \"dup\" is already in use\n");
    assert_eq!(e.pods(), vec!["dup".to_string()]);
    // The kvm verb answers clearly until its stage1 exists.
    let o = e.berth(&[
        "run", "--stage1", "kvm", "--rootfs", &img, "--net", "host", "--", "true",
    ]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

/// One boot, many checks: a probe script run on every stage1, whose output
/// must equal the expected text — and therefore be identical across stage1s.
#[test]
fn probe_parity() {
    let script = r#"
        echo "args:$0:$1"
        echo "env:$FOO:$container:$HOME"
        echo "path:$PATH"
        echo "cwd:$(pwd)"
        echo "hostname:$(hostname)"
        echo "id:$(id -u):$(id -g)"
        echo data > /tmp/probe && echo "write:$(cat /tmp/probe)"
        (sh -c 'exit 0' &); sleep 0.3
        echo "zombies:$(grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l)"
        echo "proc:$(cat /proc/self/comm)"
        test -c /dev/null && test -c /dev/zero && test -c /dev/urandom && echo "dev:ok"
        echo "net:$(ls /sys/class/net | tr '\n' ' ')lo-up:$(( $(cat /sys/class/net/lo/flags) & 1 ))"
        exit 7
    "#;
    let expected = "args:probe:one\n\
                    env:bar:berth:/\n\
                    path:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
                    cwd:/tmp\n\
                    hostname:probe-host\n\
                    id:1000:1000\n\
                    write:data\n\
                    zombies:0\n\
                    proc:cat\n\
                    dev:ok\n\
                    net:lo lo-up:1\n";
    each_stage1("probe", |s| {
        let e = Env::new();
        let o = e.run(
            s,
            &[
                "--net",
                "none",
                "-e",
                "FOO=bar",
                "-w",
                "/tmp",
                "--hostname",
                "probe-host",
                "-u",
                "1000:1000",
            ],
            &["sh", "-c", script, "probe", "one"],
        );
        Expect {
            stdout: expected,
            stderr: "",
            stderr_contains: false,
            code: 7,
        }
        .check(&format!("probe on {s}"), &o);
        // The image is never modified, whatever the pod wrote.
        assert!(!common::busybox().join("tmp/probe").exists());
    });
}

#[test]
fn net_host_shares_the_host_network_with_a_warning() {
    each_stage1("net-host", |s| {
        let e = Env::new();
        let o = e.run(s, &["--net", "host"], &["ls", "/sys/class/net"]);
        if s == "kvm" {
            assert_eq!(o.status.code(), Some(125));
            assert_eq!(
                stderr(&o),
                "berth: --net host is impossible with --stage1=kvm: a VM cannot share the host's network namespace\n"
            );
            assert!(e.pods().is_empty());
            return;
        }
        // Interfaces that concurrent cases create and delete (their
        // bridges, veth and tap ends) may come and go meanwhile.
        let stable = |n: &String| !["bte", "bv", "bt"].iter().any(|p| n.starts_with(p));
        let mut host: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .filter(stable)
            .collect();
        host.sort();
        let mut seen: Vec<String> = stdout(&o)
            .split_whitespace()
            .map(String::from)
            .filter(stable)
            .collect();
        seen.sort();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(seen, host);
        assert!(
            stderr(&o).starts_with("berth: warning: --net host"),
            "{}",
            stderr(&o)
        );
    });
}

/// `berth run -d --name NAME -- sh -c SCRIPT`, then wait until the app has
/// printed "up"; returns the pod's app.log path.
fn start_detached(e: &Env, stage1: &str, name: &str, script: &str) -> std::path::PathBuf {
    let img = common::busybox().to_string_lossy().into_owned();
    ok(&format!("{name}\n")).check(
        &format!("run -d {name}"),
        &e.berth(&[
            "run", "-d", "--name", name, "--stage1", stage1, "--rootfs", &img, "--", "sh", "-c",
            script,
        ]),
    );
    let log = e.pod(name).app_log();
    wait_for(&format!("{name} to start"), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("up\n"))
    });
    log
}

#[test]
fn stop_is_graceful_then_forced() {
    each_stage1("stop", |s| {
        let e = Env::new();
        // A well-behaved app: SIGTERM makes it exit 0.
        let name = format!("stop-{s}");
        let log = start_detached(
            &e,
            s,
            &name,
            "trap 'echo stopping; exit 0' TERM; echo up; sleep 1000 & wait",
        );
        ok("").check("stop", &e.berth(&["stop", "--timeout", "120", &name]));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("up\nstopping\n"), "app.log: {text:?}");
        let v: serde_json::Value =
            serde_json::from_str(&stdout(&e.berth(&["list", "--format", "json"]))).unwrap();
        assert_eq!(
            (v[0]["state"].as_str(), v[0]["exit_code"].as_i64()),
            (Some("exited"), Some(0))
        );
        // An app that ignores SIGTERM is killed after the timeout.
        let stubborn = format!("stubborn-{s}");
        start_detached(
            &e,
            s,
            &stubborn,
            "trap '' TERM; echo up; sleep 1000 & while :; do wait; done",
        );
        ok("").check(
            "stop stubborn",
            &e.berth(&["stop", "--timeout", "1", &stubborn]),
        );
        let list = stdout(&e.berth(&["list"]));
        assert!(!list.contains("running"), "{list}");
    });
}

#[test]
fn pvm_flake_retry_only_on_its_signature() {
    // Re-run when the failure shows the signature, then succeed.
    let mut calls = 0;
    common::retrying_pvm_flake("self-test", || {
        calls += 1;
        if calls == 1 {
            panic!("stdout: ...\nSegmentation fault\n...");
        }
    });
    assert_eq!(calls, 2);
    // Any other failure propagates at once.
    let mut calls = 0;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        common::retrying_pvm_flake("self-test", || {
            calls += 1;
            panic!("exit code of x: left: Some(1) right: Some(0)");
        })
    }));
    assert!(r.is_err());
    assert_eq!(calls, 1);
    // At most PVM_RERUNS re-runs.
    let mut calls = 0;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        common::retrying_pvm_flake("self-test", || {
            calls += 1;
            panic!("left: Some(139)");
        })
    }));
    assert!(r.is_err());
    assert_eq!(calls, common::PVM_RERUNS + 1);
    // A detached pod that crashed that way, seen when its Env is dropped by
    // the failing case, counts too; its plain failure does not.
    let pod = |status: &str, app: &str, console: &str| {
        let e = Env::new();
        let dir = e.root.path().join("pods").join("web");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("status"), status).unwrap();
        std::fs::write(dir.join("app.log"), app).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::write(dir.join("log/console.log"), console).unwrap();
        e
    };
    for (status, app, console, retried) in [
        ("139\n", "", "", true),
        ("0\n", "sh: line 1: Segmentation fault\n", "", true),
        (
            "",
            "",
            "[ 20.1] traps: exe[57] general protection fault ip:40aa90 sp:7ffc error:0 in busybox\n",
            true,
        ),
        ("", "", "[ 20.1] sleep[60]: segfault at 0 ip 4a4d02 sp 7ffd error 4\n", true),
        ("1\n", "wget: bad address\n", "[ 3.0] berth: app started\n", false),
        (
            "",
            "",
            "[ 9.2] berth-guest-ini[7]: segfault at 8 ip 41c0 sp 7ffd error 4\n",
            false,
        ),
    ] {
        let mut calls = 0;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            common::retrying_pvm_flake("self-test", || {
                calls += 1;
                let _e = pod(status, app, console);
                if calls == 1 {
                    panic!("stdout of client pod: left: \"\" right: \"hello\"");
                }
            })
        }));
        assert_eq!(r.is_ok(), retried, "{status:?} {app:?} {console:?}");
        assert_eq!(calls, if retried { 2 } else { 1 });
    }
}

#[test]
fn pvm_exec_rerun_only_on_a_guest_fault() {
    use std::os::unix::process::ExitStatusExt;
    let exited = |code: i32| std::process::Output {
        status: std::process::ExitStatus::from_raw(code << 8),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    std::fs::write(&console, "[ 1.0] old: segfault at 0 ip 1 sp 2 error 4\n").unwrap();
    let append = |line: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&console)
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
    };
    // (what each call appends to the console and returns, calls expected)
    let fault = "[ 20.1] sh[60]: segfault at 0 ip 4a4d02 sp 7ffd error 4\n";
    let own = "[ 20.1] berth-guest-ini[9]: segfault at 0 ip 41c0 sp 7ffd error 4\n";
    for (script, calls_expected, code_expected) in [
        // A fault during the exec: run again, then it passes.
        (vec![(fault, 139), ("", 0)], 2, 0),
        // 139 without a fault line now (the old line does not count): kept.
        (vec![("", 139)], 1, 139),
        // Another status with a fault line: kept.
        (vec![(fault, 1)], 1, 1),
        // guest-init's own process crashing is a berth bug: kept.
        (vec![(own, 139)], 1, 139),
        // At most PVM_RERUNS re-runs.
        (vec![(fault, 139); 6], common::PVM_RERUNS as usize + 1, 139),
    ] {
        let mut calls = 0;
        let o = common::rerun_on_guest_fault("self-test", &console, || {
            let (line, code) = script[calls];
            calls += 1;
            append(line);
            exited(code)
        });
        assert_eq!(
            (calls, o.status.code()),
            (calls_expected, Some(code_expected)),
            "{script:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// --net private. Traffic stays on the machine: loopback, the Env's own
// bridge (198.18.0.0/15), its pods, and an "upstream" network namespace the
// test creates (198.51.100.0/24, TEST-NET-2) and removes.

/// A network namespace with a veth pair to the host, removed on drop.
struct Upstream {
    ns: String,
    host_if: String,
}

impl Upstream {
    /// Host side 198.51.100.1/24 on `host_if`, the namespace's side
    /// 198.51.100.2/24.
    fn new(tag: &str) -> Upstream {
        let u = Upstream {
            ns: format!("berth-up-{tag}"),
            host_if: format!("bup{tag}"),
        };
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &u.ns]);
        ip(&[
            "link", "add", &u.host_if, "type", "veth", "peer", "name", "up0", "netns", &u.ns,
        ]);
        ip(&["addr", "add", "198.51.100.1/24", "dev", &u.host_if]);
        ip(&["link", "set", &u.host_if, "up"]);
        ip(&["-n", &u.ns, "addr", "add", "198.51.100.2/24", "dev", "up0"]);
        ip(&["-n", &u.ns, "link", "set", "up0", "up"]);
        ip(&["-n", &u.ns, "link", "set", "lo", "up"]);
        u
    }

    /// Accept one TCP connection on 198.51.100.2:`port` inside the namespace;
    /// the thread returns the peer's address and what it sent.
    fn listen(&self, port: u16) -> std::thread::JoinHandle<(std::net::SocketAddr, String)> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let nsf = std::fs::File::open(format!("/run/netns/{}", self.ns)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            // SAFETY: setns on an open namespace file; this thread only.
            let rc = unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            let l = std::net::TcpListener::bind(("198.51.100.2", port)).unwrap();
            tx.send(()).unwrap();
            let (mut c, peer) = l.accept().unwrap();
            let mut got = String::new();
            c.read_to_string(&mut got).unwrap();
            (peer, got)
        });
        rx.recv().unwrap();
        h
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

fn inspect(e: &Env, name: &str) -> serde_json::Value {
    let o = e.berth(&["inspect", name, "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn curl(url: &str) -> Option<String> {
    let o = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "3", url])
        .output()
        .ok()?;
    o.status.success().then(|| stdout(&o))
}

fn links() -> String {
    stdout(
        &std::process::Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap(),
    )
}

fn nft_table(t: &str) -> Option<String> {
    let o = std::process::Command::new("nft")
        .args(["-j", "list", "table", "ip", t])
        .output()
        .unwrap();
    o.status.success().then(|| stdout(&o))
}

fn nft_bridge_table(t: &str) -> Option<String> {
    let o = std::process::Command::new("nft")
        .args(["-j", "list", "table", "bridge", t])
        .output()
        .unwrap();
    o.status.success().then(|| stdout(&o))
}

/// Some free UDP port on the host.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Send `what` to the UDP address `to`; the answer, if one comes within 2 s.
fn udp_ask(to: &str, what: &str) -> Option<String> {
    let c = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    c.send_to(what.as_bytes(), to).ok()?;
    let mut buf = [0u8; 1500];
    let n = c.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Some free TCP port on the host.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn net_private_ports_pod_to_host_pod_to_pod_and_nat() {
    each_stage1("net-private", |s| {
        let e = Env::new();
        let img = common::busybox().to_string_lossy().into_owned();
        let gw = e.net.gateway();
        let hp = free_port();
        let publish = format!("{hp}:80");
        let up_port = free_udp_port();
        let publish_udp = format!("{up_port}:53/udp");
        let tools = static_tool("musl-gcc", "udp_echo");
        let tools_vol = format!("{}:/tools:ro", tools.path().display());
        // A web server publishing pod port 80 on host port `hp`, and a UDP
        // echo server publishing pod port 53 on `up_port` (a crash of the
        // latter reaches app.log, where the PVM flake check looks).
        ok("web\n").check(
            "run -d web",
            &e.berth(&[
                "run", "-d", "--name", "web", "--stage1", s, "--rootfs", &img, "-p", &publish,
                "-p", &publish_udp, "-v", &tools_vol, "--", "sh", "-c",
                "mkdir /www && echo hello-berth > /www/index.html && httpd -p 80 -h /www || exit 1; \
                 { /tools/udp_echo 53 || echo \"udp_echo: status $?\"; } & echo up; sleep 1000",
            ]),
        );
        let info = inspect(&e, "web");
        let addr = info["address"].as_str().expect("address").to_string();
        assert!(addr.starts_with(&format!("{}.", e.net.prefix)), "{addr}");
        assert_eq!(info["state"], "running");
        assert_eq!(info["ports"][0]["host_port"], hp);
        assert!(info["spec"]["network"]["private"]["mac"].is_string());
        let list = stdout(&e.berth(&["list"]));
        assert!(list.contains("ADDRESS") && list.contains(&addr), "{list}");
        // host -> pod: the published port via localhost (proxy) and via the
        // host's bridge address (DNAT), and the pod's address directly.
        for url in [
            format!("http://127.0.0.1:{hp}/index.html"),
            format!("http://{gw}:{hp}/index.html"),
            format!("http://{addr}/index.html"),
        ] {
            let mut got = None;
            wait_for(&format!("curl {url}"), || {
                got = curl(&url);
                got.is_some()
            });
            assert_eq!(got.as_deref(), Some("hello-berth\n"), "{url}");
        }
        // UDP: via localhost (the proxy) and the bridge address (DNAT).
        for to in [format!("127.0.0.1:{up_port}"), format!("{gw}:{up_port}")] {
            let mut got = None;
            wait_for(&format!("an answer from udp {to}"), || {
                got = udp_ask(&to, "ping");
                got.is_some()
            });
            assert_eq!(got.as_deref(), Some("echo:ping"), "udp {to}");
        }
        // pod -> host: the gateway answers ping and a TCP listener on it.
        let l = std::net::TcpListener::bind((gw.as_str(), 0)).unwrap();
        let lp = l.local_addr().unwrap().port();
        let acc = std::thread::spawn(move || {
            use std::io::Read;
            let (mut c, _) = l.accept().unwrap();
            let mut v = String::new();
            c.read_to_string(&mut v).unwrap();
            v
        });
        // pod -> pod on the bridge, and pod -> published port on the host
        // (hairpin), and outbound NAT to the upstream namespace.
        let up = Upstream::new(&format!("{}", std::process::id() % 100_000));
        let upstream = up.listen(9000);
        // The first contact with a kvm web pod may wait for its guest to
        // answer ARP, which on the loaded, emulated PVM CI hosts can take
        // seconds: the fetch is retried for up to 10 s (the last attempt's
        // error is shown).
        let script = format!(
            "get() {{ for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- \"$1\" 2>/dev/null && return; \
                 sleep 1; done; wget -qO- \"$1\"; }}; \
             ping -c1 -W2 {gw} >/dev/null && echo ping-ok; \
             echo from-pod | nc {gw} {lp}; \
             get http://{addr}/index.html; \
             get http://{gw}:{hp}/index.html; \
             echo via-nat | nc 198.51.100.2 9000; echo done"
        );
        // busybox's ping needs a raw socket, which pods do not get by
        // default (iputils' ping uses the ICMP datagram sockets they have).
        let o = e.run(s, &["--cap-add", "NET_RAW"], &["sh", "-c", &script]);
        ok("ping-ok\nhello-berth\nhello-berth\ndone\n").check("client pod", &o);
        assert_eq!(acc.join().unwrap(), "from-pod\n");
        let (peer, got) = upstream.join().unwrap();
        assert_eq!(got, "via-nat\n");
        assert_eq!(
            peer.ip().to_string(),
            "198.51.100.1",
            "the upstream sees the host's address, not the pod's"
        );
        drop(up);
        ok("").check("stop web", &e.berth(&["stop", "web"]));
    });
}

#[test]
fn net_concurrent_pods_get_distinct_addresses() {
    each_stage1("net-concurrent", |s| {
        let e = std::sync::Arc::new(Env::new());
        // Four pods started at once that stay up until every address is
        // read (pods that exit at once could, on a loaded host, run one
        // after the other and rightly reuse a released address).
        let img = common::busybox().to_string_lossy().into_owned();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let e = e.clone();
                let (s, img) = (s.to_string(), img.clone());
                std::thread::spawn(move || {
                    let name = format!("c{i}");
                    let o = e.berth(&[
                        "run", "-d", "--name", &name, "--stage1", &s, "--rootfs", &img, "--",
                        "sleep", "100000",
                    ]);
                    assert_eq!(o.status.code(), Some(0), "run -d {name}: {}", stderr(&o));
                    name
                })
            })
            .collect();
        let names: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let mut addrs: Vec<String> = names
            .iter()
            .map(|name| {
                let o = common::rerun_on_guest_fault(name, &e.pod(name).console_log(), || {
                    e.berth(&[
                        "exec", name, "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0",
                    ])
                });
                assert_eq!(o.status.code(), Some(0), "exec {name}: {}", stderr(&o));
                stdout(&o)
                    .split_whitespace()
                    .nth(3)
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let o = e.berth(&[&["rm", "-f"], refs.as_slice()].concat());
        assert_eq!(o.status.code(), Some(0), "rm -f: {}", stderr(&o));
        addrs.sort();
        let n = addrs.len();
        addrs.dedup();
        assert_eq!(addrs.len(), n, "duplicate addresses: {addrs:?}");
        for a in &addrs {
            assert!(a.starts_with(&e.net.prefix) && a.ends_with("/24"), "{a}");
        }
        // The bridge and tables stay for the next pod; `network rm`
        // removes them.
        assert!(links().contains(&e.net.bridge), "bridge kept");
        let o = e.berth(&["network", "ls"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(stdout(&o).contains("set up"), "{}", stdout(&o));
        let o = e.berth(&["network", "rm"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(!links().contains(&e.net.bridge), "bridge removed");
        assert_eq!(nft_table(&e.net.nft_table), None, "table removed");
    });
}

#[test]
fn net_cleanup_after_stop_and_after_kill9_and_gc() {
    each_stage1("net-cleanup", |s| {
        let e = Env::new();
        let img = common::busybox().to_string_lossy().into_owned();
        let leases = e.root.path().join("net/leases");
        for (name, kill) in [("stopped", false), ("killed", true)] {
            let publish = format!("{}:80", free_port());
            ok(&format!("{name}\n")).check(
                "run -d",
                &e.berth(&[
                    "run",
                    "-d",
                    "--name",
                    name,
                    "--stage1",
                    s,
                    "--rootfs",
                    &img,
                    "-p",
                    &publish,
                    "-p",
                    "5353:53/udp",
                    "--",
                    "sleep",
                    "1000",
                ]),
            );
            let info = inspect(&e, name);
            let mac = info["spec"]["network"]["private"]["mac"]
                .as_str()
                .unwrap()
                .to_string();
            let host_if = info["host_interface"].as_str().unwrap().to_string();
            let addr = info["address"].as_str().unwrap().to_string();
            // A veth shows as `NAME@peer:`, a tap as `NAME:`.
            let l = links();
            assert!(
                l.contains(&format!(": {host_if}@")) || l.contains(&format!(": {host_if}:")),
                "{host_if} exists"
            );
            assert!(leases.join(&addr).exists());
            // Its elements: host interface bound to MAC and address in the
            // bridge table, the two published ports in the ip table's maps.
            let ports = nft_table(&e.net.nft_table).expect("berth's table exists");
            assert_eq!(
                ports.matches(&addr).count(),
                2,
                "two port elements: {ports}"
            );
            let spoof = nft_bridge_table(&e.net.nft_table).expect("bridge table");
            assert_eq!(spoof.matches(&host_if).count(), 2, "{spoof}");
            assert!(spoof.contains(&mac), "{spoof}");
            if kill {
                let pod = e.root.path().join("pods").join(name);
                let stage1 = stage1_of(&pod).expect("the pod's stage1 process");
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(stage1),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                wait_for("the stage1 to die", || {
                    !std::path::Path::new(&format!("/proc/{stage1}")).exists()
                });
                ok(&format!("{name}\n")).check("gc", &e.berth(&["gc"]));
                assert!(e.pods().is_empty());
            } else {
                ok("").check("stop", &e.berth(&["stop", name]));
                ok("").check("rm", &e.berth(&["rm", name]));
            }
            assert!(
                !links().contains(&host_if),
                "{host_if} left behind after {name}"
            );
            assert!(!leases.join(&addr).exists(), "lease left after {name}");
            // Its elements are gone; the tables and the bridge stay.
            let ports = nft_table(&e.net.nft_table).expect("table kept");
            assert!(
                !ports.contains(&addr),
                "port elements left after {name}: {ports}"
            );
            let spoof = nft_bridge_table(&e.net.nft_table).expect("bridge table kept");
            assert!(
                !spoof.contains(&host_if),
                "elements left after {name}: {spoof}"
            );
            assert!(links().contains(&e.net.bridge), "bridge kept after {name}");
        }
        ok(&format!(
            "removed bridge {} and nft tables ip/bridge {}\n",
            e.net.bridge, e.net.nft_table
        ))
        .check("network rm", &e.berth(&["network", "rm"]));
        assert_eq!(nft_table(&e.net.nft_table), None, "table left");
        assert_eq!(nft_bridge_table(&e.net.nft_table), None, "table left");
        assert!(!links().contains(&e.net.bridge), "bridge left");
    });
}

#[test]
fn net_a_pod_cannot_take_over_another_pods_address() {
    each_stage1("net-spoof", |s| {
        let e = Env::new();
        let img = common::busybox().to_string_lossy().into_owned();
        let gw = e.net.gateway();
        ok("victim\n").check(
            "run -d victim",
            &e.berth(&[
                "run", "-d", "--name", "victim", "--stage1", s, "--rootfs", &img, "--", "sleep",
                "1000",
            ]),
        );
        let info = inspect(&e, "victim");
        let victim = info["address"].as_str().unwrap().to_string();
        let victim_mac = info["spec"]["network"]["private"]["mac"]
            .as_str()
            .unwrap()
            .to_string();
        // The host learns the victim's MAC (ARP from the host's side).
        wait_for("the victim to answer ping", || {
            std::process::Command::new("ping")
                .args(["-c1", "-W2", &victim])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|st| st.success())
        });
        let neigh = || {
            stdout(
                &std::process::Command::new("ip")
                    .args(["neigh", "show", &victim, "dev", &e.net.bridge])
                    .output()
                    .unwrap(),
            )
        };
        assert!(neigh().contains(&victim_mac), "{}", neigh());
        // An attacker with every network capability: the victim's address on
        // its own interface, gratuitous ARP claiming it (after the host's
        // neighbour lock time), IPv4 from it; its own address still works.
        let script = format!(
            "cat /sys/class/net/eth0/address; \
             ip addr add {victim}/24 dev eth0 && echo added; sleep 2; \
             arping -U -c 3 -I eth0 {victim} >/dev/null 2>&1; echo arped; \
             if ping -c1 -W2 -I {victim} {gw} >/dev/null 2>&1; then echo spoofed-ping-answered; \
             else echo spoofed-ping-dropped; fi; \
             ping -c1 -W5 {gw} >/dev/null && echo own-ping-ok"
        );
        let o = e.run(
            s,
            &["--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW"],
            &["sh", "-c", &script],
        );
        let out = stdout(&o);
        let (attacker_mac, rest) = out.split_once('\n').unwrap_or(("", ""));
        assert_eq!(
            (o.status.code(), rest),
            (Some(0), "added\narped\nspoofed-ping-dropped\nown-ping-ok\n"),
            "attacker pod: {}",
            stderr(&o)
        );
        assert_ne!(attacker_mac, victim_mac);
        let all = stdout(
            &std::process::Command::new("ip")
                .args(["neigh", "show", "dev", &e.net.bridge])
                .output()
                .unwrap(),
        );
        // The host never took the attacker for the victim (its entry may
        // have aged out meanwhile, but not changed hands).
        assert!(
            !neigh().contains(attacker_mac),
            "the host's neighbour entry for the victim is the attacker's: {all}"
        );
        let drops = nft_bridge_table(&e.net.nft_table).expect("bridge table");
        assert!(
            !drops.contains(r#""counter": {"packets": 0,"#),
            "the anti-spoofing chain dropped nothing: {drops}"
        );
        ok("").check("stop victim", &e.berth(&["stop", "victim"]));
    });
}

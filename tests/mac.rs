//! Mandatory access control on the ns stage1: Landlock confines every pod
//! process to the pod's own tree (a host descriptor that reaches the pod
//! opens nothing new), pods keep working under it, and `--security-label`
//! fails clearly where its LSM is not active. Root only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{stderr, stdout, Env};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Can this host run these cases? Prints why not.
fn ready() -> bool {
    common::have_root() && common::available("ns")
}

/// Does the kernel have Landlock? Prints why not.
fn have_landlock() -> bool {
    if berth_spec::landlock::kernel_abi().is_none() {
        eprintln!("skipping: this kernel has no Landlock");
        return false;
    }
    true
}

/// A directory holding `name`, built static from tests/data/`name`.c.
fn static_tool(name: &str) -> tempfile::TempDir {
    let tools = tempfile::tempdir().unwrap();
    let src = format!("{}/tests/data/{name}.c", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(tools.path().join(name))
        .arg(src)
        .output()
        .expect("run cc");
    assert!(out.status.success(), "cc: {}", stderr(&out));
    tools
}

fn open_raw(path: &std::path::Path, flags: i32) -> OwnedFd {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: open(2) with a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    assert!(fd >= 0, "open {}", path.display());
    // SAFETY: open just returned it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `berth ARGS` with `fd` as its descriptor 3 (for `--preserve-fds 1`).
fn berth_with_fd3(e: &Env, fd: &OwnedFd, args: &[&str]) -> Output {
    let raw = fd.as_raw_fd();
    let mut c = e.cmd();
    c.args(args);
    // SAFETY: dup2 is async-signal-safe; the new fd 3 is not close-on-exec.
    unsafe {
        c.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it then.
            let r = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().expect("run berth")
}

fn run_args<'a>(img: &'a str, opts: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", "--rm", "--net", "none", "--rootfs", img];
    v.extend_from_slice(opts);
    v.push("--");
    v.extend_from_slice(cmd);
    v
}

fn check(what: &str, o: &Output, code: i32, out: &str) {
    assert_eq!(
        (o.status.code(), stdout(o).as_str()),
        (Some(code), out),
        "{what}: stderr {:?}",
        stderr(o)
    );
}

#[test]
fn passed_host_descriptors_open_nothing_new() {
    if !ready() || !have_landlock() {
        return;
    }
    let e = Env::new();
    let img = common::busybox().to_string_lossy().into_owned();
    let tools = static_tool("fdprobe");
    let tools_vol = format!("{}:/t:ro", tools.path().display());
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("secret"), "host secret\n").unwrap();
    let dir = open_raw(host.path(), libc::O_PATH | libc::O_DIRECTORY);
    let file = open_raw(&host.path().join("secret"), libc::O_RDONLY);
    // The same pods with Landlock off show that each probe does reach the
    // host file when nothing stops it.
    for off in [false, true] {
        let mut opts = vec!["--preserve-fds", "1", "-v", &tools_vol];
        if off {
            opts.extend(["--security-opt", "landlock=off"]);
        }
        let what = |w: &str| format!("{w} (landlock {})", if off { "off" } else { "on" });
        // openat(2) beneath an O_PATH descriptor of a host directory.
        let o = berth_with_fd3(
            &e,
            &dir,
            &run_args(&img, &opts, &["/t/fdprobe", "3", "secret"]),
        );
        if off {
            check(&what("openat(fd, secret)"), &o, 0, "host secret\n");
        } else {
            check(
                &what("openat(fd, secret)"),
                &o,
                1,
                "openat: Permission denied\n",
            );
        }
        // Its /proc/self/fd magic link.
        let o = berth_with_fd3(
            &e,
            &dir,
            &run_args(
                &img,
                &opts,
                &["sh", "-c", "cat /proc/self/fd/3/secret || echo refused"],
            ),
        );
        check(
            &what("/proc/self/fd/3/secret"),
            &o,
            0,
            if off { "host secret\n" } else { "refused\n" },
        );
        // A host file passed open: its descriptor still reads (it was
        // given on purpose); opening it again through the magic link does
        // not.
        let o = berth_with_fd3(
            &e,
            &file,
            &run_args(
                &img,
                &opts,
                &[
                    "sh",
                    "-c",
                    "cat <&3; cat /proc/self/fd/3 || echo refused; cat /dev/fd/3 || echo refused",
                ],
            ),
        );
        check(
            &what("passed file"),
            &o,
            0,
            if off {
                "host secret\nhost secret\nhost secret\n"
            } else {
                "host secret\nrefused\nrefused\n"
            },
        );
        // SAFETY: lseek on our own descriptor (the pod moved its offset).
        unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_SET) };
    }
    assert!(e.pods().is_empty(), "--rm pods left: {:?}", e.pods());
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `berth exec` processes get their own domain: the app's host
/// descriptor is out of their reach too (through /proc/PID/fd), while
/// signals to the app still work.
#[test]
fn exec_processes_are_confined_too() {
    if !ready() || !have_landlock() {
        return;
    }
    let e = Env::new();
    let img = common::busybox().to_string_lossy().into_owned();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("secret"), "host secret\n").unwrap();
    let dir = open_raw(host.path(), libc::O_PATH | libc::O_DIRECTORY);
    for off in [false, true] {
        let name = if off { "ex-off" } else { "ex-on" };
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--net",
            "none",
            "--preserve-fds",
            "1",
            "--rootfs",
            &img,
        ];
        if off {
            args.extend(["--security-opt", "landlock=off"]);
        }
        args.extend([
            "--",
            "sh",
            "-c",
            "trap 'echo got HUP' HUP; echo up; while true; do sleep 0.1; done",
        ]);
        let o = berth_with_fd3(&e, &dir, &args);
        check("run -d", &o, 0, &format!("{name}\n"));
        let log = e.pod(name).app_log();
        wait_for("the app", || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("up\n"))
        });
        // The app is the pod's PID 2 (init is 1).
        let o = e.berth(&[
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "cat /proc/2/fd/3/secret || echo refused",
        ]);
        check(
            "exec through the app's descriptor",
            &o,
            0,
            if off { "host secret\n" } else { "refused\n" },
        );
        check(
            "exec signals the app",
            &e.berth(&["exec", name, "--", "kill", "-HUP", "2"]),
            0,
            "",
        );
        wait_for("the app's trap", || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("got HUP\n"))
        });
        check("rm -f", &e.berth(&["rm", "-f", name]), 0, "");
    }
}

#[test]
fn pods_work_as_before_under_landlock() {
    if !ready() || !have_landlock() {
        return;
    }
    let e = Env::new();
    let img = common::busybox().to_string_lossy().into_owned();
    let rw = tempfile::tempdir().unwrap();
    let ro = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("in"), "read only\n").unwrap();
    let rw_vol = format!("{}:/rw", rw.path().display());
    let ro_vol = format!("{}:/ro:ro", ro.path().display());
    let script = "echo tmp > /tmp/f && cat /tmp/f; \
                  echo x > /dev/null && head -c 3 /dev/zero | wc -c; \
                  echo pod > /rw/out && cat /rw/out; \
                  cat /ro/in; (echo no > /ro/x) 2>/dev/null || echo ro refused; \
                  mkdir -p /var/d && mv /tmp/f /var/d/g && ln -s g /var/d/l && cat /var/d/l; \
                  truncate -s 0 /var/d/g && wc -c < /var/d/g";
    check(
        "files, devices, volumes",
        &e.berth(&run_args(
            &img,
            &["-v", &rw_vol, "-v", &ro_vol],
            &["sh", "-c", script],
        )),
        0,
        "tmp\n3\npod\nread only\nro refused\ntmp\n0\n",
    );
    assert_eq!(
        std::fs::read_to_string(rw.path().join("out")).unwrap(),
        "pod\n"
    );
    assert!(!ro.path().join("x").exists());
    // A terminal: the pod's own pty, opened again as /dev/tty.
    let o = e.berth(&run_args(
        &img,
        &["-t"],
        &[
            "sh",
            "-c",
            "test -t 0 && tty && echo via-tty > /dev/tty && stty -g </dev/tty >/dev/null && echo ok",
        ],
    ));
    check("-t", &o, 0, "/dev/pts/0\r\nvia-tty\r\nok\r\n");
    // /dev/stdout is /proc/self/fd/1: when berth's stdout is a host file
    // (here), the pod may still open it; a detached pod's is a pipe.
    let out = tempfile::NamedTempFile::new().unwrap();
    let status = e
        .cmd()
        .args(run_args(
            &img,
            &[],
            &["sh", "-c", "echo via-dev-stdout >> /dev/stdout; echo rc=$?"],
        ))
        // Append mode: the pod's own `>>` open shares no offset with fd 1.
        .stdout(Stdio::from(
            std::fs::OpenOptions::new()
                .append(true)
                .open(out.path())
                .unwrap(),
        ))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(out.path()).unwrap(),
        "via-dev-stdout\nrc=0\n"
    );
    let o = e.berth(&[
        "run",
        "-d",
        "--name",
        "logger",
        "--net",
        "none",
        "--rootfs",
        &img,
        "--",
        "sh",
        "-c",
        "echo to-log >> /dev/stdout; echo err >> /dev/stderr; test -p /dev/stdout && echo a pipe; echo done",
    ]);
    check("run -d", &o, 0, "logger\n");
    let log = e.pod("logger").app_log();
    wait_for("the detached pod", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("done\n"))
    });
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "to-log\nerr\na pipe\ndone\n",
        "a detached pod's stdout is a pipe its stage1 relays into the capped app.log: no host file reaches the pod"
    );
    // exec with a terminal.
    let o = e.berth(&[
        "run", "-d", "--name", "box", "--net", "none", "--rootfs", &img, "--", "sleep", "1000",
    ]);
    check("run -d box", &o, 0, "box\n");
    let o = e.berth(&[
        "exec",
        "-t",
        "box",
        "--",
        "sh",
        "-c",
        "test -t 0 && echo via-tty > /dev/tty && echo x > /tmp/e && cat /tmp/e",
    ]);
    check("exec -t", &o, 0, "via-tty\r\nx\r\n");
    let o = e.berth(&["inspect", "box"]);
    let abi = berth_spec::landlock::kernel_abi().unwrap();
    let line = stdout(&o)
        .lines()
        .find(|l| l.starts_with("landlock:"))
        .map(str::to_string);
    let scoped = if abi >= 6 { ", scoped (signal)" } else { "" };
    assert_eq!(
        line.as_deref(),
        Some(
            format!("landlock:  ABI {abi} (app: files confined{scoped}; exec: files confined)")
                .as_str()
        ),
        "{}",
        stdout(&o)
    );
    let o = e.berth(&["inspect", "--format", "json", "box"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["landlock"]["state"], "enforced");
    assert_eq!(v["landlock"]["abi"], abi);
    assert_eq!(v["landlock"]["domains"][0]["who"], "app");
    assert_eq!(v["landlock"]["domains"][0]["files"], true);
    assert_eq!(v["landlock"]["domains"][1]["who"], "exec");
    assert!(v["security_label"].is_null());
    check("rm -f", &e.berth(&["rm", "-f", "box", "logger"]), 0, "");
}

use common::{curl, free_port};

/// A service pod: systemd (which mounts: Landlock forbids that to a domain
/// with file rules) gets the scopes only, and `berth exec` no domain at
/// all (a domain would cut it off from systemd's /proc/1/…); the pod
/// serves nginx, and exec still reads /proc/1/root.
#[test]
fn service_pod_serves_nginx_with_systemd_scoped_only() {
    if !ready() || !have_landlock() {
        return;
    }
    let e = Env::new();
    let img = common::debian().to_string_lossy().into_owned();
    let port = free_port();
    let p = format!("{port}:80");
    let o = e.berth(&[
        "create",
        "--rootfs",
        &img,
        "-u",
        "nginx.service",
        "-p",
        &p,
        "web",
    ]);
    check("create", &o, 0, "web\n");
    check("start", &e.berth(&["start", "web"]), 0, "");
    let page = curl(port).expect("nginx answers");
    assert!(page.contains("Welcome to nginx"), "{page}");
    let o = e.berth(&["inspect", "--format", "json", "web"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["landlock"]["state"], "enforced", "{v}");
    assert_eq!(
        v["landlock"]["domains"][0]["files"], false,
        "systemd mounts"
    );
    assert_eq!(v["landlock"]["domains"][1]["files"], false);
    assert_eq!(v["landlock"]["domains"][1]["scoped"], serde_json::json!([]));
    // systemd runs in a domain (scoped for signals), which an exec
    // process in a domain of its own could not look into.
    check(
        "exec reads /proc/1/root",
        &e.berth(&["exec", "web", "--", "sh", "-c", "readlink /proc/1/root"]),
        0,
        "/\n",
    );
    // systemd still mounts (a mount unit) and the pod still stops.
    let o = e.berth(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "mkdir -p /mnt/late && printf '[Mount]\\nWhat=tmpfs\\nWhere=/mnt/late\\nType=tmpfs\\n' > /run/systemd/system/mnt-late.mount \
         && systemctl daemon-reload && systemctl start mnt-late.mount && stat -f -c %T /mnt/late",
    ]);
    check("systemd mounts /mnt/late", &o, 0, "tmpfs\n");
    check("stop", &e.berth(&["stop", "web"]), 0, "");
    check("rm", &e.berth(&["rm", "web"]), 0, "");
}

#[test]
fn security_labels_fail_clearly_without_their_lsm() {
    if !ready() {
        return;
    }
    let e = Env::new();
    let img = common::busybox().to_string_lossy().into_owned();
    let deb = common::debian().to_string_lossy().into_owned();
    for label in [
        "apparmor=berth-test",
        "s0:c1,c2",
        "system_u:system_r:svirt_lxc_net_t:s0:c1,c2",
    ] {
        let parsed = berth_spec::label::SecurityLabel::parse(label).unwrap();
        let lsm = parsed.lsm().name();
        if berth_spec::label::check_active(&parsed, std::path::Path::new("/")).is_ok() {
            eprintln!("skipping {label:?}: {lsm} is active on this host");
            continue;
        }
        for verb in ["run", "create"] {
            let args = if verb == "run" {
                vec![
                    "run",
                    "--rm",
                    "--net",
                    "none",
                    "--rootfs",
                    &img,
                    "--security-label",
                    label,
                    "--",
                    "true",
                ]
            } else {
                vec![
                    "create",
                    "--rootfs",
                    &deb,
                    "-u",
                    "nginx.service",
                    "--security-label",
                    label,
                    "lbl",
                ]
            };
            let o = e.berth(&args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(125), "{verb} {label}: {err}");
            assert_eq!(stdout(&o), "");
            let want =
                format!("berth: --security-label {label:?}: {lsm} is not active on this host");
            assert!(err.starts_with(&want), "{err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(e.pods().is_empty(), "left behind: {:?}", e.pods());
        }
    }
    for bad in ["a:b", "apparmor=", "u:r:t:s0:x1", "apparmor=two words"] {
        let o = e.berth(&run_args(&img, &["--security-label", bad], &["true"]));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(125), "{bad}: {err}");
        assert!(
            err.starts_with(&format!("berth: invalid --security-label {bad:?}: ")),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let o = e.berth(&run_args(
        &img,
        &["--security-opt", "landlock=maybe"],
        &["true"],
    ));
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(
        stderr(&o),
        "berth: invalid --security-opt \"landlock=maybe\": expected landlock=on or landlock=off\n"
    );
    assert!(e.pods().is_empty());
}

/// A kernel without Landlock, as a seccomp filter makes it look to berth
/// (landlock_create_ruleset answers ENOSYS, what such a kernel says): the
/// pod runs, with one warning line, and inspect says so.
#[test]
fn without_landlock_pods_run_with_one_warning() {
    if !ready() {
        return;
    }
    let e = Env::new();
    let img = common::busybox().to_string_lossy().into_owned();
    let no_landlock = |args: &[&str]| -> Output {
        let mut c = e.cmd();
        c.args(args);
        // SAFETY: prctl(2) calls only, on a filter that lives on our stack
        // for the duration of the call.
        unsafe {
            c.pre_exec(|| {
                const BPF_LD_W_ABS: u16 = 0x20;
                const BPF_JEQ_K: u16 = 0x15;
                const BPF_RET_K: u16 = 0x06;
                const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
                const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
                let filter = [
                    // seccomp_data.nr
                    libc::sock_filter {
                        code: BPF_LD_W_ABS,
                        jt: 0,
                        jf: 0,
                        k: 0,
                    },
                    libc::sock_filter {
                        code: BPF_JEQ_K,
                        jt: 0,
                        jf: 1,
                        k: libc::SYS_landlock_create_ruleset as u32,
                    },
                    libc::sock_filter {
                        code: BPF_RET_K,
                        jt: 0,
                        jf: 0,
                        k: SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
                    },
                    libc::sock_filter {
                        code: BPF_RET_K,
                        jt: 0,
                        jf: 0,
                        k: SECCOMP_RET_ALLOW,
                    },
                ];
                let prog = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &prog as *const libc::sock_fprog,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c.output().expect("run berth")
    };
    let o = no_landlock(&run_args(&img, &[], &["echo", "ran"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "ran\n");
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "one warning line: {err:?}");
    assert!(
        err.contains("this kernel has no Landlock: pod ") && err.contains(" runs without it"),
        "{err}"
    );
    let o = no_landlock(&[
        "run", "-d", "--name", "nol", "--net", "none", "--rootfs", &img, "--", "sleep", "1000",
    ]);
    assert_eq!(stdout(&o), "nol\n", "{}", stderr(&o));
    let o = e.berth(&["inspect", "nol"]);
    assert!(
        stdout(&o).contains("landlock:  unsupported by this kernel (not applied)\n"),
        "{}",
        stdout(&o)
    );
    // exec follows what run recorded (here, without the filter).
    check(
        "exec",
        &e.berth(&["exec", "nol", "--", "sh", "-c", "echo ok"]),
        0,
        "ok\n",
    );
    // And off is off, recorded before the pod ever starts.
    let deb = common::debian().to_string_lossy().into_owned();
    let o = e.berth(&[
        "create",
        "--security-opt",
        "landlock=off",
        "--rootfs",
        &deb,
        "-u",
        "nginx.service",
        "offpod",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = e.berth(&["inspect", "--format", "json", "offpod"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["landlock"]["state"], "off");
    assert_eq!(v["spec"]["security"]["landlock"], "off");
    check("rm -f", &e.berth(&["rm", "-f", "nol", "offpod"]), 0, "");
}

/// kvm: the VMM process confines itself (its jail's paths only) and the
/// VM still boots and runs its app over the virtio-fs shares; a
/// `--security-label` whose LSM is not active fails as on ns. One boot
/// (a minute or more on PVM).
#[test]
fn kvm_vmm_is_confined_and_the_pod_boots() {
    if !common::have_root() || !common::available("kvm") || !have_landlock() {
        return;
    }
    let e = Env::new();
    let img = common::busybox().to_string_lossy().into_owned();
    for label in ["apparmor=berth-test", "s0:c1,c2"] {
        let parsed = berth_spec::label::SecurityLabel::parse(label).unwrap();
        let lsm = parsed.lsm().name();
        if berth_spec::label::check_active(&parsed, std::path::Path::new("/")).is_ok() {
            eprintln!("skipping {label:?}: {lsm} is active on this host");
            continue;
        }
        let o = e.berth(&[
            "run",
            "--rm",
            "--stage1",
            "kvm",
            "--net",
            "none",
            "--rootfs",
            &img,
            "--security-label",
            label,
            "--",
            "true",
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(125), "{label}: {err}");
        assert!(
            err.starts_with(&format!(
                "berth: --security-label {label:?}: {lsm} is not active on this host"
            )),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(e.pods().is_empty(), "left behind: {:?}", e.pods());
    }
    let w = tempfile::tempdir().unwrap();
    let vol = format!("{}:/w", w.path().display());
    let o = e.berth(&[
        "run",
        "--stage1",
        "kvm",
        "--name",
        "kv",
        "--net",
        "none",
        "-v",
        &vol,
        "--rootfs",
        &img,
        "--",
        "sh",
        "-c",
        "echo hi > /w/from-guest && cat /w/from-guest && ls /bin/sh",
    ]);
    check("kvm run", &o, 0, "hi\n/bin/sh\n");
    assert_eq!(
        std::fs::read_to_string(w.path().join("from-guest")).unwrap(),
        "hi\n"
    );
    let o = e.berth(&["inspect", "--format", "json", "kv"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["landlock"]["state"], "enforced", "{v}");
    assert_eq!(v["landlock"]["domains"][0]["who"], "vmm");
    assert_eq!(v["landlock"]["domains"][0]["files"], true);
    check("rm", &e.berth(&["rm", "kv"]), 0, "");
}

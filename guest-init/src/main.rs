//! berth-guest-init: PID 1 inside berth's microVMs (static, musl).
//!
//! A linear recipe, like libkrun's init; each guest syscall costs ~3.4 ms on
//! nested (PVM) KVM, so every step is counted:
//!
//! 1. check that this is PID 1, put the console (fd 0) in raw mode, write
//!    the boot mark to the VMM's port;
//! 2. mount devtmpfs on /dev, open /dev/console, read and validate
//!    /berth/pod.json;
//! 3. mount the root disk on /newroot and the pod's API filesystems inside
//!    it, switch root into it, set the hostname, bring up loopback;
//! 4. fork and exec the app (exec failures reported as 127/126 with a
//!    one-line message);
//! 5. reap children and forward `signal N` console lines until the app exits;
//! 6. end the other processes, remount / read-only, write the app's status
//!    byte to the status port and reboot (`reboot=k`: the VMM sees a clean
//!    exit).
//!
//! Any failure of guest-init itself prints `berth-guest-init: <step>: <cause>`
//! on the console and reports status 125 the same way. It never panics.
//!
//! `berth-guest-init --supervise POD_JSON` runs steps 4-5 only, in the
//! current root, as a child subreaper, with control lines on stdin, and exits
//! with the app's status: the end-to-end tests drive the real binary this way
//! without a VM.
#![cfg_attr(not(test), no_main)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)
)]

mod app;
mod arena;
mod console;
mod mounts;
mod net;
mod ports;
mod reaper;
mod service;
mod session;
mod sys;
#[cfg(test)]
mod test_support;
mod trace;
mod vsock;

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use berth_spec::control;
use berth_spec::kvm::{BOOT_MARK_PORT, GUEST_INIT_FAILED, INITRAMFS_SPEC_PATH, STATUS_PORT};
use berth_spec::{NetworkMode, PodSpec, SpecError, EXIT_BERTH_FAILED};
use nix::errno::Errno;

use crate::app::AppConfig;
use crate::console::Console;
use crate::ports::Ports;
use crate::reaper::Scope;
use crate::service::Readiness;
use crate::session::{Conn, ExecPolicy};

/// Memory without syscalls: see arena.rs.
#[cfg(not(test))]
#[global_allocator]
static ALLOC: arena::Arena = arena::Arena::new();

#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("guest-init must run as PID 1 of a berth VM (this is pid {0}); tests use --supervise POD_JSON")]
    NotPid1(i32),
    #[error("usage: berth-guest-init [--supervise POD_JSON [EXEC_SOCKET [NOTIFY_SOCKET]]]")]
    Usage,
    #[error("cannot open {0}")]
    OpenSpec(String, #[source] Errno),
    #[error("cannot read {0}")]
    ReadSpec(String, #[source] Errno),
    #[error("{0} is not UTF-8")]
    SpecUtf8(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot set the hostname to {0:?}")]
    Hostname(String, #[source] Errno),
    #[error("cannot become a child subreaper")]
    Subreaper(#[source] Errno),
    #[error("cannot enter systemd's PID namespace")]
    JoinPidNs(#[source] Errno),
}

/// What the main process needs once the control channel is up.
struct Pod {
    cfg: AppConfig,
    policy: ExecPolicy,
    /// A service pod: its notify socket, units and the check's environment.
    service: Option<ServicePrep>,
}

struct ServicePrep {
    notify: OwnedFd,
    units: Vec<String>,
    env: Vec<String>,
}

impl ServicePrep {
    /// The app is systemd: its notify socket at `path`, bound as `notify`.
    fn new(spec: &PodSpec, cfg: &mut AppConfig, notify: OwnedFd, path: &str) -> Option<Self> {
        let svc = spec.service.as_ref()?;
        if let Ok(e) = std::ffi::CString::new(service::notify_env(path)) {
            cfg.env.push(e);
        }
        Some(ServicePrep {
            notify,
            units: svc.units.clone(),
            env: spec.effective_env(),
        })
    }

    fn readiness(self, main: &session::MainSession, confinement: &app::Confinement) -> Readiness {
        Readiness::new(
            self.units,
            self.env,
            self.notify,
            main.pid(),
            confinement.clone(),
        )
    }
}

/// A fatal error of guest-init: the step and its cause.
#[derive(Debug)]
struct Fatal {
    step: &'static str,
    cause: Box<dyn std::error::Error>,
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.step,
            berth_spec::ErrorChain(self.cause.as_ref())
        )
    }
}

fn fatal<E: std::error::Error + 'static>(step: &'static str) -> impl FnOnce(E) -> Fatal {
    move |e| Fatal {
        step,
        cause: Box::new(e),
    }
}

#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    // `no_main`: std's runtime set-up (stdio checks, SIGPIPE, stack guard)
    // would cost guest syscalls we do not need; the C entry point gets argv.
    let args: Vec<&CStr> = (0..usize::try_from(argc).unwrap_or(0))
        .filter_map(|i| {
            // SAFETY: the C runtime passes argc valid, NUL-terminated strings.
            let p = unsafe { *argv.add(i) };
            // SAFETY: non-null pointers in argv are C strings that live for
            // the whole process.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) })
        })
        .collect();
    match args.get(1).map(|a| a.to_bytes()) {
        Some(b"--supervise") => supervise_mode(
            args.get(2).copied(),
            args.get(3).copied(),
            args.get(4).copied(),
        ),
        _ => pid1(),
    }
}

// ---------------------------------------------------------------- PID 1 --

/// How far the root filesystem got, for the shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Initramfs,
    AtNewroot,
    Switched,
}

struct State {
    console: Option<Console>,
    sfd: Option<OwnedFd>,
    root: Root,
}

fn pid1() -> libc::c_int {
    // Refuse to run outside a VM: as root on a host this would mount over
    // /dev, write to I/O ports and reboot the machine. One syscall.
    // SAFETY: getpid(2) has no preconditions.
    let pid = unsafe { libc::getpid() };
    if pid != 1 {
        console::say(&InitError::NotPid1(pid).to_string());
        return EXIT_BERTH_FAILED;
    }
    let mut ports = Ports::boot_mark(BOOT_MARK_PORT, STATUS_PORT);
    let mut st = State {
        console: None,
        sfd: None,
        root: Root::Initramfs,
    };
    let status = match boot(&mut st, &ports).and_then(|cfg| run_app(&mut st, cfg)) {
        Ok(code) => code,
        Err(f) => {
            console::say(&f.to_string());
            i32::from(GUEST_INIT_FAILED)
        }
    };
    power_off(status, &st, &mut ports)
}

/// Steps 2 and 3: from the bare initramfs to the pod's root.
fn boot(st: &mut State, ports: &Ports) -> Result<Pod, Fatal> {
    mounts::apply_initramfs(&mounts::initramfs_plan()).map_err(fatal("/dev"))?;
    trace::init();
    trace::mark("/dev mounted");
    let console = Console::open().map_err(fatal("console"))?;
    st.console = Some(console);
    if let Some(p) = ports.out_problem() {
        console::say(&format!("port I/O: {p}; falling back to /dev/port"));
    }
    let spec = read_spec(INITRAMFS_SPEC_PATH).map_err(fatal("pod spec"))?;
    trace::mark("console ready, spec read");
    if spec.service.is_some() {
        // Before the switch root: the seed is in the initramfs.
        if let Err(e) = service::credit_random_seed(berth_spec::kvm::INITRAMFS_RANDOM_SEED_PATH) {
            console::say(&format!("random seed: {}", berth_spec::ErrorChain(&e)));
        }
    }
    if spec.network.mode == NetworkMode::Host {
        return Err(fatal("network")(net::NetError::HostUnsupported));
    }
    // Everything that can be refused is refused before touching the disk.
    let plan = mounts::pod_plan(&spec, mounts::NEWROOT).map_err(fatal("mounts"))?;
    let mut cfg = AppConfig::from_spec(&spec).map_err(fatal("app"))?;
    let mut policy = ExecPolicy {
        confinement: cfg.confinement.clone(),
        drop_ioperm: None,
    };
    if ports.out_works() {
        // Root too: the pod's root holds no CAP_SYS_RAWIO, and the bitmap
        // inherited from us would let it write the VMM's boot-mark and
        // status ports.
        policy.drop_ioperm = Some((BOOT_MARK_PORT.min(STATUS_PORT), 2));
        cfg.drop_ioperm = policy.drop_ioperm;
    }

    mounts::mount_root().map_err(fatal("root filesystem"))?;
    st.root = Root::AtNewroot;
    trace::mark("root filesystem mounted");
    if trace::enabled() {
        for step in &plan {
            mounts::apply_step(step).map_err(fatal("mounts"))?;
            trace::mark(&format!("{step:?}"));
        }
    } else {
        mounts::apply(&plan).map_err(fatal("mounts"))?;
    }
    mounts::switch_root().map_err(fatal("switch root"))?;
    st.root = Root::Switched;
    trace::mark("switched root");

    nix::unistd::sethostname(&spec.hostname)
        .map_err(|e| InitError::Hostname(spec.hostname.clone(), e))
        .map_err(fatal("hostname"))?;
    let mut service = None;
    if spec.service.is_some() {
        let payload = mounts::service_cgroups(spec.resources.pids).map_err(fatal("cgroups"))?;
        let notify = service::run_host().map_err(fatal("/run/host"))?;
        cfg.pod_init = Some(app::PodInit {
            cgroup_procs: payload,
            mounts: mounts::service_child_plan().map_err(fatal("mounts"))?,
        });
        service = ServicePrep::new(&spec, &mut cfg, notify, berth_spec::SERVICE_NOTIFY_SOCKET);
        for a in service::slow_host_args().into_iter().flatten() {
            if let Ok(a) = std::ffi::CString::new(a) {
                cfg.argv.push(a);
            }
        }
        trace::mark("service pod: cgroups and /run/host ready");
    } else if let Some(max) = spec.resources.pids {
        mounts::limit_pids(max).map_err(fatal("pids limit"))?;
    }
    if let Err(e) = net::loopback_up() {
        // Not fatal: a kernel without INET simply has no loopback to offer.
        console::say(&format!("network: {}", berth_spec::ErrorChain(&e)));
    }
    if let Some(p) = &spec.network.private {
        net::configure(&net::Iface {
            kernel_name: net::KERNEL_IFNAME,
            name: &p.ifname,
            address: p.address,
            prefix_len: p.prefix_len,
            gateway: p.gateway,
        })
        .map_err(fatal("network"))?;
    }
    trace::mark("hostname and lo set");
    if !trace::enabled() {
        report_user_faults_on_console();
    }
    Ok(Pod {
        cfg,
        policy,
        service,
    })
}

/// The kernel boots with `quiet loglevel=0` (every console line costs boot
/// time), which also hides the KERN_INFO line it prints when a guest
/// process dies of a fault (`sh[42]: segfault at … ip … error …`). Once
/// booted, let KERN_INFO through so that line reaches the pod's
/// console.log: it is what tells a crashed app apart from one that called
/// exit(139). A trace boot (`berth_trace=1`, usually with `loglevel=7` or 8)
/// keeps the level it asked for. One syscall; failure only loses
/// diagnostics.
fn report_user_faults_on_console() {
    const SYSLOG_ACTION_CONSOLE_LEVEL: libc::c_int = 8;
    const KERN_INFO_AND_MORE_URGENT: libc::c_int = 7;
    // SAFETY: klogctl(2) with this action reads no buffer (NULL, length is
    // the new level).
    if unsafe {
        libc::klogctl(
            SYSLOG_ACTION_CONSOLE_LEVEL,
            std::ptr::null_mut(),
            KERN_INFO_AND_MORE_URGENT,
        )
    } != 0
    {
        console::say(&format!(
            "cannot raise the console log level: {}",
            Errno::last()
        ));
    }
}

/// Steps 4 and 5: connect the control channel, start the app, serve it
/// and exec sessions until it exits.
fn run_app(st: &mut State, pod: Pod) -> Result<i32, Fatal> {
    let sfd = reaper::sigchld_fd().map_err(fatal("signals"))?;
    let sfd: &OwnedFd = st.sfd.insert(sfd);
    let conn = vsock::connect_host(control::MAIN_PORT).map_err(fatal("control channel"))?;
    let listener = vsock::listen(control::EXEC_PORT).map_err(fatal("control channel"))?;
    trace::mark("control channel connected");
    let mut main = session::start_main(Conn::new(conn), &pod.cfg, pod.service.is_some())
        .map_err(fatal("app"))?;
    trace::mark("app started (exec done)");
    if let Some(pidfd) = main.pidfd.take() {
        // Every process guest-init starts from now on (`berth exec`, the
        // units' check) is in systemd's PID namespace: `ps` there shows
        // the pod. One syscall.
        // SAFETY: setns(2) on a pidfd we own; it changes only which PID
        // namespace our future children are born in.
        Errno::result(unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWPID) })
            .map_err(InitError::JoinPidNs)
            .map_err(fatal("service pod"))?;
    }
    let readiness = match pod.service {
        Some(sp) if !main.failed => Some(sp.readiness(&main, &pod.cfg.confinement)),
        _ => None,
    };
    session::run(
        sfd.as_fd(),
        main,
        Some(listener.as_fd()),
        pod.policy,
        readiness,
    )
    .map_err(fatal("supervision"))
}

/// Step 6. Never returns.
fn power_off(status: i32, st: &State, ports: &mut Ports) -> ! {
    trace::mark(&format!("app exited, status {status}"));
    reaper::terminate(st.sfd.as_ref().map(|f| f.as_fd()), Scope::All);
    trace::mark("other processes ended");
    match st.root {
        Root::Switched => {
            if let Err(e) = mounts::remount_root_ro() {
                console::say(&format!("cannot remount / read-only ({e}); synced instead"));
            }
        }
        Root::AtNewroot => nix::unistd::sync(),
        Root::Initramfs => {}
    }
    trace::mark("root remounted read-only");
    let byte = u8::try_from(status & 0xff).unwrap_or(GUEST_INIT_FAILED);
    if let Err(e) = ports.write(STATUS_PORT, byte) {
        console::say(&format!(
            "cannot report exit status {byte}: {}",
            berth_spec::ErrorChain(&e)
        ));
    }
    if let Some(c) = &st.console {
        c.drain();
    }
    // SAFETY: reboot(2) with RB_AUTOBOOT; the kernel command line has
    // reboot=k, which the VMM turns into a clean VM exit.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    console::say(&format!("reboot failed: {}", Errno::last()));
    // Exiting makes the kernel panic ("Attempted to kill init"); with panic=
    // on the command line that still ends the VM instead of hanging it.
    std::process::exit(status)
}

// ----------------------------------------------------------- supervise --

fn supervise_mode(
    spec_path: Option<&CStr>,
    exec_socket: Option<&CStr>,
    notify_socket: Option<&CStr>,
) -> libc::c_int {
    match supervised(spec_path, exec_socket, notify_socket) {
        Ok(code) => code,
        Err(f) => {
            console::say(&f.to_string());
            EXIT_BERTH_FAILED
        }
    }
}

/// Steps 4-5 in the current root, for tests: fd 0 is the main control
/// connection (a socket), exec connections are accepted on the unix socket
/// EXEC_SOCKET when given; children are reaped as a subreaper; the exit
/// status is the app's. A service pod's app (its "systemd") gets its
/// notify socket at NOTIFY_SOCKET, without the VM's namespaces, cgroups
/// and mounts.
fn supervised(
    spec_path: Option<&CStr>,
    exec_socket: Option<&CStr>,
    notify_socket: Option<&CStr>,
) -> Result<i32, Fatal> {
    let path = spec_path
        .ok_or(InitError::Usage)
        .map_err(fatal("arguments"))?
        .to_string_lossy()
        .into_owned();
    let spec = read_spec(&path).map_err(fatal("pod spec"))?;
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes how orphans of
    // this process are reparented.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })
        .map_err(InitError::Subreaper)
        .map_err(fatal("supervise"))?;
    let mut cfg = AppConfig::from_spec(&spec).map_err(fatal("app"))?;
    // PID 1 in the VM holds every capability; these tests may run without
    // CAP_SETPCAP, and then the bounding set stays as it is (the other sets
    // are lowered, which needs no privilege).
    if !caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false)
    {
        cfg.confinement.drop_bounding.clear();
    }
    let listener = match exec_socket {
        Some(p) => Some(
            std::os::unix::net::UnixListener::bind(p.to_string_lossy().as_ref())
                .map_err(fatal("exec socket"))?,
        ),
        None => None,
    };
    let mut service = None;
    if spec.service.is_some() {
        let path = notify_socket
            .ok_or(InitError::Usage)
            .map_err(fatal("arguments"))?
            .to_string_lossy()
            .into_owned();
        let notify = service::bind_notify(&path).map_err(fatal("notify socket"))?;
        service = ServicePrep::new(&spec, &mut cfg, notify, &path);
    }
    let sfd = reaper::sigchld_fd().map_err(fatal("signals"))?;
    // SAFETY: fd 0 is the control socket the test handed us; from here on
    // it is owned by the session.
    let conn = Conn::new(unsafe { OwnedFd::from_raw_fd(0) });
    let main = session::start_main(conn, &cfg, service.is_some()).map_err(fatal("app"))?;
    let app_pid = main.pid();
    let policy = ExecPolicy {
        confinement: cfg.confinement.clone(),
        drop_ioperm: None,
    };
    let readiness = match service {
        Some(sp) if !main.failed => Some(sp.readiness(&main, &cfg.confinement)),
        _ => None,
    };
    let code = session::run(
        sfd.as_fd(),
        main,
        listener.as_ref().map(|l| l.as_fd()),
        policy,
        readiness,
    )
    .map_err(fatal("supervision"))?;
    reaper::terminate(Some(sfd.as_fd()), Scope::Group(app_pid));
    Ok(code)
}

// -------------------------------------------------------------- common --

/// Read, parse and validate the spec: open + one read (+ more only if the
/// file fills the buffer). A short read of a regular file is its end; the fd
/// is close-on-exec and left open (one syscall saved).
fn read_spec(path: &str) -> Result<PodSpec, InitError> {
    let c = CString::new(path).map_err(|_| InitError::OpenSpec(path.into(), Errno::EINVAL))?;
    let file = sys::open(&c, libc::O_RDONLY).map_err(|e| InitError::OpenSpec(path.into(), e))?;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        let spare = buf.spare_capacity_mut();
        let want = spare.len();
        // SAFETY: reads at most `want` bytes into the vector's spare capacity.
        let n = unsafe { libc::read(file.as_raw_fd(), spare.as_mut_ptr().cast(), want) };
        let n = usize::try_from(Errno::result(n).map_err(|e| InitError::ReadSpec(path.into(), e))?)
            .unwrap_or(0);
        // SAFETY: read initialised n <= want bytes past the current length.
        unsafe { buf.set_len(buf.len() + n) };
        if n == 0 || n < want {
            break;
        }
        buf.reserve(buf.capacity());
    }
    std::mem::forget(file);
    let text = String::from_utf8(buf).map_err(|_| InitError::SpecUtf8(path.into()))?;
    let spec = PodSpec::from_json(&text)?;
    spec.validate()?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_spec_parses_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pod.json");
        let mut spec = test_support::spec();
        // Big enough to need more than one read.
        spec.app.env = (0..4000).map(|i| format!("VAR_{i}=value-{i}")).collect();
        std::fs::write(&p, spec.to_json()).unwrap();
        let got = read_spec(p.to_str().unwrap()).unwrap();
        assert_eq!(got, spec);

        spec.hostname = "bad_host".into();
        std::fs::write(&p, spec.to_json()).unwrap();
        let err = read_spec(p.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("hostname"), "{err}");

        let err = read_spec("/nonexistent/pod.json").unwrap_err();
        assert_eq!(
            berth_spec::ErrorChain(&err).to_string(),
            "cannot open /nonexistent/pod.json: ENOENT: No such file or directory"
        );
    }

    #[test]
    fn fatal_lines_name_the_step_and_cause() {
        let f = fatal("root filesystem")(mounts::MountError::Mount {
            fstype: "virtiofs".into(),
            source_path: "rootfs".into(),
            target: "/newroot".into(),
            source: Errno::ENODEV,
        });
        assert_eq!(
            f.to_string(),
            "root filesystem: cannot mount virtiofs rootfs on /newroot: ENODEV: No such device"
        );
        let f = fatal("console")(console::ConsoleError::Open(Errno::ENOENT));
        assert_eq!(
            f.to_string(),
            "console: cannot open /dev/console: ENOENT: No such file or directory"
        );
    }
}

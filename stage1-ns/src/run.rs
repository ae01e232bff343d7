//! `berth-stage1-ns run POD_DIR`: create the namespaces and cgroup, start the
//! pod's init, supervise it, record its exit status, clean up.
//!
//! The recipe ([`start_and_wait`]): load the spec and take the life lock;
//! prepare what init needs (confinement, streams, the channel); clone init
//! into its namespaces; while it builds the mounts, place it in the pod's
//! cgroup (limits, device policy) and plug in its network; say `go`; relay
//! the start report; supervise; record the status and release everything.

use crate::chan::{self, Chan};
use crate::init::{self, InitArgs};
use crate::security::Confinement;
use crate::supervise::{supervise, Forward, Notify, PodStdio, Streams};
use anyhow::{Context, Result};
use berth_spec::cgroup::{self, PodCgroup};
use berth_spec::init_msg::InitMessage;
use berth_spec::report::StartReport;
use berth_spec::state::{self, PassedFds, Ready};
use berth_spec::systemd::{self, Placement};
use berth_spec::{ErrorChain, NetworkMode, PodDir, PodSpec};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, OwnedFd};

/// Stack for the cloned init. It only runs set-up code and a small loop, and
/// the pages are touched lazily, so the size costs nothing until used.
const INIT_STACK_SIZE: usize = 1 << 20;

pub fn run(pod: &PodDir, pass: &PassedFds) -> Result<i32> {
    let mut ready = Ready::from_env();
    match start_and_wait(pod, pass, &mut ready) {
        Ok(code) => Ok(code),
        Err(e) => {
            ready.send(&StartReport::setup_failed(format!("{e:#}")));
            Err(e)
        }
    }
}

fn start_and_wait(pod: &PodDir, pass: &PassedFds, ready: &mut Ready) -> Result<i32> {
    let t0 = std::time::Instant::now();
    let step = |what: &str| log::debug!("stage1-ns: {what} after {:?}", t0.elapsed());
    let spec = PodSpec::load(pod).context("cannot load the pod spec")?;
    let _lock = state::take_life_lock(pod)?;
    let _ = std::fs::remove_file(pod.status_file());
    let _ = std::fs::remove_file(pod.exit_reason_file());
    let confinement = Confinement::from_spec(&spec)?;
    let handoff = match &spec.oci {
        Some(o) => Some(crate::oci::Handoff::open(o, _lock.raw_fd())?),
        None => None,
    };
    if let Some(size) = spec.resources.disk {
        berth_spec::disk::ensure_image(pod, size)?;
    }
    // A service pod's systemd reports READY=1 here (init mounts it at
    // /run/host/notify).
    let notify = match &spec.service {
        Some(_) => Some(bind_notify(pod, spec.security.userns.as_ref())?),
        None => None,
    };
    let placement = systemd::placement(&spec)?;
    systemd::prepare(&placement, &spec)?;
    // Recorded before any process is placed in it: whatever happens next,
    // `gc` knows which cgroup to remove. (A scope's is known once
    // machined made it.)
    if let Some(rel) = placement.pod_cgroup() {
        cgroup::record(pod, &rel)?;
    }
    let handled = init::handled_signals();
    handled
        .thread_block()
        .context("cannot block signals for the signalfd")?;
    let sfd = SignalFd::with_flags(&handled, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("cannot create signalfd")?;
    // An OCI pod's streams are the caller's, whatever they are: this
    // stage1 leaves before the app starts.
    let (streams, pod_stdio) = if spec.stdio.tty || spec.oci.is_some() {
        (None, PodStdio::default())
    } else {
        let (s, p) = Streams::for_pod(spec.stdio.interactive)
            .context("cannot create the pipes for the pod's streams")?;
        (Some(s), p)
    };
    step("spec loaded");

    if let Some(u) = &spec.security.userns {
        crate::userns::prepare_dirs(pod, &spec, u)?;
    }
    let (ours, theirs) = chan::pair()?;
    let child = clone_init(&InitArgs {
        spec: &spec,
        pod,
        chan: &theirs,
        confinement: &confinement,
        stdio: &pod_stdio,
        pass,
        handoff: handoff.as_ref(),
    })?;
    drop(theirs);
    drop(pod_stdio);
    step("cloned init");
    if let Some(u) = &spec.security.userns {
        let mapped = crate::userns::write_maps(child.as_raw(), u).and_then(|()| {
            let trees = crate::userns::idmapped_mounts(child.as_raw(), &spec)?;
            let fds: Vec<_> = trees.iter().map(|t| t.as_raw_fd()).collect();
            ours.send_fds(&InitMessage::Mapped, &fds)?;
            Ok(())
        });
        if let Err(e) = mapped {
            abort_child(child);
            return Err(e);
        }
    }
    // The cgroup and network are set up while init builds the pod's mounts.
    let (cgroup, proxy) = match place_and_plug(pod, &spec, &placement, child, &ours) {
        Ok(p) => p,
        Err(e) => {
            // init may have failed first (and its report says why better
            // than our broken pipe does).
            let e = match init_failure(&ours) {
                Some(message) => anyhow::anyhow!(message),
                None => e,
            };
            abort_child(child);
            release_after_failure(pod, &spec);
            return Err(e);
        }
    };
    step("network attached, go");
    if let Some(o) = &spec.oci {
        if let Err(e) = crate::oci::create_hooks(o, child.as_raw()) {
            abort_child(child);
            release(pod, &spec, &cgroup);
            return Err(e.into());
        }
    }

    let master = match await_start(&ours, ready, spec.service.is_some())? {
        Awaited::Started(master) => master,
        Awaited::Failed(code) => {
            let status = waitpid(child, None).ok().and_then(crate::app::exit_code);
            finish(pod, &spec, &cgroup, status.unwrap_or(code))?;
            return Ok(code);
        }
        Awaited::InitGone => {
            let status = waitpid(child, None).ok().and_then(crate::app::exit_code);
            release(pod, &spec, &cgroup);
            anyhow::bail!(
                "the pod's init exited during set-up (status {})",
                status.map_or("unknown".into(), |s| s.to_string())
            );
        }
    };
    step("app started");
    if let Some(o) = &spec.oci {
        // The hand-off: init waits for `start` on its own from here.
        if let (Some(sock), Some(m)) = (&o.console_socket, &master) {
            crate::oci::send_console(sock, m)?;
        }
        drop(proxy);
        return Ok(0);
    }
    let streams = match (master, streams) {
        (Some(master), _) => Streams::Pty {
            master,
            stdin: spec.stdio.interactive,
            escape: None,
        },
        (None, Some(s)) => s,
        (None, None) => Streams::Direct,
    };
    let code = match &notify {
        Some(sock) => {
            let mut on_ready = || {
                let report = crate::service::check_units(pod, &spec);
                if let StartReport::Failed { message, .. } = &report {
                    log::warn!("stage1-ns: {message}: halting the pod");
                    // SIGRTMIN+3: systemd's halt.
                    let _ = kill_raw(child, libc::SIGRTMIN() + 3);
                }
                ready.send(&report);
            };
            supervise(
                child,
                &sfd,
                streams,
                Some(Notify {
                    sock,
                    on_ready: &mut on_ready,
                }),
                Forward::Systemd,
            )
        }
        None => supervise(child, &sfd, streams, None, Forward::AsIs),
    };
    if !ready.sent() {
        ready.send(&StartReport::setup_failed(format!(
            "systemd exited (status {code}) before the pod's units were active; see `berth logs {}`",
            spec.name
        )));
    }
    step("pod exited");
    drop(proxy);
    finish(pod, &spec, &cgroup, code)?;
    step("cleaned up");
    state::remove_if_requested(pod);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&handled), None);
    Ok(code)
}

/// Clone the pod's init into its new namespaces.
fn clone_init(a: &InitArgs) -> Result<Pid> {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if a.spec.network.mode != NetworkMode::Host {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Some(o) = &a.spec.oci {
        flags = crate::oci::clone_flags(o);
    }
    if a.spec.security.userns.is_some() {
        // The other namespaces are created together with it, and so
        // belong to it.
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    let mut stack = vec![0u8; INIT_STACK_SIZE];
    let cb = Box::new(|| init::main(*a));
    // SAFETY: without CLONE_VM the child runs `cb` on `stack` in its own copy
    // of our (single-threaded) address space, exactly like fork; it never
    // returns into our frames because nix exits with the callback's value.
    let child = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
        .context("cannot create the pod's namespaces (clone)")?;
    Ok(child)
}

/// While init builds its mounts: record its pid, move it into the pod's
/// cgroup and apply the limits and device policy, plug its network in, and
/// let it go on. Returns the localhost port proxy (`-p`).
fn place_and_plug(
    pod: &PodDir,
    spec: &PodSpec,
    placement: &Placement,
    child: Pid,
    chan: &Chan,
) -> Result<(PodCgroup, Option<berth_net::proxy::LocalProxy>)> {
    state::write_file(&pod.pid_file(), &child.to_string())?;
    let mut proxy = None;
    let mut ifindices = Vec::new();
    if let Some(net) = &spec.network.private {
        berth_net::attach_veth(net, child.as_raw())
            .context("cannot plug the pod into the bridge")?;
        ifindices.extend(ifindex(&net.host_ifname));
        proxy = Some(berth_net::proxy::start(&net.ports, net.address)?);
    }
    let cgroup = systemd::place(&systemd::Place {
        pod,
        spec,
        placement,
        leader: child.as_raw(),
        members: Vec::new(),
        root_directory: &pod.rootfs(),
        ifindices,
        limits: &spec.resources,
        devices: &spec.devices,
    })?;
    if let (Some(_), Some(u)) = (&spec.service, &spec.security.userns) {
        cgroup.delegate_to(u.host_uid, u.host_gid)?;
    }
    chan.send(&InitMessage::Go, None)?;
    Ok((cgroup, proxy))
}

/// A host interface's index, for machined.
fn ifindex(name: &str) -> Option<i32> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A start that failed before the cgroup was in hand: whatever was
/// recorded and leased goes.
fn release_after_failure(pod: &PodDir, spec: &PodSpec) {
    berth_net::release_pod(&pod.state_root(), spec);
    if let Some(rel) = cgroup::recorded(pod, Some(spec)) {
        if let Ok(c) = PodCgroup::open(&rel) {
            let _ = c.remove();
        }
    }
}

/// A failure init reported already (non-blocking: only what is queued).
fn init_failure(chan: &Chan) -> Option<String> {
    let mut fds = [nix::poll::PollFd::new(
        // SAFETY: the channel's fd is open for the duration of this call.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(chan.raw_fd()) },
        nix::poll::PollFlags::POLLIN,
    )];
    if !matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)), Ok(n) if n > 0) {
        return None;
    }
    loop {
        match chan.recv() {
            Ok(Some((InitMessage::Failed { message, .. }, _))) => return Some(message),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

enum Awaited {
    /// The app runs; the pty master with a terminal.
    Started(Option<OwnedFd>),
    /// It did not start; the report went to stage0, exit with this code.
    Failed(i32),
    /// init exited without a report.
    InitGone,
}

/// init's start-up messages: optional tty master, then started/failed. A
/// service pod's init execs systemd, which closes the channel: the start is
/// reported later, once systemd is ready and its units are active.
fn await_start(chan: &Chan, ready: &mut Ready, service: bool) -> Result<Awaited> {
    let mut master = None;
    loop {
        match chan.recv()? {
            None if service && master.is_some() => return Ok(Awaited::Started(master)),
            Some((InitMessage::Tty, fd)) => master = fd,
            Some((InitMessage::Started, _)) => {
                ready.send(&StartReport::Started);
                return Ok(Awaited::Started(master));
            }
            Some((InitMessage::Failed { code, message }, _)) => {
                // Exec failures come with their own exit code (126/127),
                // set-up failures with 125.
                eprintln!("berth: {message}");
                ready.send(&StartReport::Failed { code, message });
                return Ok(Awaited::Failed(code));
            }
            Some((InitMessage::Go | InitMessage::Mapped, _)) => {}
            None => return Ok(Awaited::InitGone),
        }
    }
}

/// Release the pod's network (if private), record the exit status (and
/// why, when the kernel's OOM killer ended it) and release the cgroup.
fn finish(pod: &PodDir, spec: &PodSpec, cgroup: &PodCgroup, code: i32) -> Result<()> {
    if cgroup.oom_killed() {
        let _ = state::write_file(&pod.exit_reason_file(), "oom-killed\n");
    }
    state::write_file(&pod.status_file(), &format!("{code}\n"))?;
    release(pod, spec, cgroup);
    Ok(())
}

/// Give back the pod's cgroup, address, interfaces and port rules
/// (idempotent; a failure is logged, and `gc` retries).
fn release(pod: &PodDir, spec: &PodSpec, cgroup: &PodCgroup) {
    berth_net::release_pod(&pod.state_root(), spec);
    if let Err(e) = cgroup.remove() {
        log::warn!("stage1-ns: {}", ErrorChain(&e));
    }
}

/// Bind the service pod's notify socket in the pod directory (owned by
/// the pod's root in a user namespace: sending to it needs write access).
fn bind_notify(
    pod: &PodDir,
    userns: Option<&berth_spec::UserNamespace>,
) -> Result<std::os::unix::net::UnixDatagram> {
    let path = pod.notify_socket();
    let _ = std::fs::remove_file(&path);
    let sock = std::os::unix::net::UnixDatagram::bind(&path)
        .with_context(|| format!("cannot bind {}", path.display()))?;
    if let Some(u) = userns {
        std::os::unix::fs::chown(&path, Some(u.host_uid), Some(u.host_gid))
            .with_context(|| format!("cannot give {} to the pod's root", path.display()))?;
    }
    sock.set_nonblocking(true)
        .context("cannot make the notify socket non-blocking")?;
    Ok(sock)
}

fn kill_raw(pid: Pid, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) with a pid and a signal number; no memory involved.
    if unsafe { libc::kill(pid.as_raw(), sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn abort_child(child: Pid) {
    let _ = kill(child, Signal::SIGKILL);
    let _ = waitpid(child, None);
}

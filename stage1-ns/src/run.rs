//! `berth-stage1-ns run POD_DIR`: create the namespaces and cgroup, start the
//! pod's init, supervise it, record its exit status, clean up.

use crate::app::ErrChain;
use crate::cgroups::PodCgroup;
use crate::chan;
use crate::init::{self, InitArgs};
use crate::security::Confinement;
use crate::supervise::supervise;
use anyhow::{bail, Context, Result};
use berth_spec::state::{self, Ready};
use berth_spec::{NetworkMode, PodDir, PodSpec, EXIT_BERTH_FAILED};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// Stack for the cloned init. It only runs set-up code and a small loop, and
/// the pages are touched lazily, so the size costs nothing until used.
const INIT_STACK_SIZE: usize = 1 << 20;

pub fn run(pod: &PodDir) -> Result<i32> {
    let mut ready = Ready::from_env();
    match start_and_wait(pod, &mut ready) {
        Ok(code) => Ok(code),
        Err(e) => {
            ready.send(&format!(
                "error {EXIT_BERTH_FAILED} {}",
                ErrChain(e.as_ref())
            ));
            Err(e)
        }
    }
}

fn start_and_wait(pod: &PodDir, ready: &mut Ready) -> Result<i32> {
    let t0 = std::time::Instant::now();
    let step = |what: &str| log::debug!("stage1-ns: {what} after {:?}", t0.elapsed());
    let spec = PodSpec::load(pod).context("cannot load the pod spec")?;
    let _lock = state::take_life_lock(pod)?;
    let _ = std::fs::remove_file(pod.status_file());
    let confinement = Confinement::from_spec(&spec)?;
    let private = spec.network.private.as_ref();
    if let Some(net) = private {
        // Into the overlay's upper layer before it is mounted: the pod sees
        // them as its /etc/resolv.conf and /etc/hosts.
        berth_net::etc::write(&pod.upper(), &spec.hostname, net)
            .context("cannot write the pod's /etc/resolv.conf and /etc/hosts")?;
    }
    let handled = init::handled_signals();
    handled
        .thread_block()
        .context("cannot block signals for the signalfd")?;
    let sfd = SignalFd::with_flags(&handled, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("cannot create signalfd")?;
    step("spec loaded");

    let (ours, theirs) = chan::pair()?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.network.mode != NetworkMode::Host {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let ready_fd = ready.raw_fd();
    let mut stack = vec![0u8; INIT_STACK_SIZE];
    let cb = Box::new(|| {
        // The child owns nothing of stage0's report pipe.
        if let Some(fd) = ready_fd {
            let _ = nix::unistd::close(fd);
        }
        init::main(InitArgs {
            spec: &spec,
            pod,
            chan: &theirs,
            confinement: &confinement,
        })
    });
    // SAFETY: without CLONE_VM the child runs `cb` on `stack` in its own copy
    // of our (single-threaded) address space, exactly like fork; it never
    // returns into our frames because nix exits with the callback's value.
    let child = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
        .context("cannot create the pod's namespaces (clone)")?;
    drop(theirs);
    step("cloned init");
    // The cgroup is set up while init builds the pod's mounts.
    let cgroup = match PodCgroup::open(&spec.name) {
        Ok(c) => c,
        Err(e) => {
            abort_child(child);
            return Err(e.into());
        }
    };

    let started = (|| -> Result<Option<berth_net::proxy::LocalProxy>> {
        state::write_file(&pod.pid_file(), &child.to_string())?;
        cgroup.add(child.as_raw())?;
        cgroup.apply(&spec.resources)?;
        step("cgroup joined and limited");
        let mut proxy = None;
        if let Some(net) = private {
            berth_net::attach_veth(net, child.as_raw())
                .context("cannot plug the pod into the bridge")?;
            proxy = Some(berth_net::proxy::start(&net.ports, net.address)?);
            step("network attached");
        }
        ours.send("go", None)?;
        Ok(proxy)
    })();
    let _proxy = match started {
        Ok(p) => p,
        Err(e) => {
            abort_child(child);
            let _ = cgroup.remove();
            release_net(pod, &spec);
            return Err(e);
        }
    };

    // Start-up messages from init: optional tty master, then ok/error.
    let mut master = None;
    loop {
        match ours.recv()? {
            Some((m, fd)) if m == "tty" => master = fd,
            Some((m, _)) if m == "ok" => {
                step("app started");
                ready.send("ok");
                break;
            }
            Some((m, _)) if m.starts_with("error ") => {
                // Exec failures are reported by the app launcher with their
                // own exit code (126/127); set-up failures with 125.
                ready.send(&m);
                let (code, msg) = m[6..].split_once(' ').unwrap_or(("125", &m[6..]));
                eprintln!("berth: {msg}");
                let code = code.parse().unwrap_or(EXIT_BERTH_FAILED);
                let status = waitpid(child, None).ok().and_then(crate::app::exit_code);
                finish(pod, &spec, &cgroup, status.unwrap_or(code))?;
                return Ok(code);
            }
            Some(_) => {}
            None => {
                let status = waitpid(child, None).ok().and_then(crate::app::exit_code);
                let _ = cgroup.remove();
                release_net(pod, &spec);
                bail!(
                    "the pod's init exited during set-up (status {})",
                    status.map_or("unknown".into(), |s| s.to_string())
                );
            }
        }
    }
    let code = supervise(child, &sfd, master, spec.stdio.interactive);
    step("pod exited");
    finish(pod, &spec, &cgroup, code)?;
    step("cleaned up");
    state::remove_if_requested(pod);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&handled), None);
    Ok(code)
}

/// Release the pod's network (if private), record the exit status and
/// release the pod's cgroup.
fn finish(pod: &PodDir, spec: &PodSpec, cgroup: &PodCgroup, code: i32) -> Result<()> {
    release_net(pod, spec);
    state::write_file(&pod.status_file(), &format!("{code}\n"))?;
    if let Err(e) = cgroup.remove() {
        log::warn!("stage1-ns: {}", ErrChain(&e));
    }
    Ok(())
}

/// Give back the pod's address, interfaces and port rules (idempotent; a
/// failure is logged, and `gc` retries).
pub fn release_net(pod: &PodDir, spec: &PodSpec) {
    if let Some(net) = &spec.network.private {
        if let Err(e) = berth_net::release(&pod.state_root(), &spec.uuid, net) {
            log::warn!(
                "stage1-ns: cannot release the pod's network: {}",
                ErrChain(&e)
            );
        }
    }
}

fn abort_child(child: Pid) {
    let _ = kill(child, Signal::SIGKILL);
    let _ = waitpid(child, None);
}

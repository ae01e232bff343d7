//! `berth-stage1-ns exec POD_DIR [options] -- CMD...`: run a command inside a
//! running pod (its namespaces, cgroup, confinement), relay its stdio and
//! return its exit status.
//!
//! The entering process is hostile territory's neighbour: once it has
//! joined the pod's namespaces, pod root could reach it until it has become
//! the pod's process (the runc CVE-2019-5736 family). So it is made
//! non-dumpable before joining (nothing in the pod may ptrace it or open its
//! /proc/PID/{exe,mem,fd}); when the pod is allowed CAP_SYS_PTRACE (which
//! overrides that), it first re-executes itself from a sealed memfd copy
//! ([`crate::sealed`]), so /proc/PID/exe never names the host binary; it
//! holds no host terminal (a pty of the pod's own with -t, pipes otherwise);
//! and it keeps no fd but 0, 1, 2 at the command's exec.

use crate::app::{self, Launch, Started, Stdio};
use crate::init;
use crate::security::Confinement;
use crate::supervise::{supervise, Forward, Streams};
use anyhow::{Context, Result};
use berth_spec::cgroup::{self, PodCgroup};
use berth_spec::stage1_cli::ExecOptions;
use berth_spec::state::PassedFds;
use berth_spec::{state, PodDir, PodSpec};
use nix::sched::CloneFlags;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::fs::File;
use std::path::PathBuf;

/// Namespaces joined, in this order; mnt last because it changes our root.
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

pub fn exec(pod: &PodDir, opts: ExecOptions) -> Result<i32> {
    let mut spec = PodSpec::load(pod).context("cannot load the pod spec")?;
    if spec.security.capabilities.iter().any(|c| c == "sys_ptrace") {
        crate::sealed::reexec_sealed().context("cannot re-execute from a sealed copy")?;
    }
    nix::sys::prctl::set_dumpable(false).context("cannot make the exec process non-dumpable")?;
    let leader = state::running_leader(pod)?;
    if let Some(u) = opts.user {
        spec.app.user = u;
    }
    spec.app.env.extend(opts.env);
    spec.stdio.tty = opts.tty;
    let confinement = Confinement::from_spec(&spec)?;
    // Open every namespace first: /proc changes meaning once we join mnt.
    // A pod's user namespace goes first: the others belong to it.
    let mut ns = Vec::new();
    let userns = spec.security.userns.is_some();
    let user: &[(&str, CloneFlags)] = if userns {
        &[("user", CloneFlags::CLONE_NEWUSER)]
    } else {
        &[]
    };
    for (name, flag) in user.iter().chain(NAMESPACES) {
        let path = format!("/proc/{leader}/ns/{name}");
        let f = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        ns.push((f, *flag, *name));
    }
    let relative = cgroup::recorded(pod, Some(&spec)).context("the pod records no cgroup")?;
    PodCgroup::open(&relative)?.add(nix::unistd::getpid().as_raw())?;
    for (f, flag, name) in &ns {
        nix::sched::setns(f, *flag)
            .with_context(|| format!("cannot join the pod's {name} namespace"))?;
    }
    drop(ns);
    if userns {
        crate::userns::become_root().context("cannot become root of the pod's user namespace")?;
    }
    let handled = init::handled_signals();
    handled.thread_block().context("cannot block signals")?;
    let sfd = SignalFd::with_flags(&handled, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("cannot create signalfd")?;
    let (streams, stdio, pipes) = if opts.tty {
        use nix::fcntl::OFlag;
        let m = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .context("cannot allocate a terminal in the pod")?;
        nix::pty::grantpt(&m).context("grantpt")?;
        nix::pty::unlockpt(&m).context("unlockpt")?;
        let slave = PathBuf::from(nix::pty::ptsname_r(&m).context("ptsname")?);
        // SAFETY: into_raw_fd hands us sole ownership of the master fd.
        let owned = unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(
                std::os::fd::IntoRawFd::into_raw_fd(m),
            )
        };
        (
            Streams::Pty {
                master: owned,
                stdin: opts.interactive,
                escape: opts.escape,
            },
            Stdio::Tty(slave),
            None,
        )
    } else {
        let (s, p) = Streams::for_pod(opts.interactive)
            .context("cannot create the pipes for the command's streams")?;
        (
            s,
            Stdio::Inherit {
                stdin: opts.interactive,
                pipes: None,
            },
            Some(p),
        )
    };
    let stdio = match (stdio, &pipes) {
        (Stdio::Inherit { stdin, .. }, Some(p)) => Stdio::Inherit {
            stdin,
            pipes: Some(p),
        },
        (other, _) => other,
    };
    let launch = Launch {
        argv: opts.argv,
        env: spec.effective_env(),
        cwd: opts.cwd.unwrap_or_else(|| spec.app.cwd.clone()),
        stdio,
        confinement: &confinement,
        pass: &PassedFds::default(),
    };
    let started = app::launch(&launch)?;
    drop(pipes);
    match started {
        Started::Running(pid) => Ok(supervise(pid, &sfd, streams, None, Forward::AsIs)),
        Started::Failed { pid, code, message } => {
            let _ = nix::sys::wait::waitpid(pid, None);
            eprintln!("berth: {message}");
            Ok(code)
        }
    }
}

/// Run `argv` in the running pod through this stage1's own `exec` verb and
/// return what it printed (see `berth_spec::state::capture_output`).
pub fn capture(pod: &PodDir, argv: &[String]) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("exec").arg(pod.path()).arg("--").args(argv);
    berth_spec::state::capture_output(&mut cmd).context("cannot run an exec in the pod")
}

//! `berth-stage1-ns exec POD_DIR [options] -- CMD...`: run a command inside a
//! running pod (its namespaces, cgroup, confinement), relay its stdio and
//! return its exit status.

use crate::app::{self, Launch, Started, Stdio};
use crate::cgroups::PodCgroup;
use crate::init;
use crate::security::Confinement;
use crate::supervise::supervise;
use anyhow::{Context, Result};
use berth_spec::stage1_cli::ExecOptions;
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
    let leader = state::running_leader(pod)?;
    if let Some(u) = opts.user {
        spec.app.user = u;
    }
    spec.app.env.extend(opts.env);
    spec.stdio.tty = opts.tty;
    let confinement = Confinement::from_spec(&spec)?;
    // Open every namespace first: /proc changes meaning once we join mnt.
    let mut ns = Vec::new();
    for (name, flag) in NAMESPACES {
        let path = format!("/proc/{leader}/ns/{name}");
        let f = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        ns.push((f, *flag, *name));
    }
    PodCgroup::open(&spec.name)?.add(nix::unistd::getpid().as_raw())?;
    for (f, flag, name) in &ns {
        nix::sched::setns(f, *flag)
            .with_context(|| format!("cannot join the pod's {name} namespace"))?;
    }
    drop(ns);
    let handled = init::handled_signals();
    handled.thread_block().context("cannot block signals")?;
    let sfd = SignalFd::with_flags(&handled, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("cannot create signalfd")?;
    let (master, stdio) = if opts.tty {
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
        (Some(owned), Stdio::Tty(slave))
    } else {
        (
            None,
            Stdio::Inherit {
                stdin: opts.interactive,
            },
        )
    };
    let launch = Launch {
        argv: opts.argv,
        env: spec.effective_env(),
        cwd: opts.cwd.unwrap_or_else(|| spec.app.cwd.clone()),
        stdio,
        confinement: &confinement,
    };
    match app::launch(&launch)? {
        Started::Running(pid) => Ok(supervise(pid, &sfd, master, opts.interactive)),
        Started::Failed { pid, code, message } => {
            let _ = nix::sys::wait::waitpid(pid, None);
            eprintln!("berth: {message}");
            Ok(code)
        }
    }
}

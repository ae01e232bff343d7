//! stage0's launcher: start a pod directory's stage1 and follow it until the
//! start report (detached) or until it exits (foreground). `berth run`,
//! `berth start` and the generated host unit all come through here.
//!
//! The steps, in order:
//! 1. the caller holds the pod's life lock (a claimed new pod, or an existing
//!    pod locked by [`lock_existing`]);
//! 2. [`lease_network`]: with `--net private`, lease an address (and ports)
//!    and write it into `pod.json`; a [`NetGuard`] gives it back unless the
//!    pod starts;
//! 3. [`spawn`]: run `<stage1> run POD_DIR` with the locked fd, the start
//!    report pipe and the fds the caller passes through ([`PassFds`]);
//! 4. read the [`StartReport`]; detached: return once it is in; foreground:
//!    relay signals until the stage1 exits, then return its status;
//! 5. a pod that never started is collected (`<stage1> gc`); with
//!    `remove_on_exit`, so is one that ran.

use super::fds::PassFds;
use super::net::NetGuard;
use super::stage1;
use super::store::Store;
use anyhow::{bail, Context, Result};
use berth_spec::report::StartReport;
use berth_spec::{NetworkMode, PodDir, PodSpec, EXIT_BERTH_FAILED};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::fs::File;
use std::io::BufReader;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// How stage0 follows the stage1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// stage0 stays until the pod ends and exits with its status.
    Foreground,
    /// stage0 returns once the pod has started; output goes to `app.log`.
    Detached,
}

/// One start of a pod.
pub struct Launch<'a> {
    pub store: &'a Store,
    pub pod: &'a PodDir,
    /// The pod's life lock, held by the caller.
    pub lock: File,
    pub stage1: PathBuf,
    pub attach: Attach,
    /// Remove the pod once it has ended (`--rm`).
    pub remove_on_exit: bool,
    pub pass: PassFds,
}

/// What became of a start.
pub struct Outcome {
    /// `berth`'s exit status.
    pub code: i32,
    /// Did the pod start (its stage1 reported `ok`)?
    pub started: bool,
    /// After a failed start (or a `--rm` pod whose stage1 was killed): was
    /// everything the pod held on the host released? When not, its
    /// directory must stay so that `berth gc` can retry.
    pub collected: bool,
}

/// Take the life lock of an existing pod that is not running.
pub fn lock_existing(pod: &PodDir) -> Result<File> {
    let path = pod.lock_file();
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match berth_spec::state::flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
            bail!("pod {} is already running", super::pod_name(pod))
        }
        Err(e) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Start the pod. Errors are berth's own failures before the stage1 ran;
/// the stage1's verdict is in the [`Outcome`].
pub fn start(l: Launch) -> Result<Outcome> {
    let mut spec = PodSpec::load(l.pod)
        .with_context(|| format!("pod {} has no valid pod.json", super::pod_name(l.pod)))?;
    // The previous run's status and pid describe a pod that is gone.
    for f in [l.pod.status_file(), l.pod.pid_file()] {
        let _ = std::fs::remove_file(f);
    }
    let remove_marker = l.pod.remove_on_exit_file();
    if l.remove_on_exit {
        // Also for foreground runs: if stage0 is killed, the stage1 (or a
        // later `gc`) still knows the pod is to go.
        std::fs::write(&remove_marker, "")
            .with_context(|| format!("cannot write {}", remove_marker.display()))?;
    } else {
        let _ = std::fs::remove_file(&remove_marker);
    }
    let mut guard = lease_network(l.store, l.pod, &mut spec, &l.stage1)?;
    let (ready_rd, ready_wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    let mut cmd = stage1::command(&l.stage1, "run", l.pod, &[]);
    stage1::pass_fds(&mut cmd, l.lock.as_raw_fd(), Some(&ready_wr), &l.pass);
    let outcome = match l.attach {
        Attach::Detached => detached(&l, cmd, ready_rd, ready_wr, &mut guard)?,
        Attach::Foreground => foreground(&l, cmd, ready_rd, ready_wr, guard)?,
    };
    Ok(outcome)
}

/// With `--net private`: lease an address (and the published ports), write
/// it into the pod's spec, and return the guard that releases it unless the
/// pod starts.
fn lease_network(
    store: &Store,
    pod: &PodDir,
    spec: &mut PodSpec,
    stage1: &Path,
) -> Result<Option<NetGuard>> {
    if spec.network.mode != NetworkMode::Private {
        return Ok(None);
    }
    let ports = spec.network.ports.clone();
    let cfg = berth_net::HostConfig::load(store.root())?;
    let req = berth_net::PodRequest {
        name: &spec.name,
        uuid: &spec.uuid,
        ports: &ports,
        kvm: stage1::is_kvm(stage1),
    };
    let net = berth_net::prepare(store.root(), &cfg, &req)?;
    let guard = NetGuard::new(store.root(), &spec.uuid, net.clone());
    spec.network.private = Some(net);
    super::pod::write_spec(pod, spec)?;
    Ok(Some(guard))
}

fn spawn(cmd: &mut Command, stage1: &Path) -> Result<Child> {
    cmd.spawn()
        .with_context(|| format!("cannot start {}", stage1.display()))
}

/// `run -d`, `start`: the stage1 runs in its own session with its output in
/// `app.log`; return once it has reported.
fn detached(
    l: &Launch,
    mut cmd: Command,
    ready_rd: OwnedFd,
    ready_wr: OwnedFd,
    guard: &mut Option<NetGuard>,
) -> Result<Outcome> {
    let log_path = l.pod.app_log();
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().context("cannot duplicate the log fd")?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = spawn(&mut cmd, &l.stage1)?;
    drop(ready_wr);
    let report = StartReport::read_from(&mut BufReader::new(File::from(ready_rd)));
    match report {
        Ok(Some(StartReport::Started)) => {
            if let Some(g) = guard.as_mut() {
                g.disarm();
            }
            // The stage1 goes on alone; it was started in its own session
            // and is reaped by init when it exits.
            drop(child);
            Ok(Outcome {
                code: 0,
                started: true,
                collected: true,
            })
        }
        other => {
            let status = child.wait().ok();
            let code = report_failure(other, status);
            let collected = collect_failed_start(l, guard.take());
            Ok(Outcome {
                code,
                started: false,
                collected,
            })
        }
    }
}

/// Print why a start failed; return `berth`'s exit code.
fn report_failure(
    report: Result<Option<StartReport>, berth_spec::report::ReportError>,
    status: Option<ExitStatus>,
) -> i32 {
    match report {
        Ok(Some(StartReport::Failed { code, message })) => {
            eprintln!("berth: {message}");
            code
        }
        Ok(Some(StartReport::Started)) => 0,
        Ok(None) => {
            eprintln!(
                "berth: the stage1 exited before the pod started ({})",
                status.map_or("unknown status".into(), describe)
            );
            EXIT_BERTH_FAILED
        }
        Err(e) => {
            eprintln!("berth: {e}");
            EXIT_BERTH_FAILED
        }
    }
}

/// A pod that did not start: its stage1 has exited; give back what it held
/// (the network lease first, then whatever the stage1's `gc` verb knows).
/// A pod dir survives only when that clean-up failed, so that `berth gc`
/// can retry it later (the caller's guard removes a new pod's dir otherwise).
fn collect_failed_start(l: &Launch, guard: Option<NetGuard>) -> bool {
    drop(guard);
    // The lock we hand over is the one the stage1 (and processes it forked)
    // held, so its `gc` runs even while they are still on their way out.
    match super::gc::collect(l.pod, &l.stage1, Some(&l.lock)) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("berth: {e:#}");
            false
        }
    }
}

/// `run` in the foreground: forward the signals sent to us to the stage1,
/// wait for it, exit with its status.
fn foreground(
    l: &Launch,
    mut cmd: Command,
    ready_rd: OwnedFd,
    ready_wr: OwnedFd,
    mut guard: Option<NetGuard>,
) -> Result<Outcome> {
    // Terminal-generated signals already reach stage1 directly (it is in
    // our process group), so only signals sent to us by kill(1), systemd…
    // (SI_USER/SI_QUEUE) are forwarded.
    let mut mask = SigSet::empty();
    for s in berth_spec::FORWARDED_SIGNALS {
        if let Ok(sig) = Signal::try_from(*s) {
            mask.add(sig);
        }
    }
    mask.add(Signal::SIGCHLD);
    mask.thread_block().context("cannot block signals")?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("cannot create signalfd")?;
    // SAFETY: the closure only calls sigprocmask, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&SigSet::empty()),
                None,
            )
            .map_err(std::io::Error::from)
        });
    }
    let mut child = spawn(&mut cmd, &l.stage1)?;
    drop(ready_wr);
    // From here the stage1 owns the pod's network; it is released again
    // below once the stage1 has exited (never while it may still run).
    if let Some(g) = guard.as_mut() {
        g.disarm();
    }
    let child_pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut ready = Some(BufReader::new(File::from(ready_rd)));
    let mut report = None;
    let status = loop {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if let Some(r) = &ready {
            fds.push(PollFd::new(r.get_ref().as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let ready_hit = fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
        drop(fds);
        if ready_hit {
            if let Some(mut r) = ready.take() {
                let got = StartReport::read_from(&mut r);
                // Under systemd (berth@NAME.service, `systemd-run -p
                // Type=notify berth run`): ready once the app runs (a
                // service pod: once its units are active).
                match &got {
                    Ok(Some(StartReport::Started)) => super::systemd::notify(
                        true,
                        &format!("pod {} running", super::pod_name(l.pod)),
                    ),
                    Ok(Some(StartReport::Failed { message, .. })) => {
                        super::systemd::notify(false, message)
                    }
                    _ => {}
                }
                report = Some(got);
            }
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            let sig = info.ssi_signo as i32;
            if sig != libc::SIGCHLD
                && (info.ssi_code == libc::SI_USER || info.ssi_code == libc::SI_QUEUE)
            {
                if let Ok(s) = Signal::try_from(sig) {
                    let _ = nix::sys::signal::kill(child_pid, s);
                }
            }
        }
        if let Some(st) = child.try_wait().context("cannot wait for stage1")? {
            break st;
        }
    };
    // The report may have been written just before the stage1 exited.
    let report = match (report, ready) {
        (Some(r), _) => r,
        (None, Some(mut r)) => StartReport::read_from(&mut r),
        (None, None) => Ok(None),
    };
    let started = matches!(report, Ok(Some(StartReport::Started)));
    let code = match status.code().or_else(|| status.signal().map(|s| 128 + s)) {
        Some(c) if started => c,
        _ if started => EXIT_BERTH_FAILED,
        // A failed start is reported by the stage1's message and code; a
        // stage1 that printed nothing gets a message from us.
        _ => match &report {
            Ok(Some(StartReport::Failed { code, .. })) => *code,
            _ => report_failure(report, Some(status)),
        },
    };
    // Whatever the stage1 did, its pod's network is no longer needed
    // (idempotent; a stage1 that released already makes this a no-op).
    if let Some(mut g) = guard {
        g.rearm();
    }
    let mut collected = true;
    if !started || (l.remove_on_exit && !l.pod.status_file().exists()) {
        // A pod that never started is collected like a failed create; so is
        // a --rm pod whose stage1 died without removing it. (A stage1 that
        // recorded a status has released everything itself.)
        collected = collect_failed_start(l, None);
        if started && collected {
            let _ = super::store::remove(l.pod);
        }
    }
    Ok(Outcome {
        code,
        started,
        collected,
    })
}

fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

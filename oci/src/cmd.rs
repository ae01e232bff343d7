//! The verbs.

use crate::bundle::{self, Stage1};
use crate::state::{self, Container, Saved, Status};
use crate::{Cli, Verb};
use anyhow::{bail, Context, Result};
use berth_spec::report::StartReport;
use berth_spec::{PodDir, ENV_LOCK_FD, ENV_PASS_FDS, ENV_READY_FD};
use std::io::{BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The bundle directory (config.json and the root filesystem).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write the container's pid (its leader, which exits with the app's
    /// status) here.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Unix socket receiving the pty master (process.terminal).
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Pass this many fds (from 3) to the process (ns stage1 only).
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted: berth always pivots into the root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted: berth makes no session keyring.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// run only: return once started.
    #[arg(short, long)]
    detach: bool,
    id: String,
}

#[derive(clap::Args)]
pub struct ExecArgs {
    /// A JSON file with the runtime-spec `process` to run.
    #[arg(short, long)]
    process: Option<PathBuf>,
    #[arg(short, long)]
    tty: bool,
    /// Return once started; the process is left to the caller's reaper.
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long)]
    cwd: Option<String>,
    #[arg(short, long)]
    env: Vec<String>,
    /// UID[:GID]
    #[arg(short, long)]
    user: Option<String>,
    /// Accepted for compatibility; ignored.
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<String>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for compatibility; the container's capabilities apply.
    #[arg(short, long)]
    cap: Vec<String>,
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    #[arg(long = "process-label")]
    process_label: Option<String>,
    #[arg(long)]
    apparmor: Option<String>,
    #[arg(long = "ignore-paused")]
    ignore_paused: bool,
    #[arg(long)]
    cgroup: Option<String>,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn dispatch(cli: &Cli) -> Result<i32> {
    match &cli.verb {
        Verb::Create(a) => create(cli, a).map(|_| 0),
        Verb::Start { id } => start(cli, id).map(|()| 0),
        Verb::Run(a) => run(cli, a),
        Verb::State { id } => {
            let c = Container::load(&cli.root, id)?;
            println!("{}", serde_json::to_string_pretty(&c.state_json())?);
            Ok(0)
        }
        Verb::Kill { id, signal, all } => kill(cli, id, signal.as_deref(), *all).map(|()| 0),
        Verb::Delete { id, force } => delete(cli, id, *force).map(|()| 0),
        Verb::Exec(a) => exec(cli, a),
        Verb::Ps {
            format,
            id,
            ps_args,
        } => ps(cli, id, format, ps_args).map(|()| 0),
        Verb::Features => {
            println!("{}", serde_json::to_string_pretty(&features())?);
            Ok(0)
        }
        Verb::Other(v) => bail!(
            "{:?} is not supported by berth-oci",
            v.first().map(String::as_str).unwrap_or("")
        ),
    }
}

/// The stage1 executables: next to berth-oci, in /usr/local/lib/berth,
/// then PATH.
fn stage1_path(s: Stage1) -> Result<PathBuf> {
    let exe = s.exe();
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(exe));
    }
    candidates.push(Path::new("/usr/local/lib/berth").join(exe));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(exe)));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("{exe} is not installed"))
}

fn new_uuid() -> Result<String> {
    let u =
        std::fs::read_to_string("/proc/sys/kernel/random/uuid").context("cannot make a uuid")?;
    Ok(u.trim().to_string())
}

/// Removes a half-made container unless disarmed.
struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn create(cli: &Cli, a: &CreateArgs) -> Result<Container> {
    std::fs::create_dir_all(&cli.root)
        .with_context(|| format!("cannot create {}", cli.root.display()))?;
    let dir = state::dir(&cli.root, &a.id)?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("container with id {} already exists", a.id)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let mut cleanup = Cleanup(Some(dir.clone()));
    let bundle = std::fs::canonicalize(&a.bundle)
        .with_context(|| format!("bundle {}", a.bundle.display()))?;
    let config = bundle::load(&bundle)?;
    let uuid = new_uuid()?;
    let t = bundle::translate(
        &config,
        &bundle,
        &a.id,
        &uuid,
        &dir,
        a.console_socket.as_deref(),
    )?;
    if t.stage1 == Stage1::Kvm && a.preserve_fds > 0 {
        bail!("--preserve-fds: a VM (run.berth.stage1=kvm) shares no descriptors with the host");
    }
    let pod = PodDir::new(&dir);
    let stage1 = stage1_path(t.stage1)?;
    std::fs::create_dir(pod.rootfs()).context("cannot create the rootfs mount point")?;
    berth_spec::state::write_file(&pod.spec_file(), &t.spec.to_json())?;
    berth_spec::state::write_file(&pod.stage1_file(), &format!("{}\n", stage1.display()))?;
    let saved = Saved {
        id: a.id.clone(),
        bundle: bundle.clone(),
        created: state::now_rfc3339(),
        stage1: stage1.display().to_string(),
        annotations: t
            .spec
            .oci
            .as_ref()
            .map(|o| o.annotations.clone())
            .unwrap_or_default(),
        poststart: t.poststart,
        poststop: t.poststop,
    };
    berth_spec::state::write_file(&dir.join("oci.json"), &serde_json::to_string(&saved)?)?;
    let fifo = dir.join(state::START_FIFO);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .context("cannot create the start fifo")?;

    // The life lock: taken here, handed to the stage1 (and through it to
    // the pod's leader), released when the leader exits.
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(pod.lock_file())
        .context("cannot create the lock file")?;
    berth_spec::state::flock(&lock, libc::LOCK_EX | libc::LOCK_NB).context("cannot lock")?;
    let (ready_rd, ready_wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    let mut cmd = Command::new(&stage1);
    cmd.arg("run").arg(&dir);
    cmd.env(ENV_LOCK_FD, lock.as_raw_fd().to_string());
    cmd.env(ENV_READY_FD, ready_wr.as_raw_fd().to_string());
    if a.preserve_fds > 0 {
        cmd.env(ENV_PASS_FDS, a.preserve_fds.to_string());
    }
    // kvm with a terminal: the VM's pty is relayed by stage1-kvm onto its
    // own stdio, which becomes a host pty whose master goes to the caller.
    let mut pty_slave = None;
    if t.stage1 == Stage1::Kvm && t.spec.stdio.tty {
        let sock = a
            .console_socket
            .as_deref()
            .context("process.terminal needs --console-socket")?;
        let (master, slave) = host_pty()?;
        send_fd(sock, &master)?;
        pty_slave = Some(slave);
    }
    let keep = [lock.as_raw_fd(), ready_wr.as_raw_fd()];
    let pass = a.preserve_fds;
    let slave_fd = pty_slave.as_ref().map(|s| s.as_raw_fd());
    // SAFETY: the closure only calls async-signal-safe functions (fcntl,
    // dup2, setsid, ioctl).
    unsafe {
        cmd.pre_exec(move || {
            for fd in keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for fd in 3..3 + pass as i32 {
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
            if let Some(s) = slave_fd {
                libc::setsid();
                libc::ioctl(s, libc::TIOCSCTTY, 0);
                for t in 0..3 {
                    libc::dup2(s, t);
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", stage1.display()))?;
    drop(ready_wr);
    drop(lock);
    drop(pty_slave);
    let report = StartReport::read_from(&mut BufReader::new(std::fs::File::from(ready_rd)));
    let ok = matches!(report, Ok(Some(StartReport::Started)));
    if t.stage1 == Stage1::Ns || !ok {
        // The ns stage1 exits once the pod's init waits for start (init
        // is then the caller's); a failed stage1 exits too.
        let st = child.wait().context("cannot wait for the stage1")?;
        if ok && !st.success() {
            bail!("the stage1 failed after set-up ({st})");
        }
    }
    match report {
        Ok(Some(StartReport::Started)) => {}
        Ok(Some(StartReport::Failed { message, .. })) => {
            gc(&pod, &stage1);
            bail!("{message}")
        }
        Ok(None) => {
            gc(&pod, &stage1);
            bail!("the stage1 exited before the container was created")
        }
        Err(e) => {
            gc(&pod, &stage1);
            return Err(e.into());
        }
    }
    let c = Container::load(&cli.root, &a.id)?;
    let pid = c.pid().context("the container's leader is gone")?;
    if let Some(p) = &a.pid_file {
        write_pid(p, pid)?;
    }
    cleanup.0 = None;
    Ok(c)
}

fn write_pid(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("berth-tmp");
    std::fs::write(&tmp, pid.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

fn gc(pod: &PodDir, stage1: &Path) {
    let _ = Command::new(stage1)
        .arg("gc")
        .arg(pod.path())
        .stdin(std::process::Stdio::null())
        .status();
}

fn start(cli: &Cli, id: &str) -> Result<()> {
    let c = Container::load(&cli.root, id)?;
    match c.status() {
        Status::Created => {}
        s => bail!("cannot start a container that is {}", s.as_str()),
    }
    let fifo = c.fifo();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(&fifo)
        .with_context(|| format!("cannot open {}", fifo.display()))?;
    // The leader opens the FIFO for writing once it sees a reader and
    // writes one byte: then it goes on to run the app.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut buf = [0u8; 1];
    loop {
        match (&f).read(&mut buf) {
            Ok(1) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("reading the start fifo"),
        }
        if c.status() == Status::Stopped {
            bail!("the container exited before it started");
        }
        if Instant::now() > deadline {
            bail!("the container did not start in time");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = std::fs::remove_file(&fifo);
    let pid = c.pid().unwrap_or(0);
    let st = serde_json::json!({
        "ociVersion": "1.0.2", "id": id, "status": "running", "pid": pid,
        "bundle": c.saved.bundle, "annotations": c.saved.annotations,
    })
    .to_string();
    for h in &c.saved.poststart {
        if let Err(e) = run_hook(h, &st) {
            log::warn!("berth-oci: poststart hook: {e:#}");
        }
    }
    Ok(())
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

fn run(cli: &Cli, a: &CreateArgs) -> Result<i32> {
    let c = create(cli, a)?;
    start(cli, &a.id)?;
    if a.detach {
        return Ok(0);
    }
    // Our child (kvm) or reparented to our reaper (ns): wait on the life
    // lock, then read the status the leader's exit left (kvm) or 0.
    while c.status() != Status::Stopped {
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = std::fs::read_to_string(c.pod.status_file())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    Ok(code)
}

/// `TERM`, `SIGTERM`, `15` → 15.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("invalid signal {s:?}");
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some(rt) = name.strip_prefix("RTMIN") {
        let off: i32 = if rt.is_empty() {
            0
        } else {
            rt.trim_start_matches('+').parse().unwrap_or(-1)
        };
        if (0..=30).contains(&off) {
            return Ok(libc::SIGRTMIN() + off);
        }
    }
    let sig: nix::sys::signal::Signal = format!("SIG{name}")
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid signal {s:?}"))?;
    Ok(sig as i32)
}

fn kill(cli: &Cli, id: &str, signal: Option<&str>, all: bool) -> Result<()> {
    let c = Container::load(&cli.root, id)?;
    let sig = parse_signal(signal.unwrap_or("SIGTERM"))?;
    if c.status() == Status::Stopped {
        bail!("container not running");
    }
    let pids = if all {
        c.pids()
    } else {
        vec![c.pid().context("container not running")?]
    };
    for pid in pids {
        // SAFETY: kill(2) with a pid and a signal number.
        if unsafe { libc::kill(pid, sig) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e).with_context(|| format!("cannot signal {pid}"));
            }
        }
    }
    Ok(())
}

fn delete(cli: &Cli, id: &str, force: bool) -> Result<()> {
    let c = match Container::load(&cli.root, id) {
        Ok(c) => c,
        Err(e) if force => {
            log::debug!("berth-oci: delete --force: {e:#}");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match c.status() {
        Status::Stopped => {}
        _ if force => kill_and_wait(&c)?,
        // The runtime-spec: deleting a container that is not stopped is
        // an error and changes nothing.
        s => bail!(
            "cannot delete container {id} that is not stopped: {}",
            s.as_str()
        ),
    }
    let stage1 = PathBuf::from(&c.saved.stage1);
    gc(&c.pod, &stage1);
    let st = serde_json::json!({
        "ociVersion": "1.0.2", "id": id, "status": "stopped", "pid": 0,
        "bundle": c.saved.bundle, "annotations": c.saved.annotations,
    })
    .to_string();
    for h in &c.saved.poststop {
        if let Err(e) = run_hook(h, &st) {
            log::warn!("berth-oci: poststop hook: {e:#}");
        }
    }
    std::fs::remove_dir_all(c.pod.path())
        .with_context(|| format!("cannot remove {}", c.pod.path().display()))
}

fn kill_and_wait(c: &Container) -> Result<()> {
    for pid in c.pid().into_iter().chain(c.pids()) {
        // SAFETY: kill(2) with a pid and a signal number.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    if !berth_spec::state::wait_stopped(&c.pod, Duration::from_secs(10)) {
        bail!("container {} did not stop after SIGKILL", c.saved.id);
    }
    Ok(())
}

fn run_hook(h: &berth_spec::oci::Hook, state: &str) -> Result<()> {
    use std::io::Write;
    let mut cmd = Command::new(&h.path);
    if let Some((first, rest)) = h.args.split_first() {
        cmd.arg0(first).args(rest);
    }
    cmd.env_clear()
        .envs(h.env.iter().filter_map(|e| e.split_once('=')));
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", h.path.display()))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(state.as_bytes());
    }
    let deadline = h
        .timeout
        .map(|t| Instant::now() + Duration::from_secs(u64::from(t)));
    loop {
        if let Some(st) = child.try_wait()? {
            if st.success() {
                return Ok(());
            }
            bail!("{} failed ({st})", h.path.display());
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            bail!("{} timed out", h.path.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A pty pair on the host: (master, slave).
fn host_pty() -> Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    let m = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .context("cannot allocate a pty")?;
    nix::pty::grantpt(&m).context("grantpt")?;
    nix::pty::unlockpt(&m).context("unlockpt")?;
    let name = nix::pty::ptsname_r(&m).context("ptsname")?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&name)
        .with_context(|| format!("cannot open {name}"))?;
    // SAFETY: into_raw_fd hands over the master's descriptor.
    let master = unsafe {
        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(m))
    };
    Ok((master, OwnedFd::from(slave)))
}

/// runc's console-socket protocol: one message carrying the master.
fn send_fd(sock: &Path, fd: &OwnedFd) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let s = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("cannot connect to {}", sock.display()))?;
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"/dev/ptmx")];
    sendmsg::<()>(
        s.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .with_context(|| format!("cannot send the terminal to {}", sock.display()))?;
    Ok(())
}

fn exec(cli: &Cli, a: &ExecArgs) -> Result<i32> {
    let c = Container::load(&cli.root, &a.id)?;
    if c.status() != Status::Running {
        bail!("cannot exec in a container that is {}", c.status().as_str());
    }
    let (mut argv, mut env, mut cwd, mut user, mut tty) = (
        a.command.clone(),
        a.env.clone(),
        a.cwd.clone(),
        a.user.clone(),
        a.tty,
    );
    if let Some(p) = &a.process {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?;
        let strs = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        argv = strs(&v["args"]);
        env.extend(strs(&v["env"]));
        cwd = v["cwd"].as_str().map(String::from).or(cwd);
        if let (Some(u), Some(g)) = (v["user"]["uid"].as_u64(), v["user"]["gid"].as_u64()) {
            user = Some(format!("{u}:{g}"));
        }
        tty |= v["terminal"].as_bool().unwrap_or(false);
    }
    if argv.is_empty() {
        bail!("exec needs a command (arguments or --process)");
    }
    let user = user.map(|u| {
        if u.contains(':') {
            u
        } else {
            format!("{u}:{u}")
        }
    });
    let stage1 = PathBuf::from(&c.saved.stage1);
    let mut cmd = Command::new(&stage1);
    cmd.arg("exec").arg(c.pod.path()).arg("-i");
    if tty {
        cmd.arg("-t");
    }
    for e in &env {
        cmd.arg("-e").arg(e);
    }
    if let Some(w) = &cwd {
        cmd.arg("-w").arg(w);
    }
    if let Some(u) = &user {
        cmd.arg("-u").arg(u);
    }
    cmd.arg("--").args(&argv);
    let mut slave = None;
    if tty {
        if let Some(sock) = &a.console_socket {
            let (m, s) = host_pty()?;
            send_fd(sock, &m)?;
            slave = Some(s);
        }
    }
    let slave_fd = slave.as_ref().map(|s| s.as_raw_fd());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(s) = slave_fd {
                libc::setsid();
                libc::ioctl(s, libc::TIOCSCTTY, 0);
                for t in 0..3 {
                    libc::dup2(s, t);
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the exec")?;
    drop(slave);
    if let Some(p) = &a.pid_file {
        write_pid(p, child.id() as i32)?;
    }
    if a.detach {
        // The exec process exits with the command's status; it is the
        // caller's (a subreaper) once we are gone.
        return Ok(0);
    }
    let st = child.wait().context("cannot wait for the exec")?;
    Ok(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)))
}

fn ps(cli: &Cli, id: &str, format: &str, args: &[String]) -> Result<()> {
    let c = Container::load(&cli.root, id)?;
    let pids = c.pids();
    if format == "json" {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(());
    }
    if format != "table" {
        bail!("invalid format {format:?}: table or json");
    }
    let args: Vec<String> = if args.is_empty() {
        vec!["-ef".into()]
    } else {
        args.to_vec()
    };
    let out = Command::new("ps")
        .args(&args)
        .output()
        .context("cannot run ps")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Ok(());
    };
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .context("ps printed no PID column")?;
    println!("{header}");
    for l in lines {
        let pid = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            println!("{l}");
        }
    }
    Ok(())
}

fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "dirsync",
            "noatime", "nodiratime", "relatime", "strictatime", "bind", "rbind", "private", "rprivate",
            "slave", "rslave"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": berth_spec::ALL_CAPABILITIES.iter().map(|c| format!("CAP_{}", c.to_ascii_uppercase())).collect::<Vec<_>>(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD",
                    "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_LOG"],
                "operators": ["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
                    "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"],
                "archs": ["SCMP_ARCH_X86_64"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "run.berth.stage1": "ns (default) or kvm"
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_runc() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("SIGKILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("RTMIN+3").unwrap(), libc::SIGRTMIN() + 3);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
    }
}

//! `berth run [OPTIONS] -- CMD [ARGS...]`

use crate::stage0::{net, parse, pod, stage1, store::Store};
use anyhow::{bail, Context, Result};
use berth_spec::{
    App, KvmSettings, Network, NetworkMode, PodSpec, PortMapping, Resources, Rootfs, Security,
    Stdio, User, EXIT_BERTH_FAILED, SPEC_VERSION,
};
use clap::Args;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Stdio as ProcStdio;

/// Default VM size for `--stage1=kvm` without `--memory`.
const KVM_DEFAULT_MEMORY_MIB: u32 = 256;

#[derive(Args)]
pub struct RunArgs {
    /// Isolation: ns (namespaces), kvm (microVM), or the path of a stage1 executable.
    #[arg(long, default_value = "ns")]
    pub stage1: String,
    /// Root filesystem image (a directory; never modified).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Pod name (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Hostname inside the pod (default: the pod name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass the current value).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the pod.
    #[arg(short = 'w', long = "workdir", value_name = "DIR", default_value = "/")]
    pub workdir: String,
    /// User to run as, numeric.
    #[arg(short = 'u', long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Bind a host path into the pod.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    pub volume: Vec<String>,
    /// Network: private (own address on berth's bridge, NAT), none (loopback
    /// only) or host (share the host's network; ns only).
    #[arg(long, default_value = "private", value_name = "private|none|host")]
    pub net: String,
    /// Publish a pod port on the host (--net private): HOSTPORT:PODPORT[/tcp|/udp].
    #[arg(short = 'p', long = "port", value_name = "HOSTPORT:PODPORT[/PROTO]")]
    pub port: Vec<String>,
    /// Add a capability to the default set (e.g. NET_ADMIN, or ALL).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability from the default set (e.g. NET_RAW, or ALL).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Memory limit, e.g. 512m (kvm: the VM's memory, default 256m).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// CPU limit, e.g. 1.5 (kvm: number of vCPUs, rounded up, default 1).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub cpus: Option<String>,
    /// Maximum number of processes.
    #[arg(long, value_name = "N")]
    pub pids: Option<u32>,
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run in the background and print the pod's name.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Remove the pod when it exits.
    #[arg(long)]
    pub rm: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// Turn the arguments into a spec. Validates every value, creates nothing.
/// With `--net private` the spec's network is still `none` and the published
/// ports are returned: the lease is taken once the name is claimed.
pub fn build_spec(a: &RunArgs, is_kvm: bool) -> Result<(PodSpec, Option<Vec<PortMapping>>)> {
    let Some(rootfs) = &a.rootfs else {
        bail!("--rootfs is required");
    };
    let image = parse::absolute(rootfs);
    if !image.is_dir() {
        bail!(
            "rootfs {} does not exist or is not a directory",
            rootfs.display()
        );
    }
    let uuid = pod::new_uuid()?;
    let name = match &a.name {
        Some(n) if berth_spec::valid_pod_name(n) => n.clone(),
        Some(n) => bail!("invalid pod name {n:?}: use letters, digits, '_', '.', '-' (at most 63, starting with a letter or digit)"),
        None => format!("berth-{}", &uuid[..8]),
    };
    let hostname = match &a.hostname {
        Some(h) if berth_spec::valid_hostname(h) => h.clone(),
        Some(h) => bail!("invalid hostname {h:?}"),
        None => pod::hostname_for(&name),
    };
    let mounts = a
        .volume
        .iter()
        .map(|v| parse::volume(v))
        .collect::<Result<Vec<_>, _>>()?;
    let env = a
        .env
        .iter()
        .map(|e| parse::env(e))
        .collect::<Result<Vec<_>, _>>()?;
    let (uid, gid) = match &a.user {
        Some(u) => parse::user(u, &image)?,
        None => (0, 0),
    };
    if !a.workdir.starts_with('/') {
        bail!("invalid workdir {:?}: must be an absolute path", a.workdir);
    }
    let mode = match a.net.as_str() {
        "private" => NetworkMode::Private,
        "none" => NetworkMode::None,
        "host" => NetworkMode::Host,
        other => bail!("invalid --net {other:?}: expected private, none or host"),
    };
    if mode == NetworkMode::Host && is_kvm {
        bail!("--net host is impossible with --stage1=kvm: a VM cannot share the host's network namespace");
    }
    let ports = a
        .port
        .iter()
        .map(|p| parse::port(p))
        .collect::<Result<Vec<_>, _>>()?;
    if !ports.is_empty() && mode != NetworkMode::Private {
        bail!(
            "invalid --port {:?}: publishing ports needs --net private, not --net {}",
            a.port[0],
            mode.as_str()
        );
    }
    for (i, p) in ports.iter().enumerate() {
        if ports[..i]
            .iter()
            .any(|q| q.host_port == p.host_port && q.protocol == p.protocol)
        {
            bail!(
                "invalid --port {:?}: host port {}/{} is published twice",
                a.port[i],
                p.host_port,
                p.protocol.as_str()
            );
        }
    }
    let memory = a.memory.as_deref().map(parse::size).transpose()?;
    let cpu_millis = a.cpus.as_deref().map(parse::cpus).transpose()?;
    if a.pids == Some(0) {
        bail!("invalid --pids 0: must be at least 1");
    }
    let mut security = Security::default();
    for c in &a.cap_drop {
        let drop = parse::capability(c)?;
        security.capabilities.retain(|k| !drop.contains(k));
    }
    for c in &a.cap_add {
        for cap in parse::capability(c)? {
            if !security.capabilities.contains(&cap) {
                security.capabilities.push(cap);
            }
        }
    }
    let kvm = is_kvm.then(|| KvmSettings {
        kernel: None,
        memory_mib: memory.map_or(KVM_DEFAULT_MEMORY_MIB, |b| (b >> 20).max(1) as u32),
        vcpus: cpu_millis.map_or(1, |m| m.div_ceil(1000)),
    });
    let spec = PodSpec {
        version: SPEC_VERSION,
        machine_id: uuid.replace('-', ""),
        uuid,
        name,
        app: App {
            argv: a.cmd.clone(),
            env,
            cwd: a.workdir.clone(),
            user: User { uid, gid },
        },
        hostname,
        rootfs: Rootfs { image },
        mounts,
        network: if mode == NetworkMode::Private {
            Network::none()
        } else {
            Network {
                mode,
                private: None,
            }
        },
        resources: Resources {
            memory,
            cpu_millis,
            pids: a.pids,
        },
        security,
        stdio: Stdio {
            interactive: a.interactive,
            tty: a.tty,
        },
        kvm,
    };
    spec.validate()?;
    Ok((spec, (mode == NetworkMode::Private).then_some(ports)))
}

pub fn run(store: &Store, a: RunArgs) -> Result<i32> {
    let stage1 = stage1::resolve(&a.stage1)?;
    let is_kvm = a.stage1 == "kvm";
    let (mut spec, private) = build_spec(&a, is_kvm)?;
    if spec.network.mode == NetworkMode::Host {
        eprintln!(
            "berth: warning: --net host shares the host's network namespace: the pod can reach \
             host-only sockets (abstract unix sockets, services bound to 127.0.0.1)"
        );
    }
    let mut new = pod::claim(store, &spec.name)?;
    // The lease is taken while we hold the claimed pod's lock, so a
    // concurrent `run` sees it as live; it is released again unless the pod
    // starts.
    let mut net_guard = None;
    if let Some(ports) = private {
        let cfg = berth_net::HostConfig::load(store.root())?;
        let req = berth_net::PodRequest {
            name: &spec.name,
            uuid: &spec.uuid,
            ports: &ports,
            kvm: is_kvm,
        };
        let pn = berth_net::prepare(store.root(), &cfg, &req)?;
        net_guard = Some(net::NetGuard::new(store.root(), &spec.uuid, pn.clone()));
        spec.network = Network {
            mode: NetworkMode::Private,
            private: Some(pn),
        };
    }
    new.write_spec(&spec, &stage1)?;
    let lock = new.lock.take().context("pod lock missing")?;
    let (ready_rd, ready_wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    let mut cmd = stage1::command(&stage1, "run", &new.dir, &[]);
    stage1::pass_fds(&mut cmd, lock.as_raw_fd(), Some(&ready_wr));

    if a.detach {
        if a.rm {
            std::fs::write(new.dir.remove_on_exit_file(), "").with_context(|| {
                format!("cannot write {}", new.dir.remove_on_exit_file().display())
            })?;
        }
        let log = std::fs::File::create(new.dir.app_log())
            .with_context(|| format!("cannot create {}", new.dir.app_log().display()))?;
        cmd.stdin(ProcStdio::null())
            .stdout(log.try_clone().context("cannot duplicate log fd")?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", stage1.display()))?;
        drop(ready_wr);
        // stage1 holds a duplicate of the locked descriptor now.
        drop(lock);
        let mut line = String::new();
        let _ = BufReader::new(std::fs::File::from(ready_rd)).read_line(&mut line);
        let line = line.trim_end();
        if line == "ok" {
            new.keep();
            if let Some(g) = net_guard.as_mut() {
                g.disarm();
            }
            println!("{}", spec.name);
            return Ok(0);
        }
        let status = child.wait().ok();
        let _ = stage1::command(&stage1, "gc", &new.dir, &[]).status();
        return match line.strip_prefix("error ") {
            Some(rest) => {
                let (code, msg) = rest.split_once(' ').unwrap_or(("125", rest));
                eprintln!("berth: {msg}");
                Ok(code.parse().unwrap_or(EXIT_BERTH_FAILED))
            }
            None => bail!(
                "stage1 exited before the pod started ({})",
                status.map_or("unknown status".into(), describe)
            ),
        };
    }

    // Foreground: forward signals sent to us (by kill(1), systemd...) to
    // stage1. Terminal-generated signals already reach stage1 directly, as it
    // is in our process group, so those are not forwarded a second time.
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
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", stage1.display()))?;
    drop(ready_wr);
    // From here the stage1 owns the pod's network; it is released below once
    // the stage1 has exited (never while it may still run).
    let net_after_exit = net_guard.take().map(|mut g| {
        g.disarm();
        g
    });
    let child_pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut ready = BufReader::new(std::fs::File::from(ready_rd));
    let mut ready_open = true;
    let mut report = String::new();
    let status = loop {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if ready_open {
            fds.push(PollFd::new(ready.get_ref().as_fd(), PollFlags::POLLIN));
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
            let mut line = String::new();
            if ready.read_line(&mut line).unwrap_or(0) == 0 {
                ready_open = false;
            }
            if !line.is_empty() {
                report = line.trim_end().to_string();
            }
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            let sig = info.ssi_signo as i32;
            if sig == libc::SIGCHLD {
                continue;
            }
            if info.ssi_code == libc::SI_USER || info.ssi_code == libc::SI_QUEUE {
                if let Ok(s) = Signal::try_from(sig) {
                    let _ = nix::sys::signal::kill(child_pid, s);
                }
            }
        }
        if let Some(st) = child.try_wait().context("cannot wait for stage1")? {
            break st;
        }
    };
    // Wait for the report if stage1 wrote it just before exiting.
    if ready_open && report.is_empty() {
        let mut line = String::new();
        let _ = ready.read_line(&mut line);
        report = line.trim_end().to_string();
    }
    // stage1 has exited; closing our copy releases the lock if stage1 was
    // killed before it could.
    drop(lock);
    // Whatever the stage1 did, its pod's network is no longer needed
    // (idempotent; a stage1 that released already makes this a no-op).
    if let Some(mut g) = net_after_exit {
        g.rearm();
    }
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(EXIT_BERTH_FAILED);
    let started = report == "ok";
    if a.rm || !started {
        // A pod that never started is removed like a failed create. A stage1
        // that recorded a status has released everything itself; otherwise
        // (it was killed) its `gc` verb does.
        if !new.dir.status_file().exists() {
            let _ = stage1::command(&stage1, "gc", &new.dir, &[])
                .stderr(ProcStdio::null())
                .status();
        }
    } else {
        new.keep();
    }
    Ok(code)
}

fn describe(st: std::process::ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

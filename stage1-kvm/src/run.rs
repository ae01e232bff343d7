//! `berth-stage1-kvm run POD_DIR`: share the pod's rootfs and volumes over
//! virtio-fs, build the initramfs, listen for guest-init's control
//! connection, boot the VM, relay the app's streams and our signals over the
//! control protocol, and exit with the app's status.
//!
//! Processes and threads: the VMM runs in a forked child process ([`vmm`]:
//! its own mount namespace, the pod's cgroup, FUSE-server capabilities
//! only; vCPU and device threads), which reports its outcome on a pipe; this
//! process (the pod's leader) keeps a control thread that serves the main
//! control connection and waits for the VMM process. The app's status comes
//! from its `Exit` frame; the status port guest-init writes before powering
//! off is the fallback when the control channel never came up (a guest-init
//! failure), and its message is then taken from the console log.

use crate::control::{relayed_signals, Session, Start};
use crate::vmm::{self as vmm_process, VmmReport};
use crate::{assets, initramfs, rootfs};
use anyhow::{Context, Result};
use berth_spec::cgroup::{self, PodCgroup};
use berth_spec::control::{GUEST_CID, MAIN_PORT};
use berth_spec::report::StartReport;
use berth_spec::stage1_cli::RawMode;
use berth_spec::state::{self, Ready};
use berth_spec::{PodDir, PodSpec, EXIT_BERTH_FAILED};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The kernel prints nothing on the console (saved to console.log, where
/// guest-init's own diagnostics go): every printk costs time on the
/// emulated UART.
const QUIET_CMDLINE: &str = "quiet loglevel=0";

/// How much of the guest's console one log file holds before it is rotated.
pub const CONSOLE_LOG_MAX: u64 = 4 << 20;

/// After the VM stopped, how long the relay may take to hand over the last
/// output and the Exit frame already in the socket.
const RELAY_DRAIN: Duration = Duration::from_secs(5);

/// The start report, sent once by whichever thread learns the outcome first.
type SharedReady = Arc<Mutex<Ready>>;

fn report(ready: &SharedReady, r: &StartReport) {
    if let Ok(mut g) = ready.lock() {
        g.send(r);
    }
}

pub fn run(pod: &PodDir) -> Result<i32> {
    let ready: SharedReady = Arc::new(Mutex::new(Ready::from_env()));
    match boot_and_wait(pod, &ready) {
        Ok(code) => Ok(code),
        Err(e) => {
            report(&ready, &StartReport::setup_failed(format!("{e:#}")));
            Err(e)
        }
    }
}

/// `<ctl.sock>_<port>`: where the VMM's vsock device connects guest
/// connections to host port `port`.
pub fn host_port_socket(ctl: &Path, port: u32) -> PathBuf {
    let mut s = ctl.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// The recipe.
fn boot_and_wait(pod: &PodDir, ready: &SharedReady) -> Result<i32> {
    let t0 = std::time::Instant::now();
    let spec = PodSpec::load(pod).context("cannot load the pod spec")?;
    let _lock = state::take_life_lock(pod)?;
    for f in [pod.status_file(), pod.exit_reason_file()] {
        let _ = std::fs::remove_file(f);
    }
    if spec.network.mode == berth_spec::NetworkMode::Host {
        anyhow::bail!("--net host is impossible with --stage1=kvm: a VM cannot share the host's network namespace");
    }
    let (cfg, listener) = vm_config(&spec, pod)?;
    log::debug!("stage1-kvm: VM prepared after {:?}", t0.elapsed());
    let placement = berth_spec::systemd::placement(&spec)?;
    berth_spec::systemd::prepare(&placement, &spec)?;
    if let Some(rel) = placement.pod_cgroup() {
        cgroup::record(pod, &rel)?;
    }
    // Block the relayed signals before any other thread exists, so that
    // they wait for the control thread's signalfd.
    let sigs = relayed_signals();
    sigs.thread_block().context("cannot block signals")?;
    let (child, holder, cgroup, exit_rd) = vmm_process::spawn(cfg, &spec, pod, &placement)?;
    state::write_file(&pod.pid_file(), &std::process::id().to_string())?;
    let proxy = match &spec.network.private {
        Some(net) => Some(berth_net::proxy::start(&net.ports, net.address)?),
        None => None,
    };
    let _raw = if spec.stdio.tty {
        RawMode::enter()
    } else {
        None
    };
    let control = start_control(listener, ready, &spec, &sigs, child.pid())?;
    let exit = vmm_process::wait(child.disarm(), exit_rd);
    let code = outcome(pod, ready, &exit, control);
    // Reaped before its cgroup goes (a zombie keeps a cgroup busy).
    drop(holder);
    drop(proxy);
    finish(pod, &spec, &cgroup, code)?;
    Ok(code)
}

/// Everything the VM needs before the VMM process starts: kernel,
/// initramfs (guest-init + pod.json), the shares, the vsock listener for
/// guest-init's control connection, the tap, the console log.
fn vm_config(spec: &PodSpec, pod: &PodDir) -> Result<(vmm::VmConfig, UnixListener)> {
    let kernel = assets::kernel(spec)?;
    let init_path = assets::guest_init()?;
    let init = std::fs::read(&init_path)
        .with_context(|| format!("cannot read {}", init_path.display()))?;
    // A service pod's guest gets fresh random bytes to seed its kernel's
    // pool (see berth_spec::kvm::INITRAMFS_RANDOM_SEED_PATH).
    let seed = match &spec.service {
        Some(_) => Some(random_seed()?),
        None => None,
    };
    let cpio = initramfs::build(&init, spec.to_json().as_bytes(), seed.as_deref())
        .context("cannot build the initramfs")?;
    if let Some(size) = spec.resources.disk {
        berth_spec::disk::ensure_image(pod, size)?;
    }
    let shares = rootfs::shares(spec, pod)?;
    for d in [pod.run_dir(), pod.log_dir(), pod.jail_dir()] {
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let ctl = pod.ctl_socket();
    let main_path = host_port_socket(&ctl, MAIN_PORT);
    let _ = std::fs::remove_file(&main_path);
    let listener = UnixListener::bind(&main_path)
        .with_context(|| format!("cannot listen on {}", main_path.display()))?;
    // The VMM runs as the pod's mapped root, or as the pod's own VMM id:
    // its socket and log directories, and the socket it connects guest-init
    // through, are that user's.
    let vmm_owner = match (
        &spec.security.userns,
        spec.kvm.as_ref().and_then(|k| k.vmm_id),
    ) {
        (Some(u), _) => Some((u.host_uid, u.host_gid)),
        (None, Some(id)) => Some((id, id)),
        (None, None) => None,
    };
    if let Some((uid, gid)) = vmm_owner {
        for p in [pod.run_dir(), pod.log_dir(), main_path.clone()] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                .with_context(|| format!("cannot give {} to the VMM's user", p.display()))?;
        }
    }

    let mut cfg = vmm::VmConfig::new(kernel);
    cfg.initramfs = Some(vmm::Initramfs::Bytes(cpio));
    cfg.extra_cmdline = QUIET_CMDLINE.to_string();
    if spec.service.is_some() && vmm::pvm::detected() {
        cfg.extra_cmdline.push(' ');
        cfg.extra_cmdline.push_str(berth_spec::kvm::SLOW_HOST_PARAM);
        cfg.extra_cmdline.push_str("=1");
    }
    // Debugging aid: extra guest kernel parameters (e.g. `loglevel=7` to see
    // kernel messages in console.log).
    if let Ok(extra) = std::env::var("BERTH_KVM_CMDLINE") {
        cfg.extra_cmdline.push(' ');
        cfg.extra_cmdline.push_str(&extra);
    }
    cfg.mem_mib = u32::try_from(spec.resources.vm_memory_mib()).context("VM too large")?;
    cfg.vcpus = u8::try_from(spec.resources.vcpus()).context("too many vCPUs")?;
    cfg.fs = shares
        .into_iter()
        .map(|s| vmm::FsConfig {
            tag: s.tag,
            path: s.path,
            read_only: s.read_only,
            cache: if s.guest_owned {
                vmm::ShareCache::GuestOwned
            } else {
                vmm::ShareCache::Shared
            },
        })
        .collect();
    cfg.vsock = Some(vmm::VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: ctl,
    });
    // The pod's tap on the bridge (not persistent: it vanishes with the
    // VMM process, even after SIGKILL), the guest end configured by
    // guest-init.
    if let Some(net) = &spec.network.private {
        let tap = berth_net::create_tap(net, berth_net::tap::TapOptions { vnet_hdr: true })
            .context("cannot create the pod's tap")?;
        let mac = berth_spec::parse_mac(&net.mac)
            .with_context(|| format!("invalid MAC address {:?} in the pod spec", net.mac))?;
        cfg.net.push(vmm::NetConfig {
            tap: net.host_ifname.clone(),
            fd: Some(Arc::new(tap)),
            mac,
        });
    }
    // The console log is opened by the VMM process, in its jail.
    let _ = std::fs::remove_file(pod.console_log());
    Ok((cfg, listener))
}

/// [`berth_spec::kvm::RANDOM_SEED_LEN`] bytes from the host kernel's CSPRNG.
fn random_seed() -> Result<Vec<u8>> {
    let mut b = vec![0u8; berth_spec::kvm::RANDOM_SEED_LEN];
    let mut f = std::fs::File::open("/dev/urandom").context("cannot open /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut b).context("cannot read /dev/urandom")?;
    Ok(b)
}

/// What the control thread learned.
type Relayed = Result<Relay>;

enum Relay {
    /// The app's exit status (or None: the connection closed first).
    Exited(Option<i32>),
    /// A signal arrived before guest-init connected: the VM was stopped.
    Interrupted(i32),
}

/// The control thread: accept guest-init's connection, report the start,
/// relay. A signal to stop that arrives before the app has started stops
/// the VM (a boot on a slow host takes long; `berth stop` and ^C must work
/// during it).
fn start_control(
    listener: UnixListener,
    ready: &SharedReady,
    spec: &PodSpec,
    sigs: &SigSet,
    vmm: nix::unistd::Pid,
) -> Result<mpsc::Receiver<Relayed>> {
    let (tx, rx) = mpsc::channel();
    let ready = Arc::clone(ready);
    let (stdin, tty) = (spec.stdio.interactive, spec.stdio.tty);
    let sigs = *sigs;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let _ = tx.send(serve_main(&listener, &ready, stdin, tty, &sigs, vmm));
        })
        .context("cannot start the control thread")?;
    Ok(rx)
}

fn serve_main(
    listener: &UnixListener,
    ready: &SharedReady,
    stdin: bool,
    tty: bool,
    sigs: &SigSet,
    vmm: nix::unistd::Pid,
) -> Relayed {
    if let Some(sig) = accept_or_signal(listener, sigs)? {
        let _ = nix::sys::signal::kill(vmm, nix::sys::signal::Signal::SIGKILL);
        report(
            ready,
            &StartReport::Failed {
                code: 128 + sig,
                message: format!("stopped by signal {sig} while the VM was booting"),
            },
        );
        return Ok(Relay::Interrupted(sig));
    }
    let s = Session::accept_main(listener)?;
    // The start report may come after output and signals (a service pod's
    // comes once its units are active).
    let mut on_start = |start: Start| match start {
        Start::Started => report(ready, &StartReport::Started),
        Start::Failed { status, message } => {
            eprintln!("berth: {message}");
            report(
                ready,
                &StartReport::Failed {
                    code: status,
                    message,
                },
            );
        }
    };
    Ok(Relay::Exited(s.relay(
        stdin,
        tty,
        sigs,
        Some(&mut on_start),
        None,
    )?))
}

/// Wait until guest-init connects (`None`) or a signal asks us to stop
/// (`Some(signal)`; SIGWINCH is ignored here).
fn accept_or_signal(listener: &UnixListener, sigs: &SigSet) -> Result<Option<i32>> {
    let sfd = SignalFd::with_flags(sigs, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("cannot create a signalfd")?;
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let hit = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let (conn, sig) = (hit(&fds[0]), hit(&fds[1]));
        if sig {
            while let Ok(Some(info)) = sfd.read_signal() {
                let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
                if signo != libc::SIGWINCH {
                    return Ok(Some(signo));
                }
            }
        }
        if conn {
            return Ok(None);
        }
    }
}

/// The pod's exit status from what the control thread relayed and how the
/// VMM ended; a start that never completed is reported to stage0.
fn outcome(
    pod: &PodDir,
    ready: &SharedReady,
    exit: &VmmReport,
    control: mpsc::Receiver<Relayed>,
) -> i32 {
    // A VM that ran may still have the app's last output and Exit frame in
    // flight; a VMM that failed to boot never connected.
    let relayed = if exit.error.is_some() {
        control.try_recv().ok()
    } else {
        control.recv_timeout(RELAY_DRAIN).ok()
    };
    match relayed {
        Some(Ok(Relay::Exited(Some(code)))) => code,
        Some(Ok(Relay::Interrupted(sig))) => 128 + sig,
        other => {
            if let Some(Err(e)) = other {
                log::warn!("stage1-kvm: control channel: {e:#}");
            }
            let why = exit.error.clone().or_else(|| guest_diagnosis(pod));
            let code = exit.status.map_or(EXIT_BERTH_FAILED, i32::from);
            let line = match why {
                Some(line) => Some((code, line)),
                None if exit.status.is_none() => Some((
                    EXIT_BERTH_FAILED,
                    format!(
                        "the VM stopped ({}) without reporting the app's status; see {}",
                        exit.reason,
                        pod.console_log().display()
                    ),
                )),
                None => None,
            };
            if let Some((code, message)) = line {
                // Printed only if the start was not reported yet (a failed
                // boot); an app that ran has said what it had to say.
                let unreported = ready.lock().is_ok_and(|r| !r.sent());
                if unreported {
                    eprintln!("berth: {message}");
                }
                report(ready, &StartReport::Failed { code, message });
            }
            code
        }
    }
}

/// After the VM stopped: record the status (and why, when the host's OOM
/// killer ended it), release the network and the cgroup, remove the
/// sockets, and the pod directory when asked to.
fn finish(pod: &PodDir, spec: &PodSpec, cgroup: &PodCgroup, code: i32) -> Result<()> {
    let ctl = pod.ctl_socket();
    let _ = std::fs::remove_file(host_port_socket(&ctl, MAIN_PORT));
    let _ = std::fs::remove_file(&ctl);
    // The host's OOM killer took the VMM (guest RAM + overhead beyond the
    // pod's cgroup), or the guest kernel's killed the app (its report is on
    // the console: only the guest kernel writes there once the app runs —
    // a pod's /dev has no console or kmsg).
    if cgroup.oom_killed() || (code == 128 + libc::SIGKILL && guest_oom_kill(pod)) {
        let _ = state::write_file(&pod.exit_reason_file(), "oom-killed\n");
    }
    berth_net::release_pod(&pod.state_root(), spec);
    if let Err(e) = cgroup.remove() {
        log::warn!("stage1-kvm: {}", berth_spec::ErrorChain(&e));
    }
    state::write_file(&pod.status_file(), &format!("{code}\n"))?;
    state::remove_if_requested(pod);
    Ok(())
}

/// Did the guest kernel's OOM killer kill a process during this boot (the
/// console log is new for each boot)?
fn guest_oom_kill(pod: &PodDir) -> bool {
    [pod.console_log().with_extension("log.1"), pod.console_log()]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .any(|log| log.lines().any(is_oom_kill_line))
}

/// The guest kernel's report of an OOM kill (mm/oom_kill.c:
/// `Out of memory: Killed process N (comm) …`, or the memory cgroup's
/// `Memory cgroup out of memory: Killed process …`).
fn is_oom_kill_line(line: &str) -> bool {
    line.contains("out of memory: Killed process") || line.contains("Out of memory: Killed process")
}

/// guest-init's own failure line from the console log (or, just rotated,
/// its previous part), if it printed one.
fn guest_diagnosis(pod: &PodDir) -> Option<String> {
    let mut log =
        std::fs::read_to_string(pod.console_log().with_extension("log.1")).unwrap_or_default();
    log.push_str(&std::fs::read_to_string(pod.console_log()).ok()?);
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("berth-guest-init: "))
        .map(|l| format!("guest-init: {l}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_socket_appends_the_port() {
        assert_eq!(
            host_port_socket(Path::new("/p/ctl.sock"), 1024),
            PathBuf::from("/p/ctl.sock_1024")
        );
    }

    #[test]
    fn guest_oom_kills_are_read_from_the_console_log() {
        let d = tempfile::tempdir().unwrap();
        let pod = PodDir::new(d.path());
        assert!(!guest_oom_kill(&pod));
        std::fs::create_dir_all(pod.log_dir()).unwrap();
        std::fs::write(pod.console_log(), "[ 1.0] probe[57]: segfault at 0\n").unwrap();
        assert!(!guest_oom_kill(&pod));
        std::fs::write(
            pod.console_log(),
            "[ 9.1] Out of memory: Killed process 57 (probe) total-vm:210000kB, anon-rss:200000kB\n",
        )
        .unwrap();
        assert!(guest_oom_kill(&pod));
        assert!(is_oom_kill_line(
            "Memory cgroup out of memory: Killed process 9 (x) total-vm:1kB"
        ));
    }

    #[test]
    fn guest_diagnosis_takes_the_last_guest_init_line() {
        let d = tempfile::tempdir().unwrap();
        let pod = PodDir::new(d.path());
        assert_eq!(guest_diagnosis(&pod), None);
        std::fs::create_dir_all(pod.log_dir()).unwrap();
        std::fs::write(
            pod.console_log(),
            "noise\nberth-guest-init: first\r\nberth-guest-init: mounts: cannot mount virtiofs vol0 on /newroot/x: ENOENT\r\nmore\n",
        )
        .unwrap();
        assert_eq!(
            guest_diagnosis(&pod).as_deref(),
            Some("guest-init: mounts: cannot mount virtiofs vol0 on /newroot/x: ENOENT")
        );
    }
}

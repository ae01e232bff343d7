//! `berth-stage1-kvm run POD_DIR`: share the pod's rootfs and volumes over
//! virtio-fs, build the initramfs, listen for guest-init's control
//! connection, boot the VM, relay the app's streams and our signals over the
//! control protocol, and exit with the app's status.
//!
//! Processes and threads: the VMM runs in a forked child process (its own
//! mount namespace, FUSE-server capabilities only; vCPU and device threads),
//! which reports its outcome on a pipe; this process keeps a relay thread
//! that serves the main control connection and waits for the VMM process. The app's status comes from its `Exit` frame; the
//! status port guest-init writes before powering off is the fallback when
//! the control channel never came up (a guest-init failure), and its
//! message is then taken from the console log.

use crate::control::{relayed_signals, Session, Start};
use crate::{assets, initramfs, rootfs};
use anyhow::{Context, Result};
use berth_spec::control::{GUEST_CID, MAIN_PORT};
use berth_spec::stage1_cli::RawMode;
use berth_spec::state::{self, Ready};
use berth_spec::{PodDir, PodSpec, EXIT_BERTH_FAILED};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The kernel prints nothing on the console (saved to console.log, where
/// guest-init's own diagnostics go): every printk costs time on the
/// emulated UART.
const QUIET_CMDLINE: &str = "quiet loglevel=0";

/// After the VM stopped, how long the relay may take to hand over the last
/// output and the Exit frame already in the socket.
const RELAY_DRAIN: Duration = Duration::from_secs(5);

/// The start report, sent once by whichever thread learns the outcome first.
type SharedReady = Arc<Mutex<Ready>>;

fn report(ready: &SharedReady, line: &str) {
    if let Ok(mut r) = ready.lock() {
        r.send(line);
    }
}

pub fn run(pod: &PodDir) -> Result<i32> {
    let ready: SharedReady = Arc::new(Mutex::new(Ready::from_env()));
    match boot_and_wait(pod, &ready) {
        Ok(code) => Ok(code),
        Err(e) => {
            report(&ready, &format!("error {EXIT_BERTH_FAILED} {e:#}"));
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

fn boot_and_wait(pod: &PodDir, ready: &SharedReady) -> Result<i32> {
    let t0 = std::time::Instant::now();
    let spec = PodSpec::load(pod).context("cannot load the pod spec")?;
    let _lock = state::take_life_lock(pod)?;
    let _ = std::fs::remove_file(pod.status_file());
    if spec.network.mode == berth_spec::NetworkMode::Host {
        anyhow::bail!("--net host is impossible with --stage1=kvm: a VM cannot share the host's network namespace");
    }
    let kernel = assets::kernel(&spec)?;
    let init_path = assets::guest_init()?;
    let init = std::fs::read(&init_path)
        .with_context(|| format!("cannot read {}", init_path.display()))?;
    let cpio =
        initramfs::build(&init, spec.to_json().as_bytes()).context("cannot build the initramfs")?;
    let private = spec.network.private.as_ref();
    if let Some(net) = private {
        // Into the overlay's upper layer before it is mounted: the guest
        // sees them as its /etc/resolv.conf and /etc/hosts.
        berth_net::etc::write(&pod.upper(), &spec.hostname, net)
            .context("cannot write the pod's /etc/resolv.conf and /etc/hosts")?;
    }
    let shares = rootfs::shares(&spec, pod)?;
    let ctl = pod.ctl_socket();
    let main_path = host_port_socket(&ctl, MAIN_PORT);
    let _ = std::fs::remove_file(&main_path);
    let listener = UnixListener::bind(&main_path)
        .with_context(|| format!("cannot listen on {}", main_path.display()))?;
    log::debug!(
        "stage1-kvm: shares and initramfs ready after {:?}",
        t0.elapsed()
    );

    // Block the relayed signals before any other thread exists, so that
    // they wait for the relay's signalfd.
    let sigs = relayed_signals();
    sigs.thread_block().context("cannot block signals")?;

    let kvm = spec.kvm.clone().unwrap_or(berth_spec::KvmSettings {
        kernel: None,
        memory_mib: 256,
        vcpus: 1,
    });
    let mut cfg = vmm::VmConfig::new(kernel);
    cfg.initramfs = Some(vmm::Initramfs::Bytes(cpio));
    cfg.extra_cmdline = QUIET_CMDLINE.to_string();
    // Debugging aid: extra guest kernel parameters (e.g. `loglevel=7` to see
    // kernel messages in console.log).
    if let Ok(extra) = std::env::var("BERTH_KVM_CMDLINE") {
        cfg.extra_cmdline.push(' ');
        cfg.extra_cmdline.push_str(&extra);
    }
    cfg.mem_mib = kvm.memory_mib;
    cfg.vcpus = u8::try_from(kvm.vcpus).context("too many vCPUs")?;
    cfg.fs = shares
        .into_iter()
        .map(|s| vmm::FsConfig {
            tag: s.tag,
            path: s.path,
            read_only: s.read_only,
        })
        .collect();
    cfg.vsock = Some(vmm::VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: ctl.clone(),
    });
    // The pod's tap on the bridge (not persistent: it vanishes with the
    // VMM process, even after SIGKILL), the guest end configured by
    // guest-init.
    if let Some(net) = private {
        let tap = berth_net::create_tap(net, berth_net::tap::TapOptions { vnet_hdr: true })
            .context("cannot create the pod's tap")?;
        cfg.net.push(vmm::NetConfig {
            tap: net.host_ifname.clone(),
            fd: Some(Arc::new(tap)),
            mac: parse_mac(&net.mac)?,
        });
    }
    let log = std::fs::File::create(pod.console_log())
        .with_context(|| format!("cannot create {}", pod.console_log().display()))?;
    cfg.serial_out = Box::new(log);
    let keep = cfg.fs_capabilities();

    // The VMM runs in a child process (still single-threaded here, so fork
    // is safe): its own mount namespace holds the pod's overlay, and it
    // keeps only the FUSE server's capabilities. This process stays the
    // pod's leader with its privileges, to relay the app, publish ports and
    // release the network, record the status and remove the pod directory
    // (which it can, as it never sees the overlay mount).
    let (exit_rd, exit_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("cannot create the VMM's report pipe")?;
    let parent = nix::unistd::getpid();
    // SAFETY: no other thread exists yet (the relay and proxy threads start
    // below, in the parent); the child only runs the VMM and exits.
    let child = match unsafe { nix::unistd::fork() }.context("cannot fork the VMM process")? {
        nix::unistd::ForkResult::Child => {
            drop(exit_rd);
            drop(listener);
            let code = vmm_process(cfg, &spec, pod, &keep, parent, exit_wr);
            std::process::exit(code)
        }
        nix::unistd::ForkResult::Parent { child } => VmmChild(child),
    };
    drop(exit_wr);
    // Our copies of the tap and console.log go: the tap must vanish with the
    // VMM process.
    drop(cfg);
    state::write_file(&pod.pid_file(), &std::process::id().to_string())?;
    let proxy = match private {
        Some(net) => Some(berth_net::proxy::start(&net.ports, net.address)?),
        None => None,
    };

    let _raw = if spec.stdio.tty {
        RawMode::enter()
    } else {
        None
    };
    let (tx, rx) = mpsc::channel();
    {
        let ready = Arc::clone(ready);
        let (stdin, tty) = (spec.stdio.interactive, spec.stdio.tty);
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                let _ = tx.send(serve_main(&listener, &ready, stdin, tty, &sigs));
            })
            .context("cannot start the control thread")?;
    }
    let exit = wait_vmm(child.disarm(), exit_rd);
    // A VM that ran may still have the app's last output and Exit frame in
    // flight; a VMM that failed to boot never connected.
    let relayed = if exit.error.is_some() {
        rx.try_recv().ok()
    } else {
        rx.recv_timeout(RELAY_DRAIN).ok()
    };
    let code = match relayed {
        Some(Ok(Some(code))) => code,
        other => {
            if let Some(Err(e)) = other {
                log::warn!("stage1-kvm: control channel: {e:#}");
            }
            let why = exit.error.clone().or_else(|| guest_diagnosis(pod));
            let code = exit.status.map_or(EXIT_BERTH_FAILED, i32::from);
            match &why {
                Some(line) => {
                    report(ready, &format!("error {code} {line}"));
                    eprintln!("berth: {line}");
                }
                None if exit.status.is_none() => {
                    let line = format!(
                        "the VM stopped ({}) without reporting the app's status; see {}",
                        exit.reason,
                        pod.console_log().display()
                    );
                    report(ready, &format!("error {EXIT_BERTH_FAILED} {line}"));
                    eprintln!("berth: {line}");
                }
                None => {}
            }
            code
        }
    };
    let _ = std::fs::remove_file(&main_path);
    let _ = std::fs::remove_file(&ctl);
    drop(proxy);
    release_net(pod, &spec);
    state::write_file(&pod.status_file(), &format!("{code}\n"))?;
    state::remove_if_requested(pod);
    Ok(code)
}

/// What the VMM process reports when the VM has stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct VmmReport {
    /// The status byte guest-init wrote, if any.
    status: Option<u8>,
    /// Why the VM stopped (the VMM's exit reason), for messages.
    reason: String,
    /// The VMM's own failure (boot error), if any.
    error: Option<String>,
}

impl VmmReport {
    fn encode(&self) -> String {
        let status = self.status.map_or("-".to_string(), |s| s.to_string());
        match &self.error {
            Some(e) => format!("error {e}\n"),
            None => format!("status {status} {}\n", self.reason),
        }
    }

    fn decode(line: &str) -> VmmReport {
        let line = line.trim_end();
        if let Some(e) = line.strip_prefix("error ") {
            return VmmReport {
                error: Some(e.to_string()),
                ..VmmReport::default()
            };
        }
        let mut it = line.strip_prefix("status ").unwrap_or("").splitn(2, ' ');
        let status = it.next().and_then(|s| s.parse().ok());
        let reason = it.next().unwrap_or("").to_string();
        if reason.is_empty() {
            return VmmReport {
                error: Some("the VMM process died without a report".into()),
                ..VmmReport::default()
            };
        }
        VmmReport {
            status,
            reason,
            error: None,
        }
    }
}

/// The VMM process: mount the overlay in a private mount namespace, drop
/// privileges, boot, run until the guest powers off; report on `report`.
/// Returns the process' exit code.
fn vmm_process(
    cfg: vmm::VmConfig,
    spec: &PodSpec,
    pod: &PodDir,
    keep: &[caps::Capability],
    parent: nix::unistd::Pid,
    report: std::os::fd::OwnedFd,
) -> i32 {
    let result = (|| -> Result<VmmReport> {
        // Die with the supervising stage1 (kill -9 included).
        // SAFETY: prctl(PR_SET_PDEATHSIG) only affects this process.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } < 0 {
            return Err(std::io::Error::last_os_error())
                .context("cannot tie the VMM process to the stage1's life");
        }
        if nix::unistd::getppid() != parent {
            anyhow::bail!("the stage1 exited before its VMM started");
        }
        rootfs::mount_overlay(spec, pod)?;
        drop_privileges(keep)?;
        let vm = vmm::Vm::boot(cfg).context("cannot boot the VM")?;
        let exit = vm.run().context("the VM failed")?;
        log::debug!(
            "stage1-kvm: setup {:?}, boot-to-init {:?}, total {:?}, reason {:?}",
            exit.setup_time,
            exit.boot_to_init,
            exit.total,
            exit.reason
        );
        Ok(VmmReport {
            status: exit.status,
            reason: format!("{:?}", exit.reason),
            error: None,
        })
    })();
    let (line, code) = match result {
        Ok(r) => (r.encode(), 0),
        Err(e) => {
            let r = VmmReport {
                error: Some(format!("{e:#}")),
                ..VmmReport::default()
            };
            (r.encode(), EXIT_BERTH_FAILED)
        }
    };
    let mut f = std::fs::File::from(report);
    let _ = std::io::Write::write_all(&mut f, line.as_bytes());
    code
}

/// The VMM process until [`wait_vmm`] takes it over: should setting up the
/// relay fail first, it is killed and reaped before the error goes up, so
/// no VM outlives the failed start.
struct VmmChild(nix::unistd::Pid);

impl VmmChild {
    fn disarm(self) -> nix::unistd::Pid {
        let pid = self.0;
        // Holds nothing but the pid: skipping Drop leaks nothing.
        std::mem::forget(self);
        pid
    }
}

impl Drop for VmmChild {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(self.0, None) {}
    }
}

/// Wait for the VMM process and read its report.
fn wait_vmm(child: nix::unistd::Pid, report: std::os::fd::OwnedFd) -> VmmReport {
    let mut line = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(report), &mut line);
    let status = loop {
        match nix::sys::wait::waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    let mut r = VmmReport::decode(&line);
    if line.is_empty() {
        if let Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) = status {
            r.error = Some(format!(
                "the VMM process was killed by {sig} without a report"
            ));
        }
    }
    r
}

/// Least privilege for the VMM: before its threads exist (capabilities are
/// per thread and inherited), keep only what its virtio-fs server needs to
/// create files as the guest's users (`keep`) — no CAP_SYS_ADMIN, no
/// CAP_NET_ADMIN, no CAP_SYS_PTRACE, no mounting — drop the rest from every
/// set including the bounding set, and set no_new_privs. Opening /dev/kvm
/// and everything else the VMM does needs no capability.
fn drop_privileges(keep: &[caps::Capability]) -> Result<()> {
    use caps::{CapSet, CapsHashSet};
    let keep: CapsHashSet = keep.iter().copied().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP.
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .with_context(|| format!("cannot drop {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("cannot clear ambient capabilities")?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .context("cannot clear inheritable capabilities")?;
    caps::set(None, CapSet::Effective, &keep).context("cannot set effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("cannot set permitted capabilities")?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) only restricts this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot set no_new_privs");
    }
    Ok(())
}

/// Release the pod's network (if private): port rules, tap, lease.
pub fn release_net(pod: &PodDir, spec: &PodSpec) {
    if let Some(net) = &spec.network.private {
        if let Err(e) = berth_net::release(&pod.state_root(), &spec.uuid, net) {
            log::warn!("stage1-kvm: cannot release the pod's network: {e}");
        }
    }
}

/// `02:ab:...` → bytes.
fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        anyhow::bail!("invalid MAC address {s:?} in the pod spec");
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)
            .with_context(|| format!("invalid MAC address {s:?} in the pod spec"))?;
    }
    Ok(mac)
}

/// The relay thread: accept guest-init's connection, report the start, relay.
fn serve_main(
    listener: &UnixListener,
    ready: &SharedReady,
    stdin: bool,
    tty: bool,
    sigs: &nix::sys::signal::SigSet,
) -> Result<Option<i32>> {
    let mut s = Session::accept_main(listener)?;
    match s.start()? {
        Start::Started => report(ready, "ok"),
        Start::Failed { status, message } => {
            report(ready, &format!("error {status} {message}"));
            eprintln!("berth: {message}");
        }
    }
    s.relay(stdin, tty, sigs)
}

/// guest-init's own failure line from the console log, if it printed one.
fn guest_diagnosis(pod: &PodDir) -> Option<String> {
    let log = std::fs::read_to_string(pod.console_log()).ok()?;
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("berth-guest-init: "))
        .map(|l| format!("guest-init: {l}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_report_round_trips() {
        for r in [
            VmmReport {
                status: Some(5),
                reason: "Reset".into(),
                error: None,
            },
            VmmReport {
                status: None,
                reason: "Shutdown (triple fault)".into(),
                error: None,
            },
            VmmReport {
                status: None,
                reason: String::new(),
                error: Some("cannot boot the VM: no kernel".into()),
            },
        ] {
            assert_eq!(VmmReport::decode(&r.encode()), r);
        }
        // A VMM killed before reporting.
        assert!(VmmReport::decode("").error.is_some());
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:0a:ff:00:10:01").unwrap(),
            [2, 10, 255, 0, 16, 1]
        );
        for bad in ["", "02:0a", "02:0a:ff:00:10:zz", "02:0a:ff:00:10:01:02"] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_port_socket_appends_the_port() {
        assert_eq!(
            host_port_socket(Path::new("/p/ctl.sock"), 1024),
            PathBuf::from("/p/ctl.sock_1024")
        );
    }

    #[test]
    fn guest_diagnosis_takes_the_last_guest_init_line() {
        let d = tempfile::tempdir().unwrap();
        let pod = PodDir::new(d.path());
        assert_eq!(guest_diagnosis(&pod), None);
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

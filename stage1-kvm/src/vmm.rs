//! The VMM process: forked by the stage1 (still single-threaded), it joins
//! the pod's cgroup and applies the VM's limits, mounts the pod's overlay in
//! a private mount namespace, keeps only the FUSE server's capabilities,
//! boots the VM and runs it until the guest powers off, then reports on a
//! pipe ([`VmmReport`]).

use anyhow::{Context, Result};
use berth_spec::cgroup::PodCgroup;
use berth_spec::systemd::Placement;
use berth_spec::{PodDir, PodSpec, Resources, EXIT_BERTH_FAILED};
use nix::sched::CloneFlags;
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;

/// Memory the VMM process may use beyond the guest's RAM: its own heap,
/// thread stacks, virtqueue and FUSE buffers, and the page cache of what
/// the FUSE server reads for the guest (reclaimable). The VMM's cgroup is
/// bounded to RAM + this.
pub const VMM_MEMORY_OVERHEAD: u64 = 64 << 20;

/// Tasks of the VMM process: one per vCPU plus the event loop and a few
/// helpers. (`--pids` bounds the guest's processes; guest-init enforces it.)
pub fn vmm_tasks(vcpus: u32) -> u32 {
    16 + vcpus
}

/// The VMM cgroup's limits: the VM's RAM plus [`VMM_MEMORY_OVERHEAD`] (no
/// swap), the CPU quota of `--cpus`, and the VMM's own task count.
pub fn host_limits(r: &Resources) -> Resources {
    Resources {
        memory: Some((r.vm_memory_mib() << 20) + VMM_MEMORY_OVERHEAD),
        cpu_millis: r.cpu_millis,
        pids: Some(vmm_tasks(r.vcpus())),
        disk: None,
    }
}

/// The devices the VMM process may open: the pod's built-ins, /dev/kvm and
/// (`--disk`) the one loop device its disk image is attached to.
fn vmm_devices(disk: Option<&berth_spec::disk::Attached>) -> Vec<berth_spec::Device> {
    let mut d = vec![berth_spec::Device {
        path: "/dev/kvm".into(),
        kind: berth_spec::DeviceKind::Char,
        major: 10,
        minor: 232,
        access: "rw".into(),
        mode: 0o600,
        uid: 0,
        gid: 0,
    }];
    if let Some(a) = disk {
        d.push(berth_spec::Device {
            path: a.dev.clone(),
            kind: berth_spec::DeviceKind::Block,
            major: 7,
            minor: a.minor,
            access: "rw".into(),
            mode: 0o600,
            uid: 0,
            gid: 0,
        });
    }
    d
}

/// What the VMM process reports when the VM has stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmmReport {
    /// The status byte guest-init wrote, if any.
    pub status: Option<u8>,
    /// Why the VM stopped (the VMM's exit reason), for messages.
    pub reason: String,
    /// The VMM's own failure (boot error), if any.
    pub error: Option<String>,
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

/// The VMM process until [`wait`] takes it over: should setting up the
/// relay fail first, it is killed and reaped before the error goes up, so
/// no VM outlives the failed start.
pub struct VmmChild(nix::unistd::Pid);

impl VmmChild {
    pub fn pid(&self) -> nix::unistd::Pid {
        self.0
    }

    pub fn disarm(self) -> nix::unistd::Pid {
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

/// Stack of the cloned VMM process's main thread (it runs the device event
/// loop; touched lazily).
const VMM_STACK_SIZE: usize = 8 << 20;

/// Clone the VMM process (the caller must still be single-threaded) into
/// its own namespaces ([`crate::jail`]), put it in the pod's cgroup
/// ([`berth_spec::systemd::place`]: limits, device policy) before it
/// touches guest RAM, start the pod's machined leader ([`holder`]) and
/// register it. Returns the VMM, its cgroup and the read end of its report
/// pipe. The caller's copies of the tap and console fds go with `cfg`: the
/// tap must vanish with the VMM.
pub fn spawn(
    cfg: vmm::VmConfig,
    spec: &PodSpec,
    pod: &PodDir,
    placement: &Placement,
) -> Result<(VmmChild, Holder, PodCgroup, OwnedFd)> {
    let keep = cfg.fs_capabilities();
    let ifindices: Vec<i32> = cfg
        .net
        .iter()
        .filter_map(|n| {
            std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", n.tap))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .collect();
    // A user namespace of the pod's mapping for the VMM to join, and the
    // overlay's directories given to the pod's root.
    let userns = match &spec.security.userns {
        Some(u) => {
            berth_spec::idmap::prepare_dirs(pod, spec, u)?;
            Some(berth_spec::idmap::new_userns(u)?)
        }
        None => None,
    };
    let (exit_rd, exit_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("cannot create the VMM's report pipe")?;
    let (go_rd, go_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("cannot create the VMM's start pipe")?;
    let (jailed_rd, jailed_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("cannot create the VMM's jail pipe")?;
    // Decided on the host: the VMM's Landlock (recorded for inspect) and
    // its --security-label, taken in its jail.
    let landlock = crate::landlock::for_run(pod, spec)?;
    let label = match &spec.security.label {
        Some(l) => {
            berth_spec::label::check_active(l, std::path::Path::new("/"))?;
            Some(l.prepare_current(std::path::Path::new("/")))
        }
        None => None,
    };
    let confine = Confine { landlock, label };
    // --disk: attached here, outside the pod's cgroup, whose device policy
    // then allows the VMM exactly this loop device (and no other pod's).
    let mut disk = match spec.resources.disk {
        Some(_) => Some(berth_spec::disk::attach_image(pod)?),
        None => None,
    };
    let devices = vmm_devices(disk.as_ref());
    let mut cfg = Some(cfg);
    let mut stack = vec![0u8; VMM_STACK_SIZE];
    let child = {
        let cb = Box::new(|| {
            let Some(cfg) = cfg.take() else { return 125 };
            let ends = Ends {
                go: &go_rd,
                jailed: &jailed_wr,
                report: &exit_wr,
            };
            let disk = disk.take();
            main(cfg, spec, pod, &keep, userns.as_ref(), &confine, disk, ends) as isize
        });
        let flags = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET;
        // SAFETY: without CLONE_VM the child runs `cb` on `stack` in its own
        // copy of our (single-threaded) address space, exactly like fork,
        // and exits with its value; no other thread exists yet (the control
        // and proxy threads start later, in the parent).
        unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
            .context("cannot create the VMM process")?
    };
    drop(cfg);
    // The child holds its own copy of the loop device's fd until it mounts.
    drop(disk);
    drop(exit_wr);
    drop(go_rd);
    drop(jailed_wr);
    let child = VmmChild(child);
    let leader = Holder(holder(child.pid(), jailed_rd)?);
    let cgroup = berth_spec::systemd::place(&berth_spec::systemd::Place {
        pod,
        spec,
        placement,
        leader: leader.0.as_raw(),
        members: vec![child.pid().as_raw()],
        root_directory: &pod.rootfs(),
        ifindices,
        limits: &host_limits(&spec.resources),
        devices: &devices,
    })?;
    nix::unistd::write(&go_wr, b"g").context("cannot start the VMM process")?;
    Ok((child, leader, cgroup, exit_rd))
}

/// The pod's machined leader ([`holder`]): killed and reaped on drop.
pub struct Holder(nix::unistd::Pid);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(self.0, None) {}
    }
}

/// What the VMM process confines itself with, besides its jail and
/// capabilities.
struct Confine {
    /// Landlock over the jail's paths ([`crate::landlock`]).
    landlock: bool,
    /// `--security-label`, resolved on the host (`attr/current`: the VMM
    /// takes it without an execve).
    label: Option<berth_spec::label::PreparedLabel>,
}

/// The pipe ends the VMM process uses.
struct Ends<'a> {
    go: &'a OwnedFd,
    jailed: &'a OwnedFd,
    report: &'a OwnedFd,
}

/// The pod's leader for machined: a small process whose root directory is
/// the pod's root filesystem — the VMM's overlay, as mounted in its jail —
/// so that `journalctl -M NAME` reads the journal the guest's journald
/// writes there over virtio-fs, and that turns machined's stop signals
/// (`machinectl poweroff`: SIGRTMIN+4; a scope's SIGTERM…) into a clean
/// stop of the pod (SIGTERM to this stage1, which asks the guest). It runs
/// nothing from the pod, holds no capability, and dies with the stage1.
fn holder(vmm: nix::unistd::Pid, jailed: OwnedFd) -> Result<nix::unistd::Pid> {
    use nix::sys::signal::{SigSet, Signal};
    let stage1 = nix::unistd::getpid();
    let mut stop = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stop.add(s);
    }
    let rt = [libc::SIGRTMIN() + 3, libc::SIGRTMIN() + 4];
    // SAFETY: no other thread exists yet; the child only makes syscalls and
    // exits.
    match unsafe { nix::unistd::fork() }.context("cannot fork the pod's leader")? {
        nix::unistd::ForkResult::Parent { child } => Ok(child),
        nix::unistd::ForkResult::Child => {
            // SAFETY: plain syscalls on values prepared before the fork.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                for s in stop.iter() {
                    libc::sigaddset(&mut set, s as i32);
                }
                for s in rt {
                    libc::sigaddset(&mut set, s);
                }
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                // Wait for the VMM's jail, then take its root filesystem
                // as ours.
                let mut b = [0u8; 1];
                let ok = libc::read(jailed.as_raw_fd(), b.as_mut_ptr().cast(), 1) == 1;
                drop(jailed);
                berth_spec::state::close_from(3, false);
                let root = format!("/proc/{}/root{}\0", vmm.as_raw(), crate::jail::ROOTFS);
                if !ok || libc::chroot(root.as_ptr().cast()) != 0 || libc::chdir(c"/".as_ptr()) != 0
                {
                    libc::_exit(1);
                }
                let _ = caps::clear(None, caps::CapSet::Effective);
                let _ = caps::clear(None, caps::CapSet::Permitted);
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                loop {
                    let mut sig: libc::c_int = 0;
                    if libc::sigwait(&set, &mut sig) == 0 {
                        libc::kill(stage1.as_raw(), libc::SIGTERM);
                    }
                }
            }
        }
    }
}

/// The VMM process: wait to be placed, mount the overlay, enter the jail
/// (and the pod's user namespace), drop privileges, boot, run until the
/// guest powers off; report on `report`. Returns the process' exit code.
#[allow(clippy::too_many_arguments)]
fn main(
    mut cfg: vmm::VmConfig,
    spec: &PodSpec,
    pod: &PodDir,
    keep: &[caps::Capability],
    userns: Option<&OwnedFd>,
    confine: &Confine,
    disk: Option<berth_spec::disk::Attached>,
    ends: Ends,
) -> i32 {
    let result = (|| -> Result<VmmReport> {
        // Die with the supervising stage1 (kill -9 included).
        // SAFETY: prctl(PR_SET_PDEATHSIG) only affects this process.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } < 0 {
            return Err(std::io::Error::last_os_error())
                .context("cannot tie the VMM process to the stage1's life");
        }
        // The stage1 places us in the pod's cgroup first: every page of
        // guest RAM is charged to the pod. (A stage1 that died before our
        // PDEATHSIG was set closed its end: EOF.)
        let mut b = [0u8; 1];
        if !matches!(nix::unistd::read(ends.go.as_raw_fd(), &mut b), Ok(1)) {
            anyhow::bail!("the stage1 could not place the VMM process in the pod's cgroup");
        }
        let t_overlay = std::time::Instant::now();
        let volume_trees = crate::rootfs::mount_overlay(spec, pod, userns, disk)?;
        let t_jail = std::time::Instant::now();
        // What the jail has no room for: /dev/kvm (as an fd), the PVM check.
        let kvm = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .context("cannot open /dev/kvm")?;
        cfg.kvm_fd = Some(kvm.into());
        cfg.pvm = Some(vmm::pvm::detected());
        let plan = crate::jail::JailPlan {
            jail: pod.jail_dir(),
            rootfs: pod.rootfs(),
            volumes: cfg.fs.iter().skip(1).map(|f| f.path.clone()).collect(),
            run_dir: pod.run_dir(),
            log_dir: pod.log_dir(),
            kernel: cfg.kernel.clone(),
            volume_trees: volume_trees.as_deref(),
        };
        crate::jail::enter(&plan)?;
        drop(volume_trees);
        cfg.kernel = crate::jail::KERNEL.into();
        for (i, f) in cfg.fs.iter_mut().enumerate() {
            f.path = if i == 0 {
                crate::jail::ROOTFS.into()
            } else {
                crate::jail::volume(i - 1)
            };
        }
        if let Some(v) = cfg.vsock.as_mut() {
            v.uds_path = std::path::Path::new(crate::jail::RUN).join("ctl.sock");
        }
        // At most ~2 × CONSOLE_LOG_MAX of console on disk (console.log and
        // console.log.1): a guest cannot fill the host's disk through it.
        let log_path = std::path::Path::new(crate::jail::LOG).join("console.log");
        let log = vmm::console_log::RotatingLog::create(&log_path, crate::run::CONSOLE_LOG_MAX)
            .context("cannot create the console log")?;
        cfg.serial_out = Box::new(log);
        // The pod's leader may take the jail's root filesystem now.
        let _ = nix::unistd::write(ends.jailed, b"j");
        let vmm_id = spec.kvm.as_ref().and_then(|k| k.vmm_id);
        if let Some(ns) = userns {
            // The pod's mapped root from here on: its FUSE server creates
            // files as the guest's users, mapped.
            nix::sched::setns(ns, CloneFlags::CLONE_NEWUSER)
                .context("cannot join the pod's user namespace")?;
            berth_spec::idmap::become_root()
                .context("cannot become root of the pod's user namespace")?;
        } else if let Some(id) = vmm_id {
            become_vmm_user(id)?;
        }
        if userns.is_some() || vmm_id.is_some() {
            // A change of credentials clears the parent-death signal.
            // SAFETY: prctl(PR_SET_PDEATHSIG) only affects this process.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } < 0 {
                return Err(std::io::Error::last_os_error())
                    .context("cannot tie the VMM process to the stage1's life");
            }
        }
        // The label first: writing it takes its /proc/thread-self attr
        // file, which Landlock leaves read-only.
        if let Some(l) = &confine.label {
            l.apply().context("cannot label the VMM process")?;
        }
        drop_privileges(keep)?;
        // After no_new_privs (drop_privileges), before any thread.
        if confine.landlock {
            crate::landlock::apply(cfg.fs.len().saturating_sub(1))?;
        }
        // The jail's own cost (bench/security.sh): what a VMM without one
        // would not do — namespaces aside, which clone(2) makes at once.
        log::debug!(
            "stage1-kvm: VMM overlay {:?}, jail {:?} (pivot, shares, user namespace, capabilities, Landlock)",
            t_jail.duration_since(t_overlay),
            t_jail.elapsed()
        );
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
    let _ = nix::unistd::write(ends.report, line.as_bytes());
    code
}

/// Wait for the VMM process and read its report.
pub fn wait(child: nix::unistd::Pid, report: OwnedFd) -> VmmReport {
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

/// Without a user namespace: become the pod's own VMM uid and gid
/// (`KvmSettings::vmm_id`, an id of the users pool no host user and no
/// other pod has), with no supplementary groups, keeping the capabilities
/// that [`drop_privileges`] then trims to the virtio-fs server's.
/// `SECBIT_NO_SETUID_FIXUP` (locked) makes set*id calls leave capabilities
/// alone: this one, and the server's per-request switches to the guest
/// caller (`vmm::devices::virtio::fs::creds`), which drop them for a
/// non-root caller themselves. Single-threaded callers only (libc's
/// set*id).
fn become_vmm_user(id: u32) -> Result<()> {
    use nix::unistd::{Gid, Uid};
    // SAFETY: prctl(PR_SET_SECUREBITS) changes only this process'
    // securebits (CAP_SETPCAP, which we still hold).
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECUREBITS,
            vmm::devices::virtio::fs::creds::SECBITS_FOR_SERVER,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot set the VMM's securebits");
    }
    let (uid, gid) = (Uid::from_raw(id), Gid::from_raw(id));
    nix::unistd::setgroups(&[]).context("cannot clear the VMM's groups")?;
    nix::unistd::setresgid(gid, gid, gid).with_context(|| format!("cannot become gid {id}"))?;
    nix::unistd::setresuid(uid, uid, uid).with_context(|| format!("cannot become uid {id}"))?;
    Ok(())
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
    fn host_limits_bound_the_whole_vm() {
        let r = Resources {
            memory: Some(512 << 20),
            cpu_millis: Some(1500),
            pids: Some(3),
            disk: None,
        };
        let h = host_limits(&r);
        assert_eq!(h.memory, Some((512 << 20) + VMM_MEMORY_OVERHEAD));
        assert_eq!(h.cpu_millis, Some(1500));
        assert_eq!(
            h.pids,
            Some(16 + 2),
            "the VMM's threads, not the guest's --pids"
        );
        let d = host_limits(&Resources::default());
        assert_eq!(
            d.memory,
            Some(berth_spec::KVM_DEFAULT_MEMORY + VMM_MEMORY_OVERHEAD)
        );
        assert_eq!(d.cpu_millis, None);
    }
}

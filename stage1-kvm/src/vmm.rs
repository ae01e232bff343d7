//! The VMM process: forked by the stage1 (still single-threaded), it joins
//! the pod's cgroup and applies the VM's limits, mounts the pod's overlay in
//! a private mount namespace, keeps only the FUSE server's capabilities,
//! boots the VM and runs it until the guest powers off, then reports on a
//! pipe ([`VmmReport`]).

use anyhow::{Context, Result};
use berth_spec::cgroup::PodCgroup;
use berth_spec::systemd::Placement;
use berth_spec::{PodDir, PodSpec, Resources, EXIT_BERTH_FAILED};
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

/// The devices the VMM process may open: the pod's built-ins and /dev/kvm.
fn vmm_devices() -> Vec<berth_spec::Device> {
    vec![berth_spec::Device {
        path: "/dev/kvm".into(),
        kind: berth_spec::DeviceKind::Char,
        major: 10,
        minor: 232,
        access: "rw".into(),
        mode: 0o600,
        uid: 0,
        gid: 0,
    }]
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

/// Fork the VMM process (the caller must still be single-threaded) and put
/// it in the pod's cgroup ([`berth_spec::systemd::place`]: limits, device
/// policy, machined registration with the VMM as the leader) before it
/// touches guest RAM. Returns it, its cgroup and the read end of its
/// report pipe. The caller's copies of the tap and console fds go with
/// `cfg`: the tap must vanish with the VMM.
pub fn spawn(
    cfg: vmm::VmConfig,
    spec: &PodSpec,
    pod: &PodDir,
    placement: &Placement,
) -> Result<(VmmChild, PodCgroup, OwnedFd)> {
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
    let (exit_rd, exit_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("cannot create the VMM's report pipe")?;
    let (go_rd, go_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("cannot create the VMM's start pipe")?;
    let parent = nix::unistd::getpid();
    // SAFETY: no other thread exists yet (the control and proxy threads
    // start later, in the parent); the child only runs the VMM and exits.
    match unsafe { nix::unistd::fork() }.context("cannot fork the VMM process")? {
        nix::unistd::ForkResult::Child => {
            drop(exit_rd);
            drop(go_wr);
            let code = main(cfg, spec, pod, &keep, parent, go_rd, exit_wr);
            std::process::exit(code)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(exit_wr);
            drop(go_rd);
            drop(cfg);
            let child = VmmChild(child);
            let cgroup = berth_spec::systemd::place(&berth_spec::systemd::Place {
                pod,
                spec,
                placement,
                leader: child.pid().as_raw(),
                root_directory: &pod.rootfs(),
                ifindices,
                limits: &host_limits(&spec.resources),
                devices: &vmm_devices(),
            })?;
            nix::unistd::write(&go_wr, b"g").context("cannot start the VMM process")?;
            Ok((child, cgroup, exit_rd))
        }
    }
}

/// The VMM process: join the cgroup, mount the overlay in a private mount
/// namespace, drop privileges, boot, run until the guest powers off;
/// report on `report`. Returns the process' exit code.
fn main(
    cfg: vmm::VmConfig,
    spec: &PodSpec,
    pod: &PodDir,
    keep: &[caps::Capability],
    parent: nix::unistd::Pid,
    go: OwnedFd,
    report: OwnedFd,
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
        // The stage1 places us in the pod's cgroup first: every page of
        // guest RAM is charged to the pod.
        let mut b = [0u8; 1];
        if !matches!(nix::unistd::read(go.as_raw_fd(), &mut b), Ok(1)) {
            anyhow::bail!("the stage1 could not place the VMM process in the pod's cgroup");
        }
        drop(go);
        crate::rootfs::mount_overlay(spec, pod)?;
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

//! `berth-stage1-kvm run POD_DIR`: build the rootfs disk and the initramfs,
//! boot the VM, pass signals to the app (as `signal N` control lines on the
//! serial console, which guest-init reads), and exit with the app's status
//! as guest-init reported it on the status port.

use crate::{assets, disk, initramfs};
use anyhow::{Context, Result};
use berth_spec::state::{self, Ready};
use berth_spec::{PodDir, PodSpec, EXIT_BERTH_FAILED};
use nix::sys::signal::{SigSet, Signal};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Until app output moves to its own channel (vsock), the app shares the one
/// serial line with the kernel, so the kernel prints nothing there (even
/// its KERN_EMERG "reboot: Restarting system"). Everything the guest prints
/// is also kept in the pod's console.log.
const QUIET_CMDLINE: &str = "quiet loglevel=0";

/// Copies serial output to our stdout and to console.log.
struct Tee {
    log: Option<std::fs::File>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(l) = &mut self.log {
            let _ = l.write_all(buf);
        }
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

pub fn run(pod: &PodDir) -> Result<i32> {
    let mut ready = Ready::from_env();
    match boot_and_wait(pod, &mut ready) {
        Ok(code) => Ok(code),
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            ready.send(&format!("error {EXIT_BERTH_FAILED} {}", chain.join(": ")));
            Err(e)
        }
    }
}

fn refuse_unsupported(spec: &PodSpec) -> Result<()> {
    if !spec.mounts.is_empty() {
        anyhow::bail!(
            "volumes are not supported by the kvm stage1 yet (they arrive with virtio-fs)"
        );
    }
    if spec.stdio.tty {
        anyhow::bail!("--tty is not supported by the kvm stage1 yet (it arrives with the vsock control channel)");
    }
    if spec.network.mode == berth_spec::NetworkMode::Host {
        anyhow::bail!("--net host is impossible with --stage1=kvm: a VM cannot share the host's network namespace");
    }
    Ok(())
}

fn boot_and_wait(pod: &PodDir, ready: &mut Ready) -> Result<i32> {
    let t0 = std::time::Instant::now();
    let spec = PodSpec::load(pod).context("cannot load the pod spec")?;
    let _lock = state::take_life_lock(pod)?;
    let _ = std::fs::remove_file(pod.status_file());
    refuse_unsupported(&spec)?;
    let kernel = assets::kernel(&spec)?;
    let init_path = assets::guest_init()?;
    let init = std::fs::read(&init_path)
        .with_context(|| format!("cannot read {}", init_path.display()))?;
    let cpio =
        initramfs::build(&init, spec.to_json().as_bytes()).context("cannot build the initramfs")?;
    let disk = disk::build(&spec, pod)?;
    log::debug!(
        "stage1-kvm: disk and initramfs ready after {:?}",
        t0.elapsed()
    );

    // Block the forwarded signals before any VMM thread exists, so only our
    // signal thread receives them.
    let mut mask = SigSet::empty();
    for s in berth_spec::FORWARDED_SIGNALS {
        if let Ok(sig) = Signal::try_from(*s) {
            mask.add(sig);
        }
    }
    mask.thread_block().context("cannot block signals")?;

    let kvm = spec.kvm.clone().unwrap_or(berth_spec::KvmSettings {
        kernel: None,
        memory_mib: 256,
        vcpus: 1,
    });
    let mut cfg = vmm::VmConfig::new(kernel);
    cfg.initramfs = Some(vmm::Initramfs::Bytes(cpio));
    cfg.extra_cmdline = QUIET_CMDLINE.to_string();
    // Debugging aid: extra guest kernel parameters (e.g. `loglevel=7` to see
    // kernel messages on the console again).
    if let Ok(extra) = std::env::var("BERTH_KVM_CMDLINE") {
        cfg.extra_cmdline.push(' ');
        cfg.extra_cmdline.push_str(&extra);
    }
    cfg.mem_mib = kvm.memory_mib;
    cfg.vcpus = u8::try_from(kvm.vcpus).context("too many vCPUs")?;
    cfg.block = vec![vmm::BlockConfig {
        path: disk,
        read_only: false,
    }];
    let log = std::fs::File::create(pod.console_log()).ok();
    cfg.serial_out = Box::new(Tee { log });
    let vm = vmm::Vm::boot(cfg).context("cannot boot the VM")?;
    state::write_file(&pod.pid_file(), &std::process::id().to_string())?;
    ready.send("ok");

    let input = Arc::new(Mutex::new(vm.serial_input()));
    {
        let input = Arc::clone(&input);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let Ok(sig) = mask.wait() else { return };
                if let Ok(i) = input.lock() {
                    let _ = i.send(format!("signal {}\n", sig as i32).as_bytes());
                }
            })
            .context("cannot start the signal thread")?;
    }
    let exit = vm.run().context("the VM failed")?;
    log::debug!(
        "stage1-kvm: setup {:?}, boot-to-init {:?}, total {:?}, reason {:?}",
        exit.setup_time,
        exit.boot_to_init,
        exit.total,
        exit.reason
    );
    let code = match exit.status {
        Some(s) => i32::from(s),
        None => {
            eprintln!(
                "berth: the VM stopped ({:?}) without reporting the app's status; see {}",
                exit.reason,
                pod.console_log().display()
            );
            EXIT_BERTH_FAILED
        }
    };
    state::write_file(&pod.status_file(), &format!("{code}\n"))?;
    state::remove_if_requested(pod);
    Ok(code)
}

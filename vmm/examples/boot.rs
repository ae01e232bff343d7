//! Boots a kernel with the serial console on stdout and reports timings.
//!
//! cargo run -p vmm --example boot -- --kernel VMLINUX [--initramfs FILE]
//!     [--cmdline "..."] [--mem 256] [--cpus 1] [--disk IMG[:ro]]... [--timeout SECS]
//!     [--fs TAG=DIR[:ro]]... (virtio-fs share; guest: mount -t virtiofs TAG /mnt)
//!     [--net TAP]...   (virtio-net on host tap TAP, eth0, eth1, …; MAC from the tap name)
//!     [--input TEXT]   (bytes sent to the guest's serial RX after boot)
//!     [--timestamps]   (prefix each console line with host time since Vm::boot)
//!
//! Seccomp filters are on (vmm::seccomp); BOOT_SECCOMP=off in the environment
//! boots without them (for bench/vmm-setup.sh's with/without comparison).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn usage() -> ExitCode {
    eprintln!(
        "usage: boot --kernel VMLINUX [--initramfs FILE] [--cmdline ARGS] [--mem MIB] \
         [--cpus N] [--disk IMG[:ro]]... [--fs TAG=DIR[:ro]]... [--net TAP]... [--timeout SECS] \
         [--input TEXT]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let t0 = Instant::now();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = std::env::args().skip(1);
    let mut kernel = None;
    let mut cfg_initramfs = None;
    let mut cmdline = String::new();
    let mut mem = 256u32;
    let mut cpus = 1u8;
    let mut disks = Vec::new();
    let mut shares = Vec::new();
    let mut nets = Vec::new();
    let mut timeout = None;
    let mut input: Option<String> = None;
    let mut timestamps = false;
    while let Some(a) = args.next() {
        let mut val = || args.next();
        match a.as_str() {
            "--kernel" => kernel = val().map(PathBuf::from),
            "--initramfs" => cfg_initramfs = val().map(PathBuf::from),
            "--cmdline" => cmdline = val().unwrap_or_default(),
            "--mem" => match val().and_then(|v| v.parse().ok()) {
                Some(v) => mem = v,
                None => return usage(),
            },
            "--cpus" => match val().and_then(|v| v.parse().ok()) {
                Some(v) => cpus = v,
                None => return usage(),
            },
            "--disk" => match val() {
                Some(d) => {
                    let (path, ro) = match d.strip_suffix(":ro") {
                        Some(p) => (p.to_string(), true),
                        None => (d, false),
                    };
                    disks.push(vmm::BlockConfig {
                        path: path.into(),
                        read_only: ro,
                    });
                }
                None => return usage(),
            },
            "--fs" => match val().as_deref().and_then(parse_share) {
                Some(share) => shares.push(share),
                None => return usage(),
            },
            "--net" => match val() {
                Some(tap) => nets.push(vmm::NetConfig {
                    fd: None,
                    mac: vmm::mac_from_id(tap.as_bytes()),
                    tap,
                }),
                None => return usage(),
            },
            "--timeout" => timeout = val().and_then(|v| v.parse::<u64>().ok()),
            "--input" => input = val(),
            "--timestamps" => timestamps = true,
            _ => return usage(),
        }
    }
    let Some(kernel) = kernel else {
        return usage();
    };
    let mut cfg = vmm::VmConfig::new(kernel);
    cfg.initramfs = cfg_initramfs.map(vmm::Initramfs::Path);
    cfg.extra_cmdline = cmdline;
    cfg.mem_mib = mem;
    cfg.vcpus = cpus;
    cfg.block = disks;
    cfg.fs = shares;
    cfg.net = nets;
    if std::env::var_os("BOOT_SECCOMP").is_some_and(|v| v == "off") {
        cfg.seccomp = vmm::SeccompLevel::Off;
    }
    if timestamps {
        cfg.serial_out = Box::new(Stamped {
            start: Instant::now(),
            at_line_start: true,
        });
    }

    let before_boot = t0.elapsed();
    let vm = match vmm::Vm::boot(cfg) {
        Ok(vm) => vm,
        Err(e) => {
            print_chain(&e);
            return ExitCode::from(125);
        }
    };
    eprintln!("boot: cmdline: {}", vm.cmdline());
    let rss = vm.rss_excluding_guest().unwrap_or(0);
    eprintln!(
        "boot: VMM RSS excluding guest RAM after boot: {:.2} MiB",
        rss as f64 / (1 << 20) as f64
    );
    if let Some(secs) = timeout {
        let h = vm.handle();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            eprintln!("boot: timeout, killing the VM");
            h.kill();
        });
    }
    if let Some(text) = input {
        let tx = vm.serial_input();
        std::thread::spawn(move || {
            let _ = tx.send(text.replace("\\n", "\n").as_bytes());
        });
    }
    // Peak VMM RSS (excluding guest RAM) while the guest runs, sampled every 50 ms.
    let sampler = {
        let h = vm.handle();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !h.stopping() {
                peak = peak.max(h.rss_excluding_guest().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let result = vm.run();
    if let Ok(peak) = sampler.join() {
        eprintln!(
            "boot: peak VMM RSS excluding guest RAM while running: {:.2} MiB",
            peak as f64 / (1 << 20) as f64
        );
    }
    match result {
        Ok(exit) => {
            eprintln!(
                "boot: exit {:?}, status {:?}, setup (Vm::boot -> first KVM_RUN) {:?}, \
                 boot-to-init {:?}, total {:?} (process start -> Vm::boot: {:?})",
                exit.reason,
                exit.status,
                exit.setup_time,
                exit.boot_to_init,
                exit.total,
                before_boot
            );
            ExitCode::from(exit.status.unwrap_or(0))
        }
        Err(e) => {
            print_chain(&e);
            ExitCode::from(125)
        }
    }
}

/// Parses `TAG=DIR[:ro]`.
fn parse_share(arg: &str) -> Option<vmm::FsConfig> {
    let (tag, rest) = arg.split_once('=')?;
    let (path, read_only) = match rest.strip_suffix(":ro") {
        Some(p) => (p, true),
        None => (rest, false),
    };
    if tag.is_empty() || path.is_empty() {
        return None;
    }
    Some(vmm::FsConfig {
        tag: tag.to_string(),
        path: path.into(),
        read_only,
        cache: vmm::ShareCache::Shared,
    })
}

/// Console writer prefixing each line with the host time since creation.
struct Stamped {
    start: Instant,
    at_line_start: bool,
}

impl std::io::Write for Stamped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        for b in buf {
            if self.at_line_start {
                write!(out, "{{{:8.3}}} ", self.start.elapsed().as_secs_f64())?;
            }
            out.write_all(&[*b])?;
            self.at_line_start = *b == b'\n';
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

fn print_chain(e: &dyn std::error::Error) {
    eprintln!("boot: error: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        eprintln!("  caused by: {s}");
        src = s.source();
    }
}

//! Boots a real kernel on /dev/kvm. Needs root, /dev/kvm and a kernel built
//! by kernel-config/build.sh: BERTH_VMM_TEST_KERNEL, else the one `make
//! setup` installs (/usr/local/lib/berth/vmlinux); optionally an initramfs as
//! BERTH_VMM_TEST_INITRAMFS. Skipped (with a message) only on a host without
//! /dev/kvm; a missing kernel is a set-up error and fails the test.
//! On PVM hosts expect ~15-35 s. Runs with the VMM's seccomp filters
//! enforced, in `trap` mode: a syscall missing from them ends the test
//! binary with status 159 and `berth-vmm: seccomp: … syscall N (name)`.

// Test code: a failing step panics, and the panic is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn boots_to_kernel_panic_or_init() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipped: this host has no /dev/kvm");
        return;
    }
    let kernel = std::env::var("BERTH_VMM_TEST_KERNEL")
        .unwrap_or_else(|_| "/usr/local/lib/berth/vmlinux".to_string());
    assert!(
        Path::new(&kernel).is_file(),
        "guest kernel {kernel} not found: run `make setup` (or set BERTH_VMM_TEST_KERNEL)"
    );
    // Seccomp enforced (the default), with forbidden syscalls reported by
    // name on stderr (and exit status 159) rather than a bare SIGSYS kill.
    if std::env::var_os(vmm::seccomp::MODE_ENV).is_none() {
        std::env::set_var(vmm::seccomp::MODE_ENV, "trap");
    }
    let out = Capture::default();
    let mut cfg = vmm::VmConfig::new(kernel);
    assert_eq!(cfg.seccomp, vmm::SeccompLevel::Enforce);
    cfg.serial_out = Box::new(out.clone());
    cfg.mem_mib = 128;
    let with_init = std::env::var("BERTH_VMM_TEST_INITRAMFS").ok();
    cfg.initramfs = with_init.clone().map(|p| vmm::Initramfs::Path(p.into()));
    let vm = vmm::Vm::boot(cfg).expect("boot");
    let rss = vm.rss_excluding_guest().expect("rss");
    assert!(rss < 16 << 20, "VMM RSS {rss}");
    let handle = vm.handle();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(240));
        handle.kill();
    });
    let exit = vm.run().expect("run");
    let text = String::from_utf8_lossy(&out.0.lock().unwrap()).to_string();
    assert!(text.contains("Linux version"), "{text}");
    assert_eq!(exit.reason, vmm::ExitReason::Reset, "{text}");
    assert!(exit.setup_time < Duration::from_secs(1));
    if with_init.is_some() {
        assert!(exit.boot_to_init.is_some(), "{text}");
        assert!(exit.status.is_some(), "{text}");
    } else {
        assert!(text.contains("Kernel panic"), "{text}");
    }
}

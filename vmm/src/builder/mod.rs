//! The boot recipe, [`Vm::boot`]: one linear sequence of named steps, each
//! in its own module: configuration checks ([`config`]) → guest memory,
//! kernel and initramfs, KVM VM ([`memory`]) → devices ([`devices`]) →
//! command line ([`cmdline`]) → zero page, boot tables, MP table
//! ([`system`]) → event loop → vCPUs ([`vcpus`], each confined by its
//! seccomp filter, [`crate::seccomp`]) → a [`RunningVm`] ([`running`]).

pub mod cmdline;
pub mod config;
pub mod devices;
pub mod error;
pub mod memory;
pub mod running;
pub mod system;
pub mod vcpus;

use std::time::Instant;

pub use cmdline::{build_cmdline, BASE_CMDLINE};
pub use config::{validate_fs, BlockConfig, FsConfig, Initramfs, NetConfig, VmConfig, VsockConfig};
pub use error::BuildError;
pub use running::{RunningVm, VmExitInfo, VmHandle};
pub use vcpus::PROFILE_ENV;

pub use crate::devices::virtio::net::mac_from_id;

use crate::device_manager::DeviceManager;
use crate::pvm;
use crate::seccomp;

/// Entry point: boots VMs.
pub struct Vm;

impl Vm {
    /// Boots a VM from `cfg` and starts its vCPUs; returns once vCPU 0 is
    /// about to enter its first KVM_RUN (or after 1 s, if its thread has not
    /// been scheduled by then).
    pub fn boot(mut cfg: VmConfig) -> Result<RunningVm, BuildError> {
        let start = Instant::now();
        cfg.validate()?;
        let pvm = pvm::quirks_on(cfg.pvm);
        let num_vcpus = vcpus::vcpu_count(cfg.vcpus, pvm);
        let filters = seccomp::Filters::new(cfg.seccomp).map_err(BuildError::Seccomp)?;
        let mem_size = u64::from(cfg.mem_mib) << 20;

        let mem = memory::guest_memory(mem_size)?;
        log::trace!("vmm: guest memory mapped after {:?}", start.elapsed());
        let kernel = memory::map_kernel(&mem, &cfg.kernel)?;
        let (vm, images) = memory::create_vm_and_load_images(
            mem,
            &kernel,
            cfg.initramfs.as_ref(),
            cfg.kvm_fd.take(),
            start,
        )?;
        log::debug!(
            "vmm: VM created, kernel and initramfs loaded after {:?}",
            start.elapsed()
        );

        let (shared, exit_handler) = devices::shared_state(start)?;
        let mut dm = DeviceManager::new();
        let serial = devices::attach_legacy_devices(&vm, &mut dm, &shared, cfg.serial_out)?;
        let virtio = devices::VirtioDevices {
            block: &cfg.block,
            fs: &cfg.fs,
            vsock: cfg.vsock.as_ref(),
            net: &cfg.net,
            balloon: cfg.free_page_reporting,
        };
        let virtio_handlers = devices::attach_virtio_devices(&vm, &mut dm, virtio)?;

        let cmdline =
            cmdline::write_cmdline(&vm.mem, &cfg.extra_cmdline, &dm.cmdline_entries(), pvm)?;
        system::configure_system(&vm.mem, mem_size, cmdline.len(), images.initrd, num_vcpus)?;
        log::debug!(
            "vmm: devices and boot tables ready after {:?}",
            start.elapsed()
        );

        let event_manager = devices::event_loop(exit_handler, &serial, virtio_handlers)?;
        let vcpu_filter = filters.vcpu.as_ref();
        let vcpus =
            vcpus::create_vcpus(&vm, num_vcpus, images.entry, dm, &shared, pvm, vcpu_filter)?;
        let vcpus = vcpus::start_vcpus(vcpus, &shared)?;
        Ok(RunningVm {
            vm,
            shared,
            vcpus,
            event_manager,
            serial,
            cmdline,
            pvm,
            event_loop_filter: filters.event_loop,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn fs_config_validation() {
        let tmp = tempfile::tempdir().unwrap();
        let share = |tag: &str, path: &Path, read_only| FsConfig {
            tag: tag.into(),
            path: path.to_path_buf(),
            read_only,
            cache: Default::default(),
        };
        validate_fs(&[]).unwrap();
        validate_fs(&[share("a", tmp.path(), false), share("b", tmp.path(), true)]).unwrap();
        let e = validate_fs(&[share("a", tmp.path(), false), share("a", tmp.path(), true)])
            .unwrap_err();
        assert!(matches!(e, BuildError::DuplicateFsTag(ref t) if t == "a"));
        let long = "t".repeat(37);
        let e = validate_fs(&[share(&long, tmp.path(), false)]).unwrap_err();
        assert!(format!("{e}").contains(&long));
        let e = validate_fs(&[share("", tmp.path(), false)]).unwrap_err();
        assert!(matches!(e, BuildError::Fs(..)));
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let e = validate_fs(&[share("x", &file, false)]).unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(chain.contains(&file.display().to_string()), "{chain}");

        let mut cfg = VmConfig::new("/vmlinux");
        assert!(cfg.fs.is_empty());
        assert!(cfg.fs_capabilities().is_empty());
        cfg.fs.push(share("ro", tmp.path(), true));
        assert_eq!(cfg.fs_capabilities(), [caps::Capability::CAP_DAC_OVERRIDE]);
    }

    #[test]
    fn reserved_vsock_cid_refused_by_value() {
        for cid in [0, 1, 2, u32::MAX] {
            let mut cfg = VmConfig::new("/nonexistent/vmlinux");
            cfg.vsock = Some(VsockConfig {
                guest_cid: cid,
                uds_path: "/nonexistent/v.sock".into(),
            });
            let err = Vm::boot(cfg).err().unwrap();
            assert!(matches!(err, BuildError::InvalidVsockCid(c) if c == cid));
            assert!(err.to_string().contains(&cid.to_string()));
        }
    }

    #[test]
    fn bad_tap_name_refused_before_boot() {
        let mut cfg = VmConfig::new("/nonexistent/vmlinux");
        cfg.net.push(NetConfig {
            tap: "tap0".into(),
            fd: None,
            mac: mac_from_id(b"pod"),
        });
        cfg.net.push(NetConfig {
            tap: "this-name-is-too-long".into(),
            fd: None,
            mac: mac_from_id(b"pod"),
        });
        let Err(e) = Vm::boot(cfg) else {
            panic!("boot accepted a bad tap name")
        };
        assert!(matches!(e, BuildError::InvalidNet(_)), "{e:?}");
        let mut chain = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            chain = format!("{chain}: {s}");
            src = s.source();
        }
        assert!(chain.contains("\"this-name-is-too-long\""), "{chain}");
        let bad_mac = NetConfig {
            tap: "tap0".into(),
            fd: None,
            mac: [0x03, 0, 0, 0, 0, 1],
        };
        let e = bad_mac.validate().unwrap_err();
        assert!(e.to_string().contains("03:00:00:00:00:01"), "{e}");
    }
}

#[cfg(test)]
mod send_tests {
    fn assert_send<T: Send>() {}

    #[test]
    fn handles_are_send() {
        assert_send::<super::VmHandle>();
        assert_send::<crate::SerialInput>();
        assert_send::<super::RunningVm>();
        assert_send::<super::VmConfig>();
    }
}

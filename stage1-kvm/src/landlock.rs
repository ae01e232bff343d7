//! The VMM's Landlock (`berth_spec::landlock` holds the ruleset): once in
//! its jail ([`crate::jail`]) and before it starts a thread, the VMM
//! process confines itself to the jail's own paths, so that a VMM
//! compromise that finds a way past the jail's mounts (a descriptor it
//! still holds, a missed mount) opens nothing else:
//!
//! ```text
//! /rootfs, /vol/<i>  read-write, no execute: the shares its virtio-fs
//!                    server serves (create, remove, rename, link, make
//!                    devices/fifos/sockets, truncate — the guest's files)
//! /run               read-write: its vsock sockets (bind, connect)
//! /log               read-write: the console log and its rotation
//! /kernel            read-only
//! /dev/kvm           read-write (it holds /dev/kvm open already)
//! /proc              read-only: its pid namespace's (the FUSE server
//!                    reopens inodes through /proc/self/fd; a reopened
//!                    file is checked on its own path, in a share)
//! ```
//!
//! Nothing is executable: the VMM never execs. It is scoped for signals
//! and abstract unix sockets (ABI 6+): it cannot signal the stage1 or any
//! host process. Recorded in `POD_DIR/landlock.json` (one domain, `vmm`)
//! for `berth inspect`; `--security-opt landlock=off` turns it off, and a
//! kernel without Landlock gets one warning line.

use anyhow::{Context, Result};
use berth_spec::landlock::{kernel_abi, Access, Domain, LandlockState, Ruleset, Scopes};
use berth_spec::{LandlockMode, PodDir, PodSpec};
use std::path::Path;

const SCOPES: Scopes = Scopes {
    signal: true,
    abstract_unix_socket: true,
};

/// What a pod with this spec gets on a kernel with Landlock ABI `abi`.
fn state(spec: &PodSpec, abi: Option<u32>) -> LandlockState {
    if spec.security.landlock == LandlockMode::Off {
        return LandlockState::Off;
    }
    let Some(abi) = abi else {
        return LandlockState::Unsupported;
    };
    LandlockState::Enforced {
        abi,
        domains: vec![Domain {
            who: "vmm".into(),
            files: true,
            // Scopes came with ABI 6.
            scoped: if abi >= 6 { SCOPES.names() } else { Vec::new() },
        }],
    }
}

/// Before the VMM process starts: decide, record, warn once where the
/// kernel has no Landlock. True: the VMM confines itself.
pub fn for_run(pod: &PodDir, spec: &PodSpec) -> Result<bool> {
    let s = state(spec, kernel_abi());
    s.record(pod)?;
    Ok(match s {
        LandlockState::Enforced { .. } => true,
        LandlockState::Off => false,
        LandlockState::Unsupported => {
            log::warn!(
                "stage1-kvm: this kernel has no Landlock: the VMM of pod {} runs without it",
                spec.name
            );
            false
        }
    })
}

/// In the VMM process, in its jail, single-threaded, with no_new_privs
/// set: enforce the ruleset over the jail's paths (`volumes` shares
/// besides the rootfs).
pub fn apply(volumes: usize) -> Result<()> {
    let mut rs = Ruleset::new().scopes(SCOPES);
    let mut allow = |p: &Path, a: Access| -> Result<()> {
        rs = std::mem::take(&mut rs).allow_path(p, a)?;
        Ok(())
    };
    allow(Path::new(crate::jail::ROOTFS), Access::ReadWrite)?;
    for i in 0..volumes {
        allow(&crate::jail::volume(i), Access::ReadWrite)?;
    }
    allow(Path::new(crate::jail::RUN), Access::ReadWrite)?;
    allow(Path::new(crate::jail::LOG), Access::ReadWrite)?;
    allow(Path::new(crate::jail::KERNEL), Access::ReadOnly)?;
    allow(Path::new("/dev/kvm"), Access::ReadWrite)?;
    allow(Path::new("/proc"), Access::ReadOnly)?;
    rs.restrict_self()
        .context("cannot confine the VMM process with Landlock")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PodSpec {
        PodSpec::new(
            "t",
            "0b6e8d2c-3a7f-4c1e-9d2a-5f6b7c8d9e0f",
            vec!["/bin/true".into()],
            "/img",
        )
    }

    #[test]
    fn states() {
        let mut s = spec();
        assert_eq!(state(&s, None), LandlockState::Unsupported);
        assert_eq!(
            state(&s, Some(7)).describe(),
            "ABI 7 (vmm: files confined, scoped (signal, abstract-unix-socket))"
        );
        assert_eq!(state(&s, Some(4)).describe(), "ABI 4 (vmm: files confined)");
        s.security.landlock = LandlockMode::Off;
        assert_eq!(state(&s, Some(7)), LandlockState::Off);
    }
}

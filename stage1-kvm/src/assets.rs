//! Where the guest kernel and guest-init come from.
//!
//! Kernel: the spec's `kvm.kernel`, else `$BERTH_KERNEL`, else
//! `/usr/local/lib/berth/vmlinux` (installed by `make setup` from
//! kernel-config/build.sh). guest-init: `$BERTH_GUEST_INIT`, else
//! `berth-guest-init` next to this executable, else
//! `/usr/local/lib/berth/berth-guest-init` — the first that is a static ELF
//! (a dynamically linked build, e.g. `cargo build`'s host one, cannot run in
//! the initramfs, which has no libc).

use std::path::{Path, PathBuf};

pub const LIB_DIR: &str = "/usr/local/lib/berth";

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("guest kernel {0} not found (run make setup, or set BERTH_KERNEL)")]
    Kernel(PathBuf),
    #[error("guest-init not found (looked in {0}; run make setup, or set BERTH_GUEST_INIT)")]
    GuestInit(String),
}

pub fn kernel(spec: &berth_spec::PodSpec) -> Result<PathBuf, AssetError> {
    let p = spec
        .kvm
        .as_ref()
        .and_then(|k| k.kernel.clone())
        .or_else(|| std::env::var_os("BERTH_KERNEL").map(PathBuf::from))
        .unwrap_or_else(|| Path::new(LIB_DIR).join("vmlinux"));
    if p.is_file() {
        Ok(p)
    } else {
        Err(AssetError::Kernel(p))
    }
}

pub fn guest_init() -> Result<PathBuf, AssetError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("BERTH_GUEST_INIT") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("berth-guest-init"));
    }
    candidates.push(Path::new(LIB_DIR).join("berth-guest-init"));
    candidates
        .iter()
        .find(|p| is_static_elf(p))
        .cloned()
        .ok_or_else(|| {
            AssetError::GuestInit(
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
}

/// An ELF executable without a program interpreter (PT_INTERP).
pub fn is_static_elf(p: &Path) -> bool {
    let Ok(b) = std::fs::read(p) else {
        return false;
    };
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
    };
    // 64-bit little-endian ELF only (x86_64).
    if b.get(0..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..usize::from(phnum)).all(|i| {
        let off = usize::try_from(phoff)
            .unwrap_or(usize::MAX)
            .saturating_add(i.saturating_mul(usize::from(phentsize)));
        u32_at(off).is_some_and(|t| t != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_elf_detection() {
        // The test binary itself is dynamically linked (gnu target).
        let me = std::env::current_exe().unwrap();
        assert!(!is_static_elf(&me));
        // busybox-static, when installed, is static.
        let bb = Path::new("/bin/busybox");
        if bb.exists()
            && std::process::Command::new("ldd")
                .arg(bb)
                .output()
                .is_ok_and(|o| !o.status.success())
        {
            assert!(is_static_elf(bb));
        }
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x");
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        assert!(!is_static_elf(&f));
        std::fs::write(&f, [0x7f, b'E', b'L', b'F', 2, 1, 0]).unwrap();
        assert!(!is_static_elf(&f), "truncated header");
    }
}

//! Where the guest kernel and guest-init come from.
//!
//! Kernel: the spec's `kvm.kernel`, else `$BERTH_KERNEL`, else
//! `/usr/local/lib/berth/vmlinux` (installed by `make setup` from
//! kernel-config/build.sh). guest-init: `$BERTH_GUEST_INIT`, else
//! `berth-guest-init` next to this executable, else
//! `/usr/local/lib/berth/berth-guest-init`.

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
        .find(|p| p.is_file())
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

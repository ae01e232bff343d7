//! The pod's root filesystem as a virtio-blk disk: the pod's overlay (image +
//! the pod's upper directory) is mounted in stage1-kvm's private mount
//! namespace and copied into an ext4 image with `mke2fs -d`.
//!
//! This is the first kvm step; the virtio-fs issue replaces the copy with a
//! live share, so changes made in the guest are then seen on the host.

use berth_spec::{PodDir, PodSpec};
use nix::mount::{mount, MsFlags};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Headroom added to the rootfs size: free space for the app, and room for
/// ext4's own metadata.
const SLACK_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot create a private mount namespace")]
    Unshare(#[source] nix::Error),
    #[error("cannot mount the pod's overlay on {path}")]
    Overlay {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("rootfs image {0} is not a directory")]
    MissingImage(PathBuf),
    #[error("cannot measure {path}")]
    Walk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run mke2fs (install e2fsprogs)")]
    Spawn(#[source] std::io::Error),
    #[error("mke2fs failed for {path}: {stderr}")]
    Mkfs { path: PathBuf, stderr: String },
}

/// Build `<pod>/rootfs.ext4` from the pod's rootfs. Returns its path.
pub fn build(spec: &PodSpec, pod: &PodDir) -> Result<PathBuf, DiskError> {
    if !spec.rootfs.image.is_dir() {
        return Err(DiskError::MissingImage(spec.rootfs.image.clone()));
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(DiskError::Unshare)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(DiskError::Unshare)?;
    let root = pod.rootfs();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        spec.rootfs.image.display(),
        pod.upper().display(),
        pod.work().display()
    );
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|source| DiskError::Overlay {
        path: root.clone(),
        source,
    })?;
    let used = tree_size(&root)?;
    let image = pod.path().join("rootfs.ext4");
    let size_kib = (used + used / 4 + SLACK_BYTES).div_ceil(1024);
    let out = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-L",
            "berth-root",
            "-d",
        ])
        .arg(&root)
        .arg(&image)
        .arg(format!("{size_kib}k"))
        .output()
        .map_err(DiskError::Spawn);
    // The copy is done: the overlay is not needed while the VM runs, and
    // leaving it mounted would keep the pod directory busy.
    let _ = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH);
    let out = out?;
    if !out.status.success() {
        return Err(DiskError::Mkfs {
            path: image,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(image)
}

/// Apparent size of every file below `dir` plus a block per inode.
fn tree_size(dir: &Path) -> Result<u64, DiskError> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| DiskError::Walk {
            path: d.clone(),
            source,
        })?;
        for e in rd {
            let e = e.map_err(|source| DiskError::Walk {
                path: d.clone(),
                source,
            })?;
            let m = e.metadata().map_err(|source| DiskError::Walk {
                path: e.path(),
                source,
            })?;
            total += m.len() + 4096;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_size_counts_files_and_inodes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![0u8; 10_000]).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), vec![0u8; 5_000]).unwrap();
        let n = tree_size(d.path()).unwrap();
        assert!(n >= 15_000 + 3 * 4096, "{n}");
    }
}

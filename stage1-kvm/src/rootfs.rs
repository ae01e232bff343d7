//! The pod's filesystems as virtio-fs shares: the pod's overlay (image +
//! the pod's upper directory) is mounted in stage1-kvm's private mount
//! namespace and shared live with the guest (tag `rootfs`), so changes made
//! in the guest land in the pod's upper directory and are seen on the host,
//! and vice versa; each volume is its own share (`vol<i>`), read-only ones
//! refused host-side by the VMM's FUSE server as well as mounted read-only
//! in the guest.

use berth_spec::{kvm, PodDir, PodSpec};
use nix::mount::{mount, MsFlags};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
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
    #[error(
        "volume source {0} is not a directory: the kvm stage1 shares directories \
         (virtio-fs); mount its parent directory instead"
    )]
    VolumeNotDir(PathBuf),
}

/// One virtio-fs share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub tag: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// Check the volumes, mount the pod's overlay (in a new private mount
/// namespace of this process: it disappears with us, so a killed stage1
/// leaves no mount behind) and list the shares. Must run before any thread
/// is started (unshare(CLONE_NEWNS) needs a single-threaded process).
pub fn prepare(spec: &PodSpec, pod: &PodDir) -> Result<Vec<Share>, RootfsError> {
    if !spec.rootfs.image.is_dir() {
        return Err(RootfsError::MissingImage(spec.rootfs.image.clone()));
    }
    let mut shares = Vec::with_capacity(1 + spec.mounts.len());
    for (i, m) in spec.mounts.iter().enumerate() {
        if !m.source.is_dir() {
            return Err(RootfsError::VolumeNotDir(m.source.clone()));
        }
        shares.push(Share {
            tag: kvm::volume_tag(i),
            path: m.source.clone(),
            read_only: m.read_only,
        });
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(RootfsError::Unshare)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(RootfsError::Unshare)?;
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
    .map_err(|source| RootfsError::Overlay {
        path: root.clone(),
        source,
    })?;
    shares.insert(
        0,
        Share {
            tag: kvm::ROOT_FS_TAG.to_string(),
            path: root,
            read_only: false,
        },
    );
    Ok(shares)
}

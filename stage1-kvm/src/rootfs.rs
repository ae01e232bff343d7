//! The pod's filesystems as virtio-fs shares: the pod's overlay (image +
//! the pod's upper directory) is mounted in the VMM process' private mount
//! namespace and shared live with the guest (tag `rootfs`), so changes made
//! in the guest land in the pod's upper directory and are seen on the host,
//! and vice versa; each volume is its own share (`vol<i>`), read-only ones
//! refused host-side by the VMM's FUSE server as well as mounted read-only
//! in the guest.

use berth_spec::{idmap, kvm, PodDir, PodSpec};
use nix::mount::{mount, MsFlags};
use std::os::fd::{AsRawFd, OwnedFd};
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
    #[error(transparent)]
    Disk(#[from] berth_spec::disk::DiskError),
    #[error(transparent)]
    Idmap(#[from] berth_spec::idmap::IdmapError),
    #[error("cannot attach the idmapped layer on {0}")]
    Lower(PathBuf, #[source] std::io::Error),
    #[error("cannot write the pod's /etc/resolv.conf and /etc/hosts")]
    Etc(#[source] std::io::Error),
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
    /// Only the guest changes it while the VM runs, so the guest may cache
    /// it for long (`vmm::ShareCache::GuestOwned`): true for the pod's
    /// root — its lower layers are read-only and its upper directory is
    /// written by nobody but the guest until the VM stops (stage1 writes
    /// /etc/resolv.conf and /etc/hosts there before boot; host readers,
    /// such as of the journal, only read) — and false for volumes, which
    /// the host may change at any time.
    pub guest_owned: bool,
}

/// Check the image and the volumes and list the shares (tag `rootfs` first:
/// the pod's overlay at `pod.rootfs()`, mounted later by [`mount_overlay`]).
pub fn shares(spec: &PodSpec, pod: &PodDir) -> Result<Vec<Share>, RootfsError> {
    if !spec.rootfs.image.is_dir() {
        return Err(RootfsError::MissingImage(spec.rootfs.image.clone()));
    }
    let mut shares = Vec::with_capacity(1 + spec.mounts.len());
    shares.push(Share {
        tag: kvm::ROOT_FS_TAG.to_string(),
        path: pod.rootfs(),
        read_only: false,
        guest_owned: true,
    });
    for (i, m) in spec.mounts.iter().enumerate() {
        if !m.source.is_dir() {
            return Err(RootfsError::VolumeNotDir(m.source.clone()));
        }
        shares.push(Share {
            tag: kvm::volume_tag(i),
            path: m.source.clone(),
            read_only: m.read_only,
            guest_owned: false,
        });
    }
    Ok(shares)
}

/// Mount the pod's overlay on `pod.rootfs()` in the calling process's
/// private mount namespace — the VMM process's: the mount disappears with
/// it, so neither a finished nor a killed VM leaves a mount behind, and the
/// supervising stage1 (which removes the pod directory) never sees it.
/// With a user namespace (`userns`: its fd) the image and layers are
/// idmapped into it, and the volumes' detached mounts are returned (for the
/// jail: read-only ones idmapped, read-write ones plain, as on ns).
/// `disk`: the pod's `--disk` image, attached by the stage1 before the VMM
/// entered the pod's cgroup (whose device policy allows only that loop
/// device).
pub fn mount_overlay(
    spec: &PodSpec,
    pod: &PodDir,
    userns: Option<&OwnedFd>,
    disk: Option<berth_spec::disk::Attached>,
) -> Result<Option<Vec<OwnedFd>>, RootfsError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(RootfsError::Unshare)?;
    if let Some(d) = disk {
        berth_spec::disk::mount_attached(pod, d)?;
    }
    if let Some(net) = &spec.network.private {
        // Into the overlay's upper layer before it is mounted: the guest
        // sees them as its /etc/resolv.conf and /etc/hosts.
        berth_net::etc::write(&pod.upper(), &spec.hostname, net).map_err(RootfsError::Etc)?;
    }
    let root = pod.rootfs();
    let (opts, volumes) = match userns {
        None => (spec.rootfs.overlay_options(&pod.upper(), &pod.work()), None),
        Some(ns) => {
            let mut lowers = Vec::new();
            for (i, l) in spec.rootfs.lowers().iter().enumerate() {
                let tree = idmap::detached(l, ns, true, true)?;
                let dir = idmap::lower_dir(pod, i);
                let at: OwnedFd = std::fs::File::open(&dir)
                    .map_err(|e| RootfsError::Lower(dir.clone(), e))?
                    .into();
                idmap::attach(&tree, at.as_raw_fd())
                    .map_err(|e| RootfsError::Lower(dir.clone(), e))?;
                lowers.push(dir);
            }
            let lowers: Vec<&std::path::Path> = lowers.iter().map(PathBuf::as_path).collect();
            let volumes = spec
                .mounts
                .iter()
                .map(|m| idmap::detached(&m.source, ns, m.read_only, m.read_only))
                .collect::<Result<Vec<_>, _>>()?;
            (
                berth_spec::overlay_options(&lowers, &pod.upper(), &pod.work()),
                Some(volumes),
            )
        }
    };
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|source| RootfsError::Overlay { path: root, source })?;
    Ok(volumes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_the_root_then_each_volume_and_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        std::fs::create_dir(&img).unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let pod = PodDir::new(d.path().join("pod"));
        let mut spec = crate::test_spec();
        spec.rootfs.image = img.clone();
        spec.mounts = vec![berth_spec::Mount {
            source: img.clone(),
            destination: "/v".into(),
            read_only: true,
        }];
        let got = shares(&spec, &pod).unwrap();
        assert_eq!(
            got,
            [
                Share {
                    tag: "rootfs".into(),
                    path: pod.rootfs(),
                    read_only: false,
                    guest_owned: true,
                },
                Share {
                    tag: "vol0".into(),
                    path: img.clone(),
                    read_only: true,
                    guest_owned: false,
                }
            ]
        );
        spec.mounts[0].source = file.clone();
        let err = shares(&spec, &pod).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        spec.rootfs.image = d.path().join("missing");
        assert!(matches!(
            shares(&spec, &pod),
            Err(RootfsError::MissingImage(_))
        ));
    }
}

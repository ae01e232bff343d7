//! A pod in a user namespace (`--user-remap`, `--private-users`): root in
//! the pod is `host_uid` on the host.
//!
//! The pod's init is cloned into a new user namespace together with its
//! other namespaces (so they belong to it, and systemd in a service pod can
//! mount and make namespaces of its own). stage1, still privileged on the
//! host, then
//! 1. writes the id maps ([`write_maps`]);
//! 2. makes an *idmapped* mount of the image, each read-only layer and each
//!    volume ([`idmapped_mounts`]: `open_tree` + `mount_setattr
//!    (MOUNT_ATTR_IDMAP)` with the pod's user namespace), so one image,
//!    never copied or chowned, serves pods of any range: its root-owned
//!    files are the pod's root's;
//! 3. hands those detached mounts to init on the channel (`mapped`).
//!
//! init attaches them (`move_mount`) while it still has the host's root
//! uid — which owns the 0700 state directories it has to traverse — builds
//! the overlay (`userxattr`) whose upper layer, chowned to the pod's root
//! ([`prepare_dirs`]), receives files owned by the mapped ids, pivots, and
//! only then becomes root of the user namespace.

use anyhow::{Context, Result};
use berth_spec::idmap;
use berth_spec::{PodSpec, UserNamespace};
use std::os::fd::OwnedFd;

pub use idmap::{lower_dir, prepare_dirs};

/// Write the child's maps (see `berth_spec::idmap::write_maps`).
pub fn write_maps(child: i32, u: &UserNamespace) -> Result<()> {
    Ok(idmap::write_maps(child, u)?)
}

/// The detached mounts init needs, in the order it attaches them: each
/// lower layer (`spec.rootfs.lowers()`, idmapped, read-only), then each
/// volume — idmapped when read-only (the host's files look like the pod's
/// own, and nothing can be written through it); a read-write volume is not
/// idmapped, so that what the pod writes there carries its mapped ids on
/// the host (through an idmap, pod root would create host-root files:
/// set-uid programs for the host's users to run).
pub fn idmapped_mounts(child: i32, spec: &PodSpec) -> Result<Vec<OwnedFd>> {
    let ns: OwnedFd = std::fs::File::open(format!("/proc/{child}/ns/user"))
        .context("cannot open the pod's user namespace")?
        .into();
    let mut v = Vec::new();
    for l in spec.rootfs.lowers() {
        v.push(idmap::detached(l, &ns, true, true)?);
    }
    for m in &spec.mounts {
        v.push(idmap::detached(&m.source, &ns, m.read_only, m.read_only)?);
    }
    Ok(v)
}

pub use idmap::{attach, become_root};

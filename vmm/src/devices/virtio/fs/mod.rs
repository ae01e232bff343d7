//! virtio-fs: a host directory shared with the guest, served in-process by
//! fuse-backend-rs (`Server` over `PassthroughFs`, wrapped in
//! [`share::ShareFs`] for read-only enforcement).
//!
//! The guest mounts it with `mount -t virtiofs TAG /mnt`.
//!
//! # Privileges
//!
//! The server runs in the VMM process and acts on the host directory with
//! the VMM's credentials. It must run as root (uid 0), because files the
//! guest creates get the guest caller's uid/gid (the server switches the
//! serving thread's effective uid/gid around each creating operation) and
//! the guest kernel, not the host, enforces permission bits. It needs only
//! the capabilities in [`required_capabilities`]; a stage1 should drop every
//! other capability from the VMM process (bounding, permitted, effective and
//! inheritable sets) before booting. This library never changes process-wide
//! capabilities itself.
//!
//! Note: fuse-backend-rs clears the process umask (`umask(0)`) when the
//! guest's FUSE INIT arrives, so that the modes the guest asks for are
//! applied exactly (the guest's umask is applied by the server). Code that
//! creates files in the VMM process after boot must pass explicit modes.

pub mod creds;
pub mod device;
pub mod event_handler;
pub mod share;

use caps::Capability;

pub use device::{
    process_queue, resolve_share, share_server, tag_bytes, Fs, FsError, SharePassthrough,
    FS_TAG_LEN, FUSE_STATS_ENV, NUM_QUEUES, QUEUE_SIZE, TYPE_FS,
};
pub use event_handler::FsEventHandler;
pub use share::{passthrough_config, ShareCache, ShareFs, CACHE_TIMEOUT, GUEST_OWNED_TIMEOUT};

/// Capabilities a read-write share's server uses, and why:
///
/// - `CAP_CHOWN`: SETATTR changing owner or group.
/// - `CAP_DAC_OVERRIDE`: open, read, write and search files and directories
///   whatever their mode and owner (the guest kernel already checked the
///   caller's permissions); also kept in the effective set while the thread
///   runs with a guest uid.
/// - `CAP_FOWNER`: chmod, utimes and similar on files the server's uid does
///   not own; the server's own checks on sticky directories.
/// - `CAP_FSETID`: keep set-user/group-ID bits where the guest asked for
///   them (the server drops it around writes so writes clear them, as a
///   kernel would).
/// - `CAP_SETUID`, `CAP_SETGID`: switch the thread's effective uid/gid (and
///   supplementary group) to the guest caller's around create, mkdir, mknod
///   and symlink, so new files are owned by the guest's user.
/// - `CAP_MKNOD`: let the guest create device nodes in the share. Optional:
///   without it guest `mknod` of a character or block device fails with
///   EPERM (FIFOs and sockets still work), which is the safer choice when
///   the share is not on a `nodev` mount.
///
/// Not needed: `CAP_DAC_READ_SEARCH` (only for `open_by_handle_at`, off),
/// `CAP_SETFCAP` (only for writing `security.capability` xattrs; xattrs are
/// off), `CAP_SYS_ADMIN` and everything else.
pub const FS_CAPS_READ_WRITE: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_MKNOD,
];

/// Capabilities a read-only share's server uses: only `CAP_DAC_OVERRIDE`,
/// to read and search whatever the guest may read (every mutating request
/// is refused before it reaches the host).
pub const FS_CAPS_READ_ONLY: &[Capability] = &[Capability::CAP_DAC_OVERRIDE];

/// The capabilities the virtio-fs servers of shares with these `read_only`
/// flags need, deduplicated (see [`FS_CAPS_READ_WRITE`] for the reasons).
/// Empty when there are no shares. The VMM process needs these in its
/// permitted and effective sets (and, with them, uid 0); a stage1 may drop
/// every other capability before [`crate::Vm::boot`].
pub fn required_capabilities(read_only: impl IntoIterator<Item = bool>) -> Vec<Capability> {
    let mut out: Vec<Capability> = Vec::new();
    for ro in read_only {
        let set = if ro {
            FS_CAPS_READ_ONLY
        } else {
            FS_CAPS_READ_WRITE
        };
        for c in set {
            if !out.contains(c) {
                out.push(*c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_by_share_kind() {
        assert!(required_capabilities([]).is_empty());
        assert_eq!(
            required_capabilities([true, true]),
            [Capability::CAP_DAC_OVERRIDE]
        );
        let rw = required_capabilities([true, false, false]);
        assert_eq!(rw.len(), FS_CAPS_READ_WRITE.len());
        for c in FS_CAPS_READ_WRITE {
            assert!(rw.contains(c));
        }
        for c in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_DAC_READ_SEARCH,
            Capability::CAP_SETFCAP,
            Capability::CAP_NET_ADMIN,
        ] {
            assert!(!rw.contains(&c));
        }
    }
}

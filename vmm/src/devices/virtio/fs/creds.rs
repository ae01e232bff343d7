//! Acting as the guest's user in a file server that is not root.
//!
//! fuse-backend-rs' passthrough server creates files (create, mkdir, mknod,
//! symlink) with the calling thread's effective ids switched to the guest
//! caller's, and switches them back to **0** afterwards: it assumes a root
//! server, and skips the switch for a caller of uid 0. A jailed VMM that
//! runs as a dedicated unprivileged uid (stage1-kvm without a user
//! namespace) keeps the server's capabilities under
//! `SECBIT_NO_SETUID_FIXUP`, so that id changes leave them alone; for it,
//! [`super::ShareFs`] makes the switch itself ([`as_caller`]) and hands the
//! passthrough a root context, so that:
//!
//! - new files are owned by the guest's uid and gid, 0 included (the
//!   server's own uid never shows in the share);
//! - while the thread acts as a non-root caller it holds no effective
//!   capability (what the kernel's set*id fix-up does for a root server),
//!   so the host kernel checks the operation as that user;
//! - afterwards the thread is back at the server's uid with its
//!   capabilities — never at uid 0.
//!
//! Credentials change per thread: raw `setresuid`/`setresgid`/`capset`
//! system calls, not the libc wrappers that change every thread.

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two words.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's capability sets (effective, permitted, inheritable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CapSets {
    effective: u64,
    permitted: u64,
    inheritable: u64,
}

fn capget() -> io::Result<CapSets> {
    let mut h = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: capget(2) fills two CapData words for a version-3 header;
    // both are live locals of the right layout.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(CapSets {
        effective: join(d[0].effective, d[1].effective),
        permitted: join(d[0].permitted, d[1].permitted),
        inheritable: join(d[0].inheritable, d[1].inheritable),
    })
}

fn capset(c: CapSets) -> io::Result<()> {
    let mut h = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let split = |v: u64| ((v & 0xffff_ffff) as u32, (v >> 32) as u32);
    let (e0, e1) = split(c.effective);
    let (p0, p1) = split(c.permitted);
    let (i0, i1) = split(c.inheritable);
    let d = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: capset(2) reads a version-3 header and two CapData words of
    // live locals; pid 0 is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `setresuid(-1, uid, -1)` or `setresgid(-1, gid, -1)` for this thread.
fn set_effective(nr: libc::c_long, id: u32) -> io::Result<()> {
    // SAFETY: the raw set*id system call changes only this thread's
    // credentials; -1 leaves the real and saved ids as they are.
    let r = unsafe { libc::syscall(nr, -1 as libc::c_int, id, -1 as libc::c_int) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Who the server is when it is not root: its effective ids and the
/// capability sets it acts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerIds {
    /// The server's effective uid.
    pub uid: u32,
    /// The server's effective gid.
    pub gid: u32,
    caps: CapSets,
    /// The parent-death signal to re-arm after each switch back (any
    /// credential change clears it, and the VMM relies on it to die with
    /// its stage1); 0 for none.
    pdeath: libc::c_int,
}

impl ServerIds {
    /// The calling thread's ids, if its effective uid is not 0 (a root
    /// server — the host's root, or the mapped root of a user namespace —
    /// is left to the passthrough's own switch).
    pub fn current() -> io::Result<Option<ServerIds>> {
        // SAFETY: geteuid/getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if uid == 0 {
            return Ok(None);
        }
        let mut pdeath: libc::c_int = 0;
        // SAFETY: PR_GET_PDEATHSIG writes one int to a live local.
        if unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeath) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(ServerIds {
            uid,
            gid,
            caps: capget()?,
            pdeath,
        }))
    }
}

/// The thread acting as a guest caller; back to the server at drop.
pub struct AsCaller {
    server: ServerIds,
    caps_cleared: bool,
}

/// Act as guest caller `uid`:`gid` until the returned guard drops.
pub fn as_caller(server: &ServerIds, uid: u32, gid: u32) -> io::Result<AsCaller> {
    set_effective(libc::SYS_setresgid, gid)?;
    if let Err(e) = set_effective(libc::SYS_setresuid, uid) {
        restore_or_abort(set_effective(libc::SYS_setresgid, server.gid), "gid");
        return Err(e);
    }
    let mut guard = AsCaller {
        server: *server,
        caps_cleared: false,
    };
    if uid != 0 {
        capset(CapSets {
            effective: 0,
            ..server.caps
        })?;
        guard.caps_cleared = true;
    }
    Ok(guard)
}

/// A thread that cannot return to the server's credentials may be left
/// with a guest's — uid 0 included: end the process rather than serve on.
fn restore_or_abort(r: io::Result<()>, what: &str) {
    if let Err(e) = r {
        eprintln!("berth-vmm: virtio-fs: cannot restore the server's {what}: {e}");
        std::process::abort();
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        // Ids first: capset may not raise capabilities beyond what the
        // (unchanged) permitted set holds, whatever the uid.
        restore_or_abort(set_effective(libc::SYS_setresuid, self.server.uid), "uid");
        restore_or_abort(set_effective(libc::SYS_setresgid, self.server.gid), "gid");
        if self.caps_cleared {
            restore_or_abort(capset(self.server.caps), "capabilities");
        }
        if self.server.pdeath != 0 {
            // SAFETY: prctl(PR_SET_PDEATHSIG) only affects this thread.
            let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, self.server.pdeath) };
            restore_or_abort(
                if r == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                },
                "parent-death signal",
            );
        }
    }
}

/// `SECBIT_NO_SETUID_FIXUP` and its lock: what a non-root server needs so
/// that [`as_caller`]'s id changes do not drop its capabilities.
pub const SECBITS_FOR_SERVER: libc::c_ulong = (1 << 2) | (1 << 3);

#[cfg(test)]
mod tests {
    use super::*;

    fn have_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// This thread only: become `id` keeping every capability.
    fn become_server(id: u32) {
        let before = capget().unwrap();
        // SAFETY: prctl on this thread's securebits.
        let r = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECBITS_FOR_SERVER, 0, 0, 0) };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        for nr in [libc::SYS_setresgid, libc::SYS_setresuid] {
            // SAFETY: raw set*id for this thread only.
            let r = unsafe { libc::syscall(nr, id, id, id) };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
        }
        assert_eq!(capget().unwrap(), before, "capabilities kept");
    }

    #[test]
    fn acts_as_the_caller_and_comes_back_to_the_server() {
        if !have_root() {
            eprintln!("skipping: needs root (set*id and capabilities)");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::thread::spawn(move || {
            use std::os::unix::fs::MetadataExt;
            become_server(54_321);
            let server = ServerIds::current().unwrap().expect("not root");
            assert_eq!((server.uid, server.gid), (54_321, 54_321));
            for (uid, gid, name) in [(0, 0, "root"), (1000, 1001, "user")] {
                {
                    let _g = as_caller(&server, uid, gid).unwrap();
                    // SAFETY: geteuid/getegid have no preconditions.
                    assert_eq!(unsafe { (libc::geteuid(), libc::getegid()) }, (uid, gid));
                    let caps = capget().unwrap();
                    if uid == 0 {
                        assert_eq!(
                            caps, server.caps,
                            "guest root keeps the server's capabilities"
                        );
                    } else {
                        assert_eq!(caps.effective, 0, "a guest user acts without capabilities");
                        assert_eq!(caps.permitted, server.caps.permitted);
                    }
                    std::fs::create_dir(base.join(name)).unwrap();
                }
                let m = std::fs::metadata(base.join(name)).unwrap();
                assert_eq!((m.uid(), m.gid()), (uid, gid), "{name}'s directory");
                // SAFETY: geteuid/getegid have no preconditions.
                let now = unsafe { (libc::geteuid(), libc::getegid()) };
                assert_eq!(
                    now,
                    (54_321, 54_321),
                    "back at the server's ids after {name}"
                );
                assert_eq!(
                    capget().unwrap(),
                    server.caps,
                    "capabilities back after {name}"
                );
            }
            // A guest user is checked as itself by the host kernel: no
            // directory in the root-owned, 0755 one.
            let locked = base.join("root");
            // (Explicitly: the umask is the process', and other tests
            // change it.)
            std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
            {
                let _g = as_caller(&server, 1000, 1001).unwrap();
                let e = std::fs::create_dir(locked.join("x")).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EACCES));
            }
            // ...while the server itself still may (CAP_DAC_OVERRIDE).
            std::fs::create_dir(locked.join("y")).unwrap();
        })
        .join()
        .unwrap();
    }
}

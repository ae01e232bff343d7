//! Landlock: confining a process to the file trees it should reach, shared
//! by both stage1s. The ns stage1 confines its pod's processes to the pod's
//! own tree ("/" after pivot_root, with every mount below it); the kvm
//! stage1 its VMM process to the VM's shares, sockets and logs.
//!
//! Two parts: what a pod records about its Landlock ([`LandlockState`],
//! `POD_DIR/landlock.json`, read by `berth inspect`; always built) and the
//! ruleset itself ([`Ruleset`], feature `stage1`, the `landlock` crate).
//!
//! What Landlock does on the kernel's ABI (`kernel_abi()`; this crate
//! handles every right up to [`TARGET_ABI`] that the kernel knows, best
//! effort below it):
//! - files (ABI 1+; REFER 2+, TRUNCATE 3+, IOCTL_DEV 5+, RESOLVE_UNIX 9+):
//!   every handled right is refused outside the rules' trees, checked on
//!   the path an access resolves to — through a descriptor passed in, an
//!   O_PATH descriptor, a `/proc/self/fd/N` magic link alike. Descriptors
//!   opened before [`Ruleset::restrict_self`] keep their access;
//! - a process with file rules may not change the mount topology at all:
//!   mount(2), umount(2), pivot_root(2) and move_mount(2) fail with EPERM
//!   (which is why a service pod's systemd, which mounts, gets scopes
//!   only);
//! - ptrace and /proc/PID/{mem,fd,environ,…} of processes outside the
//!   domain (or in a sibling one) are refused (every ABI);
//! - scopes (ABI 6+): signals, and connecting to abstract unix sockets, of
//!   processes outside the domain;
//! - network bind/connect (ABI 4+): never handled here, the pod's network
//!   is not Landlock's business.
//!
//! A domain is per thread and inherited by children and across execve;
//! it can only be narrowed, never lifted.

use serde::{Deserialize, Serialize};

/// The running kernel's Landlock ABI version; `None` when it has no
/// Landlock (not built in: ENOSYS; not enabled at boot: EOPNOTSUPP).
pub fn kernel_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) reads and writes no
    // memory; it returns the ABI version or -1.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).ok().filter(|v| *v > 0)
}

/// A pod's Landlock, as its stage1 applied it (`POD_DIR/landlock.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase", deny_unknown_fields)]
pub enum LandlockState {
    /// Enforced, on a kernel with Landlock ABI `abi`, one domain per kind
    /// of process.
    Enforced { abi: u32, domains: Vec<Domain> },
    /// Turned off for this pod (`--security-opt landlock=off`).
    Off,
    /// The kernel has no Landlock: the pod ran without it.
    Unsupported,
}

/// The domain one kind of process of a pod gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    /// `app` (the app, or a service pod's systemd, and all they start),
    /// `exec` (each `berth exec` process), `vmm` (the kvm stage1's VMM).
    pub who: String,
    /// Its file access is confined to its trees (the pod's, the VM's
    /// shares); false: only scoped.
    pub files: bool,
    /// What it is scoped for (`signal`, `abstract-unix-socket`): it
    /// cannot signal, or connect to an abstract socket of, a process
    /// outside it.
    pub scoped: Vec<String>,
}

impl LandlockState {
    pub fn record(&self, pod: &crate::PodDir) -> Result<(), crate::state::StateError> {
        let json = serde_json::to_string(self).unwrap_or_default();
        crate::state::write_file(&pod.landlock_file(), &(json + "\n"))
    }

    /// What the pod's stage1 recorded (None: it did not, e.g. never started).
    pub fn recorded(pod: &crate::PodDir) -> Option<LandlockState> {
        let text = std::fs::read_to_string(pod.landlock_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// One line for `berth inspect`.
    pub fn describe(&self) -> String {
        match self {
            LandlockState::Enforced { abi, domains } => {
                let each: Vec<String> = domains
                    .iter()
                    .map(|d| {
                        if !d.files && d.scoped.is_empty() {
                            return format!("{}: not confined", d.who);
                        }
                        let files = if d.files {
                            "files confined"
                        } else {
                            "files not confined"
                        };
                        if d.scoped.is_empty() {
                            format!("{}: {files}", d.who)
                        } else {
                            format!("{}: {files}, scoped ({})", d.who, d.scoped.join(", "))
                        }
                    })
                    .collect();
                format!("ABI {abi} ({})", each.join("; "))
            }
            LandlockState::Off => "off (--security-opt landlock=off)".into(),
            LandlockState::Unsupported => "unsupported by this kernel (not applied)".into(),
        }
    }
}

#[cfg(feature = "stage1")]
pub use rules::*;

#[cfg(feature = "stage1")]
mod rules {
    use landlock::{
        Access as _, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus, Scope, ABI,
    };
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};
    use std::path::Path;

    /// The newest ABI whose file rights berth handles: every right up to
    /// RESOLVE_UNIX (connecting to a path unix socket, ABI 9). On an older
    /// kernel the rights it lacks are left out (best effort): berth's
    /// rules grant every handled right inside their trees, so a right
    /// more or less never changes what works inside them.
    pub const TARGET_ABI: ABI = ABI::V9;

    #[derive(Debug, thiserror::Error)]
    pub enum LandlockError {
        #[error("cannot open {0} for a Landlock rule")]
        Open(String, #[source] std::io::Error),
        #[error("cannot look at {0} for a Landlock rule")]
        Stat(String, #[source] std::io::Error),
        #[error("cannot create the Landlock ruleset")]
        Create(#[source] landlock::RulesetError),
        #[error("cannot add the Landlock rule for {0}")]
        AddRule(String, #[source] landlock::RulesetError),
        #[error("cannot enforce the Landlock ruleset")]
        Restrict(#[source] landlock::RulesetError),
    }

    /// What a rule allows beneath its directory (or on its file).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Access {
        /// Read files and list directories.
        ReadOnly,
        /// Write files, and make and remove entries in directories; no
        /// reading (a descriptor opened O_WRONLY).
        WriteOnly,
        /// Everything but executing: read, write, create, remove, rename,
        /// truncate, make devices/fifos/sockets, ioctl on devices, connect
        /// to unix sockets (a file server's share).
        ReadWrite,
        /// Everything, executing files too (a pod's own tree).
        Full,
    }

    impl Access {
        pub fn rights(self) -> BitFlags<AccessFs> {
            let all = AccessFs::from_all(TARGET_ABI);
            match self {
                Access::ReadOnly => AccessFs::ReadFile | AccessFs::ReadDir,
                Access::WriteOnly => AccessFs::from_write(TARGET_ABI),
                Access::ReadWrite => all & !BitFlags::from(AccessFs::Execute),
                Access::Full => all,
            }
        }
    }

    /// Which scopes a domain gets (ABI 6+; left out on older kernels).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Scopes {
        /// No signal to a process outside the domain (nor in a sibling
        /// domain); its own threads and descendants can still be signalled.
        pub signal: bool,
        /// No connect(2)/sendto(2) to an abstract unix socket bound by a
        /// process outside the domain.
        pub abstract_unix_socket: bool,
    }

    impl Scopes {
        fn flags(self) -> BitFlags<Scope> {
            let mut f = BitFlags::empty();
            if self.signal {
                f |= Scope::Signal;
            }
            if self.abstract_unix_socket {
                f |= Scope::AbstractUnixSocket;
            }
            f
        }

        /// Their names, as [`super::LandlockState`] lists them.
        pub fn names(self) -> Vec<String> {
            let mut v = Vec::new();
            if self.signal {
                v.push("signal".to_string());
            }
            if self.abstract_unix_socket {
                v.push("abstract-unix-socket".to_string());
            }
            v
        }
    }

    /// What enforcing did.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Enforced {
        /// The domain is in force (possibly without the newest rights or
        /// the scopes, on an older kernel); `abi` is the kernel's.
        Yes { abi: u32 },
        /// The kernel has no Landlock: nothing was restricted.
        Unsupported,
    }

    struct RuleFd {
        fd: OwnedFd,
        access: Access,
        what: String,
    }

    /// A Landlock ruleset being put together: file rules (each a tree, or
    /// a single file, and what it allows), scopes, then
    /// [`Ruleset::restrict_self`]. Files: when the ruleset has no file
    /// rule and `files(false)` was not called, every file access is
    /// refused (handled, nothing granted) — a domain that must reach no
    /// path at all.
    ///
    /// Everything is opened when added (O_PATH), so a ruleset can be built
    /// before a pivot_root and enforced after it; enforcing itself only
    /// makes syscalls (it may run in a forked child).
    pub struct Ruleset {
        rules: Vec<RuleFd>,
        files: bool,
        scopes: Scopes,
        no_new_privs: bool,
    }

    impl Default for Ruleset {
        fn default() -> Self {
            Ruleset::new()
        }
    }

    impl Ruleset {
        /// An empty ruleset that handles every file right (so refuses
        /// every file access outside its rules), with no scope, and sets
        /// no_new_privs when enforced.
        pub fn new() -> Ruleset {
            Ruleset {
                rules: Vec::new(),
                files: true,
                scopes: Scopes::default(),
                no_new_privs: true,
            }
        }

        /// Allow `access` beneath `path` (a directory), or on it (a file).
        /// The path is resolved now, following symlinks.
        pub fn allow_path(mut self, path: &Path, access: Access) -> Result<Ruleset, LandlockError> {
            let what = path.display().to_string();
            let fd = nix::fcntl::open(
                path,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| LandlockError::Open(what.clone(), std::io::Error::from(e)))?;
            // SAFETY: open(2) just returned this descriptor; nothing else owns it.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            self.rules.push(RuleFd { fd, access, what });
            Ok(self)
        }

        /// Allow `access` beneath the directory (or on the file) `fd`
        /// names — any descriptor, O_PATH is enough. `what` names it in
        /// errors.
        pub fn allow_fd(mut self, fd: OwnedFd, access: Access, what: &str) -> Ruleset {
            self.rules.push(RuleFd {
                fd,
                access,
                what: what.to_string(),
            });
            self
        }

        /// Handle file rights (default). `false`: a scopes-only domain,
        /// which leaves files (and mounting) alone; file rules are then
        /// ignored.
        pub fn files(mut self, yes: bool) -> Ruleset {
            self.files = yes;
            self
        }

        pub fn scopes(mut self, scopes: Scopes) -> Ruleset {
            self.scopes = scopes;
            self
        }

        /// Whether [`Ruleset::restrict_self`] sets no_new_privs (default:
        /// yes). Without it the caller must hold CAP_SYS_ADMIN in its user
        /// namespace (the kernel's condition for landlock_restrict_self).
        pub fn no_new_privs(mut self, yes: bool) -> Ruleset {
            self.no_new_privs = yes;
            self
        }

        /// Enforce the ruleset on the calling thread (and what it starts
        /// from now on). Call it before starting other threads: threads
        /// that already exist are not restricted.
        pub fn restrict_self(self) -> Result<Enforced, LandlockError> {
            let Some(abi) = super::kernel_abi() else {
                return Ok(Enforced::Unsupported);
            };
            let mut rs = landlock::Ruleset::default();
            rs = rs.set_compatibility(CompatLevel::BestEffort);
            if self.files {
                rs = rs
                    .handle_access(AccessFs::from_all(TARGET_ABI))
                    .map_err(LandlockError::Create)?;
            }
            let scopes = self.scopes.flags();
            if !scopes.is_empty() {
                rs = rs.scope(scopes).map_err(LandlockError::Create)?;
            }
            if !self.files && scopes.is_empty() {
                // Nothing to restrict.
                return Ok(Enforced::Yes { abi });
            }
            let mut created = rs
                .create()
                .map_err(LandlockError::Create)?
                .no_new_privs(self.no_new_privs);
            if self.files {
                for r in &self.rules {
                    let rights = rights_for(&r.fd, r.access)
                        .map_err(|e| LandlockError::Stat(r.what.clone(), e))?;
                    created = created
                        .add_rule(PathBeneath::new(r.fd.as_fd(), rights))
                        .map_err(|e| LandlockError::AddRule(r.what.clone(), e))?;
                }
            }
            let status = created.restrict_self().map_err(LandlockError::Restrict)?;
            Ok(match status.ruleset {
                RulesetStatus::NotEnforced => Enforced::Unsupported,
                _ => Enforced::Yes { abi },
            })
        }
    }

    /// `access`'s rights, limited to those a non-directory can carry when
    /// `fd` is not a directory (the kernel refuses directory rights on a
    /// file).
    fn rights_for(fd: &OwnedFd, access: Access) -> std::io::Result<BitFlags<AccessFs>> {
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(std::io::Error::from)?;
        let rights = access.rights();
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            Ok(rights)
        } else {
            Ok(rights & AccessFs::from_file(TARGET_ABI))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_reads() {
        let d = tempfile::tempdir().unwrap();
        let pod = crate::PodDir::new(d.path());
        assert_eq!(LandlockState::recorded(&pod), None);
        let s = LandlockState::Enforced {
            abi: 7,
            domains: vec![
                Domain {
                    who: "app".into(),
                    files: false,
                    scoped: vec!["signal".into()],
                },
                Domain {
                    who: "exec".into(),
                    files: true,
                    scoped: vec![],
                },
            ],
        };
        s.record(&pod).unwrap();
        assert_eq!(LandlockState::recorded(&pod), Some(s.clone()));
        let text = std::fs::read_to_string(pod.landlock_file()).unwrap();
        assert_eq!(
            text,
            "{\"state\":\"enforced\",\"abi\":7,\"domains\":[\
             {\"who\":\"app\",\"files\":false,\"scoped\":[\"signal\"]},\
             {\"who\":\"exec\",\"files\":true,\"scoped\":[]}]}\n"
        );
        assert_eq!(
            s.describe(),
            "ABI 7 (app: files not confined, scoped (signal); exec: files confined)"
        );
        let none = LandlockState::Enforced {
            abi: 7,
            domains: vec![Domain {
                who: "exec".into(),
                files: false,
                scoped: vec![],
            }],
        };
        assert_eq!(none.describe(), "ABI 7 (exec: not confined)");
        LandlockState::Off.record(&pod).unwrap();
        assert_eq!(LandlockState::recorded(&pod), Some(LandlockState::Off));
        assert_eq!(
            serde_json::to_string(&LandlockState::Unsupported).unwrap(),
            "{\"state\":\"unsupported\"}"
        );
    }

    #[test]
    fn kernel_abi_matches_the_crate() {
        // Whatever the kernel says, both ways of asking agree.
        let ours = kernel_abi();
        #[cfg(feature = "stage1")]
        {
            let v = ours.map_or(0, |v| v as i32);
            assert_eq!(
                landlock::ABI::from(v) == landlock::ABI::Unsupported,
                ours.is_none()
            );
        }
        if let Some(v) = ours {
            assert!(v >= 1);
        }
    }
}

#[cfg(all(test, feature = "stage1"))]
mod rule_tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// Run `f` in a forked child (a domain cannot be lifted, and tests
    /// share the process); returns the child's exit code.
    #[allow(clippy::unwrap_used)]
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the test harness runs other threads, but the child only
        // makes syscalls and allocates before it _exits (no locks of the
        // parent are taken: the closures below use no std I/O that locks
        // stdout).
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = f();
                // SAFETY: _exit skips the parent's atexit handlers.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => match nix::sys::wait::waitpid(child, None)
            {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                other => panic!("child: {other:?}"),
            },
        }
    }

    #[test]
    fn rules_confine_to_their_trees_and_fds_do_not_escape() {
        if kernel_abi().is_none() {
            eprintln!("skipping: this kernel has no Landlock");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let inside = d.path().join("inside");
        let outside = d.path().join("outside");
        std::fs::create_dir(&inside).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(inside.join("f"), "in").unwrap();
        std::fs::write(outside.join("secret"), "out").unwrap();
        let ro = d.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::write(ro.join("r"), "ro").unwrap();
        let out_fd = nix::fcntl::open(
            &outside,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        // SAFETY: open just returned it.
        let out_fd = unsafe { OwnedFd::from_raw_fd(out_fd) };
        let code = in_child(|| {
            let r = Ruleset::new()
                .allow_path(&inside, Access::Full)
                .and_then(|r| r.allow_path(&ro, Access::ReadOnly))
                .and_then(|r| r.restrict_self());
            if !matches!(r, Ok(Enforced::Yes { .. })) {
                return 10;
            }
            let read = |p: &std::path::Path| -> Result<String, i32> {
                let mut s = String::new();
                std::fs::File::open(p)
                    .and_then(|mut f| f.read_to_string(&mut s))
                    .map(|_| s)
                    .map_err(|e| e.raw_os_error().unwrap_or(-1))
            };
            if read(&inside.join("f")) != Ok("in".into()) {
                return 11;
            }
            if read(&outside.join("secret")) != Err(libc::EACCES) {
                return 12;
            }
            // Through the O_PATH descriptor, and its magic link.
            let at = nix::fcntl::openat(
                Some(out_fd.as_raw_fd()),
                "secret",
                nix::fcntl::OFlag::O_RDONLY,
                nix::sys::stat::Mode::empty(),
            );
            if at != Err(nix::Error::EACCES) {
                return 13;
            }
            let magic =
                std::path::PathBuf::from(format!("/proc/self/fd/{}/secret", out_fd.as_raw_fd()));
            if read(&magic) != Err(libc::EACCES) {
                return 14;
            }
            if read(&ro.join("r")) != Ok("ro".into()) {
                return 15;
            }
            if std::fs::write(ro.join("w"), "x").map_err(|e| e.raw_os_error())
                != Err(Some(libc::EACCES))
            {
                return 16;
            }
            if std::fs::write(inside.join("w"), "x").is_err() {
                return 17;
            }
            0
        });
        assert_eq!(code, 0, "see the numbered checks");
        // Without a domain the same descriptor reaches the file: the
        // checks above can fail.
        let at = nix::fcntl::openat(
            Some(out_fd.as_raw_fd()),
            "secret",
            nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        );
        assert!(at.is_ok());
    }

    #[test]
    fn a_file_rule_gets_file_rights_only_and_scopes_alone_leave_files() {
        if kernel_abi().is_none() {
            eprintln!("skipping: this kernel has no Landlock");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        std::fs::write(&log, "").unwrap();
        let other = d.path().join("other");
        std::fs::write(&other, "o").unwrap();
        let code = in_child(|| {
            // ReadWrite on a file: the directory rights are dropped (the
            // kernel would refuse the rule otherwise).
            let r = Ruleset::new()
                .allow_path(&log, Access::ReadWrite)
                .and_then(|r| r.restrict_self());
            if !matches!(r, Ok(Enforced::Yes { .. })) {
                return 20;
            }
            if std::fs::OpenOptions::new().append(true).open(&log).is_err() {
                return 21;
            }
            if std::fs::read(&other).is_ok() {
                return 22;
            }
            0
        });
        assert_eq!(code, 0);
        let code = in_child(|| {
            let r = Ruleset::new()
                .files(false)
                .scopes(Scopes {
                    signal: true,
                    abstract_unix_socket: true,
                })
                .restrict_self();
            if !matches!(r, Ok(Enforced::Yes { .. })) {
                return 30;
            }
            if std::fs::read(&other).is_err() {
                return 31;
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn access_sets() {
        use landlock::AccessFs;
        assert!(!Access::ReadWrite.rights().contains(AccessFs::Execute));
        assert!(Access::Full.rights().contains(AccessFs::Execute));
        assert!(Access::ReadWrite.rights().contains(AccessFs::Truncate));
        assert!(!Access::ReadOnly.rights().contains(AccessFs::WriteFile));
        assert!(!Access::WriteOnly.rights().contains(AccessFs::ReadFile));
        assert!(Access::WriteOnly.rights().contains(AccessFs::Truncate));
        assert_eq!(
            Scopes {
                signal: true,
                abstract_unix_socket: true
            }
            .names(),
            ["signal", "abstract-unix-socket"]
        );
    }
}

//! An OCI pod (`spec.oci`, made by `berth-oci`): what the ns stage1 does
//! differently, kept here and called from small hooks in `run`, `init` and
//! `mounts`.
//!
//! The hand-off (runc's `create`/`start`, see `berth_spec::oci`): stage1
//! sets the pod up as usual, but once init reports that the app is ready
//! it sends the pty master to the caller's console socket (with a
//! terminal) and exits with 0 without supervising. init no longer dies
//! with stage1: it is reparented to the caller's shim (a child subreaper:
//! conmon, containerd-shim), keeps the pod's life lock, waits until
//! `berth-oci start` opens the start FIFO, runs the `startContainer` hooks,
//! starts the app and exits with its status. Releasing the cgroup is left
//! to `berth-oci delete` (this stage1's `gc`).
//!
//! Also here: the namespaces joined by path (a network namespace made by
//! CNI or netavark), the root bound in place (never an overlay: see
//! `berth_spec::oci::OciSettings::readonly_root`), the config's mounts,
//! sysctls, rlimits, oomScoreAdj and hooks.

use crate::mounts::{self, MountError};
use berth_spec::oci::{Hook, NsChoice, OciMount, OciSettings};
use berth_spec::PodSpec;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot open the {what} namespace {path}")]
    OpenNs {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot join the {0} namespace")]
    Setns(&'static str, #[source] nix::Error),
    #[error("cannot open the start fifo {path}")]
    Fifo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for start")]
    Start(#[source] std::io::Error),
    #[error("cannot set sysctl {key}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set rlimit {0}")]
    Rlimit(&'static str, #[source] nix::Error),
    #[error("cannot set oomScoreAdj")]
    OomScore(#[source] std::io::Error),
    #[error("hook {path} failed: {why}")]
    Hook { path: String, why: String },
    #[error("cannot send the terminal to the console socket {path}")]
    Console {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// The namespaces to create: mount and PID always (berth's pod has its own
/// init), the others as the config asks.
pub fn clone_flags(o: &OciSettings) -> CloneFlags {
    let mut f = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID;
    for (ns, flag) in [
        (&o.namespaces.net, CloneFlags::CLONE_NEWNET),
        (&o.namespaces.ipc, CloneFlags::CLONE_NEWIPC),
        (&o.namespaces.uts, CloneFlags::CLONE_NEWUTS),
    ] {
        if *ns == NsChoice::New {
            f |= flag;
        }
    }
    f
}

/// What init inherits for the hand-off, opened by stage1 before the clone
/// (with the host's view of paths).
pub struct Handoff {
    /// Namespaces to join, in this order.
    pub join: Vec<(OwnedFd, CloneFlags, &'static str)>,
    /// An O_PATH descriptor of the start FIFO.
    pub fifo: OwnedFd,
    /// The pod's life lock (stage1's descriptor; init keeps its copy).
    pub lock: RawFd,
}

impl Handoff {
    pub fn open(o: &OciSettings, lock: RawFd) -> Result<Handoff, OciError> {
        let mut join = Vec::new();
        for (what, ns, flag) in [
            ("net", &o.namespaces.net, CloneFlags::CLONE_NEWNET),
            ("ipc", &o.namespaces.ipc, CloneFlags::CLONE_NEWIPC),
            ("uts", &o.namespaces.uts, CloneFlags::CLONE_NEWUTS),
        ] {
            if let NsChoice::Join(p) = ns {
                let f = std::fs::File::open(p).map_err(|source| OciError::OpenNs {
                    what,
                    path: p.display().to_string(),
                    source,
                })?;
                join.push((OwnedFd::from(f), flag, what));
            }
        }
        let fifo = open_path(&o.start_fifo).map_err(|source| OciError::Fifo {
            path: o.start_fifo.display().to_string(),
            source,
        })?;
        Ok(Handoff { join, fifo, lock })
    }

    /// The descriptors init must keep when it sheds the host's.
    pub fn keep(&self) -> Vec<RawFd> {
        let mut v: Vec<RawFd> = self.join.iter().map(|(f, _, _)| f.as_raw_fd()).collect();
        v.push(self.fifo.as_raw_fd());
        v.push(self.lock);
        v
    }

    /// In init, first thing: join the namespaces given by path.
    pub fn join(&self) -> Result<(), OciError> {
        for (f, flag, what) in &self.join {
            nix::sched::setns(f, *flag).map_err(|e| OciError::Setns(what, e))?;
        }
        Ok(())
    }
}

fn open_path(p: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(p)?;
    Ok(OwnedFd::from(f))
}

/// In init, after stage1 has gone: block until `start` opens the FIFO for
/// reading (our open for writing completes then), tell it we are going.
pub fn wait_for_start(h: &Handoff) -> Result<(), OciError> {
    let path = format!("/proc/self/fd/{}", h.fifo.as_raw_fd());
    let mut f = loop {
        match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => break f,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(OciError::Start(e)),
        }
    };
    f.write_all(b"0").map_err(OciError::Start)
}

/// The root: the bundle's `root.path` bound in place on the pod's rootfs
/// mount point (recursively, so mounts below it come along); made
/// read-only by [`finish_root`] once everything is mounted on it.
pub fn bind_root(spec: &PodSpec, root: &Path) -> Result<(), MountError> {
    let src = spec.rootfs.image.to_string_lossy();
    mounts::do_mount(
        Some(&src),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    // Nothing of the pod's mounts may propagate into the caller's tree.
    mounts::do_mount(
        None,
        root,
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
}

/// `root.readonly`: remount the root read-only, last, as runc does.
pub fn finish_root(root: &Path, o: &OciSettings) -> Result<(), MountError> {
    if !o.readonly_root {
        return Ok(());
    }
    mounts::do_mount(
        None,
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None,
    )
}

/// Is this one of the mounts berth makes itself (same type, same place)?
fn builtin(m: &OciMount) -> bool {
    matches!(
        (m.destination.as_str(), m.kind.as_str()),
        ("/proc", "proc")
            | ("/dev", "tmpfs")
            | ("/dev/pts", "devpts")
            | ("/dev/mqueue", "mqueue")
            | ("/sys", "sysfs")
            | ("/dev/shm", "tmpfs")
    )
}

/// The config's mount options → flags, propagation and data.
fn parse_options(opts: &[String]) -> (MsFlags, Option<MsFlags>, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut propagation = None;
    let mut data = Vec::new();
    for o in opts {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "suid" => flags &= !MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "dev" => flags &= !MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "exec" => flags &= !MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "private" => propagation = Some(MsFlags::MS_PRIVATE),
            "rprivate" => propagation = Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "slave" => propagation = Some(MsFlags::MS_SLAVE),
            "rslave" => propagation = Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "shared" | "rshared" | "unbindable" | "runbindable" => {
                // Never shared with the host: berth keeps every pod mount
                // private or slave.
                propagation = Some(MsFlags::MS_PRIVATE)
            }
            // Options berth applies anyway or that do not matter here.
            "defaults" | "async" | "atime" | "norelatime" | "nostrictatime" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, propagation, data)
}

/// The config's mounts that berth does not make itself, in order, each
/// mount point created inside the root (`RESOLVE_IN_ROOT`). cgroup mounts
/// come later ([`mount_cgroups`]), once init is in its cgroup namespace.
pub fn apply_mounts(root: &OwnedFd, o: &OciSettings) -> Result<(), MountError> {
    for m in o.mounts.iter().filter(|m| !builtin(m)) {
        if m.kind == "cgroup" || m.kind == "cgroup2" {
            continue;
        }
        let (flags, propagation, data) = parse_options(&m.options);
        let is_bind = m.kind == "bind" || flags.contains(MsFlags::MS_BIND);
        let target = if is_bind {
            let meta = std::fs::metadata(&m.source)
                .map_err(|_| MountError::MissingSource(m.source.clone().into()))?;
            if meta.is_dir() {
                mounts::ensure_dir(root, &m.destination)?
            } else {
                mounts::ensure_file(root, &m.destination)?
            }
        } else {
            mounts::ensure_dir(root, &m.destination)?
        };
        let target = mounts::fd_path(&target);
        let data = data.join(",");
        let data = (!data.is_empty()).then_some(data.as_str());
        if is_bind {
            let bind = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
            mounts::do_mount(Some(&m.source), &target, None, bind, None)?;
            let rest = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
            if !rest.is_empty() {
                // Flags of a bind mount take a remount; look the mount
                // point up again to reach the new mount.
                let mounted =
                    mounts::open_in_root(root, &m.destination, libc::O_PATH).map_err(|source| {
                        MountError::Create {
                            path: m.destination.clone(),
                            source,
                        }
                    })?;
                mounts::do_mount(
                    None,
                    &mounts::fd_path(&mounted),
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rest,
                    None,
                )?;
            }
        } else {
            mounts::do_mount(Some(&m.source), &target, Some(&m.kind), flags, data)?;
        }
        if let Some(p) = propagation {
            let mounted =
                mounts::open_in_root(root, &m.destination, libc::O_PATH).map_err(|source| {
                    MountError::Create {
                        path: m.destination.clone(),
                        source,
                    }
                })?;
            mounts::do_mount(None, &mounts::fd_path(&mounted), None, p, None)?;
        }
    }
    Ok(())
}

/// In init, after the pivot and in its cgroup namespace: the config's
/// cgroup mounts, as cgroup2 rooted at the pod's own cgroup (on a hybrid
/// host, its unified hierarchy).
pub fn mount_cgroups(o: &OciSettings) -> Result<(), MountError> {
    for m in o
        .mounts
        .iter()
        .filter(|m| m.kind == "cgroup" || m.kind == "cgroup2")
    {
        let (flags, _, _) = parse_options(&m.options);
        let dest = Path::new(&m.destination);
        if !dest.is_dir() {
            continue;
        }
        mounts::do_mount(
            Some("cgroup2"),
            dest,
            Some("cgroup2"),
            flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        )?;
    }
    Ok(())
}

/// `linux.sysctl`, written before /proc/sys goes read-only.
pub fn apply_sysctl(o: &OciSettings) -> Result<(), OciError> {
    for (k, v) in &o.sysctl {
        let path = Path::new("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&path, v).map_err(|source| OciError::Sysctl {
            key: k.clone(),
            source,
        })?;
    }
    Ok(())
}

/// `process.rlimits`, `process.user.umask` and `process.oomScoreAdj` on init itself, just
/// before it forks the app (which inherits both).
pub fn apply_process_limits(o: &OciSettings) -> Result<(), OciError> {
    for r in &o.rlimits {
        let name = berth_spec::oci::RLIMIT_NAMES
            .get(r.resource as usize)
            .copied()
            .unwrap_or("?");
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: setrlimit reads the struct we pass; the resource number
        // was validated against the known list.
        let rc = unsafe { libc::setrlimit(r.resource as _, &lim) };
        if rc != 0 {
            return Err(OciError::Rlimit(name, nix::Error::last()));
        }
    }
    if let Some(m) = o.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
    }
    if let Some(adj) = o.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(OciError::OomScore)?;
    }
    Ok(())
}

/// Run `hooks` in order, each with `state` on its stdin; `enter` runs in
/// the child before the exec (joining a namespace). A hook that fails,
/// or outlives its timeout, fails the step.
pub fn run_hooks(
    hooks: &[Hook],
    state: &str,
    enter: Option<&dyn Fn() -> nix::Result<()>>,
) -> Result<(), OciError> {
    for h in hooks {
        run_hook(h, state, enter)?;
    }
    Ok(())
}

fn run_hook(
    h: &Hook,
    state: &str,
    enter: Option<&dyn Fn() -> nix::Result<()>>,
) -> Result<(), OciError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let fail = |why: String| OciError::Hook {
        path: h.path.display().to_string(),
        why,
    };
    let cs = |s: &str| CString::new(s).map_err(|_| fail("NUL byte in an argument".into()));
    let path = CString::new(h.path.as_os_str().as_bytes()).map_err(|_| fail("NUL byte".into()))?;
    let mut argv: Vec<CString> = h.args.iter().map(|a| cs(a)).collect::<Result<_, _>>()?;
    if argv.is_empty() {
        argv.push(path.clone());
    }
    let env: Vec<CString> = h.env.iter().map(|e| cs(e)).collect::<Result<_, _>>()?;
    // The executable is opened here (the runtime's view of the path),
    // then run from that descriptor wherever `enter` puts the child.
    let exe = std::fs::File::open(&h.path).map_err(|e| fail(e.to_string()))?;
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(format!("pipe: {e}")))?;
    // SAFETY: stage1 and init are single-threaded; the child only calls
    // async-signal-safe functions (dup2, setns, sigprocmask, fexecve).
    match unsafe { nix::unistd::fork() }.map_err(|e| fail(format!("fork: {e}")))? {
        nix::unistd::ForkResult::Child => {
            let _ = nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&nix::sys::signal::SigSet::empty()),
                None,
            );
            let _ = nix::unistd::dup2(rd.as_raw_fd(), 0);
            if let Some(enter) = enter {
                if enter().is_err() {
                    // SAFETY: _exit in a forked child.
                    unsafe { libc::_exit(126) };
                }
            }
            let _ = nix::unistd::fexecve(exe.as_raw_fd(), &argv, &env);
            // SAFETY: _exit in a forked child.
            unsafe { libc::_exit(127) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(rd);
            let mut w = std::fs::File::from(wr);
            // A hook that does not read its stdin gets EPIPE here: fine.
            let _ = w.write_all(state.as_bytes());
            drop(w);
            let deadline = h
                .timeout
                .map(|t| std::time::Instant::now() + Duration::from_secs(u64::from(t.max(1))));
            loop {
                use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                    Ok(WaitStatus::Exited(_, c)) => return Err(fail(format!("exit status {c}"))),
                    Ok(WaitStatus::Signaled(_, s, _)) => {
                        return Err(fail(format!("killed by {s}")))
                    }
                    Ok(_) => {}
                    Err(nix::Error::EINTR) => {}
                    Err(e) => return Err(fail(format!("wait: {e}"))),
                }
                if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    return Err(fail("timed out".into()));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// stage1, once init is in place: `prestart`/`createRuntime` hooks here,
/// `createContainer` hooks in init's mount namespace.
pub fn create_hooks(o: &OciSettings, init: i32) -> Result<(), OciError> {
    let state = o.state_json("created", init);
    run_hooks(&o.hooks.create_runtime, &state, None)?;
    if !o.hooks.create_container.is_empty() {
        let mnt = std::fs::File::open(format!("/proc/{init}/ns/mnt")).map_err(|source| {
            OciError::OpenNs {
                what: "mnt",
                path: format!("/proc/{init}/ns/mnt"),
                source,
            }
        })?;
        let enter = move || nix::sched::setns(&mnt, CloneFlags::CLONE_NEWNS);
        run_hooks(&o.hooks.create_container, &state, Some(&enter))?;
    }
    Ok(())
}

/// Send the pty master to the caller's console socket (runc's protocol:
/// one message carrying the descriptor).
pub fn send_console(path: &Path, master: &OwnedFd) -> Result<(), OciError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let err = |source| OciError::Console {
        path: path.display().to_string(),
        source,
    };
    let sock = std::os::unix::net::UnixStream::connect(path).map_err(err)?;
    let fds = [master.as_raw_fd()];
    let name = b"/dev/ptmx";
    let iov = [std::io::IoSlice::new(name)];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| err(std::io::Error::from(e)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o: Vec<String> = ["rbind", "ro", "nosuid", "rprivate", "mode=755", "size=1m"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (f, p, d) = parse_options(&o);
        assert!(f.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert!(f.contains(MsFlags::MS_NOSUID));
        assert_eq!(p, Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC));
        assert_eq!(d, ["mode=755", "size=1m"]);
        // Shared propagation is never honoured: it would let the pod's
        // mounts reach the host.
        let (_, p, _) = parse_options(&["rshared".to_string()]);
        assert_eq!(p, Some(MsFlags::MS_PRIVATE));
    }

    #[test]
    fn standard_mounts_are_berths_own() {
        let m = |d: &str, k: &str| OciMount {
            destination: d.into(),
            kind: k.into(),
            source: k.into(),
            options: vec![],
        };
        assert!(builtin(&m("/proc", "proc")));
        assert!(builtin(&m("/dev/shm", "tmpfs")));
        assert!(!builtin(&m("/dev/shm", "bind")));
        assert!(!builtin(&m("/tmp", "tmpfs")));
    }

    #[test]
    fn flags_follow_the_namespaces() {
        let mut o = OciSettings::default();
        let f = clone_flags(&o);
        assert!(f.contains(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS));
        o.namespaces.net = NsChoice::Join("/run/netns/x".into());
        o.namespaces.ipc = NsChoice::Host;
        let f = clone_flags(&o);
        assert!(!f.contains(CloneFlags::CLONE_NEWNET));
        assert!(!f.contains(CloneFlags::CLONE_NEWIPC));
        assert!(f.contains(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS));
    }
}

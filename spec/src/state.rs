//! The file half of the stage contract, shared by every stage1: the pod's
//! life lock, the start report to stage0, the `pid` and `status` files, and
//! the `stop` escalation (SIGTERM to the leader, SIGKILL after a timeout).

use crate::report::StartReport;
use crate::{PodDir, ENV_LISTEN_FDNAMES, ENV_LOCK_FD, ENV_PASS_FDS, ENV_READY_FD};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {0} is already running")]
    Busy(String),
    #[error("pod {0} is not running")]
    NotRunning(String),
    #[error("cannot lock {path}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {name} has no valid pid file")]
    NoPid { name: String },
    #[error("cannot signal the pod's leader (pid {pid})")]
    Signal {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {0} did not stop after SIGKILL")]
    Unkillable(String),
}

/// The pod's name: the last component of its directory.
pub fn pod_name(pod: &PodDir) -> String {
    pod.path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| pod.path().display().to_string())
}

/// Take an fd named by an environment variable, if it is open; the variable
/// is removed so it does not leak to children.
fn env_fd(var: &str) -> Option<RawFd> {
    let fd: RawFd = std::env::var(var).ok()?.parse().ok()?;
    std::env::remove_var(var);
    // SAFETY: F_GETFD only queries the descriptor table.
    (unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0).then_some(fd)
}

/// Mark a descriptor close-on-exec so the app never inherits it.
pub fn set_cloexec(fd: &impl AsRawFd) {
    // SAFETY: F_SETFD on a descriptor the caller owns; no memory involved.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// flock(2) `op` on `fd`, retried when a signal interrupts a blocking wait.
pub fn flock(fd: &impl AsRawFd, op: i32) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on an open descriptor; no memory involved.
        if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The pod's life lock, held for the life of the pod; released when the
/// last descriptor of it closes (process exit included).
pub struct LifeLock(#[allow(dead_code)] File);

impl LifeLock {
    /// The locked descriptor (an OCI pod's init keeps a copy of it, so the
    /// lock lives as long as the init does).
    pub fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Take the pod's life lock: inherit stage0's (already locked) descriptor,
/// or lock the file ourselves when run by hand.
pub fn take_life_lock(pod: &PodDir) -> Result<LifeLock, StateError> {
    let path = pod.lock_file();
    let file = match env_fd(ENV_LOCK_FD) {
        // SAFETY: stage0 passed us this open descriptor for exactly this use;
        // nothing else in this process owns it.
        Some(fd) => unsafe { File::from_raw_fd(fd) },
        None => File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StateError::Open {
                path: path.display().to_string(),
                source,
            })?,
    };
    set_cloexec(&file);
    // Re-locking a lock we already hold (inherited fd) succeeds at once.
    match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(LifeLock(file)),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
            Err(StateError::Busy(pod_name(pod)))
        }
        Err(source) => Err(StateError::Lock {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Is some process holding the pod's life lock?
pub fn is_running(pod: &PodDir) -> bool {
    let Ok(file) = File::open(pod.lock_file()) else {
        return false;
    };
    match flock(&file, libc::LOCK_SH | libc::LOCK_NB) {
        Ok(()) => false,
        Err(e) => e.raw_os_error() == Some(libc::EWOULDBLOCK),
    }
}

/// The fds stage0 passes through a stage1 to the app: 3 .. 3 + `count`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassedFds {
    pub count: u32,
    /// Set when they came from systemd socket activation: the app gets
    /// `LISTEN_FDS`, `LISTEN_PID` and these `LISTEN_FDNAMES`.
    pub listen_fdnames: Option<String>,
}

impl PassedFds {
    /// The first fd that is not passed.
    pub fn end(&self) -> RawFd {
        3 + self.count as RawFd
    }

    /// The environment the app gets for socket activation (`LISTEN_PID`
    /// is added in the app's own process, once its pid is known).
    pub fn listen_env(&self) -> Vec<String> {
        match &self.listen_fdnames {
            Some(names) if self.count > 0 => {
                let mut v = vec![format!("LISTEN_FDS={}", self.count)];
                if !names.is_empty() {
                    v.push(format!("LISTEN_FDNAMES={names}"));
                }
                v
            }
            _ => Vec::new(),
        }
    }
}

/// First thing a stage1 does: mark every inherited fd from 3 on
/// close-on-exec except the ones stage0 passes through to the app
/// ([`ENV_PASS_FDS`]); the lock and report fds are taken (and made
/// close-on-exec) later by [`take_life_lock`] and [`Ready::from_env`].
/// Nothing a stage1 inherited by accident can reach the pod: the app itself
/// closes every fd from [`PassedFds::end`] on before it execs.
pub fn sanitize_fds() -> PassedFds {
    let count: u32 = std::env::var(ENV_PASS_FDS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let listen_fdnames = std::env::var(ENV_LISTEN_FDNAMES).ok();
    std::env::remove_var(ENV_PASS_FDS);
    std::env::remove_var(ENV_LISTEN_FDNAMES);
    let p = PassedFds {
        count,
        listen_fdnames,
    };
    close_from(p.end(), true);
    for fd in 3..p.end() {
        // SAFETY: F_SETFD on an inherited descriptor number.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    p
}

/// Close (or, with `cloexec`, mark close-on-exec) every fd from `first` on.
/// Async-signal-safe: callable between fork and exec.
pub fn close_from(first: RawFd, cloexec: bool) {
    let flags = if cloexec {
        libc::CLOSE_RANGE_CLOEXEC
    } else {
        0
    };
    // SAFETY: close_range(2) only affects our descriptor table.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, flags) };
    if r != 0 {
        // Before Linux 5.11: every possible fd up to the soft limit.
        // SAFETY: sysconf has no preconditions.
        let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(1024, 1 << 20) as RawFd;
        for fd in first..max {
            // SAFETY: as above, on numbers that may or may not be open.
            unsafe {
                if cloexec {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                } else {
                    libc::close(fd);
                }
            }
        }
    }
}

/// The one-line start report to stage0 (see [`ENV_READY_FD`]).
pub struct Ready(Option<File>);

impl Ready {
    pub fn from_env() -> Ready {
        Ready(env_fd(ENV_READY_FD).map(|fd| {
            // SAFETY: stage0 passed us this pipe's write end; we own it now.
            let f = unsafe { File::from_raw_fd(fd) };
            set_cloexec(&f);
            f
        }))
    }

    pub fn raw_fd(&self) -> Option<RawFd> {
        self.0.as_ref().map(|f| f.as_raw_fd())
    }

    /// Send the report (once) and close the pipe.
    pub fn send(&mut self, report: &StartReport) {
        if let Some(mut f) = self.0.take() {
            let _ = report.write_to(&mut f);
        }
    }

    /// Has the report been sent (or was there nobody to send it to)?
    pub fn sent(&self) -> bool {
        self.0.is_none()
    }
}

/// Write then rename, so readers never see a partial file.
pub fn write_file(path: &Path, content: &str) -> Result<(), StateError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // An explicit mode: the kvm stage1's FUSE server sets the process umask
    // to 0 (to create guest files with exact modes).
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| StateError::Write {
            path: path.display().to_string(),
            source,
        })
}

/// The leader pid recorded by `run`, only if the pod is running.
pub fn running_leader(pod: &PodDir) -> Result<i32, StateError> {
    if !is_running(pod) {
        return Err(StateError::NotRunning(pod_name(pod)));
    }
    std::fs::read_to_string(pod.pid_file())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| StateError::NoPid {
            name: pod_name(pod),
        })
}

/// The last step of a stage1's `run`: remove the pod directory if stage0
/// asked for it (see [`PodDir::remove_on_exit_file`]).
pub fn remove_if_requested(pod: &PodDir) {
    if pod.remove_on_exit_file().exists() {
        if let Err(e) = std::fs::remove_dir_all(pod.path()) {
            eprintln!("berth: cannot remove {}: {e}", pod.path().display());
        }
    }
}

/// Run `cmd` (stdin /dev/null, stderr dropped) and return what it printed
/// on stdout, at most 1 MiB. Its exit status is not judged: callers parse
/// the output (which, from inside a pod, is the pod's and untrusted).
pub fn capture_output(cmd: &mut std::process::Command) -> std::io::Result<String> {
    use std::io::Read;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut out = Vec::new();
    if let Some(o) = child.stdout.take() {
        let _ = o.take(1 << 20).read_to_end(&mut out);
    }
    child.wait()?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// How often `stop` looks whether the pod has gone.
const STOP_POLL: Duration = Duration::from_millis(10);
/// How long `stop` waits after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Stop a pod: `signal` to its leader (SIGTERM, which each stage1 passes on
/// to the app; SIGRTMIN+3, systemd's "halt", for an ns service pod whose
/// leader is systemd), SIGKILL after `timeout`, or at once with `force`.
/// Returns when the life lock is released. Stopping a pod that is not
/// running is not an error.
pub fn stop(pod: &PodDir, signal: i32, force: bool, timeout: Duration) -> Result<(), StateError> {
    let leader = match running_leader(pod) {
        Ok(p) => p,
        Err(StateError::NotRunning(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    // Pin the process, then re-check that the pod still runs: the pid we
    // signal is then the pod's leader, never a recycled pid.
    let pidfd = pidfd_open(leader).map_err(|source| StateError::Signal {
        pid: leader,
        source,
    })?;
    if !is_running(pod) {
        return Ok(());
    }
    let send = |sig| {
        pidfd_signal(&pidfd, sig).map_err(|source| StateError::Signal {
            pid: leader,
            source,
        })
    };
    if !force {
        send(signal)?;
        if wait_stopped(pod, timeout) {
            return Ok(());
        }
    }
    send(libc::SIGKILL)?;
    if wait_stopped(pod, KILL_WAIT) {
        Ok(())
    } else {
        Err(StateError::Unkillable(pod_name(pod)))
    }
}

/// Wait until the pod's life lock is free (at most `timeout`).
pub fn wait_stopped(pod: &PodDir, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_running(pod) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(STOP_POLL);
    }
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel gave us a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn pidfd_signal(fd: &OwnedFd, sig: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal with a null siginfo behaves like kill(2).
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // Already gone: that is what we wanted.
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_marks_running_and_stop_of_idle_pod_is_a_no_op() {
        let d = tempfile::tempdir().unwrap();
        let pod = PodDir::new(d.path().join("p"));
        std::fs::create_dir(pod.path()).unwrap();
        assert!(!is_running(&pod));
        let lock = take_life_lock(&pod).unwrap();
        assert!(is_running(&pod));
        // A second taker in this process gets a different open file: busy.
        assert!(matches!(take_life_lock(&pod), Err(StateError::Busy(_))));
        assert!(matches!(
            running_leader(&pod),
            Err(StateError::NoPid { .. })
        ));
        drop(lock);
        assert!(!is_running(&pod));
        stop(&pod, libc::SIGTERM, false, Duration::from_secs(1)).unwrap();
        write_file(&pod.status_file(), "3\n").unwrap();
        assert_eq!(std::fs::read_to_string(pod.status_file()).unwrap(), "3\n");
    }

    #[test]
    fn stop_terminates_the_leader() {
        let d = tempfile::tempdir().unwrap();
        let pod = PodDir::new(d.path().join("p"));
        std::fs::create_dir(pod.path()).unwrap();
        // A stand-in stage1: we hold the lock while a child plays the leader.
        let lock = File::create(pod.lock_file()).unwrap();
        flock(&lock, libc::LOCK_EX).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        write_file(&pod.pid_file(), &child.id().to_string()).unwrap();
        let waiter = std::thread::spawn(move || {
            let st = child.wait().unwrap();
            drop(lock);
            st
        });
        stop(&pod, libc::SIGTERM, false, Duration::from_secs(5)).unwrap();
        let st = waiter.join().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGTERM));
        assert!(!is_running(&pod));
    }
}

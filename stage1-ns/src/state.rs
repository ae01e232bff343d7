//! Pod-directory state shared by the verbs: the life lock, the ready pipe to
//! stage0, and the `pid` / `status` files.

use berth_spec::{PodDir, ENV_LOCK_FD, ENV_READY_FD};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};

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
        source: nix::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {name} has no valid pid file")]
    NoPid { name: String },
}

fn env_fd(var: &str) -> Option<RawFd> {
    let fd: RawFd = std::env::var(var).ok()?.parse().ok()?;
    std::env::remove_var(var);
    // Only accept descriptors that are actually open.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).ok()?;
    Some(fd)
}

/// Held for the life of the pod: while some process holds it, the pod runs.
pub type LifeLock = Flock<File>;

/// Take the pod's life lock: inherit stage0's (already locked) descriptor, or
/// lock the file ourselves when stage1 is run by hand.
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
    crate::app::set_cloexec(&file);
    // Re-locking a lock we already hold (inherited fd) succeeds immediately.
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| match e {
        nix::Error::EWOULDBLOCK => StateError::Busy(pod_name(pod)),
        source => StateError::Lock {
            path: path.display().to_string(),
            source,
        },
    })
}

/// Is some process holding the pod's life lock?
pub fn is_running(pod: &PodDir) -> bool {
    let Ok(file) = File::open(pod.lock_file()) else {
        return false;
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => false,
        Err((_, e)) => e == nix::Error::EWOULDBLOCK,
    }
}

pub fn pod_name(pod: &PodDir) -> String {
    pod.path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| pod.path().display().to_string())
}

/// The one-line start report to stage0 (see `berth_spec::ENV_READY_FD`).
pub struct Ready(Option<File>);

impl Ready {
    pub fn from_env() -> Ready {
        Ready(env_fd(ENV_READY_FD).map(|fd| {
            // SAFETY: stage0 passed us this pipe's write end; we own it now.
            let f = unsafe { File::from_raw_fd(fd) };
            crate::app::set_cloexec(&f);
            f
        }))
    }

    pub fn raw_fd(&self) -> Option<RawFd> {
        use std::os::fd::AsRawFd;
        self.0.as_ref().map(|f| f.as_raw_fd())
    }

    /// Send the line (once) and close the pipe.
    pub fn send(&mut self, line: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = writeln!(f, "{line}");
        }
    }
}

pub fn write_file(path: &std::path::Path, content: &str) -> Result<(), StateError> {
    // Write then rename, so readers never see a partial file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| StateError::Write {
            path: path.display().to_string(),
            source,
        })
}

/// The leader pid recorded by `run`, only if the pod is running.
pub fn running_leader(pod: &PodDir) -> Result<nix::unistd::Pid, StateError> {
    if !is_running(pod) {
        return Err(StateError::NotRunning(pod_name(pod)));
    }
    std::fs::read_to_string(pod.pid_file())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
        .map(nix::unistd::Pid::from_raw)
        .ok_or_else(|| StateError::NoPid {
            name: pod_name(pod),
        })
}

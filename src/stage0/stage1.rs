//! Locating and invoking a stage1 executable (the stage contract: verbs
//! `run|exec|stop|gc POD_DIR`).

use super::fds::PassFds;
use berth_spec::{PodDir, ENV_LOCK_FD, ENV_READY_FD};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum Stage1Error {
    #[error("unknown stage1 {0:?}: expected ns, kvm or the path of an executable")]
    Unknown(String),
    #[error("stage1 {name} is not installed (looked for {exe} next to berth, in /usr/local/lib/berth and in PATH)")]
    NotInstalled { name: String, exe: String },
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `ns`, `kvm`, or a path → the stage1 executable.
pub fn resolve(choice: &str) -> Result<PathBuf, Stage1Error> {
    let exe = match choice {
        "ns" => "berth-stage1-ns",
        "kvm" => "berth-stage1-kvm",
        other if other.contains('/') => {
            let p = crate::stage0::parse::absolute(Path::new(other));
            return if is_executable(&p) {
                Ok(p)
            } else {
                Err(Stage1Error::Unknown(other.to_string()))
            };
        }
        other => return Err(Stage1Error::Unknown(other.to_string())),
    };
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(exe));
    }
    candidates.push(Path::new("/usr/local/lib/berth").join(exe));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(exe)));
    }
    candidates
        .into_iter()
        .find(|p| is_executable(p))
        .ok_or_else(|| Stage1Error::NotInstalled {
            name: choice.to_string(),
            exe: exe.to_string(),
        })
}

/// Is this the kvm stage1?
pub fn is_kvm(stage1: &Path) -> bool {
    stage1.file_name().and_then(|n| n.to_str()) == Some("berth-stage1-kvm")
}

/// The stage1 recorded for a pod at creation. A `stage1` file that is
/// missing or names no executable (a half-written or damaged pod) falls
/// back to the built-in stage1 the spec was made for, so such a pod can
/// still be stopped and removed.
pub fn of_pod(pod: &PodDir) -> Option<PathBuf> {
    let recorded = std::fs::read_to_string(pod.stage1_file())
        .ok()
        .map(|s| PathBuf::from(s.trim()))
        .filter(|p| p.is_absolute() && is_executable(p));
    recorded.or_else(|| {
        let spec = berth_spec::PodSpec::load(pod).ok();
        let builtin = if spec.is_some_and(|s| s.kvm.is_some()) {
            "kvm"
        } else {
            "ns"
        };
        let p = resolve(builtin).ok()?;
        log::warn!(
            "pod {}: its stage1 file names no executable; using {}",
            super::pod_name(pod),
            p.display()
        );
        Some(p)
    })
}

/// A stage1 command for `verb POD_DIR [args]`, with the log level passed on.
pub fn command(stage1: &Path, verb: &str, pod: &PodDir, args: &[String]) -> Command {
    let mut c = Command::new(stage1);
    c.arg(verb).arg(pod.path()).args(args);
    // Our unit's notify socket is ours: no process of the pod may tell
    // systemd it is ready (or anything else).
    c.env_remove("NOTIFY_SOCKET");
    if let Ok(level) = std::env::var("BERTH_LOG") {
        c.env("BERTH_LOG", level);
    }
    c
}

/// Hand the life lock, the start report pipe and the passed-through fds to
/// the child: clear close-on-exec on exactly those in the child only (every
/// other fd of ours is close-on-exec, see [`super::fds::sanitize`]), and
/// name them in the environment.
pub fn pass_fds(c: &mut Command, lock: RawFd, ready: Option<&OwnedFd>, pass: &PassFds) {
    c.env(ENV_LOCK_FD, lock.to_string());
    let ready = ready.map(|r| r.as_raw_fd());
    if let Some(r) = ready {
        c.env(ENV_READY_FD, r.to_string());
    }
    pass.export(c);
    let fds: Vec<RawFd> = std::iter::once(lock)
        .chain(ready)
        .chain(pass.fds())
        .collect();
    // SAFETY: the closure only calls fcntl, which is async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            for fd in &fds {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

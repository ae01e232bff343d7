//! Starting a process inside the pod (the app for `run`, the command for
//! `exec`): fork, wire up stdio, chdir, confine, resolve the command in PATH,
//! execve. A failure in the child is reported over a close-on-exec pipe, so
//! the parent can tell "exec failed" (126/127, with a message naming the
//! command) from "the app ran and exited 127".

use crate::security::{confine, Confinement};
use crate::supervise::PodStdio;
use berth_spec::state::PassedFds;
use berth_spec::{ErrorChain, EXIT_BERTH_FAILED, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::{ForkResult, Pid};
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("argument or environment contains a NUL byte")]
    Nul,
    #[error("cannot create the exec-status pipe")]
    Pipe(#[source] nix::Error),
    #[error("cannot fork")]
    Fork(#[source] nix::Error),
}

/// How the new process's standard streams are set up.
pub enum Stdio<'a> {
    /// The caller's 0, 1, 2 (with `pipes` put in place of its terminals
    /// first); stdin replaced by /dev/null unless `stdin`.
    Inherit {
        stdin: bool,
        pipes: Option<&'a PodStdio>,
    },
    /// Make the pty slave at this path the controlling terminal and 0, 1, 2.
    Tty(PathBuf),
}

pub struct Launch<'a> {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub stdio: Stdio<'a>,
    pub confinement: &'a Confinement,
    /// Inherited fds 3 .. that the process gets; every other fd is closed
    /// at its exec.
    pub pass: &'a PassedFds,
}

/// Result of a launch: the process started, or it failed before/at execve.
pub enum Started {
    Running(Pid),
    /// The child already exited with `code` after printing nothing; `message`
    /// says why (e.g. `exec "foo": command not found`).
    Failed {
        pid: Pid,
        code: i32,
        message: String,
    },
}

/// argv, environment and PATH of a launch, as the child needs them.
fn prepare(l: &Launch<'_>) -> Result<(Vec<CString>, Vec<CString>, String), AppError> {
    let cstrings = |v: &[String]| {
        v.iter()
            .map(|a| CString::new(a.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| AppError::Nul)
    };
    let argv = cstrings(&l.argv)?;
    let mut env = l.env.clone();
    env.extend(l.pass.listen_env());
    let env = cstrings(&env)?;
    let path = l
        .env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(berth_spec::DEFAULT_PATH)
        .to_string();
    Ok((argv, env, path))
}

/// Become the process (no fork): set it up and exec it in place — a
/// service pod's systemd, which must be PID 1. Returns only on failure:
/// the exit code (126/127/125) and why.
pub fn exec_in_place(l: &Launch<'_>) -> Result<(i32, String), AppError> {
    let (argv, env, path) = prepare(l)?;
    Ok(child(l, &argv, &env, &path))
}

/// Fork and exec. The caller must reap the returned pid.
pub fn launch(l: &Launch<'_>) -> Result<Started, AppError> {
    let (argv, mut env, path) = prepare(l)?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(AppError::Pipe)?;
    // SAFETY: the caller is single-threaded (stage1 and the pod init never
    // start threads), so the child may run arbitrary code until it execs.
    match unsafe { nix::unistd::fork() }.map_err(AppError::Fork)? {
        ForkResult::Child => {
            drop(rd);
            if l.pass.listen_fdnames.is_some() && l.pass.count > 0 {
                // Socket activation: LISTEN_PID names the app itself.
                if let Ok(c) = CString::new(format!("LISTEN_PID={}", nix::unistd::getpid())) {
                    env.push(c);
                }
            }
            let (code, msg) = child(l, &argv, &env, &path);
            let line = format!("{code} {msg}");
            let _ = nix::unistd::write(&wr, line.as_bytes());
            // SAFETY: _exit is always safe; it skips atexit handlers that
            // belong to the parent's copy of the process state.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut report = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut report);
            if report.is_empty() {
                return Ok(Started::Running(child));
            }
            let (code, message) = report.split_once(' ').unwrap_or((&report, ""));
            Ok(Started::Failed {
                pid: child,
                code: code.parse().unwrap_or(EXIT_BERTH_FAILED),
                message: message.to_string(),
            })
        }
    }
}

/// The child's side. Returns only on failure: (exit code, message).
fn child(l: &Launch<'_>, argv: &[CString], env: &[CString], path: &str) -> (i32, String) {
    let fail = |what: String| (EXIT_BERTH_FAILED, what);
    // Signals were blocked by the parent for its signalfd; the app starts with
    // a clean mask and default dispositions (exec resets handlers).
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // exec keeps ignored signals ignored: Rust's runtime ignores SIGPIPE in
    // stage1, which the app must not inherit (`yes | head` would never end).
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: SIG_DFL for a standard signal; async-signal-safe.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    if let Err(e) = setup_stdio(&l.stdio) {
        return fail(format!("cannot set up stdio: {e}"));
    }
    if let Err(e) = nix::unistd::chdir(l.cwd.as_str()) {
        return fail(format!("working directory {:?}: {}", l.cwd, e.desc()));
    }
    if let Err(e) = confine(l.confinement) {
        return fail(format!("{}", ErrorChain(&e)));
    }
    // Exactly 0, 1, 2 and the passed fds survive the exec: everything else
    // (whatever this process inherited) is closed by it.
    for fd in 3..l.pass.end() {
        // SAFETY: F_SETFD on a passed descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
    berth_spec::state::close_from(l.pass.end(), true);
    let cmd = &l.argv[0];
    let resolved = match resolve(cmd, path) {
        Ok(p) => p,
        Err(code) => return (code, describe(cmd, code)),
    };
    let Ok(prog) = CString::new(resolved.as_os_str().as_bytes()) else {
        return fail("command path contains a NUL byte".into());
    };
    let err = nix::unistd::execve(&prog, argv, env).unwrap_err();
    let code = match err {
        nix::Error::ENOENT | nix::Error::ENOTDIR => EXIT_NOT_FOUND,
        _ => EXIT_NOT_EXECUTABLE,
    };
    (code, format!("exec {cmd:?}: {}", err.desc().to_lowercase()))
}

fn describe(cmd: &str, code: i32) -> String {
    if code == EXIT_NOT_FOUND {
        format!("exec {cmd:?}: command not found")
    } else {
        format!("exec {cmd:?}: permission denied")
    }
}

/// Find `cmd` the way execvp does: as given when it contains `/`, else in each
/// PATH directory. Err(127) when nothing exists, Err(126) when something
/// exists but is not an executable file.
pub fn resolve(cmd: &str, path: &str) -> Result<PathBuf, i32> {
    let usable = |p: &Path| -> Result<(), i32> {
        match std::fs::metadata(p) {
            Err(_) => Err(EXIT_NOT_FOUND),
            Ok(m) if m.is_dir() => Err(EXIT_NOT_EXECUTABLE),
            Ok(_) => match nix::unistd::access(p, nix::unistd::AccessFlags::X_OK) {
                Ok(()) => Ok(()),
                Err(_) => Err(EXIT_NOT_EXECUTABLE),
            },
        }
    };
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return usable(&p).map(|()| p);
    }
    let mut worst = EXIT_NOT_FOUND;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(cmd);
        match usable(&p) {
            Ok(()) => return Ok(p),
            Err(c) if c == EXIT_NOT_EXECUTABLE => worst = c,
            Err(_) => {}
        }
    }
    Err(worst)
}

fn setup_stdio(stdio: &Stdio) -> nix::Result<()> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    match stdio {
        Stdio::Inherit { stdin, pipes } => {
            // A session of its own, so no controlling terminal: the caller's
            // (the host's) would otherwise be reachable through /dev/tty —
            // TIOCSTI into the host shell. A session leader already (a
            // service pod's PID 1, which init made one) has none either.
            if let Err(e) = nix::unistd::setsid() {
                if nix::unistd::getsid(None) != Ok(nix::unistd::getpid()) {
                    return Err(e);
                }
            }
            if let Some(p) = pipes {
                p.install()?;
            }
            if !stdin {
                let null = open("/dev/null", OFlag::O_RDONLY, Mode::empty())?;
                nix::unistd::dup2(null, 0)?;
                nix::unistd::close(null)?;
            }
        }
        Stdio::Tty(slave) => {
            nix::unistd::setsid()?;
            let fd = open(slave.as_path(), OFlag::O_RDWR, Mode::empty())?;
            // SAFETY: TIOCSCTTY takes an int argument; fd is a terminal we own.
            if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } < 0 {
                return Err(nix::Error::last());
            }
            for target in 0..3 {
                nix::unistd::dup2(fd, target)?;
            }
            if fd > 2 {
                nix::unistd::close(fd)?;
            }
        }
    }
    Ok(())
}

/// Exit status of a reaped process in shell convention: the exit code, or
/// 128+N when killed by signal N.
pub fn exit_code(status: nix::sys::wait::WaitStatus) -> Option<i32> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn resolve_finds_and_classifies() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = d.path().join("data");
        std::fs::write(&data, "x").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = format!("/nonexistent:{}", d.path().display());
        assert_eq!(resolve("tool", &path), Ok(exe.clone()));
        assert_eq!(resolve("missing", &path), Err(EXIT_NOT_FOUND));
        assert_eq!(resolve(exe.to_str().unwrap(), ""), Ok(exe));
        assert_eq!(resolve("./definitely/not/here", &path), Err(EXIT_NOT_FOUND));
        assert_eq!(
            resolve(d.path().to_str().unwrap(), &path),
            Err(EXIT_NOT_EXECUTABLE)
        );
        // Root bypasses mode bits only when some x bit is set; 0644 is never executable.
        assert_eq!(resolve("data", &path), Err(EXIT_NOT_EXECUTABLE));
    }

    #[test]
    fn exit_codes_follow_shell_convention() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        let p = Pid::from_raw(1);
        assert_eq!(exit_code(WaitStatus::Exited(p, 5)), Some(5));
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }
}

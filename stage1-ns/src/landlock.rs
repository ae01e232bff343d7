//! The ns pod's Landlock (`berth_spec::landlock` holds the ruleset): every
//! process of the pod reaches no file outside the pod's own tree — "/"
//! after pivot_root, which is the overlay root and every mount below it
//! (/proc, /dev, /sys, volumes, and whatever the pod mounts there later:
//! a rule covers a hierarchy, whatever is mounted in it). So a descriptor
//! of a host file or directory that reached the pod (passed in, leaked, an
//! O_PATH one) and the `/proc/self/fd/N` magic links to it only give what
//! was already open: no new open, below it or through it, succeeds
//! (EACCES).
//!
//! Who gets what:
//! - the app and what it starts: files confined, scoped for signals (it
//!   cannot signal the pod's init, nor `berth exec` processes: they are
//!   in domains of their own), and for abstract unix sockets when the pod
//!   shares the host's network namespace (`--net host`: the host's
//!   abstract sockets are out of reach; in a namespace of its own there
//!   are no others);
//! - a service pod's systemd: scoped the same way, its files *not*
//!   confined: Landlock forbids every mount-topology change (mount(2),
//!   umount, pivot_root, move_mount: EPERM) to a process with file
//!   rules, and systemd mounts (its API file systems, the units'
//!   PrivateTmp=, ProtectSystem=…);
//! - each `berth exec` process: files confined, abstract sockets scoped
//!   with `--net host`; signals not scoped, so `kill`, `nginx -s reload`
//!   and the like reach the app. It cannot ptrace the app nor read its
//!   /proc/PID/{fd,root,environ,mem} (different domains), so `strace -p`
//!   from an exec does not work in a command pod;
//! - in a service pod, each `berth exec` process gets no domain at all,
//!   as unconfined as the pod's systemd: confined, it could not read
//!   /proc/1/root or trace systemd's services (`systemctl` itself works
//!   either way, over systemd's socket).
//!
//! One exception: the process's own standard streams. When stdin, stdout
//! or stderr is a host file or device (`berth run > out.log`, a detached
//! pod's `app.log`, a host /dev/null), that one file may be opened again
//! with the access its descriptor has (read, write), so `/dev/stdout`
//! (→ /proc/self/fd/1), which logging set-ups name, keeps working: the
//! process holds that access already. Descriptors passed with
//! `--preserve-fds` or socket activation get no such rule.
//!
//! Domains are per process tree: an exec process cannot ptrace the app or
//! read its /proc/PID/{fd,environ,mem,…} (nor the reverse), a Landlock
//! rule of every ABI. `--security-opt landlock=off` turns all of it off.
//!
//! stage1 decides at `run` (one warning line when the kernel has no
//! Landlock) and records it in `POD_DIR/landlock.json`, which `exec`
//! follows and `berth inspect` shows.

use berth_spec::landlock::{
    kernel_abi, Access, Domain, Enforced, LandlockError, LandlockState, Ruleset, Scopes,
};
use berth_spec::oci::NsChoice;
use berth_spec::{LandlockMode, NetworkMode, PodDir, PodSpec};
use std::path::Path;

/// What one process gets, decided before forking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Confine its files to the pod's tree.
    pub files: bool,
    pub scopes: Scopes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    App,
    Exec,
}

fn shares_host_network(spec: &PodSpec) -> bool {
    spec.network.mode == NetworkMode::Host
        || spec
            .oci
            .as_ref()
            .is_some_and(|o| o.namespaces.net == NsChoice::Host)
}

fn plan(spec: &PodSpec, who: Who) -> Plan {
    let host_net = shares_host_network(spec);
    match who {
        Who::App => Plan {
            files: spec.service.is_none(),
            scopes: Scopes {
                signal: true,
                abstract_unix_socket: host_net,
            },
        },
        // In a service pod, as unconfined as its systemd: a domain of
        // its own would cut it off from /proc/1/{root,fd,…} (Landlock
        // refuses ptrace access to a process outside the domain).
        Who::Exec if spec.service.is_some() => Plan {
            files: false,
            scopes: Scopes::default(),
        },
        Who::Exec => Plan {
            files: true,
            scopes: Scopes {
                signal: false,
                abstract_unix_socket: host_net,
            },
        },
    }
}

/// What a pod with this spec gets on a kernel with Landlock ABI `abi`.
fn state(spec: &PodSpec, abi: Option<u32>) -> LandlockState {
    if spec.security.landlock == LandlockMode::Off {
        return LandlockState::Off;
    }
    let Some(abi) = abi else {
        return LandlockState::Unsupported;
    };
    // Scopes came with ABI 6: not listed where the kernel lacks them.
    let scoped = |s: Scopes| if abi >= 6 { s.names() } else { Vec::new() };
    let domain = |who: Who, name: &str| {
        let p = plan(spec, who);
        Domain {
            who: name.into(),
            files: p.files,
            scoped: scoped(p.scopes),
        }
    };
    LandlockState::Enforced {
        abi,
        domains: vec![domain(Who::App, "app"), domain(Who::Exec, "exec")],
    }
}

/// `run`: the app's plan (None: no Landlock), recorded for `exec` and
/// `inspect`; one warning line when the kernel has none.
pub fn for_run(
    pod: &PodDir,
    spec: &PodSpec,
) -> Result<Option<Plan>, berth_spec::state::StateError> {
    let s = state(spec, kernel_abi());
    s.record(pod)?;
    Ok(match s {
        LandlockState::Enforced { .. } => Some(plan(spec, Who::App)),
        LandlockState::Off => None,
        LandlockState::Unsupported => {
            log::warn!(
                "stage1-ns: this kernel has no Landlock: pod {} runs without it",
                spec.name
            );
            None
        }
    })
}

/// `exec`: what the command gets, as recorded by `run` (a pod started
/// before Landlock was recorded: as `run` would decide now, silently).
pub fn for_exec(pod: &PodDir, spec: &PodSpec) -> Option<Plan> {
    let s = LandlockState::recorded(pod).unwrap_or_else(|| state(spec, kernel_abi()));
    match s {
        LandlockState::Enforced { .. } => Some(plan(spec, Who::Exec)),
        LandlockState::Off | LandlockState::Unsupported => None,
    }
}

/// In the process about to exec (after pivot_root or setns, so "/" is the
/// pod's root): enforce the plan. no_new_privs is the confinement's
/// business: without it the caller still holds CAP_SYS_ADMIN here (the
/// uid switch and capability trimming come later).
pub fn apply(p: &Plan) -> Result<(), LandlockError> {
    let mut rs = Ruleset::new()
        .files(p.files)
        .scopes(p.scopes)
        .no_new_privs(false);
    if p.files {
        rs = rs.allow_path(Path::new("/"), Access::Full)?;
        for (fd, name) in [(0, "stdin"), (1, "stdout"), (2, "stderr")] {
            if let Some((dup, access)) = stdio_file(fd) {
                rs = rs.allow_fd(dup, access, name);
            }
        }
    }
    match rs.restrict_self()? {
        Enforced::Yes { .. } | Enforced::Unsupported => Ok(()),
    }
}

/// A standard stream that is a file or a device (not a pipe, socket or
/// O_PATH descriptor): a descriptor of it for the rule and the access
/// its open mode gives.
fn stdio_file(fd: i32) -> Option<(std::os::fd::OwnedFd, Access)> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).ok()?);
    if flags.contains(OFlag::O_PATH) {
        return None;
    }
    let st = nix::sys::stat::fstat(fd).ok()?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFREG && kind != libc::S_IFCHR {
        return None;
    }
    let access = match flags & OFlag::O_ACCMODE {
        OFlag::O_RDONLY => Access::ReadOnly,
        OFlag::O_WRONLY => Access::WriteOnly,
        _ => Access::ReadWrite,
    };
    let dup = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3)).ok()?;
    // SAFETY: F_DUPFD_CLOEXEC just made this descriptor; nothing else owns it.
    Some((
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) },
        access,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PodSpec {
        PodSpec::new(
            "t",
            "0b6e8d2c-3a7f-4c1e-9d2a-5f6b7c8d9e0f",
            vec!["/bin/true".into()],
            "/img",
        )
    }

    #[test]
    fn plans() {
        let mut s = spec();
        assert_eq!(
            plan(&s, Who::App),
            Plan {
                files: true,
                scopes: Scopes {
                    signal: true,
                    abstract_unix_socket: false
                }
            }
        );
        assert_eq!(
            plan(&s, Who::Exec),
            Plan {
                files: true,
                scopes: Scopes::default()
            }
        );
        s.network.mode = NetworkMode::Host;
        assert!(plan(&s, Who::App).scopes.abstract_unix_socket);
        assert!(plan(&s, Who::Exec).scopes.abstract_unix_socket);
        assert!(!plan(&s, Who::Exec).scopes.signal);
        s.service = Some(berth_spec::Service {
            units: vec!["nginx.service".into()],
        });
        assert!(!plan(&s, Who::App).files, "systemd mounts");
        assert_eq!(
            plan(&s, Who::Exec),
            Plan {
                files: false,
                scopes: Scopes::default()
            },
            "no domain: systemd's /proc/1 stays readable"
        );
    }

    #[test]
    fn states() {
        let mut s = spec();
        assert_eq!(state(&s, None), LandlockState::Unsupported);
        assert_eq!(
            state(&s, Some(7)).describe(),
            "ABI 7 (app: files confined, scoped (signal); exec: files confined)"
        );
        assert_eq!(
            state(&s, Some(5)).describe(),
            "ABI 5 (app: files confined; exec: files confined)"
        );
        s.security.landlock = LandlockMode::Off;
        assert_eq!(state(&s, Some(7)), LandlockState::Off);
    }
}

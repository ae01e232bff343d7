//! Service pods in the VM (`spec.service`): systemd, not guest-init, is
//! the pod's init, and the pod counts as started only once systemd said
//! `READY=1` and every requested unit is active — the ns stage1's rule.
//!
//! guest-init stays PID 1 of the VM and the pod's supervisor. systemd is
//! its main process, started (app.rs, [`crate::app::PodInit`]) as PID 1
//! of a new PID namespace, in a cgroup namespace rooted at a cgroup of its
//! own (`pod/payload`, mounts.rs), with `container=berth` in its
//! environment (so it behaves as in a container: no udev, no getty), its
//! `/dev/console` a pty whose master guest-init relays to the host as the
//! app's output, a fresh tmpfs on /run holding `/run/host/container-manager`
//! and `/run/host/notify` — the socket this module reads systemd's
//! sd_notify messages from — and the pod's confinement (the systemd
//! seccomp profile and capability set of `Security::service()`).
//!
//! The start report of the main connection waits: on `READY=1` from
//! systemd itself (the sender's credentials are checked, so no unit can
//! announce readiness for it), guest-init runs `systemctl show` for the
//! units inside the pod ([`berth_spec::service::show_args`]), parses its
//! output defensively ([`berth_spec::service::parse_show`]) and sends
//! `Started`, or `Failed { status: 125, message: "unit nginx.service:
//! failed (exit-code)" }` and halts systemd. The host's SIGTERM (`berth
//! stop`) reaches systemd as SIGRTMIN+3, its halt request; when systemd
//! exits, guest-init powers the VM off with its status, as for any app.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use berth_spec::control::Process;
use berth_spec::service::{not_active, parse_show, show_args};
use berth_spec::User;
use nix::errno::Errno;
use nix::unistd::Pid;

use crate::app::{self, AppConfig, Confinement};

/// systemd's halt request, SIGRTMIN+3 as systemd (built against glibc,
/// whose SIGRTMIN is 34) counts it. Not `libc::SIGRTMIN() + 3`: musl's
/// SIGRTMIN is 35.
pub const SYSTEMD_HALT: i32 = 37;

/// Most of a `systemctl show` output kept (parse_show reads no more).
const MAX_CHECK_OUTPUT: usize = 64 * 1024;

/// Largest sd_notify datagram read whole (systemd's are a few dozen bytes;
/// longer ones are truncated, which can only lose a trailing assignment).
const NOTIFY_BUF: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot create the notify socket {0}")]
    Socket(String, #[source] Errno),
    #[error("cannot create {0}")]
    Create(&'static str, #[source] Errno),
    #[error("cannot read the random seed {0}")]
    ReadSeed(&'static str, #[source] Errno),
    #[error("cannot credit the random seed to the kernel's pool")]
    Credit(#[source] Errno),
}

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;

/// `struct rand_pool_info` with room for the seed.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; berth_spec::kvm::RANDOM_SEED_LEN],
}

/// Credit the host's random bytes at `path` (in the initramfs) to the
/// kernel's pool, so that its CRNG is ready at once: a microVM has no
/// entropy source, and systemd blocks in getrandom() (each unit's
/// invocation ID) until the kernel has gathered 256 bits of jitter, which
/// took minutes of emulated kernel work on a PVM host. The bytes come
/// from the host, which owns the VM anyway; they are fresh for each boot.
/// 4 syscalls.
pub fn credit_random_seed(path: &'static str) -> Result<(), ServiceError> {
    let c =
        std::ffi::CString::new(path).map_err(|_| ServiceError::ReadSeed(path, Errno::EINVAL))?;
    let f = crate::sys::open(&c, libc::O_RDONLY).map_err(|e| ServiceError::ReadSeed(path, e))?;
    let mut info = RandPoolInfo {
        entropy_count: 0,
        buf_size: 0,
        buf: [0; berth_spec::kvm::RANDOM_SEED_LEN],
    };
    // SAFETY: reads at most the buffer's length into it.
    let n = unsafe { libc::read(f.as_raw_fd(), info.buf.as_mut_ptr().cast(), info.buf.len()) };
    let n = Errno::result(n).map_err(|e| ServiceError::ReadSeed(path, e))?;
    let n = libc::c_int::try_from(n).unwrap_or(0);
    if n <= 0 {
        return Err(ServiceError::ReadSeed(path, Errno::ENODATA));
    }
    info.buf_size = n;
    info.entropy_count = n * 8;
    let rnd = crate::sys::open(c"/dev/urandom", libc::O_WRONLY).map_err(ServiceError::Credit)?;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes of
    // buffer follow it; ours is a live local of that size.
    Errno::result(unsafe { libc::ioctl(rnd.as_raw_fd(), RNDADDENTROPY as _, &info) })
        .map_err(ServiceError::Credit)?;
    Ok(())
}

/// The signal systemd gets for one the host sends: SIGTERM (`berth stop`)
/// becomes its halt request; the rest are passed on as they are (SIGKILL
/// ends the pod at once).
pub fn signal_for_systemd(signo: i32) -> i32 {
    if signo == libc::SIGTERM {
        SYSTEMD_HALT
    } else {
        signo
    }
}

/// Does an sd_notify datagram say `READY=1`? (Newline-separated
/// assignments; anything else is ignored.)
pub fn says_ready(datagram: &[u8]) -> bool {
    datagram.split(|b| *b == b'\n').any(|l| l == b"READY=1")
}

/// Extra arguments for systemd on a slow (PVM) host, where stage1-kvm set
/// `berth_slow_host=1` on the kernel command line (the kernel hands it to
/// us in the environment: no syscall to read it). In a container systemd
/// takes its "kernel command line" from its own arguments, so these raise
/// its default unit start and stop timeouts from 90 s, which journald's
/// start alone exceeds there.
pub fn slow_host_args() -> Option<[&'static str; 2]> {
    std::env::var_os(berth_spec::kvm::SLOW_HOST_PARAM)
        .is_some_and(|v| v == "1")
        .then_some([
            "systemd.default_timeout_start_sec=1800",
            "systemd.default_timeout_stop_sec=600",
        ])
}

/// systemd's environment additions: where its notify socket is.
pub fn notify_env(path: &str) -> String {
    format!("NOTIFY_SOCKET={path}")
}

/// A unix datagram socket bound at `path` (which must not exist), non-
/// blocking, passing each sender's credentials: 3 syscalls.
pub fn bind_notify(path: &str) -> Result<OwnedFd, ServiceError> {
    let err = |e| ServiceError::Socket(path.to_string(), e);
    // SAFETY: socket(2) returns a new fd, which we own.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    let fd = Errno::result(fd).map_err(err)?;
    // SAFETY: the kernel just returned this fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(err(Errno::ENAMETOOLONG));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: bind(2) reads `len` bytes of the address, a live local.
    Errno::result(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            libc::socklen_t::try_from(len).unwrap_or(0),
        )
    })
    .map_err(err)?;
    let one: libc::c_int = 1;
    // SAFETY: SO_PASSCRED reads an int from a live local.
    Errno::result(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&one as *const libc::c_int).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(0),
        )
    })
    .map_err(err)?;
    Ok(fd)
}

/// systemd's container interface in the pod's fresh /run (a tmpfs by
/// then): `/run/host/container-manager` naming berth, and the notify
/// socket at `berth_spec::SERVICE_NOTIFY_SOCKET`. ~8 syscalls.
pub fn run_host() -> Result<OwnedFd, ServiceError> {
    match nix::unistd::mkdir("/run/host", nix::sys::stat::Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(ServiceError::Create("/run/host", e)),
    }
    let f = crate::sys::open(
        c"/run/host/container-manager",
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
    )
    .map_err(|e| ServiceError::Create("/run/host/container-manager", e))?;
    let text = b"berth\n";
    // SAFETY: fchmod on an fd we own; a write from a static buffer.
    unsafe {
        libc::fchmod(f.as_raw_fd(), 0o444);
        if libc::write(f.as_raw_fd(), text.as_ptr().cast(), text.len()) < 0 {
            return Err(ServiceError::Create(
                "/run/host/container-manager",
                Errno::last(),
            ));
        }
    }
    bind_notify(berth_spec::SERVICE_NOTIFY_SOCKET)
}

/// One read of the notify socket: the datagram's bytes and its sender's
/// pid (in guest-init's PID namespace). None when nothing is queued.
fn recv_notify(fd: RawFd, buf: &mut [u8]) -> Option<(usize, Option<i32>)> {
    // Room for one SCM_CREDENTIALS message (cmsg header + ucred, aligned).
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: recvmsg writes into the buffers msg points to, all live
    // locals of the sizes given.
    let n = unsafe {
        libc::recvmsg(
            fd,
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC,
        )
    };
    let n = usize::try_from(n).ok()?;
    let mut pid = None;
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled,
    // within msg_controllen; a SCM_CREDENTIALS payload is a ucred.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let cred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>());
                pid = Some(cred.pid);
            } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                // Descriptors nobody asked for: close them.
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                    libc::close(std::ptr::read_unaligned(data.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some((n.min(buf.len()), pid))
}

/// The `systemctl show` run that decides the start report.
struct Check {
    pid: Pid,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    out_buf: Vec<u8>,
    err_buf: Vec<u8>,
    /// Exit status once reaped.
    status: Option<i32>,
}

/// What the main connection is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Started,
    /// Not started: the message for `Failed { status: 125, .. }`; systemd
    /// is halted.
    Failed(String),
}

/// Where a service pod's start is.
pub struct Readiness {
    notify: OwnedFd,
    units: Vec<String>,
    /// systemd, in guest-init's PID namespace.
    systemd: Pid,
    check_env: Vec<String>,
    confinement: Confinement,
    check: Option<Check>,
    /// The start report went out.
    reported: bool,
}

/// An fd the session loop polls for the service, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    Notify,
    CheckOut,
    CheckErr,
}

impl Readiness {
    /// `units`: the pod's; `check_env`: the check's environment (the
    /// pod's); `notify`: the bound socket; `systemd`: the main process'
    /// pid; `confinement`: how the check process is confined (the pod's).
    pub fn new(
        units: Vec<String>,
        check_env: Vec<String>,
        notify: OwnedFd,
        systemd: Pid,
        confinement: Confinement,
    ) -> Readiness {
        Readiness {
            notify,
            units,
            systemd,
            check_env,
            confinement,
            check: None,
            reported: false,
        }
    }

    pub fn reported(&self) -> bool {
        self.reported
    }

    /// The fds to poll now. The notify socket always, for the pod's whole
    /// life: systemd's sd_notify is a blocking send, so once the socket's
    /// queue (`net.unix.max_dgram_qlen`, 10 datagrams) is full, systemd
    /// (PID 1 of the pod) hangs in sendmsg. It sends STATUS= and
    /// STOPPING=1 while it halts, so a socket left unread after the start
    /// report froze every `berth stop` midway; during the check its
    /// systemctl needs a systemd that answers.
    pub fn fds(&self) -> Vec<(RawFd, Watch)> {
        let mut v = Vec::with_capacity(3);
        v.push((self.notify.as_raw_fd(), Watch::Notify));
        if self.reported {
            return v;
        }
        if let Some(c) = &self.check {
            if let Some(f) = &c.out {
                v.push((f.as_raw_fd(), Watch::CheckOut));
            }
            if let Some(f) = &c.err {
                v.push((f.as_raw_fd(), Watch::CheckErr));
            }
        }
        v
    }

    /// An fd from [`Readiness::fds`] is readable. Returns a verdict when
    /// one is reached already (the check could not even start).
    pub fn readable(&mut self, w: Watch) -> Option<Verdict> {
        match w {
            Watch::Notify => {
                // Drained in every state; READY=1 counts once.
                if self.drain_notify() && self.check.is_none() && !self.reported {
                    crate::trace::mark("service: READY=1 from systemd");
                    return self.start_check();
                }
                None
            }
            Watch::CheckOut | Watch::CheckErr => {
                if let Some(c) = &mut self.check {
                    let (slot, buf) = if w == Watch::CheckOut {
                        (&mut c.out, &mut c.out_buf)
                    } else {
                        (&mut c.err, &mut c.err_buf)
                    };
                    read_bounded(slot, buf);
                }
                None
            }
        }
    }

    /// Read every queued datagram; true if systemd itself said READY=1.
    fn drain_notify(&mut self) -> bool {
        let mut buf = [0u8; NOTIFY_BUF];
        let mut ready = false;
        // Bounded: a flood from the pod cannot keep us here.
        for _ in 0..64 {
            let Some((n, pid)) = recv_notify(self.notify.as_raw_fd(), &mut buf) else {
                break;
            };
            if pid == Some(self.systemd.as_raw()) && says_ready(buf.get(..n).unwrap_or(&[])) {
                ready = true;
            }
        }
        ready
    }

    fn start_check(&mut self) -> Option<Verdict> {
        let p = Process {
            argv: show_args(&self.units),
            env: self.check_env.clone(),
            cwd: "/".into(),
            user: User { uid: 0, gid: 0 },
            tty: false,
            stdin: false,
        };
        let started = AppConfig::from_process(&p, &self.confinement)
            .and_then(|cfg| app::spawn(&cfg).map(|s| (s, cfg)));
        match started {
            Ok((s, cfg)) => {
                if let Some(f) = s.failure {
                    // It exits at once; the message says why.
                    let why = f.message(&cfg);
                    return Some(self.fail(format!(
                        "cannot read the units' state: {}",
                        why.trim_end().trim_start_matches("berth: ")
                    )));
                }
                self.check = Some(Check {
                    pid: s.pid,
                    out: s.stdout,
                    err: s.stderr,
                    out_buf: Vec::new(),
                    err_buf: Vec::new(),
                    status: None,
                });
                None
            }
            Err(e) => Some(self.fail(format!(
                "cannot read the units' state: {}",
                berth_spec::ErrorChain(&e)
            ))),
        }
    }

    /// A reaped child: the check's status is recorded. True if it was the
    /// check.
    pub fn reaped(&mut self, pid: Pid, status: i32) -> bool {
        match &mut self.check {
            Some(c) if c.pid == pid => {
                c.status = Some(status);
                true
            }
            _ => false,
        }
    }

    /// Once the check has exited and its output is read: the verdict.
    pub fn verdict(&mut self) -> Option<Verdict> {
        let c = self.check.as_mut()?;
        let status = c.status?;
        // What is still in the pipes (without waiting for other writers).
        for _ in 0..64 {
            if c.out.is_none() || !read_bounded(&mut c.out, &mut c.out_buf) {
                break;
            }
        }
        for _ in 0..4 {
            if c.err.is_none() || !read_bounded(&mut c.err, &mut c.err_buf) {
                break;
            }
        }
        let out = String::from_utf8_lossy(&c.out_buf).into_owned();
        let err = String::from_utf8_lossy(&c.err_buf).into_owned();
        self.check = None;
        crate::trace::mark("service: units checked");
        Some(match judge(&self.units, status, &out, &err) {
            None => {
                self.reported = true;
                Verdict::Started
            }
            Some(why) => self.fail(why),
        })
    }

    /// systemd exited before the report: why.
    pub fn exited_early(&mut self, status: i32) -> String {
        self.reported = true;
        format!("systemd exited (status {status}) before the pod's units were active")
    }

    /// Report a failure: halt systemd (its units are stopped in order, then
    /// it exits and the VM powers off).
    fn fail(&mut self, why: String) -> Verdict {
        self.reported = true;
        crate::console::say(&format!("{why}: halting the pod"));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.systemd.as_raw(), SYSTEMD_HALT) };
        Verdict::Failed(why)
    }
}

/// The start report from a `systemctl show` run: None when every unit is
/// active, else the reason.
pub fn judge(units: &[String], status: i32, out: &str, err: &str) -> Option<String> {
    if status != 0 {
        let detail = err
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| {
                let l: String = l.chars().filter(|c| !c.is_control()).take(200).collect();
                format!(": {l}")
            })
            .unwrap_or_default();
        return Some(format!(
            "cannot read the units' state: systemctl show exited with status {status}{detail}"
        ));
    }
    not_active(&parse_show(units, out))
}

/// One non-blocking read into `buf` (kept to [`MAX_CHECK_OUTPUT`]); the
/// fd is dropped at end of file or error. True if bytes came.
fn read_bounded(slot: &mut Option<OwnedFd>, buf: &mut Vec<u8>) -> bool {
    let Some(fd) = slot.as_ref() else {
        return false;
    };
    let mut chunk = [0u8; 16 * 1024];
    // SAFETY: reads into a live buffer of the given length.
    let n = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
    match Errno::result(n) {
        Ok(0) => {
            *slot = None;
            false
        }
        Ok(n) => {
            let n = usize::try_from(n).unwrap_or(0);
            let room = MAX_CHECK_OUTPUT.saturating_sub(buf.len());
            buf.extend_from_slice(chunk.get(..n.min(room)).unwrap_or(&[]));
            true
        }
        Err(Errno::EAGAIN | Errno::EINTR) => false,
        Err(_) => {
            *slot = None;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigterm_becomes_the_halt_request() {
        assert_eq!(signal_for_systemd(libc::SIGTERM), 37);
        assert_eq!(signal_for_systemd(libc::SIGKILL), libc::SIGKILL);
        assert_eq!(signal_for_systemd(libc::SIGINT), libc::SIGINT);
    }

    #[test]
    fn ready_lines() {
        assert!(says_ready(b"READY=1"));
        assert!(says_ready(b"STATUS=Startup finished in 1s.\nREADY=1\n"));
        assert!(!says_ready(b"READY=0\nREADY=10"));
        assert!(!says_ready(b"XREADY=1"));
        assert!(!says_ready(b""));
    }

    #[test]
    fn judging_the_show_output() {
        let units = vec!["nginx.service".to_string()];
        let active = "Id=nginx.service\nLoadState=loaded\nActiveState=active\nSubState=running\nResult=success\n";
        assert_eq!(judge(&units, 0, active, ""), None);
        let failed = "Id=nginx.service\nLoadState=loaded\nActiveState=failed\nSubState=failed\nResult=exit-code\n";
        assert_eq!(
            judge(&units, 0, failed, "").as_deref(),
            Some("unit nginx.service: failed (exit-code)")
        );
        assert_eq!(
            judge(&units, 1, "", "\u{1b}[31mFailed to connect to bus\n").as_deref(),
            Some("cannot read the units' state: systemctl show exited with status 1: [31mFailed to connect to bus")
        );
        assert_eq!(
            judge(&units, 0, "", "").as_deref(),
            Some("unit nginx.service: unknown ()")
        );
    }

    #[test]
    fn notify_socket_takes_credentials_and_only_systemds_ready_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let fd = bind_notify(path.to_str().unwrap()).unwrap();
        let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
        tx.send_to(b"STATUS=x\nREADY=1\n", &path).unwrap();
        let mut buf = [0u8; 64];
        let (n, pid) = recv_notify(fd.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=x\nREADY=1\n");
        assert_eq!(pid, Some(std::process::id() as i32));
        assert!(recv_notify(fd.as_raw_fd(), &mut buf).is_none());

        // "systemd" is some other pid: our READY=1 is ignored.
        let mut r = Readiness::new(
            vec!["a.service".into()],
            vec![],
            fd,
            Pid::from_raw(1),
            Confinement::default(),
        );
        tx.send_to(b"READY=1", &path).unwrap();
        assert!(!r.drain_notify());
        r.systemd = Pid::this();
        tx.send_to(b"WATCHDOG=1", &path).unwrap();
        assert!(!r.drain_notify());
        tx.send_to(b"READY=1", &path).unwrap();
        assert!(r.drain_notify());
        assert!(!r.reported());
        assert_eq!(r.fds(), [(r.notify.as_raw_fd(), Watch::Notify)]);
        // Reported: still drained (systemd would block in sd_notify on a
        // full queue), and a later READY=1 starts no second check.
        r.reported = true;
        assert_eq!(r.fds(), [(r.notify.as_raw_fd(), Watch::Notify)]);
        // (Fewer than the host's queue limit: the sends here block too.)
        for _ in 0..8 {
            tx.send_to(b"STATUS=stopping", &path).unwrap();
        }
        tx.send_to(b"READY=1", &path).unwrap();
        assert_eq!(r.readable(Watch::Notify), None);
        assert!(r.check.is_none());
        assert!(
            recv_notify(r.notify.as_raw_fd(), &mut buf).is_none(),
            "drained"
        );
        let long = "x".repeat(200);
        assert!(bind_notify(&format!("/tmp/{long}")).is_err());
    }
}

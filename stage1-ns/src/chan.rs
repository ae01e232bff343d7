//! The channel between stage1 and the pod's init: a SOCK_SEQPACKET socketpair
//! carrying short text messages, optionally with one fd (the pty master).
//!
//! Messages, in order:
//! - stage1 → init: `go` once the init has been placed in the pod's cgroup.
//! - init → stage1: `tty` + the pty master fd (only with `stdio.tty`).
//! - init → stage1: `ok` when the app was exec'd, or `error <code> <message>`.

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug, thiserror::Error)]
pub enum ChanError {
    #[error("cannot create the stage1/init channel")]
    Create(#[source] nix::Error),
    #[error("cannot send on the stage1/init channel")]
    Send(#[source] nix::Error),
    #[error("cannot receive on the stage1/init channel")]
    Recv(#[source] nix::Error),
}

pub struct Chan(OwnedFd);

pub fn pair() -> Result<(Chan, Chan), ChanError> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(ChanError::Create)?;
    Ok((Chan(a), Chan(b)))
}

impl Chan {
    pub fn send(&self, msg: &str, fd: Option<RawFd>) -> Result<(), ChanError> {
        let iov = [IoSlice::new(msg.as_bytes())];
        let fds;
        let cmsgs: &[ControlMessage] = match fd {
            Some(f) => {
                fds = [f];
                &[ControlMessage::ScmRights(&fds)]
            }
            None => &[],
        };
        sendmsg::<()>(self.0.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
            .map_err(ChanError::Send)?;
        Ok(())
    }

    /// Receive one message; `None` when the peer has gone (EOF).
    pub fn recv(&self) -> Result<Option<(String, Option<OwnedFd>)>, ChanError> {
        let mut buf = [0u8; 4096];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let r = recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let msg = match r {
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(ChanError::Recv(e)),
                Ok(m) => m,
            };
            let mut fd = None;
            for c in msg.cmsgs().map_err(ChanError::Recv)? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for f in fds {
                        // SAFETY: SCM_RIGHTS installed this descriptor in our
                        // table; nothing else owns it.
                        let owned = unsafe { OwnedFd::from_raw_fd(f) };
                        fd.get_or_insert(owned);
                    }
                }
            }
            let n = msg.bytes;
            if n == 0 && fd.is_none() {
                return Ok(None);
            }
            return Ok(Some((String::from_utf8_lossy(&buf[..n]).into_owned(), fd)));
        }
    }
}

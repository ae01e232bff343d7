//! The channel between stage1 and the pod's init: a SOCK_SEQPACKET socketpair
//! carrying one [`InitMessage`] per datagram (the protocol and its sequence
//! are documented in `berth_spec::init_msg`), optionally with one fd (the
//! pty master with `tty`).

use berth_spec::init_msg::{InitMessage, InitMessageError, MAX_MESSAGE};
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
    #[error(transparent)]
    Malformed(#[from] InitMessageError),
}

pub struct Chan(OwnedFd);

/// Most descriptors one message carries (a user-namespace pod's idmapped
/// mounts: its image, layers and volumes).
pub const MAX_FDS: usize = 64;

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
    pub fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    pub fn send(&self, msg: &InitMessage, fd: Option<RawFd>) -> Result<(), ChanError> {
        let fds: Vec<RawFd> = fd.into_iter().collect();
        self.send_fds(msg, &fds)
    }

    /// Send a message with up to [`MAX_FDS`] descriptors.
    pub fn send_fds(&self, msg: &InitMessage, fds: &[RawFd]) -> Result<(), ChanError> {
        let bytes = msg.encode();
        let iov = [IoSlice::new(&bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(self.0.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
            .map_err(ChanError::Send)?;
        Ok(())
    }

    /// Receive one message; `None` when the peer has gone (EOF).
    pub fn recv(&self) -> Result<Option<(InitMessage, Option<OwnedFd>)>, ChanError> {
        Ok(self.recv_fds()?.map(|(m, fds)| (m, fds.into_iter().next())))
    }

    /// Receive one message and every descriptor that came with it.
    pub fn recv_fds(&self) -> Result<Option<(InitMessage, Vec<OwnedFd>)>, ChanError> {
        let mut buf = [0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
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
            let mut got = Vec::new();
            for c in msg.cmsgs().map_err(ChanError::Recv)? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for f in fds {
                        // SAFETY: SCM_RIGHTS installed this descriptor in our
                        // table; nothing else owns it.
                        got.push(unsafe { OwnedFd::from_raw_fd(f) });
                    }
                }
            }
            let n = msg.bytes;
            if n == 0 && got.is_empty() {
                return Ok(None);
            }
            return Ok(Some((InitMessage::decode(&buf[..n])?, got)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fds_cross() {
        let (a, b) = pair().unwrap();
        a.send(&InitMessage::Go, None).unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        b.send(&InitMessage::Tty, Some(f.as_raw_fd())).unwrap();
        b.send(
            &InitMessage::Failed {
                code: 127,
                message: "exec \"x\": command not found".into(),
            },
            None,
        )
        .unwrap();
        assert_eq!(b.recv().unwrap().map(|m| m.0), Some(InitMessage::Go));
        let (m, fd) = a.recv().unwrap().unwrap();
        assert_eq!(m, InitMessage::Tty);
        assert!(fd.is_some());
        assert!(matches!(
            a.recv().unwrap(),
            Some((InitMessage::Failed { code: 127, .. }, None))
        ));
        drop(b);
        assert!(a.recv().unwrap().is_none(), "EOF once the peer is gone");
    }
}

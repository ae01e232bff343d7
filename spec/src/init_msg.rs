//! The ns stage1's channel between stage1 and the pod's init (its PID 1, a
//! clone of stage1 in the pod's namespaces): one message per
//! `SOCK_SEQPACKET` datagram, short text, at most one fd attached.
//!
//! Sequence:
//!
//! ```text
//! stage1 → init   mapped       + fds    (user namespace only, first) the id maps are
//!                                       written; the fds are the idmapped mounts of the
//!                                       image, the layers and the volumes, in spec order
//! stage1 → init   go                    init is in the pod's cgroup, its network plugged in
//! init → stage1   tty          + fd     (only with a terminal) the pty master
//! init → stage1   ok                    the app was exec'd
//!              or error <code> <message>  it was not (126/127 exec errors, 125 set-up)
//! ```
//!
//! A set-up failure of init before `go` is reported the same way (`error
//! 125 …`) as soon as it happens; stage1 reads it even when its own `go`
//! could not be delivered any more.

/// One message on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitMessage {
    /// stage1 → init: continue, the cgroup and network are in place.
    Go,
    /// stage1 → init: the user namespace's maps are written; the idmapped
    /// mounts travel with this message.
    Mapped,
    /// init → stage1: the pty master travels with this message.
    Tty,
    /// init → stage1: the app runs.
    Started,
    /// init → stage1: the app did not start.
    Failed { code: i32, message: String },
}

/// A datagram that is not an [`InitMessage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message on the stage1/init channel: {0:?}")]
pub struct InitMessageError(pub String);

/// Upper bound of an encoded message (the receive buffer's size); longer
/// failure messages are cut at a character boundary.
pub const MAX_MESSAGE: usize = 4096;

impl InitMessage {
    pub fn encode(&self) -> Vec<u8> {
        let s = match self {
            InitMessage::Go => "go".to_string(),
            InitMessage::Mapped => "mapped".to_string(),
            InitMessage::Tty => "tty".to_string(),
            InitMessage::Started => "ok".to_string(),
            InitMessage::Failed { code, message } => {
                let mut s = format!("error {code} {message}");
                if s.len() > MAX_MESSAGE {
                    let mut end = MAX_MESSAGE;
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    s.truncate(end);
                }
                s
            }
        };
        s.into_bytes()
    }

    pub fn decode(b: &[u8]) -> Result<InitMessage, InitMessageError> {
        let s = String::from_utf8_lossy(b);
        let bad = || InitMessageError(s.chars().take(80).collect());
        match s.as_ref() {
            "go" => return Ok(InitMessage::Go),
            "mapped" => return Ok(InitMessage::Mapped),
            "tty" => return Ok(InitMessage::Tty),
            "ok" => return Ok(InitMessage::Started),
            _ => {}
        }
        let rest = s.strip_prefix("error ").ok_or_else(bad)?;
        let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
        let code = code.parse().map_err(|_| bad())?;
        Ok(InitMessage::Failed {
            code,
            message: message.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for m in [
            InitMessage::Go,
            InitMessage::Mapped,
            InitMessage::Tty,
            InitMessage::Started,
            InitMessage::Failed {
                code: 126,
                message: "exec \"/etc\": permission denied".into(),
            },
            InitMessage::Failed {
                code: 125,
                message: String::new(),
            },
        ] {
            assert_eq!(InitMessage::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let m = InitMessage::Failed {
            code: 125,
            message: "é".repeat(MAX_MESSAGE),
        };
        let b = m.encode();
        assert!(b.len() <= MAX_MESSAGE);
        assert!(std::str::from_utf8(&b).is_ok());
        assert!(matches!(
            InitMessage::decode(&b),
            Ok(InitMessage::Failed { code: 125, .. })
        ));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [&b""[..], b"GO", b"error", b"error x y", b"okay"] {
            assert!(InitMessage::decode(bad).is_err(), "{bad:?}");
        }
    }
}

//! The control protocol between the kvm stage1 (host) and guest-init (PID 1
//! in the VM), version 1.
//!
//! # Transport
//!
//! virtio-vsock stream connections. The VMM's vsock device has a unix-socket
//! host side (Firecracker's hybrid scheme: no vhost-vsock needed on the host),
//! rooted at the pod's `ctl.sock`:
//!
//! - **main connection**: once the pod's root is mounted, guest-init connects
//!   to the host (CID 2) on [`MAIN_PORT`]; the VMM connects that to the unix
//!   listener `<pod>/ctl.sock_1024`, which stage1-kvm created before boot.
//!   It carries the pod's app.
//! - **exec connections**: a host process connects to `<pod>/ctl.sock`,
//!   writes `CONNECT 1025\n` ([`EXEC_PORT`]), and reads `OK <port>\n` once
//!   guest-init (listening there) accepted; then it speaks frames. This is how
//!   `berth exec` reaches a kvm pod: no network, no keys, no open port — only
//!   a root-owned socket in the pod directory.
//!
//! The serial console is for kernel and guest-init diagnostics only (kept in
//! the pod's `console.log`); app output never goes there.
//!
//! # Frames
//!
//! `len: u32 le | kind: u8 | payload (len - 1 bytes)`, `1 <= len <=`
//! [`MAX_FRAME`]. Integers are little-endian; text is UTF-8; the process
//! description is JSON. An unknown kind, a bad length or a malformed payload
//! is a protocol error: the receiver closes the connection.
//!
//! | kind | message | direction | payload |
//! |---|---|---|---|
//! | 1 | `Hello` | first frame of each side | `version: u32` |
//! | 2 | `Exec` | host → guest (exec connections) | JSON [`Process`] |
//! | 3 | `Started` | guest → host | — |
//! | 4 | `Failed` | guest → host, instead of `Started` | `status: i32`, one-line message (no `berth: ` prefix) |
//! | 5 | `Stdin` | host → guest | bytes; empty = end of input |
//! | 6 | `Stdout` | guest → host | bytes (the pty's output in tty mode) |
//! | 7 | `Stderr` | guest → host | bytes (never in tty mode) |
//! | 8 | `Signal` | host → guest | `signo: i32`, sent to the process |
//! | 9 | `Resize` | host → guest (tty mode) | `rows: u16, cols: u16` |
//! | 10 | `Exit` | guest → host, last frame | `status: i32` (128+N for signal N) |
//!
//! # Sequences
//!
//! main: guest `Hello`, host `Hello`; guest `Started` (the app was exec'd:
//! stage1-kvm reports the pod as started) or `Failed` (its status is 126/127
//! for exec errors, with the same one-line message the ns stage1 prints);
//! then streams in both directions until the guest's `Exit`, after which
//! guest-init powers the VM off. stdout and stderr are separate streams, each
//! in order. Closing the main connection from the host ends the app as if it
//! got SIGKILL.
//!
//! exec: host `Hello`, host `Exec`, guest `Hello`; then as main. A host that
//! closes an exec connection kills that process.
//!
//! Versioning: each side sends its version in `Hello`; a peer that does not
//! speak the other's version closes the connection (stage1-kvm and
//! guest-init are installed together, so a mismatch is an installation error
//! and reported as such).

use serde::{Deserialize, Serialize};

/// Protocol version in `Hello`.
pub const VERSION: u32 = 1;
/// vsock port on the host (CID 2) guest-init connects to for the main connection.
pub const MAIN_PORT: u32 = 1024;
/// vsock port guest-init listens on for exec connections.
pub const EXEC_PORT: u32 = 1025;
/// Guest CID of every berth VM (each VM has its own vsock device).
pub const GUEST_CID: u32 = 3;
/// Largest frame (`len` field): 1 MiB of data plus the kind byte.
pub const MAX_FRAME: u32 = (1 << 20) + 1;
/// Largest data payload a sender puts in one frame.
pub const MAX_DATA: usize = 64 * 1024;

/// A process to start in the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub argv: Vec<String>,
    /// The complete environment (`KEY=VALUE`), already merged by the host.
    pub env: Vec<String>,
    pub cwd: String,
    pub user: crate::User,
    /// Give it a pseudo-terminal (stdout carries the terminal's output).
    #[serde(default)]
    pub tty: bool,
    /// Feed it `Stdin` frames; otherwise its stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello { version: u32 },
    Exec(Process),
    Started,
    Failed { status: i32, message: String },
    Stdin(Vec<u8>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Signal(i32),
    Resize { rows: u16, cols: u16 },
    Exit(i32),
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame length {0} out of range (1..={MAX_FRAME})")]
    Length(u32),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("malformed {kind} frame: {why}")]
    Payload { kind: &'static str, why: String },
    #[error("peer speaks control protocol version {0}, this side speaks {VERSION}")]
    Version(u32),
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
}

const HEADER: usize = 5;

impl Message {
    /// Kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello { .. } => 1,
            Message::Exec(_) => 2,
            Message::Started => 3,
            Message::Failed { .. } => 4,
            Message::Stdin(_) => 5,
            Message::Stdout(_) => 6,
            Message::Stderr(_) => 7,
            Message::Signal(_) => 8,
            Message::Resize { .. } => 9,
            Message::Exit(_) => 10,
        }
    }

    /// Name for errors and logs.
    pub fn name(&self) -> &'static str {
        kind_name(self.kind())
    }

    /// Append the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER]);
        out[start + 4] = self.kind();
        match self {
            Message::Hello { version } => out.extend_from_slice(&version.to_le_bytes()),
            Message::Exec(p) => {
                // Serializing plain strings and integers cannot fail.
                if let Ok(json) = serde_json::to_vec(p) {
                    out.extend_from_slice(&json);
                }
            }
            Message::Started => {}
            Message::Failed { status, message } => {
                out.extend_from_slice(&status.to_le_bytes());
                out.extend_from_slice(message.as_bytes());
            }
            Message::Stdin(d) | Message::Stdout(d) | Message::Stderr(d) => out.extend_from_slice(d),
            Message::Signal(s) | Message::Exit(s) => out.extend_from_slice(&s.to_le_bytes()),
            Message::Resize { rows, cols } => {
                out.extend_from_slice(&rows.to_le_bytes());
                out.extend_from_slice(&cols.to_le_bytes());
            }
        }
        let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// The encoded frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }

    /// Decode one frame's kind and payload.
    pub fn decode(kind: u8, p: &[u8]) -> Result<Message, ProtocolError> {
        let name = kind_name(kind);
        let bad = |why: &str| ProtocolError::Payload {
            kind: name,
            why: why.to_string(),
        };
        let int = |p: &[u8]| -> Result<[u8; 4], ProtocolError> {
            p.try_into().map_err(|_| bad("expected 4 bytes"))
        };
        Ok(match kind {
            1 => Message::Hello {
                version: u32::from_le_bytes(int(p)?),
            },
            2 => Message::Exec(serde_json::from_slice(p).map_err(|e| bad(&e.to_string()))?),
            3 if p.is_empty() => Message::Started,
            3 => return Err(bad("expected no payload")),
            4 => {
                if p.len() < 4 {
                    return Err(bad("too short"));
                }
                let (s, m) = p.split_at(4);
                Message::Failed {
                    status: i32::from_le_bytes(int(s)?),
                    message: String::from_utf8(m.to_vec()).map_err(|_| bad("not UTF-8"))?,
                }
            }
            5 => Message::Stdin(p.to_vec()),
            6 => Message::Stdout(p.to_vec()),
            7 => Message::Stderr(p.to_vec()),
            8 => Message::Signal(i32::from_le_bytes(int(p)?)),
            9 => {
                let b: [u8; 4] = p.try_into().map_err(|_| bad("expected 4 bytes"))?;
                Message::Resize {
                    rows: u16::from_le_bytes([b[0], b[1]]),
                    cols: u16::from_le_bytes([b[2], b[3]]),
                }
            }
            10 => Message::Exit(i32::from_le_bytes(int(p)?)),
            k => return Err(ProtocolError::Kind(k)),
        })
    }

    /// Check a peer's `Hello`.
    pub fn expect_hello(self) -> Result<(), ProtocolError> {
        match self {
            Message::Hello { version: VERSION } => Ok(()),
            Message::Hello { version } => Err(ProtocolError::Version(version)),
            other => Err(ProtocolError::Unexpected(other.name())),
        }
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        1 => "Hello",
        2 => "Exec",
        3 => "Started",
        4 => "Failed",
        5 => "Stdin",
        6 => "Stdout",
        7 => "Stderr",
        8 => "Signal",
        9 => "Resize",
        10 => "Exit",
        _ => "unknown",
    }
}

/// Incremental decoder: feed it bytes as they arrive, take whole messages.
/// Holds at most one partial frame (bounded by [`MAX_FRAME`]).
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Append received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed. After
    /// an error the stream is unusable (the caller closes the connection).
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if len == 0 || len > MAX_FRAME {
            return Err(ProtocolError::Length(len));
        }
        let end = 4 + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let msg = Message::decode(self.buf[4], &self.buf[HEADER..end]);
        self.buf.drain(..end);
        msg.map(Some)
    }

    /// Bytes held that do not yet form a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Blocking helpers for `std::io` streams (the host side).
pub mod io {
    use super::{Decoder, Message, ProtocolError};
    use std::io::{Read, Write};

    /// Write one message.
    pub fn send(w: &mut impl Write, m: &Message) -> std::io::Result<()> {
        w.write_all(&m.encode())
    }

    /// Read until one whole message is available; `Ok(None)` at a clean end
    /// of stream between frames.
    pub fn recv(r: &mut impl Read, dec: &mut Decoder) -> std::io::Result<Option<Message>> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(m) = dec.next_message().map_err(invalid)? {
                return Ok(Some(m));
            }
            let n = r.read(&mut buf)?;
            if n == 0 {
                return if dec.pending() == 0 {
                    Ok(None)
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "control connection closed inside a frame",
                    ))
                };
            }
            dec.feed(&buf[..n]);
        }
    }

    pub fn invalid(e: ProtocolError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Message> {
        vec![
            Message::Hello { version: VERSION },
            Message::Exec(Process {
                argv: vec!["sh".into(), "-c".into(), "echo ü".into()],
                env: vec!["A=1".into()],
                cwd: "/".into(),
                user: crate::User { uid: 1, gid: 2 },
                tty: true,
                stdin: false,
            }),
            Message::Started,
            Message::Failed {
                status: 127,
                message: "berth: nope: command not found".into(),
            },
            Message::Stdin(vec![]),
            Message::Stdin(b"in".to_vec()),
            Message::Stdout(vec![0, 255, 10]),
            Message::Stderr(b"err\n".to_vec()),
            Message::Signal(15),
            Message::Resize { rows: 24, cols: 80 },
            Message::Exit(-1),
        ]
    }

    #[test]
    fn every_message_round_trips_byte_by_byte() {
        let mut wire = Vec::new();
        for m in all() {
            m.encode_into(&mut wire);
        }
        let mut dec = Decoder::new();
        let mut got = Vec::new();
        for b in wire {
            dec.feed(&[b]);
            while let Some(m) = dec.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, all());
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn bad_frames_are_errors() {
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (vec![0, 0, 0, 0, 1], ProtocolError::Length(0)),
            (
                (MAX_FRAME + 1)
                    .to_le_bytes()
                    .into_iter()
                    .chain([6])
                    .collect(),
                ProtocolError::Length(MAX_FRAME + 1),
            ),
            (vec![1, 0, 0, 0, 99], ProtocolError::Kind(99)),
        ];
        for (bytes, want) in cases {
            let mut dec = Decoder::new();
            dec.feed(&bytes);
            assert_eq!(dec.next_message(), Err(want));
        }
        for (kind, payload) in [
            (1u8, &b"abc"[..]),
            (2, b"{\"argv\":1}"),
            (3, b"x"),
            (4, b"ab"),
            (4, &[0, 0, 0, 0, 0xff][..]),
            (8, b""),
            (9, b"12345"),
            (10, b"123"),
        ] {
            assert!(Message::decode(kind, payload).is_err(), "kind {kind}");
        }
    }

    #[test]
    fn hello_checks_the_version() {
        assert_eq!(Message::Hello { version: VERSION }.expect_hello(), Ok(()));
        assert_eq!(
            Message::Hello { version: 9 }.expect_hello(),
            Err(ProtocolError::Version(9))
        );
        assert_eq!(
            Message::Started.expect_hello(),
            Err(ProtocolError::Unexpected("Started"))
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut dec = Decoder::new();
            let mut bytes = Vec::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 64) as usize;
            for i in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Small lengths and kinds often enough to reach the decoders.
                bytes.push(if i % 5 == 0 { (x % 12) as u8 } else { x as u8 });
            }
            dec.feed(&bytes);
            for _ in 0..n {
                match dec.next_message() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }

    #[test]
    fn io_helpers_stop_cleanly_and_flag_truncation() {
        let mut wire = Message::Exit(3).encode();
        let mut dec = Decoder::new();
        let mut r = &wire[..];
        assert_eq!(io::recv(&mut r, &mut dec).unwrap(), Some(Message::Exit(3)));
        assert_eq!(io::recv(&mut r, &mut dec).unwrap(), None);
        wire.pop();
        let mut dec = Decoder::new();
        let mut r = &wire[..];
        assert!(io::recv(&mut r, &mut dec).is_err());
    }
}

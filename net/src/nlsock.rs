//! A blocking netlink socket for request/acknowledge exchanges, shared by
//! [`crate::link`] (rtnetlink) and [`crate::nfnl`] (nf_tables): requests
//! are serialized by the caller (one `sendmsg` may carry several), each
//! with `NLM_F_ACK`; [`NlSocket::exchange`] waits for the answer to each.
//! No async runtime: every call is a `send` and one or a few `recv`s.

use netlink_packet_core::NLMSG_ERROR;
use netlink_sys::Socket;
use std::cell::Cell;
use std::os::fd::AsRawFd;

/// Longest wait for the kernel's answer (it answers at once; this only
/// keeps a lost reply from hanging a `run`).
const REPLY_TIMEOUT_SECS: libc::time_t = 10;

pub struct NlSocket {
    sock: Socket,
    seq: Cell<u32>,
}

/// A refused request: number `index` of the `seqs` given (`usize::MAX`
/// when the whole send was refused, e.g. EPERM on an nf_tables batch), and
/// the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub index: usize,
    pub errno: i32,
}

/// The fields of one netlink message in a receive buffer.
pub struct Msg<'a> {
    pub ty: u16,
    pub seq: u32,
    /// The payload after the 16-byte header.
    pub payload: &'a [u8],
}

impl NlSocket {
    pub fn open(protocol: isize) -> std::io::Result<NlSocket> {
        let mut sock = Socket::new(protocol)?;
        sock.bind_auto()?;
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: setsockopt reads a timeval of the given size from a live
        // local; the socket is ours.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(NlSocket {
            sock,
            seq: Cell::new(1),
        })
    }

    /// A fresh sequence number for the next request.
    pub fn next_seq(&self) -> u32 {
        let s = self.seq.get().wrapping_add(1);
        self.seq.set(s);
        s
    }

    /// Send `buf` (requests with sequence numbers `seqs`, each with
    /// NLM_F_ACK) and wait until each is answered. Other messages (replies
    /// to GET requests) go to `on_msg`. Returns the refusals, in order.
    pub fn exchange(
        &self,
        buf: &[u8],
        seqs: &[u32],
        mut on_msg: impl FnMut(&Msg<'_>),
    ) -> std::io::Result<Vec<Refusal>> {
        self.sock.send(buf, 0)?;
        let mut pending: Vec<u32> = seqs.to_vec();
        let mut refused = Vec::new();
        let mut rbuf = vec![0u8; 32768];
        while !pending.is_empty() {
            let n = self.sock.recv(&mut &mut rbuf[..], 0)?;
            let mut off = 0;
            while off + 16 <= n {
                let h = &rbuf[off..n];
                let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
                if len < 16 || len > h.len() {
                    break;
                }
                let m = Msg {
                    ty: u16::from_ne_bytes([h[4], h[5]]),
                    seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
                    payload: &h[16..len],
                };
                if m.ty == NLMSG_ERROR && m.payload.len() >= 4 {
                    let p = m.payload;
                    let code = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
                    if let Some(i) = seqs.iter().position(|s| *s == m.seq) {
                        pending.retain(|s| *s != m.seq);
                        if code != 0 {
                            refused.push(Refusal {
                                index: i,
                                errno: -code,
                            });
                        }
                    } else if code != 0 {
                        return Ok(vec![Refusal {
                            index: usize::MAX,
                            errno: -code,
                        }]);
                    }
                } else if seqs.contains(&m.seq) {
                    on_msg(&m);
                }
                off += (len + 3) & !3;
            }
        }
        Ok(refused)
    }
}

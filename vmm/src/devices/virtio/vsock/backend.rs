//! What the vsock queue processors ([`super::device::process_tx_queue`],
//! [`super::device::process_rx_queue`]) need from the host side: the unix
//! socket muxer, or a test double.

use super::packet::VsockHeader;

/// The host end of the device, as the queue processors see it.
pub trait VsockBackend {
    /// A well-formed packet from the guest; `payload` has `hdr.len` bytes.
    fn send_pkt(&mut self, hdr: &VsockHeader, payload: &[u8]);
    /// A packet whose header was readable but whose payload was not (the
    /// connection, if any, is reset).
    fn reject_pkt(&mut self, hdr: &VsockHeader);
    /// Whether packets wait for an rx buffer.
    fn has_pending_rx(&self) -> bool;
    /// The next packet for the guest; RW payload goes to `buf` (at most
    /// `buf.len()` bytes) and its length is returned with the header.
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(VsockHeader, usize)>;
    /// Whether to stop taking packets from the guest until rx drains
    /// (replies would otherwise be lost).
    fn tx_blocked(&self) -> bool;
}

//! The device's side of a network backend: what [`super::device::Net`]
//! needs from whatever carries its frames (a tap, or a test double).

use std::io;

/// Size of `virtio_net_hdr_v1` (with `num_buffers`), as VERSION_1 requires.
pub const VNET_HDR_LEN: usize = 12;

/// Where frames go to and come from. Frames are bare Ethernet frames; the
/// virtio header is the device's business.
pub trait NetBackend: Send {
    /// Reads one frame into `buf`; returns its length (a length above
    /// `buf.len()` means the frame was truncated).
    /// [`io::ErrorKind::WouldBlock`] when no frame is pending.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
}

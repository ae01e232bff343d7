//! virtio-vsock (device type 19) with a unix-socket host side: Firecracker's
//! "hybrid vsock" scheme, for hosts without `/dev/vhost-vsock`.
//!
//! The guest sees a normal virtio-vsock device (CID from the config space,
//! stream sockets only). The host side is the unix socket `uds_path`
//! (`VsockConfig::uds_path`), created by the VMM when the VM is built (a
//! stale socket there is replaced) and removed when the VMM drops it.
//!
//! # Host-side protocol
//!
//! **Host → guest.** A host program connects to `uds_path` and writes one
//! line, `CONNECT <port>\n` (`<port>`: decimal, 0..=4294967295; at most 32
//! bytes with the newline, within 5 s). The VMM picks a host-side port and
//! sends the guest a connection REQUEST to `<port>`. If a guest program
//! listens there, the VMM answers the host with `OK <host_port>\n` and from
//! then on relays bytes both ways; if not (the guest resets), or the guest
//! does not answer within 10 s, or the line is malformed, the VMM closes
//! the unix stream without a reply. Bytes written after the CONNECT line
//! reach the guest once the connection is up.
//!
//! **Guest → host.** A guest program connects to CID 2 (the host), port `P`.
//! The VMM connects to the unix socket `<uds_path>_<P>` (e.g.
//! `/run/pod/vsock.sock_1024`), which a host program must be listening on;
//! if that fails the guest's connect is refused (RST, `ECONNRESET`).
//!
//! **Closing.** `shutdown(SHUT_WR)` on the host stream reaches the guest as
//! end of file (SHUTDOWN SEND) and vice versa (the VMM shuts the unix
//! stream's write side once the guest's bytes are delivered). When neither
//! side will send any more, the VMM resets the connection (RST to the
//! guest, unix stream closed). Closing the host stream sends the guest
//! SHUTDOWN (both directions) and the connection ends with its RST, or ours
//! after 5 s; the guest closing its socket gets an RST once its buffered
//! bytes reached the host (at most 5 s later). Any packet for a connection
//! the VMM does not know is answered with RST; a device reset by the driver
//! closes every host stream.
//!
//! Flow control follows the virtio credit scheme: at most 256 KiB are
//! buffered per connection toward the host, and the VMM reads from a host
//! stream only as much as the guest has room for.

pub mod backend;
pub mod connection;
pub mod device;
pub mod event_handler;
pub mod muxer;
pub mod packet;

pub use backend::VsockBackend;
pub use device::{process_rx_queue, process_tx_queue, Vsock, VsockError};
pub use event_handler::VsockEventHandler;
pub use muxer::{parse_connect_line, UnixMuxer};
pub use packet::VsockHeader;

#[cfg(test)]
mod tests;

//! virtio-net over a tap device (emulated in the VMM: hosts need not have
//! vhost-net).

pub mod backend;
pub mod device;
pub mod event_handler;
pub mod tap;

pub use backend::{NetBackend, VNET_HDR_LEN};
pub use device::{
    format_mac, mac_from_id, process_rx, process_tx, validate_mac, Net, NetCounters, NetError,
    NetState, RxResult, TapSource, MAX_FRAME_LEN,
};
pub use event_handler::NetEventHandler;
pub use tap::{validate_tap_name, Tap, TapError};

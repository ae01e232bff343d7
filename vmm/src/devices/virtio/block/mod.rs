//! virtio-blk over a raw file.

pub mod device;
pub mod event_handler;

pub use device::{
    process_queue, Block, BlockBackend, BlockError, DiskState, FileBackend, SECTOR_SIZE,
    VIRTIO_BLK_ID_BYTES,
};
pub use event_handler::BlockEventHandler;

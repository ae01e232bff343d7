//! virtio-balloon (device type 5), offered only for free page reporting
//! (VIRTIO_BALLOON_F_REPORTING): the guest kernel (CONFIG_PAGE_REPORTING)
//! reports free blocks of its memory, and the VMM drops them from the host
//! with `madvise(MADV_DONTNEED)`, so memory the guest touched once (boot,
//! page cache it dropped) does not stay resident for the VM's life. The
//! balloon itself never inflates (`num_pages` is 0).

pub mod device;
pub mod event_handler;

pub use device::{process_reporting_queue, Balloon, BalloonCounters, VIRTIO_BALLOON_F_REPORTING};
pub use event_handler::BalloonEventHandler;

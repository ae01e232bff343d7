//! berth's two guest→host I/O ports (see `berth_spec::kvm`): guest-init
//! writes BOOT_MARK_PORT first thing (boot-to-init timing) and STATUS_PORT
//! with the app's exit status just before powering off.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub use berth_spec::kvm::{BOOT_MARK_PORT, STATUS_PORT};

use super::BusDevice;
use crate::shared::VmShared;

/// Both ports, registered as one 2-port range starting at BOOT_MARK_PORT.
pub struct BerthPorts {
    shared: Arc<VmShared>,
}

const _: () = assert!(STATUS_PORT == BOOT_MARK_PORT + 1);

impl BerthPorts {
    /// Creates the device, recording into `shared`.
    pub fn new(shared: Arc<VmShared>) -> Self {
        BerthPorts { shared }
    }
}

impl BusDevice for BerthPorts {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.first()) {
            (0, _) => {
                let now = Instant::now();
                if self.shared.boot_mark.set(now).is_ok() {
                    log::info!(
                        "vmm: guest init started {:?} after VM creation",
                        now.duration_since(self.shared.start)
                    );
                }
            }
            (1, Some(v)) => {
                log::debug!("vmm: guest status {v}");
                self.shared.status.store(u32::from(*v), Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn mark_and_status() {
        let shared = Arc::new(VmShared::new(Instant::now(), EventFd::new(0).unwrap()));
        let mut p = BerthPorts::new(shared.clone());
        assert_eq!(shared.status(), None);
        assert!(shared.boot_mark.get().is_none());
        p.write(0, &[1]);
        let first = *shared.boot_mark.get().unwrap();
        p.write(0, &[1]);
        assert_eq!(*shared.boot_mark.get().unwrap(), first);
        p.write(1, &[3]);
        p.write(1, &[42]);
        assert_eq!(shared.status(), Some(42));
    }
}

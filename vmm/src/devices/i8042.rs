//! The part of the i8042 keyboard controller Linux uses to reset the machine
//! (`reboot=k`): writing 0xFE to the command port 0x64 pulses the reset
//! line, which berth treats as the guest powering off. There is no keyboard.

use std::sync::Arc;

use super::BusDevice;
use crate::shared::{ExitReason, VmShared};

/// Data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// Command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// Ports registered for the device: 0x60..=0x64 (0x61 is the PC speaker / NMI
/// status port, harmless to answer here with 0).
pub const I8042_PORT_COUNT: u64 = 5;
/// Command: pulse the CPU reset line.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// Minimal i8042: reads return 0 (output buffer empty, input buffer empty so
/// the kernel's `kb_wait()` succeeds at once); 0xFE on 0x64 resets the VM.
pub struct I8042 {
    shared: Arc<VmShared>,
}

impl I8042 {
    /// Creates the device; resets are reported to `shared`.
    pub fn new(shared: Arc<VmShared>) -> Self {
        I8042 { shared }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let port = I8042_DATA_PORT as u64 + offset;
        if port == u64::from(I8042_COMMAND_PORT) && data.first() == Some(&CMD_RESET_CPU) {
            log::debug!("vmm: i8042 reset requested by the guest");
            self.shared.request_exit(ExitReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn reset_on_fe() {
        let shared = Arc::new(VmShared::new(Instant::now(), EventFd::new(0).unwrap()));
        let mut dev = I8042::new(shared.clone());
        let mut b = [0xffu8];
        dev.read(4, &mut b);
        assert_eq!(b[0], 0);
        dev.write(0, &[0xfe]);
        assert!(!shared.exit_requested());
        dev.write(4, &[0xd1]);
        assert!(!shared.exit_requested());
        dev.write(4, &[0xfe]);
        assert_eq!(*shared.exit.lock().unwrap(), Some(ExitReason::Reset));
        assert_eq!(shared.exit_evt.read().unwrap(), 1);
    }
}

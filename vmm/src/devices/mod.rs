//! Emulated devices: legacy port-I/O devices and virtio-mmio devices.

pub mod berth_ports;
pub mod i8042;
pub mod serial;
pub mod virtio;

/// A device on the port-I/O or MMIO bus. `offset` is relative to the start
/// of the range the device was registered at.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

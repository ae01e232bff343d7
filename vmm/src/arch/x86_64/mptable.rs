//! Intel MultiProcessor Specification table (v1.4) so the guest finds its
//! vCPUs and the IOAPIC without ACPI. Written at [`EBDA_START`].

use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::layout::{EBDA_START, LAST_DEVICE_IRQ};

const APIC_DEFAULT_ADDR: u32 = 0xfee0_0000;
const IOAPIC_DEFAULT_ADDR: u32 = 0xfec0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for the table.
    #[error("{0} vCPUs do not fit in the MP table")]
    TooManyCpus(u8),
    /// Writing to guest memory failed.
    #[error("writing the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// Builds the MP floating pointer + configuration table for `num_cpus`,
/// to be placed at guest address `base`.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus >= 254 {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let table_addr = base + 16;

    // Entries.
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, 1 | if cpu == 0 { 2 } else { 0 }]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU | APIC
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_DEFAULT_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=LAST_DEVICE_IRQ as u8 {
        // type INTSRC, mp_INT, default polarity/trigger, bus 0, src irq, ioapic, pin.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 = ExtINT, LINT1 = NMI on all local APICs.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    // Configuration table header (44 bytes).
    let length = (44 + entries.len()) as u16;
    let mut table: Vec<u8> = Vec::with_capacity(usize::from(length));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"BERTH   ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // oem table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // oem table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended length + checksum + reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    // Floating pointer structure (16 bytes).
    let mut mpf: Vec<u8> = Vec::with_capacity(16 + table.len());
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(4); // spec revision
    mpf.push(0); // checksum, below
    mpf.extend_from_slice(&[0; 5]);
    mpf[10] = checksum(&mpf);
    mpf.extend_from_slice(&table);
    Ok(mpf)
}

/// Writes the MP table for `num_cpus` at [`EBDA_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus, EBDA_START.raw_value())?;
    mem.write_slice(&bytes, EBDA_START)
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        let t = build(2, EBDA_START.raw_value()).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 2 + 1 + 1 + 24 + 2);
        // Fits below the 1 MiB hole.
        assert!(EBDA_START.raw_value() + t.len() as u64 <= 0xa_0000);
        assert!(build(0, 0).is_err());
    }
}

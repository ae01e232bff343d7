//! CPUID set-up: start from KVM_GET_SUPPORTED_CPUID and make per-vCPU
//! identity (APIC ids) and topology (all vCPUs are cores of one socket)
//! consistent.
//!
//! Note: on PVM hosts the guest sees the host's native CPUID regardless of
//! what is set here (docs/KVM-ON-CI.md gap 1); the kernel command line is
//! used there to steer the guest away from unemulated instructions.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;
/// CPUID.1:ECX bit 31, "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28, HTT (EBX[23:16] valid).
const EDX_HTT: u32 = 1 << 28;

/// Number of bits needed to number `n` items.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts `entries` (as from KVM_GET_SUPPORTED_CPUID) for vCPU `id` of `count`.
pub fn patch_entries(entries: &mut [kvm_cpuid_entry2], id: u8, count: u8) {
    let id32 = u32::from(id);
    let count32 = u32::from(count.max(1));
    let core_bits = bits_for(count32);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package,
                // EBX[15:8] CLFLUSH line size (8 × 8 bytes).
                e.ebx = (id32 << 24) | (count32 << 16) | (8 << 8);
                e.ecx |= ECX_HYPERVISOR;
                if count32 > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1.
                e.eax = (e.eax & 0x03ff_ffff) | ((count32 - 1) << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => {
                e.edx = id32; // x2APIC id
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    1 => {
                        // Core level: all vCPUs in one package.
                        e.eax = core_bits;
                        e.ebx = count32;
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_AMD_SIZE_IDS => {
                // ECX[7:0] cores - 1, ECX[15:12] APIC id size.
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (count32 - 1);
            }
            LEAF_AMD_EXT_APIC => {
                e.eax = id32;
                e.ebx &= !0xff00; // one thread per core
                e.ebx = (e.ebx & !0xff) | id32;
                e.ecx &= !0x700; // one node
            }
            _ => {}
        }
    }
}

/// Returns the CPUID for vCPU `id` of `count`, starting from `supported`.
pub fn vcpu_cpuid(supported: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    patch_entries(cpuid.as_mut_slice(), id, count);
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_topology_per_vcpu() {
        let base = vec![
            entry(0x1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x4000_0000, 0),
        ];
        let supported = CpuId::from_entries(&base).unwrap();
        for id in 0..4u8 {
            let c = vcpu_cpuid(&supported, id, 4);
            let s = c.as_slice();
            assert_eq!(s[0].ebx >> 24, u32::from(id));
            assert_eq!((s[0].ebx >> 16) & 0xff, 4);
            assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
            assert_ne!(s[0].edx & EDX_HTT, 0);
            assert_eq!(s[1].edx, u32::from(id));
            assert_eq!(s[1].ebx, 1);
            assert_eq!(s[2].eax, 2);
            assert_eq!(s[2].ebx, 4);
            assert_eq!(s[2].ecx >> 8, 2);
            assert_eq!(s[3].ebx, 0);
            // Hypervisor leaves pass through untouched.
            assert_eq!(s[4], base[4]);
        }
        let one = vcpu_cpuid(&supported, 0, 1);
        assert_eq!(one.as_slice()[0].edx & EDX_HTT, 0);
        assert_eq!(one.as_slice()[2].eax, 0);
    }

    #[test]
    fn bits() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(8), 3);
    }
}

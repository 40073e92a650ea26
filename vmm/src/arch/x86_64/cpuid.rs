//! CPUID for each vCPU, from what KVM supports.
//!
//! `KVM_GET_SUPPORTED_CPUID` says what the host and KVM can offer; this
//! module turns it into what one vCPU of an N-vCPU machine should see: its
//! APIC id, the package topology (one thread per core, N cores), no PMU,
//! no power-management features KVM cannot emulate, and the hypervisor bit.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use super::Result;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

/// Number of bits needed for `count` distinct ids.
fn id_bits(count: u8) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::from(count - 1).ilog2() + 1
    }
}

/// Adjusts one CPUID entry for vCPU `id` of `count`.
pub fn filter_entry(e: &mut kvm_cpuid_entry2, id: u8, count: u8) {
    let id32 = u32::from(id);
    let count32 = u32::from(count);
    match e.function {
        0x1 => {
            // APIC id, logical processors per package, CLFLUSH line size (64).
            e.ebx = (id32 << 24) | (count32 << 16) | (8 << 8) | (e.ebx & 0xff);
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
            e.ecx |= ECX_HYPERVISOR;
        }
        0x4 => {
            // Deterministic cache parameters: cores per package, and which
            // caches are shared (L3 by every core, L1/L2 by one).
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count32 - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((count32 - 1) << 26);
        }
        0x6 => {
            // Turbo boost and the energy-performance bias are not emulated.
            e.eax &= !(1 << 1);
            e.ecx &= !(1 << 3);
        }
        0xa => {
            // No architectural PMU.
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0xb | 0x1f => {
            // Extended topology: level 0 SMT (one thread), level 1 cores.
            e.edx = id32;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (1 << 8) | e.index;
                }
                1 => {
                    e.eax = id_bits(count);
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
        0x8000_0008 => {
            // AMD: cores per package minus one, and APIC id size.
            e.ecx = (e.ecx & !0xf0ff) | (count32 - 1) | (id_bits(count) << 12);
        }
        0x8000_001e => {
            // AMD topology extensions: extended APIC id, one thread per
            // compute unit, node 0.
            e.eax = id32;
            e.ebx = id32 & 0xff;
            e.ecx = 0;
        }
        _ => {}
    }
}

/// Announces the local APIC's TSC-deadline timer mode in leaf 1.
/// `KVM_GET_SUPPORTED_CPUID` leaves the bit clear even where KVM emulates
/// the mode (it says so through `KVM_CAP_TSC_DEADLINE_TIMER` instead), as
/// QEMU and Firecracker do. The guest then arms its timer with one MSR
/// write instead of a one-shot APIC countdown.
pub fn set_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == 0x1 {
            e.ecx |= ECX_TSC_DEADLINE;
        }
    }
}

/// Adjusts the whole table for vCPU `vcpu_id` of `cpu_count`.
pub fn filter_cpuid(cpuid: &mut CpuId, vcpu_id: u8, cpu_count: u8) -> Result<()> {
    for e in cpuid.as_mut_slice() {
        filter_entry(e, vcpu_id, cpu_count.max(1));
    }
    Ok(())
}

/// The feature words a guest relies on: (leaf, subleaf, register name,
/// register), where a bit the guest sees must be one the host's KVM offers.
const FEATURE_WORDS: &[(u32, u32, &str)] = &[
    (0x1, 0, "ecx"),
    (0x1, 0, "edx"),
    (0x7, 0, "ebx"),
    (0x7, 0, "ecx"),
    (0x7, 0, "edx"),
    (0x7, 1, "eax"),
    (0xd, 1, "eax"),
    (0x8000_0001, 0, "ecx"),
    (0x8000_0001, 0, "edx"),
    (0x8000_0008, 0, "ebx"),
];

/// Bits condo sets itself whatever the host offers (the hypervisor bit,
/// HTT for multi-vCPU guests), by (leaf, register).
fn own_bits(leaf: u32, reg: &str) -> u32 {
    match (leaf, reg) {
        (0x1, "ecx") => ECX_HYPERVISOR,
        (0x1, "edx") => EDX_HTT,
        _ => 0,
    }
}

fn register(e: &kvm_cpuid_entry2, name: &str) -> u32 {
    match name {
        "eax" => e.eax,
        "ebx" => e.ebx,
        "ecx" => e.ecx,
        _ => e.edx,
    }
}

/// The CPU features a guest's CPUID shows that `supported` (this host's
/// KVM) lacks, as `leaf 0x7 ebx bit 5` lines; empty when the guest can run
/// here (after a snapshot restore or a migration from another host).
pub fn missing_features(guest: &[kvm_cpuid_entry2], supported: &[kvm_cpuid_entry2]) -> Vec<String> {
    let find = |t: &[kvm_cpuid_entry2], leaf: u32, sub: u32| {
        t.iter()
            .find(|e| e.function == leaf && e.index == sub)
            .copied()
    };
    let mut missing = Vec::new();
    for &(leaf, sub, reg) in FEATURE_WORDS {
        let Some(g) = find(guest, leaf, sub) else {
            continue;
        };
        let have = find(supported, leaf, sub).map_or(0, |s| register(&s, reg));
        let lack = register(&g, reg) & !have & !own_bits(leaf, reg);
        for bit in 0..32 {
            if lack & (1 << bit) != 0 {
                missing.push(format!("leaf {leaf:#x}.{sub} {reg} bit {bit}"));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    fn table() -> CpuId {
        CpuId::from_entries(&[
            entry(0x1, 0),
            entry(0x4, 0),
            entry(0xa, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x4000_0000, 0),
        ])
        .unwrap()
    }

    #[test]
    fn a_guest_feature_the_host_lacks_is_named() {
        let leaf7 = |ebx| kvm_cpuid_entry2 {
            ebx,
            ..entry(0x7, 0)
        };
        let mut host = CpuId::from_entries(&[entry(0x1, 0), leaf7(1 << 5 | 1 << 3)]).unwrap();
        set_tsc_deadline(&mut host);
        let mut guest = host.clone();
        filter_cpuid(&mut guest, 0, 2).unwrap();
        assert!(
            missing_features(guest.as_slice(), host.as_slice()).is_empty(),
            "condo's own bits (hypervisor, HTT) are not missing"
        );
        let lacking = CpuId::from_entries(&[entry(0x1, 0), leaf7(1 << 3)]).unwrap();
        let mut lacking = lacking;
        set_tsc_deadline(&mut lacking);
        assert_eq!(
            missing_features(guest.as_slice(), lacking.as_slice()),
            vec!["leaf 0x7.0 ebx bit 5".to_owned()]
        );
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn per_vcpu_topology() {
        for id in 0..4u8 {
            let mut c = table();
            filter_cpuid(&mut c, id, 4).unwrap();
            let l1 = find(&c, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(id), "APIC id");
            assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical count");
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_ne!(l1.edx & EDX_HTT, 0);
            assert_eq!(find(&c, 0xb, 0).edx, u32::from(id));
            assert_eq!(find(&c, 0xb, 1).ebx, 4);
            assert_eq!(find(&c, 0xb, 1).eax, 2);
            assert_eq!(find(&c, 0xb, 1).ecx >> 8, 2);
            assert_eq!(find(&c, 0xb, 2).ecx >> 8, 0);
            assert_eq!(find(&c, 0xa, 0).eax, 0);
            assert_eq!(find(&c, 4, 0).eax >> 26, 3);
            // Leaves this module does not own pass through.
            assert_eq!(find(&c, 0x4000_0000, 0).eax, 0xffff_ffff);
        }
    }

    #[test]
    fn tsc_deadline_is_set_in_leaf_one_only() {
        let mut c = table();
        set_tsc_deadline(&mut c);
        assert_ne!(find(&c, 1, 0).ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(find(&c, 4, 0).ecx, 0);
        // The per-vCPU filter keeps it.
        filter_cpuid(&mut c, 1, 2).unwrap();
        assert_ne!(find(&c, 1, 0).ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn single_vcpu() {
        let mut c = table();
        filter_cpuid(&mut c, 0, 1).unwrap();
        assert_eq!(find(&c, 1, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&c, 0xb, 1).eax, 0);
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(32), 5);
    }
}

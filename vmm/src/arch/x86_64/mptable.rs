//! The Intel MultiProcessor table (spec 1.4) in the EBDA: how a guest
//! without ACPI finds its vCPUs, the I/O APIC and the ISA interrupt routing.

use devices::GuestMemoryMmap;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::layout::{EBDA_START, IOAPIC_ADDR, LAPIC_ADDR};
use super::{mem_err, Error, Result};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const IRQ_COUNT: u8 = 24;
/// The MP table must fit between the EBDA start and 640 KiB.
const MPTABLE_END: u64 = 0xa0000;

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpfIntel {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    specification: u8,
    checksum: u8,
    feature: [u8; 5],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcTable {
    signature: [u8; 4],
    length: u16,
    spec: u8,
    checksum: u8,
    oem: [u8; 8],
    productid: [u8; 12],
    oemptr: u32,
    oemsize: u16,
    oemcount: u16,
    lapic: u32,
    reserved: u32,
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcCpu {
    type_: u8,
    apicid: u8,
    apicver: u8,
    cpuflag: u8,
    cpufeature: u32,
    featureflag: u32,
    reserved: [u32; 2],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcBus {
    type_: u8,
    busid: u8,
    bustype: [u8; 6],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcIoapic {
    type_: u8,
    apicid: u8,
    apicver: u8,
    flags: u8,
    apicaddr: u32,
}

/// Shared layout of I/O interrupt and local interrupt entries.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcIntsrc {
    type_: u8,
    irqtype: u8,
    irqflag: u16,
    srcbus: u8,
    srcbusirq: u8,
    dstapic: u8,
    dstirq: u8,
}

// SAFETY: all of these are packed structs of integers and byte arrays: no
// padding, and every bit pattern is a valid value.
unsafe impl ByteValued for MpfIntel {}
// SAFETY: as above.
unsafe impl ByteValued for MpcTable {}
// SAFETY: as above.
unsafe impl ByteValued for MpcCpu {}
// SAFETY: as above.
unsafe impl ByteValued for MpcBus {}
// SAFETY: as above.
unsafe impl ByteValued for MpcIoapic {}
// SAFETY: as above.
unsafe impl ByteValued for MpcIntsrc {}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Bytes of the MP structures for `vcpu_count`: floating pointer, then table.
fn build(vcpu_count: u8) -> Vec<u8> {
    let mut entries: Vec<u8> = Vec::new();
    for i in 0..vcpu_count {
        let cpu = MpcCpu {
            type_: MP_PROCESSOR,
            apicid: i,
            apicver: APIC_VERSION,
            cpuflag: CPU_ENABLED | if i == 0 { CPU_BOOTPROCESSOR } else { 0 },
            cpufeature: CPU_STEPPING,
            featureflag: CPU_FEATURE_APIC | CPU_FEATURE_FPU,
            reserved: [0; 2],
        };
        entries.extend_from_slice(cpu.as_slice());
    }
    let bus = MpcBus {
        type_: MP_BUS,
        busid: 0,
        bustype: *b"ISA   ",
    };
    entries.extend_from_slice(bus.as_slice());
    let ioapic_id = vcpu_count;
    let ioapic = MpcIoapic {
        type_: MP_IOAPIC,
        apicid: ioapic_id,
        apicver: IOAPIC_VERSION,
        flags: 1,
        apicaddr: IOAPIC_ADDR,
    };
    entries.extend_from_slice(ioapic.as_slice());
    for irq in 0..IRQ_COUNT {
        let src = MpcIntsrc {
            type_: MP_INTSRC,
            irqtype: MP_INT,
            irqflag: 0,
            srcbus: 0,
            srcbusirq: irq,
            dstapic: ioapic_id,
            dstirq: irq,
        };
        entries.extend_from_slice(src.as_slice());
    }
    for (irqtype, dstapic, lint) in [(MP_EXTINT, 0, 0), (MP_NMI, 0xff, 1)] {
        let l = MpcIntsrc {
            type_: MP_LINTSRC,
            irqtype,
            irqflag: 0,
            srcbus: 0,
            srcbusirq: 0,
            dstapic,
            dstirq: lint,
        };
        entries.extend_from_slice(l.as_slice());
    }

    let table_addr = EBDA_START + std::mem::size_of::<MpfIntel>() as u64;
    let mut table = MpcTable {
        signature: *b"PCMP",
        length: (std::mem::size_of::<MpcTable>() + entries.len()) as u16,
        spec: 4,
        checksum: 0,
        oem: *b"CONDO   ",
        productid: *b"000000000000",
        lapic: LAPIC_ADDR,
        ..Default::default()
    };
    let mut body = table.as_slice().to_vec();
    body.extend_from_slice(&entries);
    table.checksum = checksum(&body);
    body[..std::mem::size_of::<MpcTable>()].copy_from_slice(table.as_slice());

    let mut mpf = MpfIntel {
        signature: *b"_MP_",
        physptr: table_addr as u32,
        length: 1,
        specification: 4,
        ..Default::default()
    };
    mpf.checksum = checksum(mpf.as_slice());
    let mut out = mpf.as_slice().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Writes the MP table for `vcpu_count` vCPUs at the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, vcpu_count: u8) -> Result<()> {
    let bytes = build(vcpu_count);
    if vcpu_count == 0 || EBDA_START + bytes.len() as u64 > MPTABLE_END {
        return Err(Error::TooManyCpus(vcpu_count));
    }
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(mem_err("MP table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for n in [1u8, 2, 32] {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            setup_mptable(&mem, n).unwrap();
            let mpf: MpfIntel = mem.read_obj(GuestAddress(EBDA_START)).unwrap();
            assert_eq!(&mpf.signature, b"_MP_");
            assert_eq!(sum(mpf.as_slice()), 0);
            let table_addr = GuestAddress(u64::from(mpf.physptr));
            let hdr: MpcTable = mem.read_obj(table_addr).unwrap();
            assert_eq!(&hdr.signature, b"PCMP");
            let mut whole = vec![0u8; usize::from(hdr.length)];
            mem.read_slice(&mut whole, table_addr).unwrap();
            assert_eq!(sum(&whole), 0);
            let cpus = (0..usize::from(n))
                .map(|i| whole[44 + i * 20])
                .filter(|t| *t == MP_PROCESSOR)
                .count();
            assert_eq!(cpus, usize::from(n));
            // The BSP flag is on the first processor only.
            assert_eq!(whole[44 + 3], CPU_ENABLED | CPU_BOOTPROCESSOR);
        }
    }

    #[test]
    fn too_many_cpus() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 64),
            Err(Error::TooManyCpus(64))
        ));
        assert!(setup_mptable(&mem, 0).is_err());
    }
}

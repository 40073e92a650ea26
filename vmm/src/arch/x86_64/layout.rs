//! Guest-physical memory layout and the e820 map.
//!
//! Below 1 MiB: boot structures at fixed addresses (GDT, IDT, PVH start info,
//! zero page, page tables, command line, MP table, ACPI tables). RAM runs
//! from 1 MiB up to the 32-bit MMIO gap at 3 GiB, and continues above 4 GiB.

use vm_memory::GuestAddress;

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x6100;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Extended BIOS data area: the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the RSDP goes (the kernel also scans 0xe0000..0x100000 for it).
pub const RSDP_ADDR: u64 = 0xe0000;
/// End of the ACPI table area.
pub const ACPI_END: u64 = 0x10_0000;
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO gap: [3 GiB, 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
/// virtio-mmio device windows, 4 KiB each, inside the gap.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;

/// e820 entry types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One e820 map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Guest RAM regions for `mem_bytes` of memory: below the MMIO gap, then
/// the rest above 4 GiB.
pub fn guest_ram_regions(mem_bytes: u64) -> Vec<(GuestAddress, usize)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_bytes as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(MMIO_GAP_END),
                (mem_bytes - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// The e820 map the guest sees for `mem_bytes` of RAM.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let mut m = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = mem_bytes.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        m.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_bytes > MMIO_GAP_START {
        m.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_bytes - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn ram(m: &[E820Entry]) -> u64 {
        m.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_guests() {
        for mem in [32 * MIB, 128 * MIB] {
            let r = guest_ram_regions(mem);
            assert_eq!(r, vec![(GuestAddress(0), mem as usize)]);
            let m = e820_map(mem);
            assert_eq!(m.len(), 3);
            assert_eq!(m[2].addr + m[2].size, mem);
            assert_eq!(ram(&m), mem - (HIMEM_START - EBDA_START));
        }
    }

    #[test]
    fn at_and_across_the_gap() {
        let m = e820_map(3 * GIB);
        assert_eq!(m.len(), 3);
        assert_eq!(guest_ram_regions(3 * GIB).len(), 1);

        let mem = 3 * GIB + 512 * MIB;
        let r = guest_ram_regions(mem);
        assert_eq!(r[1], (GuestAddress(4 * GIB), (512 * MIB) as usize));
        let m = e820_map(mem);
        assert_eq!(
            m[3],
            E820Entry {
                addr: 4 * GIB,
                size: 512 * MIB,
                kind: E820_RAM
            }
        );

        let mem = 5 * GIB;
        let r = guest_ram_regions(mem);
        assert_eq!(r.iter().map(|x| x.1 as u64).sum::<u64>(), mem);
        let m = e820_map(mem);
        assert_eq!(m[2].addr + m[2].size, MMIO_GAP_START);
        assert_eq!(m[3].size, 2 * GIB);
        assert_eq!(ram(&m), mem - (HIMEM_START - EBDA_START));
        // No RAM inside the gap.
        assert!(m
            .iter()
            .all(|e| e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END));
    }
}

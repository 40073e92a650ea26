//! The boot information the kernel reads at entry: `boot_params` (the zero
//! page) for the Linux 64-bit protocol, `hvm_start_info` for PVH. Both carry
//! the command line, the initrd, the RSDP address and the e820 map.

use devices::GuestMemoryMmap;
use linux_loader::loader::bootparam::{boot_params, setup_header};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{
    e820_map, MMIO_GAP_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use super::regs::BootProtocol;
use super::{mem_err, Error, Result};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const PAGE_SIZE: u64 = 4096;

/// Where to put an initrd of `size` bytes: the highest page-aligned address
/// where it fits in RAM below the 32-bit MMIO gap.
pub fn initrd_load_addr(mem: &GuestMemoryMmap, size: usize) -> Result<GuestAddress> {
    let low_end = mem
        .last_addr()
        .raw_value()
        .saturating_add(1)
        .min(MMIO_GAP_START);
    let start = low_end
        .checked_sub(size as u64)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= super::layout::HIMEM_START)
        .ok_or(Error::InitrdTooBig(size))?;
    Ok(GuestAddress(start))
}

/// Writes the boot information for `proto`.
#[allow(clippy::too_many_arguments)]
pub fn configure_system(
    mem: &GuestMemoryMmap,
    cmdline_addr: GuestAddress,
    cmdline_size: usize,
    initrd: Option<(GuestAddress, usize)>,
    proto: BootProtocol,
    rsdp: GuestAddress,
    setup_hdr: Option<setup_header>,
) -> Result<()> {
    let mem_bytes: u64 = mem.iter().map(vm_memory::GuestMemoryRegion::len).sum();
    match proto {
        BootProtocol::LinuxBoot => {
            let params = linux_boot_params(
                mem_bytes,
                cmdline_addr,
                cmdline_size,
                initrd,
                rsdp,
                setup_hdr,
            );
            mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
                .map_err(mem_err("boot_params"))
        }
        BootProtocol::PvhBoot => write_pvh(mem, mem_bytes, cmdline_addr, initrd, rsdp),
    }
}

/// The zero page contents.
pub fn linux_boot_params(
    mem_bytes: u64,
    cmdline_addr: GuestAddress,
    cmdline_size: usize,
    initrd: Option<(GuestAddress, usize)>,
    rsdp: GuestAddress,
    setup_hdr: Option<setup_header>,
) -> boot_params {
    let mut p = boot_params::default();
    if let Some(h) = setup_hdr {
        p.hdr = h;
    }
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    p.hdr.header = KERNEL_HDR_MAGIC;
    p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    p.hdr.cmd_line_ptr = cmdline_addr.raw_value() as u32;
    p.hdr.cmdline_size = cmdline_size as u32;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr.raw_value() as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    p.acpi_rsdp_addr = rsdp.raw_value();
    let map = e820_map(mem_bytes);
    for (slot, e) in p.e820_table.iter_mut().zip(&map) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    p.e820_entries = map.len().min(p.e820_table.len()) as u8;
    p
}

fn write_pvh(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    cmdline_addr: GuestAddress,
    initrd: Option<(GuestAddress, usize)>,
    rsdp: GuestAddress,
) -> Result<()> {
    let map = e820_map(mem_bytes);
    let mut memmap = Vec::with_capacity(map.len() * 24);
    for e in &map {
        memmap.extend_from_slice(&e.addr.to_le_bytes());
        memmap.extend_from_slice(&e.size.to_le_bytes());
        memmap.extend_from_slice(&e.kind.to_le_bytes());
        memmap.extend_from_slice(&0u32.to_le_bytes());
    }
    mem.write_slice(&memmap, GuestAddress(PVH_MEMMAP_START))
        .map_err(mem_err("PVH memory map"))?;
    let nr_modules = if let Some((addr, size)) = initrd {
        let mut m = Vec::with_capacity(32);
        m.extend_from_slice(&addr.raw_value().to_le_bytes());
        m.extend_from_slice(&(size as u64).to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes()); // cmdline_paddr
        m.extend_from_slice(&0u64.to_le_bytes()); // reserved
        mem.write_slice(&m, GuestAddress(PVH_MODLIST_START))
            .map_err(mem_err("PVH module list"))?;
        1u32
    } else {
        0
    };
    let info = pvh_start_info(nr_modules, cmdline_addr, rsdp, map.len() as u32);
    mem.write_slice(&info, GuestAddress(PVH_INFO_START))
        .map_err(mem_err("PVH start info"))
}

/// `hvm_start_info` (56 bytes) as the PVH ABI lays it out.
pub fn pvh_start_info(
    nr_modules: u32,
    cmdline: GuestAddress,
    rsdp: GuestAddress,
    memmap_entries: u32,
) -> Vec<u8> {
    let mut s = Vec::with_capacity(56);
    s.extend_from_slice(&XEN_HVM_START_MAGIC_VALUE.to_le_bytes());
    s.extend_from_slice(&1u32.to_le_bytes()); // version
    s.extend_from_slice(&0u32.to_le_bytes()); // flags
    s.extend_from_slice(&nr_modules.to_le_bytes());
    s.extend_from_slice(&PVH_MODLIST_START.to_le_bytes());
    s.extend_from_slice(&cmdline.raw_value().to_le_bytes());
    s.extend_from_slice(&rsdp.raw_value().to_le_bytes());
    s.extend_from_slice(&PVH_MEMMAP_START.to_le_bytes());
    s.extend_from_slice(&memmap_entries.to_le_bytes());
    s.extend_from_slice(&0u32.to_le_bytes());
    s
}

/// Count of RAM entries in the e820 map.
#[cfg(test)]
fn ram_entries(mem_bytes: u64) -> usize {
    use super::layout::E820_RAM;
    e820_map(mem_bytes)
        .iter()
        .filter(|e| e.kind == E820_RAM)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page_fields() {
        let p = linux_boot_params(
            128 << 20,
            GuestAddress(0x20000),
            20,
            Some((GuestAddress(0x700_0000), 1234)),
            GuestAddress(0xe0000),
            None,
        );
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 20);
        assert_eq!({ hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ hdr.ramdisk_size }, 1234);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries, 3);
        let last = p.e820_table[2];
        assert_eq!({ last.addr } + { last.size }, 128 << 20);
    }

    #[test]
    fn pvh_start_info_layout() {
        let s = pvh_start_info(1, GuestAddress(0x20000), GuestAddress(0xe0000), 4);
        assert_eq!(s.len(), 56);
        assert_eq!(
            u32::from_le_bytes(s[0..4].try_into().unwrap()),
            XEN_HVM_START_MAGIC_VALUE
        );
        assert_eq!(u32::from_le_bytes(s[12..16].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(s[24..32].try_into().unwrap()), 0x20000);
        assert_eq!(u64::from_le_bytes(s[32..40].try_into().unwrap()), 0xe0000);
        assert_eq!(u32::from_le_bytes(s[48..52].try_into().unwrap()), 4);
        assert_eq!(ram_entries(128 << 20), 2);
        assert_eq!(ram_entries(5 << 30), 3);
    }

    #[test]
    fn pvh_written_to_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        configure_system(
            &mem,
            GuestAddress(0x20000),
            10,
            Some((GuestAddress(0x100_0000), 4096)),
            BootProtocol::PvhBoot,
            GuestAddress(0xe0000),
            None,
        )
        .unwrap();
        let magic: u32 = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(magic, XEN_HVM_START_MAGIC_VALUE);
        let m0: u64 = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!(m0, 0x100_0000);
    }

    #[test]
    fn initrd_placement() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let a = initrd_load_addr(&mem, 5000).unwrap();
        assert_eq!(a.raw_value() % PAGE_SIZE, 0);
        assert!(a.raw_value() + 5000 <= 64 << 20);
        assert!(initrd_load_addr(&mem, 80 << 20).is_err());
    }
}

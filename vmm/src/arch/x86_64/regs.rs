//! vCPU registers at boot: general-purpose, FPU and special registers,
//! including the GDT and (for the Linux 64-bit protocol) identity page
//! tables written into guest memory.

use devices::GuestMemoryMmap;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::gdt::{gdt_entry, kvm_segment_from_gdt};
use super::layout::*;
use super::{kvm_err, mem_err, Result};

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux x86 64-bit boot protocol: long mode, `rsi` = zero page.
    LinuxBoot,
    /// Xen PVH: 32-bit protected mode, paging off, `rbx` = start info.
    PvhBoot,
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Sets the general-purpose registers for entry at `boot_ip`.
pub fn setup_regs(vcpu: &VcpuFd, boot_ip: u64, proto: BootProtocol) -> Result<()> {
    let regs = match proto {
        BootProtocol::LinuxBoot => kvm_regs {
            rflags: 0x2,
            rip: boot_ip,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
        BootProtocol::PvhBoot => kvm_regs {
            rflags: 0x2,
            rip: boot_ip,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
    };
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))
}

/// Sets the FPU to its power-on state.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))
}

/// The GDT for each protocol: null, code, data, TSS.
pub fn gdt_table(proto: BootProtocol) -> [u64; 4] {
    match proto {
        BootProtocol::LinuxBoot => [
            gdt_entry(0, 0, 0),
            gdt_entry(0xa09b, 0, 0xfffff),
            gdt_entry(0xc093, 0, 0xfffff),
            gdt_entry(0x808b, 0, 0xfffff),
        ],
        BootProtocol::PvhBoot => [
            gdt_entry(0, 0, 0),
            gdt_entry(0xc09b, 0, 0xffff_ffff),
            gdt_entry(0xc093, 0, 0xffff_ffff),
            gdt_entry(0x008b, 0, 0x67),
        ],
    }
}

/// Sets segments, control registers and (Linux protocol) paging.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd, proto: BootProtocol) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    configure_segments(mem, &mut sregs, proto)?;
    if proto == BootProtocol::LinuxBoot {
        setup_page_tables(mem, &mut sregs)?;
    }
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))
}

fn configure_segments(
    mem: &GuestMemoryMmap,
    sregs: &mut kvm_sregs,
    proto: BootProtocol,
) -> Result<()> {
    let gdt = gdt_table(proto);
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + i as u64 * 8))
            .map_err(mem_err("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(mem_err("IDT"))?;
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match proto {
        BootProtocol::LinuxBoot => {
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::PvhBoot => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(())
}

/// Identity-maps the first 1 GiB with 2 MiB pages.
fn setup_page_tables(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs) -> Result<()> {
    let w = mem_err("page tables");
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(&w)?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(&w)?;
    let mut pde = [0u8; 512 * 8];
    for (i, chunk) in pde.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(((i as u64) << 21) | 0x83).to_le_bytes());
    }
    mem.write_slice(&pde, GuestAddress(PDE_START)).map_err(&w)?;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PG;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_structures() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let mut sregs = kvm_sregs::default();
        configure_segments(&mem, &mut sregs, BootProtocol::LinuxBoot).unwrap();
        setup_page_tables(&mem, &mut sregs).unwrap();
        assert_eq!(sregs.cs.selector, 8);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
        let gdt1: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 8)).unwrap();
        assert_eq!(gdt1, gdt_table(BootProtocol::LinuxBoot)[1]);
    }

    #[test]
    fn pvh_is_flat_protected_mode() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let mut sregs = kvm_sregs::default();
        configure_segments(&mem, &mut sregs, BootProtocol::PvhBoot).unwrap();
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!(sregs.efer, 0);
        assert_eq!(sregs.cs.db, 1);
        assert_eq!(sregs.cs.l, 0);
        assert_eq!(sregs.cs.limit, 0xffff_ffff);
        assert_eq!(sregs.ds.base, 0);
    }
}

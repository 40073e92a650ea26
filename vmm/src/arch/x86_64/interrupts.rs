//! Local APIC LINT0/LINT1 wiring: LINT0 as ExtINT (the PIC), LINT1 as NMI.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use super::{kvm_err, Result};

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b = &l.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *byte as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Edits a LAPIC state as [`set_lint`] does.
pub fn configure_lints(l: &mut kvm_lapic_state) {
    let lint0 = get_reg(l, APIC_LVT0);
    set_reg(l, APIC_LVT0, with_delivery_mode(lint0, APIC_MODE_EXTINT));
    let lint1 = get_reg(l, APIC_LVT1);
    set_reg(l, APIC_LVT1, with_delivery_mode(lint1, APIC_MODE_NMI));
}

/// Configures LINT0/LINT1 of `vcpu`; needs the in-kernel irqchip.
pub fn set_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut l = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    configure_lints(&mut l);
    vcpu.set_lapic(&l).map_err(kvm_err("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_modes() {
        let mut l = kvm_lapic_state::default();
        set_reg(&mut l, APIC_LVT0, 0x0001_0700);
        configure_lints(&mut l);
        assert_eq!(get_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_reg(&l, APIC_LVT1), 0x400);
        set_reg(&mut l, APIC_LVT0, 0);
        configure_lints(&mut l);
        assert_eq!(get_reg(&l, APIC_LVT0), 0x700);
    }
}

//! GDT entries and the KVM segment registers made from them.

use kvm_bindings::kvm_segment;

/// Builds a GDT entry from flags (access byte plus the flags nibble at bits
/// 12..16), base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

fn base(e: u64) -> u64 {
    ((e & 0xff00_0000_0000_0000) >> 32)
        | ((e & 0x0000_00ff_0000_0000) >> 16)
        | ((e & 0x0000_0000_ffff_0000) >> 16)
}

fn bit(e: u64, shift: u32, mask: u64) -> u8 {
    ((e >> shift) & mask) as u8
}

fn limit(e: u64) -> u32 {
    let l = (((e & 0x000f_0000_0000_0000) >> 32) | (e & 0xffff)) as u32;
    if bit(e, 55, 1) == 0 {
        l
    } else {
        (l << 12) | 0xfff
    }
}

/// The segment register contents KVM needs for GDT entry `entry` at
/// `table_index`.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let present = bit(entry, 47, 1);
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(table_index) * 8,
        type_: bit(entry, 40, 0xf),
        present,
        dpl: bit(entry, 45, 0x3),
        db: bit(entry, 54, 1),
        s: bit(entry, 44, 1),
        l: bit(entry, 53, 1),
        g: bit(entry, 55, 1),
        avl: bit(entry, 52, 1),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_segment() {
        let e = gdt_entry(0xa09b, 0, 0xfffff);
        assert_eq!(e, 0x00af_9b00_0000_ffff);
        let s = kvm_segment_from_gdt(e, 1);
        assert_eq!(s.selector, 8);
        assert_eq!(s.type_, 0xb);
        assert_eq!(s.l, 1);
        assert_eq!(s.db, 0);
        assert_eq!(s.g, 1);
        assert_eq!(s.present, 1);
        assert_eq!(s.s, 1);
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.unusable, 0);
    }

    #[test]
    fn round_trip_base_and_limit() {
        let e = gdt_entry(0x008b, 0x1234_5678, 0x67);
        let s = kvm_segment_from_gdt(e, 3);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0x67);
        assert_eq!(s.selector, 0x18);
        assert_eq!(s.type_, 0xb);
        let s = kvm_segment_from_gdt(0, 0);
        assert_eq!(s.unusable, 1);
    }
}

//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced), MADT and DSDT.
//!
//! The machine is hardware-reduced ACPI: no PM timer, no SCI, no fixed
//! hardware. Power-off and reset go through one I/O port register
//! (`devices::legacy::AcpiPmDevice`), named in the FADT as the sleep control
//! and reset registers; the DSDT's `_S5_` gives the sleep type the kernel
//! writes there. The DSDT also describes COM1, the PS/2 keyboard (the
//! i8042 answers every probe command as a real one does, so a stock kernel
//! probes it without timeouts; it carries Ctrl+Alt+Del), the pvpanic port
//! and every virtio-mmio device (`LNRO0005`), which is how an unmodified
//! distribution kernel finds them.

use acpi_tables::aml;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::{GenericAddress, Sdt};
use acpi_tables::Aml;
use devices::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{ACPI_END, IOAPIC_ADDR, LAPIC_ADDR, RSDP_ADDR};
use super::{mem_err, Error, Result};

const OEM_ID: [u8; 6] = *b"CONDO ";
/// Port of the sleep control / reset register (`AcpiPmDevice`).
const PM_PORT: u16 = 0x600;
const RESET_VALUE: u8 = 1;
const COM1_PORT: u16 = 0x3f8;
const COM1_IRQ: u32 = 4;
const PVPANIC_PORT: u16 = 0x505;
const I8042_DATA_PORT: u16 = 0x60;
const I8042_COMMAND_PORT: u16 = 0x64;
const KBD_IRQ: u32 = 1;

/// A virtio-mmio device to describe in the DSDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceDesc {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// What the tables describe.
#[derive(Debug, Clone, Default)]
pub struct AcpiConfig {
    pub vcpu_count: u8,
    pub mmio_devices: Vec<MmioDeviceDesc>,
}

fn dsdt(cfg: &AcpiConfig) -> Sdt {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"CONDODSD", 1);
    // Each object is serialized in one statement so its temporaries live
    // long enough.
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&5u8, &0u8, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut dsdt);
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::Interrupt::new(true, true, false, false, COM1_IRQ),
                    &aml::IO::new(COM1_PORT, COM1_PORT, 0, 8),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut dsdt);
    // The PS/2 keyboard (no mouse), for Ctrl+Alt+Del.
    aml::Device::new(
        "_SB_.PS2K".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1),
                    &aml::IO::new(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 1, 1),
                    &aml::Interrupt::new(true, true, false, false, KBD_IRQ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut dsdt);
    aml::Device::new(
        "_SB_.PEVT".into(),
        vec![
            &aml::Name::new("_HID".into(), &"QEMU0001"),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1)]),
            ),
        ],
    )
    .to_aml_bytes(&mut dsdt);
    for (i, d) in cfg.mmio_devices.iter().enumerate() {
        let path = format!("_SB_.V{:03X}", i & 0xfff);
        aml::Device::new(
            path.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &(i as u32)),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![
                        &aml::Memory32Fixed::new(true, d.base as u32, d.size as u32),
                        &aml::Interrupt::new(true, true, false, false, d.irq),
                    ]),
                ),
            ],
        )
        .to_aml_bytes(&mut dsdt);
    }
    dsdt.update_checksum();
    dsdt
}

// FADT field offsets (ACPI 6.5, table 5.9).
const FADT_IAPC_BOOT_ARCH: usize = 109;
const FADT_FLAGS: usize = 112;
const FADT_RESET_REG: usize = 116;
const FADT_RESET_VALUE: usize = 128;
const FADT_MINOR_VERSION: usize = 131;
const FADT_X_DSDT: usize = 140;
const FADT_SLEEP_CONTROL_REG: usize = 244;
const FADT_SLEEP_STATUS_REG: usize = 256;
const FADT_HYPERVISOR_ID: usize = 268;
const FADT_LEN: u32 = 276;

const FLAG_TMR_VAL_EXT: u32 = 1 << 8;
const FLAG_RESET_REG_SUP: u32 = 1 << 10;
const FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

fn fadt(dsdt_addr: u64) -> Sdt {
    let mut f = Sdt::new(*b"FACP", FADT_LEN, 6, OEM_ID, *b"CONDOFAC", 1);
    f.write_u16(
        FADT_IAPC_BOOT_ARCH,
        IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT,
    );
    f.write_u32(
        FADT_FLAGS,
        FLAG_HW_REDUCED_ACPI | FLAG_RESET_REG_SUP | FLAG_TMR_VAL_EXT,
    );
    f.write(
        FADT_RESET_REG,
        GenericAddress::io_port_address::<u8>(PM_PORT),
    );
    f.write_u8(FADT_RESET_VALUE, RESET_VALUE);
    f.write_u8(FADT_MINOR_VERSION, 5);
    f.write_u64(FADT_X_DSDT, dsdt_addr);
    f.write(
        FADT_SLEEP_CONTROL_REG,
        GenericAddress::io_port_address::<u8>(PM_PORT),
    );
    f.write(
        FADT_SLEEP_STATUS_REG,
        GenericAddress::io_port_address::<u8>(PM_PORT),
    );
    f.write_bytes(FADT_HYPERVISOR_ID, b"CONDOVMM");
    f.update_checksum();
    f
}

fn madt(vcpu_count: u8) -> Sdt {
    let mut m = Sdt::new(*b"APIC", 44, 5, OEM_ID, *b"CONDOMAD", 1);
    m.write_u32(36, LAPIC_ADDR);
    m.write_u32(40, 1); // PCAT_COMPAT: there is an 8259 pair (KVM's).
    for i in 0..vcpu_count {
        // Processor Local APIC: type 0, length 8, UID, APIC id, enabled.
        m.append_slice(&[0, 8, i, i, 1, 0, 0, 0]);
    }
    // I/O APIC: type 1, length 12, id, reserved, address, GSI base 0.
    let mut ioapic = vec![1u8, 12, vcpu_count, 0];
    ioapic.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    m.append_slice(&ioapic);
    m.update_checksum();
    m
}

fn xsdt(tables: &[u64]) -> Sdt {
    let mut x = Sdt::new(*b"XSDT", 36, 1, OEM_ID, *b"CONDOXSD", 1);
    for t in tables {
        x.append_slice(&t.to_le_bytes());
    }
    x.update_checksum();
    x
}

fn align16(a: u64) -> u64 {
    (a + 15) & !15
}

/// Writes every table below 1 MiB; returns the RSDP address.
pub fn create_acpi_tables(mem: &GuestMemoryMmap, cfg: &AcpiConfig) -> Result<GuestAddress> {
    let mut next = align16(RSDP_ADDR + Rsdp::len() as u64);
    let mut place = |bytes: &[u8], what: &'static str| -> Result<u64> {
        let at = next;
        if at + bytes.len() as u64 > ACPI_END {
            return Err(Error::AcpiTooBig);
        }
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(mem_err(what))?;
        next = align16(at + bytes.len() as u64);
        Ok(at)
    };
    let dsdt_addr = place(dsdt(cfg).as_slice(), "DSDT")?;
    let fadt_addr = place(fadt(dsdt_addr).as_slice(), "FADT")?;
    let madt_addr = place(madt(cfg.vcpu_count).as_slice(), "MADT")?;
    let xsdt_addr = place(xsdt(&[fadt_addr, madt_addr]).as_slice(), "XSDT")?;
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    mem.write_slice(&rsdp, GuestAddress(RSDP_ADDR))
        .map_err(mem_err("RSDP"))?;
    Ok(GuestAddress(RSDP_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn read_table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let mut hdr = [0u8; 8];
        mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
        let len = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
        let mut t = vec![0u8; len];
        mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
        t
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn tables_are_consistent() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let cfg = AcpiConfig {
            vcpu_count: 4,
            mmio_devices: vec![MmioDeviceDesc {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            }],
        };
        let rsdp_addr = create_acpi_tables(&mem, &cfg).unwrap();
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, rsdp_addr).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2);
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);

        let xsdt = read_table(&mem, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(&xsdt), 0);
        assert_eq!(xsdt.len(), 36 + 16);
        let fadt = read_table(&mem, u64_at(&xsdt, 36));
        let madt = read_table(&mem, u64_at(&xsdt, 44));
        assert_eq!(&fadt[..4], b"FACP");
        assert_eq!(fadt.len(), FADT_LEN as usize);
        assert_eq!(sum(&fadt), 0);
        let flags = u32::from_le_bytes(fadt[FADT_FLAGS..FADT_FLAGS + 4].try_into().unwrap());
        assert_ne!(flags & FLAG_HW_REDUCED_ACPI, 0);
        // Sleep control register: I/O space, port 0x600.
        assert_eq!(fadt[FADT_SLEEP_CONTROL_REG], 1);
        assert_eq!(u64_at(&fadt, FADT_SLEEP_CONTROL_REG + 4), 0x600);

        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(sum(&madt), 0);
        let lapics = madt[44..].chunks(8).take_while(|c| c[0] == 0).count();
        assert_eq!(lapics, 4);

        let dsdt = read_table(&mem, u64_at(&fadt, FADT_X_DSDT));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(&dsdt), 0);
        for needle in [&b"_S5_"[..], b"COM1", b"QEMU0001", b"LNRO0005", b"V000"] {
            assert!(
                contains(&dsdt, needle),
                "{}",
                String::from_utf8_lossy(needle)
            );
        }
    }

    #[test]
    fn many_devices_fit_or_fail_cleanly() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let cfg = AcpiConfig {
            vcpu_count: 32,
            mmio_devices: (0..64)
                .map(|i| MmioDeviceDesc {
                    base: 0xd000_0000 + i * 0x1000,
                    size: 0x1000,
                    irq: 5 + i as u32,
                })
                .collect(),
        };
        create_acpi_tables(&mem, &cfg).unwrap();
    }
}

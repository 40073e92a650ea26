//! The ACPI sleep-control / reset register of a hardware-reduced ACPI machine.
//!
//! The FADT points the guest's sleep control register and reset register at
//! [`ACPI_PM_PORT`]. On `poweroff` the kernel writes `SLP_TYP(5) << 2 | SLP_EN`
//! there; on an ACPI reboot it writes the FADT's reset value.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// The I/O port of the register.
pub const ACPI_PM_PORT: u64 = 0x600;
/// S5 (soft off) as the kernel writes it: SLP_TYP = 5, SLP_EN = bit 5.
pub const ACPI_S5_SLEEP_VALUE: u8 = (5 << 2) | (1 << 5);
/// The FADT reset value.
pub const ACPI_RESET_VALUE: u8 = 1;

/// The register.
pub struct AcpiPmDevice {
    exit: Arc<ExitSignal>,
}

impl AcpiPmDevice {
    /// A register that reports power-off and reset to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // The sleep status register: wake status never set.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [ACPI_S5_SLEEP_VALUE]) => self.exit.signal(ExitReason::Poweroff),
            (0, [ACPI_RESET_VALUE]) => self.exit.signal(ExitReason::Reset),
            _ => tracing::debug!("ACPI PM register: ignored write {data:x?} at +{offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_and_reset() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPmDevice::new(exit.clone());
        pm.write(0, &[0x14]); // S5 type without SLP_EN
        assert_eq!(exit.reason(), None);
        pm.write(0, &[ACPI_S5_SLEEP_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Poweroff));

        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPmDevice::new(exit.clone());
        pm.write(0, &[ACPI_RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}

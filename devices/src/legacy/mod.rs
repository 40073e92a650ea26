//! Legacy PC devices on the port I/O bus: the COM1 UART, the i8042 reset
//! line, the ACPI power-management register and the pvpanic port.

mod acpi_pm;
mod i8042;
mod pvpanic;
mod serial;

pub use acpi_pm::{AcpiPmDevice, ACPI_PM_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_VALUE};
pub use i8042::{I8042, I8042_PORT, KBD_IRQ};
pub use pvpanic::{PvPanic, PVPANIC_PORT};
pub use serial::{EventFdTrigger, SerialDevice, SerialState, COM1_IRQ, COM1_PORT};

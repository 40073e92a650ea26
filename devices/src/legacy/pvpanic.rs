//! The pvpanic port (QEMU's `QEMU0001` device): a guest kernel with the
//! pvpanic driver writes here when it panics, so the VMM can exit with a
//! reason instead of watching the guest reboot.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// The I/O port QEMU uses, which guests' ACPI tables point at.
pub const PVPANIC_PORT: u64 = 0x505;
const PVPANIC_PANICKED: u8 = 1 << 0;
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic device.
pub struct PvPanic {
    exit: Arc<ExitSignal>,
}

impl PvPanic {
    /// A device that reports panics to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Capabilities: the events we understand.
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first().is_some_and(|b| b & PVPANIC_PANICKED != 0) {
            self.exit.signal(ExitReason::Panic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_bit() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut p = PvPanic::new(exit.clone());
        let mut caps = [0u8];
        p.read(0, &mut caps);
        assert_eq!(caps, [3]);
        p.write(0, &[PVPANIC_CRASH_LOADED]);
        assert_eq!(exit.reason(), None);
        p.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(exit.reason(), Some(ExitReason::Panic));
    }
}

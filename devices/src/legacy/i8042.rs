//! The i8042 keyboard controller, only as far as the CPU reset line:
//! `reboot=k` guests write 0xfe to its command port to reset the machine.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// Base port of the range the i8042 occupies (0x60 data .. 0x64 command).
pub const I8042_PORT: u64 = 0x60;

struct ResetTrigger(Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.signal(ExitReason::Reset);
        Ok(())
    }
}

/// The controller, spanning ports 0x60..=0x64.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// A controller that reports resets to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self {
            dev: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(off), Some(b)) = (u8::try_from(offset), data.first_mut()) {
            *b = self.dev.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            let Ok(()) = self.dev.write(off, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_reset() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut k = I8042::new(exit.clone());
        k.write(4, &[0xaa]);
        assert_eq!(exit.reason(), None);
        k.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}

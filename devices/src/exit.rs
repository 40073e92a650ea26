//! How devices tell the VMM that the guest asked to end the VM.

use crate::sync::lock;
use std::sync::Mutex;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI S5 (poweroff) through the sleep control register.
    Poweroff,
    /// Reset through the i8042 controller or the ACPI reset register.
    Reset,
    /// The guest kernel reported a panic through pvpanic.
    Panic,
}

/// A one-shot, first-writer-wins exit notification carrying a reason `R`.
///
/// Devices call [`ExitSignal::signal`] from vCPU threads; the VMM's event loop
/// waits on [`ExitSignal::eventfd`]. The VMM uses the same type for its own
/// exit reasons (vCPU failures).
pub struct ExitSignal<R = ExitReason> {
    evt: EventFd,
    reason: Mutex<Option<R>>,
}

impl<R: Clone> ExitSignal<R> {
    /// A new signal with its eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    /// Records `reason` (unless one was recorded before) and wakes the VMM.
    pub fn signal(&self, reason: R) {
        let mut r = lock(&self.reason);
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        if let Err(e) = self.evt.write(1) {
            tracing::error!("cannot signal VM exit: {e}");
        }
    }

    /// The reason recorded first, if any.
    pub fn reason(&self) -> Option<R> {
        lock(&self.reason).clone()
    }

    /// The eventfd that becomes readable once an exit is signalled.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.reason(), None);
        s.signal(ExitReason::Panic);
        s.signal(ExitReason::Reset);
        assert_eq!(s.reason(), Some(ExitReason::Panic));
        assert_eq!(s.eventfd().read().unwrap(), 2);
    }
}

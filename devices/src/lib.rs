//! Emulated devices for condo guests.
//!
//! This crate owns device models and the bus that routes guest port I/O and
//! MMIO accesses to them. It knows nothing of KVM: interrupts are raised
//! through eventfds (which the VMM wires to KVM irqfds) and VM-wide events
//! (power off, reset, panic) are reported through [`ExitSignal`].

pub mod bus;
pub mod exit;
pub mod legacy;
pub mod rate_limiter;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use exit::{ExitReason, ExitSignal};

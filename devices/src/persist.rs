//! Typed, versioned state: what a device (or any part of the VM) saves for
//! a snapshot or a live migration, and how it is rebuilt from it.
//!
//! A state is a plain serde type, encoded by the snapshot and migration
//! code (`vmm::snapshot`) in a versioned, checksummed frame; it names every
//! field, refuses unknown ones, and a state that does not fit the device
//! (a queue size a device does not take, a device of another type) is an
//! error from [`Persist::restore`], never ignored.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Something whose state can be saved, and rebuilt from that state.
pub trait Persist: Sized {
    /// The saved state.
    type State: Serialize + DeserializeOwned;
    /// What rebuilding needs beyond the state (guest memory, eventfds...).
    type ConstructorArgs;
    /// Why a state cannot be restored.
    type Error;

    /// The current state.
    fn save(&self) -> Self::State;

    /// A new instance in `state`.
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error>;
}

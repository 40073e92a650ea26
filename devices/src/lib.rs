//! Emulated devices for condo guests.
//!
//! This crate owns device models and the bus that routes guest port I/O and
//! MMIO accesses to them. It knows nothing of KVM: interrupts are raised
//! through eventfds (which the VMM wires to KVM irqfds) and VM-wide events
//! (power off, reset, panic) are reported through [`ExitSignal`].

pub mod bus;
pub mod exit;
pub mod legacy;
pub mod metrics;
pub mod persist;
pub mod rate_limiter;
pub mod spawner;
pub mod sync;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};

/// Guest RAM as condo maps it: every write through vm-memory (all device
/// writes) marks its page in a dirty bitmap, for diff snapshots.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>;
pub use exit::{ExitReason, ExitSignal};

/// Binds a Unix socket at `path`. A stale socket file there (nobody
/// listening, as a killed process leaves it) is replaced; anything else at
/// `path` is an error, never removed.
pub fn bind_unix_listener(
    path: &std::path::Path,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() || UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists",
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

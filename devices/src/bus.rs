//! An address-range bus: port I/O or MMIO accesses dispatched to devices.
//!
//! The vCPU loop hands every trapped access to [`Bus::read`] / [`Bus::write`];
//! the bus finds the device whose range covers the address and calls it with
//! the offset inside that range. Ranges never overlap.

use crate::sync::lock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`].
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `offset` inside the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset` inside the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    /// Zero-length or wrapping range.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange { base: u64, len: u64 },
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default, Clone)]
pub struct Bus {
    // start -> (length, device)
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        // The device starting at or before `base` must end before it.
        if let Some((&s, &(l, _))) = self.devices.range(..=base).next_back() {
            if s + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        // No device may start inside the new range.
        if self.devices.range(base..end).next().is_some() {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&start, (len, dev)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - start;
        // The whole access must fit inside the device's range.
        if offset.checked_add(size as u64)? <= *len {
            Some((offset, dev))
        } else {
            None
        }
    }

    /// Dispatches a read. Returns false when no device covers the access;
    /// `data` is then filled with 0xff, as an open bus reads.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write. Returns false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_offsets() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(dev.lock().unwrap().last_write, Some((7, vec![7])));
        // Past the end, or straddling it.
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b, [0xff]);
        let mut w = [0u8; 2];
        assert!(!bus.read(0x3ff, &mut w));
        assert!(!bus.write(0x3f7, &[1]));
    }

    #[test]
    fn overlaps_rejected() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(d(), 0x10, 0x10).unwrap();
        assert!(bus.insert(d(), 0x18, 4).is_err());
        assert!(bus.insert(d(), 0x8, 0x9).is_err());
        assert!(bus.insert(d(), 0x0, 0x40).is_err());
        assert!(bus.insert(d(), 0x0, 0x10).is_ok());
        assert!(bus.insert(d(), 0x20, 1).is_ok());
        assert!(bus.insert(d(), 0x30, 0).is_err());
        assert!(bus.insert(d(), u64::MAX, 2).is_err());
    }
}

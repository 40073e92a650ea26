//! Every virtio device's saved state, and building a device from it.
//!
//! A device's state carries what it was built from (the image path and
//! read-only flag of a disk, the TAP name and MAC of a network interface,
//! ...) and what it holds at run time (the balloon's size). The VMM builds
//! every device through [`VirtioDeviceState`], at boot (from the
//! configuration) and on restore or migration (from the saved state), so
//! both take the same path.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::balloon::{Balloon, BalloonHandle};
use super::block::{Block, BlockError};
use super::net::{tap::TapError, Net};
use super::rng::Rng;
use super::vsock::{Vsock, VsockError};
use super::VirtioDevice;
use crate::persist::Persist;
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};

/// A disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockState {
    /// The drive's id, also the serial the guest reads (GET_ID).
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
    pub rate_limiter: RateLimiterConfig,
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    /// The interface's id.
    pub id: String,
    /// The host TAP device, reopened by name.
    pub tap: String,
    pub mac: [u8; 6],
    pub rx_rate_limiter: RateLimiterConfig,
    pub tx_rate_limiter: RateLimiterConfig,
}

/// The vsock device. Connections are not kept: a restored guest is told
/// they are gone (a transport reset), as Firecracker does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockState {
    pub cid: u32,
    pub uds_path: PathBuf,
}

/// The balloon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonState {
    /// Pages the VMM asks the guest for.
    pub target_pages: u32,
    /// Pages the guest has given.
    pub actual_pages: u32,
    pub deflate_on_oom: bool,
    pub stats_polling_interval_s: u16,
    pub free_page_reporting: bool,
}

/// The entropy device (nothing to keep).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngState {}

/// Any virtio device's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum VirtioDeviceState {
    Block(BlockState),
    Net(NetState),
    Vsock(VsockState),
    Balloon(BalloonState),
    Rng(RngState),
}

/// Why a device cannot be built from a state.
#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Net(#[from] TapError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("rate limiter: {0}")]
    RateLimiter(std::io::Error),
}

/// A shared rate limiter (changed live through the API).
pub type SharedLimiter = Arc<Mutex<RateLimiter>>;

/// What the VMM keeps of a device it built, to drive it at run time.
pub enum DeviceHandle {
    /// A disk's limiter, by drive id.
    Block {
        id: String,
        limiter: Option<SharedLimiter>,
    },
    /// An interface's receive and transmit limiters, by id.
    Net {
        id: String,
        limiters: [Option<SharedLimiter>; 2],
    },
    /// The balloon's control.
    Balloon(BalloonHandle),
    /// Nothing to drive.
    None,
}

/// A rate limiter for `c` (an unlimited one when `c` sets no bucket: it
/// can be set live).
pub(crate) fn limiter(c: &RateLimiterConfig) -> Result<RateLimiter, DeviceStateError> {
    RateLimiter::from_config(c).map_err(DeviceStateError::RateLimiter)
}

impl VirtioDeviceState {
    /// Builds the device this state describes.
    pub fn build(&self) -> Result<(Box<dyn VirtioDevice>, DeviceHandle), DeviceStateError> {
        Ok(match self {
            Self::Block(s) => {
                let b = Block::restore((), s)?;
                let handle = DeviceHandle::Block {
                    id: s.id.clone(),
                    limiter: b.rate_limiter_handle(),
                };
                (Box::new(b), handle)
            }
            Self::Net(s) => {
                let n = Net::restore((), s)?;
                let handle = DeviceHandle::Net {
                    id: s.id.clone(),
                    limiters: n.rate_limiter_handles(),
                };
                (Box::new(n), handle)
            }
            Self::Vsock(s) => (Box::new(Vsock::restore((), s)?), DeviceHandle::None),
            Self::Balloon(s) => {
                let b = Balloon::restore((), s)?;
                let handle = DeviceHandle::Balloon(b.handle());
                (Box::new(b), handle)
            }
            Self::Rng(s) => (Box::new(Rng::restore((), s)?), DeviceHandle::None),
        })
    }
}

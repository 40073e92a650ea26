//! A virtio-blk disk (Firecracker's `Drive`), from the API, the config
//! file or `--disk path=...`.

use std::path::PathBuf;

use devices::rate_limiter::RateLimiterConfig;
use serde::{Deserialize, Serialize};

use super::spec::{on_off, parse_kv, rate_limiter_key};
use super::ConfigError;

/// The longest drive id: the guest reads it as the disk's serial number
/// (virtio-blk GET_ID returns 20 bytes).
pub const MAX_DRIVE_ID_LEN: usize = 20;

/// Firecracker's `Drive`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's id; also the serial number the guest reads.
    pub drive_id: String,
    /// Raw image file (or block device).
    pub path_on_host: PathBuf,
    /// The guest's root file system: `root=/dev/vdX` goes on the kernel
    /// command line.
    pub is_root_device: bool,
    /// Refuse guest writes.
    #[serde(default)]
    pub is_read_only: bool,
    /// Not supported: refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Accepted, no effect (writes reach the image as the guest flushes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    /// Accepted, no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    /// Throttling of the guest's requests.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// vhost-user: not supported, refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// `PATCH /drives/{id}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    pub drive_id: String,
    pub path_on_host: Option<String>,
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl Drive {
    /// Checks what this drive asks for.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.drive_id.len() > MAX_DRIVE_ID_LEN {
            return Err(ConfigError::DiskId(self.drive_id.clone()));
        }
        if self.socket.is_some() {
            return Err(ConfigError::Unsupported("drives.socket (vhost-user)"));
        }
        if self.partuuid.is_some() {
            return Err(ConfigError::Unsupported("drives.partuuid"));
        }
        Ok(())
    }

    /// Parses `path=FILE[,readonly=on|off][,id=SERIAL][,root=on|off]` and
    /// rate limits with Cloud Hypervisor's keys (`bw_size=`, `ops_size=`,
    /// ...`_refill_time=` in ms, `..._one_time_burst=`); the id defaults to
    /// `condo-disk-N`.
    pub fn from_spec(spec: &str, index: usize) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Disk(format!("{spec:?}: {why}"));
        let mut d = Drive {
            drive_id: format!("condo-disk-{index}"),
            ..Drive::default()
        };
        let mut rl = RateLimiterConfig::default();
        parse_kv(spec, |k, v| {
            match k {
                "path" => d.path_on_host = PathBuf::from(v),
                "readonly" => d.is_read_only = on_off(k, v)?,
                "root" => d.is_root_device = on_off(k, v)?,
                "id" => d.drive_id = v.to_owned(),
                _ if rate_limiter_key(&mut rl, k, v)? => {}
                _ => {
                    return Err(format!(
                        "unknown key {k:?} (path, readonly, id, root, bw_*, ops_*)"
                    ))
                }
            }
            Ok(())
        })
        .map_err(bad)?;
        if d.path_on_host.as_os_str().is_empty() {
            return Err(bad("path= is required".into()));
        }
        d.rate_limiter = Some(rl);
        Ok(d)
    }
}

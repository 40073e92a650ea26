//! The virtio-vsock device and its host Unix socket (Firecracker's
//! `Vsock`), from the API, the config file or `--vsock cid=...`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::spec::{number, parse_kv};
use super::ConfigError;

/// Firecracker's `Vsock`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 and up; 0-2 and `u32::MAX` are reserved).
    pub guest_cid: u32,
    /// Host Unix socket: host programs connect here; guest connections to
    /// port P reach `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// Firecracker's legacy id: accepted, unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

impl VsockConfig {
    /// Checks the CID.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(3..u32::MAX).contains(&self.guest_cid) {
            return Err(ConfigError::Vsock(format!(
                "guest CID {} is reserved (use 3 to {})",
                self.guest_cid,
                u32::MAX - 1
            )));
        }
        Ok(())
    }

    /// Parses `cid=N,socket=PATH` (`uds_path=` is accepted for `socket=`).
    pub fn from_spec(spec: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Vsock(format!("{spec:?}: {why}"));
        let mut cid = None;
        let mut uds_path = None;
        parse_kv(spec, |k, v| {
            match k {
                "cid" => cid = Some(number(k, v)?),
                "socket" | "uds_path" => uds_path = Some(PathBuf::from(v)),
                _ => return Err(format!("unknown key {k:?} (cid, socket)")),
            }
            Ok(())
        })
        .map_err(bad)?;
        Ok(Self {
            guest_cid: cid.ok_or_else(|| bad("cid= is required".into()))?,
            uds_path: uds_path.ok_or_else(|| bad("socket= is required".into()))?,
            vsock_id: None,
        })
    }
}

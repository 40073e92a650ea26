//! The virtio-balloon device (Firecracker's `Balloon`), from the API, the
//! config file or `--balloon size_mib=...`.

use serde::{Deserialize, Serialize};

use super::spec::{number, on_off, parse_kv};
use super::ConfigError;

/// Firecracker's `Balloon`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// Target balloon size: guest memory the guest gives back, in MiB.
    pub amount_mib: u32,
    /// Let the guest take memory back from the balloon when it runs out.
    pub deflate_on_oom: bool,
    /// Seconds between guest statistics updates; 0 disables statistics.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Not supported: refused when set.
    #[serde(default)]
    pub free_page_hinting: bool,
    /// The guest reports free pages, which condo returns to the host.
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// `PATCH /balloon`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

impl BalloonConfig {
    /// Checks what the balloon asks for (its size against guest memory is
    /// the VM's check).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.free_page_hinting {
            return Err(ConfigError::Unsupported("balloon.free_page_hinting"));
        }
        Ok(())
    }

    /// Parses `size_mib=N[,deflate_on_oom=on][,stats_s=N][,free_page_reporting=on]`.
    pub fn from_spec(spec: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Balloon(format!("{spec:?}: {why}"));
        let mut b = Self::default();
        parse_kv(spec, |k, v| {
            match k {
                "size_mib" | "amount_mib" => b.amount_mib = number(k, v)?,
                "deflate_on_oom" => b.deflate_on_oom = on_off(k, v)?,
                "stats_s" | "stats_polling_interval_s" => {
                    b.stats_polling_interval_s = number(k, v)?
                }
                "free_page_reporting" => b.free_page_reporting = on_off(k, v)?,
                _ => {
                    return Err(format!(
                        "unknown key {k:?} (size_mib, deflate_on_oom, stats_s, free_page_reporting)"
                    ))
                }
            }
            Ok(())
        })
        .map_err(bad)?;
        Ok(b)
    }
}

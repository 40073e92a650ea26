//! The virtio-rng device (Firecracker's `EntropyDevice`).

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Firecracker's `EntropyDevice`. The rate limiter is not implemented yet
/// and is refused rather than ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}

impl EntropyConfig {
    /// Refuses what condo does not implement.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.rate_limiter.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ConfigError::Unsupported("entropy.rate_limiter"));
        }
        Ok(())
    }
}

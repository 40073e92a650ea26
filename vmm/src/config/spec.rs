//! The command line's `key=value,key=value` device specs (Cloud
//! Hypervisor's style): splitting, on/off values and rate limiter keys.
//! Each resource's own `from_spec` decides which keys it takes.

use devices::rate_limiter::{BucketConfig, RateLimiterConfig};

/// Splits a `key=value,key=value` spec and hands each pair to `f`.
pub(crate) fn parse_kv(
    spec: &str,
    mut f: impl FnMut(&str, &str) -> Result<(), String>,
) -> Result<(), String> {
    for part in spec.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        f(k, v)?;
    }
    Ok(())
}

/// `on`/`off` (or true/false, yes/no) for key `k`.
pub(crate) fn on_off(k: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{k} must be on or off")),
    }
}

/// A number for key `k`.
pub(crate) fn number<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("bad {k} {v:?}"))
}

/// Cloud Hypervisor's rate limiter keys in a device spec: `bw_size`,
/// `bw_one_time_burst`, `bw_refill_time`, `ops_size`, `ops_one_time_burst`,
/// `ops_refill_time` (refill times in ms). Returns false for other keys.
pub(crate) fn rate_limiter_key(
    rl: &mut RateLimiterConfig,
    k: &str,
    v: &str,
) -> Result<bool, String> {
    let Some((bucket, field)) = k.split_once('_') else {
        return Ok(false);
    };
    let slot = match bucket {
        "bw" => &mut rl.bandwidth,
        "ops" => &mut rl.ops,
        _ => return Ok(false),
    };
    let n: u64 = number(k, v)?;
    let b = slot.get_or_insert_with(BucketConfig::default);
    match field {
        "size" => b.size = n,
        "one_time_burst" => b.one_time_burst = Some(n),
        "refill_time" => b.refill_time = n,
        _ => return Ok(false),
    }
    Ok(true)
}

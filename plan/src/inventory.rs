//! The host inventory file: which hosts exist, their size and power curve,
//! and optionally where each guest runs now. JSON, documented in
//! docs/plan.md:
//!
//! ```json
//! {"hosts": [{"name": "rack1-", "count": 4, "cores": 2, "mips_per_core": 2660,
//!             "ram_mb": 4096, "bw_mbps": 1000, "idle_watts": 93.7, "max_watts": 135}],
//!  "placement": {"web1": "rack1-0"}}
//! ```
//!
//! A host entry with `count` > 1 stands for that many hosts named
//! `name0`, `name1`, ...; `power_watts` (11 values, 0 % to 100 % load)
//! may replace `idle_watts`/`max_watts`. Untrusted input: errors name the
//! file and, for syntax errors, the line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{HostSpec, PowerModel};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    name: String,
    #[serde(default = "one")]
    count: u32,
    cores: u32,
    mips_per_core: f64,
    ram_mb: u32,
    #[serde(default = "gbit")]
    bw_mbps: f64,
    idle_watts: Option<f64>,
    max_watts: Option<f64>,
    power_watts: Option<Vec<f64>>,
}

fn one() -> u32 {
    1
}

fn gbit() -> f64 {
    1000.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    hosts: Vec<HostEntry>,
    #[serde(default)]
    placement: HashMap<String, String>,
}

/// A parsed inventory.
#[derive(Clone, Debug, PartialEq)]
pub struct Inventory {
    pub hosts: Vec<HostSpec>,
    /// Guest name -> index into `hosts`.
    pub placement: HashMap<String, usize>,
}

/// Errors reading an inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}:{1}: {2}")]
    Syntax(PathBuf, usize, String),
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
}

/// Most hosts an inventory may describe.
const MAX_HOSTS: u64 = 1_000_000;

/// Parses inventory text; `path` only names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
    let f: File = serde_json::from_str(text)
        .map_err(|e| InventoryError::Syntax(path.to_path_buf(), e.line(), e.to_string()))?;
    let bad = |m: String| InventoryError::Invalid(path.to_path_buf(), m);
    let total: u64 = f.hosts.iter().map(|h| u64::from(h.count)).sum();
    if total == 0 {
        return Err(bad("no hosts".into()));
    }
    if total > MAX_HOSTS {
        return Err(bad(format!("{total} hosts; at most {MAX_HOSTS}")));
    }
    let mut hosts = Vec::new();
    for h in &f.hosts {
        let pos = |x: f64| x.is_finite() && x > 0.0;
        if h.cores == 0 || !pos(h.mips_per_core) || h.ram_mb == 0 || !pos(h.bw_mbps) {
            return Err(bad(format!(
                "host {:?}: cores, mips_per_core, ram_mb and bw_mbps must be positive",
                h.name
            )));
        }
        let power = match (&h.power_watts, h.idle_watts, h.max_watts) {
            (Some(w), None, None) => {
                let watts: [f64; 11] = w.as_slice().try_into().map_err(|_| {
                    bad(format!(
                        "host {:?}: power_watts needs 11 values (0 %, 10 %, ... 100 %), has {}",
                        h.name,
                        w.len()
                    ))
                })?;
                PowerModel { watts }
            }
            (None, Some(i), Some(m)) => PowerModel::linear(i, m),
            (None, None, None) => {
                return Err(bad(format!(
                    "host {:?}: give idle_watts and max_watts, or power_watts",
                    h.name
                )))
            }
            _ => {
                return Err(bad(format!(
                    "host {:?}: give either idle_watts and max_watts, or power_watts",
                    h.name
                )))
            }
        };
        if power.watts.iter().any(|w| !w.is_finite() || *w < 0.0)
            || power.watts.windows(2).any(|p| p[1] < p[0])
        {
            return Err(bad(format!(
                "host {:?}: power must be non-negative and not fall with load",
                h.name
            )));
        }
        for i in 0..h.count {
            let name = if h.count == 1 {
                h.name.clone()
            } else {
                format!("{}{i}", h.name)
            };
            hosts.push(HostSpec {
                name,
                cores: h.cores,
                mips_per_core: h.mips_per_core,
                ram_mb: h.ram_mb,
                bw_kbps: h.bw_mbps * 1000.0,
                power: power.clone(),
            });
        }
    }
    let index: HashMap<&str, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    if index.len() != hosts.len() {
        return Err(bad("host names are not unique".into()));
    }
    let mut placement = HashMap::new();
    for (guest, host) in &f.placement {
        let i = index.get(host.as_str()).ok_or_else(|| {
            bad(format!(
                "guest {guest:?} is placed on unknown host {host:?}"
            ))
        })?;
        placement.insert(guest.clone(), *i);
    }
    Ok(Inventory { hosts, placement })
}

/// Reads an inventory file.
pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| InventoryError::Io(path.to_path_buf(), e))?;
    parse(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_placement() {
        let text = r#"{"hosts": [{"name": "g5-", "count": 3, "cores": 2, "mips_per_core": 2660,
            "ram_mb": 4096, "idle_watts": 93.7, "max_watts": 135}],
            "placement": {"web1": "g5-2"}}"#;
        let inv = match parse(Path::new("inv.json"), text) {
            Ok(i) => i,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(inv.hosts.len(), 3);
        assert_eq!(inv.hosts[2].name, "g5-2");
        assert_eq!(inv.hosts[0].bw_kbps, 1_000_000.0);
        assert_eq!(inv.placement.get("web1"), Some(&2));
    }

    fn err(text: &str) -> String {
        parse(Path::new("inv.json"), text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn malformed_inventories_are_one_clear_error() {
        assert!(err("{\n\"hosts\": [\n}").starts_with("inv.json:3: "));
        assert_eq!(err(r#"{"hosts": []}"#), "inv.json: no hosts");
        assert!(
            err(r#"{"hosts": [{"name": "a", "cores": 2, "mips_per_core": 1, "ram_mb": 1}]}"#)
                .contains("idle_watts")
        );
        assert!(err(r#"{"hosts": [{"name": "a", "cores": 2, "mips_per_core": 1, "ram_mb": 1, "power_watts": [1,2]}]}"#)
            .contains("11 values"));
        assert!(err(r#"{"hosts": [{"name": "a", "cores": 1, "mips_per_core": 1, "ram_mb": 1, "idle_watts": 1, "max_watts": 2}], "placement": {"g": "b"}}"#)
            .contains("unknown host \"b\""));
    }
}

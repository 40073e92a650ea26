//! The daemon's side of a guest's VMM: requests on its Firecracker-style
//! API socket (as documented in README.md and
//! shared/ref/firecracker-api.yaml). The daemon drives a VMM only through
//! this and `condo jail`, never through the `vmm` crate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::http;

/// Deadline of one API request (a snapshot of a large guest takes a while
/// in the nested test host).
const TIMEOUT: Duration = Duration::from_secs(120);

/// A VMM's API socket.
#[derive(Debug, Clone)]
pub struct VmmApi {
    sock: PathBuf,
}

/// The VMM counters the daemon accounts (totals since the VMM started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmmCounters {
    pub disk_rd: u64,
    pub disk_wr: u64,
    pub net_rx: u64,
    pub net_tx: u64,
}

impl VmmApi {
    pub fn new(sock: &Path) -> Self {
        Self {
            sock: sock.to_path_buf(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>, t: Duration) -> Result<String> {
        let r = http::request(&self.sock, method, path, body, t)
            .map_err(|e| Error::Other(format!("VMM API {method} {path}: {e}")))?;
        if (200..300).contains(&r.status) {
            Ok(r.body)
        } else {
            let msg = serde_json::from_str::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["fault_message"].as_str().map(str::to_owned))
                .unwrap_or(r.body);
            Err(Error::Other(format!(
                "VMM API {method} {path}: {} {msg}",
                r.status
            )))
        }
    }

    /// Whether the VMM answers (`GET /`), within `t`.
    pub fn answers(&self, t: Duration) -> bool {
        self.call("GET", "/", None, t).is_ok()
    }

    pub fn ctrl_alt_del(&self) -> Result<()> {
        self.call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#),
            TIMEOUT,
        )
        .map(|_| ())
    }

    pub fn pause(&self) -> Result<()> {
        self.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#), TIMEOUT)
            .map(|_| ())
    }

    pub fn resume(&self) -> Result<()> {
        self.call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#), TIMEOUT)
            .map(|_| ())
    }

    /// A full snapshot of the paused VM into `state` and `mem` (paths as
    /// the VMM sees them).
    pub fn snapshot_create(&self, state: &str, mem: &str) -> Result<()> {
        let body = serde_json::json!({
            "snapshot_path": state,
            "mem_file_path": mem,
            "snapshot_type": "Full",
        })
        .to_string();
        self.call("PUT", "/snapshot/create", Some(&body), TIMEOUT)
            .map(|_| ())
    }

    /// Restores a fresh VMM from a snapshot and resumes it.
    pub fn snapshot_load(&self, state: &str, mem: &str) -> Result<()> {
        let body = serde_json::json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": mem},
            "resume_vm": true,
        })
        .to_string();
        self.call("PUT", "/snapshot/load", Some(&body), TIMEOUT)
            .map(|_| ())
    }

    /// The block and network byte counters (`GET /metrics`).
    pub fn counters(&self, t: Duration) -> Result<VmmCounters> {
        let text = self.call("GET", "/metrics", None, t)?;
        Ok(parse_counters(&text))
    }
}

/// Picks the counters out of the VMM's Prometheus text.
pub fn parse_counters(text: &str) -> VmmCounters {
    let mut c = VmmCounters::default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(name), Some(v)) = (f.next(), f.next()) else {
            continue;
        };
        let Ok(v) = v.parse::<u64>() else { continue };
        match name {
            "condo_block_read_bytes" => c.disk_rd = v,
            "condo_block_write_bytes" => c.disk_wr = v,
            "condo_net_rx_bytes_count" => c.net_rx = v,
            "condo_net_tx_bytes_count" => c.net_tx = v,
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_prometheus_text() {
        let t = "# TYPE condo_block_read_bytes counter\ncondo_block_read_bytes 512\n\
                 condo_net_tx_bytes_count 9\ncondo_net_rx_bytes_count x\n";
        assert_eq!(
            parse_counters(t),
            VmmCounters {
                disk_rd: 512,
                net_tx: 9,
                ..VmmCounters::default()
            }
        );
    }
}

//! The VMM's metrics: Firecracker's JSON lines, flushed to the file or
//! pipe set by `PUT /metrics` every minute and on `FlushMetrics`, and the
//! same counters as Prometheus text (`GET /metrics`).

use devices::sync::lock;
use std::io::Write;
use std::sync::Mutex;

use devices::metrics::{Counter, METRICS as DEVICES};

/// vCPU exits.
pub struct VcpuMetrics {
    pub exit_io_in: Counter,
    pub exit_io_out: Counter,
    pub exit_mmio_read: Counter,
    pub exit_mmio_write: Counter,
    pub failures: Counter,
}

/// API requests.
pub struct ApiMetrics {
    pub requests_count: Counter,
    pub failed_requests_count: Counter,
}

/// VM lifecycle.
pub struct VmmMetrics {
    pub pause_count: Counter,
    pub resume_count: Counter,
    pub snapshot_create_count: Counter,
    pub snapshot_load_count: Counter,
}

/// Live migrations sent.
pub struct MigrationMetrics {
    pub count: Counter,
    pub failures: Counter,
    pub bytes_sent: Counter,
    pub passes: Counter,
    pub downtime_ms: Counter,
    pub total_ms: Counter,
}

/// The VMM's own counters.
pub struct Metrics {
    pub vcpu: VcpuMetrics,
    pub api_server: ApiMetrics,
    pub vmm: VmmMetrics,
    pub migration: MigrationMetrics,
}

/// The process's counters.
pub static METRICS: Metrics = Metrics {
    vcpu: VcpuMetrics {
        exit_io_in: Counter::new(),
        exit_io_out: Counter::new(),
        exit_mmio_read: Counter::new(),
        exit_mmio_write: Counter::new(),
        failures: Counter::new(),
    },
    api_server: ApiMetrics {
        requests_count: Counter::new(),
        failed_requests_count: Counter::new(),
    },
    vmm: VmmMetrics {
        pause_count: Counter::new(),
        resume_count: Counter::new(),
        snapshot_create_count: Counter::new(),
        snapshot_load_count: Counter::new(),
    },
    migration: MigrationMetrics {
        count: Counter::new(),
        failures: Counter::new(),
        bytes_sent: Counter::new(),
        passes: Counter::new(),
        downtime_ms: Counter::new(),
        total_ms: Counter::new(),
    },
};

type Group<'a> = (&'static str, Vec<(&'static str, &'a Counter)>);

fn groups() -> Vec<Group<'static>> {
    let m = &METRICS;
    let mut g = vec![
        (
            "vcpu",
            vec![
                ("exit_io_in", &m.vcpu.exit_io_in),
                ("exit_io_out", &m.vcpu.exit_io_out),
                ("exit_mmio_read", &m.vcpu.exit_mmio_read),
                ("exit_mmio_write", &m.vcpu.exit_mmio_write),
                ("failures", &m.vcpu.failures),
            ],
        ),
        (
            "api_server",
            vec![
                ("requests_count", &m.api_server.requests_count),
                ("failed_requests_count", &m.api_server.failed_requests_count),
            ],
        ),
        (
            "vmm",
            vec![
                ("pause_count", &m.vmm.pause_count),
                ("resume_count", &m.vmm.resume_count),
                ("snapshot_create_count", &m.vmm.snapshot_create_count),
                ("snapshot_load_count", &m.vmm.snapshot_load_count),
            ],
        ),
        (
            "migration",
            vec![
                ("count", &m.migration.count),
                ("failures", &m.migration.failures),
                ("bytes_sent", &m.migration.bytes_sent),
                ("passes", &m.migration.passes),
                ("downtime_ms", &m.migration.downtime_ms),
                ("total_ms", &m.migration.total_ms),
            ],
        ),
    ];
    g.extend(DEVICES.groups());
    g
}

/// One Firecracker-style JSON line: each counter's increase since the
/// last line.
pub fn json_line() -> String {
    let mut v = serde_json::Map::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    v.insert("utc_timestamp_ms".into(), now.into());
    for (group, counters) in groups() {
        let g: serde_json::Map<String, serde_json::Value> = counters
            .into_iter()
            .map(|(n, c)| (n.to_owned(), c.take_delta().into()))
            .collect();
        v.insert(group.into(), g.into());
    }
    serde_json::Value::Object(v).to_string()
}

/// Every counter's total in Prometheus' text format.
pub fn prometheus() -> String {
    let mut out = String::new();
    for (group, counters) in groups() {
        for (name, c) in counters {
            out.push_str(&format!(
                "# TYPE condo_{group}_{name} counter\ncondo_{group}_{name} {}\n",
                c.total()
            ));
        }
    }
    out
}

static SINK: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Sends metrics lines to `path` (appended; a file or a named pipe).
pub fn set_path(path: &std::path::Path) -> std::io::Result<()> {
    let f = crate::logger::open_append(path)?;
    *lock(&SINK) = Some(f);
    Ok(())
}

/// Writes one line to the metrics destination; false when none is set.
pub fn flush() -> std::io::Result<bool> {
    let mut sink = lock(&SINK);
    let Some(f) = sink.as_mut() else {
        return Ok(false);
    };
    let mut line = json_line();
    line.push('\n');
    f.write_all(line.as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_prometheus_carry_the_counters() {
        METRICS.vcpu.exit_io_out.add(3);
        let p = prometheus();
        assert!(p.contains("condo_vcpu_exit_io_out "), "{p}");
        assert!(p.contains("condo_block_read_bytes "), "{p}");
        let j: serde_json::Value = serde_json::from_str(&json_line()).unwrap();
        assert!(j["vcpu"]["exit_io_out"].as_u64().is_some());
        assert!(j["net"]["tx_bytes_count"].as_u64().is_some());
        assert!(j["utc_timestamp_ms"].as_u64().unwrap() > 0);
    }
}

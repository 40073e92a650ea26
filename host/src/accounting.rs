//! Utilization accounting: every guest with a process is sampled each
//! interval (default 1 s): CPU time from its cgroup, resident memory of
//! its VMM and the guest RAM it has touched (from /proc), disk and network
//! bytes from the VMM's metrics. Samples are stored at full resolution
//! for an hour and as one-minute aggregates for a week (both
//! configurable), and served as a guest's history (`GET
//! /guests/{name}/usage`), as Prometheus text (`GET /metrics`, a label
//! per guest) and as a utilization trace for the consolidation planner
//! (CSV `guest,vcpus,mem_mib,time_s,cpu_pct`). Host utilization is the
//! guests' CPU time over the host's capacity.
//!
//! Every record covers the `dur_ms` starting at its `t_ms`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::db::{now_ms, Usage};
use crate::error::{Error, Invalid, Result};
use crate::manager::{jail_id, GuestStats, Manager};
use crate::model::GuestState;
use crate::procfs;
use crate::vmm::{VmmApi, VmmCounters};

/// Resolution of the aggregated records.
pub const MINUTE_MS: i64 = 60_000;
/// Deadline of a VMM's metrics request during sampling.
const METRICS_TIMEOUT: Duration = Duration::from_millis(300);
/// The touched guest RAM (a walk of /proc/PID/smaps) is read every this
/// many samples (at least).
const TOUCHED_EVERY: u64 = 5;
/// Guests whose VMM metrics one sample asks for (one request each), and
/// whose smaps one sample walks: with more guests, each is asked every
/// few samples, spread over the ticks, so that the daemon's own cost per
/// second stays flat with the number of guests.
const METRICS_PER_SAMPLE: u64 = 100;
const SMAPS_PER_SAMPLE: u64 = 20;

/// What the previous sample of a guest read.
struct Last {
    vmm_pid: i32,
    t_ms: i64,
    cpu_us: u64,
    counters: VmmCounters,
    touched: u64,
}

/// The sampler's memory between ticks.
#[derive(Default)]
pub struct Sampler {
    last: HashMap<i64, Last>,
    /// Per guest, the current minute's aggregate.
    minute: HashMap<i64, Usage>,
    tick: u64,
    last_prune_ms: i64,
}

impl Sampler {
    /// Samples every guest once and stores what changed.
    pub fn sample(&mut self, m: &Manager) {
        self.tick += 1;
        let rows = match m.db().guests() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("accounting: {e}");
                return;
            }
        };
        let now = now_ms();
        let live = rows
            .iter()
            .filter(|g| matches!(g.state, GuestState::Running | GuestState::Paused))
            .count() as u64;
        let metrics_every = live.div_ceil(METRICS_PER_SAMPLE).max(1);
        let touched_every = live.div_ceil(SMAPS_PER_SAMPLE).max(TOUCHED_EVERY);
        let mut raw = Vec::new();
        let mut minutes = Vec::new();
        let mut stats = HashMap::new();
        for g in rows
            .iter()
            .filter(|g| matches!(g.state, GuestState::Running | GuestState::Paused))
        {
            let Some(jail) = g.pid else { continue };
            let Some(vmm) = procfs::first_child(jail) else {
                continue;
            };
            let jid = jail_id(g.id);
            let cpu_us = m.cgroups.cpu_us(&jid).unwrap_or(0);
            let rss = procfs::rss_bytes(vmm).unwrap_or(0);
            let prev = self.last.get(&g.id).filter(|l| l.vmm_pid == vmm);
            let turn = |every: u64| (self.tick + g.id as u64) % every == 0;
            let touched = if prev.is_none() || turn(touched_every) {
                guest_touched(vmm, g.spec.memory_mib)
            } else {
                prev.map_or(0, |l| l.touched)
            };
            let asked = if prev.is_none() || turn(metrics_every) {
                VmmApi::new(&m.paths.api_sock(g.id))
                    .counters(METRICS_TIMEOUT)
                    .ok()
            } else {
                None
            };
            let counters = asked
                .or_else(|| prev.map(|l| l.counters))
                .unwrap_or_default();
            let mut st = GuestStats {
                t_ms: now,
                cpu_time_us: cpu_us,
                cpu_pct: 0.0,
                rss_bytes: rss,
                touched_bytes: touched,
                disk_read_bytes: counters.disk_rd,
                disk_write_bytes: counters.disk_wr,
                net_rx_bytes: counters.net_rx,
                net_tx_bytes: counters.net_tx,
                oom_kills: m.cgroups.oom_events(&jid).1,
            };
            if let Some(l) = prev {
                let dur = (now - l.t_ms).max(1);
                let d = |a: u64, b: u64| a.saturating_sub(b) as i64;
                let u = Usage {
                    t_ms: l.t_ms,
                    dur_ms: dur,
                    cpu_us: d(cpu_us, l.cpu_us),
                    rss: rss as i64,
                    touched: touched as i64,
                    disk_rd: d(counters.disk_rd, l.counters.disk_rd),
                    disk_wr: d(counters.disk_wr, l.counters.disk_wr),
                    net_rx: d(counters.net_rx, l.counters.net_rx),
                    net_tx: d(counters.net_tx, l.counters.net_tx),
                };
                st.cpu_pct = u.cpu_us as f64 / (dur as f64 * 1000.0) * 100.0;
                self.aggregate(g.id, &u, &mut minutes);
                raw.push((g.id, u));
            }
            stats.insert(g.id, st);
            self.last.insert(
                g.id,
                Last {
                    vmm_pid: vmm,
                    t_ms: now,
                    cpu_us,
                    counters,
                    touched,
                },
            );
        }
        self.last.retain(|id, _| stats.contains_key(id));
        *m.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
        let mut db = m.db();
        if let Err(e) = db
            .insert_usage(m.cfg.sample_ms as i64, &raw)
            .and_then(|()| db.insert_usage(MINUTE_MS, &minutes))
        {
            tracing::error!("accounting: cannot store samples: {e}");
        }
        if now - self.last_prune_ms >= MINUTE_MS {
            self.last_prune_ms = now;
            let r = db
                .prune_usage(m.cfg.sample_ms as i64, now - m.cfg.keep_raw_s as i64 * 1000)
                .and_then(|()| db.prune_usage(MINUTE_MS, now - m.cfg.keep_minutes_s as i64 * 1000))
                .and_then(|()| db.prune_usage_guests());
            if let Err(e) = r {
                tracing::error!("accounting: cannot prune samples: {e}");
            }
        }
    }

    /// Adds a sample to its guest's minute; a finished minute becomes a
    /// record (pushed to `out`, marked by a whole-minute start and length).
    fn aggregate(&mut self, id: i64, u: &Usage, out: &mut Vec<(i64, Usage)>) {
        let minute = u.t_ms - u.t_ms.rem_euclid(MINUTE_MS);
        let acc = self.minute.entry(id).or_insert(Usage {
            t_ms: minute,
            ..Usage::default()
        });
        if acc.t_ms != minute {
            let mut done = *acc;
            done.dur_ms = MINUTE_MS;
            out.push((id, done));
            *acc = Usage {
                t_ms: minute,
                ..Usage::default()
            };
        }
        acc.cpu_us += u.cpu_us;
        acc.disk_rd += u.disk_rd;
        acc.disk_wr += u.disk_wr;
        acc.net_rx += u.net_rx;
        acc.net_tx += u.net_tx;
        acc.rss = acc.rss.max(u.rss);
        acc.touched = acc.touched.max(u.touched);
        acc.dur_ms += u.dur_ms;
    }
}

/// Guest RAM the VMM `pid` has resident: its mappings of at least half of
/// the guest's memory (or 3 GiB, where RAM is split around the MMIO gap).
pub fn guest_touched(pid: i32, mem_mib: u64) -> u64 {
    let min = (mem_mib << 20).min(3 << 30) / 2;
    procfs::memory_detail(pid, min).map_or(0, |d| d.0)
}

/// Runs the sampler until `stop` is set.
pub fn run(m: Arc<Manager>, stop: Arc<AtomicBool>) {
    let mut s = Sampler::default();
    let every = Duration::from_millis(m.cfg.sample_ms);
    let mut next = Instant::now() + every;
    while !stop.load(Ordering::Relaxed) {
        s.sample(&m);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += every;
        if next < Instant::now() {
            next = Instant::now() + every;
        }
    }
}

/// Parses a `since`: Unix seconds, or a time ago with a unit (`90s`,
/// `10m`, `2h`, `7d`). Returns milliseconds since the epoch.
pub fn parse_since(s: &str, now_ms: i64) -> std::result::Result<i64, Invalid> {
    let bad = || {
        Invalid(format!(
            "since {s:?}: Unix seconds, or a time ago like 10m, 2h, 7d"
        ))
    };
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1000).filter(|v| *v >= 0).ok_or_else(bad);
    }
    // The unit is the last character, which may be any character.
    let unit = s.chars().next_back().ok_or_else(bad)?;
    let n: i64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(bad()),
    };
    let ago = n
        .checked_mul(mult * 1000)
        .filter(|v| *v >= 0)
        .ok_or_else(bad)?;
    Ok((now_ms - ago).max(0))
}

/// One record as `GET /guests/{name}/usage` shows it.
#[derive(Debug, Serialize)]
pub struct UsagePoint {
    pub t_ms: i64,
    pub dur_ms: i64,
    /// CPU use in % of one host CPU.
    pub cpu_pct: f64,
    pub cpu_us: i64,
    pub rss_bytes: i64,
    pub touched_bytes: i64,
    pub disk_read_bytes: i64,
    pub disk_write_bytes: i64,
    pub net_rx_bytes: i64,
    pub net_tx_bytes: i64,
}

/// A guest's usage history.
#[derive(Debug, Serialize)]
pub struct UsageHistory {
    pub guest: String,
    pub resolution_ms: i64,
    pub samples: Vec<UsagePoint>,
}

/// A guest's records since `since_ms`: full resolution when they reach
/// that far back, one-minute aggregates otherwise (or as `res` asks:
/// "raw" or "minute").
pub fn history(m: &Manager, name: &str, since_ms: i64, res: Option<&str>) -> Result<UsageHistory> {
    let g = m.db().guest(name)?;
    let raw_ms = m.cfg.sample_ms as i64;
    let res_ms = match res {
        Some("raw") => raw_ms,
        Some("minute") => MINUTE_MS,
        None if since_ms >= now_ms() - m.cfg.keep_raw_s as i64 * 1000 => raw_ms,
        None => MINUTE_MS,
        Some(o) => return Err(Error::invalid(format!("resolution {o:?}: raw or minute"))),
    };
    let rows = m.db().usage(g.id, res_ms, since_ms)?;
    Ok(UsageHistory {
        guest: g.name,
        resolution_ms: res_ms,
        samples: rows
            .into_iter()
            .map(|u| UsagePoint {
                t_ms: u.t_ms,
                dur_ms: u.dur_ms,
                cpu_pct: u.cpu_us as f64 / (u.dur_ms.max(1) as f64 * 1000.0) * 100.0,
                cpu_us: u.cpu_us,
                rss_bytes: u.rss,
                touched_bytes: u.touched,
                disk_read_bytes: u.disk_rd,
                disk_write_bytes: u.disk_wr,
                net_rx_bytes: u.net_rx,
                net_tx_bytes: u.net_tx,
            })
            .collect(),
    })
}

/// Longest and shortest trace interval, seconds.
pub const TRACE_INTERVAL_S: std::ops::RangeInclusive<u64> = 1..=86400;

/// The utilization trace (the consolidation planner's input): CSV
/// `guest,vcpus,mem_mib,time_s,cpu_pct`, one row per guest per interval
/// from its first record to its last (0 where it had none), `time_s` the
/// seconds since the trace start (a multiple of the interval), `cpu_pct`
/// the guest's CPU use in % of its vCPUs (0-100), grouped by guest and in
/// time order. Intervals that are whole minutes use the one-minute
/// aggregates, others the full-resolution samples.
pub fn trace(m: &Manager, interval_s: u64, since_ms: i64) -> Result<String> {
    if !TRACE_INTERVAL_S.contains(&interval_s) {
        return Err(Error::invalid(format!(
            "interval {interval_s} s: between {} and {}",
            TRACE_INTERVAL_S.start(),
            TRACE_INTERVAL_S.end()
        )));
    }
    let iv = interval_s as i64 * 1000;
    let res_ms = if iv % MINUTE_MS == 0 {
        MINUTE_MS
    } else {
        m.cfg.sample_ms as i64
    };
    let guests = m.db().usage_guests()?;
    let mut series: Vec<(String, u32, u64, BTreeMap<i64, i64>)> = Vec::new();
    let mut start = i64::MAX;
    for (id, name, vcpus, mem) in &guests {
        let rows = m.db().usage(*id, res_ms, since_ms)?;
        if rows.is_empty() {
            continue;
        }
        let mut buckets = BTreeMap::new();
        for u in rows {
            let b = u.t_ms - u.t_ms.rem_euclid(iv);
            *buckets.entry(b).or_insert(0) += u.cpu_us;
        }
        if let Some((&first, _)) = buckets.iter().next() {
            start = start.min(first);
        }
        series.push((name.clone(), *vcpus, *mem, buckets));
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    for (n, ..) in &series {
        *names.entry(n.clone()).or_default() += 1;
    }
    let mut out = String::from("guest,vcpus,mem_mib,time_s,cpu_pct\n");
    for (i, (name, vcpus, mem, buckets)) in series.iter().enumerate() {
        // A name used by two guests over time: the later ones get a suffix.
        let label = if names.get(name).copied().unwrap_or(0) > 1 {
            format!("{name}.{i}")
        } else {
            name.clone()
        };
        let (Some((&first, _)), Some((&last, _))) =
            (buckets.iter().next(), buckets.iter().next_back())
        else {
            continue;
        };
        let mut t = first;
        while t <= last {
            let cpu = buckets.get(&t).copied().unwrap_or(0);
            let pct = (cpu as f64 / (iv as f64 * 1000.0 * f64::from((*vcpus).max(1))) * 100.0)
                .clamp(0.0, 100.0);
            let _ = writeln!(out, "{label},{vcpus},{mem},{},{pct:.2}", (t - start) / 1000);
            t += iv;
        }
    }
    Ok(out)
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A per-guest metric: name, type, help, and how to read it from a sample.
type Metric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&GuestStats) -> f64,
);

/// Every guest's last sample and the host's totals as Prometheus text.
pub fn prometheus(m: &Manager) -> Result<String> {
    let rows = m.db().guests()?;
    let stats = m.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let host = m.host_report()?;
    let mut out = String::new();
    let metrics: [Metric; 8] = [
        (
            "condo_guest_cpu_seconds_total",
            "counter",
            "CPU time of the guest's VMM since it started",
            |s| s.cpu_time_us as f64 / 1e6,
        ),
        (
            "condo_guest_memory_rss_bytes",
            "gauge",
            "resident memory of the guest's VMM",
            |s| s.rss_bytes as f64,
        ),
        (
            "condo_guest_memory_touched_bytes",
            "gauge",
            "guest RAM the guest has touched",
            |s| s.touched_bytes as f64,
        ),
        (
            "condo_guest_disk_read_bytes_total",
            "counter",
            "bytes the guest read from its disks",
            |s| s.disk_read_bytes as f64,
        ),
        (
            "condo_guest_disk_written_bytes_total",
            "counter",
            "bytes the guest wrote to its disks",
            |s| s.disk_write_bytes as f64,
        ),
        (
            "condo_guest_net_rx_bytes_total",
            "counter",
            "bytes the guest received",
            |s| s.net_rx_bytes as f64,
        ),
        (
            "condo_guest_net_tx_bytes_total",
            "counter",
            "bytes the guest sent",
            |s| s.net_tx_bytes as f64,
        ),
        (
            "condo_guest_oom_kills_total",
            "counter",
            "processes killed at the guest's memory limit",
            |s| s.oom_kills as f64,
        ),
    ];
    for (name, kind, help, f) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for g in &rows {
            if let Some(s) = stats.get(&g.id) {
                let _ = writeln!(
                    out,
                    "{name}{{guest=\"{}\"}} {}",
                    escape_label(&g.name),
                    f(s)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP condo_guest_up 1 when the guest has a running VMM\n# TYPE condo_guest_up gauge"
    );
    for g in &rows {
        let up = u8::from(g.state.has_process());
        let _ = writeln!(
            out,
            "condo_guest_up{{guest=\"{}\",state=\"{}\"}} {up}",
            escape_label(&g.name),
            g.state
        );
    }
    let _ = writeln!(out, "# TYPE condo_guest_vcpus gauge");
    for g in &rows {
        let _ = writeln!(
            out,
            "condo_guest_vcpus{{guest=\"{}\"}} {}",
            escape_label(&g.name),
            g.spec.vcpus
        );
    }
    let _ = writeln!(out, "# TYPE condo_guest_memory_bytes gauge");
    for g in &rows {
        let _ = writeln!(
            out,
            "condo_guest_memory_bytes{{guest=\"{}\"}} {}",
            escape_label(&g.name),
            g.spec.memory_mib << 20
        );
    }
    for (name, v) in [
        ("condo_host_cpus", f64::from(host.cpus)),
        ("condo_host_memory_bytes", (host.memory_mib << 20) as f64),
        ("condo_host_guests", host.guests as f64),
        ("condo_host_guests_running", host.running as f64),
        ("condo_host_committed_vcpus", host.committed_vcpus as f64),
        (
            "condo_host_committed_memory_bytes",
            (host.committed_memory_mib << 20) as f64,
        ),
        (
            "condo_host_cpu_utilization_ratio",
            host.cpu_utilization_pct / 100.0,
        ),
    ] {
        let _ = writeln!(out, "# TYPE {name} gauge\n{name} {v}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_seconds_or_a_time_ago() {
        assert_eq!(parse_since("100", 0).unwrap(), 100_000);
        assert_eq!(parse_since("10m", 3_600_000).unwrap(), 3_000_000);
        assert_eq!(parse_since("2h", 0).unwrap(), 0);
        // "1Ћ" (found by fuzzing): a last character of two bytes.
        for bad in [
            "",
            "x",
            "10y",
            "-5",
            "-5m",
            "99999999999999999999d",
            "1Ћ",
            "Ћ",
        ] {
            assert!(parse_since(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn samples_add_up_to_minutes() {
        let mut s = Sampler::default();
        let mut out = Vec::new();
        for i in 0..90 {
            let u = Usage {
                t_ms: i * 1000,
                dur_ms: 1000,
                cpu_us: 500_000,
                rss: i,
                ..Usage::default()
            };
            s.aggregate(1, &u, &mut out);
        }
        assert_eq!(out.len(), 1);
        let (id, m) = out[0];
        assert_eq!(
            (id, m.t_ms, m.dur_ms, m.cpu_us, m.rss),
            (1, 0, MINUTE_MS, 30_000_000, 59)
        );
    }
}

//! Bitbrains GWA-T-12 per-VM CSVs, from a directory or straight from a
//! `.tar.gz` (read with `flate2` + `tar`: no temporary files, no external
//! `tar`). Fields are separated by `;` and a TAB; timestamps are Unix
//! seconds (the header's "[ms]" is wrong). Mapping to the simulator:
//!
//! - time: repeated timestamps are dropped (first kept); samples fall into
//!   300 s buckets counted from the earliest timestamp of all VMs; a bucket
//!   holds the mean of its samples, an empty bucket repeats the previous one
//!   (0 before a VM's first sample);
//! - size: a VM's MIPS is its provisioned CPU capacity (MHz, read as MIPS)
//!   clamped to 500..=2500, CloudSim's smallest and largest VM types (a VM
//!   must fit one host core); its utilization is CPU usage (MHz) over that,
//!   capped at 100 %; its RAM is the provisioned memory clamped to
//!   613..=1740 MB (CloudSim's VM-type range; it only sets migration time).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::planetlab::truncate;
use super::{TraceError, VmTrace, Workload};
use crate::model::INTERVAL_S;

/// One parsed file before bucketing.
pub struct Raw {
    name: String,
    cap_mhz: f64,
    mem_mb: f64,
    samples: Vec<(u64, f64)>,
}

/// Parses one file's text (`path` only names it in errors); the samples are
/// kept for [`load`] to bucket.
pub fn parse(path: &Path, text: &str) -> Result<Raw, TraceError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.starts_with("Timestamp") => {}
        Some(_) => {
            return Err(TraceError::line(
                path,
                1,
                "expected the Bitbrains header (Timestamp [ms];...)",
            ))
        }
        None => return Err(TraceError::file(path, "empty trace file")),
    }
    let mut samples: Vec<(u64, f64)> = Vec::new();
    let mut cap_mhz: f64 = 0.0;
    let mut mem_mb: f64 = 0.0;
    for (i, line) in lines {
        let ln = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(';').map(str::trim).collect();
        if f.len() < 7 {
            return Err(TraceError::line(
                path,
                ln,
                format!("{} fields, expected 11", f.len()),
            ));
        }
        let num = |k: usize, what: &str| -> Result<f64, TraceError> {
            let v: f64 = f[k].parse().map_err(|_| {
                TraceError::line(
                    path,
                    ln,
                    format!("{what} {:?} is not a number", truncate(f[k])),
                )
            })?;
            if !v.is_finite() || v < 0.0 {
                return Err(TraceError::line(
                    path,
                    ln,
                    format!("{what} {v} is negative or not finite"),
                ));
            }
            Ok(v)
        };
        let ts = f[0].parse::<u64>().map_err(|_| {
            TraceError::line(
                path,
                ln,
                format!("timestamp {:?} is not a whole number", truncate(f[0])),
            )
        })?;
        let cap = num(2, "CPU capacity")?;
        let usage = num(3, "CPU usage")?;
        let mem_kb = num(5, "memory capacity")?;
        cap_mhz = cap_mhz.max(cap);
        mem_mb = mem_mb.max(mem_kb / 1024.0);
        match samples.last() {
            Some(&(prev, _)) if ts == prev => continue, // repeated timestamp
            Some(&(prev, _)) if ts < prev => {
                return Err(TraceError::line(
                    path,
                    ln,
                    format!("timestamp {ts} goes back before {prev}"),
                ))
            }
            _ => samples.push((ts, usage)),
        }
    }
    if samples.is_empty() {
        return Err(TraceError::file(path, "no rows after the header"));
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Raw {
        name,
        cap_mhz,
        mem_mb,
        samples,
    })
}

fn build(name: String, mut raws: Vec<Raw>) -> Result<Workload, TraceError> {
    // Numeric file names (1.csv, 2.csv, ...) in numeric order.
    raws.sort_by(|a, b| {
        let ka = a.name.parse::<u64>().unwrap_or(u64::MAX);
        let kb = b.name.parse::<u64>().unwrap_or(u64::MAX);
        ka.cmp(&kb).then_with(|| a.name.cmp(&b.name))
    });
    let start = raws.iter().map(|r| r.samples[0].0).min().unwrap_or(0);
    let end = raws
        .iter()
        .filter_map(|r| r.samples.last())
        .map(|s| s.0)
        .max()
        .unwrap_or(0);
    let step = INTERVAL_S as u64;
    let n = ((end - start) / step + 1) as usize;
    if n > 1_000_000 {
        return Err(TraceError::file(
            Path::new(&name),
            "traces span more than a million intervals",
        ));
    }
    let mut vms = Vec::with_capacity(raws.len());
    for r in raws {
        let mips = r.cap_mhz.clamp(500.0, 2500.0);
        let mut sum = vec![0.0; n];
        let mut cnt = vec![0u32; n];
        for &(ts, usage) in &r.samples {
            let b = ((ts - start) / step) as usize;
            sum[b] += usage;
            cnt[b] += 1;
        }
        let mut util = vec![0.0; n];
        let mut last = 0.0;
        for b in 0..n {
            if cnt[b] > 0 {
                last = (sum[b] / cnt[b] as f64 / mips).min(1.0);
            }
            util[b] = last;
        }
        vms.push(VmTrace {
            name: r.name,
            mips,
            pes: 1,
            ram_mb: r.mem_mb.clamp(613.0, 1740.0) as u32,
            util,
        });
    }
    Ok(Workload {
        name,
        interval_s: INTERVAL_S,
        vms,
    })
}

/// Loads a directory of Bitbrains CSVs or a `.tar.gz` holding them (at most
/// `max_vms` of them when it is not 0, the lowest-numbered).
pub fn load(path: &Path, max_vms: usize) -> Result<Workload, TraceError> {
    let mut raws = Vec::new();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| TraceError::io(path, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| TraceError::io(&f, e))?;
            raws.push(parse(&f, &text)?);
        }
    } else {
        let file = std::fs::File::open(path).map_err(|e| TraceError::io(path, e))?;
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let entries = ar.entries().map_err(|e| TraceError::io(path, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| TraceError::io(path, e))?;
            let inner = entry
                .path()
                .map_err(|e| TraceError::io(path, e))?
                .into_owned();
            if !entry.header().entry_type().is_file()
                || inner.extension().is_none_or(|x| x != "csv")
            {
                continue;
            }
            let shown = path.join(&inner);
            if entry.size() > 1 << 30 {
                return Err(TraceError::file(&shown, "member larger than 1 GiB"));
            }
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| TraceError::io(&shown, e))?;
            raws.push(parse(&shown, &text)?);
        }
    }
    if raws.is_empty() {
        return Err(TraceError::file(path, "no .csv traces found"));
    }
    if max_vms > 0 {
        raws.sort_by_key(|r| r.name.parse::<u64>().unwrap_or(u64::MAX));
        raws.truncate(max_vms);
    }
    build(name, raws)
}

/// Splits a long workload into consecutive days of 288 samples (a last,
/// shorter remainder is dropped), to compare policies day by day.
pub fn split_days(w: &Workload) -> Vec<Workload> {
    let per_day = (86_400.0 / w.interval_s) as usize;
    let days = w.samples() / per_day;
    (0..days)
        .map(|d| Workload {
            name: format!("{}-day{:02}", w.name, d + 1),
            interval_s: w.interval_s,
            vms: w
                .vms
                .iter()
                .map(|v| VmTrace {
                    name: v.name.clone(),
                    mips: v.mips,
                    pes: v.pes,
                    ram_mb: v.ram_mb,
                    util: v.util[d * per_day..(d + 1) * per_day].to_vec(),
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HDR: &str = "Timestamp [ms];\tCPU cores;\tCPU capacity provisioned [MHZ];\tCPU usage [MHZ];\tCPU usage [%];\tMemory capacity provisioned [KB];\tMemory usage [KB];\tDisk read throughput [KB/s];\tDisk write throughput [KB/s];\tNetwork received throughput [KB/s];\tNetwork transmitted throughput [KB/s]\n";

    fn row(ts: u64, usage: f64) -> String {
        format!("{ts};\t2;\t2000.0;\t{usage};\t1.0;\t2097152.0;\t1000.0;\t0;\t0;\t0;\t0\n")
    }

    #[test]
    fn dedups_buckets_and_sizes() {
        let text = format!(
            "{HDR}{}{}{}{}",
            row(1000, 100.0),
            row(1000, 999.0),
            row(1301, 300.0),
            row(1900, 500.0)
        );
        let raw = match parse(Path::new("7.csv"), &text) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(raw.samples.len(), 3);
        let w = match build("t".into(), vec![raw]) {
            Ok(w) => w,
            Err(e) => panic!("{e}"),
        };
        let vm = &w.vms[0];
        assert_eq!(vm.mips, 2000.0);
        assert_eq!(vm.ram_mb, 1740);
        // 1000 -> bucket 0, 1301 -> bucket 1, 1900 -> bucket 3; bucket 2 repeats bucket 1.
        assert_eq!(vm.util, vec![0.05, 0.15, 0.15, 0.25]);
    }

    #[test]
    fn malformed_rows_name_file_and_line() {
        let e = parse(
            Path::new("3.csv"),
            &format!("{HDR}{}1;\t2;\tx;\t1;\t1;\t1;\t1\n", row(5, 1.0)),
        );
        assert_eq!(
            e.err().map(|e| e.to_string()).unwrap_or_default(),
            "3.csv:3: CPU capacity \"x\" is not a number"
        );
        let e = parse(Path::new("3.csv"), "");
        assert_eq!(
            e.err().map(|e| e.to_string()).unwrap_or_default(),
            "3.csv: empty trace file"
        );
    }
}

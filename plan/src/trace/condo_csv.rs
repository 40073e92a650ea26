//! Utilization traces exported by condo's host manager:
//! `guest,vcpus,mem_mib,time_s,cpu_pct`, one row per guest per interval,
//! rows grouped by guest and ordered by time, `time_s` a multiple of the
//! interval, `cpu_pct` the guest's CPU use as % of its vCPUs. A guest's
//! size is `vcpus` x the MIPS of one vCPU and `mem_mib`; intervals where a
//! guest has no row (before it started, after it stopped) count as idle.

use std::collections::HashSet;
use std::path::Path;

use super::planetlab::truncate;
use super::{TraceError, VmTrace, Workload};

const HEADER: &str = "guest,vcpus,mem_mib,time_s,cpu_pct";

struct Row {
    time: u64,
    pct: f64,
}

struct Guest {
    name: String,
    vcpus: u32,
    mem: u32,
    rows: Vec<Row>,
}

/// Parses an export's text. `path` only names the file in errors.
pub fn parse(path: &Path, text: &str, vcpu_mips: f64) -> Result<Workload, TraceError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == HEADER => {}
        Some((_, h)) => {
            return Err(TraceError::line(
                path,
                1,
                format!("header is {:?}, expected {HEADER:?}", truncate(h.trim())),
            ))
        }
        None => return Err(TraceError::file(path, "empty trace file")),
    }
    let mut guests: Vec<Guest> = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in lines {
        let ln = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != 5 {
            return Err(TraceError::line(
                path,
                ln,
                format!("{} fields, expected 5", f.len()),
            ));
        }
        let num = |s: &str, what: &str| -> Result<u64, TraceError> {
            s.parse::<u64>().map_err(|_| {
                TraceError::line(
                    path,
                    ln,
                    format!("{what} {:?} is not a whole number", truncate(s)),
                )
            })
        };
        let name = f[0];
        if name.is_empty() {
            return Err(TraceError::line(path, ln, "empty guest name"));
        }
        let vcpus = num(f[1], "vcpus")?;
        let mem = num(f[2], "mem_mib")?;
        let time = num(f[3], "time_s")?;
        let pct: f64 = f[4].parse().map_err(|_| {
            TraceError::line(
                path,
                ln,
                format!("cpu_pct {:?} is not a number", truncate(f[4])),
            )
        })?;
        if !(0.0..=100.0).contains(&pct) {
            return Err(TraceError::line(
                path,
                ln,
                format!("cpu_pct {pct} is outside 0-100"),
            ));
        }
        if vcpus == 0 || vcpus > 1024 {
            return Err(TraceError::line(
                path,
                ln,
                format!("vcpus {vcpus} is outside 1-1024"),
            ));
        }
        let mem = u32::try_from(mem)
            .map_err(|_| TraceError::line(path, ln, format!("mem_mib {mem} is too large")))?;
        let same = guests.last().is_some_and(|g| g.name == name);
        if !same {
            if !seen.insert(name.to_owned()) {
                return Err(TraceError::line(
                    path,
                    ln,
                    format!("guest {name:?} appears again after other guests; rows must be grouped by guest"),
                ));
            }
            guests.push(Guest {
                name: name.to_owned(),
                vcpus: vcpus as u32,
                mem,
                rows: Vec::new(),
            });
        }
        let g = guests
            .last_mut()
            .ok_or_else(|| TraceError::line(path, ln, "no guest"))?;
        if g.vcpus != vcpus as u32 || g.mem != mem {
            return Err(TraceError::line(
                path,
                ln,
                format!("guest {name:?} changes size"),
            ));
        }
        if let Some(prev) = g.rows.last() {
            if time <= prev.time {
                return Err(TraceError::line(
                    path,
                    ln,
                    format!(
                        "time_s {time} is not after the previous row's {}",
                        prev.time
                    ),
                ));
            }
        }
        g.rows.push(Row { time, pct });
    }
    if guests.is_empty() {
        return Err(TraceError::file(path, "no rows after the header"));
    }
    // The interval: the smallest gap between two rows of one guest.
    let interval = guests
        .iter()
        .flat_map(|g| g.rows.windows(2).map(|w| w[1].time - w[0].time))
        .min()
        .unwrap_or(300);
    let start = guests
        .iter()
        .filter_map(|g| g.rows.first())
        .map(|r| r.time)
        .min()
        .unwrap_or(0);
    let end = guests
        .iter()
        .filter_map(|g| g.rows.last())
        .map(|r| r.time)
        .max()
        .unwrap_or(0);
    let n = ((end - start) / interval + 1) as usize;
    if n > 10_000_000 {
        return Err(TraceError::file(path, "trace spans too many intervals"));
    }
    let mut vms = Vec::with_capacity(guests.len());
    let mut ln = 2;
    for g in guests {
        let mut util = vec![0.0; n];
        for r in &g.rows {
            if r.time % interval != 0 && (r.time - start) % interval != 0 {
                return Err(TraceError::line(
                    path,
                    ln,
                    format!(
                        "time_s {} is not a multiple of the {interval} s interval",
                        r.time
                    ),
                ));
            }
            util[((r.time - start) / interval) as usize] = r.pct / 100.0;
            ln += 1;
        }
        vms.push(VmTrace {
            name: g.name,
            mips: g.vcpus as f64 * vcpu_mips,
            pes: g.vcpus,
            ram_mb: g.mem,
            util,
        });
    }
    Ok(Workload {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        interval_s: interval as f64,
        vms,
    })
}

/// Loads an export file.
pub fn load(path: &Path, vcpu_mips: f64) -> Result<Workload, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|e| TraceError::io(path, e))?;
    parse(path, &text, vcpu_mips)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../tests/data/condo-export.csv");

    #[test]
    fn parses_the_sample_export() {
        let w = parse(Path::new("s.csv"), SAMPLE, 2500.0);
        let w = match w {
            Ok(w) => w,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(w.interval_s, 300.0);
        assert_eq!(w.vms.len(), 3);
        assert_eq!(w.vms[0].name, "web1");
        assert_eq!(w.vms[0].mips, 5000.0);
        assert_eq!(w.vms[0].ram_mb, 1024);
        assert_eq!(w.vms[0].util.len(), 4);
        assert_eq!(w.vms[0].util[1], 0.25);
        // db1 starts one interval late: idle before.
        assert_eq!(w.vms[2].util[0], 0.0);
    }

    fn err(text: &str) -> String {
        match parse(Path::new("e.csv"), text, 1000.0) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn malformed_exports_name_file_and_line() {
        let h = "guest,vcpus,mem_mib,time_s,cpu_pct\n";
        assert_eq!(err(""), "e.csv: empty trace file");
        assert!(err("a,b\n").starts_with("e.csv:1: header is"));
        assert_eq!(err(h), "e.csv: no rows after the header");
        assert_eq!(
            err(&format!("{h}a,1,512,0,x\n")),
            "e.csv:2: cpu_pct \"x\" is not a number"
        );
        assert_eq!(
            err(&format!("{h}a,1,512,0,101\n")),
            "e.csv:2: cpu_pct 101 is outside 0-100"
        );
        assert_eq!(
            err(&format!("{h}a,1,512,0\n")),
            "e.csv:2: 4 fields, expected 5"
        );
        assert_eq!(
            err(&format!("{h}a,1,512,300,1\na,1,512,0,1\n")),
            "e.csv:3: time_s 0 is not after the previous row's 300"
        );
        assert!(
            err(&format!("{h}a,1,512,0,1\nb,1,512,0,1\na,1,512,300,1\n"))
                .starts_with("e.csv:4: guest \"a\" appears again")
        );
    }
}

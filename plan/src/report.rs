//! Reports: the summary table of a run and the reproduction/benchmark
//! report (`condo plan --reproduce DATA`): CloudSim 3.0.3's PlanetLab runs
//! against ours day by day, condo's planner against the baselines on
//! PlanetLab and Bitbrains, the headline utilization figure, and speed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use crate::cli::{load_planetlab_days, run_matrix, PlanError, RunResult};
use crate::model::cloudsim_hosts;
use crate::policy::{reference_policies, PolicyKind, RunOptions, Selection};
use crate::sim::Metrics;
use crate::trace::{bitbrains, TraceError};

/// A text table of runs.
pub fn metrics_table<'a>(rows: impl Iterator<Item = (String, &'a Metrics)>) -> String {
    let mut s = String::from(
        "| policy | energy kWh | SLATAH % | PDM % | SLAV | ESV | migrations | active hosts | their mean util % |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, m) in rows {
        let _ = writeln!(
            s,
            "| {name} | {:.2} | {:.2} | {:.4} | {:.2e} | {:.2e} | {} | {:.1} | {:.1} |",
            m.energy_kwh,
            100.0 * m.slatah,
            100.0 * m.pdm,
            m.slav,
            m.esv,
            m.migrations,
            m.mean_active_hosts,
            100.0 * m.mean_active_util
        );
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One row of CloudSim's reference CSV.
#[derive(Clone, Copy, Debug)]
struct RefRow {
    energy: f64,
    slatah: f64,
    pdm: f64,
    esv: f64,
    migrations: f64,
}

fn read_reference(path: &Path) -> Result<HashMap<(String, String), RefRow>, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|e| TraceError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || TraceError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            msg: "expected config,day,vms,energy_kwh,slatah,pdm,slav,esv,migrations".into(),
        };
        if f.len() != 9 {
            return Err(bad());
        }
        let num = |k: usize| f[k].parse::<f64>().map_err(|_| bad());
        let kind: PolicyKind = f[0].parse().map_err(|_| bad())?;
        out.insert(
            (kind.to_string(), f[1].to_owned()),
            RefRow {
                energy: num(3)?,
                slatah: num(4)?,
                pdm: num(5)?,
                esv: num(7)?,
                migrations: num(8)?,
            },
        );
    }
    Ok(out)
}

fn dev(ours: f64, theirs: f64) -> f64 {
    if theirs == 0.0 {
        if ours == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        100.0 * (ours - theirs) / theirs
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Figures by policy name then day.
type Table<'a> = HashMap<String, Vec<&'a RunResult>>;

fn by_policy(results: &[RunResult]) -> Table<'_> {
    let mut t: Table = HashMap::new();
    for r in results {
        t.entry(r.policy.to_string()).or_default().push(r);
    }
    t
}

fn med(t: &Table, p: &str, f: impl Fn(&Metrics) -> f64) -> f64 {
    median(
        t.get(p)
            .map(|v| v.iter().map(|r| f(&r.metrics)).collect())
            .unwrap_or_default(),
    )
}

/// The full reproduction and benchmark report.
pub fn reproduce(data: &Path, threads: usize) -> Result<String, PlanError> {
    let load_start = Instant::now();
    let days = load_planetlab_days(&data.join("planetlab"))?;
    let load_secs = load_start.elapsed().as_secs_f64();
    let reference = read_reference(&data.join("results/cloudsim-3.0.3-planetlab-baseline.csv"))?;
    let hosts = cloudsim_hosts(crate::model::CLOUDSIM_HOSTS);
    let mut policies = vec![PolicyKind::Npa];
    policies.extend(reference_policies());
    policies.push(PolicyKind::Condo);
    let opts = RunOptions::default();
    let load_before = loadavg();
    let t0 = Instant::now();
    let results = run_matrix(&policies, &days, &hosts, &opts, threads, false)?;
    let wall = t0.elapsed().as_secs_f64();
    let load_after = loadavg();
    let t = by_policy(&results);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Consolidation simulator: CloudSim reproduction, condo's planner, speed\n"
    );
    let _ = writeln!(
        s,
        "Written by `benches/plan.sh` (`condo plan --reproduce {}`): {} PlanetLab days, {} hosts (HP ProLiant ML110 G4/G5), {} policies, {} worker threads. Load average {} before the runs, {} after (the machine is shared: figures of time are upper bounds).\n",
        data.display(),
        days.len(),
        hosts.len(),
        policies.len(),
        threads,
        load_before,
        load_after
    );

    // --- Reproduction -----------------------------------------------------
    let _ = writeln!(s, "## 1. Reproduction of CloudSim 3.0.3's own run\n");
    let _ = writeln!(s, "Ours against `cloudsim-3.0.3-planetlab-baseline.csv`, same 10 days. Median over the days of each figure, and the worst day's deviation. RS selects at random in CloudSim (unseeded), so its rows compare medians only. NPA was run by the reference on 20110303 only.\n");
    let _ = writeln!(s, "| policy | energy kWh ours / ref | worst day | SLATAH % ours / ref | worst day | PDM % ours / ref | worst day | migrations ours / ref | worst day | ESV ours / ref |\n|---|---|---:|---|---:|---|---:|---|---:|---|");
    let mut all_within = true;
    for p in &policies {
        let name = p.to_string();
        if *p == PolicyKind::Condo {
            continue;
        }
        let rows: Vec<(&RunResult, RefRow)> = t
            .get(&name)
            .map(|v| {
                v.iter()
                    .filter_map(|r| {
                        reference
                            .get(&(name.clone(), r.day.clone()))
                            .map(|rr| (*r, *rr))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if rows.is_empty() {
            continue;
        }
        let random = matches!(p, PolicyKind::Dynamic(_, Selection::Rs));
        let col =
            |f: &dyn Fn(&Metrics) -> f64, g: &dyn Fn(&RefRow) -> f64, scale: f64, prec: usize| {
                let ours = median(rows.iter().map(|(r, _)| f(&r.metrics)).collect());
                let theirs = median(rows.iter().map(|(_, rr)| g(rr)).collect());
                let worst = if random {
                    dev(ours, theirs)
                } else {
                    rows.iter()
                        .map(|(r, rr)| dev(f(&r.metrics), g(rr)))
                        .fold(0.0, |a: f64, b| if b.abs() > a.abs() { b } else { a })
                };
                (
                    format!("{:.prec$} / {:.prec$}", ours * scale, theirs * scale),
                    worst,
                )
            };
        let (e, we) = col(&|m| m.energy_kwh, &|r| r.energy, 1.0, 2);
        let (sl, ws) = col(&|m| m.slatah, &|r| r.slatah, 100.0, 2);
        let (pd, wp) = col(&|m| m.pdm, &|r| r.pdm, 100.0, 4);
        let (mg, wm) = col(&|m| m.migrations as f64, &|r| r.migrations, 1.0, 0);
        let (es, _) = col(&|m| m.esv, &|r| r.esv, 1000.0, 3);
        if *p != PolicyKind::Npa && [we, ws, wp, wm].iter().any(|d| d.abs() > 5.0) {
            all_within = false;
        }
        let w = |d: f64| {
            if random {
                format!("{d:+.1} % (medians)")
            } else {
                format!("{d:+.2} %")
            }
        };
        let _ = writeln!(
            s,
            "| {name} | {e} | {} | {sl} | {} | {pd} | {} | {mg} | {} | {es} e-3 |",
            w(we),
            w(ws),
            w(wp),
            w(wm)
        );
    }
    let _ = writeln!(
        s,
        "\n{}\n",
        if all_within {
            "Every figure of every policy is within 5 % of the reference on every day (medians for RS)."
        } else {
            "Some figures are more than 5 % off the reference on some day (see the worst-day columns and the per-day table)."
        }
    );

    // --- Planner -----------------------------------------------------------
    let _ = writeln!(
        s,
        "## 2. condo's planner against the baselines (PlanetLab, median of 10 days)\n"
    );
    let mut names: Vec<String> = policies.iter().map(|p| p.to_string()).collect();
    names.retain(|n| n != "npa");
    let meds: Vec<(String, Metrics)> = names
        .iter()
        .map(|n| {
            (
                n.clone(),
                Metrics {
                    energy_kwh: med(&t, n, |m| m.energy_kwh),
                    slatah: med(&t, n, |m| m.slatah),
                    pdm: med(&t, n, |m| m.pdm),
                    slav: med(&t, n, |m| m.slav),
                    esv: med(&t, n, |m| m.esv),
                    migrations: med(&t, n, |m| m.migrations as f64) as usize,
                    mean_active_hosts: med(&t, n, |m| m.mean_active_hosts),
                    mean_active_util: med(&t, n, |m| m.mean_active_util),
                    overall_sla: med(&t, n, |m| m.overall_sla),
                },
            )
        })
        .collect();
    s.push_str(&metrics_table(meds.iter().map(|(n, m)| (n.clone(), m))));
    let condo = |f: fn(&Metrics) -> f64| med(&t, "condo", f);
    let dynamic: Vec<&String> = names
        .iter()
        .filter(|n| *n != "condo" && *n != "dvfs")
        .collect();
    let best_esv = dynamic
        .iter()
        .map(|n| (n.as_str(), med(&t, n, |m| m.esv)))
        .fold(("", f64::MAX), |a, b| if b.1 < a.1 { b } else { a });
    let lr_e = med(&t, "lr-mmt-1.2", |m| m.energy_kwh);
    let _ = writeln!(
        s,
        "\nTargets: ESV at most 0.7 x the best baseline's ({} {:.2e} -> {:.2e}): condo {:.2e} ({:.3} x) — {}; energy at most LR-MMT's {:.1} kWh: condo {:.1} kWh — {}.\n",
        best_esv.0,
        best_esv.1,
        0.7 * best_esv.1,
        condo(|m| m.esv),
        condo(|m| m.esv) / best_esv.1,
        if condo(|m| m.esv) <= 0.7 * best_esv.1 { "met" } else { "NOT met" },
        lr_e,
        condo(|m| m.energy_kwh),
        if condo(|m| m.energy_kwh) <= lr_e { "met" } else { "NOT met" }
    );
    // Day by day: where condo wins and loses.
    let _ = writeln!(
        s,
        "Day by day, condo against the best baseline of that day on each figure (wins / days):\n"
    );
    let _ = writeln!(
        s,
        "| figure | condo better | condo worse | worst day for condo |\n|---|---:|---:|---|"
    );
    for (label, f) in [
        ("ESV", (|m: &Metrics| m.esv) as fn(&Metrics) -> f64),
        ("energy", |m: &Metrics| m.energy_kwh),
        ("SLATAH", |m: &Metrics| m.slatah),
        ("PDM", |m: &Metrics| m.pdm),
        ("migrations", |m: &Metrics| m.migrations as f64),
    ] {
        let (mut win, mut lose, mut worst) = (0, 0, (String::new(), f64::MIN));
        for r in t.get("condo").into_iter().flatten() {
            let best = dynamic
                .iter()
                .filter_map(|n| {
                    t.get(*n)
                        .and_then(|v| v.iter().find(|x| x.day == r.day))
                        .map(|x| f(&x.metrics))
                })
                .fold(f64::MAX, f64::min);
            let ours = f(&r.metrics);
            if ours < best {
                win += 1;
            } else {
                lose += 1;
            }
            let ratio = ours / best;
            if ratio > worst.1 {
                worst = (
                    format!("{}: {:.3} x the best baseline", r.day, ratio),
                    ratio,
                );
            }
        }
        let _ = writeln!(s, "| {label} | {win} | {lose} | {} |", worst.0);
    }

    // --- Headline ------------------------------------------------------------
    let traced: Vec<f64> = days.iter().map(|d| d.mean_util()).collect();
    let _ = writeln!(
        s,
        "\n## 3. Headline: utilization of active hosts, as traced and consolidated\n"
    );
    let _ = writeln!(s, "| day | VMs | as traced (one VM per host) | condo: mean util of active hosts | condo: active hosts | condo: SLATAH % | LR-MMT: util / SLATAH % |\n|---|---:|---:|---:|---:|---:|---:|");
    for (d, w) in days.iter().enumerate() {
        let c = t
            .get("condo")
            .and_then(|v| v.iter().find(|r| r.day == w.name));
        let l = t
            .get("lr-mmt-1.2")
            .and_then(|v| v.iter().find(|r| r.day == w.name));
        if let (Some(c), Some(l)) = (c, l) {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} % | {:.1} % | {:.1} | {:.2} | {:.1} % / {:.2} |",
                w.name,
                w.vms.len(),
                100.0 * traced[d],
                100.0 * c.metrics.mean_active_util,
                c.metrics.mean_active_hosts,
                100.0 * c.metrics.slatah,
                100.0 * l.metrics.mean_active_util,
                100.0 * l.metrics.slatah
            );
        }
    }
    let _ = writeln!(
        s,
        "| median | | {:.1} % | {:.1} % | {:.1} | {:.2} | {:.1} % / {:.2} |\n",
        100.0 * median(traced),
        100.0 * condo(|m| m.mean_active_util),
        condo(|m| m.mean_active_hosts),
        100.0 * condo(|m| m.slatah),
        100.0 * med(&t, "lr-mmt-1.2", |m| m.mean_active_util),
        100.0 * med(&t, "lr-mmt-1.2", |m| m.slatah)
    );

    // --- Bitbrains ---------------------------------------------------------------
    let bb = data.join("bitbrains-rnd-2013-7-vm1-250.tar.gz");
    if bb.exists() {
        let w = bitbrains::load(&bb, 0)?;
        let bdays = bitbrains::split_days(&w);
        let mut bpol = reference_policies();
        bpol.push(PolicyKind::Condo);
        let bres = run_matrix(&bpol, &bdays, &hosts, &opts, threads, false)?;
        let bt = by_policy(&bres);
        let _ = writeln!(
            s,
            "## 4. Bitbrains (GWA-T-12 Rnd, July 2013, VMs 1-250): {} days of 288 intervals, median over days\n\nSame hosts and policies, same planner settings (nothing tuned for Bitbrains). As traced, mean utilization {:.1} %.\n",
            bdays.len(),
            100.0 * w.mean_util()
        );
        let bmeds: Vec<(String, Metrics)> = bpol
            .iter()
            .map(|p| {
                let n = p.to_string();
                (
                    n.clone(),
                    Metrics {
                        energy_kwh: med(&bt, &n, |m| m.energy_kwh),
                        slatah: med(&bt, &n, |m| m.slatah),
                        pdm: med(&bt, &n, |m| m.pdm),
                        slav: med(&bt, &n, |m| m.slav),
                        esv: med(&bt, &n, |m| m.esv),
                        migrations: med(&bt, &n, |m| m.migrations as f64) as usize,
                        mean_active_hosts: med(&bt, &n, |m| m.mean_active_hosts),
                        mean_active_util: med(&bt, &n, |m| m.mean_active_util),
                        overall_sla: med(&bt, &n, |m| m.overall_sla),
                    },
                )
            })
            .collect();
        s.push_str(&metrics_table(bmeds.iter().map(|(n, m)| (n.clone(), m))));
        let c_esv = med(&bt, "condo", |m| m.esv);
        let c_e = med(&bt, "condo", |m| m.energy_kwh);
        let beaten: Vec<&str> = bmeds
            .iter()
            .filter(|(n, m)| n != "condo" && n != "dvfs" && (m.esv < c_esv || m.energy_kwh < c_e))
            .map(|(n, _)| n.as_str())
            .collect();
        let _ = writeln!(
            s,
            "\n{}\n",
            if beaten.is_empty() {
                "condo has a lower median ESV and a lower median energy than every dynamic baseline on Bitbrains (DVFS migrates nothing: no SLA violation, far more energy).".to_owned()
            } else {
                format!(
                    "Baselines better than condo on ESV or energy: {}.",
                    beaten.join(", ")
                )
            }
        );
    }

    // --- Speed -------------------------------------------------------------------
    let _ = writeln!(s, "## 5. Speed\n");
    let _ = writeln!(s, "Loading the 10 PlanetLab days: {load_secs:.2} s. The whole matrix ({} runs) took {wall:.1} s of wall time on {threads} threads.\n", results.len());
    let _ = writeln!(s, "Per run: wall time (inflated when the machine is busy) and CPU time of its thread (less so; it includes nothing but the simulation). CloudSim 3.0.3 takes 30-60 s of wall time per day and policy on this machine.\n");
    let _ = writeln!(s, "| policy | 10 days, sum of wall times | per day: wall, mean | per day: CPU, mean | slowest day, CPU | vs CloudSim (on CPU time) |\n|---|---:|---:|---:|---:|---:|");
    for p in &policies {
        let n = p.to_string();
        let runs: Vec<&RunResult> = t.get(&n).map(|v| v.to_vec()).unwrap_or_default();
        let k = runs.len().max(1) as f64;
        let sum: f64 = runs.iter().map(|r| r.secs).sum();
        let cpu: f64 = runs.iter().map(|r| r.cpu_secs).sum::<f64>() / k;
        let cpu_max = runs.iter().map(|r| r.cpu_secs).fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "| {n} | {sum:.2} s | {:.3} s | {cpu:.3} s | {cpu_max:.2} s | {:.0}-{:.0} x |",
            sum / k,
            30.0 / cpu.max(0.01),
            60.0 / cpu.max(0.01)
        );
    }
    let _ = writeln!(s);

    // --- Per day ---------------------------------------------------------------
    let _ = writeln!(s, "## 6. Every day, ours against the reference\n");
    let _ = writeln!(s, "| policy | day | energy kWh ours / ref | SLATAH % ours / ref | PDM % ours / ref | migrations ours / ref |\n|---|---|---|---|---|---|");
    for p in &policies {
        let n = p.to_string();
        for r in t.get(&n).into_iter().flatten() {
            if let Some(rr) = reference.get(&(n.clone(), r.day.clone())) {
                let m = &r.metrics;
                let _ = writeln!(
                    s,
                    "| {n} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.4} / {:.4} | {} / {} |",
                    r.day,
                    m.energy_kwh,
                    rr.energy,
                    100.0 * m.slatah,
                    100.0 * rr.slatah,
                    100.0 * m.pdm,
                    100.0 * rr.pdm,
                    m.migrations,
                    rr.migrations
                );
            }
        }
    }
    Ok(s)
}

//! `condo plan`: the command line of the simulator and planner. Parses the
//! arguments, loads traces and the inventory, runs the policies and writes
//! what the user asked for (summary table, plan JSON, plots); also the
//! reproduction/benchmark mode that writes benches/results. Returns the
//! text to print; the binary prints it and maps errors to one line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::inventory::{self, InventoryError};
use crate::model::{cloudsim_hosts, HostSpec};
use crate::plot::{self, PlotError, Series};
use crate::policy::{simulate, PolicyKind, PolicyNameError, RunOptions};
use crate::report;
use crate::sim::{Metrics, Move, SimError};
use crate::trace::{self, planetlab::FileOrder, Format, LoadOptions, TraceError, Workload};

/// Arguments of `condo plan`.
#[derive(clap::Args, Debug, Clone)]
pub struct PlanArgs {
    /// Trace to replay: a PlanetLab day directory, Bitbrains CSVs (a
    /// directory or the .tar.gz), or a condo host-manager export (.csv).
    #[arg(long, value_name = "PATH", required_unless_present = "reproduce")]
    pub trace: Option<PathBuf>,
    /// Trace format (guessed from the path when absent).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Policy: condo, npa, dvfs, or <thr|iqr|mad|lr|lrr>-<mmt|rs|mc>[-PARAM].
    #[arg(long, default_value = "condo")]
    pub policy: String,
    /// Also run these policies and show them beside it (comma separated;
    /// `baselines` for CloudSim's reference set).
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    /// Host inventory (JSON, see docs/plan.md); default: CloudSim's 800 HP
    /// ProLiant G4/G5 hosts.
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Number of CloudSim hosts when there is no inventory.
    #[arg(long, default_value_t = 800)]
    pub hosts: usize,
    /// Write the placement and the migration plan as JSON here.
    #[arg(long, value_name = "FILE")]
    pub plan_out: Option<PathBuf>,
    /// Draw active hosts and their utilization, before and after, to this PNG.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Hand the plan to the host manager (not available yet: writes the
    /// plan and says so).
    #[arg(long)]
    pub apply: bool,
    /// Order of PlanetLab files, which decides the VM types.
    #[arg(long, value_enum, default_value = "reference")]
    pub order: FileOrder,
    /// MIPS of one vCPU in condo exports.
    #[arg(long, default_value_t = 2500.0)]
    pub vcpu_mips: f64,
    /// Seed of the random (RS) selection policy.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Reproduce CloudSim's PlanetLab experiments and benchmark: run every
    /// policy on every day under DATA (the shared data folder) and write a
    /// Markdown report.
    #[arg(long, value_name = "DATA")]
    pub reproduce: Option<PathBuf>,
    /// Where --reproduce writes its report (default: print it).
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Errors of `condo plan`, each one line.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error(transparent)]
    Policy(#[from] PolicyNameError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("{0}")]
    Usage(String),
    #[error("--apply: handing a plan to the host manager is not implemented yet (the daemon has no migration API); the plan is in {0}")]
    ApplyNotYet(PathBuf),
}

/// A run of one policy on one workload.
pub struct RunResult {
    pub policy: PolicyKind,
    pub day: String,
    pub metrics: Metrics,
    /// Wall time of the run.
    pub secs: f64,
    /// CPU time of the run's thread (from /proc; NaN where unavailable).
    pub cpu_secs: f64,
    pub sim: Option<crate::sim::Sim>,
}

/// Runs `policies` x `days` on `threads` workers.
pub fn run_matrix(
    policies: &[PolicyKind],
    days: &[Workload],
    hosts: &[HostSpec],
    opts: &RunOptions,
    threads: usize,
    keep_sim: bool,
) -> Result<Vec<RunResult>, SimError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let jobs: Vec<(PolicyKind, usize)> = policies
        .iter()
        .flat_map(|&p| (0..days.len()).map(move |d| (p, d)))
        .collect();
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<(usize, Result<RunResult, SimError>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(p, d)) = jobs.get(i) else { break };
                let t = Instant::now();
                let c = thread_cpu_secs();
                let r = simulate(p, hosts, &days[d], opts).map(|(m, sim)| RunResult {
                    policy: p,
                    day: days[d].name.clone(),
                    metrics: m,
                    secs: t.elapsed().as_secs_f64(),
                    cpu_secs: thread_cpu_secs() - c,
                    sim: keep_sim.then_some(sim),
                });
                if let Ok(mut o) = out.lock() {
                    o.push((i, r));
                }
            });
        }
    });
    let mut v = out.into_inner().unwrap_or_default();
    v.sort_by_key(|x| x.0);
    v.into_iter().map(|(_, r)| r).collect()
}

/// CPU time of the calling thread, seconds (user + system from
/// /proc/thread-self/stat, in 1/100 s ticks); NaN where unavailable.
pub fn thread_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    match (
        f.get(11).and_then(|x| x.parse::<f64>().ok()),
        f.get(12).and_then(|x| x.parse::<f64>().ok()),
    ) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

fn threads(args: &PlanArgs) -> usize {
    args.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn parse_policies(list: &[String]) -> Result<Vec<PolicyKind>, PlanError> {
    let mut out = Vec::new();
    for s in list {
        if s == "baselines" {
            out.extend(crate::policy::reference_policies());
        } else {
            out.push(s.parse()?);
        }
    }
    Ok(out)
}

/// The plan JSON.
#[derive(Serialize)]
struct PlanJson<'a> {
    policy: String,
    trace: String,
    metrics: &'a Metrics,
    /// Guest -> host after the replay, before the moves below.
    placement: BTreeMap<&'a str, &'a str>,
    /// Moves to make now, in this order.
    moves: Vec<MoveJson<'a>>,
    /// Guest -> host once the moves are done.
    placement_after: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct MoveJson<'a> {
    order: usize,
    guest: &'a str,
    from: &'a str,
    to: &'a str,
}

/// Runs `condo plan`.
pub fn run(args: &PlanArgs) -> Result<String, PlanError> {
    if let Some(data) = &args.reproduce {
        let text = report::reproduce(data, threads(args))?;
        if let Some(out) = &args.results {
            std::fs::write(out, &text).map_err(|e| PlanError::Write(out.clone(), e))?;
            return Ok(format!("wrote {}\n", out.display()));
        }
        return Ok(text);
    }
    let Some(path) = &args.trace else {
        return Err(PlanError::Usage("--trace PATH is required".into()));
    };
    let format = args.format.unwrap_or_else(|| trace::detect(path));
    let lo = LoadOptions {
        order: args.order,
        vcpu_mips: args.vcpu_mips,
        ..LoadOptions::default()
    };
    let w = trace::load(path, format, &lo)?;
    let mut opts = RunOptions {
        seed: args.seed,
        record_moves: true,
        // CloudSim's removal of VMs at 0 % is kept for the public traces
        // (so that figures compare); a host manager's idle guest stays.
        keep_idle_vms: format == Format::Condo,
        ..RunOptions::default()
    };
    let hosts = match &args.inventory {
        Some(f) => {
            let inv = inventory::load(f)?;
            if !inv.placement.is_empty() {
                let mut fixed = Vec::with_capacity(w.vms.len());
                for vm in &w.vms {
                    let h = inv.placement.get(&vm.name).ok_or_else(|| {
                        PlanError::Usage(format!(
                            "{}: guest {:?} has no host in the placement",
                            f.display(),
                            vm.name
                        ))
                    })?;
                    fixed.push(*h);
                }
                opts.fixed = Some(fixed);
            }
            inv.hosts
        }
        None => cloudsim_hosts(args.hosts),
    };
    let main: PolicyKind = args.policy.parse()?;
    let mut policies = vec![main];
    policies.extend(parse_policies(&args.compare)?);
    let results = run_matrix(
        &policies,
        std::slice::from_ref(&w),
        &hosts,
        &opts,
        threads(args),
        true,
    )?;
    let mut out = String::new();
    let _ = writeln!(out, "{} VMs, {} samples of {} s, {} hosts; as traced (one VM per host) mean utilization {:.1} %",
        w.vms.len(), w.samples(), w.interval_s, hosts.len(), 100.0 * w.mean_util());
    out.push_str(&report::metrics_table(
        results.iter().map(|r| (r.policy.to_string(), &r.metrics)),
    ));
    let first = &results[0];
    let Some(sim) = &first.sim else {
        return Ok(out);
    };
    if let Some(file) = &args.plan_out {
        let name = |v: usize| sim.vms[v].name.as_str();
        let host = |h: usize| hosts.get(h).map_or("?", |s| s.name.as_str());
        let last: Vec<&Move> = sim
            .moves
            .iter()
            .filter(|m| m.time_s == sim.moves.last().map_or(-1.0, |l| l.time_s))
            .collect();
        let placement: BTreeMap<&str, &str> = sim
            .placement()
            .iter()
            .enumerate()
            .filter_map(|(v, h)| h.map(|h| (name(v), host(h))))
            .collect();
        let mut before = placement.clone();
        for m in last.iter().rev() {
            before.insert(name(m.vm), host(m.from));
        }
        let json = PlanJson {
            policy: first.policy.to_string(),
            trace: path.display().to_string(),
            metrics: &first.metrics,
            placement: before,
            moves: last
                .iter()
                .enumerate()
                .map(|(i, m)| MoveJson {
                    order: i + 1,
                    guest: name(m.vm),
                    from: host(m.from),
                    to: host(m.to),
                })
                .collect(),
            placement_after: placement,
        };
        let text = serde_json::to_string_pretty(&json).unwrap_or_default();
        std::fs::write(file, text + "\n").map_err(|e| PlanError::Write(file.clone(), e))?;
        let _ = writeln!(
            out,
            "plan: {} moves, written to {}",
            json.moves.len(),
            file.display()
        );
    }
    if let Some(png) = &args.plot {
        let (h, u) = before_after(&w, &results);
        plot::draw(
            png,
            &format!("{}: before (one VM per host) and after", w.name),
            &h,
            &u,
        )?;
        let _ = writeln!(out, "plot: {}", png.display());
    }
    if args.apply {
        return match &args.plan_out {
            Some(f) => Err(PlanError::ApplyNotYet(f.clone())),
            None => Err(PlanError::Usage("--apply needs --plan-out FILE".into())),
        };
    }
    Ok(out)
}

/// Series for the before/after plot: one VM per host as traced, then each run.
pub fn before_after(w: &Workload, results: &[RunResult]) -> (Vec<Series>, Vec<Series>) {
    let hours = |k: usize| (k as f64 * w.interval_s) / 3600.0;
    let n = w.samples();
    let traced_hosts: Vec<(f64, f64)> = (1..n).map(|k| (hours(k), w.vms.len() as f64)).collect();
    let traced_util: Vec<(f64, f64)> = (1..n)
        .map(|k| {
            let s: f64 = w.vms.iter().map(|v| v.util[k]).sum();
            (hours(k), 100.0 * s / w.vms.len().max(1) as f64)
        })
        .collect();
    let mut hosts = vec![Series {
        name: "as traced (one VM per host)".into(),
        points: traced_hosts,
    }];
    let mut util = vec![Series {
        name: "as traced (one VM per host)".into(),
        points: traced_util,
    }];
    for r in results {
        if let Some(sim) = &r.sim {
            hosts.push(Series {
                name: r.policy.to_string(),
                points: sim
                    .series
                    .iter()
                    .map(|s| (s.time_s / 3600.0, s.active_hosts as f64))
                    .collect(),
            });
            util.push(Series {
                name: r.policy.to_string(),
                points: sim
                    .series
                    .iter()
                    .map(|s| (s.time_s / 3600.0, 100.0 * s.mean_util))
                    .collect(),
            });
        }
    }
    (hosts, util)
}

/// Loads every PlanetLab day under `dir` (sorted), in the reference order.
pub fn load_planetlab_days(dir: &Path) -> Result<Vec<Workload>, TraceError> {
    let mut days: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| TraceError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    days.sort();
    days.iter()
        .map(|d| trace::planetlab::load_dir(d, FileOrder::Reference))
        .collect()
}

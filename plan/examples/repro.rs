//! Developer probe: one policy on one PlanetLab day, or `all` of them
//! (`cargo run --release -p plan --example repro -- 20110303 lr-mmt-1.2`);
//! the data folder is PLAN_DATA or ../shared/data beside the repository,
//! condo planner knobs come from PLAN_* environment variables.
#![allow(clippy::print_stdout, clippy::unwrap_used)]
use plan::policy::{simulate, PolicyKind, RunOptions};
use plan::trace::planetlab::{load_dir, FileOrder};
use std::path::Path;

fn env(k: &str, d: f64) -> f64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pol: PolicyKind = args[2].parse().unwrap();
    let mut opts = RunOptions::default();
    let c = &mut opts.condo;
    c.headroom = env("PLAN_HEADROOM", c.headroom);
    c.underload = env("PLAN_UNDERLOAD", c.underload);
    c.quantile = env("PLAN_Q", c.quantile);
    c.overload = env("PLAN_OVER", c.overload);
    c.budget = env("PLAN_BUDGET", c.budget as f64) as usize;
    c.window = env("PLAN_WINDOW", c.window as f64) as usize;
    c.vm_cooldown = env("PLAN_VMCOOL", c.vm_cooldown as f64) as usize;
    c.host_cooldown = env("PLAN_HOSTCOOL", c.host_cooldown as f64) as usize;
    c.corr_weight = env("PLAN_CORR", c.corr_weight);
    let hosts = plan::model::cloudsim_hosts(800);
    let data = std::env::var("PLAN_DATA")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data").to_owned());
    let days: Vec<String> = if args[1] == "all" {
        let mut d: Vec<String> = std::fs::read_dir(format!("{data}/planetlab"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        d.sort();
        d
    } else {
        vec![args[1].clone()]
    };
    let mut es = Vec::new();
    for day in days {
        let w = load_dir(
            Path::new(&format!("{data}/planetlab/{day}")),
            FileOrder::Reference,
        )
        .unwrap();
        let t = std::time::Instant::now();
        let (m, _) = simulate(pol, &hosts, &w, &opts).unwrap();
        println!("{day} {pol} E={:.2} SLATAH={:.4} PDM={:.6} ESV={:.6} mig={} hosts={:.1} util={:.3} ({:.2}s)",
            m.energy_kwh, m.slatah, m.pdm, m.esv, m.migrations, m.mean_active_hosts, m.mean_active_util, t.elapsed().as_secs_f64());
        es.push((m.energy_kwh, m.esv));
    }
    es.sort_by(|a, b| a.0.total_cmp(&b.0));
    let e = es[es.len() / 2].0;
    es.sort_by(|a, b| a.1.total_cmp(&b.1));
    println!("median-ish E={e:.1} ESV={:.6}", es[es.len() / 2].1);
}

#![allow(clippy::print_stdout)]
use plan::policy::{simulate, PolicyKind, RunOptions};
use plan::trace::planetlab::{load_dir, FileOrder};
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let day = &args[1];
    let pol: PolicyKind = args[2].parse().expect("policy");
    let order = if args.get(3).map(String::as_str) == Some("fs") {
        FileOrder::Fs
    } else {
        FileOrder::Sorted
    };
    let w = load_dir(
        Path::new(&format!("/work/shared/data/planetlab/{day}")),
        order,
    )
    .expect("load");
    let hosts = plan::model::cloudsim_hosts(800);
    let t = std::time::Instant::now();
    let (m, _) = simulate(pol, &hosts, &w, &RunOptions::default()).expect("sim");
    println!("{day} {pol} E={:.2} SLATAH={:.4} PDM={:.6} ESV={:.6} mig={} hosts={:.1} util={:.3} ({:.2}s)",
        m.energy_kwh, m.slatah, m.pdm, m.esv, m.migrations, m.mean_active_hosts, m.mean_active_util, t.elapsed().as_secs_f64());
}

//! Replays the real PlanetLab day 20110303 (committed sample: one VM per
//! line, name TAB percentages, in CloudSim's file order; names may hold
//! spaces) with LR-MMT and checks the figures against CloudSim 3.0.3's
//! own run of that day (the reproduction table); with the shared data
//! beside the repository, also checks the sample against it.

use std::io::Read;
use std::path::Path;

use plan::model::cloudsim_hosts;
use plan::policy::{simulate, PolicyKind, RunOptions};
use plan::trace::{planetlab, VmTrace, Workload};

fn sample() -> Workload {
    let gz = include_bytes!("data/planetlab-20110303.txt.gz");
    let mut text = String::new();
    let read = flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text);
    assert!(read.is_ok());
    let vms = text
        .lines()
        .map(|l| {
            let (name, values) = l.split_once('\t').unwrap_or_default();
            let name = name.to_owned();
            let util = values
                .split(' ')
                .map(|x| x.parse::<f64>().unwrap_or(f64::NAN) / 100.0)
                .collect();
            VmTrace {
                name,
                mips: 0.0,
                pes: 1,
                ram_mb: 0,
                util,
            }
        })
        .collect();
    let mut w = Workload {
        name: "20110303".into(),
        interval_s: 300.0,
        vms,
    };
    w.assign_cloudsim_types();
    w
}

fn close(ours: f64, theirs: f64, tol: f64) -> bool {
    ((ours - theirs) / theirs).abs() <= tol
}

#[test]
fn lr_mmt_reproduces_cloudsim_on_20110303() {
    let w = sample();
    assert_eq!(w.vms.len(), 1052);
    assert_eq!(w.samples(), 288);
    let kind: PolicyKind = "lr-mmt-1.2".parse().unwrap_or(PolicyKind::Npa);
    let (m, _) = match simulate(kind, &cloudsim_hosts(800), &w, &RunOptions::default()) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    // cloudsim-3.0.3-planetlab-baseline.csv: lr_mmt_1.2,20110303,1052,167.83,0.0572,0.000755,...,27649
    assert!(
        close(m.energy_kwh, 167.83, 0.001),
        "energy {}",
        m.energy_kwh
    );
    assert!(close(m.slatah, 0.0572, 0.005), "slatah {}", m.slatah);
    assert!(close(m.pdm, 0.000755, 0.005), "pdm {}", m.pdm);
    assert_eq!(m.migrations, 27649);
}

#[test]
fn sample_matches_the_shared_data() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/planetlab/20110303");
    if !dir.exists() {
        eprintln!("skipped: {} not present", dir.display());
        return;
    }
    let shared = match planetlab::load_dir(&dir, planetlab::FileOrder::Reference) {
        Ok(w) => w,
        Err(e) => panic!("{e}"),
    };
    let s = sample();
    // Compared without printing a thousand traces on failure.
    assert_eq!(shared.vms.len(), s.vms.len());
    for (a, b) in shared.vms.iter().zip(&s.vms) {
        assert!(a == b, "sample differs from the shared data at {}", a.name);
    }
}

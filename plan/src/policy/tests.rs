//! Hand-made scenarios whose answers are known: which VM a policy must move
//! off an overloaded host, when an underloaded host empties, and the
//! metrics of tiny runs worked out by hand.

use super::*;
use crate::model::{HostSpec, PowerModel};
use crate::sim::Sim;
use crate::trace::{VmTrace, Workload};

fn g5(n: usize) -> Vec<HostSpec> {
    (0..n).map(|i| HostSpec::hp_g5(format!("h{i}"))).collect()
}

/// VMs with constant utilization for `samples` intervals.
fn workload(vms: &[(&str, f64, u32, f64)], samples: usize) -> Workload {
    Workload {
        name: "hand".into(),
        interval_s: 300.0,
        vms: vms
            .iter()
            .map(|&(name, mips, ram, u)| VmTrace {
                name: name.into(),
                mips,
                pes: 1,
                ram_mb: ram,
                util: vec![u; samples],
            })
            .collect(),
    }
}

fn run(kind: &str, hosts: &[HostSpec], w: &Workload, fixed: Vec<usize>) -> (Metrics, Sim) {
    let opts = RunOptions {
        record_moves: true,
        fixed: Some(fixed),
        ..RunOptions::default()
    };
    let kind: PolicyKind = match kind.parse() {
        Ok(k) => k,
        Err(e) => panic!("{e}"),
    };
    match simulate(kind, hosts, w, &opts) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

fn moves(sim: &Sim) -> Vec<(usize, usize, usize)> {
    sim.moves.iter().map(|m| (m.vm, m.from, m.to)).collect()
}

// Host 0 carries A (2500 MIPS, 1740 MB) and B (2500 MIPS, 870 MB), both
// at 100 %: 5000 of 5320 MIPS, over any threshold below 0.94.
const OVER: [(&str, f64, u32, f64); 2] = [("A", 2500.0, 1740, 1.0), ("B", 2500.0, 870, 1.0)];

#[test]
fn thr_mmt_moves_the_vm_with_least_ram() {
    let (_, sim) = run("thr-mmt-0.8", &g5(2), &workload(&OVER, 2), vec![0, 0]);
    assert_eq!(moves(&sim), vec![(1, 0, 1)]);
}

#[test]
fn thr_1_0_leaves_a_host_below_capacity_alone() {
    let (m, sim) = run("thr-mmt-1.0", &g5(2), &workload(&OVER, 2), vec![0, 0]);
    assert!(moves(&sim).is_empty());
    assert_eq!(m.migrations, 0);
}

#[test]
fn adaptive_policies_fall_back_to_0_7_without_history() {
    // A 2500 at 100 % + B 2000 at 75 %: 4000 / 5320 = 0.75.
    let w = workload(&[("A", 2500.0, 870, 1.0), ("B", 2000.0, 1740, 0.75)], 2);
    for p in ["lr-mmt-1.2", "lrr-mmt-1.2", "iqr-mmt-1.5", "mad-mmt-2.5"] {
        let (_, sim) = run(p, &g5(2), &w, vec![0, 0]);
        assert_eq!(moves(&sim), vec![(0, 0, 1)], "{p}");
    }
    let (_, sim) = run("thr-mmt-0.8", &g5(2), &w, vec![0, 0]);
    assert!(moves(&sim).is_empty());
}

#[test]
fn mc_falls_back_to_mmt_with_short_history() {
    let (_, sim) = run("thr-mc-0.8", &g5(2), &workload(&OVER, 2), vec![0, 0]);
    assert_eq!(moves(&sim), vec![(1, 0, 1)]);
}

#[test]
fn rs_is_seeded() {
    let w = workload(&OVER, 2);
    let (_, a) = run("thr-rs-0.8", &g5(2), &w, vec![0, 0]);
    let (_, b) = run("thr-rs-0.8", &g5(2), &w, vec![0, 0]);
    assert_eq!(moves(&a), moves(&b));
    assert_eq!(moves(&a).len(), 1);
}

#[test]
fn underloaded_host_empties_when_its_vm_fits_elsewhere() {
    // Two hosts at 500 / 5320 each, a third one off: the first empties.
    let w = workload(&[("A", 2500.0, 870, 0.2), ("B", 2500.0, 870, 0.2)], 2);
    let (_, sim) = run("thr-mmt-0.8", &g5(3), &w, vec![0, 1]);
    assert_eq!(moves(&sim), vec![(0, 0, 1)]);
}

#[test]
fn underloaded_host_stays_when_its_vms_do_not_fit() {
    // 2250 MIPS each: together 0.85 of a host, over the 0.8 threshold.
    let w = workload(&[("A", 2500.0, 870, 0.9), ("B", 2500.0, 870, 0.9)], 2);
    let (_, sim) = run("thr-mmt-0.8", &g5(3), &w, vec![0, 1]);
    assert!(moves(&sim).is_empty());
}

#[test]
fn condo_sheds_the_cheapest_vm_and_keeps_hosts_stable() {
    // 5500 MIPS on a 5320-MIPS host. Shedding C (500) is not enough;
    // A or B is, and B costs half of A's migration time at the same demand.
    let over = [OVER[0], OVER[1], ("C", 1000.0, 1740, 0.5)];
    let (_, sim) = run("condo", &g5(2), &workload(&over, 2), vec![0, 0, 0]);
    assert_eq!(moves(&sim), vec![(1, 0, 1)]);
    // 94 % is under capacity: condo leaves it (placement keeps headroom,
    // overload means a forecast over capacity).
    let (_, sim) = run("condo", &g5(2), &workload(&OVER, 2), vec![0, 0]);
    assert!(moves(&sim).is_empty());
    let w = workload(&[("A", 2500.0, 870, 0.2), ("B", 2500.0, 870, 0.2)], 2);
    let (_, sim) = run("condo", &g5(3), &w, vec![0, 1]);
    assert_eq!(moves(&sim).len(), 1);
}

#[test]
fn dvfs_energy_by_hand() {
    // One G4 host, one 1000-MIPS VM at 50 %, three samples: updates at
    // 300.1 (from idle: no energy) and 600.1 (300 s at u = 500/3720).
    let hosts = vec![HostSpec::hp_g4("g4".into())];
    let w = workload(&[("A", 1000.0, 613, 0.5)], 3);
    let (m, _) = run("dvfs", &hosts, &w, vec![0]);
    let u = 500.0 / 3720.0;
    let p = 89.4 + (92.6 - 89.4) / 10.0 * (u - 0.1) * 100.0;
    let kwh = p * 300.0 / 3.6e6;
    assert!(
        (m.energy_kwh - kwh).abs() < 1e-12,
        "{} {}",
        m.energy_kwh,
        kwh
    );
    assert_eq!(m.slatah, 0.0);
    assert_eq!(m.pdm, 0.0);
    assert_eq!(m.migrations, 0);
}

#[test]
fn migration_metrics_by_hand() {
    // B (870 MB) leaves host 0 at 300.1 and arrives 13.92 s later. Over
    // those 13.92 s: B gets 90 % of its 2500 MIPS (PDM = 250 x 13.92 over
    // the 2 x 2500 x 13.92 requested), and the target host, which counts
    // B's full request but gives it 10 %, violates all the time while the
    // source does not: SLATAH = 13.92 / (2 x 13.92).
    let (m, sim) = run("thr-mmt-0.8", &g5(2), &workload(&OVER, 2), vec![0, 0]);
    assert_eq!(sim.moves.len(), 1);
    assert!((m.pdm - 0.05).abs() < 1e-12, "{}", m.pdm);
    assert!((m.slatah - 0.5).abs() < 1e-12, "{}", m.slatah);
    assert!((m.esv - m.energy_kwh * 0.5 * 0.05).abs() < 1e-15);
}

#[test]
fn power_model_is_specpower() {
    assert_eq!(PowerModel::HP_ML110_G5.power(0.5), Some(116.0));
}

/// Two VMs on one host: 0.28 of it for 13 intervals, then 0.85.
fn jump() -> Workload {
    let mut w = workload(&[("A", 2500.0, 1740, 0.3), ("B", 2500.0, 870, 0.3)], 16);
    for vm in &mut w.vms {
        for u in &mut vm.util[13..] {
            *u = 0.9;
        }
    }
    w
}

#[test]
fn iqr_and_mad_with_history_tolerate_what_a_static_threshold_does_not() {
    // With 13 history values, the host's utilization spread (IQR, MAD) is
    // 0: the adaptive threshold is 1, above 0.85; THR 0.8 moves B at 13.
    for p in ["iqr-mmt-1.5", "mad-mmt-2.5"] {
        let (_, sim) = run(p, &g5(2), &jump(), vec![0, 0]);
        assert!(moves(&sim).is_empty(), "{p}");
    }
    let (_, sim) = run("thr-mmt-0.8", &g5(2), &jump(), vec![0, 0]);
    assert_eq!(moves(&sim), vec![(1, 0, 1)]);
    assert!((sim.moves[0].time_s - (0.1 + 13.0 * 300.0)).abs() < 1e-6);
}

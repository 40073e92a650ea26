//! Consolidation policies: the baselines of Beloglazov & Buyya (CCPE 2012)
//! as CloudSim 3.0.3 implements them ([`baseline`]), and condo's own
//! planner ([`condo`]). A policy is named on the command line as
//! `npa`, `dvfs`, `<overload>-<selection>[-<parameter>]` (overload: thr,
//! iqr, mad, lr, lrr; selection: mmt, rs, mc) or `condo`.

pub mod baseline;
pub mod condo;

use std::fmt;
use std::str::FromStr;

use crate::model::HostSpec;
use crate::sim::{InitialPlacement, Metrics, Policy, Sim, SimError};
use crate::trace::Workload;

/// Host overload detection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Overload {
    /// Static threshold on requested CPU.
    Thr(f64),
    /// 1 - s x interquartile range of the host's utilization history.
    Iqr(f64),
    /// 1 - s x median absolute deviation.
    Mad(f64),
    /// Local regression forecast x s >= 1.
    Lr(f64),
    /// Robust local regression forecast x s >= 1.
    Lrr(f64),
}

/// Which VM leaves an overloaded host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Minimum migration time (least RAM).
    Mmt,
    /// Random (seeded).
    Rs,
    /// Maximum correlation with the host's other VMs.
    Mc,
}

/// A policy by name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PolicyKind {
    /// Non power aware: every host at full power.
    Npa,
    /// Power proportional to load, no migration.
    Dvfs,
    Dynamic(Overload, Selection),
    /// condo's planner.
    Condo,
}

/// Error naming an unknown policy.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown policy {0:?}: expected npa, dvfs, condo or <thr|iqr|mad|lr|lrr>-<mmt|rs|mc>[-PARAM]"
)]
pub struct PolicyNameError(String);

impl FromStr for PolicyKind {
    type Err = PolicyNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase().replace('_', "-");
        let bad = || PolicyNameError(s.to_owned());
        match lower.as_str() {
            "npa" => return Ok(PolicyKind::Npa),
            "dvfs" => return Ok(PolicyKind::Dvfs),
            "condo" => return Ok(PolicyKind::Condo),
            _ => {}
        }
        let mut parts = lower.splitn(3, '-');
        let od = parts.next().ok_or_else(bad)?;
        let sel = match parts.next().ok_or_else(bad)? {
            "mmt" => Selection::Mmt,
            "rs" => Selection::Rs,
            "mc" => Selection::Mc,
            _ => return Err(bad()),
        };
        let param = parts
            .next()
            .map(str::parse::<f64>)
            .transpose()
            .map_err(|_| bad())?;
        let od = match (od, param) {
            ("thr", p) => Overload::Thr(p.unwrap_or(0.8)),
            ("iqr", p) => Overload::Iqr(p.unwrap_or(1.5)),
            ("mad", p) => Overload::Mad(p.unwrap_or(2.5)),
            ("lr", p) => Overload::Lr(p.unwrap_or(1.2)),
            ("lrr", p) => Overload::Lrr(p.unwrap_or(1.2)),
            _ => return Err(bad()),
        };
        Ok(PolicyKind::Dynamic(od, sel))
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyKind::Npa => write!(f, "npa"),
            PolicyKind::Dvfs => write!(f, "dvfs"),
            PolicyKind::Condo => write!(f, "condo"),
            PolicyKind::Dynamic(o, s) => {
                let s = match s {
                    Selection::Mmt => "mmt",
                    Selection::Rs => "rs",
                    Selection::Mc => "mc",
                };
                match o {
                    Overload::Thr(p) => write!(f, "thr-{s}-{p}"),
                    Overload::Iqr(p) => write!(f, "iqr-{s}-{p}"),
                    Overload::Mad(p) => write!(f, "mad-{s}-{p}"),
                    Overload::Lr(p) => write!(f, "lr-{s}-{p}"),
                    Overload::Lrr(p) => write!(f, "lrr-{s}-{p}"),
                }
            }
        }
    }
}

/// The nine dynamic baselines of the CloudSim reference run, plus DVFS.
pub fn reference_policies() -> Vec<PolicyKind> {
    [
        "dvfs",
        "thr-mmt-0.8",
        "thr-mmt-1.0",
        "iqr-mmt-1.5",
        "mad-mmt-2.5",
        "lr-mmt-1.2",
        "lrr-mmt-1.2",
        "lr-rs-1.2",
        "lr-mc-1.2",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}

/// Options of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Seed of the random selection policy.
    pub seed: u64,
    /// Record every migration.
    pub record_moves: bool,
    /// Initial host per VM (from an inventory); PABFD / first fit otherwise.
    pub fixed: Option<Vec<usize>>,
    /// Tuning of condo's planner.
    pub condo: condo::Params,
    /// Keep VMs idle at 0 % instead of removing them as CloudSim does.
    pub keep_idle_vms: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            seed: 1,
            record_moves: false,
            fixed: None,
            condo: condo::Params::default(),
            keep_idle_vms: false,
        }
    }
}

/// Simulates `w` on `hosts` under `kind`; returns the figures and the
/// simulator (for its series, moves and final placement).
pub fn simulate(
    kind: PolicyKind,
    hosts: &[HostSpec],
    w: &Workload,
    opts: &RunOptions,
) -> Result<(Metrics, Sim), SimError> {
    let mut sim = Sim::new(hosts, w)?;
    sim.record_moves = opts.record_moves;
    sim.keep_idle_vms = opts.keep_idle_vms;
    let initial = match (&opts.fixed, kind) {
        (Some(_), _) => InitialPlacement::Fixed,
        (None, PolicyKind::Npa | PolicyKind::Dvfs) => InitialPlacement::FirstFit,
        (None, _) => InitialPlacement::Pabfd,
    };
    let fixed = opts.fixed.clone().unwrap_or_default();
    let metrics = match kind {
        PolicyKind::Npa => {
            sim.place_initial(initial, &fixed, None)?;
            sim.non_power_aware = true;
            let mut m = sim.run(None);
            // CloudSim's NPA run reports energy only.
            m.slatah = 0.0;
            m.pdm = 0.0;
            m.slav = 0.0;
            m.esv = 0.0;
            m
        }
        PolicyKind::Dvfs => {
            sim.place_initial(initial, &fixed, None)?;
            sim.run(None)
        }
        PolicyKind::Dynamic(o, s) => {
            let mut p = baseline::Baseline::new(o, s, opts.seed);
            sim.place_initial(initial, &fixed, Some(&mut p as &mut dyn Policy))?;
            sim.run(Some(&mut p as &mut dyn Policy))
        }
        PolicyKind::Condo => {
            let mut p = condo::Condo::new(opts.condo.clone());
            sim.place_initial(initial, &fixed, Some(&mut p as &mut dyn Policy))?;
            sim.run(Some(&mut p as &mut dyn Policy))
        }
    };
    Ok((metrics, sim))
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            "npa",
            "dvfs",
            "condo",
            "thr-mmt-0.8",
            "lr-mc-1.2",
            "iqr-rs-1.5",
        ] {
            let k: PolicyKind = match s.parse() {
                Ok(k) => k,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(k.to_string(), s);
        }
        assert!("foo-mmt".parse::<PolicyKind>().is_err());
        assert_eq!(
            "LR_MMT_1.2".parse::<PolicyKind>().ok(),
            Some(PolicyKind::Dynamic(Overload::Lr(1.2), Selection::Mmt))
        );
    }
}

#[cfg(test)]
mod tests;

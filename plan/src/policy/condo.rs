//! condo's planner. The same simulator and metrics as the baselines, other
//! decisions:
//!
//! - **creation**: first fit on full VM size (what a cautious operator does
//!   without history), not power-aware best fit on stale load, which starts
//!   one VM per host and pays hundreds of migrations to undo it;
//! - **forecast**: a VM's demand for the next interval is a high quantile
//!   of its recent history (not a mean), floored by its current demand; a
//!   host's demand is the sum of its VMs' (pessimistic when peaks do not
//!   coincide, which placement exploits);
//! - **overload**: a host whose forecast exceeds its capacity sheds the VMs
//!   that fix it at the least migration cost (RAM time x demand: the time
//!   the target runs short plus the CPU the VM loses while it moves);
//! - **placement**: best fit on forecast under a headroom, preferring hosts
//!   whose load is least correlated with the VM's; an empty host is woken
//!   only when no active one fits, the most power-efficient kind first;
//! - **consolidation**: an underloaded host is emptied only when all its VMs
//!   fit elsewhere, cheapest hosts first, within a per-step migration budget;
//! - **hysteresis**: a VM that moved recently is not moved again for
//!   consolidation, and a host that just received VMs is not emptied.

use crate::sim::{Policy, Sim};
use crate::stats;

use super::baseline::move_time;

/// Tuning of the planner (the same for every trace).
#[derive(Clone, Debug)]
pub struct Params {
    /// History samples the forecast looks at.
    pub window: usize,
    /// Quantile of that history taken as the forecast (0..=1).
    pub quantile: f64,
    /// A host whose forecast exceeds this share of its capacity sheds VMs.
    pub overload: f64,
    /// Placement keeps forecast load under this share of capacity.
    pub headroom: f64,
    /// Hosts whose current load is under this share may be emptied.
    pub underload: f64,
    /// Steps a moved VM stays put (unless its host overloads).
    pub vm_cooldown: usize,
    /// Steps a host that received VMs is not emptied.
    pub host_cooldown: usize,
    /// Weight of load correlation in placement.
    pub corr_weight: f64,
    /// Most migrations started per step for consolidation.
    pub budget: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            window: 12,
            quantile: 0.75,
            overload: 1.0,
            headroom: 0.9,
            underload: 0.8,
            vm_cooldown: 6,
            host_cooldown: 3,
            corr_weight: 0.1,
            budget: 40,
        }
    }
}

/// The planner and its memory of past moves.
pub struct Condo {
    p: Params,
    vm_moved: Vec<usize>,
    host_received: Vec<usize>,
}

impl Condo {
    pub fn new(p: Params) -> Condo {
        Condo {
            p,
            vm_moved: Vec::new(),
            host_received: Vec::new(),
        }
    }

    /// Forecast MIPS of VM `v` for the next interval.
    fn forecast(&self, sim: &Sim, v: usize) -> f64 {
        let vm = &sim.vms[v];
        let hist: Vec<f64> = vm.history.iter().take(self.p.window).copied().collect();
        let q = if hist.is_empty() {
            0.0
        } else {
            stats::percentile(&hist, (self.p.quantile * 100.0).clamp(1.0, 100.0))
        };
        (q * vm.mips).max(vm.req)
    }
}

/// Working state of one planning round.
struct Round {
    load: Vec<f64>,
    vms: Vec<Vec<usize>>,
    fc: Vec<f64>,
    excluded: Vec<bool>,
}

impl Condo {
    fn cooled(&self, v: usize, step: usize) -> bool {
        step >= self.vm_moved[v] + self.p.vm_cooldown || self.vm_moved[v] == 0
    }

    /// Aggregate recent history of the VMs on host `h` (most recent first).
    fn host_series(sim: &Sim, vms: &[usize]) -> Vec<f64> {
        let mut s = vec![0.0; crate::sim::HISTORY_LENGTH];
        for &v in vms {
            for (i, u) in sim.vms[v].history.iter().enumerate() {
                s[i] += u * sim.vms[v].mips;
            }
        }
        s
    }

    /// Best host for `v` among active ones, else the best empty one.
    fn place(&self, sim: &Sim, r: &Round, v: usize) -> Option<usize> {
        let f = r.fc[v];
        let pes = sim.vms[v].pes as f64;
        let vm_hist: Vec<f64> = sim.vms[v].history.iter().copied().collect();
        let mut best: Option<(f64, usize)> = None;
        for h in 0..sim.hosts.len() {
            let host = &sim.hosts[h];
            if r.excluded[h] || r.vms[h].is_empty() || host.pe_mips < f / pes {
                continue;
            }
            let cap = host.total_mips * self.p.headroom;
            if r.load[h] + f > cap {
                continue;
            }
            let slack = (cap - r.load[h] - f) / host.total_mips;
            let corr = if self.p.corr_weight > 0.0 && vm_hist.len() >= 4 {
                stats::correlation(&vm_hist, &Self::host_series(sim, &r.vms[h]))
            } else {
                0.0
            };
            let score = slack + self.p.corr_weight * corr;
            if best.is_none_or(|(s, _)| score < s) {
                best = Some((score, h));
            }
        }
        if let Some((_, h)) = best {
            return Some(h);
        }
        // Wake the empty host with the least idle power per MIPS.
        let mut best: Option<(f64, usize)> = None;
        for h in 0..sim.hosts.len() {
            let host = &sim.hosts[h];
            if r.excluded[h]
                || !r.vms[h].is_empty()
                || host.pe_mips < f / pes
                || f > host.total_mips * self.p.headroom
            {
                continue;
            }
            let eff = host.spec.power.watts[0] / host.total_mips;
            if best.is_none_or(|(e, _)| eff < e) {
                best = Some((eff, h));
            }
        }
        best.map(|(_, h)| h)
    }

    fn commit(
        &mut self,
        r: &mut Round,
        sim: &Sim,
        v: usize,
        from: usize,
        to: usize,
        map: &mut Vec<(usize, usize)>,
    ) {
        r.vms[from].retain(|&x| x != v);
        r.load[from] -= r.fc[v];
        r.vms[to].push(v);
        r.load[to] += r.fc[v];
        self.vm_moved[v] = sim.step;
        self.host_received[to] = sim.step;
        map.push((v, to));
    }
}

/// Cost of moving `v`: seconds the target runs short, weighted by the CPU
/// the VM loses meanwhile.
fn cost(sim: &Sim, v: usize, to: usize) -> f64 {
    move_time(sim, v, to) * (1.0 + sim.vms[v].req / 1000.0)
}

impl Policy for Condo {
    fn initial_host(&mut self, sim: &mut Sim, v: usize) -> Option<usize> {
        (0..sim.hosts.len()).find(|&h| sim.is_suitable(h, v))
    }

    fn optimize(&mut self, sim: &mut Sim, _time: f64) -> Vec<(usize, usize)> {
        let n = sim.hosts.len();
        if self.vm_moved.len() != sim.vms.len() {
            self.vm_moved = vec![0; sim.vms.len()];
            self.host_received = vec![0; n];
        }
        let step = sim.step;
        let mut r = Round {
            load: vec![0.0; n],
            vms: sim.hosts.iter().map(|h| h.vms.clone()).collect(),
            fc: vec![0.0; sim.vms.len()],
            excluded: vec![false; n],
        };
        for h in 0..n {
            for &v in &r.vms[h] {
                r.fc[v] = self.forecast(sim, v);
                r.load[h] += r.fc[v];
            }
        }
        let mut map = Vec::new();
        // 1. Overloaded hosts shed the cheapest VMs that fix them.
        for h in 0..n {
            let cap = sim.hosts[h].total_mips * self.p.overload;
            let pe = sim.hosts[h].pe_mips;
            let too_big: Vec<usize> = r.vms[h]
                .iter()
                .copied()
                .filter(|&v| r.fc[v] / sim.vms[v].pes as f64 > pe)
                .collect();
            if r.load[h] <= cap && too_big.is_empty() {
                continue;
            }
            r.excluded[h] = true;
            let mut shed: Vec<usize> = too_big;
            let mut rest = r.load[h] - shed.iter().map(|&v| r.fc[v]).sum::<f64>();
            let target = sim.hosts[h].total_mips * self.p.headroom;
            while rest > target {
                let cands: Vec<usize> = r.vms[h]
                    .iter()
                    .copied()
                    .filter(|v| !shed.contains(v))
                    .collect();
                if cands.is_empty() {
                    break;
                }
                // One VM that suffices, cheapest; else the best relief per cost.
                let enough = cands
                    .iter()
                    .copied()
                    .filter(|&v| rest - r.fc[v] <= target)
                    .min_by(|&a, &b| cost(sim, a, h).total_cmp(&cost(sim, b, h)));
                let pick = enough.or_else(|| {
                    cands.iter().copied().max_by(|&a, &b| {
                        (r.fc[a] / cost(sim, a, h)).total_cmp(&(r.fc[b] / cost(sim, b, h)))
                    })
                });
                let Some(v) = pick else { break };
                rest -= r.fc[v];
                shed.push(v);
            }
            shed.sort_by(|&a, &b| r.fc[b].total_cmp(&r.fc[a]));
            for v in shed {
                if let Some(to) = self.place(sim, &r, v) {
                    self.commit(&mut r, sim, v, h, to, &mut map);
                }
            }
        }
        // 2. Empty underloaded hosts, cheapest first, within the budget.
        let mut cands: Vec<(f64, usize)> = (0..n)
            .filter(|&h| {
                !r.excluded[h]
                    && !r.vms[h].is_empty()
                    && sim.hosts[h].utilization() < self.p.underload
                    && (self.host_received[h] == 0
                        || step >= self.host_received[h] + self.p.host_cooldown)
                    && r.vms[h].iter().all(|&v| self.cooled(v, step))
            })
            .map(|h| (r.vms[h].iter().map(|&v| cost(sim, v, h)).sum::<f64>(), h))
            .collect();
        cands.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut started = 0;
        for (_, h) in cands {
            if r.excluded[h] || r.vms[h].is_empty() {
                continue;
            }
            let vms = r.vms[h].clone();
            if started + vms.len() > self.p.budget {
                break;
            }
            r.excluded[h] = true;
            let saved = (r.load.clone(), r.vms.clone());
            let mut moves = Vec::new();
            let mut order = vms.clone();
            order.sort_by(|&a, &b| r.fc[b].total_cmp(&r.fc[a]));
            let mut ok = true;
            for v in order {
                // Only onto hosts already active: never wake one to empty another.
                match self.place(sim, &r, v).filter(|&to| !r.vms[to].is_empty()) {
                    Some(to) => {
                        r.vms[h].retain(|&x| x != v);
                        r.load[h] -= r.fc[v];
                        r.vms[to].push(v);
                        r.load[to] += r.fc[v];
                        moves.push((v, to));
                    }
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                (r.load, r.vms) = saved;
                continue;
            }
            for &(v, to) in &moves {
                self.vm_moved[v] = step;
                self.host_received[to] = step;
                // Receivers are not emptied in the same round.
                r.excluded[to] = true;
            }
            started += moves.len();
            map.extend(moves);
        }
        map
    }
}

//! The CloudSim 3.0.3 dynamic consolidation policies, step for step as
//! `PowerVmAllocationPolicyMigrationAbstract.optimizeAllocation` runs them:
//! find overloaded hosts (THR, IQR, MAD, LR, LRR; the adaptive ones fall
//! back to a 0.7 static threshold until a host has enough history), pick
//! VMs off them (MMT, RS, MC) until they are not overloaded, place those
//! with power-aware best fit (PABFD), then empty the least-utilized hosts
//! whose VMs all fit elsewhere. Quirks of that version are kept on purpose
//! (documented in docs/plan.md): hosts that just received VMs may be
//! emptied in the same round, utilization read for decisions is the one of
//! the last update, RAM does not constrain placement after creation.

// Index loops on purpose: host indices are the identity CloudSim iterates by.
#![allow(clippy::needless_range_loop)]

use crate::model::migration_time;
use crate::sim::{add_history, Policy, Sim, HISTORY_LENGTH};
use crate::stats;

use super::{Overload, Selection};

/// A small seeded generator (splitmix64) for random selection.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// One of CloudSim's dynamic policies with PABFD placement.
pub struct Baseline {
    pub overload: Overload,
    pub selection: Selection,
    rng: Rng,
    /// Scratch for [`candidates`], kept between searches.
    cand: Vec<usize>,
    seen: Vec<bool>,
    /// Scratch for `find_host`: power increase and host.
    weighed: Vec<(f64, usize)>,
}

/// The fallback static threshold of the adaptive policies.
const FALLBACK_THR: f64 = 0.7;

impl Baseline {
    pub fn new(overload: Overload, selection: Selection, seed: u64) -> Baseline {
        Baseline {
            overload,
            selection,
            rng: Rng::new(seed),
            cand: Vec::new(),
            seen: Vec::new(),
            weighed: Vec::new(),
        }
    }
}

/// Requested CPU of a host's VMs (plus `extra`, as if it were placed
/// there) over its capacity.
pub fn requested_util(sim: &Sim, h: usize, extra: Option<usize>) -> f64 {
    let mut sum = sim.with_sums(h, |s| s.req_sum);
    if let Some(x) = extra {
        sum += sim.vms[x].req;
    }
    sum / sim.hosts[h].total_mips
}

/// `PowerHostUtilizationHistory.getUtilizationHistory`: the sum of the
/// host's VMs' histories weighted by their share of the host, most recent
/// first, trailing zeros trimmed (with `extra` added last).
pub fn host_history(sim: &Sim, h: usize, extra: Option<usize>) -> ([f64; HISTORY_LENGTH], usize) {
    let mut hist = sim.host_history(h);
    if let Some(x) = extra {
        add_history(&mut hist, &sim.vms[x], sim.hosts[h].total_mips);
    }
    let n = stats::count_non_zero_beginning(&hist);
    (hist, n)
}

/// Whether `h` (with `extra` placed on it) counts as overloaded under `od`.
pub fn is_overloaded(sim: &Sim, h: usize, od: Overload, extra: Option<usize>) -> bool {
    let thr = |t: f64| requested_util(sim, h, extra) > t;
    match od {
        Overload::Thr(t) => thr(t),
        Overload::Iqr(s) | Overload::Mad(s) => {
            let (hist, n) = host_history(sim, h, extra);
            let hist = &hist[..n];
            if stats::count_non_zero_beginning(hist) < 12 {
                return thr(FALLBACK_THR);
            }
            let spread = if matches!(od, Overload::Iqr(_)) {
                stats::iqr(hist)
            } else {
                stats::mad(hist)
            };
            requested_util(sim, h, extra) > 1.0 - s * spread
        }
        Overload::Lr(s) | Overload::Lrr(s) => {
            let (hist, n) = host_history(sim, h, extra);
            const LEN: usize = 10;
            if n < LEN {
                return thr(FALLBACK_THR);
            }
            let mut rev = [0.0; LEN];
            for (i, r) in rev.iter_mut().enumerate() {
                *r = hist[LEN - i - 1];
            }
            // With ten points CloudSim's tricube weights are never zero, so
            // its "loess" (and the robust variant) is plain least squares.
            let Some((a, b)) = stats::linear_fit(&rev) else {
                return thr(FALLBACK_THR);
            };
            let host = &sim.hosts[h];
            let mut max_ram = sim.with_sums(h, |s| s.max_ram);
            if let Some(x) = extra {
                max_ram = max_ram.max(i64::from(sim.vms[x].ram_mb));
            }
            let mig = (max_ram as f64 / (host.spec.bw_kbps / 16000.0) / sim.interval).ceil();
            let predicted = (a + b * (LEN as f64 + mig)) * s;
            predicted >= 1.0
        }
    }
}

impl Baseline {
    fn over(&self, sim: &Sim, h: usize) -> bool {
        is_overloaded(sim, h, self.overload, None)
    }

    fn select(&mut self, sim: &Sim, h: usize) -> Option<usize> {
        let migratable: Vec<usize> = sim.hosts[h]
            .vms
            .iter()
            .copied()
            .filter(|&v| !sim.vms[v].in_migration)
            .collect();
        if migratable.is_empty() {
            return None;
        }
        match self.selection {
            Selection::Mmt => mmt(sim, &migratable),
            Selection::Rs => Some(migratable[self.rng.below(migratable.len())]),
            Selection::Mc => mc(sim, &migratable),
        }
    }

    /// `findHostForVm(vm, excludedHosts)`: PABFD. Hosts are weighed in
    /// index order as CloudSim does, but of the empty idle hosts only the
    /// first of each class (the others would tie with it and lose).
    ///
    /// CloudSim keeps the first host, in index order, with the least power
    /// increase among the suitable ones not overloaded after allocation.
    /// The power increase is cheap and the overload test is not, so the
    /// hosts are tried from the least increase up (ties in index order)
    /// and the first one that passes is that host: one overload test where
    /// the scan in index order needs one per new minimum.
    fn find_host(
        &mut self,
        sim: &Sim,
        v: usize,
        excluded: &[bool],
        empties: bool,
    ) -> Option<usize> {
        let mut cand = std::mem::take(&mut self.cand);
        let mut weighed = std::mem::take(&mut self.weighed);
        candidates(sim, excluded, empties, &mut cand, &mut self.seen);
        weighed.clear();
        let mut ordered = true;
        for &h in &cand {
            if !sim.is_suitable(h, v) {
                continue;
            }
            let Some(diff) = power_diff(sim, h, v) else {
                continue;
            };
            // Least-first needs a total order (a NaN never compares less).
            ordered &= !diff.is_nan();
            weighed.push((diff, h));
        }
        // isHostOverUtilizedAfterAllocation, without the create/destroy.
        let overloaded = |h: usize| {
            sim.allocated_mips(h) != 0.0 && is_overloaded(sim, h, self.overload, Some(v))
        };
        let mut best = None;
        if ordered {
            loop {
                // The least increase below CloudSim's initial minimum, the
                // first of equals; tried hosts are set to infinity.
                let mut min = f64::MAX;
                let mut at = None;
                for (i, &(diff, _)) in weighed.iter().enumerate() {
                    if diff < min {
                        min = diff;
                        at = Some(i);
                    }
                }
                let Some(i) = at else { break };
                let h = weighed[i].1;
                if !overloaded(h) {
                    best = Some(h);
                    break;
                }
                weighed[i].0 = f64::INFINITY;
            }
        } else {
            // CloudSim's scan as written.
            let mut min = f64::MAX;
            for &(diff, h) in &weighed {
                if diff >= min || overloaded(h) {
                    continue;
                }
                min = diff;
                best = Some(h);
            }
        }
        self.cand = cand;
        self.weighed = weighed;
        best
    }
}

/// Hosts a search must weigh, in index order, into `out`: every occupied
/// host not excluded, and (when `empties`) the first empty idle host of
/// each class not excluded. Callers pass `empties = false` when every empty
/// idle host is excluded anyway (CloudSim's consolidation phase excludes
/// hosts that are off), which spares the scan. `seen` is scratch space.
pub fn candidates(
    sim: &Sim,
    excluded: &[bool],
    empties: bool,
    out: &mut Vec<usize>,
    seen: &mut Vec<bool>,
) {
    out.clear();
    let occupied = sim.occupied();
    if !empties {
        out.extend(occupied.iter().copied().filter(|&h| !excluded[h]));
        return;
    }
    seen.clear();
    seen.resize(sim.classes(), false);
    let mut found = 0;
    // Walk the hosts beside the sorted occupied list until every class has
    // its empty host, then take the rest of the occupied ones.
    let mut j = 0;
    for (h, host) in sim.hosts.iter().enumerate() {
        if found == seen.len() {
            break;
        }
        if occupied.get(j) == Some(&h) {
            j += 1;
            if !excluded[h] {
                out.push(h);
            }
        } else if !seen[host.class] && !excluded[h] {
            seen[host.class] = true;
            found += 1;
            out.push(h);
        }
    }
    out.extend(occupied[j..].iter().copied().filter(|&h| !excluded[h]));
}

/// Power increase of `h` if `v` joined it, from the last update's load
/// (`getPowerAfterAllocation - getPower`).
pub fn power_diff(sim: &Sim, h: usize, v: usize) -> Option<f64> {
    let host = &sim.hosts[h];
    let after = (sim.allocated_mips(h) + sim.vms[v].req) / host.total_mips;
    let pa = host.spec.power.power(after)?;
    let p0 = host.power()?;
    Some(pa - p0)
}

/// Minimum migration time: the first VM with the least RAM.
pub fn mmt(sim: &Sim, migratable: &[usize]) -> Option<usize> {
    let mut best = None;
    let mut min = f64::MAX;
    for &v in migratable {
        let m = sim.vms[v].ram_mb as f64;
        if m < min {
            min = m;
            best = Some(v);
        }
    }
    best
}

/// Maximum correlation: the VM whose history the others explain best
/// (R^2 of a multiple regression); MMT when there is too little history.
fn mc(sim: &Sim, migratable: &[usize]) -> Option<usize> {
    let m = migratable
        .iter()
        .map(|&v| sim.vms[v].history.len())
        .min()
        .unwrap_or(0);
    let rows: Vec<Vec<f64>> = migratable
        .iter()
        .map(|&v| sim.vms[v].history.iter().take(m).copied().collect())
        .collect();
    let Some(metrics) = stats::r_squared_each(&rows) else {
        return mmt(sim, migratable);
    };
    let mut max = f64::MIN_POSITIVE;
    let mut idx = 0;
    for (i, &r) in metrics.iter().enumerate() {
        if r > max {
            max = r;
            idx = i;
        }
    }
    Some(migratable[idx])
}

/// Sorts VMs by requested MIPS, highest first (stable).
pub fn sort_by_cpu(sim: &Sim, vms: &mut [usize]) {
    vms.sort_by(|&a, &b| sim.vms[b].req.total_cmp(&sim.vms[a].req));
}

impl Policy for Baseline {
    fn initial_host(&mut self, sim: &mut Sim, v: usize) -> Option<usize> {
        let none = vec![false; sim.hosts.len()];
        self.find_host(sim, v, &none, true)
    }

    fn optimize(&mut self, sim: &mut Sim, _time: f64) -> Vec<(usize, usize)> {
        let n = sim.hosts.len();
        // A host without VMs requests nothing: never overloaded.
        let over: Vec<usize> = sim
            .occupied()
            .iter()
            .copied()
            .filter(|&h| !sim.hosts[h].vms.is_empty() && self.over(sim, h))
            .collect();
        // saveAllocation
        let saved: Vec<Vec<usize>> = sim.hosts.iter().map(|h| h.vms.clone()).collect();
        let mut to_migrate = Vec::new();
        for &h in &over {
            while let Some(v) = self.select(sim, h) {
                to_migrate.push(v);
                sim.vm_destroy(h, v);
                if !self.over(sim, h) {
                    break;
                }
            }
        }
        let mut excluded = vec![false; n];
        for &h in &over {
            excluded[h] = true;
        }
        sort_by_cpu(sim, &mut to_migrate);
        let mut map = Vec::new();
        for v in to_migrate {
            if let Some(h) = self.find_host(sim, v, &excluded, true) {
                sim.vm_create(h, v);
                map.push((v, h));
            }
        }
        // Under-utilized hosts.
        let mut excl_under = excluded.clone();
        let mut excl_place = excluded;
        for h in 0..n {
            if sim.hosts[h].utilization() == 0.0 {
                excl_under[h] = true;
                excl_place[h] = true;
            }
        }
        loop {
            if excl_under.iter().all(|&x| x) {
                break;
            }
            let Some(u) = under_utilized(sim, &excl_under) else {
                break;
            };
            excl_under[u] = true;
            excl_place[u] = true;
            let mut vms: Vec<usize> = sim.hosts[u]
                .vms
                .iter()
                .copied()
                .filter(|&v| !sim.vms[v].in_migration)
                .collect();
            if vms.is_empty() {
                continue;
            }
            sort_by_cpu(sim, &mut vms);
            let mut placed: Vec<(usize, usize)> = Vec::new();
            for v in vms {
                match self.find_host(sim, v, &excl_place, false) {
                    Some(h) => {
                        sim.vm_create(h, v);
                        placed.push((v, h));
                    }
                    None => {
                        for &(pv, ph) in &placed {
                            sim.vm_destroy(ph, pv);
                        }
                        placed.clear();
                        break;
                    }
                }
            }
            for &(_, h) in &placed {
                excl_under[h] = true;
            }
            map.extend(placed);
        }
        restore(sim, &saved);
        map
    }
}

/// `getUnderUtilizedHost`: the least-utilized active host not excluded and
/// not busy with migrations.
pub fn under_utilized(sim: &Sim, excluded: &[bool]) -> Option<usize> {
    let mut min = 1.0;
    let mut best = None;
    // Hosts with load are all occupied; the others have utilization 0.
    for &h in sim.occupied() {
        if excluded[h] {
            continue;
        }
        let host = &sim.hosts[h];
        let u = host.utilization();
        if u > 0.0 && u < min && !all_migrating_out_or_any_in(sim, h) {
            min = u;
            best = Some(h);
        }
    }
    best
}

fn all_migrating_out_or_any_in(sim: &Sim, h: usize) -> bool {
    let host = &sim.hosts[h];
    for &v in &host.vms {
        if !sim.vms[v].in_migration {
            return false;
        }
        if host.migrating_in.contains(&v) {
            return true;
        }
    }
    true
}

/// `restoreAllocation`: every host gets back the VMs it had (migrating-in
/// ones first).
pub fn restore(sim: &mut Sim, saved: &[Vec<usize>]) {
    for h in 0..sim.hosts.len() {
        let mut vms = sim.hosts[h].migrating_in.clone();
        for &v in &saved[h] {
            if !sim.hosts[h].migrating_in.contains(&v) {
                vms.push(v);
            }
        }
        sim.hosts[h].vms.clear();
        sim.vm_create_all(h, &vms);
    }
}

/// Migration time of `v` to `h`, seconds.
pub fn move_time(sim: &Sim, v: usize, h: usize) -> f64 {
    migration_time(sim.vms[v].ram_mb, sim.hosts[h].spec.bw_kbps)
}

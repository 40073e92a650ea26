//! The data-centre simulator: hosts, VMs, time, energy and SLA accounting,
//! following CloudSim 3.0.3's event semantics for its PlanetLab experiments
//! (`PowerDatacenter`, `HostDynamicWorkload`, `PowerHost`, `PowerVm`,
//! `VmSchedulerTimeSharedOverSubscription`, `Helper`'s metrics) so that its
//! figures can be reproduced:
//!
//! - updates at t = 0.1 + k x interval (k = 1 .. samples-1), each followed
//!   by the policy's decisions; a migration ends RAM / (BW / 16000) s later
//!   and all hosts are updated at that instant too;
//! - during a migration the VM runs on both hosts: 90 % of its request on
//!   the source, 10 % on the target, which counts its full request;
//! - energy integrates each host's power linearly between two updates, from
//!   the utilization at the earlier one; a host idle at the earlier one draws
//!   nothing;
//! - SLATAH is the share of active-host time in which a host got less CPU
//!   than requested, pooled over hosts; PDM the CPU lost to migrations over
//!   the CPU requested, pooled over VMs.
//!
//! Decisions (which VMs move where) belong to [`crate::policy`]; this module
//! only offers them the operations CloudSim's policies use (tentative
//! create/destroy of a VM on a host, suitability, history).

use std::collections::VecDeque;

use serde::Serialize;

use crate::model::{migration_time, HostSpec, VM_BW};
use crate::trace::Workload;

/// Length of a VM's utilization history (`PowerVm.HISTORY_LENGTH`).
pub const HISTORY_LENGTH: usize = 30;

/// One VM during the simulation.
#[derive(Clone, Debug)]
pub struct Vm {
    pub name: String,
    pub mips: f64,
    /// vCPUs; each gets at most one host core.
    pub pes: u32,
    pub ram_mb: u32,
    /// Trace with one extra sample at the end (a copy of the last), as
    /// `UtilizationModelPlanetLabInMemory` keeps it.
    data: Vec<f64>,
    pub in_migration: bool,
    /// Removed after its request dropped to zero (CloudSim semantics).
    pub removed: bool,
    /// Hosts whose scheduler lists this VM as migrating out.
    out_hosts: u32,
    /// Most recent first.
    pub history: VecDeque<f64>,
    prev_time: f64,
    /// Requested MIPS at the last update.
    pub req: f64,
    /// What the host's scheduler last allocated for (its stale request).
    sched_req: f64,
    /// Not created yet: requests its full MIPS, RAM and bandwidth.
    pub instantiating: bool,
    entry: Option<VmEntry>,
    total_req: f64,
    total_alloc: f64,
    under_mig: f64,
}

#[derive(Clone, Copy, Debug)]
struct VmEntry {
    time: f64,
    alloc: f64,
    req: f64,
    in_migration: bool,
}

#[derive(Clone, Copy, Debug)]
struct HostEntry {
    time: f64,
    alloc: f64,
    req: f64,
    active: bool,
}

/// One host during the simulation.
#[derive(Clone, Debug)]
pub struct Host {
    pub spec: HostSpec,
    /// Hosts of one class have identical specs: when empty they are
    /// interchangeable, so searches look at the first empty one only.
    pub class: usize,
    pub total_mips: f64,
    pub pe_mips: f64,
    /// VMs placed here, in CloudSim's list order (migrating-in ones too).
    pub vms: Vec<usize>,
    pub migrating_in: Vec<usize>,
    sched_in: Vec<usize>,
    /// Number of VMs the scheduler lists as migrating out (the list itself
    /// is [`Sim::out_bits`]).
    sched_out_len: usize,
    /// MIPS the scheduler still has free.
    pub available: f64,
    ram_free: f64,
    bw_free: f64,
    /// MIPS used at the last update (migrating VMs counted at full).
    pub util_mips: f64,
    pub prev_util_mips: f64,
    /// [`Host::power`] at `util_mips`, kept with it: PABFD asks for it once
    /// per host weighed.
    power_now: Option<f64>,
    entry: Option<HostEntry>,
    active_time: f64,
    violation_time: f64,
}

impl Host {
    /// CPU utilization at the last update (`PowerHost.getUtilizationOfCpu`).
    pub fn utilization(&self) -> f64 {
        cap(self.util_mips / self.total_mips)
    }

    fn power_at(&self, u: f64) -> f64 {
        self.spec
            .power
            .power(u.min(1.0))
            .unwrap_or(self.spec.power.max())
    }

    /// Power now, from the last update.
    pub fn power(&self) -> Option<f64> {
        self.power_now
    }
}

fn cap(u: f64) -> f64 {
    if u > 1.0 && u < 1.01 {
        1.0
    } else {
        u
    }
}

/// An update time with what every host's update needs of it.
struct At {
    t: f64,
    interp: Interp,
    history_step: bool,
}

/// Interpolation between two trace samples, the VM-independent part.
#[derive(Clone, Copy, Debug)]
enum Interp {
    Exact(usize),
    Between {
        t1: usize,
        t2: usize,
        denom: f64,
        off: f64,
    },
}

/// Sums over a host's VMs (see [`Sim::with_sums`]).
#[derive(Clone, Copy, Debug)]
pub struct HostSums {
    /// MIPS allocated by the scheduler (migrating-in VMs at full request).
    pub alloc_mips: f64,
    /// Requested MIPS.
    pub req_sum: f64,
    /// Largest VM RAM (MB), `i32::MIN` for no VM.
    pub max_ram: i64,
}

/// One migration the simulator carried out.
#[derive(Clone, Debug, Serialize)]
pub struct Move {
    pub time_s: f64,
    pub vm: usize,
    pub from: usize,
    pub to: usize,
}

/// Hosts in use and their load after one update.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StepSample {
    pub time_s: f64,
    pub active_hosts: usize,
    pub mean_util: f64,
}

/// Figures of one run, as CloudSim's `Helper.printResults` defines them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Metrics {
    pub energy_kwh: f64,
    pub slatah: f64,
    pub pdm: f64,
    pub slav: f64,
    pub esv: f64,
    pub migrations: usize,
    /// Mean over updates of the number of active hosts.
    pub mean_active_hosts: f64,
    /// Mean over updates of the active hosts' mean CPU utilization.
    pub mean_active_util: f64,
    /// Share of requested CPU not delivered, for any reason.
    pub overall_sla: f64,
}

/// Errors setting up a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("VM {0} ({1} MIPS, {2} MB) fits on no host")]
    NoHost(String, f64, u32),
    #[error("the workload has {0} samples per VM; at least 2 are needed")]
    TooShort(usize),
    #[error("no hosts")]
    NoHosts,
}

/// How VMs are placed at the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialPlacement {
    /// First host that fits (`PowerVmAllocationPolicySimple`).
    FirstFit,
    /// Power-aware best fit with full VM MIPS (what CloudSim's migration
    /// policies do at creation).
    Pabfd,
    /// Given host per VM.
    Fixed,
}

/// A consolidation policy: looks at the data centre after an update and
/// returns the migrations to start now, in order (VM, target host).
pub trait Policy {
    fn optimize(&mut self, sim: &mut Sim, time: f64) -> Vec<(usize, usize)>;

    /// Host for VM `v` at creation (before the first update); first fit
    /// unless the policy says otherwise.
    fn initial_host(&mut self, sim: &mut Sim, v: usize) -> Option<usize> {
        (0..sim.hosts.len()).find(|&h| sim.is_suitable(h, v))
    }
}

/// The simulator state.
pub struct Sim {
    pub interval: f64,
    pub hosts: Vec<Host>,
    pub vms: Vec<Vm>,
    vm_table: Vec<Option<usize>>,
    last_process: f64,
    energy_ws: f64,
    migrations: usize,
    /// Index of the current update (1-based; 0 before the first).
    pub step: usize,
    samples: usize,
    pub series: Vec<StepSample>,
    pub moves: Vec<Move>,
    /// Record every migration in `moves`.
    pub record_moves: bool,
    /// The non-power-aware baseline: every host at full power all the time.
    pub non_power_aware: bool,
    /// Keep VMs whose request drops to zero (CloudSim removes them as
    /// finished; a guest of condo's host manager is only idle).
    pub keep_idle_vms: bool,
    cache: std::cell::RefCell<Vec<Option<HostSums>>>,
    hist_cache: std::cell::RefCell<Vec<Option<[f64; HISTORY_LENGTH]>>>,
    occupied: Vec<usize>,
    n_classes: usize,
    scratch: Vec<(usize, f64, f64, bool)>,
    /// The schedulers' lists of migrating-out VMs as one bit per VM and
    /// host (bit `v * hosts + h`): CloudSim never forgets a VM that migrated
    /// out until it runs on the host again, so the lists grow long, and
    /// every host update asks of each of its VMs whether it is listed.
    out_bits: Vec<u64>,
}

impl Sim {
    /// Builds the data centre with no VM placed yet.
    pub fn new(hosts: &[HostSpec], w: &Workload) -> Result<Sim, SimError> {
        let samples = w.samples();
        if samples < 2 {
            return Err(SimError::TooShort(samples));
        }
        if hosts.is_empty() {
            return Err(SimError::NoHosts);
        }
        let vms = w
            .vms
            .iter()
            .map(|t| {
                let mut data = t.util.clone();
                data.resize(samples, 0.0);
                data.push(data[samples - 1]);
                Vm {
                    name: t.name.clone(),
                    mips: t.mips,
                    pes: t.pes.max(1),
                    ram_mb: t.ram_mb,
                    data,
                    in_migration: false,
                    removed: false,
                    out_hosts: 0,
                    history: VecDeque::with_capacity(HISTORY_LENGTH + 1),
                    prev_time: 0.0,
                    req: t.mips,
                    sched_req: t.mips,
                    instantiating: true,
                    entry: None,
                    total_req: 0.0,
                    total_alloc: 0.0,
                    under_mig: 0.0,
                }
            })
            .collect::<Vec<_>>();
        let mut classes: Vec<&HostSpec> = Vec::new();
        let mut class_of = Vec::with_capacity(hosts.len());
        for s in hosts {
            let same = |c: &&HostSpec| {
                c.cores == s.cores
                    && c.mips_per_core == s.mips_per_core
                    && c.ram_mb == s.ram_mb
                    && c.bw_kbps == s.bw_kbps
                    && c.power == s.power
            };
            match classes.iter().position(same) {
                Some(i) => class_of.push(i),
                None => {
                    class_of.push(classes.len());
                    classes.push(s);
                }
            }
        }
        let hosts = hosts
            .iter()
            .zip(class_of)
            .map(|(s, class)| Host {
                class,
                total_mips: s.total_mips(),
                pe_mips: s.mips_per_core,
                spec: s.clone(),
                vms: Vec::new(),
                migrating_in: Vec::new(),
                sched_in: Vec::new(),
                sched_out_len: 0,
                available: s.total_mips(),
                ram_free: s.ram_mb as f64,
                bw_free: s.bw_kbps,
                util_mips: 0.0,
                prev_util_mips: 0.0,
                power_now: s.power.power(0.0),
                entry: None,
                active_time: 0.0,
                violation_time: 0.0,
            })
            .collect::<Vec<Host>>();
        let n_hosts = hosts.len();
        let n_vms = vms.len();
        let n_classes = classes.len();
        Ok(Sim {
            interval: w.interval_s,
            vm_table: vec![None; vms.len()],
            hosts,
            vms,
            last_process: 0.0,
            energy_ws: 0.0,
            migrations: 0,
            step: 0,
            samples,
            series: Vec::new(),
            moves: Vec::new(),
            record_moves: false,
            non_power_aware: false,
            keep_idle_vms: false,
            cache: std::cell::RefCell::new(vec![None; n_hosts]),
            hist_cache: std::cell::RefCell::new(vec![None; n_hosts]),
            occupied: Vec::new(),
            n_classes,
            scratch: Vec::new(),
            out_bits: vec![0; (n_vms * n_hosts).div_ceil(64)],
        })
    }

    /// Utilization of VM `v` at time `t`, interpolated between samples
    /// (`UtilizationModelPlanetLabInMemory.getUtilization`).
    pub fn util_at(&self, v: usize, t: f64) -> f64 {
        self.util_with(v, &self.interp(t))
    }

    /// `util_at` for every VM at one time: the interpolation terms that do
    /// not depend on the VM are computed once (same arithmetic).
    fn interp(&self, t: f64) -> Interp {
        let iv = self.interval;
        if t % iv == 0.0 {
            return Interp::Exact(((t as i64) / (iv as i64)) as usize);
        }
        let t1 = (t / iv).floor() as usize;
        let t2 = (t / iv).ceil() as usize;
        Interp::Between {
            t1,
            t2,
            denom: (t2 as f64 - t1 as f64) * iv,
            off: t - t1 as f64 * iv,
        }
    }

    fn util_with(&self, v: usize, i: &Interp) -> f64 {
        let d = &self.vms[v].data;
        let last = d.len() - 1;
        match *i {
            Interp::Exact(k) => d[k % d.len()],
            Interp::Between { t1, t2, denom, off } => {
                let (t1, t2) = (t1.min(last), t2.min(last));
                if t1 == t2 {
                    return d[t1];
                }
                let u1 = d[t1];
                let delta = (d[t2] - u1) / denom;
                u1 + delta * off
            }
        }
    }

    /// The trace sample of VM `v` for update `k` (0-based sample index).
    pub fn sample(&self, v: usize, k: usize) -> f64 {
        self.vms[v].data[k.min(self.vms[v].data.len() - 1)]
    }

    /// Host of VM `v` (its source while it migrates).
    pub fn host_of(&self, v: usize) -> Option<usize> {
        self.vm_table[v]
    }

    /// Number of updates the run will make.
    pub fn steps(&self) -> usize {
        self.samples - 1
    }

    // ----- scheduler -------------------------------------------------------

    /// Keeps [`Sim::occupied`] in step with host `h`.
    fn touch(&mut self, h: usize) {
        let busy = !self.hosts[h].vms.is_empty() || self.hosts[h].util_mips != 0.0;
        match (self.occupied.binary_search(&h), busy) {
            (Err(i), true) => self.occupied.insert(i, h),
            (Ok(i), false) => {
                self.occupied.remove(i);
            }
            _ => {}
        }
    }

    /// Number of host classes.
    pub fn classes(&self) -> usize {
        self.n_classes
    }

    /// Hosts with VMs or load at the last update, in index order. The
    /// others are empty and idle: within a host class, interchangeable.
    pub fn occupied(&self) -> &[usize] {
        &self.occupied
    }

    fn recompute_available(&mut self, h: usize) {
        self.touch(h);
        self.invalidate(h);
        let host = &self.hosts[h];
        let mut avail = host.total_mips;
        for &v in &host.vms {
            let mut t = self.vms[v].capped(self.vms[v].sched_req, host.pe_mips);
            if host.sched_in.contains(&v) {
                t *= 0.1;
            }
            if avail >= t {
                avail -= t;
            } else {
                avail = 0.0;
            }
        }
        self.hosts[h].available = avail;
    }

    /// MIPS the host's scheduler has allocated to its VMs now, a VM
    /// migrating in counted at the full request it will have
    /// (`getUtilizationOfCpuMips(host)` of CloudSim 3.0's policies). Unlike
    /// [`Host::util_mips`] this sees VMs placed tentatively this round.
    pub fn allocated_mips(&self, h: usize) -> f64 {
        self.with_sums(h, |s| s.alloc_mips)
    }

    /// Per-host sums the policies read many times per round, cached until
    /// the host's VMs or their requests change (computed in list order, so
    /// the arithmetic is that of CloudSim's loops).
    pub fn with_sums<R>(&self, h: usize, f: impl FnOnce(&HostSums) -> R) -> R {
        if let Some(Some(s)) = self.cache.borrow().get(h) {
            return f(s);
        }
        let s = self.compute_sums(h);
        let r = f(&s);
        if let Some(c) = self.cache.borrow_mut().get_mut(h) {
            *c = Some(s);
        }
        r
    }

    fn compute_sums(&self, h: usize) -> HostSums {
        let host = &self.hosts[h];
        let mut req_sum = 0.0;
        let mut max_ram = i64::from(i32::MIN);
        for &v in &host.vms {
            let vm = &self.vms[v];
            req_sum += vm.req;
            max_ram = max_ram.max(i64::from(vm.ram_mb));
        }
        HostSums {
            alloc_mips: self.compute_allocated(h),
            req_sum,
            max_ram,
        }
    }

    /// Utilization history of host `h`: its VMs' histories weighted by their
    /// size over the host's capacity, most recent first
    /// (`PowerHostUtilizationHistory`), untrimmed; cached like the sums.
    pub fn host_history(&self, h: usize) -> [f64; HISTORY_LENGTH] {
        if let Some(Some(x)) = self.hist_cache.borrow().get(h) {
            return *x;
        }
        let host = &self.hosts[h];
        let mut hist = [0.0f64; HISTORY_LENGTH];
        for &v in &host.vms {
            add_history(&mut hist, &self.vms[v], host.total_mips);
        }
        if let Some(c) = self.hist_cache.borrow_mut().get_mut(h) {
            *c = Some(hist);
        }
        hist
    }

    fn invalidate(&self, h: usize) {
        if let Some(c) = self.cache.borrow_mut().get_mut(h) {
            *c = None;
        }
        if let Some(c) = self.hist_cache.borrow_mut().get_mut(h) {
            *c = None;
        }
    }

    fn compute_allocated(&self, h: usize) -> f64 {
        let host = &self.hosts[h];
        let mut required = 0.0;
        let mut over = false;
        let mut avail = host.total_mips;
        for &v in &host.vms {
            let mut t = self.vms[v].capped(self.vms[v].sched_req, host.pe_mips);
            if host.sched_in.contains(&v) {
                t *= 0.1;
            }
            required += t;
            if avail >= t {
                avail -= t;
            } else {
                over = true;
                avail = 0.0;
            }
        }
        let scale = host.total_mips / required;
        let mut sum = 0.0;
        for &v in &host.vms {
            let capped = self.vms[v].capped(self.vms[v].sched_req, host.pe_mips);
            let out = self.vms[v].out_hosts != 0 && self.is_out(h, v);
            let inn = host.sched_in.contains(&v);
            let a = match (over, out, inn) {
                (true, true, _) => (capped * scale * 0.9).floor(),
                (true, false, true) => (capped * 0.1 * scale).floor(),
                (true, false, false) => (capped * scale).floor(),
                (false, true, _) => capped * 0.9,
                (false, false, true) => capped * 0.1,
                (false, false, false) => capped,
            };
            sum += a;
            if host.migrating_in.contains(&v) {
                sum += a * 0.9 / 0.1;
            }
        }
        sum
    }

    /// The public `allocatePesForVm`'s bookkeeping of migrating-out VMs.
    fn note_out(&mut self, h: usize, v: usize) {
        let inm = self.vms[v].in_migration;
        let host = &mut self.hosts[h];
        if !inm && (host.sched_out_len == 0 || self.vms[v].out_hosts == 0) {
            return;
        }
        let listed = self.is_out(h, v);
        let host = &mut self.hosts[h];
        if !listed && inm && !host.sched_in.contains(&v) {
            host.sched_out_len += 1;
            self.vms[v].out_hosts += 1;
            self.flip_out(h, v);
        } else if listed && !inm {
            host.sched_out_len -= 1;
            self.vms[v].out_hosts -= 1;
            self.flip_out(h, v);
        }
    }

    /// Whether host `h`'s scheduler lists `v` as migrating out.
    fn is_out(&self, h: usize, v: usize) -> bool {
        let i = v * self.hosts.len() + h;
        self.out_bits[i / 64] & (1 << (i % 64)) != 0
    }

    fn flip_out(&mut self, h: usize, v: usize) {
        let i = v * self.hosts.len() + h;
        self.out_bits[i / 64] ^= 1 << (i % 64);
    }

    /// `Host.isSuitableForVm` after creation (RAM and bandwidth requests
    /// are then zero: the traces model CPU only).
    pub fn is_suitable(&self, h: usize, v: usize) -> bool {
        let host = &self.hosts[h];
        let vm = &self.vms[v];
        let req = vm.req;
        if vm.instantiating && (host.ram_free < vm.ram_mb as f64 || host.bw_free < VM_BW) {
            return false;
        }
        host.pe_mips >= req / vm.pes as f64 && host.available >= req
    }

    /// Tentatively places `v` on `h` (`Host.vmCreate`).
    pub fn vm_create(&mut self, h: usize, v: usize) {
        self.note_out(h, v);
        self.vms[v].sched_req = self.vms[v].req;
        self.hosts[h].vms.push(v);
        self.recompute_available(h);
    }

    /// Places `vms` on `h` in order, as that many [`Sim::vm_create`] calls
    /// would: the scheduler's free MIPS is recomputed once, from the final
    /// list (each recomputation starts from scratch, so the last one is all
    /// that shows).
    pub fn vm_create_all(&mut self, h: usize, vms: &[usize]) {
        if vms.is_empty() {
            return;
        }
        for &v in vms {
            self.note_out(h, v);
            self.vms[v].sched_req = self.vms[v].req;
            self.hosts[h].vms.push(v);
        }
        self.recompute_available(h);
    }

    /// Removes `v` from `h` (`Host.vmDestroy`).
    pub fn vm_destroy(&mut self, h: usize, v: usize) {
        if let Some(i) = self.hosts[h].vms.iter().position(|&x| x == v) {
            self.hosts[h].vms.remove(i);
        }
        self.recompute_available(h);
    }

    /// Places VMs before the first update, with their full MIPS, RAM and
    /// bandwidth reserved.
    pub fn place_initial(
        &mut self,
        how: InitialPlacement,
        fixed: &[usize],
        mut policy: Option<&mut dyn Policy>,
    ) -> Result<(), SimError> {
        for v in 0..self.vms.len() {
            let (mips, ram) = (self.vms[v].mips, self.vms[v].ram_mb as f64);
            let target = match how {
                InitialPlacement::Fixed => fixed.get(v).copied().filter(|&h| h < self.hosts.len()),
                InitialPlacement::FirstFit => {
                    (0..self.hosts.len()).find(|&h| self.is_suitable(h, v))
                }
                InitialPlacement::Pabfd => match policy.as_deref_mut() {
                    Some(p) => p.initial_host(self, v),
                    None => (0..self.hosts.len()).find(|&h| self.is_suitable(h, v)),
                },
            };
            let Some(h) = target else {
                return Err(SimError::NoHost(self.vms[v].name.clone(), mips, ram as u32));
            };
            let host = &mut self.hosts[h];
            host.vms.push(v);
            host.ram_free -= ram;
            host.bw_free -= VM_BW;
            self.vms[v].sched_req = mips;
            self.recompute_available(h);
            // Created: its cloudlet is not submitted yet, so it requests 0.
            self.vms[v].instantiating = false;
            self.vms[v].req = 0.0;
            self.vm_table[v] = Some(h);
        }
        Ok(())
    }

    // ----- updates ---------------------------------------------------------

    /// `HostDynamicWorkload.updateVmsProcessing` for one host.
    fn update_host(&mut self, h: usize, t: f64) {
        let at = self.at(t);
        self.update_host_at(h, &at);
    }

    fn at(&self, t: f64) -> At {
        At {
            t,
            interp: self.interp(t),
            history_step: (t - 0.1) % self.interval == 0.0,
        }
    }

    fn update_host_at(&mut self, h: usize, at: &At) {
        let host = &self.hosts[h];
        if host.vms.is_empty() && host.util_mips == 0.0 && host.prev_util_mips == 0.0 {
            // Idle and empty since its last update: its (inactive) history
            // entry and its zero loads would be rewritten unchanged.
            return;
        }
        self.invalidate(h);
        let (t, history_step, interp) = (at.t, at.history_step, at.interp);
        let n = self.hosts[h].vms.len();
        for i in 0..n {
            let v = self.hosts[h].vms[i];
            let u = self.util_with(v, &interp);
            let vm = &mut self.vms[v];
            if history_step && t > vm.prev_time {
                vm.history.push_front(u);
                vm.history.truncate(HISTORY_LENGTH);
                vm.prev_time = t;
            }
            vm.req = u * vm.mips;
            vm.sched_req = vm.req;
            // note_out's own early return, without the call (it touches
            // nothing but this VM's entry in the host's list).
            if vm.in_migration || (vm.out_hosts != 0 && self.hosts[h].sched_out_len != 0) {
                self.note_out(h, v);
            }
        }
        let host = &self.hosts[h];
        // Scheduler allocation: proportional scaling (floored) when the
        // requests do not fit.
        let mut required = 0.0;
        let mut avail = host.total_mips;
        let mut over = false;
        for &v in &host.vms {
            let mut t = self.vms[v].capped(self.vms[v].req, host.pe_mips);
            if host.sched_in.contains(&v) {
                t *= 0.1;
            }
            required += t;
            if avail >= t {
                avail -= t;
            } else {
                over = true;
                avail = 0.0;
            }
        }
        let scale = host.total_mips / required;
        let mut util_mips = 0.0;
        let mut host_req = 0.0;
        let host_prev = host.util_mips;
        let mut entries = std::mem::take(&mut self.scratch);
        entries.clear();
        for &v in &host.vms {
            let vm = &self.vms[v];
            let capped = vm.capped(vm.req, host.pe_mips);
            // A VM in no host's list is not in this one's.
            let out = vm.out_hosts != 0 && self.is_out(h, v);
            let inn = host.sched_in.contains(&v);
            let mut alloc = if over {
                if out {
                    (capped * scale * 0.9).floor()
                } else if inn {
                    (capped * 0.1 * scale).floor()
                } else {
                    (capped * scale).floor()
                }
            } else if out {
                capped * 0.9
            } else if inn {
                capped * 0.1
            } else {
                capped
            };
            // A VM migrating in gets no history entry here and its 10 % is
            // counted as is; elsewhere a migrating VM's 90 % counts as full.
            if !host.migrating_in.contains(&v) {
                entries.push((v, alloc, vm.req, vm.in_migration));
                if vm.in_migration {
                    alloc /= 0.9;
                }
            }
            util_mips += alloc;
            host_req += vm.req;
        }
        for &(v, alloc, req, mig) in &entries {
            self.vms[v].add_entry(t, alloc, req, mig);
        }
        self.scratch = entries;
        let host = &mut self.hosts[h];
        host.prev_util_mips = host_prev;
        host.util_mips = util_mips;
        host.power_now = host.spec.power.power(host.utilization());
        // Membership changes only for a host without VMs whose load did.
        if host.vms.is_empty() && (host_prev != 0.0) != (util_mips != 0.0) {
            self.touch(h);
        }
        let host = &mut self.hosts[h];
        host.available = avail;
        host.add_entry(t, util_mips, host_req, util_mips > 0.0);
    }

    /// Updates every host at `t` and accounts energy since the last update.
    fn update_all(&mut self, t: f64) {
        let at = self.at(t);
        for h in 0..self.hosts.len() {
            self.update_host_at(h, &at);
        }
        let dt = t - self.last_process;
        if dt > 0.0 {
            let mut e = 0.0;
            for host in &self.hosts {
                if self.non_power_aware {
                    e += host.spec.power.max() * dt;
                    continue;
                }
                let from = cap(host.prev_util_mips / host.total_mips);
                if from == 0.0 {
                    continue;
                }
                let to = host.utilization();
                let pf = host.power_at(from);
                let pt = host.power_at(to);
                e += (pf + (pt - pf) / 2.0) * dt;
            }
            self.energy_ws += e;
        }
        // CloudSim deems a VM whose request is zero "completed" and removes
        // it for good (`HostDynamicWorkload.getCompletedVms`).
        for h in 0..self.hosts.len() {
            if self.keep_idle_vms {
                break;
            }
            let done: Vec<usize> = self.hosts[h]
                .vms
                .iter()
                .copied()
                .filter(|&v| !self.vms[v].in_migration && self.vms[v].req == 0.0)
                .collect();
            for v in done {
                if let Some(src) = self.vm_table[v].take() {
                    self.vm_destroy(src, v);
                }
                self.vms[v].removed = true;
            }
        }
        self.last_process = t;
    }

    /// Updates `hosts` again at the time of the last update, and removes
    /// their finished VMs (the second update of a migration's end).
    fn update_hosts_now(&mut self, t: f64, hosts: &[usize]) {
        let at = self.at(t);
        for &h in hosts {
            self.update_host_at(h, &at);
        }
        if self.keep_idle_vms {
            return;
        }
        for &h in hosts {
            let done: Vec<usize> = self.hosts[h]
                .vms
                .iter()
                .copied()
                .filter(|&v| !self.vms[v].in_migration && self.vms[v].req == 0.0)
                .collect();
            for v in done {
                if let Some(src) = self.vm_table[v].take() {
                    self.vm_destroy(src, v);
                }
                self.vms[v].removed = true;
            }
        }
    }

    /// Starts a migration (`PowerHost.addMigratingInVm`); returns when it ends.
    fn start_migration(&mut self, v: usize, target: usize, t: f64) -> f64 {
        self.vms[v].in_migration = true;
        if !self.hosts[target].migrating_in.contains(&v) {
            let host = &mut self.hosts[target];
            host.sched_in.push(v);
            host.migrating_in.push(v);
            host.vms.push(v);
            self.recompute_available(target);
            self.update_host(target, t);
            if let Some(src) = self.vm_table[v] {
                self.update_host(src, t);
            }
        }
        self.migrations += 1;
        if self.record_moves {
            self.moves.push(Move {
                time_s: t,
                vm: v,
                from: self.vm_table[v].unwrap_or(usize::MAX),
                to: target,
            });
        }
        t + migration_time(self.vms[v].ram_mb, self.hosts[target].spec.bw_kbps)
    }

    /// Ends a migration (`Datacenter.processVmMigrate`).
    fn finish_migration(&mut self, v: usize, target: usize) {
        if let Some(src) = self.vm_table[v].take() {
            self.vm_destroy(src, v);
        }
        let host = &mut self.hosts[target];
        host.migrating_in.retain(|&x| x != v);
        host.vms.retain(|&x| x != v);
        host.sched_in.retain(|&x| x != v);
        self.vms[v].in_migration = false;
        self.vm_create(target, v);
        self.vm_table[v] = Some(target);
    }

    /// Runs the whole trace under `policy` (none: no migrations).
    pub fn run(&mut self, mut policy: Option<&mut dyn Policy>) -> Metrics {
        let mut t = 0.1;
        let mut events: Vec<(f64, usize, usize)> = Vec::new();
        for k in 1..self.samples {
            t += self.interval;
            self.step = k;
            self.update_all(t);
            self.sample_series(t);
            if let Some(p) = policy.as_deref_mut() {
                let map = p.optimize(self, t);
                events.clear();
                for (v, target) in map {
                    let end = self.start_migration(v, target, t);
                    events.push((end, v, target));
                }
                events.sort_by(|a, b| a.0.total_cmp(&b.0));
                let mut i = 0;
                while i < events.len() {
                    let tm = events[i].0;
                    if tm > self.last_process {
                        self.update_all(tm);
                    }
                    let mut touched: Vec<usize> = Vec::new();
                    while i < events.len() && events[i].0 == tm {
                        let (_, v, target) = events[i];
                        if let Some(src) = self.vm_table[v] {
                            touched.push(src);
                        }
                        touched.push(target);
                        self.finish_migration(v, target);
                        i += 1;
                    }
                    // CloudSim updates every host again at this instant; only
                    // the hosts the migrations touched can come out different
                    // (no time passes, so no energy, and every other host
                    // would rewrite the same entries).
                    touched.sort_unstable();
                    touched.dedup();
                    self.update_hosts_now(tm, &touched);
                }
            }
        }
        self.metrics()
    }

    fn sample_series(&mut self, t: f64) {
        let mut n = 0;
        let mut sum = 0.0;
        for h in &self.hosts {
            if h.util_mips > 0.0 {
                n += 1;
                sum += h.util_mips / h.total_mips;
            }
        }
        self.series.push(StepSample {
            time_s: t,
            active_hosts: n,
            mean_util: if n > 0 { sum / n as f64 } else { 0.0 },
        });
    }

    /// The figures so far.
    pub fn metrics(&self) -> Metrics {
        let (mut act, mut viol) = (0.0, 0.0);
        for h in &self.hosts {
            act += h.active_time;
            viol += h.violation_time;
        }
        let (mut req, mut alloc, mut mig) = (0.0, 0.0, 0.0);
        for v in &self.vms {
            req += v.total_req;
            alloc += v.total_alloc;
            mig += v.under_mig;
        }
        let slatah = if act > 0.0 { viol / act } else { 0.0 };
        let pdm = if req > 0.0 { mig / req } else { 0.0 };
        let energy_kwh = self.energy_ws / 3.6e6;
        let n = self.series.len().max(1) as f64;
        let active: Vec<&StepSample> = self.series.iter().filter(|s| s.active_hosts > 0).collect();
        Metrics {
            energy_kwh,
            slatah,
            pdm,
            slav: slatah * pdm,
            esv: energy_kwh * slatah * pdm,
            migrations: self.migrations,
            mean_active_hosts: self
                .series
                .iter()
                .map(|s| s.active_hosts as f64)
                .sum::<f64>()
                / n,
            mean_active_util: active.iter().map(|s| s.mean_util).sum::<f64>()
                / active.len().max(1) as f64,
            overall_sla: if req > 0.0 { (req - alloc) / req } else { 0.0 },
        }
    }

    /// Where each VM is now (its source while it migrates).
    pub fn placement(&self) -> Vec<Option<usize>> {
        self.vm_table.clone()
    }
}

/// Adds `vm`'s history, weighted by its share of a host of `total_mips`,
/// to `hist` (most recent first). The history's two halves are added
/// separately: plain slices let the loop run several entries at once.
pub fn add_history(hist: &mut [f64; HISTORY_LENGTH], vm: &Vm, total_mips: f64) {
    let (a, b) = vm.history.as_slices();
    let (ha, hb) = hist.split_at_mut(a.len().min(HISTORY_LENGTH));
    for (h, u) in ha.iter_mut().zip(a) {
        *h += u * vm.mips / total_mips;
    }
    for (h, u) in hb.iter_mut().zip(b) {
        *h += u * vm.mips / total_mips;
    }
}

impl Vm {
    /// `req` with each vCPU's share capped at one core of `pe_mips`.
    fn capped(&self, req: f64, pe_mips: f64) -> f64 {
        if self.pes <= 1 {
            req.min(pe_mips)
        } else {
            let n = self.pes as f64;
            (req / n).min(pe_mips) * n
        }
    }

    fn add_entry(&mut self, time: f64, alloc: f64, req: f64, in_migration: bool) {
        let new = VmEntry {
            time,
            alloc,
            req,
            in_migration,
        };
        if let Some(last) = self.entry {
            if last.time == time {
                self.entry = Some(new);
                return;
            }
            let dt = time - last.time;
            self.total_alloc += last.alloc * dt;
            self.total_req += last.req * dt;
            if last.alloc < last.req && last.in_migration {
                self.under_mig += (last.req - last.alloc) * dt;
            }
        }
        self.entry = Some(new);
    }
}

impl Host {
    fn add_entry(&mut self, time: f64, alloc: f64, req: f64, active: bool) {
        let new = HostEntry {
            time,
            alloc,
            req,
            active,
        };
        if let Some(last) = self.entry {
            if last.time == time {
                self.entry = Some(new);
                return;
            }
            if last.active {
                let dt = time - last.time;
                self.active_time += dt;
                if last.alloc < last.req {
                    self.violation_time += dt;
                }
            }
        }
        self.entry = Some(new);
    }
}

//! The physical model: host specifications with their SPECpower curves, VM
//! types, and CloudSim's PlanetLab data-centre constants (800 hosts, half HP
//! ProLiant ML110 G4 and half G5; four VM types). Owns no simulation state.

use serde::{Deserialize, Serialize};

/// Seconds between two trace samples in every workload the simulator runs.
pub const INTERVAL_S: f64 = 300.0;
/// Host network bandwidth in CloudSim's unit (kbit/s): 1 Gbit/s.
pub const HOST_BW: f64 = 1_000_000.0;
/// Per-VM bandwidth reservation at creation (CloudSim's `VM_BW`), kbit/s.
pub const VM_BW: f64 = 100_000.0;
/// Number of hosts in CloudSim's PlanetLab experiments.
pub const CLOUDSIM_HOSTS: usize = 800;

/// A power curve sampled at 0 %, 10 %, ..., 100 % CPU utilization (watts),
/// interpolated linearly in between, as SPECpower publishes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PowerModel {
    pub watts: [f64; 11],
}

impl PowerModel {
    /// HP ProLiant ML110 G4 (Intel Xeon 3040, 2 cores x 1860 MHz).
    pub const HP_ML110_G4: PowerModel = PowerModel {
        watts: [
            86.0, 89.4, 92.6, 96.0, 99.5, 102.0, 106.0, 108.0, 112.0, 114.0, 117.0,
        ],
    };
    /// HP ProLiant ML110 G5 (Intel Xeon 3075, 2 cores x 2660 MHz).
    pub const HP_ML110_G5: PowerModel = PowerModel {
        watts: [
            93.7, 97.0, 101.0, 105.0, 110.0, 116.0, 121.0, 125.0, 129.0, 133.0, 135.0,
        ],
    };

    /// A straight line from `idle` to `max` watts.
    pub fn linear(idle: f64, max: f64) -> PowerModel {
        let mut watts = [0.0; 11];
        for (i, w) in watts.iter_mut().enumerate() {
            *w = idle + (max - idle) * i as f64 / 10.0;
        }
        PowerModel { watts }
    }

    /// Power at `u` (0..=1), with CloudSim's exact arithmetic
    /// (`PowerModelSpecPower.getPower`). `None` outside 0..=1.
    pub fn power(&self, u: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&u) {
            return None;
        }
        if u == 0.0 {
            return Some(self.watts[0]);
        }
        let x = u * 10.0;
        // CloudSim's `u % 0.1 == 0` holds exactly when u is an integer
        // multiple of the double 0.1 that is itself a double: in 0..=1 only
        // 0.1, 0.2, 0.4 and 0.8 (3 x 0.1 and up need more than 53 bits). The
        // test spares the slow remainder on every call.
        if u == 0.1 || u == 0.2 || u == 0.4 || u == 0.8 {
            return Some(self.watts[x as usize]);
        }
        // x >= 0: truncation is the floor, and the ceiling is one more
        // unless x is whole.
        let u1 = x as usize;
        let u2 = if u1 as f64 == x { u1 } else { u1 + 1 }.min(10);
        let p1 = self.watts[u1];
        let p2 = self.watts[u2];
        let delta = (p2 - p1) / 10.0;
        Some(p1 + delta * (u - u1 as f64 / 10.0) * 100.0)
    }

    /// Power at full load.
    pub fn max(&self) -> f64 {
        self.watts[10]
    }
}

/// One physical host type or machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSpec {
    pub name: String,
    pub cores: u32,
    pub mips_per_core: f64,
    pub ram_mb: u32,
    /// Network bandwidth in kbit/s (CloudSim's unit; 1 Gbit/s = 1,000,000).
    pub bw_kbps: f64,
    pub power: PowerModel,
}

impl HostSpec {
    pub fn total_mips(&self) -> f64 {
        self.cores as f64 * self.mips_per_core
    }

    pub fn hp_g4(name: String) -> HostSpec {
        HostSpec {
            name,
            cores: 2,
            mips_per_core: 1860.0,
            ram_mb: 4096,
            bw_kbps: HOST_BW,
            power: PowerModel::HP_ML110_G4,
        }
    }

    pub fn hp_g5(name: String) -> HostSpec {
        HostSpec {
            name,
            cores: 2,
            mips_per_core: 2660.0,
            ram_mb: 4096,
            bw_kbps: HOST_BW,
            power: PowerModel::HP_ML110_G5,
        }
    }
}

/// CloudSim's PlanetLab data centre: `n` hosts, G4 and G5 alternating
/// (host `i` has type `i % 2`, as `Helper.createHostList` builds it).
pub fn cloudsim_hosts(n: usize) -> Vec<HostSpec> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                HostSpec::hp_g4(format!("host{i}"))
            } else {
                HostSpec::hp_g5(format!("host{i}"))
            }
        })
        .collect()
}

/// CloudSim's VM types: MIPS and RAM (MB), one core each.
pub const VM_TYPES: [(f64, u32); 4] = [(2500.0, 870), (2000.0, 1740), (1000.0, 1740), (500.0, 613)];

/// The VM type of the `i`-th of `n` VMs, as `Helper.createVmList` assigns
/// them: in four consecutive blocks of `ceil(n / 4)`.
pub fn cloudsim_vm_type(i: usize, n: usize) -> (f64, u32) {
    let block = n.div_ceil(VM_TYPES.len()).max(1);
    VM_TYPES[(i / block).min(VM_TYPES.len() - 1)]
}

/// Live-migration time in seconds: RAM over half the target's bandwidth.
pub fn migration_time(ram_mb: u32, host_bw_kbps: f64) -> f64 {
    ram_mb as f64 / (host_bw_kbps / (2.0 * 8000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specpower_interpolates() {
        let g4 = PowerModel::HP_ML110_G4;
        assert_eq!(g4.power(0.0), Some(86.0));
        assert_eq!(g4.power(1.0), Some(117.0));
        let p = g4.power(0.25).unwrap_or_default();
        assert!((p - 94.3).abs() < 1e-9, "{p}");
        assert_eq!(g4.power(1.2), None);
    }

    /// `power` as CloudSim writes it, remainder and all.
    fn power_reference(m: &PowerModel, u: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&u) {
            return None;
        }
        if u % 0.1 == 0.0 {
            return Some(m.watts[(u * 10.0) as usize]);
        }
        let u1 = (u * 10.0).floor() as usize;
        let u2 = ((u * 10.0).ceil() as usize).min(10);
        let p1 = m.watts[u1];
        let p2 = m.watts[u2];
        let delta = (p2 - p1) / 10.0;
        Some(p1 + delta * (u - u1 as f64 / 10.0) * 100.0)
    }

    #[test]
    fn power_matches_cloudsim_bit_for_bit() {
        let mut us: Vec<f64> = (0..=100_000).map(|k| k as f64 / 100_000.0).collect();
        // Products and quotients as the simulator forms them, and the
        // neighbours of every multiple of 0.1.
        for k in 0..=10 {
            let x = k as f64 * 0.1;
            us.extend([x, x / 1.0, k as f64 / 10.0, f64::from_bits(x.to_bits() + 1)]);
            if x > 0.0 {
                us.push(f64::from_bits(x.to_bits() - 1));
            }
        }
        for a in 0..2000 {
            us.push(a as f64 * 1.37 / 3720.0);
            us.push(a as f64 * 2.53 / 5320.0);
        }
        us.extend([1.0 + 1e-12, -1e-12, f64::NAN]);
        for m in [PowerModel::HP_ML110_G4, PowerModel::HP_ML110_G5] {
            for &u in &us {
                let (a, b) = (m.power(u), power_reference(&m, u));
                assert_eq!(a.map(f64::to_bits), b.map(f64::to_bits), "u = {u:e}");
            }
        }
    }

    #[test]
    fn vm_types_in_blocks() {
        assert_eq!(cloudsim_vm_type(0, 10).0, 2500.0);
        assert_eq!(cloudsim_vm_type(2, 10).0, 2500.0);
        assert_eq!(cloudsim_vm_type(3, 10).0, 2000.0);
        assert_eq!(cloudsim_vm_type(9, 10).0, 500.0);
    }

    #[test]
    fn migration_of_870_mb_takes_13_92_s() {
        assert!((migration_time(870, HOST_BW) - 13.92).abs() < 1e-9);
    }
}

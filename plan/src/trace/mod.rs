//! Workloads: per-VM CPU-utilization traces on a fixed sampling interval,
//! and the parsers that build them from PlanetLab files, Bitbrains CSVs
//! (read straight from their .tar.gz) and condo host-manager exports.
//! Every parser treats its input as untrusted: a malformed file gives one
//! [`TraceError`] naming the file and line, never a panic.

pub mod bitbrains;
pub mod condo_csv;
pub mod planetlab;

use std::path::{Path, PathBuf};

use crate::model::{cloudsim_vm_type, INTERVAL_S};

/// One VM's trace: its size and its CPU use per interval (fraction 0..=1 of
/// the VM's own capacity).
#[derive(Clone, Debug, PartialEq)]
pub struct VmTrace {
    pub name: String,
    /// MIPS of the whole VM (all its vCPUs).
    pub mips: f64,
    /// vCPUs: each must fit one host core (CloudSim's VMs have one).
    pub pes: u32,
    pub ram_mb: u32,
    pub util: Vec<f64>,
}

/// A set of VM traces of equal length, sampled every `interval_s` seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub name: String,
    pub interval_s: f64,
    pub vms: Vec<VmTrace>,
}

impl Workload {
    /// Number of samples per VM.
    pub fn samples(&self) -> usize {
        self.vms.first().map_or(0, |v| v.util.len())
    }

    /// Mean utilization over all VMs and samples (0..=1).
    pub fn mean_util(&self) -> f64 {
        let (s, n) = self.vms.iter().fold((0.0, 0usize), |(s, n), v| {
            (s + v.util.iter().sum::<f64>(), n + v.util.len())
        });
        if n == 0 {
            0.0
        } else {
            s / n as f64
        }
    }

    /// Gives the VMs CloudSim's four types in four consecutive blocks, in
    /// their current order (`Helper.createVmList`).
    pub fn assign_cloudsim_types(&mut self) {
        let n = self.vms.len();
        for (i, vm) in self.vms.iter_mut().enumerate() {
            let (mips, ram) = cloudsim_vm_type(i, n);
            vm.mips = mips;
            vm.ram_mb = ram;
        }
    }
}

/// Errors reading a trace. Each names the file (and the line when there is one).
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
}

impl TraceError {
    pub(crate) fn line(path: &Path, line: usize, msg: impl Into<String>) -> TraceError {
        TraceError::Line {
            path: path.to_path_buf(),
            line,
            msg: msg.into(),
        }
    }

    pub(crate) fn file(path: &Path, msg: impl Into<String>) -> TraceError {
        TraceError::File {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> TraceError {
        TraceError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Which trace format a path holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Format {
    /// A PlanetLab day directory: one file per VM, one integer percentage per line.
    Planetlab,
    /// Bitbrains GWA-T-12 per-VM CSVs (a directory, or a .tar.gz of them).
    Bitbrains,
    /// condo host-manager export: `guest,vcpus,mem_mib,time_s,cpu_pct`.
    Condo,
}

/// Guesses the format: a `.tar.gz`/`.tgz` or a directory of `.csv` files is
/// Bitbrains, a `.csv` file is a condo export, anything else PlanetLab.
pub fn detect(path: &Path) -> Format {
    let name = path.to_string_lossy();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        return Format::Bitbrains;
    }
    if name.ends_with(".csv") {
        return Format::Condo;
    }
    if path.is_dir() {
        if let Ok(mut rd) = std::fs::read_dir(path) {
            if rd.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "csv"))) {
                return Format::Bitbrains;
            }
        }
    }
    Format::Planetlab
}

/// Options shared by the loaders.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Order of PlanetLab files (which decides the VM types).
    pub order: planetlab::FileOrder,
    /// MIPS of one vCPU for condo exports.
    pub vcpu_mips: f64,
    /// Read at most this many Bitbrains VMs (0 = all).
    pub max_vms: usize,
    /// Keep at most this many samples (0 = all).
    pub max_samples: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            order: planetlab::FileOrder::Reference,
            vcpu_mips: 2500.0,
            max_vms: 0,
            max_samples: 0,
        }
    }
}

/// Loads a workload in the given format.
pub fn load(path: &Path, format: Format, opts: &LoadOptions) -> Result<Workload, TraceError> {
    let mut w = match format {
        Format::Planetlab => planetlab::load_dir(path, opts.order)?,
        Format::Bitbrains => bitbrains::load(path, opts.max_vms)?,
        Format::Condo => condo_csv::load(path, opts.vcpu_mips)?,
    };
    if w.interval_s != INTERVAL_S {
        return Err(TraceError::file(
            path,
            format!(
                "samples are {} s apart; the simulator runs {} s intervals",
                w.interval_s, INTERVAL_S
            ),
        ));
    }
    if opts.max_samples > 0 {
        for vm in &mut w.vms {
            vm.util.truncate(opts.max_samples);
        }
    }
    Ok(w)
}

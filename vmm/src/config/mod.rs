//! What a VM is made of: one model per resource, each checked in one
//! place, used alike by the command line, Firecracker's config file and
//! the REST API.
//!
//! Every resource (machine, boot source, drives, network interfaces,
//! vsock, balloon, entropy) is a serde type whose JSON shape is
//! Firecracker's wire shape, so the config file and the API bodies are
//! these types themselves. [`VmConfig`] holds them all; its setters are the
//! only way in, each checking its resource ([`MachineConfig::update`],
//! [`Drive::validate`], ...) and then what resources must agree on
//! (one root disk, a balloon no larger than memory, ...), so a `VmConfig`
//! built through them is always valid. The snapshot format does not use
//! these types: it has its own, versioned (`crate::snapshot`).

mod balloon;
mod boot;
mod drive;
mod entropy;
mod machine;
mod net;
mod spec;
mod vsock;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use balloon::{BalloonConfig, BalloonUpdate};
pub use boot::{BootSource, DEFAULT_CMDLINE, MAX_CMDLINE_LEN};
pub use drive::{Drive, DriveUpdate, MAX_DRIVE_ID_LEN};
pub use entropy::EntropyConfig;
pub use machine::{
    check_vcpu_count, HugePages, MachineConfig, MachineConfigUpdate, MAX_MEM_MIB, MAX_VCPUS,
    MIN_MEM_MIB, MIN_VCPUS,
};
pub use net::{MacAddr, NetworkInterface, NetworkInterfaceUpdate};
pub use vsock::VsockConfig;

/// Errors in a VM description.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("vCPU count {0} out of range ({MIN_VCPUS}..={MAX_VCPUS})")]
    VcpuCount(u64),
    #[error("memory size {0} MiB out of range ({MIN_MEM_MIB}..={MAX_MEM_MIB} MiB)")]
    MemSize(u64),
    #[error("kernel command line is {0} bytes, longer than {MAX_CMDLINE_LEN}")]
    CmdlineTooLong(usize),
    #[error("kernel command line contains a NUL byte or a non-ASCII character")]
    CmdlineInvalid,
    #[error("cannot read config file {path}: {err}")]
    ReadFile { path: PathBuf, err: std::io::Error },
    #[error("config file {path}: {err}")]
    Parse {
        path: PathBuf,
        err: serde_json::Error,
    },
    #[error("config file: section \"{0}\" is not supported by condo yet")]
    Unsupported(&'static str),
    #[error("config file: SMT is not supported; set \"smt\": false")]
    Smt,
    #[error("disk {0}")]
    Disk(String),
    #[error("network interface {0}")]
    Net(String),
    #[error("disk id {0:?} is longer than {MAX_DRIVE_ID_LEN} bytes")]
    DiskId(String),
    #[error("no kernel: give --kernel, --config-file or --api-sock")]
    NoKernel,
    #[error("more than one root disk")]
    TwoRoots,
    #[error("vsock {0}")]
    Vsock(String),
    #[error("balloon {0}")]
    Balloon(String),
    #[error("huge pages {0}")]
    HugePages(String),
}

/// A whole VM, in the shape of Firecracker's config file (`--config-file`,
/// `GET /vm/config`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(rename = "boot-source")]
    pub boot_source: BootSource,
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfig,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// virtio-net interfaces (eth0, eth1, ...).
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyConfig>,
    /// Sections condo does not implement: refused when they ask for
    /// something, accepted when empty.
    #[serde(default, skip_serializing)]
    logger: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    metrics: Option<serde_json::Value>,
    #[serde(rename = "mmds-config", default, skip_serializing)]
    mmds_config: Option<serde_json::Value>,
    /// Accepted and ignored, as `cpu_template` is.
    #[serde(rename = "cpu-config", default, skip_serializing)]
    cpu_config: Option<serde_json::Value>,
}

impl VmConfig {
    /// Applies `change` to a copy, checks what resources must agree on,
    /// and keeps the copy only if it holds.
    fn apply(
        &mut self,
        change: impl FnOnce(&mut Self) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let mut next = self.clone();
        change(&mut next)?;
        next.check_together()?;
        *self = next;
        Ok(())
    }

    /// What no single resource can check alone.
    fn check_together(&self) -> Result<(), ConfigError> {
        if self.drives.iter().filter(|d| d.is_root_device).count() > 1 {
            return Err(ConfigError::TwoRoots);
        }
        let m = &self.machine_config;
        if let Some(b) = &self.balloon {
            if m.huge_pages == HugePages::Hugetlb2M {
                return Err(ConfigError::HugePages(
                    "2M: a balloon cannot return hugetlbfs pages; use Transparent or None".into(),
                ));
            }
            if u64::from(b.amount_mib) > m.mem_size_mib {
                return Err(ConfigError::Balloon(format!(
                    "size {} MiB is larger than guest memory ({} MiB)",
                    b.amount_mib, m.mem_size_mib
                )));
            }
        }
        Ok(())
    }

    /// Sets what the guest boots.
    pub fn set_boot_source(&mut self, b: BootSource) -> Result<(), ConfigError> {
        b.validate()?;
        self.apply(|c| {
            c.boot_source = b;
            Ok(())
        })
    }

    /// Changes the machine.
    pub fn update_machine_config(&mut self, u: &MachineConfigUpdate) -> Result<(), ConfigError> {
        let m = self.machine_config.update(u)?;
        self.apply(|c| {
            c.machine_config = m;
            Ok(())
        })
    }

    /// Adds a drive, or replaces the one with its id.
    pub fn insert_drive(&mut self, d: Drive) -> Result<(), ConfigError> {
        d.validate()?;
        self.apply(|c| {
            match c.drives.iter_mut().find(|x| x.drive_id == d.drive_id) {
                Some(x) => *x = d,
                None => c.drives.push(d),
            }
            Ok(())
        })
    }

    /// Adds a network interface, or replaces the one with its id. Without
    /// a MAC it gets [`MacAddr::default_for`] its position.
    pub fn insert_network_interface(&mut self, mut n: NetworkInterface) -> Result<(), ConfigError> {
        n.validate()?;
        self.apply(|c| {
            let at = c
                .network_interfaces
                .iter()
                .position(|x| x.iface_id == n.iface_id);
            n.guest_mac = n.guest_mac.or(Some(MacAddr::default_for(
                at.unwrap_or(c.network_interfaces.len()),
            )));
            match at {
                Some(i) => c.network_interfaces[i] = n,
                None => c.network_interfaces.push(n),
            }
            Ok(())
        })
    }

    /// Sets the vsock device.
    pub fn set_vsock(&mut self, v: VsockConfig) -> Result<(), ConfigError> {
        v.validate()?;
        self.apply(|c| {
            c.vsock = Some(v);
            Ok(())
        })
    }

    /// Sets the balloon device.
    pub fn set_balloon(&mut self, b: BalloonConfig) -> Result<(), ConfigError> {
        b.validate()?;
        self.apply(|c| {
            c.balloon = Some(b);
            Ok(())
        })
    }

    /// Sets the entropy device.
    pub fn set_entropy(&mut self, e: EntropyConfig) -> Result<(), ConfigError> {
        e.validate()?;
        self.apply(|c| {
            c.entropy = Some(e);
            Ok(())
        })
    }

    /// Reads Firecracker's `--config-file`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::ReadFile {
            path: path.to_owned(),
            err,
        })?;
        let raw: VmConfig = serde_json::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            err,
        })?;
        raw.validated()
    }

    /// Parses Firecracker's config-file JSON.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let raw: VmConfig = serde_json::from_str(text).map_err(|err| ConfigError::Parse {
            path: PathBuf::new(),
            err,
        })?;
        raw.validated()
    }

    /// This configuration rebuilt through the setters: every resource and
    /// every rule checked as if it had come in over the API.
    pub fn validated(self) -> Result<Self, ConfigError> {
        for (name, present) in [
            ("logger", is_set(&self.logger)),
            ("metrics", is_set(&self.metrics)),
            ("mmds-config", is_set(&self.mmds_config)),
        ] {
            if present {
                return Err(ConfigError::Unsupported(name));
            }
        }
        let mut c = VmConfig::default();
        c.set_boot_source(self.boot_source)?;
        c.update_machine_config(&self.machine_config.into())?;
        for d in self.drives {
            c.insert_drive(d)?;
        }
        for n in self.network_interfaces {
            c.insert_network_interface(n)?;
        }
        if let Some(v) = self.vsock {
            c.set_vsock(v)?;
        }
        if let Some(b) = self.balloon {
            c.set_balloon(b)?;
        }
        if let Some(e) = self.entropy {
            c.set_entropy(e)?;
        }
        Ok(c)
    }

    /// The kernel command line the guest gets: the configured one, with
    /// `root=` for the root disk, `pci=off` unless it says otherwise, and
    /// `extra` (kernel parameters, put before ` -- ` where init's
    /// arguments start). condo shows the guest no PCI bus, yet Linux looks
    /// for one through ports 0xcf8 to 0xcff (its early quirks scan all of
    /// bus 0) unless told: some 230 exits of a boot's 4,600
    /// (benches/results/boot.md).
    pub fn kernel_cmdline(&self, extra: &str) -> String {
        let mut add = String::new();
        if let Some((i, d)) = self
            .drives
            .iter()
            .enumerate()
            .find(|(_, d)| d.is_root_device)
        {
            let letter = char::from(b'a' + (i as u8 % 26));
            let mode = if d.is_read_only { "ro" } else { "rw" };
            add = format!(" root=/dev/vd{letter} {mode}");
        }
        let c = self.boot_source.cmdline();
        let kernel_args = c.split(" -- ").next().unwrap_or(c);
        if !kernel_args
            .split_whitespace()
            .any(|w| w.starts_with("pci="))
        {
            add.push_str(" pci=off");
        }
        add.push_str(extra);
        match c.find(" -- ") {
            Some(i) => format!("{}{add}{}", &c[..i], &c[i..]),
            None => format!("{c}{add}"),
        }
    }
}

fn is_set(v: &Option<serde_json::Value>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_null())
}

#[cfg(test)]
mod tests;

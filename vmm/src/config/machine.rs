//! The machine: vCPUs, memory and its backing (Firecracker's
//! `machine-config`). [`MachineConfig::update`] is the one place its
//! values are checked, whichever way they come in.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Fewest vCPUs.
pub const MIN_VCPUS: u8 = 1;
/// Most vCPUs (Firecracker's limit too).
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest a Linux kernel boots in.
pub const MIN_MEM_MIB: u64 = 32;
/// Largest guest: 1 TiB of guest-physical RAM.
pub const MAX_MEM_MIB: u64 = 1 << 20;

/// How guest RAM is backed: Firecracker's `huge_pages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum HugePages {
    /// Regular 4 KiB pages: the host is told not to use transparent huge
    /// pages for guest RAM (`MADV_NOHUGEPAGE`). The most frugal: a guest
    /// keeps only the 4 KiB pages it touched, and the balloon returns them
    /// one by one.
    None,
    /// Transparent huge pages (`MADV_HUGEPAGE`, where the host has THP
    /// enabled), as QEMU and Cloud Hypervisor do by default. condo's
    /// default too: one fault and one nested-paging entry per 2 MiB.
    #[default]
    Transparent,
    /// 2 MiB hugetlbfs pages from the host's reserved pool
    /// (`vm.nr_hugepages`), all taken when the VM starts. No balloon:
    /// those pages cannot be returned 4 KiB at a time.
    #[serde(rename = "2M")]
    Hugetlb2M,
}

impl std::str::FromStr for HugePages {
    type Err = ConfigError;

    /// Firecracker's names, case-insensitive: `None`, `Transparent`, `2M`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "transparent" => Ok(Self::Transparent),
            "2m" => Ok(Self::Hugetlb2M),
            _ => Err(ConfigError::HugePages(format!(
                "{s:?}: expected None, Transparent or 2M"
            ))),
        }
    }
}

/// Firecracker's `MachineConfiguration`. `cpu_template` is accepted and
/// has no effect yet. Without `huge_pages` guest RAM is on transparent huge
/// pages (Firecracker's default is `None`: condo follows QEMU and Cloud
/// Hypervisor there).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpu_count: u8,
    /// Guest RAM in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading: refused (condo shows one thread per core).
    #[serde(default)]
    pub smt: bool,
    /// KVM logs the pages the guest writes (for diff snapshots and live
    /// migration).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Firecracker's CPU template: accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<serde_json::Value>,
    /// What backs guest RAM.
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    /// Firecracker's defaults: 1 vCPU, 128 MiB.
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: HugePages::default(),
        }
    }
}

/// Changes to a [`MachineConfig`], every field optional
/// (`PATCH /machine-config`; a `PUT` is an update with the required fields).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    pub vcpu_count: Option<u8>,
    pub mem_size_mib: Option<u64>,
    pub smt: Option<bool>,
    pub track_dirty_pages: Option<bool>,
    pub cpu_template: Option<serde_json::Value>,
    pub huge_pages: Option<HugePages>,
}

impl From<MachineConfig> for MachineConfigUpdate {
    fn from(m: MachineConfig) -> Self {
        Self {
            vcpu_count: Some(m.vcpu_count),
            mem_size_mib: Some(m.mem_size_mib),
            smt: Some(m.smt),
            track_dirty_pages: Some(m.track_dirty_pages),
            cpu_template: m.cpu_template,
            huge_pages: Some(m.huge_pages),
        }
    }
}

/// Checks a vCPU count (the command line reads it wider, to name a value
/// past 255 in the same words).
pub fn check_vcpu_count(n: u64) -> Result<u8, ConfigError> {
    u8::try_from(n)
        .ok()
        .filter(|n| (MIN_VCPUS..=MAX_VCPUS).contains(n))
        .ok_or(ConfigError::VcpuCount(n))
}

impl MachineConfig {
    /// This configuration with `u` applied, checked.
    pub fn update(&self, u: &MachineConfigUpdate) -> Result<Self, ConfigError> {
        let next = Self {
            vcpu_count: u.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: u.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: u.smt.unwrap_or(self.smt),
            track_dirty_pages: u.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            cpu_template: u.cpu_template.clone().or_else(|| self.cpu_template.clone()),
            huge_pages: u.huge_pages.unwrap_or(self.huge_pages),
        };
        check_vcpu_count(next.vcpu_count.into())?;
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&next.mem_size_mib) {
            return Err(ConfigError::MemSize(next.mem_size_mib));
        }
        if next.smt {
            return Err(ConfigError::Smt);
        }
        if next.huge_pages == HugePages::Hugetlb2M && !next.mem_size_mib.is_multiple_of(2) {
            return Err(ConfigError::HugePages(format!(
                "2M: memory size {} MiB is not a multiple of 2 MiB",
                next.mem_size_mib
            )));
        }
        Ok(next)
    }

    /// Guest RAM in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_size_mib << 20
    }
}

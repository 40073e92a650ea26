//! What a VM is made of, and how it is read from Firecracker's config file.
//!
//! [`VmConfig`] is the validated description the VMM boots. It comes from
//! command-line flags or from a Firecracker-format JSON file
//! ([`VmConfig::from_firecracker_json`]); both paths go through
//! [`VmConfig::validate`], so bad input is rejected before any KVM work.

use std::path::PathBuf;

use devices::rate_limiter::{BucketConfig, RateLimiterConfig};
use serde::{Deserialize, Serialize};

/// Fewest vCPUs.
pub const MIN_VCPUS: u8 = 1;
/// Most vCPUs (Firecracker's limit too).
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest a Linux kernel boots in.
pub const MIN_MEM_MIB: u64 = 32;
/// Largest guest: 1 TiB of guest-physical RAM.
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// The longest kernel command line accepted: x86 COMMAND_LINE_SIZE (2048) less the NUL.
pub const MAX_CMDLINE_LEN: usize = 2047;

/// Command line used when none is given: serial console, `reboot=k` so a
/// reboot reaches the i8042 reset line, and `panic=1` so a panicking kernel
/// without pvpanic still ends the VM.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

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
    Parse { path: PathBuf, err: String },
    #[error("config file: section \"{0}\" is not supported by condo yet")]
    Unsupported(&'static str),
    #[error("config file: SMT is not supported; set \"smt\": false")]
    Smt,
    #[error("disk {0}")]
    Disk(String),
    #[error("network interface {0}")]
    Net(String),
    #[error("disk id {0:?} is longer than 20 bytes")]
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
    type Err = String;

    /// Firecracker's names, case-insensitive: `None`, `Transparent`, `2M`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "transparent" => Ok(Self::Transparent),
            "2m" => Ok(Self::Hugetlb2M),
            _ => Err(format!("{s:?}: expected None, Transparent or 2M")),
        }
    }
}

/// A validated VM description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image: ELF `vmlinux` (PVH or 64-bit entry) or `bzImage`.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// A virtio-rng device fed by the host's getrandom.
    pub entropy: bool,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces (eth0, eth1, ...).
    pub nets: Vec<NetConfig>,
    /// The virtio-vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// The virtio-balloon device, if any.
    pub balloon: Option<BalloonConfig>,
    /// KVM logs the pages the guest writes (for diff snapshots).
    pub track_dirty_pages: bool,
    /// What backs guest RAM.
    pub huge_pages: HugePages,
}

/// One virtio-net interface on a host TAP device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The interface's id (the API's `iface_id`).
    pub id: String,
    /// Host TAP interface name.
    pub tap: String,
    /// Guest MAC address.
    pub mac: [u8; 6],
    /// Throttling of frames to the guest.
    pub rx_rate_limiter: RateLimiterConfig,
    /// Throttling of frames from the guest.
    pub tx_rate_limiter: RateLimiterConfig,
}

/// Cloud Hypervisor's rate limiter keys in a device spec: `bw_size`,
/// `bw_one_time_burst`, `bw_refill_time`, `ops_size`, `ops_one_time_burst`,
/// `ops_refill_time` (refill times in ms). Returns false for other keys.
fn rate_limiter_key(rl: &mut RateLimiterConfig, k: &str, v: &str) -> Result<bool, String> {
    let Some((bucket, field)) = k.split_once('_') else {
        return Ok(false);
    };
    let slot = match bucket {
        "bw" => &mut rl.bandwidth,
        "ops" => &mut rl.ops,
        _ => return Ok(false),
    };
    let n: u64 = v.parse().map_err(|_| format!("bad {k} {v:?}"))?;
    let b = slot.get_or_insert_with(BucketConfig::default);
    match field {
        "size" => b.size = n,
        "one_time_burst" => b.one_time_burst = Some(n),
        "refill_time" => b.refill_time = n,
        _ => return Ok(false),
    }
    Ok(true)
}

/// Splits a `key=value,key=value` device spec and hands each pair to `f`.
fn parse_kv(spec: &str, mut f: impl FnMut(&str, &str) -> Result<(), String>) -> Result<(), String> {
    for part in spec.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        f(k, v)?;
    }
    Ok(())
}

/// `on`/`off` (or true/false, yes/no) for key `k`.
fn on_off(k: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{k} must be on or off")),
    }
}

/// Parses `06:00:ac:10:00:02`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl NetConfig {
    /// Parses `tap=NAME[,mac=MAC][,id=ID][,bw_size=..,ops_size=..]`; the MAC
    /// defaults to 06:00:00:00:00:NN, the id to ethN, and rate limits
    /// (Cloud Hypervisor's keys) apply to both directions.
    pub fn parse(spec: &str, index: usize) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Net(format!("{spec:?}: {why}"));
        let mut tap = None;
        let mut mac = [0x06, 0, 0, 0, 0, index as u8 + 1];
        let mut id = format!("eth{index}");
        let mut rl = RateLimiterConfig::default();
        parse_kv(spec, |k, v| {
            match k {
                "tap" => tap = Some(v.to_owned()),
                "mac" => mac = parse_mac(v).ok_or_else(|| format!("bad MAC address {v:?}"))?,
                "id" => id = v.to_owned(),
                _ if rate_limiter_key(&mut rl, k, v)? => {}
                _ => return Err(format!("unknown key {k:?} (tap, mac, id, bw_*, ops_*)")),
            }
            Ok(())
        })
        .map_err(bad)?;
        let tap = tap.ok_or_else(|| bad("tap= is required".into()))?;
        Ok(Self {
            id,
            tap,
            mac,
            rx_rate_limiter: rl,
            tx_rate_limiter: rl,
        })
    }
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file (or block device).
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
    /// Serial number the guest reads (GET_ID); at most 20 bytes.
    pub id: String,
    /// The guest's root file system: `root=/dev/vdX` is added to the
    /// kernel command line.
    pub root: bool,
    /// Throttling of the guest's requests.
    pub rate_limiter: RateLimiterConfig,
}

impl DiskConfig {
    /// Parses `path=FILE[,readonly=on|off][,id=SERIAL][,root=on|off]` and
    /// rate limits with Cloud Hypervisor's keys (`bw_size=`, `ops_size=`,
    /// ...`_refill_time=` in ms, `..._one_time_burst=`).
    pub fn parse(spec: &str, index: usize) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Disk(format!("{spec:?}: {why}"));
        let mut d = DiskConfig {
            path: PathBuf::new(),
            read_only: false,
            id: format!("condo-disk-{index}"),
            root: false,
            rate_limiter: RateLimiterConfig::default(),
        };
        parse_kv(spec, |k, v| {
            match k {
                "path" => d.path = PathBuf::from(v),
                "readonly" => d.read_only = on_off(k, v)?,
                "root" => d.root = on_off(k, v)?,
                "id" => d.id = v.to_owned(),
                _ if rate_limiter_key(&mut d.rate_limiter, k, v)? => {}
                _ => {
                    return Err(format!(
                        "unknown key {k:?} (path, readonly, id, root, bw_*, ops_*)"
                    ))
                }
            }
            Ok(())
        })
        .map_err(bad)?;
        if d.path.as_os_str().is_empty() {
            return Err(bad("path= is required".into()));
        }
        Ok(d)
    }
}

/// The virtio-vsock device and its host Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 and up).
    pub cid: u64,
    /// Host Unix socket: host programs connect here; guest connections to
    /// port P reach `<uds_path>_P`.
    pub uds_path: PathBuf,
}

impl VsockConfig {
    /// Parses `cid=N,socket=PATH` (`uds_path=` is accepted for `socket=`).
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Vsock(format!("{spec:?}: {why}"));
        let mut cid = None;
        let mut uds_path = None;
        parse_kv(spec, |k, v| {
            match k {
                "cid" => cid = Some(v.parse().map_err(|_| format!("bad cid {v:?}"))?),
                "socket" | "uds_path" => uds_path = Some(PathBuf::from(v)),
                _ => return Err(format!("unknown key {k:?} (cid, socket)")),
            }
            Ok(())
        })
        .map_err(bad)?;
        let cid = cid.ok_or_else(|| bad("cid= is required".into()))?;
        let uds_path = uds_path.ok_or_else(|| bad("socket= is required".into()))?;
        Ok(Self { cid, uds_path })
    }
}

/// The virtio-balloon device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Target balloon size: guest memory the guest gives back, in MiB.
    pub amount_mib: u32,
    /// Let the guest take memory back from the balloon when it runs out.
    pub deflate_on_oom: bool,
    /// Seconds between guest statistics updates; 0 disables statistics.
    pub stats_polling_interval_s: u16,
    /// The guest reports free pages, which condo returns to the host.
    pub free_page_reporting: bool,
}

impl BalloonConfig {
    /// Parses `size_mib=N[,deflate_on_oom=on][,stats_s=N][,free_page_reporting=on]`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Balloon(format!("{spec:?}: {why}"));
        let mut b = BalloonConfig::default();
        parse_kv(spec, |k, v| {
            let num = |v: &str| v.parse().map_err(|_| format!("bad {k} {v:?}"));
            match k {
                "size_mib" | "amount_mib" => b.amount_mib = num(v)?,
                "deflate_on_oom" => b.deflate_on_oom = on_off(k, v)?,
                "stats_s" | "stats_polling_interval_s" => {
                    b.stats_polling_interval_s = v.parse().map_err(|_| format!("bad {k} {v:?}"))?
                }
                "free_page_reporting" => b.free_page_reporting = on_off(k, v)?,
                _ => {
                    return Err(format!(
                        "unknown key {k:?} (size_mib, deflate_on_oom, stats_s, free_page_reporting)"
                    ))
                }
            }
            Ok(())
        })
        .map_err(bad)?;
        Ok(b)
    }
}

impl VmConfig {
    /// Checks ranges and the command line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_VCPUS..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(ConfigError::VcpuCount(self.vcpus.into()));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::MemSize(self.mem_mib));
        }
        if self.cmdline.len() > MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong(self.cmdline.len()));
        }
        if !self.cmdline.is_ascii() || self.cmdline.contains('\0') {
            return Err(ConfigError::CmdlineInvalid);
        }
        if let Some(d) = self.disks.iter().find(|d| d.id.len() > 20) {
            return Err(ConfigError::DiskId(d.id.clone()));
        }
        if self.disks.iter().filter(|d| d.root).count() > 1 {
            return Err(ConfigError::TwoRoots);
        }
        if let Some(v) = &self.vsock {
            if !(3..u64::from(u32::MAX)).contains(&v.cid) {
                return Err(ConfigError::Vsock(format!(
                    "guest CID {} is reserved (use 3 to {})",
                    v.cid,
                    u32::MAX - 1
                )));
            }
        }
        if self.huge_pages == HugePages::Hugetlb2M {
            if !self.mem_mib.is_multiple_of(2) {
                return Err(ConfigError::HugePages(format!(
                    "2M: memory size {} MiB is not a multiple of 2 MiB",
                    self.mem_mib
                )));
            }
            if self.balloon.is_some() {
                return Err(ConfigError::HugePages(
                    "2M: a balloon cannot return hugetlbfs pages; use Transparent or None".into(),
                ));
            }
        }
        if let Some(b) = &self.balloon {
            if u64::from(b.amount_mib) > self.mem_mib {
                return Err(ConfigError::Balloon(format!(
                    "size {} MiB is larger than guest memory ({} MiB)",
                    b.amount_mib, self.mem_mib
                )));
            }
        }
        Ok(())
    }

    /// Guest RAM in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }

    /// Reads a Firecracker `--config-file`: `boot-source` and
    /// `machine-config` are used; sections condo does not implement yet are
    /// refused when they ask for something, accepted when empty.
    pub fn from_firecracker_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::ReadFile {
            path: path.to_owned(),
            err,
        })?;
        Self::from_firecracker_json(&text).map_err(|e| match e {
            ConfigError::Parse { err, .. } => ConfigError::Parse {
                path: path.to_owned(),
                err,
            },
            e => e,
        })
    }

    /// Parses Firecracker's config-file JSON.
    pub fn from_firecracker_json(text: &str) -> Result<Self, ConfigError> {
        let fc: FirecrackerConfig = serde_json::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            err: e.to_string(),
        })?;
        Self::from_firecracker(fc)
    }

    /// This configuration in Firecracker's shape (`GET /vm/config`).
    pub(crate) fn to_firecracker(&self) -> FirecrackerConfig {
        FirecrackerConfig {
            boot_source: BootSource {
                kernel_image_path: self.kernel.clone(),
                initrd_path: self.initrd.clone(),
                boot_args: Some(self.cmdline.clone()),
            },
            machine_config: MachineConfig {
                vcpu_count: self.vcpus.into(),
                mem_size_mib: self.mem_mib,
                track_dirty_pages: Some(self.track_dirty_pages),
                huge_pages: Some(self.huge_pages),
                ..MachineConfig::default()
            },
            drives: Some(
                self.disks
                    .iter()
                    .map(|d| Drive {
                        drive_id: d.id.clone(),
                        path_on_host: d.path.clone(),
                        is_root_device: d.root,
                        is_read_only: Some(d.read_only),
                        rate_limiter: Some(d.rate_limiter),
                        ..Drive::default()
                    })
                    .collect(),
            ),
            network_interfaces: Some(
                self.nets
                    .iter()
                    .map(|n| NetworkInterface {
                        iface_id: n.id.clone(),
                        host_dev_name: n.tap.clone(),
                        guest_mac: Some(
                            n.mac
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect::<Vec<_>>()
                                .join(":"),
                        ),
                        rx_rate_limiter: Some(n.rx_rate_limiter),
                        tx_rate_limiter: Some(n.tx_rate_limiter),
                    })
                    .collect(),
            ),
            vsock: self.vsock.as_ref().map(|v| FcVsock {
                guest_cid: v.cid,
                uds_path: v.uds_path.clone(),
                vsock_id: None,
            }),
            balloon: self.balloon.as_ref().map(|b| FcBalloon {
                amount_mib: b.amount_mib,
                deflate_on_oom: b.deflate_on_oom,
                stats_polling_interval_s: b.stats_polling_interval_s,
                free_page_hinting: false,
                free_page_reporting: b.free_page_reporting,
            }),
            entropy: self.entropy.then(EntropyConfig::default),
            ..FirecrackerConfig::default()
        }
    }

    /// Builds and validates the VM a Firecracker configuration describes.
    pub(crate) fn from_firecracker(fc: FirecrackerConfig) -> Result<Self, ConfigError> {
        for (name, present) in [
            ("logger", is_set(&fc.logger)),
            ("metrics", is_set(&fc.metrics)),
            ("mmds-config", is_set(&fc.mmds_config)),
        ] {
            if present {
                return Err(ConfigError::Unsupported(name));
            }
        }
        if fc
            .entropy
            .as_ref()
            .is_some_and(|e| e.rate_limiter.is_some())
        {
            return Err(ConfigError::Unsupported("entropy.rate_limiter"));
        }
        let mut disks = Vec::new();
        for d in fc.drives.unwrap_or_default() {
            if d.socket.is_some() {
                return Err(ConfigError::Unsupported("drives.socket (vhost-user)"));
            }
            if d.partuuid.is_some() {
                return Err(ConfigError::Unsupported("drives.partuuid"));
            }
            let _ = (d.cache_type, d.io_engine);
            disks.push(DiskConfig {
                path: d.path_on_host,
                read_only: d.is_read_only.unwrap_or(false),
                id: d.drive_id,
                root: d.is_root_device,
                rate_limiter: d.rate_limiter.unwrap_or_default(),
            });
        }
        let mut nets = Vec::new();
        for (i, n) in fc
            .network_interfaces
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let mut spec = format!("tap={}", n.host_dev_name);
            if let Some(mac) = n.guest_mac {
                spec.push_str(&format!(",mac={mac}"));
            }
            let mut net = NetConfig::parse(&spec, i)?;
            net.id = n.iface_id;
            net.rx_rate_limiter = n.rx_rate_limiter.unwrap_or_default();
            net.tx_rate_limiter = n.tx_rate_limiter.unwrap_or_default();
            nets.push(net);
        }
        let fc_free_page_hinting = fc.balloon.as_ref().is_some_and(|b| b.free_page_hinting);
        let m = fc.machine_config;
        if m.smt == Some(true) {
            return Err(ConfigError::Smt);
        }
        let vcpus = u8::try_from(m.vcpu_count).map_err(|_| ConfigError::VcpuCount(m.vcpu_count))?;
        let cfg = VmConfig {
            kernel: fc.boot_source.kernel_image_path,
            initrd: fc.boot_source.initrd_path,
            cmdline: fc
                .boot_source
                .boot_args
                .unwrap_or_else(|| DEFAULT_CMDLINE.to_owned()),
            vcpus,
            mem_mib: m.mem_size_mib,
            entropy: fc.entropy.is_some(),
            disks,
            nets,
            vsock: fc.vsock.map(|v| {
                let _ = v.vsock_id;
                VsockConfig {
                    cid: v.guest_cid,
                    uds_path: v.uds_path,
                }
            }),
            balloon: fc.balloon.map(|b| BalloonConfig {
                amount_mib: b.amount_mib,
                deflate_on_oom: b.deflate_on_oom,
                stats_polling_interval_s: b.stats_polling_interval_s,
                free_page_reporting: b.free_page_reporting,
            }),
            track_dirty_pages: m.track_dirty_pages.unwrap_or(false),
            huge_pages: m.huge_pages.unwrap_or_default(),
        };
        if fc_free_page_hinting {
            return Err(ConfigError::Unsupported("balloon.free_page_hinting"));
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

fn is_set(v: &Option<serde_json::Value>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_null())
}

// Firecracker's config-file schema (src/vmm/src/resources.rs `VmmConfig`),
// limited to what condo reads. Unknown keys are errors, as in Firecracker.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FirecrackerConfig {
    #[serde(rename = "boot-source")]
    pub(crate) boot_source: BootSource,
    #[serde(rename = "machine-config")]
    pub(crate) machine_config: MachineConfig,
    pub(crate) drives: Option<Vec<Drive>>,
    #[serde(rename = "network-interfaces")]
    pub(crate) network_interfaces: Option<Vec<NetworkInterface>>,
    pub(crate) vsock: Option<FcVsock>,
    pub(crate) balloon: Option<FcBalloon>,
    pub(crate) entropy: Option<EntropyConfig>,
    pub(crate) logger: Option<serde_json::Value>,
    pub(crate) metrics: Option<serde_json::Value>,
    #[serde(rename = "mmds-config")]
    pub(crate) mmds_config: Option<serde_json::Value>,
    #[serde(rename = "cpu-config")]
    pub(crate) _cpu_config: Option<serde_json::Value>,
}

/// Firecracker's `Drive` object.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Drive {
    pub(crate) drive_id: String,
    pub(crate) path_on_host: PathBuf,
    pub(crate) is_root_device: bool,
    #[serde(default)]
    pub(crate) is_read_only: Option<bool>,
    #[serde(default)]
    pub(crate) partuuid: Option<String>,
    #[serde(default)]
    pub(crate) cache_type: Option<String>,
    #[serde(default)]
    pub(crate) io_engine: Option<String>,
    #[serde(default)]
    pub(crate) rate_limiter: Option<RateLimiterConfig>,
    #[serde(default)]
    pub(crate) socket: Option<String>,
}

/// Firecracker's `NetworkInterface` object.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkInterface {
    pub(crate) iface_id: String,
    pub(crate) host_dev_name: String,
    #[serde(default)]
    pub(crate) guest_mac: Option<String>,
    #[serde(default)]
    pub(crate) rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default)]
    pub(crate) tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Firecracker's `Vsock` object.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FcVsock {
    pub(crate) guest_cid: u64,
    pub(crate) uds_path: PathBuf,
    #[serde(default)]
    pub(crate) vsock_id: Option<String>,
}

/// Firecracker's `Balloon` object.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FcBalloon {
    pub(crate) amount_mib: u32,
    pub(crate) deflate_on_oom: bool,
    #[serde(default)]
    pub(crate) stats_polling_interval_s: u16,
    #[serde(default)]
    pub(crate) free_page_hinting: bool,
    #[serde(default)]
    pub(crate) free_page_reporting: bool,
}

/// Firecracker's `EntropyDevice` object. The rate limiter is not
/// implemented yet and is refused rather than ignored.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntropyConfig {
    #[serde(default)]
    pub(crate) rate_limiter: Option<serde_json::Value>,
}

/// Firecracker's `BootSource` object.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BootSource {
    pub(crate) kernel_image_path: PathBuf,
    pub(crate) initrd_path: Option<PathBuf>,
    pub(crate) boot_args: Option<String>,
}

/// Firecracker's `MachineConfiguration` object. `cpu_template` is
/// accepted and has no effect yet. Without `huge_pages` guest RAM is on
/// transparent huge pages (Firecracker's default is `None`: condo follows
/// QEMU and Cloud Hypervisor there; `"huge_pages": "None"` asks for 4 KiB
/// pages).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MachineConfig {
    pub(crate) vcpu_count: u64,
    pub(crate) mem_size_mib: u64,
    pub(crate) smt: Option<bool>,
    pub(crate) track_dirty_pages: Option<bool>,
    pub(crate) cpu_template: Option<serde_json::Value>,
    pub(crate) huge_pages: Option<HugePages>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: Some(false),
            track_dirty_pages: Some(false),
            cpu_template: None,
            huge_pages: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false}
    }"#;

    #[test]
    fn parses_firecracker_file() {
        let c = VmConfig::from_firecracker_json(GOOD).unwrap();
        assert_eq!(
            c,
            VmConfig {
                kernel: "/k".into(),
                initrd: Some("/i".into()),
                cmdline: "console=ttyS0".into(),
                vcpus: 2,
                mem_mib: 256,
                entropy: false,
                disks: vec![],
                nets: vec![],
                vsock: None,
                balloon: None,
                track_dirty_pages: false,
                huge_pages: HugePages::Transparent,
            }
        );
    }

    #[test]
    fn huge_pages_by_firecracker_name() {
        let with = |hp: &str, extra: &str| {
            VmConfig::from_firecracker_json(&format!(
                r#"{{"boot-source": {{"kernel_image_path": "/k"}},
                    "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": {hp}}}{extra}}}"#
            ))
        };
        assert_eq!(with("\"None\"", "").unwrap().huge_pages, HugePages::None);
        assert_eq!(with("\"2M\"", "").unwrap().huge_pages, HugePages::Hugetlb2M);
        assert_eq!(with("null", "").unwrap().huge_pages, HugePages::Transparent);
        let round = with("\"None\"", "").unwrap().to_firecracker();
        assert_eq!(round.machine_config.huge_pages, Some(HugePages::None));
        for bad in ["\"1G\"", "\"none\"", "2"] {
            assert!(with(bad, "").is_err(), "accepted {bad}");
        }
        // hugetlbfs pages and a balloon do not go together.
        let e = with(
            "\"2M\"",
            r#", "balloon": {"amount_mib": 0, "deflate_on_oom": false}"#,
        );
        assert!(matches!(e, Err(ConfigError::HugePages(_))), "{e:?}");
        assert!(with(
            "\"Transparent\"",
            r#", "balloon": {"amount_mib": 0, "deflate_on_oom": false}"#
        )
        .is_ok());
        assert_eq!("2m".parse::<HugePages>(), Ok(HugePages::Hugetlb2M));
        assert_eq!(
            "transparent".parse::<HugePages>(),
            Ok(HugePages::Transparent)
        );
        assert!("huge".parse::<HugePages>().is_err());
    }

    #[test]
    fn hugetlb_memory_is_whole_huge_pages() {
        let mut c = VmConfig::from_firecracker_json(GOOD).unwrap();
        c.huge_pages = HugePages::Hugetlb2M;
        assert!(c.validate().is_ok());
        c.mem_mib = 257;
        assert!(matches!(c.validate(), Err(ConfigError::HugePages(_))));
    }

    #[test]
    fn default_cmdline_and_empty_sections() {
        let c = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
                "drives": [], "network-interfaces": []}"#,
        )
        .unwrap();
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        assert_eq!(c.initrd, None);
    }

    #[test]
    fn rejects_bad_files() {
        let cases = [
            // unknown top-level key
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "bogus": 1}"#,
            // unknown nested key
            r#"{"boot-source": {"kernel_image_path": "/k", "kernel": 1}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#,
            // missing section
            r#"{"boot-source": {"kernel_image_path": "/k"}}"#,
            // missing field
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1}}"#,
            // wrong type
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": "two", "mem_size_mib": 128}}"#,
            // out of range
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 300, "mem_size_mib": 128}}"#,
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}"#,
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 8}}"#,
            // drive without its required fields
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "drives": [{"drive_id": "x"}]}"#,
            // unsupported section with content
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "vsock": {"guest_cid": 3}}"#,
            // SMT
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 2, "mem_size_mib": 128, "smt": true}}"#,
            "not json",
            "",
        ];
        for c in cases {
            assert!(VmConfig::from_firecracker_json(c).is_err(), "accepted: {c}");
        }
    }

    #[test]
    fn drives_and_disk_specs() {
        let c = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
                "drives": [{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false},
                           {"drive_id": "data", "path_on_host": "/d.img", "is_root_device": false, "is_read_only": true}],
                "entropy": {}}"#,
        )
        .unwrap();
        assert_eq!(c.disks.len(), 2);
        assert!(c.disks[0].root && !c.disks[0].read_only);
        assert!(c.disks[1].read_only);
        assert_eq!(c.disks[1].id, "data");
        assert!(c.entropy);

        let d = DiskConfig::parse("path=/x.img,readonly=on,id=abc", 0).unwrap();
        assert_eq!(
            (d.path.to_str(), d.read_only, d.id.as_str(), d.root),
            (Some("/x.img"), true, "abc", false)
        );
        assert_eq!(DiskConfig::parse("path=/y", 3).unwrap().id, "condo-disk-3");
        let n = NetConfig::parse("tap=tap0,mac=06:00:ac:10:00:02", 0).unwrap();
        assert_eq!((n.tap.as_str(), n.mac), ("tap0", [6, 0, 0xac, 0x10, 0, 2]));
        for bad in [
            "mac=06:00:00:00:00:01",
            "tap=t,mac=06:00",
            "tap=t,mac=zz:00:00:00:00:00",
            "tap=t,x=1",
        ] {
            assert!(NetConfig::parse(bad, 0).is_err(), "{bad}");
        }
        for bad in [
            "",
            "readonly=on",
            "path=/x,readonly=maybe",
            "path=/x,color=red",
            "path",
        ] {
            assert!(DiskConfig::parse(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_ranges() {
        let mut c = VmConfig::from_firecracker_json(GOOD).unwrap();
        c.vcpus = 33;
        assert!(matches!(c.validate(), Err(ConfigError::VcpuCount(33))));
        c.vcpus = 32;
        c.mem_mib = MAX_MEM_MIB + 1;
        assert!(matches!(c.validate(), Err(ConfigError::MemSize(_))));
        c.mem_mib = 5 * 1024;
        c.cmdline = "x".repeat(5000);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::CmdlineTooLong(5000))
        ));
        c.cmdline = "a\0b".into();
        assert!(matches!(c.validate(), Err(ConfigError::CmdlineInvalid)));
        c.cmdline = "console=ttyS0".into();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn vsock_and_balloon_from_flags_and_file() {
        let v = VsockConfig::parse("cid=3,socket=/run/v.sock").unwrap();
        assert_eq!((v.cid, v.uds_path.to_str()), (3, Some("/run/v.sock")));
        assert!(VsockConfig::parse("cid=x,socket=/s").is_err());
        assert!(VsockConfig::parse("socket=/s").is_err());
        assert!(VsockConfig::parse("cid=3").is_err());
        let b = BalloonConfig::parse("size_mib=64,deflate_on_oom=on,stats_s=1").unwrap();
        assert_eq!(
            b,
            BalloonConfig {
                amount_mib: 64,
                deflate_on_oom: true,
                stats_polling_interval_s: 1,
                free_page_reporting: false
            }
        );
        assert!(BalloonConfig::parse("size_mib=-1").is_err());
        assert!(BalloonConfig::parse("bogus=1").is_err());
        let c = VmConfig::from_firecracker_json(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
                "vsock": {"guest_cid": 7, "uds_path": "/v.sock"},
                "balloon": {"amount_mib": 16, "deflate_on_oom": false, "free_page_reporting": true}}"#,
        )
        .unwrap();
        assert_eq!(c.vsock.unwrap().cid, 7);
        assert!(c.balloon.unwrap().free_page_reporting);
        for bad in [
            r#""vsock": {"guest_cid": 2, "uds_path": "/v"}"#,
            r#""vsock": {"guest_cid": 3}"#,
            r#""balloon": {"amount_mib": 4096, "deflate_on_oom": false}"#,
            r#""balloon": {"amount_mib": 1, "deflate_on_oom": false, "free_page_hinting": true}"#,
            r#""balloon": {"amount_mib": 1, "deflate_on_oom": false, "x": 1}"#,
        ] {
            let text = format!(
                r#"{{"boot-source": {{"kernel_image_path": "/k"}},
                    "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}}, {bad}}}"#
            );
            assert!(VmConfig::from_firecracker_json(&text).is_err(), "{bad}");
        }
    }
}

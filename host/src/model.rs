//! The host manager's resources and their validation, in one place each:
//! a guest's specification (what `POST /guests` and `condo create` carry),
//! images, snapshots and clone requests. Every wire shape denies unknown
//! fields; `validate` is the only gate between untrusted input (a request,
//! a command line, a database row read back) and the rest of the daemon.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Invalid;

/// Fewest and most vCPUs a guest may have.
pub const VCPUS: std::ops::RangeInclusive<u32> = 1..=32;
/// Smallest and largest guest memory, MiB.
pub const MEMORY_MIB: std::ops::RangeInclusive<u64> = 16..=1 << 20;
/// Largest writable disk, MiB (16 TiB).
pub const MAX_DISK_MIB: u64 = 16 << 20;
/// Longest kernel command line the daemon accepts (Linux takes 2048 on
/// x86; the daemon adds its own arguments).
pub const MAX_CMDLINE: usize = 1536;

/// Checks a name of a guest, image or snapshot: 1 to 63 lowercase
/// letters, digits and '-', starting with a letter or digit (a DNS label,
/// as Incus asks).
pub fn check_name(kind: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{kind} name {name:?}: use 1 to 63 lowercase letters, digits and '-', not starting with '-'"
        )))
    }
}

/// Checks that `p` is an absolute path to an existing regular file.
fn check_file(what: &str, p: &std::path::Path) -> Result<(), Invalid> {
    if !p.is_absolute() {
        return Err(Invalid(format!(
            "{what} {}: give an absolute path",
            p.display()
        )));
    }
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(Invalid(format!(
            "{what} {}: not a regular file",
            p.display()
        ))),
        Err(e) => Err(Invalid(format!("{what} {}: {e}", p.display()))),
    }
}

/// What a guest's VMM does when the guest ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Leave it stopped or crashed.
    #[default]
    No,
    /// Start it again when it crashed (the VMM ended with a non-zero
    /// status: a guest panic, a triple fault, a VMM error, a kill).
    OnFailure,
    /// Start it again whenever it ends, unless it was stopped through the
    /// daemon.
    Always,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no" => Ok(Self::No),
            "on-failure" => Ok(Self::OnFailure),
            "always" => Ok(Self::Always),
            _ => Err(format!("{s:?}: expected no, on-failure or always")),
        }
    }
}

/// Guest memory backing, as the VMM's `--huge-pages` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum HugePages {
    /// 4 KiB pages: the host keeps only what the guest touched (the
    /// densest choice for many idle guests, hence the default here).
    #[default]
    None,
    /// Transparent huge pages where the host has them.
    Transparent,
}

impl HugePages {
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Transparent => "Transparent",
        }
    }
}

/// A guest's specification: `POST /guests`, `condo create`. Paths are on
/// the daemon's host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSpec {
    pub name: String,
    /// An imported image: its kernel, initrd, root disk and command line
    /// are the defaults of the fields below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Kernel (ELF vmlinux or bzImage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// A raw or ext4 root image; the guest gets a copy-on-write clone of
    /// it as its writable root disk (/dev/vda).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
    /// Extra kernel command line (the daemon adds console, root and ip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default = "one")]
    pub vcpus: u32,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Size of the writable disk: the root image grown to this (MiB), or
    /// an empty disk of this size when there is no root image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// A network interface on the managed bridge (default: when the daemon
    /// has a network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<bool>,
    /// CPU limit in % of one host CPU (cgroup cpu.max); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit_pct: Option<u32>,
    /// CPU share (cgroup cpu.weight, 1 to 10000; default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    /// Host CPUs the guest may run on (cgroup cpuset.cpus), e.g. "0-1,3".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    /// Memory limit of the guest's VMM, MiB (cgroup memory.max); default
    /// the guest's memory plus the VMM's allowance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max_mib: Option<u64>,
    #[serde(default)]
    pub huge_pages: HugePages,
    /// Started when the daemon starts.
    #[serde(default)]
    pub autostart: bool,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Start it once created (default true).
    #[serde(default = "yes")]
    pub start: bool,
    /// Keep the writable disk when the guest is deleted.
    #[serde(default)]
    pub keep_disk: bool,
}

fn one() -> u32 {
    1
}
fn default_memory() -> u64 {
    128
}
fn yes() -> bool {
    true
}

/// What the VMM may use beyond guest RAM before its cgroup limit bites.
pub const VMM_ALLOWANCE_MIB: u64 = 64;

impl GuestSpec {
    /// A specification with every default, named `name`.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: None,
            kernel: None,
            initrd: None,
            rootfs: None,
            cmdline: None,
            vcpus: 1,
            memory_mib: 128,
            disk_mib: None,
            net: None,
            cpu_limit_pct: None,
            cpu_weight: None,
            cpuset: None,
            memory_max_mib: None,
            huge_pages: HugePages::None,
            autostart: false,
            restart: RestartPolicy::No,
            start: true,
            keep_disk: false,
        }
    }

    /// Checks every field that does not need the host (names, ranges,
    /// command line); `check_files` checks the paths.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_name("guest", &self.name)?;
        if let Some(i) = &self.image {
            check_name("image", i)?;
        }
        if self.image.is_none() && self.kernel.is_none() {
            return Err(Invalid("give a kernel or an image".into()));
        }
        if !VCPUS.contains(&self.vcpus) {
            return Err(Invalid(format!(
                "vcpus {}: between {} and {}",
                self.vcpus,
                VCPUS.start(),
                VCPUS.end()
            )));
        }
        if !MEMORY_MIB.contains(&self.memory_mib) {
            return Err(Invalid(format!(
                "memory {} MiB: between {} MiB and {} MiB",
                self.memory_mib,
                MEMORY_MIB.start(),
                MEMORY_MIB.end()
            )));
        }
        if let Some(d) = self.disk_mib {
            if d == 0 || d > MAX_DISK_MIB {
                return Err(Invalid(format!(
                    "disk {d} MiB: between 1 MiB and {MAX_DISK_MIB} MiB"
                )));
            }
        }
        if let Some(c) = &self.cmdline {
            if c.len() > MAX_CMDLINE || c.bytes().any(|b| b.is_ascii_control()) {
                return Err(Invalid(format!(
                    "cmdline: at most {MAX_CMDLINE} printable characters"
                )));
            }
        }
        if let Some(p) = self.cpu_limit_pct {
            let max = 100 * self.vcpus;
            if p == 0 || p > max {
                return Err(Invalid(format!(
                    "cpu limit {p} %: between 1 and {max} (100 per vCPU)"
                )));
            }
        }
        if let Some(w) = self.cpu_weight {
            if !(1..=10000).contains(&w) {
                return Err(Invalid(format!("cpu weight {w}: between 1 and 10000")));
            }
        }
        if let Some(s) = &self.cpuset {
            check_cpuset(s)?;
        }
        if let Some(m) = self.memory_max_mib {
            if !(16..=self.memory_mib + 1024 * VMM_ALLOWANCE_MIB).contains(&m) {
                return Err(Invalid(format!(
                    "memory limit {m} MiB: between 16 MiB and {} MiB",
                    self.memory_mib + 1024 * VMM_ALLOWANCE_MIB
                )));
            }
        }
        for (what, p) in [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("rootfs", &self.rootfs),
        ] {
            if let Some(p) = p {
                if !p.is_absolute() {
                    return Err(Invalid(format!(
                        "{what} {}: give an absolute path",
                        p.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks that the given files exist (after `validate`).
    pub fn check_files(&self) -> Result<(), Invalid> {
        for (what, p) in [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("rootfs", &self.rootfs),
        ] {
            if let Some(p) = p {
                check_file(what, p)?;
            }
        }
        Ok(())
    }

    /// Whether the guest gets a network interface (after the daemon
    /// resolved the default).
    pub fn has_net(&self) -> bool {
        self.net == Some(true)
    }

    /// The cgroup memory limit, bytes.
    pub fn memory_max_bytes(&self) -> u64 {
        self.memory_max_mib
            .unwrap_or(self.memory_mib + VMM_ALLOWANCE_MIB)
            << 20
    }
}

/// Checks a cpuset list: "N", "N-M", comma-separated, CPUs below 4096.
pub fn check_cpuset(s: &str) -> Result<(), Invalid> {
    let bad = || Invalid(format!("cpuset {s:?}: expected a list like 0-1,3"));
    if s.is_empty() || s.len() > 256 {
        return Err(bad());
    }
    for part in s.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u32 = a.parse().map_err(|_| bad())?;
        let b: u32 = b.parse().map_err(|_| bad())?;
        if a > b || b >= 4096 {
            return Err(bad());
        }
    }
    Ok(())
}

/// Where a guest is in its life. Stored in the database by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestState {
    /// Being created: a daemon that finds one at start-up removes it (the
    /// create was interrupted).
    Creating,
    Stopped,
    Starting,
    Running,
    Paused,
    Stopping,
    /// The VMM ended on its own with a failure.
    Crashed,
    /// Being deleted: finished by a daemon that finds one at start-up.
    Deleting,
}

impl GuestState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Crashed => "crashed",
            Self::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => Self::Creating,
            "stopped" => Self::Stopped,
            "starting" => Self::Starting,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "stopping" => Self::Stopping,
            "crashed" => Self::Crashed,
            "deleting" => Self::Deleting,
            _ => return None,
        })
    }

    /// A VMM process exists (or should).
    pub fn has_process(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Running | Self::Paused | Self::Stopping
        )
    }
}

impl fmt::Display for GuestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /images`, `condo image import`: a kernel (with its initrd) and/or
/// a root disk image, copied into the state directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

impl ImageSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_name("image", &self.name)?;
        if self.kernel.is_none() && self.rootfs.is_none() {
            return Err(Invalid(
                "an image holds a kernel (with an optional initrd), a root disk image, or both"
                    .into(),
            ));
        }
        if self.initrd.is_some() && self.kernel.is_none() {
            return Err(Invalid("an initrd needs a kernel".into()));
        }
        if let Some(c) = &self.cmdline {
            if c.len() > MAX_CMDLINE || c.bytes().any(|b| b.is_ascii_control()) {
                return Err(Invalid(format!(
                    "cmdline: at most {MAX_CMDLINE} printable characters"
                )));
            }
        }
        for (what, p) in [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("rootfs", &self.rootfs),
        ] {
            if let Some(p) = p {
                check_file(what, p)?;
            }
        }
        Ok(())
    }
}

/// `POST /guests/{name}/snapshot`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The snapshot's name (default: the guest's name).
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// Most clones one request makes.
pub const MAX_CLONES: u32 = 1000;

/// `POST /snapshots/{name}/clone`: `count` new guests restored from the
/// snapshot, named `name` (one) or `name-1` ... `name-N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    pub name: String,
    #[serde(default = "one")]
    pub count: u32,
}

impl CloneRequest {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_name("guest", &self.name)?;
        if self.count == 0 || self.count > MAX_CLONES {
            return Err(Invalid(format!(
                "count {}: between 1 and {MAX_CLONES}",
                self.count
            )));
        }
        for n in self.names() {
            check_name("guest", &n)?;
        }
        Ok(())
    }

    /// The new guests' names.
    pub fn names(&self) -> Vec<String> {
        if self.count == 1 {
            vec![self.name.clone()]
        } else {
            (1..=self.count)
                .map(|i| format!("{}-{i}", self.name))
                .collect()
        }
    }
}

/// `POST /guests/{name}/stop` and `/restart`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Seconds to wait for the guest to power off after Ctrl+Alt+Del
    /// before it is killed (default 30; 0 kills at once).
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// Longest stop timeout.
pub const MAX_STOP_TIMEOUT_S: u64 = 3600;

impl StopRequest {
    pub fn validate(&self) -> Result<(), Invalid> {
        match self.timeout_s {
            Some(t) if t > MAX_STOP_TIMEOUT_S => Err(Invalid(format!(
                "timeout {t} s: at most {MAX_STOP_TIMEOUT_S}"
            ))),
            _ => Ok(()),
        }
    }
}

/// `DELETE /guests/{name}`'s body (optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// Stop a running guest first (otherwise a running guest is refused).
    #[serde(default)]
    pub force: bool,
    /// Keep the writable disk (moved to the state directory's `kept/`).
    #[serde(default)]
    pub keep_disk: Option<bool>,
}

/// `POST /guests/{name}/exec`: a command for the guest agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Extra environment, `KEY=VALUE` each (after the default PATH).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Working directory (default /).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Run on a pseudo-terminal of `rows` x `cols`.
    #[serde(default)]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
}

impl ExecRequest {
    /// The agent's process for this request, validated.
    pub fn process(&self) -> Result<agent::spec::Process, Invalid> {
        if self.command.is_empty() {
            return Err(Invalid("exec: give a command".into()));
        }
        let mut p = agent::spec::Process::command(self.command.clone());
        p.env.extend(self.env.iter().cloned());
        if let Some(c) = &self.cwd {
            p.cwd = c.clone();
        }
        if self.tty {
            p = p.with_terminal(self.rows.unwrap_or(24), self.cols.unwrap_or(80));
        }
        p.validate().map_err(|e| Invalid(format!("exec: {e}")))?;
        Ok(p)
    }
}

/// Parses a size: a number of MiB, or with a suffix K, M, G, T (binary).
pub fn parse_size_mib(s: &str) -> Result<u64, Invalid> {
    let bad = || Invalid(format!("size {s:?}: expected e.g. 512, 512M, 2G"));
    let s = s.trim();
    let (num, mult_kib): (&str, u64) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1),
        Some((i, 'M' | 'm')) => (&s[..i], 1024),
        Some((i, 'G' | 'g')) => (&s[..i], 1024 * 1024),
        Some((i, 'T' | 't')) => (&s[..i], 1024 * 1024 * 1024),
        _ => (s, 1024),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let kib = n.checked_mul(mult_kib).ok_or_else(bad)?;
    if kib % 1024 != 0 {
        return Err(Invalid(format!("size {s:?}: a whole number of MiB")));
    }
    Ok(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GuestSpec {
        let mut s = GuestSpec::named("vm-1");
        s.kernel = Some("/k".into());
        s
    }

    #[test]
    fn names_are_dns_labels() {
        for good in ["a", "vm-1", "0", &"a".repeat(63)] {
            assert!(check_name("guest", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "a/b", &"a".repeat(64), "é"] {
            assert!(check_name("guest", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specs_are_checked_field_by_field() {
        assert!(spec().validate().is_ok());
        type Case = (Box<dyn Fn(&mut GuestSpec)>, &'static str);
        let cases: Vec<Case> = vec![
            (Box::new(|s| s.vcpus = 0), "vcpus 0"),
            (Box::new(|s| s.vcpus = 33), "vcpus 33"),
            (Box::new(|s| s.memory_mib = 8), "memory 8 MiB"),
            (Box::new(|s| s.disk_mib = Some(0)), "disk 0"),
            (Box::new(|s| s.cpu_limit_pct = Some(101)), "cpu limit 101"),
            (Box::new(|s| s.cpu_weight = Some(0)), "cpu weight 0"),
            (Box::new(|s| s.cpuset = Some("1-0".into())), "cpuset"),
            (Box::new(|s| s.cmdline = Some("a\nb".into())), "cmdline"),
            (Box::new(|s| s.kernel = Some("rel".into())), "absolute"),
            (Box::new(|s| s.kernel = None), "kernel or an image"),
            (Box::new(|s| s.name = "Bad".into()), "guest name"),
        ];
        for (f, want) in cases {
            let mut s = spec();
            f(&mut s);
            let e = s.validate().unwrap_err().0;
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<GuestSpec>(r#"{"name":"a","kernel":"/k","cpus":2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `cpus`"), "{e}");
        let s: GuestSpec = serde_json::from_str(r#"{"name":"a","kernel":"/k"}"#).unwrap();
        assert_eq!(
            (s.vcpus, s.memory_mib, s.net, s.start),
            (1, 128, None, true)
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size_mib("512").unwrap(), 512);
        assert_eq!(parse_size_mib("2G").unwrap(), 2048);
        assert_eq!(parse_size_mib("1024K").unwrap(), 1);
        assert!(parse_size_mib("1K").is_err());
        assert!(parse_size_mib("x").is_err());
        assert!(parse_size_mib("99999999999999999999T").is_err());
    }

    #[test]
    fn clones_are_named_and_counted() {
        let c = CloneRequest {
            name: "web".into(),
            count: 3,
        };
        assert_eq!(c.names(), ["web-1", "web-2", "web-3"]);
        assert!(c.validate().is_ok());
        assert!(CloneRequest {
            name: "web".into(),
            count: 0
        }
        .validate()
        .is_err());
        assert!(CloneRequest {
            name: "a".repeat(62),
            count: 2
        }
        .validate()
        .is_err());
    }
}

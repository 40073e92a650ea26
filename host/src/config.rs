//! The daemon's configuration (`condo daemon` options), checked once at
//! start-up: where state lives, the API socket, the managed network, the
//! overcommit ratios, the uid range and the accounting intervals.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Args;

use crate::error::Invalid;

/// `condo daemon`'s options.
#[derive(Args, Debug, Clone)]
pub struct DaemonConfig {
    /// State directory: the database, images, guests' disks, snapshots.
    #[arg(long, default_value = "/var/lib/condo", env = "CONDO_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The REST API's Unix socket.
    #[arg(long = "listen", default_value = "/run/condo/condo.sock")]
    pub socket: PathBuf,
    /// Group allowed on the API socket (name or number): mode 0660 then,
    /// 0600 (owner only) without.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// The managed bridge (at most 6 characters: guests' interfaces are
    /// named after it).
    #[arg(long, default_value = "condo0")]
    pub bridge: String,
    /// The guests' IPv4 subnet; the bridge takes its first address.
    #[arg(long, default_value = "10.151.0.0/16")]
    pub subnet: String,
    /// No NAT from the subnet to the host's other interfaces.
    #[arg(long)]
    pub no_nat: bool,
    /// No managed network at all (guests get no interface).
    #[arg(long)]
    pub no_network: bool,
    /// Committed guest memory may reach this times the host's memory.
    #[arg(long, default_value_t = 1.0)]
    pub memory_overcommit: f64,
    /// Committed vCPUs may reach this times the host's CPUs.
    #[arg(long, default_value_t = 4.0)]
    pub cpu_overcommit: f64,
    /// First uid (and gid) of the guests' VMMs.
    #[arg(long, default_value_t = 200_000)]
    pub uid_base: u32,
    /// How many uids the guests may use (one each).
    #[arg(long, default_value_t = 65_536)]
    pub uid_count: u32,
    /// The cgroup under which each guest's cgroup is made.
    #[arg(long, default_value = "condo")]
    pub cgroup_parent: String,
    /// Accounting: one sample of every guest each this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub sample_ms: u64,
    /// How long samples are kept at full resolution (seconds).
    #[arg(long, default_value_t = 3600)]
    pub keep_raw_s: u64,
    /// How long one-minute averages are kept (seconds).
    #[arg(long, default_value_t = 7 * 86400)]
    pub keep_minutes_s: u64,
    /// Seconds a stop waits for the guest to power off before killing it.
    #[arg(long, default_value_t = 30)]
    pub stop_timeout_s: u64,
    /// The condo binary that runs each guest's `condo jail` (default: this
    /// one).
    #[arg(long)]
    pub condo_binary: Option<PathBuf>,
}

/// An IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = || {
            Invalid(format!(
                "subnet {s:?}: expected an IPv4 CIDR like 10.151.0.0/16"
            ))
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=28).contains(&prefix) {
            return Err(Invalid(format!("subnet {s:?}: prefix between /8 and /28")));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(base) & !mask != 0 {
            return Err(Invalid(format!("subnet {s:?}: host bits set")));
        }
        Ok(Self { base, prefix })
    }

    /// Addresses in the subnet.
    pub fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// The address of host number `i`.
    pub fn host(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + i)
    }

    /// The bridge's (gateway's) address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - self.prefix))
    }

    /// Host numbers guests may get: from 2 up to the one before broadcast.
    pub fn guest_hosts(&self) -> std::ops::Range<u32> {
        2..self.size() - 1
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl DaemonConfig {
    /// Checks the options; returns the parsed subnet.
    pub fn validate(&self) -> Result<Subnet, Invalid> {
        if !self.state_dir.is_absolute() || !self.socket.is_absolute() {
            return Err(Invalid(
                "--state-dir and --listen take absolute paths".into(),
            ));
        }
        let b = &self.bridge;
        if b.is_empty()
            || b.len() > 6
            || !b.bytes().all(|c| c.is_ascii_alphanumeric())
            || !b.as_bytes()[0].is_ascii_alphabetic()
        {
            return Err(Invalid(format!(
                "--bridge {b:?}: 1 to 6 letters and digits, starting with a letter"
            )));
        }
        for (n, v) in [
            ("--memory-overcommit", self.memory_overcommit),
            ("--cpu-overcommit", self.cpu_overcommit),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 1000.0) {
                return Err(Invalid(format!("{n} {v}: above 0, at most 1000")));
            }
        }
        if self.uid_base == 0
            || self.uid_count == 0
            || self.uid_base.checked_add(self.uid_count).is_none()
        {
            return Err(Invalid(
                "--uid-base/--uid-count: a range of unprivileged uids".into(),
            ));
        }
        if !self.cgroup_parent.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        }) {
            return Err(Invalid(format!(
                "--cgroup-parent {:?}: a relative cgroup path",
                self.cgroup_parent
            )));
        }
        if !(10..=3_600_000).contains(&self.sample_ms) {
            return Err(Invalid("--sample-ms: between 10 and 3600000".into()));
        }
        Subnet::parse(&self.subnet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse() {
        let s = Subnet::parse("10.151.0.0/16").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 151, 0, 1));
        assert_eq!(s.host(258), Ipv4Addr::new(10, 151, 1, 2));
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(s.guest_hosts(), 2..65535);
        for bad in [
            "10.0.0.1/24",
            "10.0.0.0",
            "10.0.0.0/30",
            "x/8",
            "10.0.0.0/7",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }
}

//! Guests' cgroups as the daemon sees them: which limits to hand to
//! `condo jail --cgroup` (v2 files where the unified hierarchy has the
//! controller, v1 otherwise), reading a guest's CPU time and memory, and
//! removing a cgroup a killed jail left behind. The jail creates and joins
//! the cgroup (`<parent>/vm<ID>`); this module never moves a process.

use std::fs;
use std::path::{Path, PathBuf};

use crate::model::GuestSpec;

const ROOT: &str = "/sys/fs/cgroup";

/// The period cpu.max quotas are expressed in (100 ms).
pub const PERIOD_US: u64 = 100_000;

/// Which hierarchy has which controller on this host.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    parent: String,
    /// Controllers the unified hierarchy offers.
    v2: Vec<String>,
}

impl Layout {
    /// Detects the layout under /sys/fs/cgroup for guests under `parent`.
    pub fn detect(parent: &str) -> Self {
        let root = PathBuf::from(ROOT);
        let v2 = fs::read_to_string(root.join("cgroup.controllers"))
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        Self {
            root,
            parent: parent.to_owned(),
            v2,
        }
    }

    fn is_v2(&self, controller: &str) -> bool {
        self.v2.iter().any(|c| c == controller)
    }

    /// Whether the host has a v2 cpu controller (else v1).
    pub fn cpu_v2(&self) -> bool {
        self.is_v2("cpu")
    }

    /// The guest's cgroup directory for `controller`.
    fn dir(&self, controller: &str, jail_id: &str) -> PathBuf {
        if self.is_v2(controller) {
            self.root.join(&self.parent).join(jail_id)
        } else {
            self.root.join(controller).join(&self.parent).join(jail_id)
        }
    }

    /// The `--cgroup FILE=VALUE` settings for a guest: CPU limit and share,
    /// memory limit, optional cpuset. Always a CPU and a memory setting,
    /// so that the guest's cgroup exists in both and can be accounted.
    pub fn settings(&self, spec: &GuestSpec) -> Vec<String> {
        let mut out = Vec::new();
        let quota = spec.cpu_limit_pct.map(|p| u64::from(p) * PERIOD_US / 100);
        let weight = spec.cpu_weight.unwrap_or(100);
        if self.cpu_v2() {
            out.push(match quota {
                Some(q) => format!("cpu.max={q} {PERIOD_US}"),
                None => format!("cpu.max=max {PERIOD_US}"),
            });
            out.push(format!("cpu.weight={weight}"));
        } else {
            out.push(format!("cpu.cfs_period_us={PERIOD_US}"));
            out.push(format!(
                "cpu.cfs_quota_us={}",
                quota.map_or(-1, |q| q as i64)
            ));
            // cpu.weight 100 is cpu.shares 1024.
            out.push(format!(
                "cpu.shares={}",
                (u64::from(weight) * 1024 / 100).max(2)
            ));
            // Resetting the counter makes the jail join cpuacct too.
            out.push("cpuacct.usage=0".into());
        }
        let bytes = spec.memory_max_bytes();
        if self.is_v2("memory") {
            out.push(format!("memory.max={bytes}"));
        } else {
            out.push(format!("memory.limit_in_bytes={bytes}"));
        }
        if let Some(c) = &spec.cpuset {
            out.push(format!("cpuset.cpus={c}"));
        }
        out
    }

    /// CPU time the guest's cgroup has used, microseconds.
    pub fn cpu_us(&self, jail_id: &str) -> Option<u64> {
        if self.cpu_v2() {
            read_key(&self.dir("cpu", jail_id).join("cpu.stat"), "usage_usec")
        } else {
            read_u64(&self.dir("cpuacct", jail_id).join("cpuacct.usage")).map(|ns| ns / 1000)
        }
    }

    /// Memory the guest's cgroup holds, bytes.
    pub fn memory_bytes(&self, jail_id: &str) -> Option<u64> {
        let d = self.dir("memory", jail_id);
        if self.is_v2("memory") {
            read_u64(&d.join("memory.current"))
        } else {
            read_u64(&d.join("memory.usage_in_bytes"))
        }
    }

    /// How often the guest's cgroup hit its memory limit and had a
    /// process killed for it: (oom events, oom kills).
    pub fn oom_events(&self, jail_id: &str) -> (u64, u64) {
        let d = self.dir("memory", jail_id);
        if self.is_v2("memory") {
            let f = d.join("memory.events");
            (
                read_key(&f, "oom").unwrap_or(0),
                read_key(&f, "oom_kill").unwrap_or(0),
            )
        } else {
            (read_u64(&d.join("memory.failcnt")).unwrap_or(0), 0)
        }
    }

    /// Removes the guest's cgroups (left by a jail that was killed); a
    /// cgroup with a process still in it stays.
    pub fn remove(&self, jail_id: &str) {
        let mut dirs = vec![self.root.join(&self.parent).join(jail_id)];
        for c in ["cpu", "cpuacct", "cpuset", "memory"] {
            dirs.push(self.dir(c, jail_id));
        }
        for d in dirs {
            if d.exists() {
                for _ in 0..25 {
                    if fs::remove_dir(&d).is_ok() || !d.exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
    }

    /// The jail ids that have a cgroup under the parent (any hierarchy).
    pub fn jail_ids(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut parents = vec![self.root.join(&self.parent)];
        for c in ["cpu", "cpuacct", "cpuset", "memory"] {
            parents.push(self.root.join(c).join(&self.parent));
        }
        for p in parents {
            if let Ok(rd) = fs::read_dir(&p) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        let n = e.file_name().to_string_lossy().into_owned();
                        if !out.contains(&n) {
                            out.push(n);
                        }
                    }
                }
            }
        }
        out
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
fn read_key(p: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(p)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_hierarchy() {
        let mut spec = GuestSpec::named("a");
        spec.cpu_limit_pct = Some(20);
        spec.memory_mib = 128;
        spec.cpuset = Some("0".into());
        let v2 = Layout {
            root: "/x".into(),
            parent: "condo".into(),
            v2: vec!["cpu".into(), "memory".into(), "cpuset".into()],
        };
        let s = v2.settings(&spec);
        assert!(s.contains(&"cpu.max=20000 100000".to_owned()), "{s:?}");
        assert!(s.contains(&"cpu.weight=100".to_owned()));
        assert!(s.contains(&format!("memory.max={}", (128 + 64) << 20)));
        assert!(s.contains(&"cpuset.cpus=0".to_owned()));
        let v1 = Layout {
            v2: vec![],
            ..v2.clone()
        };
        let s = v1.settings(&spec);
        assert!(s.contains(&"cpu.cfs_quota_us=20000".to_owned()), "{s:?}");
        assert!(s.contains(&"cpu.shares=1024".to_owned()));
        assert!(s.contains(&"cpuacct.usage=0".to_owned()));
        assert_eq!(
            v1.dir("cpuacct", "vm1"),
            PathBuf::from("/x/cpuacct/condo/vm1")
        );
        assert_eq!(v2.dir("cpu", "vm1"), PathBuf::from("/x/condo/vm1"));
    }

    #[test]
    fn keyed_files_parse() {
        let d = std::env::temp_dir().join(format!("condo-cg-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let f = d.join("cpu.stat");
        fs::write(&f, "usage_usec 1234\nuser_usec 1000\n").unwrap();
        assert_eq!(read_key(&f, "usage_usec"), Some(1234));
        assert_eq!(read_key(&f, "usage"), None);
        let _ = fs::remove_dir_all(d);
    }
}

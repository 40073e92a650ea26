//! The container's cgroup (`linux.cgroupsPath`): made under the cgroup
//! file system as runc's cgroupfs driver would (v2 when the unified
//! hierarchy is mounted at /sys/fs/cgroup, v1 per controller otherwise),
//! with the CPU quota and memory limit written, and joined by the monitor,
//! so that the VMM it starts runs in it. With `--systemd-cgroup` the path
//! is systemd's `slice:prefix:name`, placed where systemd would place the
//! scope (`/a.slice/a-b.slice/prefix-name.scope`).

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::spec::Spec;

const ROOT: &str = "/sys/fs/cgroup";
/// v1 controllers a container's cgroup is made in.
const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "memory", "pids", "cpuset", "blkio", "devices",
];

/// The cgroup path relative to a hierarchy's root, checked (no `..`).
pub fn relative_path(spec_path: &str, systemd: bool, id: &str) -> Result<PathBuf> {
    let rel = if systemd {
        let parts: Vec<&str> = spec_path.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(Error::InvalidSpec(format!(
                "expected cgroupsPath to be of format \"slice:prefix:name\" for systemd cgroups, got {spec_path:?} instead"
            )));
        };
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let mut p = PathBuf::new();
        // a-b-c.slice lives in a.slice/a-b.slice/a-b-c.slice.
        let stem = slice.strip_suffix(".slice").unwrap_or(slice);
        let mut acc = String::new();
        for part in stem.split('-') {
            if !acc.is_empty() {
                acc.push('-');
            }
            acc.push_str(part);
            if acc != "-" {
                p.push(format!("{acc}.slice"));
            }
        }
        let name = if name.is_empty() { id } else { name };
        let unit = if name.ends_with(".slice") || name.ends_with(".scope") {
            name.to_owned()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        p.push(unit);
        p
    } else if spec_path.is_empty() {
        PathBuf::from(id)
    } else {
        PathBuf::from(spec_path.trim_start_matches('/'))
    };
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Error::InvalidSpec(format!(
            "invalid cgroupsPath {spec_path:?}"
        )));
    }
    Ok(rel)
}

fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let p = dir.join(file);
    std::fs::write(&p, value).map_err(Error::path(&format!("write {value:?} to"), &p))
}

/// Makes the container's cgroup (limits written) and moves this process
/// into it. Returns the directories it made, deepest last, for
/// [`remove`].
pub fn enter(spec: &Spec, systemd: bool, id: &str) -> Result<Vec<PathBuf>> {
    let Some(path) = spec.linux.as_ref().and_then(|l| l.cgroups_path.as_deref()) else {
        return Ok(Vec::new());
    };
    let rel = relative_path(path, systemd, id)?;
    let root = Path::new(ROOT);
    let mut made = Vec::new();
    let cpu = spec
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .and_then(|r| r.cpu.as_ref());
    let quota = cpu.and_then(|c| c.quota).filter(|q| *q > 0);
    let period = cpu
        .and_then(|c| c.period)
        .filter(|p| *p > 0)
        .unwrap_or(100_000);
    let memory = spec.memory_limit();
    if root.join("cgroup.controllers").exists() {
        let dir = root.join(&rel);
        // Controllers enabled on the way down, where the parent has them.
        let mut at = root.to_path_buf();
        for c in rel.components() {
            let have = std::fs::read_to_string(at.join("cgroup.controllers")).unwrap_or_default();
            let want: Vec<String> = ["cpu", "memory", "pids"]
                .iter()
                .filter(|c| have.split_whitespace().any(|h| h == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if !want.is_empty() {
                let _ = std::fs::write(at.join("cgroup.subtree_control"), want.join(" "));
            }
            at.push(c);
        }
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(Error::path("create cgroup", &dir))?;
            made.push(dir.clone());
        }
        if let Some(q) = quota {
            write(&dir, "cpu.max", &format!("{q} {period}"))?;
        }
        if let Some(m) = memory {
            write(&dir, "memory.max", &m.to_string())?;
        }
        write(&dir, "cgroup.procs", "0")?;
    } else {
        for ctl in V1_CONTROLLERS {
            let base = root.join(ctl);
            if !base.join("cgroup.procs").exists() {
                continue;
            }
            let dir = base.join(&rel);
            if !dir.exists() {
                std::fs::create_dir_all(&dir).map_err(Error::path("create cgroup", &dir))?;
                made.push(dir.clone());
            }
            if *ctl == "cpuset" {
                inherit_cpuset(&base, &rel);
            }
            if *ctl == "cpu" {
                if let Some(q) = quota {
                    write(&dir, "cpu.cfs_period_us", &period.to_string())?;
                    write(&dir, "cpu.cfs_quota_us", &q.to_string())?;
                }
            }
            if *ctl == "memory" {
                if let Some(m) = memory {
                    write(&dir, "memory.limit_in_bytes", &m.to_string())?;
                }
            }
            write(&dir, "cgroup.procs", "0")?;
        }
    }
    Ok(made)
}

/// A new v1 cpuset cgroup has no CPUs or memory nodes: each level takes
/// its parent's.
fn inherit_cpuset(base: &Path, rel: &Path) {
    let mut at = base.to_path_buf();
    for c in rel.components() {
        let parent = at.clone();
        at.push(c);
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let mine = std::fs::read_to_string(at.join(f)).unwrap_or_default();
            if mine.trim().is_empty() {
                if let Ok(v) = std::fs::read_to_string(parent.join(f)) {
                    let _ = std::fs::write(at.join(f), v.trim());
                }
            }
        }
    }
}

/// Removes the cgroups [`enter`] made (once their processes are gone).
pub fn remove(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        if !d.starts_with(ROOT) {
            continue;
        }
        for _ in 0..50 {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_and_systemd_paths() {
        assert_eq!(
            relative_path("/libpod_parent/libpod-abc", false, "abc").expect("path"),
            Path::new("libpod_parent/libpod-abc")
        );
        assert_eq!(
            relative_path("", false, "abc").expect("path"),
            Path::new("abc")
        );
        assert_eq!(
            relative_path("machine-libpod.slice:libpod:abc", true, "abc").expect("path"),
            Path::new("machine.slice/machine-libpod.slice/libpod-abc.scope")
        );
        assert_eq!(
            relative_path("system.slice:containerd:x", true, "x").expect("path"),
            Path::new("system.slice/containerd-x.scope")
        );
        assert!(relative_path("/a/../../etc", false, "x").is_err());
        assert!(relative_path("a:b", true, "x").is_err());
    }
}

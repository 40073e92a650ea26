//! The part of an OCI bundle's `config.json` (runtime specification 1.x)
//! that a microVM honours, parsed from untrusted bytes, and the checks runc
//! makes before it creates anything.
//!
//! Unknown fields are ignored, as every runtime does. Fields that only make
//! sense for a namespace container (seccomp, capabilities, AppArmor,
//! SELinux, namespaces) are not read: the VM is the isolation boundary.
//! What is read is bounded: sizes and counts are checked here, so that a
//! hostile bundle cannot make the runtime or the guest agent hold more
//! than a container could use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest `config.json` read (podman's are a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// At most this many args, env entries, mounts or rlimits each.
const MAX_ITEMS: usize = 4096;
/// At most this many bytes in one string of the process.
const MAX_STRING: usize = 128 << 10;

/// A bundle's configuration (the fields condo uses).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub oci_version: String,
    #[serde(default)]
    pub process: Option<Process>,
    #[serde(default)]
    pub root: Option<Root>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub linux: Option<Linux>,
}

/// The container's process (also the `--process` file of `exec`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub console_size: Option<ConsoleSize>,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
}

/// The terminal's size at start.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ConsoleSize {
    #[serde(default)]
    pub height: u32,
    #[serde(default)]
    pub width: u32,
}

/// Who the process runs as.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub umask: Option<u32>,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// One resource limit, `RLIMIT_NOFILE` style.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub hard: u64,
    #[serde(default)]
    pub soft: u64,
}

/// The root file system.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Root {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
}

/// One mount.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Mount {
    #[serde(default)]
    pub destination: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// The Linux section: resources and the cgroup.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default)]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub cgroups_path: Option<String>,
}

/// Resource limits; CPU and memory size the VM.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Resources {
    #[serde(default)]
    pub memory: Option<Memory>,
    #[serde(default)]
    pub cpu: Option<Cpu>,
}

/// `linux.resources.memory`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Memory {
    #[serde(default)]
    pub limit: Option<i64>,
}

/// `linux.resources.cpu`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Cpu {
    #[serde(default)]
    pub quota: Option<i64>,
    #[serde(default)]
    pub period: Option<u64>,
    #[serde(default)]
    pub cpus: Option<String>,
}

/// Reads `path` (at most [`MAX_CONFIG_BYTES`]); `missing` is the error when
/// it is not there.
fn read_limited(path: &Path, missing: impl FnOnce() -> Error) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(Error::path("open", path)(e)),
    };
    let mut buf = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(Error::path("read", path))?;
    if buf.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::InvalidSpec(format!(
            "{} is larger than {MAX_CONFIG_BYTES} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

impl Spec {
    /// Parses `config.json` bytes and checks what runc checks.
    pub fn parse(bytes: &[u8]) -> Result<Spec> {
        let spec: Spec = serde_json::from_slice(bytes).map_err(|e| Error::BadJson {
            file: "config.json".into(),
            msg: e.to_string(),
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Loads `BUNDLE/config.json`.
    pub fn load(bundle: &Path) -> Result<Spec> {
        let bytes = read_limited(&bundle.join("config.json"), || {
            Error::SpecNotFound("config.json".into())
        })?;
        Self::parse(&bytes)
    }

    /// The checks runc makes on a loaded spec, plus condo's bounds.
    pub fn validate(&self) -> Result<()> {
        let p = self
            .process
            .as_ref()
            .ok_or_else(|| Error::InvalidSpec("process property must not be empty".into()))?;
        p.validate()?;
        if self.root.as_ref().is_none_or(|r| r.path.is_empty()) {
            return Err(Error::InvalidSpec("root must be specified".into()));
        }
        if self.mounts.len() > MAX_ITEMS {
            return Err(Error::InvalidSpec("too many mounts".into()));
        }
        for m in &self.mounts {
            if !m.destination.starts_with('/') {
                return Err(Error::InvalidSpec(format!(
                    "mount destination {:?} is not an absolute path",
                    m.destination
                )));
            }
        }
        if let Some(h) = &self.hostname {
            if h.len() > 64 || h.contains(['\0', '/', '\n']) {
                return Err(Error::InvalidSpec(format!("invalid hostname {h:?}")));
            }
        }
        Ok(())
    }

    /// The root file system's path, relative paths taken from `bundle`, and
    /// checked to be a directory (runc's `invalid rootfs` otherwise).
    pub fn rootfs(&self, bundle: &Path) -> Result<PathBuf> {
        let path = self.root.as_ref().map(|r| r.path.as_str()).unwrap_or("");
        let p = if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            bundle.join(path)
        };
        let meta = std::fs::metadata(&p)
            .map_err(|e| Error::InvalidRootfs(format!("stat {}: {}", p.display(), os_text(&e))))?;
        if !meta.is_dir() {
            return Err(Error::InvalidRootfs(format!(
                "{} is not a directory",
                p.display()
            )));
        }
        Ok(p)
    }

    /// The process (validation guarantees there is one).
    pub fn process(&self) -> &Process {
        static NONE: std::sync::OnceLock<Process> = std::sync::OnceLock::new();
        self.process
            .as_ref()
            .unwrap_or_else(|| NONE.get_or_init(Process::default))
    }

    /// The memory limit in bytes, when one is set and positive.
    pub fn memory_limit(&self) -> Option<u64> {
        let l = self.linux.as_ref()?.resources.as_ref()?.memory.as_ref()?;
        l.limit
            .and_then(|v| u64::try_from(v).ok())
            .filter(|v| *v > 0)
    }

    /// vCPUs the CPU quota asks for: quota/period rounded up, when set.
    pub fn cpu_count(&self) -> Option<u64> {
        let c = self.linux.as_ref()?.resources.as_ref()?.cpu.as_ref()?;
        let quota = c
            .quota
            .and_then(|q| u64::try_from(q).ok())
            .filter(|q| *q > 0)?;
        let period = c.period.filter(|p| *p > 0).unwrap_or(100_000);
        Some(quota.div_ceil(period).max(1))
    }
}

impl Process {
    /// Parses an `exec --process` file.
    pub fn load(path: &Path) -> Result<Process> {
        let bytes = read_limited(path, || {
            Error::InvalidSpec(format!("process file {} not found", path.display()))
        })?;
        Self::parse(&bytes).map_err(|e| match e {
            Error::BadJson { msg, .. } => Error::BadJson {
                file: path.display().to_string(),
                msg,
            },
            e => e,
        })
    }

    /// Parses and checks a process object's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Process> {
        let p: Process = serde_json::from_slice(bytes).map_err(|e| Error::BadJson {
            file: "process.json".into(),
            msg: e.to_string(),
        })?;
        p.validate()?;
        Ok(p)
    }

    /// runc's `validateProcessSpec`, plus bounds.
    pub fn validate(&self) -> Result<()> {
        if self.cwd.is_empty() {
            return Err(Error::InvalidSpec("Cwd property must not be empty".into()));
        }
        if !self.cwd.starts_with('/') {
            return Err(Error::InvalidSpec("Cwd must be an absolute path".into()));
        }
        if self.args.is_empty() {
            return Err(Error::InvalidSpec("args must not be empty".into()));
        }
        if self.args.len() > MAX_ITEMS
            || self.env.len() > MAX_ITEMS
            || self.rlimits.len() > MAX_ITEMS
            || self.user.additional_gids.len() > MAX_ITEMS
        {
            return Err(Error::InvalidSpec("process has too many entries".into()));
        }
        let strings = self.args.iter().chain(&self.env).chain([&self.cwd]);
        for s in strings {
            if s.len() > MAX_STRING || s.contains('\0') {
                return Err(Error::InvalidSpec(
                    "process strings must be shorter than 128 KiB, without NUL".into(),
                ));
            }
        }
        for r in &self.rlimits {
            if crate::rlimit::resource(&r.kind).is_none() {
                return Err(Error::InvalidSpec(format!(
                    "invalid rlimit type {:?}",
                    r.kind
                )));
            }
        }
        Ok(())
    }
}

/// An I/O error's text as Go prints it (`no such file or directory`).
pub fn os_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "no such file or directory".into(),
        Some(libc::EACCES) => "permission denied".into(),
        Some(libc::ENOTDIR) => "not a directory".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/"},"root":{"path":"rootfs"}}"#;

    #[test]
    fn a_minimal_config_parses() {
        let s = Spec::parse(MINIMAL.as_bytes()).expect("parse");
        assert_eq!(s.process().args, ["sh"]);
        assert_eq!(s.root.as_ref().map(|r| r.path.as_str()), Some("rootfs"));
        assert!(!s.process().terminal);
    }

    #[test]
    fn malformed_and_incomplete_configs_get_runcs_messages() {
        let e = Spec::parse(b"{not json").unwrap_err().to_string();
        assert!(e.starts_with("config.json: "), "{e}");
        let e = Spec::parse(br#"{"root":{"path":"r"}}"#).unwrap_err();
        assert_eq!(e.to_string(), "process property must not be empty");
        let e = Spec::parse(br#"{"process":{"args":["a"]},"root":{"path":"r"}}"#).unwrap_err();
        assert_eq!(e.to_string(), "Cwd property must not be empty");
        let e = Spec::parse(br#"{"process":{"args":["a"],"cwd":"x"},"root":{"path":"r"}}"#)
            .unwrap_err();
        assert_eq!(e.to_string(), "Cwd must be an absolute path");
        let e = Spec::parse(br#"{"process":{"cwd":"/"},"root":{"path":"r"}}"#).unwrap_err();
        assert_eq!(e.to_string(), "args must not be empty");
        let e = Spec::parse(
            br#"{"process":{"args":["a"],"cwd":"/","user":{"uid":-1}},"root":{"path":"r"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("config.json: "), "{e}");
    }

    #[test]
    fn resources_size_the_vm() {
        let s = Spec::parse(
            br#"{"process":{"args":["a"],"cwd":"/"},"root":{"path":"r"},
            "linux":{"resources":{"memory":{"limit":536870912},"cpu":{"quota":150000,"period":100000}}}}"#,
        )
        .expect("parse");
        assert_eq!(s.memory_limit(), Some(512 << 20));
        assert_eq!(s.cpu_count(), Some(2));
        let s = Spec::parse(
            br#"{"process":{"args":["a"],"cwd":"/"},"root":{"path":"r"},
            "linux":{"resources":{"memory":{"limit":-1},"cpu":{"quota":-1}}}}"#,
        )
        .expect("parse");
        assert_eq!(s.memory_limit(), None);
        assert_eq!(s.cpu_count(), None);
    }

    #[test]
    fn a_missing_rootfs_is_runcs_invalid_rootfs() {
        let s = Spec::parse(MINIMAL.as_bytes()).expect("parse");
        let e = s.rootfs(Path::new("/nonexistent-bundle")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid rootfs: stat /nonexistent-bundle/rootfs: no such file or directory"
        );
    }

    #[test]
    fn bad_rlimits_and_hostnames_are_refused() {
        let e = Spec::parse(
            br#"{"process":{"args":["a"],"cwd":"/","rlimits":[{"type":"RLIMIT_BOGUS","hard":1,"soft":1}]},"root":{"path":"r"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("RLIMIT_BOGUS"), "{e}");
        let e = Spec::parse(
            br#"{"process":{"args":["a"],"cwd":"/"},"root":{"path":"r"},"hostname":"a/b"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("hostname"), "{e}");
    }
}

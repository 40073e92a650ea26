//! A container's directory under `--root`: its saved state and the files of
//! its VM, and the container's status as the OCI specification defines it.
//!
//! `ROOT/ID/` holds `state.json` (this module's [`Saved`]), `spec.json`
//! (the bundle's configuration as `create` read it), the sockets of the
//! container's monitor (`c.sock`), of the VMM's API (`a.sock`) and vsock
//! device (`v.sock`), the VM's configuration (`vm.json`), its root disk
//! (`rootfs.img`), the VMM's console output (`vmm.log`) and one file per
//! running `exec` under `execs/`. Socket names are short because a Unix
//! socket path holds at most 107 bytes, and containerd's roots with
//! 64-character ids come close.
//!
//! The status is not only what the file says: a container whose monitor
//! process is gone (or is a zombie, or is another process that reused the
//! PID) is `stopped`, whatever the file says, as runc decides from its init
//! process.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest state file read.
const MAX_STATE_BYTES: u64 = 1 << 20;

/// The default `--root`.
pub const DEFAULT_ROOT: &str = "/run/condo/oci";

/// The OCI runtime specification version condo implements.
pub const OCI_VERSION: &str = "1.0.2";

/// A container's status (runtime specification, "State").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// How the container's process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In its own microVM, through the guest agent (always, but in tests).
    #[default]
    Vm,
    /// On the host, without isolation: only for the runtime's own tests
    /// of its command-line contract on machines that cannot boot a VM
    /// (`CONDO_OCI_TEST_BACKEND=host`).
    Host,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Saved {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// The monitor: the process the engine waits for.
    pub pid: i32,
    /// Its start time (clock ticks since boot, /proc/PID/stat field 22), so
    /// that a reused PID is not taken for the container.
    pub pid_start: u64,
    pub created: String,
    pub status: Status,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub backend: Backend,
    /// The VMM process, when one runs.
    #[serde(default)]
    pub vmm_pid: Option<i32>,
    /// cgroup directories the runtime made and removes on delete.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

impl Saved {
    /// Parses and checks a state file's bytes for container `id`.
    pub fn parse(id: &str, bytes: &[u8]) -> std::result::Result<Saved, String> {
        let s: Saved = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if s.id != id {
            return Err(format!("it names container {:?}", s.id));
        }
        if s.pid < 0 || s.vmm_pid.is_some_and(|p| p <= 0) {
            return Err("negative process id".into());
        }
        Ok(s)
    }
}

/// One container's directory.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub dir: PathBuf,
}

/// runc's container id rule: letters, digits, `_ + - .`, not `.` or `..`,
/// at most 1024 bytes here.
pub fn valid_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_owned()))
    }
}

impl Container {
    /// The directory of container `id` under `root` (which need not exist).
    pub fn new(root: &Path, id: &str) -> Result<Container> {
        valid_id(id)?;
        Ok(Container {
            id: id.to_owned(),
            dir: root.join(id),
        })
    }

    /// An existing container, or runc's `container does not exist`.
    pub fn open(root: &Path, id: &str) -> Result<Container> {
        let c = Self::new(root, id).map_err(|_| Error::NotExist)?;
        if !c.file("state.json").is_file() {
            return Err(Error::NotExist);
        }
        Ok(c)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The saved state, checked.
    pub fn load(&self) -> Result<Saved> {
        use std::io::Read;
        let path = self.file("state.json");
        let bad = |msg: String| Error::BadState {
            id: self.id.clone(),
            path: path.clone(),
            msg,
        };
        let f = std::fs::File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotExist
            } else {
                Error::path("open", &path)(e)
            }
        })?;
        let mut buf = Vec::new();
        f.take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(Error::path("read", &path))?;
        if buf.len() as u64 > MAX_STATE_BYTES {
            return Err(bad("too large".into()));
        }
        Saved::parse(&self.id, &buf).map_err(bad)
    }

    /// Writes the state atomically (a reader sees the old or the new file).
    pub fn save(&self, s: &Saved) -> Result<()> {
        let path = self.file("state.json");
        let tmp = self.file(".state.json.tmp");
        let text = serde_json::to_vec(s).map_err(|e| Error::Other(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(Error::path("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(Error::path("rename", &path))
    }

    /// Loads, changes and saves the state.
    pub fn update(&self, f: impl FnOnce(&mut Saved)) -> Result<Saved> {
        let mut s = self.load()?;
        f(&mut s);
        self.save(&s)?;
        Ok(s)
    }

    /// The container's status now (see the module doc).
    pub fn status(&self, s: &Saved) -> Status {
        if s.status == Status::Stopped || s.pid == 0 || !alive(s.pid, s.pid_start) {
            return match s.status {
                Status::Creating if s.pid == 0 => Status::Creating,
                _ => Status::Stopped,
            };
        }
        s.status
    }
}

/// Whether process `pid` exists, is not a zombie, and started at
/// `start` (clock ticks since boot).
pub fn alive(pid: i32, start: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    match proc_stat(pid) {
        Some((state, t)) => state != 'Z' && state != 'X' && (start == 0 || t == start),
        None => false,
    }
}

/// A process's state letter and start time from `/proc/PID/stat`.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let rest = stat.rsplit_once(") ")?.1;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    // Field 22 (starttime) is the 20th after the state field.
    let start = f.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The runtime specification's State object, as `state` prints it (with
/// runc's `rootfs`, `created` and `owner` fields, which engines read).
pub fn oci_state(c: &Container, s: &Saved, status: Status) -> serde_json::Value {
    let mut v = serde_json::json!({
        "ociVersion": OCI_VERSION,
        "id": c.id,
        "pid": if matches!(status, Status::Stopped) { 0 } else { s.pid },
        "status": status.to_string(),
        "bundle": s.bundle,
        "rootfs": s.rootfs,
        "created": s.created,
        "owner": "",
    });
    if !s.annotations.is_empty() {
        v["annotations"] = serde_json::json!(s.annotations);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_runcs_rule() {
        for ok in ["a", "abc-1_2.3+4", &"f".repeat(64)] {
            assert!(valid_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "../x", "é"] {
            assert!(valid_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let (_, start) = proc_stat(me).expect("stat");
        assert!(alive(me, start));
        assert!(!alive(me, start + 1));
        assert!(!alive(0, 0));
    }

    #[test]
    fn hostile_state_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("condo-oci-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let c = Container::new(&dir, "x").expect("id");
        std::fs::create_dir_all(&c.dir).expect("dir");
        for text in [
            "",
            "{",
            "[]",
            r#"{"id":"y","bundle":"/","rootfs":"/","pid":1,"pid_start":0,"created":"","status":"running"}"#,
            r#"{"id":"x","bundle":"/","rootfs":"/","pid":-5,"pid_start":0,"created":"","status":"running"}"#,
            r#"{"id":"x","bundle":"/","rootfs":"/","pid":1,"pid_start":0,"created":"","status":"exploded"}"#,
        ] {
            std::fs::write(c.file("state.json"), text).expect("write");
            let e = c.load().unwrap_err();
            assert!(
                e.to_string().starts_with("invalid state of container x"),
                "{text}: {e}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

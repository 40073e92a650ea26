//! What the host asks the agent to run: the process spec, modelled on the
//! OCI runtime spec's `process` object (same JSON field names, so the OCI
//! runtime can pass a bundle's `process` through), and the container setup
//! the OCI runtime sends once per VM (root, hostname, mounts). These are
//! plain data with their validation; carrying them out is
//! [`crate::guest`]'s job. `docs/agent.md` lists exactly which fields are
//! honoured; unknown fields are ignored (an OCI `process` carries many the
//! agent does not apply, such as `capabilities`).

use serde::{Deserialize, Serialize};

/// The `PATH` a [`Process::command`] gets: the OCI runtime's usual default.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Most supplementary groups a process may get (the kernel's NGROUPS_MAX).
pub const MAX_GROUPS: usize = 65536;

/// Largest inline file content of one mount.
pub const MAX_INLINE_FILE: usize = 64 * 1024;

/// Largest inline file content of all mounts of a setup together.
pub const MAX_INLINE_TOTAL: usize = 256 * 1024;

/// Most mounts in one setup.
pub const MAX_MOUNTS: usize = 128;

/// Longest hostname (the kernel's HOST_NAME_MAX).
pub const MAX_HOSTNAME: usize = 64;

/// A spec the agent cannot carry out as written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("args is empty")]
    NoArgs,
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("env entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    #[error("{what} {path:?} is not an absolute path")]
    NotAbsolute { what: &'static str, path: String },
    #[error("mount destination {0:?} contains `..`")]
    DotDot(String),
    #[error("unknown rlimit type {0:?}")]
    UnknownRlimit(String),
    #[error("rlimit {kind}: soft limit {soft} is above the hard limit {hard}")]
    RlimitOrder { kind: String, soft: u64, hard: u64 },
    #[error("umask {0:#o} has bits outside 0777")]
    BadUmask(u32),
    #[error("{0} additional gids, more than the kernel's limit of {MAX_GROUPS}")]
    TooManyGroups(usize),
    #[error("hostname {0:?} is empty or longer than {MAX_HOSTNAME} bytes")]
    BadHostname(String),
    #[error("{0} mounts, more than the limit of {MAX_MOUNTS}")]
    TooManyMounts(usize),
    #[error("inline content of {dest} is {len} bytes, more than the limit of {MAX_INLINE_FILE}")]
    FileTooLarge { dest: String, len: usize },
    #[error("inline contents total {0} bytes, more than the limit of {MAX_INLINE_TOTAL}")]
    FilesTooLarge(usize),
    #[error("mount {0}: inline content needs a bind mount (type \"bind\" or option \"bind\")")]
    ContentNotBind(String),
    #[error("mount {0}: needs a type, or a bind option with a source or content")]
    NoMountType(String),
}

/// A process to run: the OCI `process` object's fields that apply inside a
/// VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Run on a new pty (stdin, stdout and stderr all on it; output comes
    /// back as stdout only).
    #[serde(default)]
    pub terminal: bool,
    /// The pty's initial size (`terminal` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_size: Option<ConsoleSize>,
    #[serde(default)]
    pub user: User,
    /// The program (looked up in the process's `PATH` if it has no `/`)
    /// and its arguments.
    pub args: Vec<String>,
    /// Exactly the environment the process gets, `KEY=VALUE` each.
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute; `/` if empty.
    #[serde(default)]
    pub cwd: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
}

/// The OCI `consoleSize` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSize {
    pub height: u16,
    pub width: u16,
}

/// The OCI `user` object (numeric ids only, as a Linux bundle has them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
}

/// The OCI `rlimits` entry: `type` is a name such as `RLIMIT_NOFILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

/// The Linux resource numbers of the OCI rlimit names.
const RLIMITS: [(&str, u32); 16] = [
    ("RLIMIT_CPU", 0),
    ("RLIMIT_FSIZE", 1),
    ("RLIMIT_DATA", 2),
    ("RLIMIT_STACK", 3),
    ("RLIMIT_CORE", 4),
    ("RLIMIT_RSS", 5),
    ("RLIMIT_NPROC", 6),
    ("RLIMIT_NOFILE", 7),
    ("RLIMIT_MEMLOCK", 8),
    ("RLIMIT_AS", 9),
    ("RLIMIT_LOCKS", 10),
    ("RLIMIT_SIGPENDING", 11),
    ("RLIMIT_MSGQUEUE", 12),
    ("RLIMIT_NICE", 13),
    ("RLIMIT_RTPRIO", 14),
    ("RLIMIT_RTTIME", 15),
];

impl Rlimit {
    /// The Linux resource number of this limit's type.
    pub fn resource(&self) -> Result<u32, SpecError> {
        RLIMITS
            .iter()
            .find(|(n, _)| *n == self.kind)
            .map(|(_, r)| *r)
            .ok_or_else(|| SpecError::UnknownRlimit(self.kind.clone()))
    }
}

fn no_nul(what: &'static str, s: &str) -> Result<(), SpecError> {
    if s.contains('\0') {
        Err(SpecError::Nul { what })
    } else {
        Ok(())
    }
}

fn absolute(what: &'static str, path: &str) -> Result<(), SpecError> {
    no_nul(what, path)?;
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(SpecError::NotAbsolute {
            what,
            path: path.to_owned(),
        })
    }
}

impl Process {
    /// A process running `args` as root in `/`, with the default `PATH`
    /// and nothing else in its environment.
    pub fn command<I, S>(args: I) -> Process
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Process {
            args: args.into_iter().map(Into::into).collect(),
            env: vec![DEFAULT_PATH.to_owned()],
            cwd: "/".to_owned(),
            ..Process::default()
        }
    }

    /// Runs the process on a pty of `rows` x `cols` (with `TERM=xterm` added
    /// unless the environment has a `TERM`).
    pub fn with_terminal(mut self, rows: u16, cols: u16) -> Process {
        self.terminal = true;
        self.console_size = Some(ConsoleSize {
            height: rows,
            width: cols,
        });
        if !self.env.iter().any(|e| e.starts_with("TERM=")) {
            self.env.push("TERM=xterm".to_owned());
        }
        self
    }

    /// The working directory, `/` when none is given.
    pub fn cwd_or_root(&self) -> &str {
        if self.cwd.is_empty() {
            "/"
        } else {
            &self.cwd
        }
    }

    /// Checks everything that can be checked without running it.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.args.is_empty() {
            return Err(SpecError::NoArgs);
        }
        for a in &self.args {
            no_nul("an argument", a)?;
        }
        for e in &self.env {
            no_nul("an env entry", e)?;
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() => {}
                _ => return Err(SpecError::BadEnv(e.clone())),
            }
        }
        absolute("cwd", self.cwd_or_root())?;
        for r in &self.rlimits {
            r.resource()?;
            if r.soft > r.hard {
                return Err(SpecError::RlimitOrder {
                    kind: r.kind.clone(),
                    soft: r.soft,
                    hard: r.hard,
                });
            }
        }
        if let Some(m) = self.user.umask {
            if m > 0o777 {
                return Err(SpecError::BadUmask(m));
            }
        }
        if self.user.additional_gids.len() > MAX_GROUPS {
            return Err(SpecError::TooManyGroups(self.user.additional_gids.len()));
        }
        Ok(())
    }
}

/// The container a VM runs, set up once by the agent before the container's
/// processes: every later process runs inside its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSetup {
    pub root: Root,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Mounted in order, each inside the new root.
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

/// The container's root filesystem: a block device of the guest (such as
/// `/dev/vda`) or a directory of the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
    /// The block device's filesystem type; `ext4` if not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
}

/// An OCI `mounts` entry, plus `content`: the text of a file to bind-mount
/// at `destination` (such as `/etc/hosts`), for files the host has and the
/// guest does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A guest path for bind mounts, a device or a name otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl Mount {
    /// Whether this is a bind mount (type `bind`, or a `bind`/`rbind`
    /// option, as runc reads it).
    pub fn is_bind(&self) -> bool {
        self.kind.as_deref() == Some("bind")
            || self.options.iter().any(|o| o == "bind" || o == "rbind")
    }
}

/// What a setup could not do without failing: mounts of filesystems the
/// guest kernel does not have (such as `mqueue` or `cgroup`), by
/// destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupReport {
    #[serde(default)]
    pub skipped: Vec<String>,
}

impl ContainerSetup {
    /// Checks everything that can be checked without touching the guest.
    pub fn validate(&self) -> Result<(), SpecError> {
        absolute("root path", &self.root.path)?;
        if let Some(t) = &self.root.fstype {
            no_nul("the root fstype", t)?;
        }
        if let Some(h) = &self.hostname {
            no_nul("hostname", h)?;
            if h.is_empty() || h.len() > MAX_HOSTNAME {
                return Err(SpecError::BadHostname(h.clone()));
            }
        }
        if self.mounts.len() > MAX_MOUNTS {
            return Err(SpecError::TooManyMounts(self.mounts.len()));
        }
        let mut total = 0usize;
        for m in &self.mounts {
            absolute("mount destination", &m.destination)?;
            if m.destination.split('/').any(|c| c == "..") {
                return Err(SpecError::DotDot(m.destination.clone()));
            }
            if let Some(k) = &m.kind {
                no_nul("a mount type", k)?;
            }
            if let Some(s) = &m.source {
                no_nul("a mount source", s)?;
            }
            for o in &m.options {
                no_nul("a mount option", o)?;
            }
            if let Some(c) = &m.content {
                if !m.is_bind() {
                    return Err(SpecError::ContentNotBind(m.destination.clone()));
                }
                if c.len() > MAX_INLINE_FILE {
                    return Err(SpecError::FileTooLarge {
                        dest: m.destination.clone(),
                        len: c.len(),
                    });
                }
                total += c.len();
            }
            if m.kind.is_none() && !(m.is_bind() && (m.source.is_some() || m.content.is_some())) {
                return Err(SpecError::NoMountType(m.destination.clone()));
            }
        }
        if total > MAX_INLINE_TOTAL {
            return Err(SpecError::FilesTooLarge(total));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oci_process_object_parses_and_extra_fields_are_ignored() {
        let json = r#"{
            "terminal": true,
            "consoleSize": {"height": 25, "width": 80},
            "user": {"uid": 1, "gid": 2, "umask": 18, "additionalGids": [5, 6]},
            "args": ["sh"],
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
            "oomScoreAdj": 0
        }"#;
        let p: Process = serde_json::from_str(json).expect("parse");
        assert!(p.terminal && p.no_new_privileges);
        assert_eq!(p.console_size.map(|c| (c.height, c.width)), Some((25, 80)));
        assert_eq!(p.user.additional_gids, [5, 6]);
        assert_eq!(p.user.umask, Some(0o22));
        assert_eq!(p.rlimits[0].resource(), Ok(7));
        p.validate().expect("valid");
    }

    #[test]
    fn process_validation_names_the_problem() {
        let ok = Process::command(["true"]);
        ok.validate().expect("valid");
        let bad = |f: &dyn Fn(&mut Process)| {
            let mut p = ok.clone();
            f(&mut p);
            p.validate().expect_err("invalid")
        };
        assert_eq!(bad(&|p| p.args.clear()), SpecError::NoArgs);
        assert!(matches!(
            bad(&|p| p.args.push("a\0b".into())),
            SpecError::Nul { .. }
        ));
        assert!(matches!(
            bad(&|p| p.env.push("NOEQUALS".into())),
            SpecError::BadEnv(_)
        ));
        assert!(matches!(
            bad(&|p| p.env.push("=x".into())),
            SpecError::BadEnv(_)
        ));
        assert!(matches!(
            bad(&|p| p.cwd = "tmp".into()),
            SpecError::NotAbsolute { .. }
        ));
        assert!(matches!(
            bad(&|p| p.rlimits.push(Rlimit {
                kind: "RLIMIT_FOO".into(),
                soft: 0,
                hard: 0
            })),
            SpecError::UnknownRlimit(_)
        ));
        assert!(matches!(
            bad(&|p| p.rlimits.push(Rlimit {
                kind: "RLIMIT_CORE".into(),
                soft: 2,
                hard: 1
            })),
            SpecError::RlimitOrder { .. }
        ));
        assert_eq!(
            bad(&|p| p.user.umask = Some(0o1000)),
            SpecError::BadUmask(0o1000)
        );
        let mut p = ok.clone();
        p.cwd.clear();
        assert_eq!(p.cwd_or_root(), "/");
        p.validate().expect("an empty cwd is /");
    }

    #[test]
    fn with_terminal_sets_the_size_and_a_term() {
        let p = Process::command(["sh"]).with_terminal(30, 100);
        assert!(p.terminal);
        assert_eq!(
            p.console_size,
            Some(ConsoleSize {
                height: 30,
                width: 100
            })
        );
        assert!(p.env.contains(&"TERM=xterm".to_owned()));
    }

    fn setup() -> ContainerSetup {
        ContainerSetup {
            root: Root {
                path: "/dev/vda".into(),
                readonly: false,
                fstype: None,
            },
            hostname: Some("c1".into()),
            mounts: vec![
                Mount {
                    destination: "/proc".into(),
                    kind: Some("proc".into()),
                    source: Some("proc".into()),
                    options: vec![],
                    content: None,
                },
                Mount {
                    destination: "/etc/hosts".into(),
                    kind: None,
                    source: None,
                    options: vec!["bind".into(), "ro".into()],
                    content: Some("127.0.0.1 localhost\n".into()),
                },
            ],
        }
    }

    #[test]
    fn setup_validation_names_the_problem() {
        setup().validate().expect("valid");
        let bad = |f: &dyn Fn(&mut ContainerSetup)| {
            let mut s = setup();
            f(&mut s);
            s.validate().expect_err("invalid")
        };
        assert!(matches!(
            bad(&|s| s.root.path = "vda".into()),
            SpecError::NotAbsolute { .. }
        ));
        assert!(matches!(
            bad(&|s| s.hostname = Some(String::new())),
            SpecError::BadHostname(_)
        ));
        assert!(matches!(
            bad(&|s| s.hostname = Some("h".repeat(65))),
            SpecError::BadHostname(_)
        ));
        assert!(matches!(
            bad(&|s| s.mounts[0].destination = "/a/../b".into()),
            SpecError::DotDot(_)
        ));
        assert!(matches!(
            bad(&|s| s.mounts[0].destination = "proc".into()),
            SpecError::NotAbsolute { .. }
        ));
        assert!(matches!(
            bad(&|s| s.mounts[0].content = Some("x".into())),
            SpecError::ContentNotBind(_)
        ));
        assert!(matches!(
            bad(&|s| s.mounts[1].content = Some("x".repeat(MAX_INLINE_FILE + 1))),
            SpecError::FileTooLarge { .. }
        ));
        assert!(matches!(
            bad(&|s| {
                let m = s.mounts[1].clone();
                for _ in 0..5 {
                    let mut m = m.clone();
                    m.content = Some("x".repeat(MAX_INLINE_FILE));
                    s.mounts.push(m);
                }
            }),
            SpecError::FilesTooLarge(_)
        ));
        assert!(matches!(
            bad(&|s| s.mounts[0].kind = None),
            SpecError::NoMountType(_)
        ));
        assert!(matches!(
            bad(&|s| s.mounts[0].options.push("a\0".into())),
            SpecError::Nul { .. }
        ));
    }
}

//! The runtime's errors and how they are reported.
//!
//! Every failure is one line. Where runc has a message for the same
//! situation, the text is runc's (1.1), because engines and the people
//! reading their logs know it: `container does not exist`, `container not
//! running`, `cannot delete container ID that is not stopped: running`,
//! `invalid rootfs: ...`. The line goes to standard error as
//! `condo: error: MSG`, and also to the `--log` file, as a JSON object with
//! `--log-format json` (which containerd's runc shim reads back), as a text
//! line otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};

/// What went wrong; `Display` is the one line a user sees.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container does not exist")]
    NotExist,
    #[error("container with given ID already exists")]
    Exists,
    #[error("invalid container ID format: {0:?}")]
    InvalidId(String),
    #[error("container not running")]
    NotRunning,
    #[error("container not paused")]
    NotPaused,
    #[error("container paused")]
    Paused,
    #[error("cannot start a container that has stopped")]
    StartStopped,
    #[error("cannot start an already running container")]
    StartRunning,
    #[error("cannot start a container in the {0} state")]
    StartState(String),
    #[error("cannot delete container {id} that is not stopped: {status}")]
    DeleteNotStopped { id: String, status: String },
    #[error("cannot exec in a stopped container")]
    ExecStopped,
    #[error("JSON specification file {0} not found")]
    SpecNotFound(String),
    #[error("{file}: {msg}")]
    BadJson { file: String, msg: String },
    #[error("invalid rootfs: {0}")]
    InvalidRootfs(String),
    #[error("{0}")]
    InvalidSpec(String),
    #[error("unknown signal {0:?}")]
    UnknownSignal(String),
    #[error("cannot allocate tty if runc will detach without setting console socket")]
    TtyWithoutSocket,
    #[error("cannot use console socket if runc will not detach or allocate tty")]
    SocketWithoutTty,
    #[error("invalid state of container {id} in {path}: {msg}")]
    BadState {
        id: String,
        path: PathBuf,
        msg: String,
    },
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    #[error("{0}")]
    Guest(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Other(String),
}

/// Shorthand for the crate's results.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |err| Error::Io { what, err }
    }

    /// An I/O error about a path.
    pub fn path(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> Error {
        Self::io(format!("{what} {}", p.display()))
    }
}

/// How the `--log` file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `time="..." level=error msg="..."`, as runc's text format.
    Text,
    /// `{"level":"error","msg":"...","time":"..."}`, one object a line.
    Json,
}

/// Where the runtime's messages go besides standard error.
#[derive(Debug, Clone)]
pub struct Logger {
    pub file: Option<PathBuf>,
    pub format: LogFormat,
}

impl Logger {
    /// Writes one message at `level` to the log file, if there is one.
    pub fn log(&self, level: &str, msg: &str) {
        let Some(path) = &self.file else { return };
        let time = crate::time::rfc3339_now();
        let line = match self.format {
            LogFormat::Json => {
                serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
            }
            LogFormat::Text => format!("time={time:?} level={level} msg={msg:?}"),
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Reports a failure: one line on standard error and in the log.
    pub fn error(&self, e: &Error) {
        let msg = e.to_string();
        // One line, whatever a nested error carried.
        let msg = msg.replace('\n', " ");
        self.log("error", &msg);
        eprintln!("condo: error: {msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_log_lines_are_what_the_runc_shim_reads() {
        let dir = std::env::temp_dir().join(format!("condo-oci-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("log.json");
        let l = Logger {
            file: Some(file.clone()),
            format: LogFormat::Json,
        };
        l.log("error", "container does not exist");
        let text = std::fs::read_to_string(&file).expect("log");
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container does not exist");
        assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The host manager's errors. Each carries what a user needs to act on it,
//! and maps to one HTTP status: a bad request (400), something missing
//! (404), a guest in the wrong state (409), the state directory's disk full
//! (507), and the rest (500).

use std::io;

/// A request or specification that is not acceptable: a 400 with this
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// What went wrong in the daemon or the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The state directory's filesystem is full.
    #[error("{0}")]
    Full(String),
    #[error("database: {0}")]
    Db(String),
    #[error("{what}: {err}")]
    Io { what: String, err: io::Error },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error with what was being done; a full disk becomes `Full`.
    pub fn io(what: impl Into<String>, err: io::Error) -> Self {
        let what = what.into();
        if err.raw_os_error() == Some(libc::ENOSPC) || err.raw_os_error() == Some(libc::EDQUOT) {
            Self::Full(format!(
                "{what}: {err} (the state directory's disk is full)"
            ))
        } else {
            Self::Io { what, err }
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::Full(_) => 507,
            _ => 500,
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(Invalid(msg.into()))
    }

    /// The error a daemon's non-2xx answer stands for: the message of its
    /// `{"error": ...}` body (or the body itself), kind by status. A peer
    /// daemon's 401 and 403 (a key it refused) are the request's fault.
    pub fn from_answer(status: u16, body: String) -> Self {
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        match status {
            400 | 401 | 403 => Self::invalid(msg),
            404 => Self::NotFound(msg),
            409 => Self::Conflict(msg),
            507 => Self::Full(msg),
            _ => Self::Other(msg),
        }
    }
}

/// Closure form of [`Error::io`] for `map_err`.
pub fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if f.code == rusqlite::ErrorCode::DiskFull {
                return Self::Full(format!(
                    "database: {e} (the state directory's disk is full; nothing was changed)"
                ));
            }
        }
        Self::Db(e.to_string())
    }
}

//! The daemon's client, as the CLI uses it: one request per connection on
//! the daemon's socket; a non-2xx answer becomes an error carrying the
//! daemon's message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::http;

/// Deadline of one request (a clone of many guests or a stop with a long
/// timeout take long).
const TIMEOUT: Duration = Duration::from_secs(3600);

/// A connection point to the daemon.
#[derive(Debug, Clone)]
pub struct Client {
    pub socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    /// A request; the body of a 2xx answer, or the daemon's error.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<String> {
        let r = http::request(&self.socket, method, path, body, TIMEOUT).map_err(|e| match e {
            http::ClientError::Connect { path, err } => Error::Other(format!(
                "cannot reach the condo daemon at {path}: {err} (is `condo daemon` running? --socket or CONDO_SOCKET name another)"
            )),
            e => Error::Other(format!("daemon: {e}")),
        })?;
        if (200..300).contains(&r.status) {
            return Ok(r.body);
        }
        Err(Error::from_answer(r.status, r.body))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let b = self.call("GET", path, None)?;
        serde_json::from_str(&b).map_err(|e| Error::Other(format!("daemon answered {path}: {e}")))
    }

    pub fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let b = serde_json::to_string(body).map_err(|e| Error::Other(e.to_string()))?;
        let r = self.call(method, path, Some(&b))?;
        serde_json::from_str(&r).map_err(|e| Error::Other(format!("daemon answered {path}: {e}")))
    }
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

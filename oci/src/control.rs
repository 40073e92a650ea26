//! The monitor's control socket (`ROOT/ID/c.sock`): how `start`, `kill`,
//! `pause` and `resume` reach the process that owns the container. One
//! JSON request per connection, one JSON answer; both bounded, both
//! checked.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest request or answer.
const MAX_MESSAGE: u64 = 4096;

/// What a command asks of the monitor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Start,
    Kill { signal: i32, all: bool },
    Pause,
    Resume,
}

#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    #[serde(default)]
    error: Option<String>,
}

fn read_line(s: &UnixStream) -> std::io::Result<String> {
    let mut line = String::new();
    BufReader::new(s.take(MAX_MESSAGE)).read_line(&mut line)?;
    Ok(line)
}

/// Sends `req` to the monitor listening on `sock`; its error, if it gave
/// one, becomes this command's.
pub fn call(sock: &Path, req: &Request, timeout: Duration) -> Result<()> {
    let s = UnixStream::connect(sock).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => Error::NotRunning,
        _ => Error::path("connect to", sock)(e),
    })?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let mut text = serde_json::to_string(req).map_err(|e| Error::Other(e.to_string()))?;
    text.push('\n');
    (&s).write_all(text.as_bytes())
        .map_err(Error::path("write to", sock))?;
    let line = read_line(&s).map_err(Error::path("read from", sock))?;
    if line.is_empty() {
        return Err(Error::Other(
            "the container's monitor closed the connection without answering".into(),
        ));
    }
    let a: Answer = serde_json::from_str(&line)
        .map_err(|e| Error::Other(format!("bad answer from the container's monitor: {e}")))?;
    match a.error {
        Some(e) => Err(Error::Other(e)),
        None => Ok(()),
    }
}

/// Serves requests on `l` forever (on the calling thread), one connection
/// at a time: `handle` answers each.
pub fn serve(l: UnixListener, handle: impl Fn(Request) -> Result<()>) {
    for conn in l.incoming() {
        let Ok(s) = conn else { continue };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let answer = match read_line(&s) {
            Ok(line) => match serde_json::from_str::<Request>(&line) {
                Ok(req) => handle(req).err().map(|e| e.to_string()),
                Err(e) => Some(format!("bad request: {e}")),
            },
            Err(e) => Some(format!("bad request: {e}")),
        };
        let mut text =
            serde_json::to_string(&Answer { error: answer }).unwrap_or_else(|_| "{}".to_owned());
        text.push('\n');
        let _ = (&s).write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_errors_cross_the_socket() {
        let dir = std::env::temp_dir().join(format!("condo-oci-ctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let sock = dir.join("c.sock");
        let l = UnixListener::bind(&sock).expect("bind");
        std::thread::spawn(move || {
            serve(l, |r| match r {
                Request::Kill { signal: 9, .. } => Ok(()),
                _ => Err(Error::NotRunning),
            })
        });
        let t = Duration::from_secs(5);
        call(
            &sock,
            &Request::Kill {
                signal: 9,
                all: false,
            },
            t,
        )
        .expect("kill");
        let e = call(&sock, &Request::Start, t).unwrap_err();
        assert_eq!(e.to_string(), "container not running");
        // A hostile client gets an answer, not a stuck monitor.
        let mut s = UnixStream::connect(&sock).expect("connect");
        s.write_all(b"{\"op\":\"explode\"}\n").expect("write");
        let line = read_line(&s).expect("answer");
        assert!(line.contains("bad request"), "{line}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

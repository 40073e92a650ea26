//! Logging through `tracing`, with the level and destination changeable
//! while the VMM runs (Firecracker's `PUT /logger`).

use devices::sync::lock;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use tracing::Level;

/// 0 off, 1 error, 2 warn, 3 info, 4 debug, 5 trace.
static LEVEL: AtomicU8 = AtomicU8::new(2);
static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// A log level condo does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log level {0:?} (off, error, warn, info, debug, trace)")]
pub struct LevelError(String);

/// Parses a level: condo's names (off, error, warn, info, debug, trace) or
/// Firecracker's (Off, Error, Warning, Info, Debug, Trace).
pub fn parse_level(s: &str) -> Result<u8, LevelError> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "off" => 0,
        "error" => 1,
        "warn" | "warning" => 2,
        "info" => 3,
        "debug" => 4,
        "trace" => 5,
        other => return Err(LevelError(other.to_owned())),
    })
}

fn rank(l: &Level) -> u8 {
    match *l {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Installs the process's logger at `level`, writing to stderr.
pub fn init(level: &str) -> Result<(), LevelError> {
    use tracing_subscriber::prelude::*;
    set_level(level)?;
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(|| LogOut)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            rank(m.level()) <= LEVEL.load(Ordering::Relaxed)
        }));
    tracing_subscriber::registry().with(layer).init();
    Ok(())
}

/// Changes the level.
pub fn set_level(level: &str) -> Result<(), LevelError> {
    LEVEL.store(parse_level(level)?, Ordering::Relaxed);
    // Call sites already seen were judged at the old level.
    tracing::callsite::rebuild_interest_cache();
    Ok(())
}

/// Sends logs to `path` (appended; a file or a named pipe) instead of
/// stderr.
pub fn set_path(path: &std::path::Path) -> std::io::Result<()> {
    let f = open_append(path)?;
    *lock(&FILE) = Some(f);
    Ok(())
}

/// Opens a file (created if missing) or a named pipe for appending lines.
pub fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
}

/// Where log lines go: the log file if set, else stderr.
struct LogOut;

impl Write for LogOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match lock(&FILE).as_mut() {
            Some(f) => f.write(buf),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match lock(&FILE).as_mut() {
            Some(f) => f.flush(),
            None => std::io::stderr().flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(parse_level("Warning"), Ok(2));
        assert_eq!(parse_level("TRACE"), Ok(5));
        assert!(parse_level("loud").is_err());
    }
}

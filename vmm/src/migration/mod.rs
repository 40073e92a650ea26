//! Live migration: a running guest moves to another VMM (on this host or
//! another) while it runs, with a pause the guest barely notices.
//!
//! Pre-copy, as QEMU and Cloud Hypervisor do it: the source sends every
//! page the guest ever touched while it runs, then passes of the pages it
//! dirtied meanwhile (KVM's dirty log, and vm-memory's bitmap for what the
//! devices wrote), until the last pass would fit the allowed downtime at
//! the measured rate; a guest that dirties faster than the link carries has
//! its vCPUs throttled (auto-converge). Then the source pauses the guest,
//! sends the last pages and the machine state (the typed
//! [`MicrovmState`](crate::snapshot::MicrovmState) a snapshot holds), hands
//! over its TAPs and vsock socket, and the destination rebuilds the VM and
//! runs it. The source keeps the guest until the destination says it runs
//! it: any failure before that (a refused state, a dead destination, a cut
//! link, the timeout) leaves the guest running on the source, with one log
//! line. [`protocol`] is the stream; [`send`] and [`receive`] its two ends.

pub mod protocol;
pub mod receive;
pub mod send;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::Deserialize;

pub use protocol::MigrationError;

/// `PUT /migration/send`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMigration {
    /// `tcp:HOST:PORT` or `unix:PATH`.
    pub destination_url: String,
    /// The pause the guest may see, in milliseconds (default 300).
    #[serde(default = "default_downtime")]
    pub downtime_ms: u64,
    /// Give up (the guest stays here) after this many seconds (default 3600).
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Send at most this many MiB per second (default: as fast as it goes).
    #[serde(default)]
    pub bandwidth_mib_s: Option<u64>,
}

/// `PUT /migration/receive`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveMigration {
    /// `tcp:ADDRESS:PORT` or `unix:PATH` to listen on.
    pub receiver_url: String,
}

fn default_downtime() -> u64 {
    300
}

fn default_timeout() -> u64 {
    3600
}

/// Where a migration stream goes: `tcp:HOST:PORT` or `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Url {
    Tcp(String),
    Unix(std::path::PathBuf),
}

impl std::str::FromStr for Url {
    type Err = MigrationError;

    fn from_str(s: &str) -> Result<Self, MigrationError> {
        match s.split_once(':') {
            Some(("tcp", a))
                if a.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
            {
                Ok(Url::Tcp(a.to_owned()))
            }
            Some(("unix", p)) if !p.is_empty() => Ok(Url::Unix(p.into())),
            _ => Err(MigrationError::Url(s.to_owned())),
        }
    }
}

/// A connected migration stream.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Bounds how long a read may wait.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    /// Bounds how long a write may wait.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl std::os::fd::AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl vm_memory::ReadVolatile for Stream {
    fn read_volatile<B: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        buf: &mut vm_memory::VolatileSlice<B>,
    ) -> Result<usize, vm_memory::volatile_memory::Error> {
        match self {
            Stream::Tcp(s) => s.read_volatile(buf),
            Stream::Unix(s) => s.read_volatile(buf),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            "tcp:10.0.0.2:6000".parse::<Url>().unwrap(),
            Url::Tcp("10.0.0.2:6000".into())
        );
        assert_eq!(
            "tcp:[::1]:6000".parse::<Url>().unwrap(),
            Url::Tcp("[::1]:6000".into())
        );
        assert_eq!(
            "unix:/run/m.sock".parse::<Url>().unwrap(),
            Url::Unix("/run/m.sock".into())
        );
        for bad in [
            "",
            "tcp:",
            "tcp:host",
            "tcp::6000",
            "tcp:h:99999",
            "unix:",
            "http://x",
        ] {
            assert!(bad.parse::<Url>().is_err(), "{bad}");
        }
    }
}

//! How daemons reach each other for live migration, and how `condo plan
//! --apply` reaches them: a peer address (`unix:PATH`, the other daemon's
//! API socket on this host or one forwarded to it, or `tcp:HOST:PORT`,
//! its `--peer-listen` port), a connection over either, the cluster key
//! that authenticates requests on the TCP port, a client, and the relay
//! that carries a migration stream between two connections.
//!
//! The key is a shared secret (`--peer-key-file`, the same file on every
//! host of a cluster), sent as `Authorization: Bearer KEY` and compared in
//! constant time. Nothing is encrypted: the key and the guest's memory
//! cross the network in clear, as with QEMU's and Cloud Hypervisor's TCP
//! migration, so the peer port belongs on a trusted network (a private
//! VLAN, or a WireGuard or SSH tunnel). See docs/host.md.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Invalid, Result};
use crate::http;

/// Longest peer address accepted.
const MAX_ADDR: usize = 256;
/// Shortest and longest cluster key.
const KEY_LEN: std::ops::RangeInclusive<usize> = 16..=4096;

/// Where another daemon is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    /// Its API socket (`unix:/run/condo/condo.sock`, or just the path).
    Unix(PathBuf),
    /// Its peer port (`tcp:HOST:PORT`, or `HOST:PORT`).
    Tcp(String),
}

impl PeerAddr {
    /// Parses `unix:PATH`, an absolute path, `tcp:HOST:PORT` or
    /// `HOST:PORT` (an IPv6 host in brackets).
    pub fn parse(s: &str) -> std::result::Result<Self, Invalid> {
        let bad = |why: &str| {
            Invalid(format!(
                "daemon address {:?}: {why} (unix:/path/to/condo.sock or tcp:HOST:PORT)",
                s.chars().take(64).collect::<String>()
            ))
        };
        if s.is_empty() || s.len() > MAX_ADDR {
            return Err(bad("empty or too long"));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("spaces or control characters"));
        }
        if let Some(p) = s
            .strip_prefix("unix:")
            .or_else(|| s.starts_with('/').then_some(s))
        {
            if !p.starts_with('/') {
                return Err(bad("a Unix socket path must be absolute"));
            }
            return Ok(Self::Unix(PathBuf::from(p)));
        }
        let hp = s.strip_prefix("tcp:").unwrap_or(s);
        let (host, port) = hp.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let ok_host = if let Some(h) = host.strip_prefix('[') {
            h.strip_suffix(']')
                .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        };
        if !ok_host {
            return Err(bad("bad host"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(Self::Tcp(hp.to_owned())),
            _ => Err(bad("bad port")),
        }
    }

    /// Connects, with a deadline for the connection and each read and
    /// write.
    pub fn connect(&self, timeout: Duration) -> std::io::Result<Conn> {
        let c = match self {
            Self::Unix(p) => Conn::Unix(UnixStream::connect(p)?),
            Self::Tcp(hp) => {
                let mut last = None;
                let mut found = None;
                for a in hp.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = found
                    .ok_or_else(|| last.unwrap_or_else(|| std::io::Error::other("no address")))?;
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }
        };
        c.set_timeouts(Some(timeout))?;
        Ok(c)
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(hp) => write!(f, "tcp:{hp}"),
        }
    }
}

/// A connection to a peer, or from one.
#[derive(Debug)]
pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(match self {
            Self::Unix(s) => Self::Unix(s.try_clone()?),
            Self::Tcp(s) => Self::Tcp(s.try_clone()?),
        })
    }

    pub fn shutdown(&self) {
        let _ = match self {
            Self::Unix(s) => s.shutdown(Shutdown::Both),
            Self::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }

    /// Sets the read and write deadlines (None: wait for ever).
    pub fn set_timeouts(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Self::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Self::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Unix(s) => s.flush(),
            Self::Tcp(s) => s.flush(),
        }
    }
}

/// The cluster key.
#[derive(Clone)]
pub struct PeerKey(String);

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerKey(..)")
    }
}

impl PeerKey {
    /// Reads the key file: owner-only (0600 or stricter), 16 to 4096
    /// printable characters without spaces (surrounding whitespace
    /// ignored). `openssl rand -hex 32 > key` makes one.
    pub fn load(path: &Path) -> Result<Self> {
        let what = || format!("peer key file {}", path.display());
        let md = std::fs::metadata(path).map_err(|e| Error::invalid(format!("{}: {e}", what())))?;
        if md.permissions().mode() & 0o077 != 0 {
            return Err(Error::invalid(format!(
                "{}: readable by group or others (chmod 600 it)",
                what()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(format!("{}: {e}", what())))?;
        Self::parse(text.trim()).map_err(|e| Error::invalid(format!("{}: {e}", what())))
    }

    pub fn parse(s: &str) -> std::result::Result<Self, Invalid> {
        if !KEY_LEN.contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Invalid(format!(
                "the key must be {} to {} printable characters without spaces",
                KEY_LEN.start(),
                KEY_LEN.end()
            )));
        }
        Ok(Self(s.to_owned()))
    }

    /// The `Authorization` header's value.
    pub fn header(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether a request's `Authorization` header carries this key
    /// (constant time in the key's length).
    pub fn verify(&self, header: Option<&str>) -> bool {
        let Some(got) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let (a, b) = (got.as_bytes(), self.0.as_bytes());
        let mut diff = u8::from(a.len() != b.len());
        for (i, &x) in b.iter().enumerate() {
            diff |= x ^ a.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

/// A client of another daemon (or of one named in an inventory).
#[derive(Debug, Clone)]
pub struct PeerClient {
    pub addr: PeerAddr,
    key: Option<PeerKey>,
}

/// The deadline of a request that is not a migration.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

impl PeerClient {
    /// A client; the key goes with requests on TCP (a Unix socket's
    /// permissions are its access control).
    pub fn new(addr: PeerAddr, key: Option<PeerKey>) -> Self {
        Self { addr, key }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        match (&self.addr, &self.key) {
            (PeerAddr::Tcp(_), Some(k)) => vec![("Authorization", k.header())],
            _ => Vec::new(),
        }
    }

    fn connect(&self, timeout: Duration) -> Result<Conn> {
        self.addr.connect(timeout).map_err(|e| {
            Error::Other(format!(
                "cannot reach the condo daemon at {}: {e}",
                self.addr
            ))
        })
    }

    /// One request; the body of a 2xx answer, or the peer's error (its
    /// status kept: a 4xx is a refusal).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        timeout: Duration,
    ) -> Result<String> {
        let mut c = self.connect(timeout)?;
        let h = self.headers();
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = http::request_on(&mut c, method, path, body, &h)
            .map_err(|e| Error::Other(format!("daemon at {}: {e}", self.addr)))?;
        if (200..300).contains(&r.status) {
            return Ok(r.body);
        }
        Err(Error::from_answer(r.status, r.body))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let b = self.call("GET", path, None, REQUEST_TIMEOUT)?;
        serde_json::from_str(&b)
            .map_err(|e| Error::Other(format!("daemon at {} answered {path}: {e}", self.addr)))
    }

    pub fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T> {
        let b = serde_json::to_string(body).map_err(|e| Error::Other(e.to_string()))?;
        let r = self.call(method, path, Some(&b), timeout)?;
        serde_json::from_str(&r)
            .map_err(|e| Error::Other(format!("daemon at {} answered {path}: {e}", self.addr)))
    }

    /// `GET path` with `Upgrade: migration`: after the 101, the
    /// connection is the stream. Returns it with any bytes that came
    /// after the response head.
    pub fn open_stream(&self, path: &str) -> Result<(Conn, Vec<u8>)> {
        let mut c = self.connect(REQUEST_TIMEOUT)?;
        let h = self.headers();
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http::write_request_with(&mut c, "GET", path, None, Some("migration"), &h)
            .map_err(|e| Error::Other(format!("daemon at {}: {e}", self.addr)))?;
        let mut r = BufReader::new(c);
        let (status, len) = http::read_response_head(&mut r)
            .map_err(|e| Error::Other(format!("daemon at {}: {e}", self.addr)))?;
        if status != 101 {
            let mut body = vec![0u8; len.unwrap_or(0).min(64 << 10)];
            let _ = r.read_exact(&mut body);
            return Err(Error::Other(format!(
                "daemon at {} refused the migration stream: {} {}",
                self.addr,
                status,
                String::from_utf8_lossy(&body)
            )));
        }
        let pending = r.buffer().to_vec();
        let c = r.into_inner();
        c.set_timeouts(None)
            .map_err(|e| Error::Other(format!("daemon at {}: {e}", self.addr)))?;
        Ok((c, pending))
    }
}

/// Copies bytes both ways between `a` and `b` until either side closes
/// (then both are shut down); `a_pending` (bytes already read from `a`)
/// goes to `b` first. Returns the bytes carried each way.
pub fn relay(a: Conn, a_pending: &[u8], b: Conn) -> (u64, u64) {
    let (Ok(mut a_r), Ok(mut b_r)) = (a.try_clone(), b.try_clone()) else {
        a.shutdown();
        b.shutdown();
        return (0, 0);
    };
    let (mut a_w, mut b_w) = (a, b);
    let _ = a_w.set_timeouts(None);
    let _ = b_w.set_timeouts(None);
    if !a_pending.is_empty() && b_w.write_all(a_pending).is_err() {
        a_w.shutdown();
        b_w.shutdown();
        return (0, 0);
    }
    let back = std::thread::spawn(move || {
        let n = std::io::copy(&mut b_r, &mut a_w).unwrap_or(0);
        a_w.shutdown();
        n
    });
    let there = std::io::copy(&mut a_r, &mut b_w).unwrap_or(0) + a_pending.len() as u64;
    b_w.shutdown();
    a_r.shutdown();
    let back = back.join().unwrap_or(0);
    (there, back)
}

/// Reads what a BufReader holds beyond what was consumed, and its inner
/// stream.
pub fn unbuffer<R: Read>(r: BufReader<R>) -> (Vec<u8>, R) {
    let pending = r.buffer().to_vec();
    (pending, r.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            PeerAddr::parse("unix:/run/condo/condo.sock").unwrap(),
            PeerAddr::Unix("/run/condo/condo.sock".into())
        );
        assert_eq!(
            PeerAddr::parse("/run/b.sock").unwrap(),
            PeerAddr::Unix("/run/b.sock".into())
        );
        assert_eq!(
            PeerAddr::parse("tcp:10.0.0.2:7070").unwrap(),
            PeerAddr::Tcp("10.0.0.2:7070".into())
        );
        assert_eq!(
            PeerAddr::parse("host-b.lan:7070").unwrap().to_string(),
            "tcp:host-b.lan:7070"
        );
        assert_eq!(
            PeerAddr::parse("tcp:[::1]:7070").unwrap(),
            PeerAddr::Tcp("[::1]:7070".into())
        );
        for bad in [
            "",
            "unix:",
            "unix:relative",
            "tcp:",
            "tcp:host",
            "tcp::7070",
            "tcp:h:0",
            "tcp:h:70000",
            "h o:1",
            "tcp:[zz]:1",
            "tcp:a_b:1",
            "http://x:1",
        ] {
            assert!(PeerAddr::parse(bad).is_err(), "{bad}");
        }
        assert!(PeerAddr::parse(&format!("tcp:{}:1", "a".repeat(300))).is_err());
    }

    #[test]
    fn keys_verify_in_full() {
        let k = PeerKey::parse("0123456789abcdef0123").unwrap();
        assert!(k.verify(Some("Bearer 0123456789abcdef0123")));
        for bad in [
            None,
            Some(""),
            Some("Bearer "),
            Some("Bearer 0123456789abcdef012"),
            Some("Bearer 0123456789abcdef01234"),
            Some("Bearer 0123456789abcdef0124"),
            Some("Basic 0123456789abcdef0123"),
        ] {
            assert!(!k.verify(bad), "{bad:?}");
        }
        assert!(PeerKey::parse("short").is_err());
        assert!(PeerKey::parse("with a space in the key").is_err());
    }
}

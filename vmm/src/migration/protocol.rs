//! The migration stream: framed, versioned, every message checked.
//!
//! A frame is a 16-byte header (`CMIG`, the message kind as a u32, the
//! body's length as a u64, little endian) and the body. Control messages
//! are JSON; memory is binary: runs of `[guest address u64][page count
//! u32]` each followed by that many 4 KiB pages; the machine state is the
//! snapshot format's own framed [`MicrovmState`](crate::snapshot::MicrovmState)
//! (magic, version, length, CRC-32, JSON). The order is fixed:
//!
//! ```text
//! source                                destination
//!   Hello {version, machine, memory, cpuid}  ->
//!                                        <-  Accept | Refuse {reason}
//!   Memory (pre-copy passes) ...          ->
//!   State (the paused guest)              ->
//!                                        <-  Ready | Failed {reason}
//!   Go                                    ->
//!                                        <-  Running | Failed {reason}
//! ```
//!
//! Everything the peer sends is hostile: lengths are capped before
//! anything is allocated, pages must fall inside guest memory, messages out
//! of order or of an unknown kind end the migration with a clear error.

use std::io::{Read, Write};

use kvm_bindings::kvm_cpuid_entry2;
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::snapshot::{MachineState, MemoryRegionState};

/// The stream format this build speaks: 2 since the state message holds a
/// version-3 state (bincode; 1 sent version 2, JSON). Peers of different
/// versions refuse each other before any memory is sent.
pub const VERSION: u32 = 2;
const MAGIC: &[u8; 4] = b"CMIG";
const HEADER_LEN: usize = 16;
/// Largest control message.
const MAX_CONTROL: u64 = 1 << 20;
/// Largest state message (as a snapshot file's state).
const MAX_STATE: u64 = crate::snapshot::MAX_BODY + 64;
/// Largest memory message.
pub const MAX_MEMORY: u64 = 64 << 20;
/// Guest page size.
pub const PAGE: u64 = 4096;
const RUN_HEADER: u64 = 12;

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("migration stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("migration stream: {0}")]
    Protocol(String),
    #[error("the destination refused the guest: {0}")]
    Refused(String),
    #[error("the destination failed: {0}")]
    DestinationFailed(String),
    #[error("bad migration URL {0:?}: expected tcp:HOST:PORT or unix:PATH")]
    Url(String),
    #[error("migration timed out after {0} s")]
    Timeout(u64),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Vmm(#[from] Box<crate::VmmError>),
}

impl From<crate::VmmError> for MigrationError {
    fn from(e: crate::VmmError) -> Self {
        Self::Vmm(Box::new(e))
    }
}

fn bad(msg: impl Into<String>) -> MigrationError {
    MigrationError::Protocol(msg.into())
}

/// A message kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Hello = 1,
    Accept = 2,
    Refuse = 3,
    Memory = 4,
    State = 5,
    Ready = 6,
    Go = 7,
    Running = 8,
    Failed = 9,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Self> {
        use Kind::*;
        [
            Hello, Accept, Refuse, Memory, State, Ready, Go, Running, Failed,
        ]
        .into_iter()
        .find(|k| *k as u32 == v)
    }

    /// The largest body this kind may have.
    fn max_len(self) -> u64 {
        match self {
            Kind::Memory => MAX_MEMORY,
            Kind::State => MAX_STATE,
            _ => MAX_CONTROL,
        }
    }
}

/// The source's first message: who it is and what it will send.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The stream format ([`VERSION`]).
    pub version: u32,
    /// condo's version on the source (for the log).
    pub condo: String,
    pub machine: MachineState,
    pub memory: Vec<MemoryRegionState>,
    /// The CPUID the guest sees: the destination must offer every feature.
    pub cpuid: Vec<kvm_cpuid_entry2>,
}

/// The source lets go: the destination runs the guest (or keeps it
/// paused, as the user had it on the source).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Go {
    pub resume: bool,
}

/// A reason, for `Refuse` and `Failed`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    pub reason: String,
}

/// A frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub len: u64,
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: Kind, body: &[u8]) -> Result<(), MigrationError> {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&(kind as u32).to_le_bytes());
    h[8..16].copy_from_slice(&(body.len() as u64).to_le_bytes());
    w.write_all(&h)?;
    w.write_all(body)?;
    Ok(())
}

/// Writes a JSON control message.
pub fn write_json(
    w: &mut impl Write,
    kind: Kind,
    msg: &impl Serialize,
) -> Result<(), MigrationError> {
    let body = serde_json::to_vec(msg).map_err(|e| bad(e.to_string()))?;
    write_frame(w, kind, &body)
}

/// Reads and checks a frame's header.
pub fn read_header(r: &mut impl Read) -> Result<Header, MigrationError> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad("the peer closed the stream"),
        _ => MigrationError::Io(e),
    })?;
    if &h[..4] != MAGIC {
        return Err(bad("not a condo migration stream"));
    }
    let kind = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let kind = Kind::from_u32(kind).ok_or_else(|| bad(format!("unknown message kind {kind}")))?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&h[8..16]);
    let len = u64::from_le_bytes(len);
    if len > kind.max_len() {
        return Err(bad(format!(
            "{kind:?} message of {len} bytes (at most {})",
            kind.max_len()
        )));
    }
    Ok(Header { kind, len })
}

/// Reads a body of `len` bytes (already checked against its kind's cap).
pub fn read_body(r: &mut impl Read, len: u64) -> Result<Vec<u8>, MigrationError> {
    let mut body = Vec::new();
    let n = r.take(len).read_to_end(&mut body)?;
    if n as u64 != len {
        return Err(bad("the stream ends inside a message"));
    }
    Ok(body)
}

/// Reads the next frame, which must be one of `want`.
pub fn expect(r: &mut impl Read, want: &[Kind]) -> Result<(Kind, Vec<u8>), MigrationError> {
    let h = read_header(r)?;
    if !want.contains(&h.kind) {
        return Err(bad(format!("{:?} where {want:?} was expected", h.kind)));
    }
    Ok((h.kind, read_body(r, h.len)?))
}

/// Parses a JSON control body.
pub fn parse<T: serde::de::DeserializeOwned>(kind: Kind, body: &[u8]) -> Result<T, MigrationError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("{kind:?}: {e}")))
}

/// Builds memory messages: runs of pages, flushed as frames of at most
/// [`MAX_MEMORY`] bytes.
pub struct MemoryWriter {
    body: Vec<u8>,
    /// Where the current run's header is in `body`, and its first page.
    run: Option<(usize, u64, u32)>,
    /// Bytes written to the stream so far.
    pub sent: u64,
}

/// A batch is sent once it holds this much.
const FLUSH_AT: usize = 4 << 20;

impl Default for MemoryWriter {
    fn default() -> Self {
        Self {
            body: Vec::with_capacity(FLUSH_AT + PAGE as usize * 2),
            run: None,
            sent: 0,
        }
    }
}

impl MemoryWriter {
    /// Adds the page at `gpa` with contents `page`.
    pub fn page(
        &mut self,
        w: &mut impl Write,
        gpa: u64,
        page: &[u8],
    ) -> Result<(), MigrationError> {
        match &mut self.run {
            Some((at, start, n)) if *start + u64::from(*n) * PAGE == gpa && *n < u32::MAX => {
                *n += 1;
                let at = *at;
                let n = *n;
                self.body[at + 8..at + 12].copy_from_slice(&n.to_le_bytes());
            }
            _ => {
                let at = self.body.len();
                self.body.extend_from_slice(&gpa.to_le_bytes());
                self.body.extend_from_slice(&1u32.to_le_bytes());
                self.run = Some((at, gpa, 1));
            }
        }
        self.body.extend_from_slice(page);
        if self.body.len() >= FLUSH_AT {
            self.flush(w)?;
        }
        Ok(())
    }

    /// Sends what is batched.
    pub fn flush(&mut self, w: &mut impl Write) -> Result<(), MigrationError> {
        if !self.body.is_empty() {
            write_frame(w, Kind::Memory, &self.body)?;
            self.sent += HEADER_LEN as u64 + self.body.len() as u64;
            self.body.clear();
        }
        self.run = None;
        Ok(())
    }
}

/// Reads a memory message's body of `len` bytes straight into `mem`: every
/// run must lie inside guest memory. Returns the pages written.
pub fn read_memory(
    r: &mut impl Read,
    len: u64,
    mem: &devices::GuestMemoryMmap,
) -> Result<u64, MigrationError> {
    let mut left = len;
    let mut pages = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        if left < RUN_HEADER {
            return Err(bad("a memory message ends inside a run header"));
        }
        let mut h = [0u8; RUN_HEADER as usize];
        r.read_exact(&mut h)?;
        left -= RUN_HEADER;
        let mut gpa = [0u8; 8];
        gpa.copy_from_slice(&h[..8]);
        let gpa = u64::from_le_bytes(gpa);
        let n = u64::from(u32::from_le_bytes([h[8], h[9], h[10], h[11]]));
        let bytes = n
            .checked_mul(PAGE)
            .filter(|&b| b <= left)
            .ok_or_else(|| bad("a memory run is longer than its message"))?;
        if n == 0 || gpa % PAGE != 0 {
            return Err(bad(format!("bad memory run at {gpa:#x} of {n} pages")));
        }
        let end = gpa
            .checked_add(bytes)
            .ok_or_else(|| bad("a memory run wraps around"))?;
        if !mem.check_range(GuestAddress(gpa), bytes as usize)
            || mem.find_region(GuestAddress(end - 1)).is_none()
        {
            return Err(bad(format!(
                "memory run {gpa:#x}..{end:#x} is outside guest memory"
            )));
        }
        let mut at = gpa;
        let mut todo = bytes;
        while todo > 0 {
            let chunk = todo.min(buf.len() as u64) as usize;
            r.read_exact(&mut buf[..chunk])?;
            mem.write_slice(&buf[..chunk], GuestAddress(at))
                .map_err(|e| bad(format!("memory at {at:#x}: {e}")))?;
            at += chunk as u64;
            todo -= chunk as u64;
        }
        left -= bytes;
        pages += n;
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> devices::GuestMemoryMmap {
        devices::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn frames_and_memory_round_trip() {
        let mut out = Vec::new();
        write_json(
            &mut out,
            Kind::Refuse,
            &Reason {
                reason: "no".into(),
            },
        )
        .unwrap();
        let mut w = MemoryWriter::default();
        let a = [0x11u8; 4096];
        let b = [0x22u8; 4096];
        w.page(&mut out, 0x1000, &a).unwrap();
        w.page(&mut out, 0x2000, &b).unwrap();
        w.page(&mut out, 0x8000, &a).unwrap();
        w.flush(&mut out).unwrap();
        let mut r = &out[..];
        let (k, body) = expect(&mut r, &[Kind::Refuse]).unwrap();
        assert_eq!(parse::<Reason>(k, &body).unwrap().reason, "no");
        let h = read_header(&mut r).unwrap();
        assert_eq!(h.kind, Kind::Memory);
        assert_eq!(h.len, 2 * 12 + 3 * 4096, "two runs");
        let m = mem();
        assert_eq!(read_memory(&mut r, h.len, &m).unwrap(), 3);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x2fff)).unwrap(), 0x22);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x8000)).unwrap(), 0x11);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 0);
        assert!(r.is_empty());
    }

    #[test]
    fn hostile_frames_are_refused() {
        let frame = |kind: u32, len: u64, body: &[u8]| {
            let mut v = b"CMIG".to_vec();
            v.extend_from_slice(&kind.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(body);
            v
        };
        let err = |bytes: Vec<u8>| {
            let mut r = &bytes[..];
            match read_header(&mut r) {
                Err(e) => e.to_string(),
                Ok(h) => match read_body(&mut r, h.len) {
                    Err(e) => e.to_string(),
                    Ok(_) => "accepted".into(),
                },
            }
        };
        assert!(err(b"QEMU0000000000000".to_vec()).contains("not a condo migration stream"));
        assert!(err(frame(42, 0, b"")).contains("unknown message kind 42"));
        assert!(err(frame(1, u64::MAX, b"")).contains("at most"));
        assert!(err(frame(1, 10, b"abc")).contains("ends inside"));
        assert!(err(b"CMI".to_vec()).contains("closed"));
        let mut r = &frame(7, 2, b"{}")[..];
        assert!(expect(&mut r, &[Kind::State])
            .unwrap_err()
            .to_string()
            .contains("Go where [State] was expected"));
        // Memory runs outside guest memory, unaligned, empty, or longer
        // than their message.
        let m = mem();
        let run = |gpa: u64, n: u32, extra: usize| {
            let mut v = gpa.to_le_bytes().to_vec();
            v.extend_from_slice(&n.to_le_bytes());
            v.extend(std::iter::repeat_n(0u8, extra));
            v
        };
        for (body, needle) in [
            (run(1 << 20, 1, 4096), "outside guest memory"),
            (run(0xff000, 2, 8192), "outside guest memory"),
            (run(0x10, 1, 4096), "bad memory run"),
            (run(0, 0, 0), "bad memory run"),
            (run(0, 3, 4096), "longer than its message"),
            (run(u64::MAX - 4095, 1, 4096), "wraps"),
            (vec![1, 2, 3], "inside a run header"),
        ] {
            let e = read_memory(&mut &body[..], body.len() as u64, &m).unwrap_err();
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
    }
}

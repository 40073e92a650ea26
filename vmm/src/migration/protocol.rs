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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use kvm_bindings::kvm_cpuid_entry2;
use serde::{Deserialize, Serialize};
use vm_memory::volatile_memory::Error as VolatileMemoryError;
use vm_memory::{GuestAddress, GuestMemoryBackend, ReadVolatile};

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

/// Builds memory messages: runs of pages, sent as frames of at most
/// [`MAX_MEMORY`] bytes straight from guest memory. The writer keeps only
/// the headers and where the pages are; [`flush`](Self::flush) hands the
/// pages to the kernel with `writev` as they are then, so a page costs one
/// copy (into the socket), as QEMU sends RAM. A page the guest writes after
/// it was taken is in the dirty log and goes again in the next pass.
pub struct MemoryWriter<'m> {
    mem: &'m devices::GuestMemoryMmap,
    /// The frame header, then each run's header (run `i`'s at
    /// `HEADER_LEN + i * RUN_HEADER`).
    heads: Vec<u8>,
    /// Each run's first page and length in bytes; the last one is the run
    /// a following page may extend.
    runs: Vec<(u64, usize)>,
    /// The body's length so far.
    body: usize,
    /// Bytes written to the stream so far.
    pub sent: u64,
}

/// A batch is sent once it holds this much.
const FLUSH_AT: usize = 4 << 20;

impl<'m> MemoryWriter<'m> {
    /// A writer of pages of `mem`.
    pub fn new(mem: &'m devices::GuestMemoryMmap) -> Self {
        let mut heads = Vec::with_capacity(HEADER_LEN + 1024 * RUN_HEADER as usize);
        heads.extend_from_slice(&[0; HEADER_LEN]);
        Self {
            mem,
            heads,
            runs: Vec::with_capacity(1024),
            body: 0,
            sent: 0,
        }
    }

    /// The guest memory the pages are taken from.
    pub fn mem(&self) -> &'m devices::GuestMemoryMmap {
        self.mem
    }

    /// Adds the guest page at `gpa` (checked inside guest memory when the
    /// batch is sent).
    pub fn page(&mut self, w: &mut impl AsFd, gpa: u64) -> Result<(), MigrationError> {
        match self.runs.last_mut() {
            Some((start, len))
                if *start + *len as u64 == gpa && (*len as u64 / PAGE) < u64::from(u32::MAX) =>
            {
                *len += PAGE as usize;
                let n = (*len as u64 / PAGE) as u32;
                let at = self.heads.len() - RUN_HEADER as usize;
                self.heads[at + 8..at + 12].copy_from_slice(&n.to_le_bytes());
            }
            _ => {
                self.heads.extend_from_slice(&gpa.to_le_bytes());
                self.heads.extend_from_slice(&1u32.to_le_bytes());
                self.runs.push((gpa, PAGE as usize));
                self.body += RUN_HEADER as usize;
            }
        }
        self.body += PAGE as usize;
        if self.body >= FLUSH_AT {
            self.flush(w)?;
        }
        Ok(())
    }

    /// Sends what is batched.
    pub fn flush(&mut self, w: &mut impl AsFd) -> Result<(), MigrationError> {
        if self.runs.is_empty() {
            return Ok(());
        }
        self.heads[..4].copy_from_slice(MAGIC);
        self.heads[4..8].copy_from_slice(&(Kind::Memory as u32).to_le_bytes());
        self.heads[8..16].copy_from_slice(&(self.body as u64).to_le_bytes());
        let mut iov = Vec::with_capacity(2 * self.runs.len() + 1);
        let mut guards = Vec::with_capacity(self.runs.len());
        let heads = self.heads.as_ptr();
        let head = |at: usize, len: usize| libc::iovec {
            // SAFETY: `at + len` is inside `heads`, which is not changed
            // until the write is done.
            iov_base: unsafe { heads.add(at) } as *mut libc::c_void,
            iov_len: len,
        };
        iov.push(head(0, HEADER_LEN));
        for (i, &(gpa, len)) in self.runs.iter().enumerate() {
            iov.push(head(
                HEADER_LEN + i * RUN_HEADER as usize,
                RUN_HEADER as usize,
            ));
            for slice in self.mem.get_slices(GuestAddress(gpa), len) {
                let slice = slice.map_err(|e| bad(format!("guest memory at {gpa:#x}: {e}")))?;
                let guard = slice.ptr_guard();
                iov.push(libc::iovec {
                    iov_base: guard.as_ptr() as *mut libc::c_void,
                    iov_len: guard.len(),
                });
                guards.push(guard);
            }
        }
        write_all_vectored(w.as_fd(), &mut iov)?;
        drop(guards);
        self.sent += (HEADER_LEN + self.body) as u64;
        self.heads.truncate(HEADER_LEN);
        self.runs.clear();
        self.body = 0;
        Ok(())
    }
}

/// `writev` until every byte of `iov` is written (the vectors are consumed).
fn write_all_vectored(fd: BorrowedFd<'_>, mut iov: &mut [libc::iovec]) -> std::io::Result<()> {
    const IOV_MAX: usize = 1024;
    while !iov.is_empty() {
        let n = iov.len().min(IOV_MAX);
        // SAFETY: the first `n` vectors point to memory that stays mapped
        // and unchanged by us through the call (the writer's headers and
        // guest memory it borrows); the kernel only reads it.
        let r = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), n as libc::c_int) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        iov = devices::virtio::advance_iovecs(iov, r as usize);
    }
    Ok(())
}

/// Whether the guest page at `gpa` holds only zeros, read in place
/// (volatile: the guest may be writing it), stopping at the first word
/// that is not zero. An address outside guest memory counts as not zero.
pub fn page_is_zero(mem: &devices::GuestMemoryMmap, gpa: u64) -> bool {
    let Ok(slice) = mem.get_slice(GuestAddress(gpa), PAGE as usize) else {
        return false;
    };
    let guard = slice.ptr_guard();
    let words = guard.as_ptr() as *const u64;
    (0..PAGE as usize / 64).all(|i| {
        let mut any = 0;
        for j in 0..8 {
            // SAFETY: the page is mapped guest memory, `PAGE` bytes long
            // and page aligned, so word `i * 8 + j` lies inside it and is
            // aligned; a volatile read of memory the guest may change
            // is sound.
            any |= unsafe { std::ptr::read_volatile(words.add(i * 8 + j)) };
        }
        any == 0
    })
}

/// Reads a memory message's body of `len` bytes straight into `mem` (the
/// kernel copies each run's pages into place): every run must lie inside
/// guest memory. Returns the pages written.
pub fn read_memory(
    r: &mut (impl Read + ReadVolatile),
    len: u64,
    mem: &devices::GuestMemoryMmap,
) -> Result<u64, MigrationError> {
    let mut left = len;
    let mut pages = 0u64;
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
        for slice in mem.get_slices(GuestAddress(gpa), bytes as usize) {
            let mut slice = slice.map_err(|e| bad(format!("memory at {gpa:#x}: {e}")))?;
            r.read_exact_volatile(&mut slice).map_err(|e| match e {
                VolatileMemoryError::IOError(e)
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    bad("the stream ends inside a message")
                }
                VolatileMemoryError::IOError(e) => MigrationError::Io(e),
                e => bad(format!("memory at {gpa:#x}: {e}")),
            })?;
        }
        left -= bytes;
        pages += n;
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem() -> devices::GuestMemoryMmap {
        devices::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn frames_and_memory_round_trip() {
        let (mut out, mut r) = std::os::unix::net::UnixStream::pair().unwrap();
        write_json(
            &mut out,
            Kind::Refuse,
            &Reason {
                reason: "no".into(),
            },
        )
        .unwrap();
        let src = mem();
        src.write_slice(&[0x11; 4096], GuestAddress(0x1000))
            .unwrap();
        src.write_slice(&[0x22; 4096], GuestAddress(0x2000))
            .unwrap();
        src.write_slice(&[0x33; 4096], GuestAddress(0x8000))
            .unwrap();
        src.write_obj(1u8, GuestAddress(0x9fff)).unwrap();
        assert!(page_is_zero(&src, 0));
        assert!(!page_is_zero(&src, 0x9000), "a last byte set");
        assert!(!page_is_zero(&src, 1 << 20), "outside guest memory");
        let mut w = MemoryWriter::new(&src);
        for gpa in [0x1000, 0x2000, 0x8000] {
            w.page(&mut out, gpa).unwrap();
        }
        // Taken as the pages are when the batch is written.
        src.write_obj(0x44u8, GuestAddress(0x8000)).unwrap();
        w.flush(&mut out).unwrap();
        assert_eq!(w.sent, 16 + 2 * 12 + 3 * 4096);
        let (k, body) = expect(&mut r, &[Kind::Refuse]).unwrap();
        assert_eq!(parse::<Reason>(k, &body).unwrap().reason, "no");
        let h = read_header(&mut r).unwrap();
        assert_eq!(h.kind, Kind::Memory);
        assert_eq!(h.len, 2 * 12 + 3 * 4096, "two runs");
        let m = mem();
        assert_eq!(read_memory(&mut r, h.len, &m).unwrap(), 3);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0x11);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x2fff)).unwrap(), 0x22);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x8000)).unwrap(), 0x44);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x8001)).unwrap(), 0x33);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 0);
        // Nothing more on the stream.
        r.set_nonblocking(true).unwrap();
        assert!(r.read(&mut [0u8; 1]).is_err());
    }

    #[test]
    fn a_memory_batch_larger_than_the_socket_buffer_is_written_whole() {
        let src = devices::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        for p in 0..(16u64 << 20) / PAGE {
            src.write_obj(p, GuestAddress(p * PAGE)).unwrap();
        }
        let (mut out, mut r) = std::os::unix::net::UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let m = devices::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
            let mut pages = 0;
            while pages < 2048 {
                let h = read_header(&mut r).unwrap();
                assert!(h.len <= FLUSH_AT as u64 + 12 + PAGE);
                pages += read_memory(&mut r, h.len, &m).unwrap();
            }
            m
        });
        let mut w = MemoryWriter::new(&src);
        // Every other page: a run per page, more vectors than one writev
        // takes.
        for p in (0..4096u64).step_by(2) {
            w.page(&mut out, p * PAGE).unwrap();
        }
        w.flush(&mut out).unwrap();
        let m = reader.join().unwrap();
        for p in 0..4096u64 {
            let want = if p % 2 == 0 { p } else { 0 };
            assert_eq!(m.read_obj::<u64>(GuestAddress(p * PAGE)).unwrap(), want);
        }
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

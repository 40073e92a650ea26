//! virtio-blk on a raw image file.
//!
//! Requests: read, write, flush (fdatasync: nothing the guest was told is
//! written is lost once the flush completes), GET_ID (the serial), discard
//! (hole punching) and write-zeroes. A read-only disk refuses every request
//! that would change the file. Every request is checked against the disk's
//! size and the chain's shape before any I/O; a malformed request fails with
//! an I/O error status, a broken queue stops the device.
//!
//! An optional [`RateLimiter`] throttles the guest as Firecracker does: every
//! request costs one op, reads and writes also their data length in bytes.
//! A refused request stays in the queue; the device stops serving until the
//! limiter's timer fires, then carries on where it stopped.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::GuestMemoryMmap;
use virtio_queue::Queue;
use vm_memory::ByteValued;

use super::iov::GuestIo;
use super::persist::{limiter, BlockState, DeviceStateError, VirtioDeviceState};
use super::worker::QueueWorker;
use super::{
    device_type, drain_queue_until_refused, read_config_bytes, ActivateError, Activation, Chain,
    Interrupt, VirtioDevice, VIRTIO_RING_F_EVENT_IDX,
};
use crate::persist::Persist;
use crate::rate_limiter::{admit, limiter_timer_event, RateLimiter};
use crate::sync::lock;

const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// Largest data transfer of one request (bounded bounce buffer).
const MAX_REQUEST_BYTES: usize = 1 << 20;

const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
const VIRTIO_BLK_F_RO: u32 = 5;
const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
const VIRTIO_BLK_F_FLUSH: u32 = 9;
const VIRTIO_BLK_F_DISCARD: u32 = 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
const VIRTIO_BLK_T_DISCARD: u32 = 11;
const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;

const VIRTIO_BLK_ID_BYTES: usize = 20;
const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// Worker tokens: the request queue's notification, then the limiter's timer.
const QUEUE_TOKEN: usize = 0;
const LIMITER_TOKEN: usize = 1;

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}: {err}")]
    Open { path: PathBuf, err: std::io::Error },
    #[error("disk image {path} is not a regular file or block device")]
    NotAFile { path: PathBuf },
    #[error("disk image {path} size {size} is not a multiple of 512 bytes")]
    Size { path: PathBuf, size: u64 },
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RequestHeader {
    type_: u32,
    reserved: u32,
    sector: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiscardSegment {
    sector: u64,
    num_sectors: u32,
    flags: u32,
}

// SAFETY: plain integer structs with no padding; any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}
// SAFETY: as above.
unsafe impl ByteValued for DiscardSegment {}

/// The backing file and what the guest may do with it.
pub struct Disk {
    file: File,
    path: PathBuf,
    /// The id as given (the guest reads its first 20 bytes).
    name: String,
    size: u64,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES],
}

impl Disk {
    /// Opens `path`; `id` is the serial the guest reads with GET_ID.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|err| BlockError::Open {
                path: path.to_owned(),
                err,
            })?;
        let meta = file.metadata().map_err(|err| BlockError::Open {
            path: path.to_owned(),
            err,
        })?;
        if meta.is_dir() {
            return Err(BlockError::NotAFile {
                path: path.to_owned(),
            });
        }
        // Block devices report size 0 in metadata; ask the file.
        let size = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)).map_err(|err| {
            BlockError::Open {
                path: path.to_owned(),
                err,
            }
        })?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::Size {
                path: path.to_owned(),
                size,
            });
        }
        let mut idb = [0u8; VIRTIO_BLK_ID_BYTES];
        let n = id.len().min(VIRTIO_BLK_ID_BYTES);
        idb[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            path: path.to_owned(),
            name: id.to_owned(),
            size,
            read_only,
            id: idb,
        })
    }

    fn check_range(&self, sector: u64, len: u64) -> bool {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|off| off.checked_add(len))
            .is_some_and(|end| end <= self.size)
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> std::io::Result<()> {
        // SAFETY: fallocate on a file descriptor we own, with plain integers.
        let r =
            unsafe { libc::fallocate64(self.file.as_raw_fd(), mode, offset as i64, len as i64) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// The block device.
pub struct Block {
    disk: Arc<Disk>,
    features: u64,
    config: [u8; 60],
    /// Shared with the worker; kept here so that it survives a reset.
    rate_limiter: Option<Arc<Mutex<RateLimiter>>>,
    worker: Option<QueueWorker>,
}

impl Block {
    /// A device serving `disk`.
    pub fn new(disk: Disk) -> Self {
        let mut features = (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if disk.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        let mut config = [0u8; 60];
        config[0..8].copy_from_slice(&(disk.size / SECTOR_SIZE).to_le_bytes());
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        let max_sectors = (MAX_REQUEST_BYTES as u64 / SECTOR_SIZE) as u32;
        config[36..40].copy_from_slice(&u32::MAX.to_le_bytes()); // max_discard_sectors
        config[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        config[44..48].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
        config[48..52].copy_from_slice(&max_sectors.max(1).to_le_bytes()); // max_write_zeroes_sectors
        config[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        config[56] = 1; // write_zeroes_may_unmap
        Self {
            disk: Arc::new(disk),
            features,
            config,
            rate_limiter: None,
            worker: None,
        }
    }

    /// Throttles the guest's requests with `rate_limiter`: one op per
    /// request, plus the data length in bytes for reads and writes. Takes
    /// effect at the next activation.
    pub fn rate_limiter(mut self, rate_limiter: RateLimiter) -> Self {
        self.rate_limiter = Some(Arc::new(Mutex::new(rate_limiter)));
        self
    }

    /// The limiter, shared with the running device (to change it live).
    pub fn rate_limiter_handle(&self) -> Option<Arc<Mutex<RateLimiter>>> {
        self.rate_limiter.clone()
    }
}

impl Persist for Block {
    type State = BlockState;
    type ConstructorArgs = ();
    type Error = DeviceStateError;

    fn save(&self) -> BlockState {
        BlockState {
            id: self.disk.name.clone(),
            path: self.disk.path.clone(),
            read_only: self.disk.read_only,
            rate_limiter: self
                .rate_limiter
                .as_ref()
                .map(|rl| lock(rl).config())
                .unwrap_or_default(),
        }
    }

    /// Opens the disk the state names.
    fn restore(_: (), s: &BlockState) -> Result<Self, DeviceStateError> {
        let disk = Disk::open(&s.path, s.read_only, &s.id)?;
        Ok(Self::new(disk).rate_limiter(limiter(&s.rate_limiter)?))
    }
}

impl VirtioDevice for Block {
    fn state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Block(self.save())
    }

    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        // A previous activation's worker must be gone before a new one
        // serves the queue.
        self.worker = None;
        let Activation {
            mem,
            interrupt,
            mut queues,
            queue_evts,
            ..
        } = a;
        let Some(queue) = queues.pop() else {
            return Err(ActivateError::Failed("virtio-blk: no queue".into()));
        };
        // The limiter's timer gets token LIMITER_TOKEN (one queue before it).
        let fds: Vec<RawFd> = self
            .rate_limiter
            .iter()
            .map(|rl| lock(rl).as_raw_fd())
            .collect();
        let mut w = BlockWorker {
            mem,
            queue,
            irq: interrupt,
            disk: self.disk.clone(),
            buf: vec![0u8; MAX_REQUEST_BYTES],
            rate_limiter: self.rate_limiter.clone(),
        };
        let worker = QueueWorker::spawn_with_fds("virtio-blk", queue_evts, &fds, move |token| {
            match w.handle(token) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("virtio-blk: {e}; device stopped");
                    false
                }
            }
        })
        .map_err(|e| ActivateError::Failed(format!("virtio-blk: {e}")))?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // Joining the worker finishes the request in progress; requests
        // already completed were written with pwrite, and a guest that wants
        // them durable has flushed.
        self.worker = None;
        true
    }
}

/// What the worker thread owns for one activation.
struct BlockWorker {
    mem: GuestMemoryMmap,
    queue: Queue,
    irq: Arc<Interrupt>,
    disk: Arc<Disk>,
    buf: Vec<u8>,
    rate_limiter: Option<Arc<Mutex<RateLimiter>>>,
}

impl BlockWorker {
    /// Handles worker token `token`: a guest notification, or the limiter's
    /// timer, which unblocks the limiter and resumes serving the queue.
    fn handle(&mut self, token: usize) -> Result<(), virtio_queue::Error> {
        let mut rl = self.rate_limiter.as_deref().map(lock);
        match token {
            QUEUE_TOKEN => {}
            LIMITER_TOKEN => {
                if let Some(rl) = rl.as_deref_mut() {
                    limiter_timer_event("virtio-blk", rl);
                }
            }
            _ => return Ok(()),
        }
        process_queue_limited(
            &self.mem,
            &mut self.queue,
            &self.irq,
            &self.disk,
            &mut self.buf,
            rl.as_deref_mut(),
        )
    }
}

/// Serves every available request on `queue`.
pub fn process_queue(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    irq: &Interrupt,
    disk: &Disk,
    buf: &mut [u8],
) -> Result<(), virtio_queue::Error> {
    process_queue_limited(mem, queue, irq, disk, buf, None)
}

/// Serves the available requests on `queue` as far as `rate_limiter`
/// allows: the first refused request stays in the queue, and nothing is
/// served while the limiter is blocked (its timer resumes the device).
pub fn process_queue_limited(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    irq: &Interrupt,
    disk: &Disk,
    buf: &mut [u8],
    mut rate_limiter: Option<&mut RateLimiter>,
) -> Result<(), virtio_queue::Error> {
    if rate_limiter.as_deref().is_some_and(RateLimiter::is_blocked) {
        return Ok(());
    }
    drain_queue_until_refused(mem, queue, irq, |chain| {
        match (chain.clone().reader(mem), chain.clone().writer(mem)) {
            (Ok(mut r), Ok(mut w)) => {
                let mut req = Request {
                    mem,
                    chain,
                    r: &mut r,
                    w: &mut w,
                };
                serve(disk, &mut req, buf, rate_limiter.as_deref_mut())
            }
            _ => {
                tracing::debug!("virtio-blk: malformed descriptor chain");
                Some(0)
            }
        }
    })
    .map(drop)
}

type Reader<'a> =
    virtio_queue::Reader<'a, vm_memory::bitmap::RefSlice<'a, vm_memory::bitmap::AtomicBitmap>>;
type Writer<'a> =
    virtio_queue::Writer<'a, vm_memory::bitmap::RefSlice<'a, vm_memory::bitmap::AtomicBitmap>>;

/// One request: its chain, and readers over its two directions.
struct Request<'a, 'b> {
    mem: &'a GuestMemoryMmap,
    chain: Chain<'a>,
    r: &'b mut Reader<'a>,
    w: &'b mut Writer<'a>,
}

/// Serves one request; returns the bytes written to the guest (data plus
/// the status byte), 0 when not even a status could be written, or `None`
/// when `rate_limiter` refuses it (nothing was done).
///
/// As in Firecracker, a chain without a header or status is not charged,
/// any other request costs one op, and reads and writes their data length.
fn serve(
    disk: &Disk,
    req: &mut Request,
    buf: &mut [u8],
    rate_limiter: Option<&mut RateLimiter>,
) -> Option<u32> {
    let Some(status_at) = req.w.available_bytes().checked_sub(1) else {
        return Some(0); // no room for a status byte: nothing to report to
    };
    let Ok(mut status_w) = req.w.split_at(status_at) else {
        return Some(0);
    };
    let (status, data_len) = match req.r.read_obj::<RequestHeader>() {
        Ok(h) => {
            // Charged after reading the header once, so the guest cannot
            // change the request between charge and execution.
            if !admit(rate_limiter, data_bytes(&h, req.r, req.w)) {
                return None;
            }
            execute(disk, h, req, buf)
        }
        Err(_) => (VIRTIO_BLK_S_IOERR, 0),
    };
    if status_w.write_all(&[status]).is_err() {
        return Some(0);
    }
    Some(data_len.saturating_add(1))
}

/// Data bytes request `h` moves (what [`execute`] reads or writes): the
/// data part of a read or write, 0 for other requests and for a length no
/// request may have (it fails without moving data).
fn data_bytes(h: &RequestHeader, r: &Reader, w: &Writer) -> u64 {
    let len = match h.type_ {
        VIRTIO_BLK_T_IN => w.available_bytes(),
        VIRTIO_BLK_T_OUT => r.available_bytes(),
        _ => 0,
    };
    if len > MAX_REQUEST_BYTES {
        0
    } else {
        len as u64
    }
}

fn execute(disk: &Disk, h: RequestHeader, req: &mut Request, buf: &mut [u8]) -> (u8, u32) {
    let Request { mem, chain, r, w } = req;
    let changes = matches!(
        h.type_,
        VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES
    );
    let m = &crate::metrics::METRICS.block;
    if changes && disk.read_only {
        m.invalid_reqs_count.inc();
        return (VIRTIO_BLK_S_IOERR, 0);
    }
    let ok = |res: std::io::Result<u32>| match res {
        Ok(n) => (VIRTIO_BLK_S_OK, n),
        Err(e) => {
            tracing::debug!("virtio-blk: request failed: {e}");
            m.io_errors_count.inc();
            (VIRTIO_BLK_S_IOERR, 0)
        }
    };
    match h.type_ {
        VIRTIO_BLK_T_IN => {
            let len = w.available_bytes();
            if !len.is_multiple_of(SECTOR_SIZE as usize)
                || len > buf.len()
                || !disk.check_range(h.sector, len as u64)
            {
                m.invalid_reqs_count.inc();
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            m.read_count.inc();
            m.read_bytes.add(len as u64);
            let off = h.sector * SECTOR_SIZE;
            // Straight into guest memory where it can (the data part is the
            // first `len` device-writable bytes), else through `buf`.
            let res = match GuestIo::new(mem, chain.clone(), true, 0, len) {
                Some(mut io) => io.read_from(&disk.file, off),
                None => disk
                    .file
                    .read_exact_at(&mut buf[..len], off)
                    .and_then(|()| w.write_all(&buf[..len])),
            };
            ok(res.map(|()| len as u32))
        }
        VIRTIO_BLK_T_OUT => {
            let len = r.available_bytes();
            if !len.is_multiple_of(SECTOR_SIZE as usize)
                || len > buf.len()
                || !disk.check_range(h.sector, len as u64)
            {
                m.invalid_reqs_count.inc();
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            m.write_count.inc();
            m.write_bytes.add(len as u64);
            let off = h.sector * SECTOR_SIZE;
            // The data follows the header among the device-readable bytes.
            let res = match GuestIo::new(mem, chain.clone(), false, r.bytes_read(), len) {
                Some(mut io) => io.write_to(&disk.file, off),
                None => r
                    .read_exact(&mut buf[..len])
                    .and_then(|()| disk.file.write_all_at(&buf[..len], off)),
            };
            ok(res.map(|()| 0))
        }
        VIRTIO_BLK_T_FLUSH => {
            m.flush_count.inc();
            ok(disk.file.sync_data().map(|()| 0))
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = w.available_bytes().min(VIRTIO_BLK_ID_BYTES);
            ok(w.write_all(&disk.id[..n]).map(|()| n as u32))
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if r.available_bytes() != std::mem::size_of::<DiscardSegment>() {
                return (VIRTIO_BLK_S_UNSUPP, 0);
            }
            let Ok(seg) = r.read_obj::<DiscardSegment>() else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            let len = u64::from(seg.num_sectors) * SECTOR_SIZE;
            m.discard_count.inc();
            if !disk.check_range(seg.sector, len) {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let off = seg.sector * SECTOR_SIZE;
            let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            let res = if h.type_ == VIRTIO_BLK_T_DISCARD || seg.flags & WRITE_ZEROES_FLAG_UNMAP != 0
            {
                disk.fallocate(punch, off, len)
            } else {
                disk.fallocate(
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    len,
                )
                .or_else(|_| disk.fallocate(punch, off, len))
            };
            ok(res.map(|()| 0))
        }
        _ => (VIRTIO_BLK_S_UNSUPP, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limiter::BucketConfig;
    use std::time::{Duration, Instant};
    use virtio_queue::desc::{split::Descriptor as D, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const WRITE: u16 = 2;
    const NEXT: u16 = 1;

    fn disk(read_only: bool) -> (Disk, PathBuf) {
        let p = std::env::temp_dir().join(format!(
            "condo-blk-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::write(&p, vec![0xabu8; 64 * 1024]).unwrap();
        (Disk::open(&p, read_only, "condo-disk-0").unwrap(), p)
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs one request chain; returns (used length, status byte).
    fn request(d: &Disk, mem: &GuestMemoryMmap, descs: &[D], status_addr: u64) -> (u32, u8) {
        let mq = MockSplitQueue::new(mem, 16);
        let raw: Vec<RawDescriptor> = descs.iter().copied().map(RawDescriptor::from).collect();
        mq.build_desc_chain(&raw).unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let mut buf = vec![0u8; MAX_REQUEST_BYTES];
        let _ = process_queue(mem, &mut q, &irq, d, &mut buf);
        let used_len: u32 = mem
            .read_obj(GuestAddress(mq.used_addr().0 + 8))
            .unwrap_or(0);
        let status: u8 = mem.read_obj(GuestAddress(status_addr)).unwrap();
        (used_len, status)
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn header(mem: &GuestMemoryMmap, at: u64, type_: u32, sector: u64) {
        mem.write_obj(
            RequestHeader {
                type_,
                reserved: 0,
                sector,
            },
            GuestAddress(at),
        )
        .unwrap();
    }

    #[test]
    fn write_then_read_back() {
        let (d, p) = disk(false);
        let m = mem();
        header(&m, 0x1_0000, VIRTIO_BLK_T_OUT, 2);
        m.write_slice(&[0x5a; 512], GuestAddress(0x2_0000)).unwrap();
        let (_, st) = request(
            &d,
            &m,
            &[
                D::new(0x1_0000, 16, NEXT, 1),
                D::new(0x2_0000, 512, NEXT, 2),
                D::new(0x3_0000, 1, WRITE, 0),
            ],
            0x3_0000,
        );
        assert_eq!(st, VIRTIO_BLK_S_OK);
        let on_disk = std::fs::read(&p).unwrap();
        assert!(on_disk[1024..1536].iter().all(|b| *b == 0x5a));
        assert_eq!(on_disk[1536], 0xab);

        header(&m, 0x1_0000, VIRTIO_BLK_T_IN, 2);
        let (used, st) = request(
            &d,
            &m,
            &[
                D::new(0x1_0000, 16, NEXT, 1),
                D::new(0x4_0000, 1024, WRITE | NEXT, 2),
                D::new(0x3_0000, 1, WRITE, 0),
            ],
            0x3_0000,
        );
        assert_eq!(st, VIRTIO_BLK_S_OK);
        assert_eq!(used, 1025);
        let mut back = [0u8; 1024];
        m.read_slice(&mut back, GuestAddress(0x4_0000)).unwrap();
        assert!(back[..512].iter().all(|b| *b == 0x5a));
        assert!(back[512..].iter().all(|b| *b == 0xab));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn get_id_flush_and_unknown() {
        let (d, p) = disk(false);
        let m = mem();
        header(&m, 0x1_0000, VIRTIO_BLK_T_GET_ID, 0);
        let (_, st) = request(
            &d,
            &m,
            &[
                D::new(0x1_0000, 16, NEXT, 1),
                D::new(0x4_0000, 20, WRITE | NEXT, 2),
                D::new(0x3_0000, 1, WRITE, 0),
            ],
            0x3_0000,
        );
        assert_eq!(st, VIRTIO_BLK_S_OK);
        let mut id = [0u8; 12];
        m.read_slice(&mut id, GuestAddress(0x4_0000)).unwrap();
        assert_eq!(&id, b"condo-disk-0");
        for (t, want) in [
            (VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_S_OK),
            (99, VIRTIO_BLK_S_UNSUPP),
        ] {
            header(&m, 0x1_0000, t, 0);
            let (_, st) = request(
                &d,
                &m,
                &[D::new(0x1_0000, 16, NEXT, 1), D::new(0x3_0000, 1, WRITE, 0)],
                0x3_0000,
            );
            assert_eq!(st, want);
        }
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn read_only_and_out_of_range_fail() {
        let (d, p) = disk(true);
        let m = mem();
        header(&m, 0x1_0000, VIRTIO_BLK_T_OUT, 0);
        let (_, st) = request(
            &d,
            &m,
            &[
                D::new(0x1_0000, 16, NEXT, 1),
                D::new(0x2_0000, 512, NEXT, 2),
                D::new(0x3_0000, 1, WRITE, 0),
            ],
            0x3_0000,
        );
        assert_eq!(st, VIRTIO_BLK_S_IOERR);
        assert!(std::fs::read(&p).unwrap().iter().all(|b| *b == 0xab));
        // Past the end of the 64 KiB disk, and a sector number that overflows.
        for sector in [127, u64::MAX / 2] {
            header(&m, 0x1_0000, VIRTIO_BLK_T_IN, sector);
            let (_, st) = request(
                &d,
                &m,
                &[
                    D::new(0x1_0000, 16, NEXT, 1),
                    D::new(0x4_0000, 1024, WRITE | NEXT, 2),
                    D::new(0x3_0000, 1, WRITE, 0),
                ],
                0x3_0000,
            );
            assert_eq!(st, VIRTIO_BLK_S_IOERR);
        }
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn hostile_chains_do_not_panic() {
        let (d, p) = disk(false);
        let m = mem();
        header(&m, 0x1_0000, VIRTIO_BLK_T_IN, 0);
        for descs in [
            // header outside memory
            vec![
                D::new(0xffff_0000_0000, 16, NEXT, 1),
                D::new(0x3_0000, 1, WRITE, 0),
            ],
            // huge data length
            vec![
                D::new(0x1_0000, 16, NEXT, 1),
                D::new(0x4_0000, u32::MAX, WRITE | NEXT, 2),
                D::new(0x3_0000, 1, WRITE, 0),
            ],
            // no writable status
            vec![D::new(0x1_0000, 16, 0, 0)],
            // short header
            vec![D::new(0x1_0000, 4, NEXT, 1), D::new(0x3_0000, 1, WRITE, 0)],
            // data not a multiple of the sector size
            vec![
                D::new(0x1_0000, 16, NEXT, 1),
                D::new(0x4_0000, 100, WRITE | NEXT, 2),
                D::new(0x3_0000, 1, WRITE, 0),
            ],
            // data straddling the end of guest memory
            vec![
                D::new(0x1_0000, 16, NEXT, 1),
                D::new(0x1f_ff00, 512, WRITE | NEXT, 2),
                D::new(0x3_0000, 1, WRITE, 0),
            ],
        ] {
            let _ = request(&d, &m, &descs, 0x3_0000);
        }
        std::fs::remove_file(p).unwrap();
    }

    fn bucket(size: u64, refill_time: u64) -> Option<BucketConfig> {
        Some(BucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        })
    }

    /// Makes `n` 512-byte read requests of sector i available; request i's
    /// status byte is at `0x3_0000 + i`.
    fn add_reads(m: &GuestMemoryMmap, mq: &MockSplitQueue<GuestMemoryMmap>, n: u16) {
        let mut descs = Vec::new();
        for i in 0..n {
            let at = 0x1_0000 + u64::from(i) * 0x100;
            header(m, at, VIRTIO_BLK_T_IN, u64::from(i));
            let first = i * 3;
            descs.extend([
                D::new(at, 16, NEXT, first + 1),
                D::new(
                    0x4_0000 + u64::from(i) * 0x1000,
                    512,
                    WRITE | NEXT,
                    first + 2,
                ),
                D::new(0x3_0000 + u64::from(i), 1, WRITE, 0),
            ]);
        }
        let raw: Vec<RawDescriptor> = descs.into_iter().map(RawDescriptor::from).collect();
        mq.add_desc_chains(&raw, 0).unwrap();
        m.write_slice(&vec![0xffu8; usize::from(n)], GuestAddress(0x3_0000))
            .unwrap();
    }

    fn statuses(m: &GuestMemoryMmap, n: usize) -> Vec<u8> {
        let mut st = vec![0u8; n];
        m.read_slice(&mut st, GuestAddress(0x3_0000)).unwrap();
        st
    }

    fn block_worker(
        d: Disk,
        m: &GuestMemoryMmap,
        queue: Queue,
        rl: Option<RateLimiter>,
    ) -> BlockWorker {
        BlockWorker {
            mem: m.clone(),
            queue,
            irq: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            disk: Arc::new(d),
            buf: vec![0u8; MAX_REQUEST_BYTES],
            rate_limiter: rl.map(|rl| Arc::new(Mutex::new(rl))),
        }
    }

    #[test]
    fn ops_limit_defers_requests_until_the_timer() {
        let (d, p) = disk(false);
        let m = mem();
        let mq = MockSplitQueue::new(&m, 16);
        add_reads(&m, &mq, 5);
        // 2 ops per 60 ms: one more request every 30 ms once empty.
        let rl = RateLimiter::new(None, bucket(2, 60)).unwrap();
        let mut w = block_worker(d, &m, mq.create_queue().unwrap(), Some(rl));

        w.handle(QUEUE_TOKEN).unwrap();
        assert_eq!(w.queue.next_used(), 2);
        assert_eq!(w.queue.next_avail(), 2, "refused request left in the queue");
        assert_eq!(statuses(&m, 5), [0, 0, 0xff, 0xff, 0xff]);
        // A notification while throttled serves nothing.
        w.handle(QUEUE_TOKEN).unwrap();
        assert_eq!(w.queue.next_used(), 2);

        // The timer resumes the queue (an early timer event is spurious).
        let start = Instant::now();
        while w.queue.next_used() < 5 {
            assert!(start.elapsed() < Duration::from_secs(2), "timer stalled");
            std::thread::sleep(Duration::from_millis(2));
            w.handle(LIMITER_TOKEN).unwrap();
        }
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(w.queue.next_avail(), 5);
        assert_eq!(statuses(&m, 5), [VIRTIO_BLK_S_OK; 5]);
        let used_idx: u16 = m.read_obj(GuestAddress(mq.used_addr().0 + 2)).unwrap();
        assert_eq!(used_idx, 5);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bandwidth_limit_gives_the_op_back() {
        let (d, p) = disk(false);
        let m = mem();
        let mq = MockSplitQueue::new(&m, 16);
        add_reads(&m, &mq, 5);
        // Room for two 512-byte reads (no refill to speak of).
        let mut rl = RateLimiter::new(bucket(1024, 10_000_000), bucket(10, 10_000_000)).unwrap();
        let mut buf = vec![0u8; MAX_REQUEST_BYTES];
        let mut q: Queue = mq.create_queue().unwrap();
        let irq = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        process_queue_limited(&m, &mut q, &irq, &d, &mut buf, Some(&mut rl)).unwrap();
        assert_eq!((q.next_used(), q.next_avail()), (2, 2));
        assert!(rl.is_blocked());
        // Two ops charged, the third given back when the bytes were refused.
        assert_eq!(rl.ops().map(|b| b.budget()), Some(8));
        // Without a limiter the rest is served.
        process_queue(&m, &mut q, &irq, &d, &mut buf).unwrap();
        assert_eq!((q.next_used(), q.next_avail()), (5, 5));
        assert_eq!(statuses(&m, 5), [VIRTIO_BLK_S_OK; 5]);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn requests_are_charged_ops_and_data_bytes() {
        let (d, p) = disk(false);
        let m = mem();
        let mut rl =
            RateLimiter::new(bucket(100_000, 10_000_000), bucket(100, 10_000_000)).unwrap();
        let mut buf = vec![0u8; MAX_REQUEST_BYTES];
        let irq = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let mut run = |rl: &mut RateLimiter, descs: &[D]| {
            let mq = MockSplitQueue::new(&m, 16);
            let raw: Vec<RawDescriptor> = descs.iter().copied().map(RawDescriptor::from).collect();
            mq.build_desc_chain(&raw).unwrap();
            let mut q: Queue = mq.create_queue().unwrap();
            process_queue_limited(&m, &mut q, &irq, &d, &mut buf, Some(rl)).unwrap();
            assert_eq!(q.next_used(), 1);
            let bw = rl.bandwidth().map_or(0, |b| b.budget());
            let ops = rl.ops().map_or(0, |b| b.budget());
            (100_000 - bw, 100 - ops)
        };
        header(&m, 0x1_0000, VIRTIO_BLK_T_OUT, 0);
        let write = [
            D::new(0x1_0000, 16, NEXT, 1),
            D::new(0x2_0000, 1024, NEXT, 2),
            D::new(0x3_0000, 1, WRITE, 0),
        ];
        assert_eq!(run(&mut rl, &write), (1024, 1));
        header(&m, 0x1_0000, VIRTIO_BLK_T_FLUSH, 0);
        let flush = [D::new(0x1_0000, 16, NEXT, 1), D::new(0x3_0000, 1, WRITE, 0)];
        assert_eq!(run(&mut rl, &flush), (1024, 2));
        header(&m, 0x1_0000, VIRTIO_BLK_T_IN, 0);
        let read = [
            D::new(0x1_0000, 16, NEXT, 1),
            D::new(0x4_0000, 2048, WRITE | NEXT, 2),
            D::new(0x3_0000, 1, WRITE, 0),
        ];
        assert_eq!(run(&mut rl, &read), (3072, 3));
        // A chain without a status byte is not a request: free.
        assert_eq!(run(&mut rl, &[D::new(0x1_0000, 16, 0, 0)]), (3072, 3));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn activated_device_resumes_on_the_limiter_timer() {
        let (d, p) = disk(false);
        let m = mem();
        let mq = MockSplitQueue::new(&m, 16);
        add_reads(&m, &mq, 5);
        let rl = RateLimiter::new(None, bucket(2, 60)).unwrap();
        let mut blk = Block::new(d).rate_limiter(rl);
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        blk.activate(Activation {
            mem: m.clone(),
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            queues: vec![mq.create_queue().unwrap()],
            queue_evts: vec![kick.try_clone().unwrap()],
            acked_features: 0,
        })
        .unwrap();
        kick.write(1).unwrap();
        let start = Instant::now();
        loop {
            let used_idx: u16 = m.read_obj(GuestAddress(mq.used_addr().0 + 2)).unwrap();
            if used_idx == 5 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "stalled at {used_idx}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(blk.reset());
        assert_eq!(statuses(&m, 5), [VIRTIO_BLK_S_OK; 5]);
        std::fs::remove_file(p).unwrap();
    }
}

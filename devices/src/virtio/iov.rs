//! A request's data where it lies in guest memory, as iovecs: one vectored
//! system call moves it between a file and the guest, with no copy through
//! a buffer of the VMM.

use vm_memory::bitmap::{AtomicBitmap, Bitmap, RefSlice};
use vm_memory::{Address, GuestMemoryBackend, VolatileSlice};

use super::Chain;
use crate::GuestMemoryMmap;

/// Most iovecs one system call takes (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

type Slice<'a> = VolatileSlice<'a, RefSlice<'a, AtomicBitmap>>;

/// Guest memory behind a byte range of a descriptor chain.
pub struct GuestIo<'a> {
    slices: Vec<Slice<'a>>,
    iov: Vec<libc::iovec>,
}

impl<'a> GuestIo<'a> {
    /// Bytes `start..start + len` of the device-readable (`writable` false)
    /// or device-writable buffers of `chain`, in chain order. `None` when
    /// the buffers hold fewer bytes, one lies outside guest memory, or they
    /// take more iovecs than one system call accepts: the caller then goes
    /// through a buffer of its own.
    pub fn new(
        mem: &'a GuestMemoryMmap,
        chain: Chain<'a>,
        writable: bool,
        start: usize,
        len: usize,
    ) -> Option<Self> {
        let end = start.checked_add(len)?;
        let mut slices = Vec::new();
        let mut pos = 0usize;
        for d in chain.filter(|d| d.is_write_only() == writable) {
            if pos >= end {
                break;
            }
            let dlen = d.len() as usize;
            let next = pos.checked_add(dlen)?;
            let from = start.max(pos);
            let to = end.min(next);
            if from < to {
                let addr = d.addr().checked_add((from - pos) as u64)?;
                for s in mem.get_slices(addr, to - from) {
                    slices.push(s.ok()?);
                }
            }
            pos = next;
        }
        if pos < end || slices.len() > IOV_MAX {
            return None;
        }
        let iov = slices
            .iter()
            .map(|s| libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        Some(GuestIo { slices, iov })
    }

    /// Reads the whole range from `file` at `offset` (preadv, repeated on a
    /// short read), and marks the pages written for dirty-page tracking.
    pub fn read_from(&mut self, file: &std::fs::File, offset: u64) -> std::io::Result<()> {
        let res = self.transfer(file, offset, false);
        // Also after a failure: part of the range may have been written.
        for s in &self.slices {
            s.bitmap().mark_dirty(0, s.len());
        }
        res
    }

    /// Writes the whole range to `file` at `offset` (pwritev, repeated on a
    /// short write).
    pub fn write_to(&mut self, file: &std::fs::File, offset: u64) -> std::io::Result<()> {
        self.transfer(file, offset, true)
    }

    fn transfer(&mut self, file: &std::fs::File, offset: u64, write: bool) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let mut iov: &mut [libc::iovec] = &mut self.iov;
        let mut off = offset;
        while !iov.is_empty() {
            let pos = libc::off_t::try_from(off).map_err(|_| std::io::ErrorKind::InvalidInput)?;
            // SAFETY: every iovec covers a range of guest memory that
            // `self.slices` keeps mapped; the kernel only touches those
            // ranges, and at most `iov.len()` (<= IOV_MAX) iovecs.
            let n = unsafe {
                if write {
                    libc::pwritev(fd, iov.as_ptr(), iov.len() as libc::c_int, pos)
                } else {
                    libc::preadv(fd, iov.as_ptr(), iov.len() as libc::c_int, pos)
                }
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            off += n as u64;
            iov = advance(iov, n as usize);
        }
        Ok(())
    }
}

/// `iov` without its first `n` bytes (what a short `readv`/`writev` left).
pub fn advance(iov: &mut [libc::iovec], mut n: usize) -> &mut [libc::iovec] {
    let mut skip = 0;
    while skip < iov.len() && n >= iov[skip].iov_len {
        n -= iov[skip].iov_len;
        skip += 1;
    }
    let rest = &mut iov[skip..];
    if let Some(first) = rest.first_mut() {
        // SAFETY: `n` < this iovec's length, so the new base stays inside it.
        first.iov_base = unsafe { first.iov_base.cast::<u8>().add(n) }.cast();
        first.iov_len -= n;
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use virtio_queue::desc::{split::Descriptor as D, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryRegion};

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn with_chain<R>(m: &GuestMemoryMmap, descs: &[D], f: impl FnOnce(Chain<'_>) -> R) -> R {
        let mq = MockSplitQueue::new(m, 16);
        let raw: Vec<RawDescriptor> = descs.iter().copied().map(RawDescriptor::from).collect();
        mq.build_desc_chain(&raw).unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(m).unwrap();
        f(chain)
    }

    fn file_with(data: &[u8]) -> std::fs::File {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("condo-iov-{}-{n}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        f.write_all(data).unwrap();
        f
    }

    #[test]
    fn a_range_across_buffers_reads_and_writes_in_place() {
        let m = mem();
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let f = file_with(&data);
        // A 16-byte readable header, then writable 1000 + 2000 + 1 bytes.
        let descs = [
            D::new(0x1000, 16, NEXT, 1),
            D::new(0x4000, 1000, WRITE | NEXT, 2),
            D::new(0x8000, 2000, WRITE | NEXT, 3),
            D::new(0xc000, 1, WRITE, 0),
        ];
        with_chain(&m, &descs, |c| {
            let mut io = GuestIo::new(&m, c, true, 0, 3000).unwrap();
            assert_eq!(io.iov.len(), 2);
            io.read_from(&f, 0).unwrap();
        });
        let mut got = vec![0u8; 3000];
        m.read_slice(&mut got[..1000], GuestAddress(0x4000))
            .unwrap();
        m.read_slice(&mut got[1000..], GuestAddress(0x8000))
            .unwrap();
        assert_eq!(got, data);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0xc000)).unwrap(),
            0,
            "status untouched"
        );
        // Pages written behind vm-memory's back are marked for diff snapshots.
        let bitmap = m.find_region(GuestAddress(0)).unwrap().bitmap();
        assert!(bitmap.dirty_at(0x4000) && bitmap.dirty_at(0x8000 + 1999));
        assert!(!bitmap.dirty_at(0xc000));

        // The readable side, from byte 8 on: the header's tail.
        m.write_slice(&[7u8; 16], GuestAddress(0x1000)).unwrap();
        with_chain(&m, &descs, |c| {
            let mut io = GuestIo::new(&m, c, false, 8, 8).unwrap();
            io.write_to(&f, 100).unwrap();
        });
        let mut back = vec![0u8; 10];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut back, 99).unwrap();
        assert_eq!(back, [data[99], 7, 7, 7, 7, 7, 7, 7, 7, data[108]]);
    }

    #[test]
    fn short_or_outside_ranges_are_refused() {
        let m = mem();
        let descs = [
            D::new(0x1000, 16, NEXT, 1),
            D::new(0xf_ff00, 0x200, WRITE, 0), // runs past the end of memory
        ];
        with_chain(&m, &descs, |c| {
            assert!(GuestIo::new(&m, c, true, 0, 0x200).is_none())
        });
        let descs = [D::new(0x1000, 16, NEXT, 1), D::new(0x2000, 100, WRITE, 0)];
        with_chain(&m, &descs, |c| {
            assert!(GuestIo::new(&m, c, true, 0, 101).is_none())
        });
        with_chain(&m, &descs, |c| {
            assert!(GuestIo::new(&m, c, true, usize::MAX, 2).is_none())
        });
        with_chain(&m, &descs, |c| {
            assert!(GuestIo::new(&m, c, false, 0, 17).is_none())
        });
    }

    #[test]
    fn a_file_shorter_than_the_read_fails() {
        let m = mem();
        let f = file_with(&[1u8; 100]);
        let descs = [D::new(0x2000, 512, WRITE, 0)];
        with_chain(&m, &descs, |c| {
            let mut io = GuestIo::new(&m, c, true, 0, 512).unwrap();
            assert_eq!(
                io.read_from(&f, 0).unwrap_err().kind(),
                std::io::ErrorKind::UnexpectedEof
            );
        });
    }

    #[test]
    fn advance_skips_whole_and_partial_iovecs() {
        let mut buf = [0u8; 30];
        let base = buf.as_mut_ptr();
        let mut iov = [
            libc::iovec {
                iov_base: base.cast(),
                iov_len: 10,
            },
            libc::iovec {
                iov_base: base.wrapping_add(10).cast(),
                iov_len: 20,
            },
        ];
        let rest = advance(&mut iov, 13);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].iov_len, 17);
        assert_eq!(rest[0].iov_base.cast::<u8>(), base.wrapping_add(13));
        assert!(advance(&mut iov, 30).is_empty());
    }
}

//! Snapshot memory files: guest RAM written out (sparse: all-zero
//! stretches are holes; a diff snapshot writes only the pages dirtied
//! since the last one, in place), and mapped back privately (pages load
//! when the guest touches them, and several VMs restored from one file
//! share nothing they write), with the file's data read ahead of the
//! guest on a thread of its own.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use devices::GuestMemoryMmap;
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion,
    GuestRegionMmap,
};

use super::{MemoryRegionState, SnapshotError};

/// The guest RAM layout of `mem`.
pub fn regions_of(mem: &GuestMemoryMmap) -> Vec<MemoryRegionState> {
    mem.iter()
        .map(|r| MemoryRegionState {
            base: r.start_addr().0,
            size: r.len(),
        })
        .collect()
}

/// Writes guest RAM to `path`, region after region, leaving all-zero MiBs
/// as holes. With `anonymous` RAM, MiBs with no resident page are known
/// to be zero without reading them (not so for RAM mapped from a file: a
/// restored VM's pages may be non-zero yet not resident).
pub fn write_memory(mem: &GuestMemoryMmap, path: &Path, anonymous: bool) -> std::io::Result<()> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    let f = std::fs::File::create(path)?;
    f.set_len(total)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    for r in mem.iter() {
        let mut done = 0u64;
        while done < r.len() {
            let n = (r.len() - done).min(buf.len() as u64) as usize;
            let at = r.start_addr().unchecked_add(done);
            if anonymous && !any_resident(mem, at, n) {
                // Never touched (or given back by the balloon): zero.
                done += n as u64;
                continue;
            }
            mem.read_slice(&mut buf[..n], at)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if buf[..n].iter().any(|&b| b != 0) {
                f.write_all_at(&buf[..n], off + done)?;
            }
            done += n as u64;
        }
        off += r.len();
    }
    f.sync_all()
}

/// Writes the pages dirtied since the last snapshot into `path` at their
/// places (a diff snapshot): pages the guest wrote (`kvm_logs`, one KVM
/// dirty bitmap per region, a bit per 4 KiB page) and pages the devices
/// wrote (vm-memory's bitmap). The file is not truncated, so pointing it at
/// a copy of the previous snapshot's memory file gives a complete one.
pub fn write_dirty_memory(
    mem: &GuestMemoryMmap,
    path: &Path,
    kvm_logs: &[Vec<u64>],
) -> std::io::Result<()> {
    use vm_memory::bitmap::Bitmap;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if f.metadata()?.len() < total {
        f.set_len(total)?;
    }
    let mut page = vec![0u8; 4096];
    let mut off = 0u64;
    for (r, log) in mem.iter().zip(kvm_logs) {
        let pages = r.len() / 4096;
        for p in 0..pages {
            let by_guest = log
                .get((p / 64) as usize)
                .is_some_and(|w| w >> (p % 64) & 1 != 0);
            let by_device = r.bitmap().dirty_at((p * 4096) as usize);
            if !(by_guest || by_device) {
                continue;
            }
            let at = r.start_addr().unchecked_add(p * 4096);
            mem.read_slice(&mut page, at)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            f.write_all_at(&page, off + p * 4096)?;
        }
        off += r.len();
    }
    f.sync_all()
}

/// Whether any page of guest range `at..at+len` is resident (mincore);
/// true when that cannot be told.
pub(crate) fn any_resident(mem: &GuestMemoryMmap, at: GuestAddress, len: usize) -> bool {
    let Ok(slice) = mem.get_slice(at, len) else {
        return true;
    };
    let ptr = slice.ptr_guard().as_ptr();
    let pages = len.div_ceil(4096);
    let mut vec = vec![0u8; pages];
    // SAFETY: `ptr..ptr+len` is a page-aligned range of a live guest RAM
    // mapping (regions and the 1 MiB steps are page aligned); mincore only
    // writes `pages` bytes into `vec`.
    let r = unsafe { libc::mincore(ptr.cast_mut().cast(), len, vec.as_mut_ptr()) };
    r != 0 || vec.iter().any(|&b| b & 1 != 0)
}

/// Maps a memory file privately as guest RAM with the given layout.
pub fn map_memory(
    path: &Path,
    regions: &[MemoryRegionState],
) -> Result<GuestMemoryMmap, SnapshotError> {
    let err = |e: String| SnapshotError::Memory {
        path: path.display().to_string(),
        err: e,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let size = file.metadata().map_err(|e| err(e.to_string()))?.len();
    let total = regions
        .iter()
        .try_fold(0u64, |a, r| a.checked_add(r.size))
        .ok_or_else(|| err("bad memory layout".into()))?;
    if size != total {
        return Err(err(format!(
            "{size} bytes, but the snapshot's guest has {total}"
        )));
    }
    let mut mapped = Vec::new();
    let mut off = 0u64;
    for &MemoryRegionState {
        base: gpa,
        size: len,
    } in regions
    {
        let f = file.try_clone().map_err(|e| err(e.to_string()))?;
        let bitmap = <AtomicBitmap as NewBitmap>::with_len(len as usize);
        let region = MmapRegionBuilder::new_with_bitmap(len as usize, bitmap)
            .with_file_offset(FileOffset::new(f, off))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| err(e.to_string()))?;
        mapped.push(
            GuestRegionMmap::new(region, GuestAddress(gpa))
                .ok_or_else(|| err("region overflows the address space".into()))?,
        );
        off += len;
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| err(e.to_string()))
}

/// How much one `madvise` of the read-ahead brings in: small enough that
/// the guest's own first touches, handled by the same kernel, are not held
/// up behind a long call.
const READ_AHEAD_CHUNK: u64 = 2 << 20;

/// The stretches of `file` (of `len` bytes) that hold data, in file
/// order, as `(offset, length)`: what SEEK_DATA and SEEK_HOLE say, the
/// rest of the file when the file system cannot tell.
fn data_ranges(file: &std::fs::File, len: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let Ok(at) = libc::off_t::try_from(pos) else {
            break;
        };
        // SAFETY: lseek on a descriptor `file` owns, with no pointer
        // arguments; it moves only that descriptor's offset, which nothing
        // reads by (the guest's RAM is a mapping of the file).
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            // ENXIO: no data after `pos`; anything else: cannot tell.
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO) {
                out.push((pos, len - pos));
            }
            break;
        }
        let data = data as u64;
        if data >= len {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let end = if hole < 0 {
            len
        } else {
            (hole as u64).min(len)
        };
        if end <= data {
            break;
        }
        out.push((data, end - data));
        pos = end;
    }
    out
}

/// The `madvise` calls of a read-ahead: each data range of the memory
/// file cut at region boundaries (regions are `(file offset, length)`,
/// back to back) and into `chunk`s, as (region index, offset in the
/// region, length).
fn read_ahead_spans(
    data: &[(u64, u64)],
    regions: &[(u64, u64)],
    chunk: u64,
) -> Vec<(usize, u64, u64)> {
    let mut out = Vec::new();
    for &(start, len) in data {
        let end = start.saturating_add(len);
        for (i, &(off, rlen)) in regions.iter().enumerate() {
            let from = start.max(off);
            let to = end.min(off.saturating_add(rlen));
            let mut at = from;
            while at < to {
                let n = (to - at).min(chunk.max(4096));
                out.push((i, at - off, n));
                at += n;
            }
        }
    }
    out
}

/// Starts bringing the memory file's data into guest RAM's mapping ahead
/// of the guest, on a thread of its own (under the VMM thread's seccomp
/// filter) so that the load is answered without waiting for it. The data
/// goes in file order, low guest addresses first, where the kernel and
/// its data live. `MADV_POPULATE_READ` maps each page read-only, still
/// shared with the page cache and any other VM restored from the file (a
/// guest write copies it, as before), so the guest's first reads fault
/// into KVM only, not into the host's memory manager too; where the host
/// kernel predates it (Linux 5.14), `MADV_WILLNEED` at least fills the
/// page cache. KVM's own faults stay (one per page the guest reads, one
/// more when it writes): only copying the data (`MADV_POPULATE_WRITE`, or
/// into anonymous huge pages) spares those, at the cost of the sharing
/// (benches/results/snapshot.md). Holes are skipped: they read as zero
/// anyway. The thread
/// holds a clone of `mem`, so the mapping outlives it; failing to start
/// it costs only the head start. The thread's handle yields how many
/// bytes it read ahead.
pub fn start_read_ahead(
    mem: &GuestMemoryMmap,
    path: &Path,
) -> Option<std::thread::JoinHandle<Option<u64>>> {
    let file = std::fs::File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    let mem = mem.clone();
    let run = move || {
        let t = std::time::Instant::now();
        let mut regions = Vec::new();
        let mut off = 0u64;
        for r in mem.iter() {
            regions.push((off, r.len()));
            off += r.len();
        }
        let data = data_ranges(&file, meta.len().min(off));
        drop(file);
        let mut advice = libc::MADV_POPULATE_READ;
        let mut bytes = 0u64;
        for (i, at, len) in read_ahead_spans(&data, &regions, READ_AHEAD_CHUNK) {
            let Some(r) = mem.iter().nth(i) else { break };
            // SAFETY: `at..at+len` lies inside region `i` (the spans are
            // cut at its length), a live mapping: this thread holds a clone
            // of `mem`, which keeps it mapped. Populating or advising reads
            // pages in; it changes no contents.
            let ok = unsafe {
                let p = r.as_ptr().add(at as usize).cast::<libc::c_void>();
                let mut rc = libc::madvise(p, len as usize, advice);
                if rc != 0 && advice == libc::MADV_POPULATE_READ {
                    advice = libc::MADV_WILLNEED;
                    rc = libc::madvise(p, len as usize, advice);
                }
                rc == 0
            };
            if !ok {
                break;
            }
            bytes += len;
        }
        tracing::debug!(
            bytes,
            us = t.elapsed().as_micros() as u64,
            "memory read ahead"
        );
        bytes
    };
    crate::seccomp::spawn("read-ahead".into(), crate::seccomp::ThreadKind::Vmm, run)
        .map_err(|e| tracing::warn!("no read-ahead of the snapshot's memory: {e}"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_round_trips_privately_and_sparsely() {
        let dir = std::env::temp_dir().join(format!("condo-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m");
        let layout = [(0u64, 4u64 << 20), (8 << 20, 2 << 20)];
        let mem = GuestMemoryMmap::from_ranges(
            &layout
                .iter()
                .map(|&(a, l)| (GuestAddress(a), l as usize))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1234))
            .unwrap();
        mem.write_obj(0x55u8, GuestAddress((9 << 20) + 7)).unwrap();
        write_memory(&mem, &p, true).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 6 << 20);
        let layout: Vec<MemoryRegionState> = layout
            .iter()
            .map(|&(base, size)| MemoryRegionState { base, size })
            .collect();
        assert_eq!(regions_of(&mem), layout);
        let a = map_memory(&p, &layout).unwrap();
        let b = map_memory(&p, &layout).unwrap();
        assert_eq!(
            a.read_obj::<u32>(GuestAddress(0x1234)).unwrap(),
            0xdead_beef
        );
        assert_eq!(a.read_obj::<u8>(GuestAddress((9 << 20) + 7)).unwrap(), 0x55);
        // Clones are independent, and the file is left alone.
        a.write_obj(1u32, GuestAddress(0x1234)).unwrap();
        assert_eq!(
            b.read_obj::<u32>(GuestAddress(0x1234)).unwrap(),
            0xdead_beef
        );
        let c = map_memory(&p, &layout).unwrap();
        assert_eq!(
            c.read_obj::<u32>(GuestAddress(0x1234)).unwrap(),
            0xdead_beef
        );
        // A snapshot of restored (file-backed) memory keeps its contents.
        let p2 = dir.join("m2");
        write_memory(&c, &p2, false).unwrap();
        let e = map_memory(&p2, &layout).unwrap();
        assert_eq!(e.read_obj::<u8>(GuestAddress((9 << 20) + 7)).unwrap(), 0x55);
        // A memory file of the wrong size.
        let small = [MemoryRegionState {
            base: 0,
            size: 1 << 20,
        }];
        assert!(map_memory(&p, &small).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn read_ahead_spans_cut_at_regions_and_chunks() {
        // Regions of 4 MiB and 2 MiB back to back in the file.
        let regions = [(0, 4 << 20), (4 << 20, 2 << 20)];
        let data = [(1 << 20, 1 << 20), (3 << 20, 2 << 20 | 4096)];
        assert_eq!(
            read_ahead_spans(&data, &regions, 1 << 20),
            vec![
                (0, 1 << 20, 1 << 20),
                (0, 3 << 20, 1 << 20),
                (1, 0, 1 << 20),
                (1, 1 << 20, 4096),
            ]
        );
        // Data past the regions (a file longer than the layout) is left.
        assert!(read_ahead_spans(&[(6 << 20, 4096)], &regions, 1 << 20).is_empty());
        // A zero chunk still moves on.
        assert_eq!(read_ahead_spans(&[(0, 8192)], &regions, 0).len(), 2);
    }

    #[test]
    fn read_ahead_finds_the_data_and_leaves_it_unchanged() {
        let dir = std::env::temp_dir().join(format!("condo-ra-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m");
        let layout = [(0u64, 4u64 << 20), (8 << 20, 4 << 20)];
        let mem = GuestMemoryMmap::from_ranges(
            &layout
                .iter()
                .map(|&(a, l)| (GuestAddress(a), l as usize))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        mem.write_obj(0x1122_3344_u32, GuestAddress(0x10)).unwrap();
        mem.write_obj(0x77u8, GuestAddress((10 << 20) + 5)).unwrap();
        write_memory(&mem, &p, true).unwrap();
        let file = std::fs::File::open(&p).unwrap();
        let ranges = data_ranges(&file, 8 << 20);
        // Every written MiB is data; a file system that can tell holes
        // leaves the untouched ones out.
        let covered = |at: u64| ranges.iter().any(|&(o, l)| o <= at && at < o + l);
        assert!(covered(0x10) && covered((6 << 20) + 5), "{ranges:?}");
        assert!(ranges.iter().map(|r| r.1).sum::<u64>() <= 8 << 20);
        assert!(ranges.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
        let layout: Vec<MemoryRegionState> = layout
            .iter()
            .map(|&(base, size)| MemoryRegionState { base, size })
            .collect();
        let a = map_memory(&p, &layout).unwrap();
        let read = start_read_ahead(&a, &p).expect("thread").join().unwrap();
        assert!(read.is_some_and(|b| b >= 2 << 20), "{read:?}");
        assert_eq!(a.read_obj::<u32>(GuestAddress(0x10)).unwrap(), 0x1122_3344);
        assert_eq!(
            a.read_obj::<u8>(GuestAddress((10 << 20) + 5)).unwrap(),
            0x77
        );
        // Still private: a write reaches neither the file nor a clone.
        a.write_obj(9u32, GuestAddress(0x10)).unwrap();
        let b = map_memory(&p, &layout).unwrap();
        assert_eq!(b.read_obj::<u32>(GuestAddress(0x10)).unwrap(), 0x1122_3344);
        // No file, no thread, no error.
        assert!(start_read_ahead(&a, &dir.join("gone")).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

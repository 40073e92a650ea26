//! Snapshot memory files: guest RAM written out (sparse: all-zero
//! stretches are holes; a diff snapshot writes only the pages dirtied
//! since the last one, in place), and mapped back privately (pages load
//! when the guest touches them, and several VMs restored from one file
//! share nothing they write).

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
    let mut written = Ok(());
    for_each_dirty(mem, kvm_logs, |d| {
        let at = d.region.start_addr().unchecked_add(d.page * 4096);
        written = mem
            .read_slice(&mut page, at)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|()| f.write_all_at(&page, d.file_page * 4096));
        written.is_ok()
    });
    written?;
    f.sync_all()
}

/// A page written since the dirty logs were last read.
pub(crate) struct DirtyPage<'a> {
    pub region: &'a GuestRegionMmap<AtomicBitmap>,
    /// Its index in `region`.
    pub page: u64,
    /// Its index in a memory file (regions one after another).
    pub file_page: u64,
    /// Written by a device (vm-memory's bitmap), not only by the guest.
    pub by_device: bool,
}

/// Calls `f` for every 4 KiB page of `mem` written since the logs were
/// last read, in address order: by the guest (`kvm_logs`, one KVM dirty
/// bitmap per region, a bit per page) or by the devices (vm-memory's
/// bitmap). Stops when `f` returns false.
pub(crate) fn for_each_dirty(
    mem: &GuestMemoryMmap,
    kvm_logs: &[Vec<u64>],
    mut f: impl FnMut(DirtyPage<'_>) -> bool,
) {
    use vm_memory::bitmap::Bitmap;
    let mut base = 0u64;
    for (region, log) in mem.iter().zip(kvm_logs) {
        let pages = region.len() / 4096;
        for page in 0..pages {
            let by_guest = log
                .get((page / 64) as usize)
                .is_some_and(|w| w >> (page % 64) & 1 != 0);
            let by_device = region.bitmap().dirty_at((page * 4096) as usize);
            if (by_guest || by_device)
                && !f(DirtyPage {
                    region,
                    page,
                    file_page: base + page,
                    by_device,
                })
            {
                return;
            }
        }
        base += pages;
    }
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
}

//! Guest RAM: allocation and registration with KVM.
//!
//! RAM is anonymous, private, `MAP_NORESERVE` memory (host pages are only
//! used once the guest touches them), split around the 32-bit MMIO gap as
//! `arch::guest_ram_regions` lays it out.
//!
//! It is backed by transparent huge pages where the host allows them
//! (`madvise(MADV_HUGEPAGE)`, as QEMU and Cloud Hypervisor do): a 2 MiB
//! page is one host fault and one nested-paging entry where 4 KiB pages
//! take 512 of each. Under nested virtualization each such fault is an
//! exit to the outer hypervisor, and a guest filling 128 MiB of page
//! cache takes 32,768 of them (in the test host, the guest's 128 MiB
//! disk write went from 11 to 34 MB/s). KVM maps a 2 MiB page only where
//! the host address is 2 MiB aligned like the guest address, so each
//! region starts on a 2 MiB boundary of the host. Those mappings last as
//! long as the process, which runs one VM (vm-memory does not own them).
//! The balloon still returns 4 KiB pages: `MADV_DONTNEED` splits a huge
//! page.

use devices::{GuestMemoryMmap, GuestRegionMmap};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch;

/// The huge page size that guest RAM is aligned to.
const HUGE_PAGE: usize = 2 << 20;

/// Errors setting up guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate {mib} MiB of guest memory: {err}")]
    Alloc { mib: u64, err: String },
    #[error("cannot register guest memory with KVM: {0}")]
    Register(kvm_ioctls::Error),
}

/// Allocates `bytes` of guest RAM, 2 MiB aligned and advised as huge
/// pages.
pub fn create(bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let fail = |err: String| MemoryError::Alloc {
        mib: bytes >> 20,
        err,
    };
    let mut regions = Vec::new();
    for (start, len) in arch::guest_ram_regions(bytes) {
        let host = map_huge_aligned(len).map_err(|e| fail(e.to_string()))?;
        // SAFETY: `host` is a fresh private anonymous mapping of `len`
        // bytes, never unmapped, that nothing else refers to.
        let region = unsafe {
            MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
                .with_raw_mmap_pointer(host)
        }
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
        .build()
        .map_err(|e| fail(e.to_string()))?;
        regions.push(
            GuestRegionMmap::new(region, start)
                .ok_or_else(|| fail("region overflows the address space".into()))?,
        );
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| fail(e.to_string()))
}

/// Maps `len` bytes of private anonymous memory at a 2 MiB boundary and
/// asks for transparent huge pages there (refused where the host has them
/// off: the memory is then 4 KiB pages, as before).
fn map_huge_aligned(len: usize) -> std::io::Result<*mut u8> {
    let total = len
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a new anonymous mapping at an address the kernel picks.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let start = p as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let end = aligned + len;
    // SAFETY: the slack before and after the aligned range is part of the
    // mapping just made, and nothing refers to it.
    unsafe {
        if aligned > start {
            libc::munmap(p, aligned - start);
        }
        if start + total > end {
            libc::munmap(end as *mut libc::c_void, start + total - end);
        }
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    Ok(aligned as *mut u8)
}

/// Allocates RAM at explicit ranges (the probe guest uses a tiny one).
pub fn create_regions(
    regions: &[(GuestAddress, usize)],
    bytes: u64,
) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(regions).map_err(|e| MemoryError::Alloc {
        mib: bytes >> 20,
        err: e.to_string(),
    })
}

/// Makes every region of `mem` guest-physical memory of `vm`.
/// With `track_dirty`, KVM logs the pages the guest writes (for diff
/// snapshots).
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap, track_dirty: bool) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| MemoryError::Alloc {
                mib: region.len() >> 20,
                err: e.to_string(),
            })?;
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: if track_dirty {
                kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the host range is a live mapping owned by `mem`, which the
        // caller keeps alive for as long as the VM exists.
        unsafe { vm.set_user_memory_region(desc) }.map_err(MemoryError::Register)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ram_is_huge_page_aligned_on_the_host_and_usable() {
        let bytes = 64u64 << 20;
        let mem = create(bytes).unwrap();
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), bytes);
        for r in mem.iter() {
            let host = mem.get_host_address(r.start_addr()).unwrap() as usize;
            assert_eq!(host % HUGE_PAGE, 0);
        }
        let last = GuestAddress(bytes - 8);
        mem.write_obj(0x1234_5678_u64, last).unwrap();
        assert_eq!(mem.read_obj::<u64>(last).unwrap(), 0x1234_5678);
        // Fresh memory reads as zeroes.
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0)).unwrap(), 0);
    }
}

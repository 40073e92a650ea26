//! Guest RAM: allocation and registration with KVM.
//!
//! RAM is anonymous, private, `MAP_NORESERVE` memory (host pages are only
//! used once the guest touches them), split around the 32-bit MMIO gap as
//! `arch::guest_ram_regions` lays it out.
//!
//! By default it is backed by transparent huge pages where the host allows
//! them (`madvise(MADV_HUGEPAGE)`, as QEMU and Cloud Hypervisor do): a 2 MiB
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
//!
//! [`HugePages`] (Firecracker's `huge_pages`) chooses: `None` refuses
//! transparent huge pages (`MADV_NOHUGEPAGE`: the host keeps only the
//! 4 KiB pages a guest touched, the densest choice for many idle guests),
//! `2M` takes hugetlbfs pages from the host's reserved pool, all of them
//! when the VM starts (a pool too small is an error then, not a SIGBUS at
//! a later guest access).

use devices::{GuestMemoryMmap, GuestRegionMmap};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch;
use crate::config::HugePages;

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

/// Allocates `bytes` of guest RAM as `huge` asks, each region 2 MiB
/// aligned on the host.
pub fn create(bytes: u64, huge: HugePages) -> Result<GuestMemoryMmap, MemoryError> {
    let fail = |err: String| MemoryError::Alloc {
        mib: bytes >> 20,
        err,
    };
    let mut regions = Vec::new();
    for (start, len) in arch::guest_ram_regions(bytes) {
        let (host, flags) = match huge {
            HugePages::Hugetlb2M => (map_hugetlb(len)?, HUGETLB_FLAGS),
            _ => (
                map_huge_aligned(len, huge).map_err(|e| fail(e.to_string()))?,
                ANON_FLAGS,
            ),
        };
        // SAFETY: `host` is a fresh private anonymous mapping of `len`
        // bytes, never unmapped, that nothing else refers to.
        let region = unsafe {
            MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
                .with_raw_mmap_pointer(host)
        }
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .build()
        .map_err(|e| fail(e.to_string()))?;
        regions.push(
            GuestRegionMmap::new(region, start)
                .ok_or_else(|| fail("region overflows the address space".into()))?,
        );
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| fail(e.to_string()))
}

/// A hugetlbfs mapping: the pages are reserved from the host's pool when
/// it is made (no `MAP_NORESERVE`: a pool that runs dry later would kill
/// the VMM with SIGBUS at a guest access).
const HUGETLB_FLAGS: i32 =
    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;

/// Maps `len` bytes of 2 MiB hugetlbfs pages, failing with the pool's
/// state when it has too few free.
fn map_hugetlb(len: usize) -> Result<*mut u8, MemoryError> {
    // SAFETY: a new anonymous mapping at an address the kernel picks.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            HUGETLB_FLAGS,
            -1,
            0,
        )
    };
    if p != libc::MAP_FAILED {
        return Ok(p.cast());
    }
    let err = std::io::Error::last_os_error();
    let free = pool_free_pages().map_or_else(|| "unknown".into(), |n| n.to_string());
    Err(MemoryError::Alloc {
        mib: (len >> 20) as u64,
        err: format!(
            "{err}: 2M huge pages needs {} free 2 MiB pages in the host's pool, which has {free} \
             (reserve more with sysctl vm.nr_hugepages)",
            len / HUGE_PAGE
        ),
    })
}

/// Free pages in the host's 2 MiB hugetlbfs pool (`HugePages_Free`).
fn pool_free_pages() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))?
        .trim()
        .parse()
        .ok()
}

/// Lazily backed guest RAM: host pages are only used once touched.
const ANON_FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// Maps `len` bytes of private anonymous memory at a 2 MiB boundary and
/// advises the kernel: transparent huge pages for `Transparent` (ignored
/// where the host has them off), none for `None`.
fn map_huge_aligned(len: usize, huge: HugePages) -> std::io::Result<*mut u8> {
    let total = len
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a new anonymous mapping at an address the kernel picks.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            ANON_FLAGS,
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
        let advice = match huge {
            HugePages::None => libc::MADV_NOHUGEPAGE,
            _ => libc::MADV_HUGEPAGE,
        };
        libc::madvise(aligned as *mut libc::c_void, len, advice);
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
        let mem = create(bytes, HugePages::Transparent).unwrap();
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

    /// The `VmFlags` of the mapping that starts at `host` (/proc/self/smaps).
    fn vm_flags(host: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{host:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        lines
            .find_map(|l| l.strip_prefix("VmFlags:").map(str::to_owned))
            .unwrap()
    }

    #[test]
    fn huge_pages_choice_reaches_the_kernel() {
        let bytes = 32u64 << 20;
        for (huge, flag) in [(HugePages::Transparent, "hg"), (HugePages::None, "nh")] {
            let mem = create(bytes, huge).unwrap();
            let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
            let flags = vm_flags(host);
            assert!(
                flags.split_whitespace().any(|f| f == flag),
                "{huge:?}: {flags}"
            );
        }
    }

    #[test]
    fn hugetlb_memory_or_a_clear_error() {
        let free = pool_free_pages().unwrap_or(0);
        let bytes = 4u64 << 20;
        match create(bytes, HugePages::Hugetlb2M) {
            Ok(mem) => {
                assert!(free >= 2, "mapped with {free} free huge pages");
                let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
                assert_eq!(host % HUGE_PAGE, 0);
                assert!(vm_flags(host).split_whitespace().any(|f| f == "ht"));
                mem.write_obj(7u64, GuestAddress(bytes - 8)).unwrap();
            }
            Err(e) => {
                let e = e.to_string();
                assert!(free < 2, "{e} with {free} free huge pages");
                assert!(e.contains("vm.nr_hugepages") && e.contains("has"), "{e}");
            }
        }
    }
}

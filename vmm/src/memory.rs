//! Guest RAM: allocation and registration with KVM.
//!
//! RAM is anonymous, private, `MAP_NORESERVE` memory (host pages are only
//! used once the guest touches them), split around the 32-bit MMIO gap as
//! `arch::guest_ram_regions` lays it out.

use devices::GuestMemoryMmap;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch;

/// Errors setting up guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate {mib} MiB of guest memory: {err}")]
    Alloc { mib: u64, err: String },
    #[error("cannot register guest memory with KVM: {0}")]
    Register(kvm_ioctls::Error),
}

/// Allocates `bytes` of guest RAM.
pub fn create(bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    create_regions(&arch::guest_ram_regions(bytes), bytes)
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

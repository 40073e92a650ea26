//! Snapshot files: the machine state, and guest memory.
//!
//! The state file is `CONDOSNP`, a format version, the body's length and
//! its CRC-32, then the body (JSON: the VM's configuration in Firecracker's
//! shape, every vCPU, the interrupt controllers, PIT and clock, the UART
//! and every virtio transport). A file that is not a condo snapshot, of
//! another version, truncated or corrupted is refused with one clear
//! error. The memory file is guest RAM, region after region; pages that are
//! all zero are left as holes, so the file is sparse. Restoring maps it
//! privately: pages load when the guest touches them, and several VMs
//! restored from one snapshot share nothing they write.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use devices::legacy::SerialSnapshot;
use devices::virtio::mmio::TransportState;
use devices::GuestMemoryMmap;
use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::config::FirecrackerConfig;
use crate::vcpu::VcpuState;

const MAGIC: &[u8; 8] = b"CONDOSNP";
/// The state format this build writes and reads.
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// Largest state body accepted (the real ones are tens of KiB per vCPU).
const MAX_BODY: u64 = 64 << 20;

/// Why a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read snapshot {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{0} is not a condo snapshot")]
    NotSnapshot(String),
    #[error("snapshot {path} has format version {found}; this condo reads version {VERSION}")]
    Version { path: String, found: u32 },
    #[error("snapshot {0} is truncated or corrupted (checksum mismatch)")]
    Corrupt(String),
    #[error("snapshot: {0}")]
    Invalid(String),
    #[error("memory file {path}: {err}")]
    Memory { path: String, err: String },
}

/// The machine state in a snapshot.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub(crate) config: FirecrackerConfig,
    /// Guest RAM regions (guest address, length), in memory-file order.
    pub mem_regions: Vec<(u64, u64)>,
    pub vcpus: Vec<VcpuState>,
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
    pub serial: SerialSnapshot,
    pub transports: Vec<TransportState>,
}

/// CRC-32 (IEEE).
pub fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// A state file holding `body`: the header (magic, version, length,
/// checksum) and the body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Writes the state file (to a temporary name, then renamed: a crash never
/// leaves half a snapshot under the real name).
pub fn write(path: &Path, snap: &Snapshot) -> std::io::Result<()> {
    let out = frame(&serde_json::to_vec(snap)?);
    let tmp = path.with_extension("condo-tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&out)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads and checks a state file.
pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    let name = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|err| SnapshotError::Read {
        path: name.clone(),
        err,
    })?;
    let mut bytes = Vec::new();
    f.take(HEADER_LEN as u64 + MAX_BODY + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| SnapshotError::Read {
            path: name.clone(),
            err,
        })?;
    decode(&bytes, &name)
}

/// Checks and decodes a state file's bytes (`name` for errors).
pub fn decode(bytes: &[u8], name: &str) -> Result<Snapshot, SnapshotError> {
    let name = name.to_owned();
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(SnapshotError::NotSnapshot(name));
    };
    if &header[..8] != MAGIC {
        return Err(SnapshotError::NotSnapshot(name));
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != VERSION {
        return Err(SnapshotError::Version {
            path: name,
            found: version,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[12..20]);
    let len = u64::from_le_bytes(len);
    let crc = u32::from_le_bytes([header[20], header[21], header[22], header[23]]);
    let body = &bytes[HEADER_LEN..];
    if len > MAX_BODY || body.len() as u64 != len || crc32(body) != crc {
        return Err(SnapshotError::Corrupt(name));
    }
    serde_json::from_slice(body).map_err(|e| SnapshotError::Invalid(format!("{name}: {e}")))
}

/// The guest RAM layout of `mem`.
pub fn regions_of(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    mem.iter().map(|r| (r.start_addr().0, r.len())).collect()
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
fn any_resident(mem: &GuestMemoryMmap, at: GuestAddress, len: usize) -> bool {
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
pub fn map_memory(path: &Path, regions: &[(u64, u64)]) -> Result<GuestMemoryMmap, SnapshotError> {
    let err = |e: String| SnapshotError::Memory {
        path: path.display().to_string(),
        err: e,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let size = file.metadata().map_err(|e| err(e.to_string()))?.len();
    let total = regions
        .iter()
        .try_fold(0u64, |a, r| a.checked_add(r.1))
        .ok_or_else(|| err("bad memory layout".into()))?;
    if size != total {
        return Err(err(format!(
            "{size} bytes, but the snapshot's guest has {total}"
        )));
    }
    let mut mapped = Vec::new();
    let mut off = 0u64;
    for &(gpa, len) in regions {
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
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    fn sample() -> Snapshot {
        Snapshot {
            config: FirecrackerConfig::default(),
            mem_regions: vec![(0, 1 << 20)],
            vcpus: Vec::new(),
            irqchips: vec![kvm_irqchip::default()],
            pit: kvm_pit_state2::default(),
            clock: kvm_clock_data::default(),
            serial: SerialSnapshot::default(),
            transports: Vec::new(),
        }
    }

    #[test]
    fn corrupt_foreign_and_truncated_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("condo-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s");
        write(&p, &sample()).unwrap();
        assert!(read(&p).is_ok());
        let good = std::fs::read(&p).unwrap();
        // A flipped byte in the body.
        let mut bad = good.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0x20;
        std::fs::write(&p, &bad).unwrap();
        assert!(matches!(read(&p), Err(SnapshotError::Corrupt(_))));
        // Truncated.
        std::fs::write(&p, &good[..good.len() - 10]).unwrap();
        assert!(matches!(read(&p), Err(SnapshotError::Corrupt(_))));
        // Another version.
        let mut v2 = good.clone();
        v2[8] = 2;
        std::fs::write(&p, &v2).unwrap();
        assert!(matches!(
            read(&p),
            Err(SnapshotError::Version { found: 2, .. })
        ));
        // Not a snapshot at all; empty; a huge claimed length.
        std::fs::write(&p, b"hello world, this is not it").unwrap();
        assert!(matches!(read(&p), Err(SnapshotError::NotSnapshot(_))));
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(read(&p), Err(SnapshotError::NotSnapshot(_))));
        let mut huge = good.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&p, &huge).unwrap();
        assert!(matches!(read(&p), Err(SnapshotError::Corrupt(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

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
        assert_eq!(regions_of(&mem), layout.to_vec());
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
        assert!(map_memory(&p, &[(0, 1 << 20)]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

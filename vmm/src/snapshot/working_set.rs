//! A restored guest's working set: the pages it wrote first after a
//! restore, recorded once and brought in ahead by the restores after it.
//!
//! A restored guest's memory is the snapshot's memory file mapped
//! privately, so the first write to each page is a nested page fault that
//! copies the page: page by page, the first instructions after a restore
//! cost an exit each. The first restore of a memory file with no record
//! beside it logs the pages the guest writes (KVM's dirty log, turned on
//! for that alone, and the devices' own dirty bitmap) until
//! [`RECORD_AFTER`] has passed or the VMM stops, whichever comes first, and
//! writes them to `<memory file>.ws`. Every later restore of that file
//! copies those pages in (`MADV_POPULATE_WRITE`) before its vCPUs start:
//! they are the guest's private pages anyway once it runs, and with their
//! host mappings in place KVM maps each fault's neighbours with it.
//!
//! The record holds `condo-ws`, a format version, the memory file's size,
//! modification time and inode (a record of another or a rewritten file
//! is stale, and a new one is taken), then runs of pages (first page of
//! the file, count), sorted and apart. It is read like any other file a
//! user hands the VMM: bounded, checked against the memory file's size,
//! trailing bytes refused; a bad record costs a warning and a new record,
//! never the restore. A memory file whose directory the VMM cannot write
//! into gets no record.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use devices::GuestMemoryMmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

const MAGIC: &[u8; 8] = b"condo-ws";
/// The record format this build writes and reads.
pub const VERSION: u32 = 1;
const PAGE: u64 = 4096;
/// How long a recording restore logs the guest's writes.
pub const RECORD_AFTER: Duration = Duration::from_millis(500);
/// Most pages a record holds (64 MiB): beyond, a guest writing that much
/// that soon would make every restore copy more than it saves.
pub const MAX_PAGES: u64 = 16384;
/// Most runs a record may hold.
const MAX_RUNS: usize = MAX_PAGES as usize;
const HEADER: usize = 8 + 4 + 8 + 8 + 8 + 4;
const RUN: usize = 8 + 4;

/// What identifies the memory file a record was taken of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: u64,
    pub ino: u64,
}

impl Stamp {
    /// The stamp of the file at `path`.
    pub fn of(path: &Path) -> std::io::Result<Stamp> {
        let m = std::fs::metadata(path)?;
        Ok(Stamp {
            size: m.size(),
            mtime_ns: (m.mtime() as u64)
                .wrapping_mul(1_000_000_000)
                .wrapping_add(m.mtime_nsec() as u64),
            ino: m.ino(),
        })
    }
}

/// A run of pages: the first page's index in the memory file, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub pages: u32,
}

/// The pages a restored guest wrote first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkingSet {
    pub runs: Vec<Run>,
}

/// Why a record was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkingSetError {
    #[error("not a condo working-set record")]
    NotARecord,
    #[error("working-set record version {0}; this build reads {VERSION}")]
    Version(u32),
    #[error("working-set record of another memory file (or of this one before it was rewritten)")]
    Stale,
    #[error("malformed working-set record: {0}")]
    Malformed(&'static str),
}

/// Where the record of the memory file `mem` lives.
pub fn path_for(mem: &Path) -> PathBuf {
    let mut p = mem.as_os_str().to_owned();
    p.push(".ws");
    PathBuf::from(p)
}

impl WorkingSet {
    /// How many pages the set holds.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| u64::from(r.pages)).sum()
    }

    /// The record's bytes, for a memory file stamped `stamp`.
    pub fn encode(&self, stamp: &Stamp) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + self.runs.len() * RUN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&stamp.size.to_le_bytes());
        b.extend_from_slice(&stamp.mtime_ns.to_le_bytes());
        b.extend_from_slice(&stamp.ino.to_le_bytes());
        b.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for r in &self.runs {
            b.extend_from_slice(&r.first.to_le_bytes());
            b.extend_from_slice(&r.pages.to_le_bytes());
        }
        b
    }

    /// Reads a record; it must be of the memory file stamped `stamp`.
    pub fn decode(b: &[u8], stamp: &Stamp) -> Result<WorkingSet, WorkingSetError> {
        use WorkingSetError::Malformed;
        if b.len() < 12 || &b[..8] != MAGIC {
            return Err(WorkingSetError::NotARecord);
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let version = u32_at(8);
        if version != VERSION {
            return Err(WorkingSetError::Version(version));
        }
        if b.len() < HEADER {
            return Err(Malformed("truncated header"));
        }
        let got = Stamp {
            size: u64_at(12),
            mtime_ns: u64_at(20),
            ino: u64_at(28),
        };
        if got != *stamp {
            return Err(WorkingSetError::Stale);
        }
        let n = u32_at(36) as usize;
        if n > MAX_RUNS {
            return Err(Malformed("too many runs"));
        }
        if b.len() != HEADER + n * RUN {
            return Err(Malformed("length does not match the number of runs"));
        }
        let file_pages = stamp.size / PAGE;
        let mut runs = Vec::with_capacity(n);
        let (mut end, mut total) = (0u64, 0u64);
        for i in 0..n {
            let o = HEADER + i * RUN;
            let r = Run {
                first: u64_at(o),
                pages: u32_at(o + 8),
            };
            if r.pages == 0 {
                return Err(Malformed("an empty run"));
            }
            if i > 0 && r.first < end {
                return Err(Malformed("runs out of order or overlapping"));
            }
            end = r
                .first
                .checked_add(u64::from(r.pages))
                .filter(|&e| e <= file_pages)
                .ok_or(Malformed("a run past the memory file's end"))?;
            total += u64::from(r.pages);
            if total > MAX_PAGES {
                return Err(Malformed("too many pages"));
            }
            runs.push(r);
        }
        Ok(WorkingSet { runs })
    }

    /// The pages written since the logs were last read: by the guest
    /// (`logs`, KVM's dirty bitmap per memory region) or by the devices
    /// (vm-memory's bitmap), as page indices of the memory file (regions
    /// one after another). At most [`MAX_PAGES`], the lowest first.
    pub fn from_dirty_logs(mem: &GuestMemoryMmap, logs: &[Vec<u64>]) -> WorkingSet {
        let mut ws = WorkingSet::default();
        let mut total = 0u64;
        super::memory::for_each_dirty(mem, logs, |d| {
            if total == MAX_PAGES {
                return false;
            }
            total += 1;
            match ws.runs.last_mut() {
                Some(last) if last.first + u64::from(last.pages) == d.file_page => last.pages += 1,
                _ => ws.runs.push(Run {
                    first: d.file_page,
                    pages: 1,
                }),
            }
            true
        });
        ws
    }

    /// Copies the set's pages in, writable, in guest memory `mem` (mapped
    /// from the memory file, regions one after another); returns how many
    /// pages.
    pub fn prefault(&self, mem: &GuestMemoryMmap) -> std::io::Result<u64> {
        let mut done = 0;
        for run in &self.runs {
            // The region holding the run's first page; a run may cross
            // into the next region.
            let mut page = run.first;
            let mut left = u64::from(run.pages);
            let mut region_first = 0u64;
            for reg in mem.iter() {
                let reg_pages = reg.len() / PAGE;
                if left > 0 && page < region_first + reg_pages {
                    let n = left.min(region_first + reg_pages - page);
                    let gpa = reg.start_addr().0 + (page - region_first) * PAGE;
                    populate_write(mem, gpa, n * PAGE)?;
                    done += n;
                    page += n;
                    left -= n;
                }
                region_first += reg_pages;
            }
        }
        Ok(done)
    }
}

/// `MADV_POPULATE_WRITE` on guest range `gpa..gpa+len`.
fn populate_write(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> std::io::Result<()> {
    let slice = mem
        .get_slice(vm_memory::GuestAddress(gpa), len as usize)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let ptr = slice.ptr_guard_mut().as_ptr();
    // SAFETY: `ptr..ptr+len` is a page-aligned range of a live guest RAM
    // mapping (get_slice checked it lies in one region); populating it
    // faults pages in without changing what they hold.
    let rc = unsafe { libc::madvise(ptr.cast(), len as usize, libc::MADV_POPULATE_WRITE) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What a restore from a memory file does about its working set.
#[derive(Debug, Default)]
pub enum Plan {
    /// Nothing (not restored from a file, or the file's dirty log is the
    /// user's: reading it would take it from them).
    #[default]
    Nothing,
    /// Copy these pages in before the vCPUs start.
    Prefault(WorkingSet),
    /// Log the guest's writes, and write them to `path` for a file stamped
    /// `stamp`.
    Record { path: PathBuf, stamp: Stamp },
}

impl Plan {
    /// The plan for a restore from memory file `mem`; `user_logs` when the
    /// user has KVM's dirty log (diff snapshots).
    pub fn for_restore(mem: &Path, user_logs: bool) -> Plan {
        let path = path_for(mem);
        let Ok(stamp) = Stamp::of(mem) else {
            return Plan::Nothing;
        };
        match read_record(&path) {
            Ok(b) => match WorkingSet::decode(&b, &stamp) {
                Ok(ws) => return Plan::Prefault(ws),
                Err(WorkingSetError::Stale) => {
                    tracing::debug!("{}: stale working-set record", path.display())
                }
                Err(e) => tracing::warn!("{}: {e}; a new one is taken", path.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!("{}: {e}", path.display());
                return Plan::Nothing;
            }
        }
        if user_logs {
            return Plan::Nothing;
        }
        Plan::Record { path, stamp }
    }

    /// Whether KVM must log the guest's writes for this plan.
    pub fn records(&self) -> bool {
        matches!(self, Plan::Record { .. })
    }
}

/// The bytes of the record at `path`: a regular file (opened without
/// blocking, so that a FIFO put there cannot hang the restore), at most as
/// long as the longest record.
fn read_record(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut b = Vec::new();
    f.take((HEADER + MAX_RUNS * RUN + 1) as u64)
        .read_to_end(&mut b)?;
    Ok(b)
}

/// Writes `ws` as the record at `path`, through a new temporary file (one
/// that already exists, a symbolic link say, is not written through)
/// renamed over it, so that a reader never sees half a record.
pub fn save(ws: &WorkingSet, path: &Path, stamp: &Stamp) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&ws.encode(stamp)));
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|e| {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                let _ = std::fs::remove_file(&tmp);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    const STAMP: Stamp = Stamp {
        size: 64 * PAGE,
        mtime_ns: 7,
        ino: 9,
    };

    fn sample() -> WorkingSet {
        WorkingSet {
            runs: vec![
                Run { first: 0, pages: 2 },
                Run { first: 5, pages: 1 },
                Run {
                    first: 60,
                    pages: 4,
                },
            ],
        }
    }

    #[test]
    fn a_record_round_trips() {
        let b = sample().encode(&STAMP);
        assert_eq!(WorkingSet::decode(&b, &STAMP), Ok(sample()));
        assert_eq!(sample().pages(), 7);
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        let good = sample().encode(&STAMP);
        let other = Stamp { ino: 10, ..STAMP };
        assert_eq!(
            WorkingSet::decode(&good, &other),
            Err(WorkingSetError::Stale)
        );
        assert_eq!(
            WorkingSet::decode(b"CONDOSNP", &STAMP),
            Err(WorkingSetError::NotARecord)
        );
        let mut v = good.clone();
        v[8] = 9;
        assert_eq!(
            WorkingSet::decode(&v, &STAMP),
            Err(WorkingSetError::Version(9))
        );
        for cut in [13, HEADER - 1, HEADER, good.len() - 1] {
            assert!(WorkingSet::decode(&good[..cut], &STAMP).is_err(), "{cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(WorkingSet::decode(&trailing, &STAMP).is_err());
        let bad = |runs: Vec<Run>| WorkingSet::decode(&WorkingSet { runs }.encode(&STAMP), &STAMP);
        // Past the end, wrapping, empty, out of order, overlapping.
        for runs in [
            vec![Run {
                first: 63,
                pages: 2,
            }],
            vec![Run {
                first: u64::MAX,
                pages: 2,
            }],
            vec![Run { first: 1, pages: 0 }],
            vec![Run { first: 5, pages: 1 }, Run { first: 2, pages: 1 }],
            vec![Run { first: 2, pages: 3 }, Run { first: 4, pages: 1 }],
        ] {
            assert!(
                matches!(bad(runs.clone()), Err(WorkingSetError::Malformed(_))),
                "{runs:?}"
            );
        }
        // A run count far beyond the bytes: refused before any allocation.
        let mut huge = sample().encode(&STAMP);
        huge[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(WorkingSet::decode(&huge, &STAMP).is_err());
    }

    #[test]
    fn dirty_logs_become_runs_across_regions_and_prefault_keeps_contents() {
        use vm_memory::Bytes;
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), (8 * PAGE) as usize),
            (GuestAddress(0x10_0000), (8 * PAGE) as usize),
        ])
        .unwrap();
        // Pages 6 and 7 of the first region, 0 of the second (a run
        // across the two in the file's order), and 3 written by a device.
        let logs = vec![vec![0b1100_0000u64], vec![0b1u64]];
        mem.write_obj(5u8, GuestAddress(0x10_0000 + 3 * PAGE))
            .unwrap();
        let ws = WorkingSet::from_dirty_logs(&mem, &logs);
        assert_eq!(
            ws.runs,
            vec![
                Run { first: 6, pages: 3 },
                Run {
                    first: 11,
                    pages: 1
                }
            ]
        );
        assert_eq!(ws.prefault(&mem).unwrap(), 4);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x10_0000 + 3 * PAGE))
                .unwrap(),
            5
        );
    }

    #[test]
    fn a_plan_records_once_then_prefaults_and_a_rewritten_file_records_again() {
        let dir = std::env::temp_dir().join(format!("condo-ws-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mem = dir.join("mem");
        std::fs::write(&mem, vec![0u8; 64 * PAGE as usize]).unwrap();
        let Plan::Record { path, stamp } = Plan::for_restore(&mem, false) else {
            panic!("no record yet: one is taken");
        };
        assert!(matches!(Plan::for_restore(&mem, true), Plan::Nothing));
        save(&sample(), &path, &stamp).unwrap();
        assert!(matches!(Plan::for_restore(&mem, false), Plan::Prefault(ws) if ws == sample()));
        // Rewritten (another inode): stale, recorded again.
        std::fs::remove_file(&mem).unwrap();
        std::fs::write(&mem, vec![0u8; 64 * PAGE as usize]).unwrap();
        assert!(Plan::for_restore(&mem, false).records());
        // A corrupt record: recorded again too.
        std::fs::write(&path, b"condo-ws garbage").unwrap();
        assert!(Plan::for_restore(&mem, false).records());
        // A FIFO in its place does not hang the restore.
        std::fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(Plan::for_restore(&mem, false), Plan::Nothing));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Disk files of the state directory: a guest's writable disk is a
//! copy-on-write clone of its image (a reflink where the filesystem has
//! them, FICLONE; a sparse copy otherwise, holes kept), grown to the asked
//! size. Images are copied in the same way when imported. A full disk is
//! an error that leaves no partial file behind.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{io_err, Result};

/// `FICLONE` (`_IOW(0x94, 9, int)`).
const FICLONE: libc::c_ulong = 0x4004_9409;

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    Reflink,
    Sparse,
}

/// Copies `src` to a new file `dst` (mode 0600): a reflink when the
/// filesystem can, else a sparse copy. On failure `dst` is removed.
pub fn clone_file(src: &Path, dst: &Path) -> Result<CopyKind> {
    if fs::symlink_metadata(dst).is_ok() {
        return Err(crate::error::Error::Other(format!(
            "{} already exists",
            dst.display()
        )));
    }
    let r = clone_inner(src, dst);
    if r.is_err() {
        let _ = fs::remove_file(dst);
    }
    r
}

fn clone_inner(src: &Path, dst: &Path) -> Result<CopyKind> {
    let from = File::open(src).map_err(io_err(format!("open {}", src.display())))?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(io_err(format!("create {}", dst.display())))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", dst.display())))?;
    // SAFETY: two valid descriptors.
    if unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) } == 0 {
        return Ok(CopyKind::Reflink);
    }
    sparse_copy(&from, &to).map_err(io_err(format!(
        "copy {} to {}",
        src.display(),
        dst.display()
    )))?;
    Ok(CopyKind::Sparse)
}

/// Copies the data extents of `from` into `to` (SEEK_DATA/SEEK_HOLE,
/// copy_file_range), leaving holes as holes.
fn sparse_copy(from: &File, to: &File) -> io::Result<()> {
    let len = from.metadata()?.len();
    to.set_len(len)?;
    let fi = from.as_raw_fd();
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: lseek on a valid descriptor.
        let data = unsafe { libc::lseek(fi, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fi, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        copy_range(from, to, data as u64, (hole - data) as u64)?;
        pos = hole;
    }
    to.sync_all()
}

/// Copies `len` bytes at `off` from `from` to the same offset of `to`:
/// copy_file_range, or reads and writes where the kernel cannot copy
/// between the two filesystems.
fn copy_range(from: &File, to: &File, off: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let (fi, fo) = (from.as_raw_fd(), to.as_raw_fd());
    let (mut off_in, mut off_out) = (off as i64, off as i64);
    let end = (off + len) as i64;
    while off_in < end {
        let want = (end - off_in) as usize;
        // SAFETY: valid descriptors and offsets owned here.
        let n = unsafe { libc::copy_file_range(fi, &mut off_in, fo, &mut off_out, want, 0) };
        if n > 0 {
            continue;
        }
        if n == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EXDEV | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => break,
            _ => return Err(e),
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = off_in as u64;
    while pos < end as u64 {
        let k = buf.len().min((end as u64 - pos) as usize);
        let got = from.read_at(&mut buf[..k], pos)?;
        if got == 0 {
            break;
        }
        to.write_all_at(&buf[..got], pos)?;
        pos += got as u64;
    }
    Ok(())
}

/// Grows `path` to `mib` MiB (never shrinks it).
pub fn grow(path: &Path, mib: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    let want = mib << 20;
    let have = f
        .metadata()
        .map_err(io_err(format!("stat {}", path.display())))?
        .len();
    if want > have {
        f.set_len(want)
            .map_err(io_err(format!("grow {} to {mib} MiB", path.display())))?;
    }
    Ok(())
}

/// Creates an empty (sparse) disk of `mib` MiB.
pub fn create_empty(path: &Path, mib: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(format!("create {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", path.display())))?;
    f.set_len(mib << 20)
        .map_err(io_err(format!("size {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn copies_keep_content_and_holes() {
        let d = std::env::temp_dir().join(format!("condo-disk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let src = d.join("src");
        let mut f = File::create(&src).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let dst = d.join("dst");
        clone_file(&src, &dst).unwrap();
        let (a, b) = (fs::read(&src).unwrap(), fs::read(&dst).unwrap());
        assert_eq!(a, b);
        use std::os::unix::fs::MetadataExt;
        assert!(
            fs::metadata(&dst).unwrap().blocks() * 512 < 8 << 20,
            "holes kept"
        );
        assert!(clone_file(&src, &dst).is_err(), "never overwrites");
        assert!(dst.exists(), "a refused copy leaves the existing file");
        grow(&dst, 128).unwrap();
        assert_eq!(fs::metadata(&dst).unwrap().len(), 128 << 20);
        assert!(clone_file(&d.join("missing"), &d.join("x")).is_err());
        assert!(!d.join("x").exists());
        let _ = fs::remove_dir_all(d);
    }
}

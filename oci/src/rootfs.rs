//! The container's root disk: the bundle's rootfs directory (which the
//! engine has already mounted, usually an overlay) made into an ext4 image
//! with `mkfs.ext4 -d`, and the guest's writes copied back into the
//! directory when the container stops, so that `podman cp`, `podman diff`
//! and `podman commit` see them.
//!
//! Images are cached by the rootfs's content as its metadata shows it:
//! every entry's path, type, mode, owner, size, modification time and link
//! target go into a fingerprint, and a directory whose fingerprint was
//! seen before gets a copy of the pristine image made then (sparse, a
//! reflink where the file system has them) instead of a new `mkfs`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Free space the guest gets on top of what the rootfs holds (the image
/// is sparse: unused space costs nothing on the host).
const HEADROOM: u64 = 1 << 30;
/// Bytes of metadata an entry costs in the image, roughly.
const PER_ENTRY: u64 = 4096;

/// Runs a tool; its standard error becomes the error on failure.
fn tool(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(Error::io(format!("run {what}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(Error::Other(format!("{what} failed: {}", last.trim())));
    }
    Ok(())
}

/// A 128-bit FNV-1a over the rootfs's metadata, and the bytes it holds.
struct Fingerprint {
    a: u64,
    b: u64,
    bytes: u64,
}

impl Fingerprint {
    fn new() -> Self {
        Fingerprint {
            a: 0xcbf2_9ce4_8422_2325,
            b: 0x6c62_272e_07bb_0142,
            bytes: 0,
        }
    }

    fn eat(&mut self, data: &[u8]) {
        for &x in data {
            self.a = (self.a ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
            self.b = (self.b ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3 ^ 0x9e37);
        }
        // A separator, so that ("ab","c") and ("a","bc") differ.
        self.a = self.a.rotate_left(5) ^ 0xff;
        self.b = self.b.rotate_left(7) ^ 0xfe;
    }

    fn hex(&self) -> String {
        format!("{:016x}{:016x}", self.a, self.b)
    }
}

/// Walks `dir` (not following symlinks, not leaving its file system) into
/// the fingerprint.
fn walk(root: &Path, dir: &Path, dev: u64, fp: &mut Fingerprint) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(Error::path("read", dir))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).map_err(Error::path("stat", &p))?;
        let rel = p.strip_prefix(root).unwrap_or(&p);
        fp.eat(rel.as_os_str().as_encoded_bytes());
        for v in [
            u64::from(m.mode()),
            u64::from(m.uid()),
            u64::from(m.gid()),
            m.size(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
            m.rdev(),
            m.nlink(),
        ] {
            fp.eat(&v.to_le_bytes());
        }
        fp.bytes += m.size().div_ceil(4096) * 4096 + PER_ENTRY;
        if m.file_type().is_symlink() {
            if let Ok(t) = std::fs::read_link(&p) {
                fp.eat(t.as_os_str().as_encoded_bytes());
            }
        } else if m.is_dir() && m.dev() == dev {
            walk(root, &p, dev, fp)?;
        }
    }
    Ok(())
}

/// Makes `out`, the root disk for the rootfs directory `rootfs`, from the
/// cache in `cache` when it can (the cache is skipped if it cannot be
/// written).
pub fn build(rootfs: &Path, out: &Path, cache: &Path) -> Result<()> {
    let dev = std::fs::metadata(rootfs)
        .map_err(Error::path("stat", rootfs))?
        .dev();
    let mut fp = Fingerprint::new();
    walk(rootfs, rootfs, dev, &mut fp)?;
    let size = (fp.bytes + fp.bytes / 4 + HEADROOM).div_ceil(1 << 20) << 20;
    let cached = cache.join(format!("{}.ext4", fp.hex()));
    if cached.is_file() {
        return copy_sparse(&cached, out);
    }
    make_ext4(rootfs, out, size)?;
    // Cache a pristine copy for the next container of this image.
    if std::fs::create_dir_all(cache).is_ok() {
        let tmp = cache.join(format!(".{}.{}", fp.hex(), std::process::id()));
        if copy_sparse(out, &tmp).is_ok() {
            let _ = std::fs::rename(&tmp, &cached);
        }
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(())
}

fn make_ext4(rootfs: &Path, out: &Path, size: u64) -> Result<()> {
    let _ = std::fs::remove_file(out);
    let f = std::fs::File::create(out).map_err(Error::path("create", out))?;
    f.set_len(size).map_err(Error::path("size", out))?;
    drop(f);
    tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "condo-root", "-E", "root_owner=0:0", "-d"])
            .arg(rootfs)
            .arg(out),
        "mkfs.ext4",
    )
}

/// Copies an image keeping its holes (a reflink first, where the file
/// system shares blocks between files).
fn copy_sparse(from: &Path, to: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let src = std::fs::File::open(from).map_err(Error::path("open", from))?;
    let dst = std::fs::File::create(to).map_err(Error::path("create", to))?;
    let len = src.metadata().map_err(Error::path("stat", from))?.len();
    // FICLONE: _IOW(0x94, 9, int).
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are open files we hold.
    if unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) } == 0 {
        return Ok(());
    }
    dst.set_len(len).map_err(Error::path("size", to))?;
    let mut pos: i64 = 0;
    let end = i64::try_from(len).map_err(|_| Error::Other("image too large".into()))?;
    while pos < end {
        // SAFETY: lseek on a descriptor we hold.
        let data = unsafe { libc::lseek(src.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // No data after pos: the rest is a hole.
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole };
        let mut off_in = data;
        let mut off_out = data;
        while off_in < hole {
            let want = usize::try_from(hole - off_in)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            // SAFETY: copy_file_range between two descriptors we hold,
            // with offsets in variables we own.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    dst.as_raw_fd(),
                    &mut off_out,
                    want,
                    0,
                )
            };
            if n <= 0 {
                return Err(Error::path("copy to", to)(std::io::Error::last_os_error()));
            }
        }
        pos = hole;
    }
    Ok(())
}

/// Copies what the guest changed on `image` back into `rootfs`: files it
/// wrote or made, and the removal of those it deleted. The image must no
/// longer be in use.
pub fn copy_back(image: &Path, rootfs: &Path) -> Result<()> {
    let dump = image.with_extension("dump");
    let _ = std::fs::remove_dir_all(&dump);
    std::fs::create_dir_all(&dump).map_err(Error::path("create", &dump))?;
    // Replays the journal if the guest did not unmount cleanly.
    let _ = Command::new("e2fsck")
        .args(["-p"])
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let mut cmd = Command::new("debugfs");
    cmd.arg("-R")
        .arg(format!("rdump / {}", dump.display()))
        .arg(image);
    let result = tool(&mut cmd, "debugfs rdump").and_then(|()| sync_tree(&dump, rootfs));
    let _ = std::fs::remove_dir_all(&dump);
    result
}

/// Whether two entries look the same (type, mode, owner, size, mtime).
fn same(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.file_type() == b.file_type()
        && a.mode() == b.mode()
        && a.uid() == b.uid()
        && a.gid() == b.gid()
        && a.size() == b.size()
        && a.mtime() == b.mtime()
}

/// Makes `dst` hold what `src` holds (the image's dump into the rootfs),
/// touching only entries that differ. `lost+found` at the top is the
/// image's own and stays out.
fn sync_tree(src: &Path, dst: &Path) -> Result<()> {
    sync_dir(src, dst, true)
}

fn sync_dir(src: &Path, dst: &Path, top: bool) -> Result<()> {
    let names = |d: &Path| -> Result<std::collections::BTreeSet<std::ffi::OsString>> {
        Ok(std::fs::read_dir(d)
            .map_err(Error::path("read", d))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| !(top && n == "lost+found"))
            .collect())
    };
    let have = names(dst)?;
    let want = names(src)?;
    for gone in have.difference(&want) {
        let p = dst.join(gone);
        let m = std::fs::symlink_metadata(&p).map_err(Error::path("stat", &p))?;
        if m.is_dir() {
            std::fs::remove_dir_all(&p).map_err(Error::path("remove", &p))?;
        } else {
            std::fs::remove_file(&p).map_err(Error::path("remove", &p))?;
        }
    }
    for name in &want {
        let s = src.join(name);
        let d = dst.join(name);
        let sm = std::fs::symlink_metadata(&s).map_err(Error::path("stat", &s))?;
        let dm = std::fs::symlink_metadata(&d).ok();
        if sm.is_dir() {
            if dm.as_ref().is_some_and(|m| !m.is_dir()) {
                std::fs::remove_file(&d).map_err(Error::path("remove", &d))?;
            }
            if !d.is_dir() {
                std::fs::create_dir(&d).map_err(Error::path("create", &d))?;
            }
            sync_dir(&s, &d, false)?;
            set_meta(&d, &sm);
            continue;
        }
        if dm.as_ref().is_some_and(|m| same(m, &sm)) {
            continue;
        }
        if let Some(m) = &dm {
            if m.is_dir() {
                std::fs::remove_dir_all(&d).map_err(Error::path("remove", &d))?;
            } else {
                std::fs::remove_file(&d).map_err(Error::path("remove", &d))?;
            }
        }
        if sm.file_type().is_symlink() {
            let t = std::fs::read_link(&s).map_err(Error::path("read link", &s))?;
            std::os::unix::fs::symlink(&t, &d).map_err(Error::path("create link", &d))?;
            lchown(&d, sm.uid(), sm.gid());
        } else if sm.is_file() {
            std::fs::copy(&s, &d).map_err(Error::path("copy to", &d))?;
            set_meta(&d, &sm);
        } else {
            // Device nodes, fifos and sockets: recreated as they were.
            let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes())
                .map_err(|_| Error::Other(format!("{} has a NUL byte", d.display())))?;
            // SAFETY: c is a valid NUL-terminated path; mode and rdev come
            // from the dumped entry.
            unsafe {
                libc::mknod(c.as_ptr(), sm.mode(), sm.rdev());
            }
            set_meta(&d, &sm);
        }
    }
    Ok(())
}

fn lchown(p: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::lchown(p, Some(uid), Some(gid));
}

/// Owner, mode and modification time of `d` as in `m`.
fn set_meta(d: &Path, m: &std::fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    lchown(d, m.uid(), m.gid());
    let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(m.mode() & 0o7777));
    if let Ok(f) = std::fs::File::options().write(false).read(true).open(d) {
        let mtime = std::time::UNIX_EPOCH
            + std::time::Duration::new(m.mtime() as u64, m.mtime_nsec() as u32);
        let _ = f.set_modified(mtime);
    }
}

/// The image's path beside the container's other files.
pub fn image_path(dir: &Path) -> PathBuf {
    dir.join("rootfs.img")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(tool: &str) -> bool {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
    }

    #[test]
    fn an_image_round_trip_carries_writes_and_removals_back() {
        if !has("mkfs.ext4") || !has("debugfs") {
            eprintln!("skipped: no e2fsprogs");
            return;
        }
        let base = std::env::temp_dir().join(format!("condo-oci-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("rootfs");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("etc/keep"), "keep").expect("write");
        std::fs::write(root.join("etc/gone"), "gone").expect("write");
        std::os::unix::fs::symlink("keep", root.join("etc/link")).expect("symlink");
        let img = base.join("rootfs.img");
        let cache = base.join("cache");
        build(&root, &img, &cache).expect("build");
        assert_eq!(std::fs::read_dir(&cache).expect("cache").count(), 1);
        // The guest's changes, made here with debugfs.
        let script = base.join("script");
        std::fs::write(base.join("new"), "written in the guest").expect("write");
        std::fs::write(
            &script,
            format!(
                "rm /etc/gone\nwrite {} /etc/new\n",
                base.join("new").display()
            ),
        )
        .expect("script");
        tool(
            Command::new("debugfs")
                .arg("-w")
                .arg("-f")
                .arg(&script)
                .arg(&img),
            "debugfs",
        )
        .expect("debugfs");
        copy_back(&img, &root).expect("copy back");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/keep")).expect("keep"),
            "keep"
        );
        assert!(!root.join("etc/gone").exists());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/new")).expect("new"),
            "written in the guest"
        );
        assert_eq!(
            std::fs::read_link(root.join("etc/link")).expect("link"),
            Path::new("keep")
        );
        assert!(!root.join("lost+found").exists());
        // Same content: the cached image is reused.
        let img2 = base.join("rootfs2.img");
        let before = std::fs::read_dir(&cache).expect("cache").count();
        build(&root, &img2, &cache).expect("build again");
        build(&root, &img2, &cache).expect("build from cache");
        assert_eq!(
            std::fs::read_dir(&cache).expect("cache").count(),
            before + 1
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}

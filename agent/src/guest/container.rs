//! The container setup, done once per VM: mount the root (a block device
//! or a directory of the guest), mount what the spec lists inside it
//! (inline file contents are written to a small tmpfs of the agent's and
//! bind-mounted), set the hostname, then move the new root over `/` and
//! chroot into it, as `switch_root` does (pivot_root cannot leave an
//! initramfs). Every process the agent starts afterwards runs inside.
//!
//! Mount destinations are resolved inside the new root: a symlink on the
//! way is followed as if the root were `/`, never out of it.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::{log, sys};
use crate::spec::{ContainerSetup, Mount, Root, SetupReport, SpecError};

/// The agent's own tmpfs for the setup: the new root's mount point and the
/// inline files. Hidden once the new root is over `/`.
pub const STATE_DIR: &str = "/run/condo-agent";

/// Most symlinks followed while resolving one destination (as the kernel).
const MAX_SYMLINKS: usize = 40;

/// Why a setup failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("root {0}: neither a block device nor a directory")]
    BadRoot(String),
    #[error("mount {0}: too many levels of symbolic links")]
    SymlinkLoop(String),
}

fn ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T, SetupError> {
    r.map_err(|source| SetupError::Io {
        what: what(),
        source,
    })
}

/// mount(2) flags, propagation changes and filesystem data from an OCI
/// options list.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: libc::c_ulong,
    pub propagation: libc::c_ulong,
    /// The options mount(2) does not know as flags (`mode=755`, `size=..`),
    /// comma-joined for the filesystem.
    pub data: String,
}

/// Reads an options list the way runc does: known flag names set or clear
/// flags, propagation names become a separate change, anything else goes
/// to the filesystem.
pub fn parse_options(options: &[String]) -> MountOptions {
    use libc::*;
    const SET: bool = true;
    const CLEAR: bool = false;
    let flag = |o: &str| -> Option<(bool, c_ulong)> {
        Some(match o {
            "ro" => (SET, MS_RDONLY),
            "rw" => (CLEAR, MS_RDONLY),
            "nosuid" => (SET, MS_NOSUID),
            "suid" => (CLEAR, MS_NOSUID),
            "nodev" => (SET, MS_NODEV),
            "dev" => (CLEAR, MS_NODEV),
            "noexec" => (SET, MS_NOEXEC),
            "exec" => (CLEAR, MS_NOEXEC),
            "sync" => (SET, MS_SYNCHRONOUS),
            "async" => (CLEAR, MS_SYNCHRONOUS),
            "dirsync" => (SET, MS_DIRSYNC),
            "remount" => (SET, MS_REMOUNT),
            "mand" => (SET, MS_MANDLOCK),
            "nomand" => (CLEAR, MS_MANDLOCK),
            "noatime" => (SET, MS_NOATIME),
            "atime" => (CLEAR, MS_NOATIME),
            "nodiratime" => (SET, MS_NODIRATIME),
            "diratime" => (CLEAR, MS_NODIRATIME),
            "relatime" => (SET, MS_RELATIME),
            "norelatime" => (CLEAR, MS_RELATIME),
            "strictatime" => (SET, MS_STRICTATIME),
            "nostrictatime" => (CLEAR, MS_STRICTATIME),
            "bind" => (SET, MS_BIND),
            "rbind" => (SET, MS_BIND | MS_REC),
            _ => return None,
        })
    };
    let propagation = |o: &str| -> Option<c_ulong> {
        Some(match o {
            "private" => MS_PRIVATE,
            "rprivate" => MS_PRIVATE | MS_REC,
            "shared" => MS_SHARED,
            "rshared" => MS_SHARED | MS_REC,
            "slave" => MS_SLAVE,
            "rslave" => MS_SLAVE | MS_REC,
            "unbindable" => MS_UNBINDABLE,
            "runbindable" => MS_UNBINDABLE | MS_REC,
            _ => return None,
        })
    };
    let mut out = MountOptions::default();
    let mut data = Vec::new();
    for o in options {
        if let Some((set, f)) = flag(o) {
            if set {
                out.flags |= f;
            } else {
                out.flags &= !f;
            }
        } else if let Some(p) = propagation(o) {
            out.propagation |= p;
        } else {
            data.push(o.as_str());
        }
    }
    out.data = data.join(",");
    out
}

/// `dest` (absolute) inside `root`, following symlinks as if `root` were
/// `/`: an absolute link restarts at `root`, `..` stops at `root`.
pub fn resolve_in_root(root: &Path, dest: &str) -> Result<PathBuf, SetupError> {
    let mut cur = PathBuf::new();
    let mut todo: Vec<PathBuf> = path_components(Path::new(dest));
    todo.reverse();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c.as_os_str() == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        let full = root.join(&next);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(SetupError::SymlinkLoop(dest.to_owned()));
                }
                let target = ctx(fs::read_link(&full), || {
                    format!("mount {dest}: reading link {}", full.display())
                })?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                let mut more = path_components(&target);
                more.reverse();
                todo.extend(more);
            }
            _ => cur = next,
        }
    }
    Ok(root.join(cur))
}

/// The normal and `..` components of a path (root and `.` dropped).
fn path_components(p: &Path) -> Vec<PathBuf> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect()
}

/// Sets up the container `s` and moves the agent into its root.
pub fn setup(s: &ContainerSetup) -> Result<SetupReport, SetupError> {
    s.validate()?;
    let state = Path::new(STATE_DIR);
    ctx(fs::create_dir_all(state), || {
        format!("creating {STATE_DIR}")
    })?;
    ctx(
        sys::mount(
            Some(OsStr::new("tmpfs")),
            state,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=0700,size=2m"),
        ),
        || format!("mounting a tmpfs on {STATE_DIR}"),
    )?;
    let newroot = state.join("root");
    let files = state.join("files");
    for d in [&newroot, &files] {
        ctx(fs::create_dir(d), || format!("creating {}", d.display()))?;
    }
    let root_is_dir = mount_root(&s.root, &newroot)?;

    let mut report = SetupReport::default();
    if !s.mounts.iter().any(|m| is_dev(&m.destination)) {
        // No /dev of its own: the container gets the guest's (devtmpfs,
        // with the agent's devpts), where the root has a /dev.
        let dev = newroot.join("dev");
        if dev.is_dir() {
            ctx(
                sys::mount(
                    Some(OsStr::new("/dev")),
                    &dev,
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                ),
                || "binding the guest's /dev".to_owned(),
            )?;
        } else {
            log!("container setup: the root has no /dev and the spec mounts none");
        }
    }
    for (i, m) in s.mounts.iter().enumerate() {
        mount_one(&newroot, &files.join(i.to_string()), m, &mut report)?;
    }
    if let Some(h) = &s.hostname {
        ctx(sys::sethostname(h), || {
            format!("setting the hostname {h:?}")
        })?;
    }
    if s.root.readonly && root_is_dir {
        ctx(
            sys::mount(
                None,
                &newroot,
                None,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                None,
            ),
            || "making the root read-only".to_owned(),
        )?;
    }
    switch_root(&newroot)?;
    Ok(report)
}

fn is_dev(dest: &str) -> bool {
    dest.trim_end_matches('/') == "/dev"
}

/// Mounts the root at `newroot`; whether it is a directory (bound) rather
/// than a block device.
fn mount_root(root: &Root, newroot: &Path) -> Result<bool, SetupError> {
    let meta = ctx(fs::metadata(&root.path), || format!("root {}", root.path))?;
    let ro = if root.readonly { libc::MS_RDONLY } else { 0 };
    if meta.file_type().is_block_device() {
        let fstype = root.fstype.as_deref().unwrap_or("ext4");
        ctx(
            sys::mount(
                Some(OsStr::new(&root.path)),
                newroot,
                Some(fstype),
                ro,
                None,
            ),
            || format!("mounting root {} ({fstype})", root.path),
        )?;
        Ok(false)
    } else if meta.is_dir() {
        ctx(
            sys::mount(
                Some(OsStr::new(&root.path)),
                newroot,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            ),
            || format!("binding root {}", root.path),
        )?;
        Ok(true)
    } else {
        Err(SetupError::BadRoot(root.path.clone()))
    }
}

/// Creates what a mount needs at `dest`: a directory, or an empty file for
/// a file bind mount.
fn make_mountpoint(dest: &Path, dir: bool) -> io::Result<()> {
    if dir {
        return fs::create_dir_all(dest);
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    if fs::symlink_metadata(dest).is_err() {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dest)?;
    }
    Ok(())
}

fn mount_one(
    newroot: &Path,
    inline_file: &Path,
    m: &Mount,
    report: &mut SetupReport,
) -> Result<(), SetupError> {
    let name = &m.destination;
    let dest = resolve_in_root(newroot, name)?;
    let opts = parse_options(&m.options);
    if m.is_bind() {
        let src = match (&m.content, &m.source) {
            (Some(c), _) => {
                ctx(fs::write(inline_file, c), || {
                    format!("mount {name}: writing its content")
                })?;
                ctx(
                    fs::set_permissions(inline_file, fs::Permissions::from_mode(0o644)),
                    || format!("mount {name}: writing its content"),
                )?;
                inline_file.to_path_buf()
            }
            (None, Some(s)) => PathBuf::from(s),
            (None, None) => return Err(SpecError::NoMountType(name.clone()).into()),
        };
        let meta = ctx(fs::metadata(&src), || {
            format!("mount {name}: source {}", src.display())
        })?;
        ctx(make_mountpoint(&dest, meta.is_dir()), || {
            format!("mount {name}: creating the mount point")
        })?;
        let rec = opts.flags & libc::MS_REC;
        ctx(
            sys::mount(
                Some(src.as_os_str()),
                &dest,
                None,
                libc::MS_BIND | rec,
                None,
            ),
            || format!("mount {name}: binding {}", src.display()),
        )?;
        // A bind mount takes its flags (ro, nosuid, ...) in a remount.
        let extra = opts.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
        if extra != 0 {
            ctx(
                sys::mount(
                    None,
                    &dest,
                    None,
                    libc::MS_REMOUNT | libc::MS_BIND | extra,
                    None,
                ),
                || format!("mount {name}: applying its options"),
            )?;
        }
    } else {
        let kind = m.kind.as_deref().unwrap_or_default();
        // A type the guest kernel lacks is skipped before its mount point
        // is made: it may lie under a read-only mount (cgroup under /sys).
        if !kernel_has_filesystem(kind) {
            log!(
                "container setup: skipping mount {name}: the guest kernel has no {kind} filesystem"
            );
            report.skipped.push(name.clone());
            return Ok(());
        }
        ctx(make_mountpoint(&dest, true), || {
            format!("mount {name}: creating the mount point")
        })?;
        let source = m.source.as_deref().unwrap_or(kind);
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        match sys::mount(
            Some(OsStr::new(source)),
            &dest,
            Some(kind),
            opts.flags,
            data,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                log!("container setup: skipping mount {name}: the guest kernel has no {kind} filesystem");
                report.skipped.push(name.clone());
                return Ok(());
            }
            r => ctx(r, || format!("mount {name} ({kind})"))?,
        }
        if kind == "tmpfs" && is_dev(name) {
            populate_dev(&dest)?;
        }
    }
    if opts.propagation != 0 {
        ctx(
            sys::mount(None, &dest, None, opts.propagation, None),
            || format!("mount {name}: setting its propagation"),
        )?;
    }
    Ok(())
}

/// Whether the guest kernel knows filesystem `kind` (`/proc/filesystems`;
/// when that cannot be read, the mount is tried and tells).
fn kernel_has_filesystem(kind: &str) -> bool {
    match fs::read_to_string("/proc/filesystems") {
        Ok(list) => list
            .lines()
            .any(|l| l.split_whitespace().last() == Some(kind)),
        Err(_) => true,
    }
}

/// The device nodes and links a container's `/dev` tmpfs gets, as runc
/// makes them.
fn populate_dev(dev: &Path) -> Result<(), SetupError> {
    const NODES: [(&str, u32, u32); 6] = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    for (name, major, minor) in NODES {
        let p = dev.join(name);
        ctx(sys::mknod(&p, libc::S_IFCHR | 0o666, major, minor), || {
            format!("creating /dev/{name}")
        })?;
        // mknod's mode went through the umask.
        ctx(
            fs::set_permissions(&p, fs::Permissions::from_mode(0o666)),
            || format!("creating /dev/{name}"),
        )?;
    }
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(std::os::unix::fs::symlink(target, dev.join(link)), || {
            format!("creating /dev/{link}")
        })?;
    }
    for d in ["pts", "shm"] {
        ctx(fs::create_dir(dev.join(d)), || format!("creating /dev/{d}"))?;
    }
    ctx(
        fs::set_permissions(dev.join("shm"), fs::Permissions::from_mode(0o1777)),
        || "creating /dev/shm".to_owned(),
    )?;
    Ok(())
}

/// Moves `newroot` over `/` and makes it the agent's root and directory.
fn switch_root(newroot: &Path) -> Result<(), SetupError> {
    // A shared `/` would refuse the move; an initramfs root is private
    // already, so a failure here is not an error of its own.
    let _ = sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    );
    ctx(std::env::set_current_dir(newroot), || {
        format!("entering {}", newroot.display())
    })?;
    ctx(
        sys::mount(
            Some(OsStr::new(".")),
            Path::new("/"),
            None,
            libc::MS_MOVE,
            None,
        ),
        || "moving the new root over /".to_owned(),
    )?;
    ctx(std::os::unix::fs::chroot("."), || {
        "chroot into the new root".to_owned()
    })?;
    ctx(std::env::set_current_dir("/"), || "entering /".to_owned())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: &[&str]) -> MountOptions {
        parse_options(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_become_flags_propagation_and_data() {
        let o = opts(&["nosuid", "noexec", "nodev", "mode=755", "size=65536k"]);
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert_eq!(o.propagation, 0);
        let o = opts(&["rbind", "ro", "rprivate"]);
        assert_eq!(o.flags, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(o.propagation, libc::MS_PRIVATE | libc::MS_REC);
        assert_eq!(o.data, "");
        // Later options win, as in mount(8).
        assert_eq!(opts(&["ro", "rw"]).flags, 0);
        let o = opts(&["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]);
        assert_eq!(o.data, "newinstance,ptmxmode=0666,mode=0620,gid=5");
    }

    #[test]
    fn destinations_resolve_inside_the_root() {
        let root = std::env::temp_dir().join(format!("condo-agent-resolve-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("real/sub")).expect("dirs");
        std::os::unix::fs::symlink("/real", root.join("abs")).expect("link");
        std::os::unix::fs::symlink("../../../..", root.join("real/up")).expect("link");
        std::os::unix::fs::symlink("loop", root.join("loop")).expect("link");
        let r = |d: &str| resolve_in_root(&root, d);
        assert_eq!(r("/etc/hosts").expect("plain"), root.join("etc/hosts"));
        assert_eq!(r("/abs/sub").expect("absolute link"), root.join("real/sub"));
        assert_eq!(r("/real/up/etc").expect("escaping link"), root.join("etc"));
        assert_eq!(r("/").expect("root"), root);
        assert!(matches!(r("/loop/x"), Err(SetupError::SymlinkLoop(_))));
        let _ = fs::remove_dir_all(&root);
    }
}

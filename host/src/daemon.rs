//! `condo daemon`: owns every guest of the host. At start it takes the
//! state directory's lock (a second daemon on the same directory is
//! refused), opens the database, sets up the managed network, adopts the
//! guests that outlived the previous daemon, then serves the API and runs
//! the accounting and supervision threads. SIGTERM or SIGINT end the
//! daemon and leave the guests running.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::DaemonConfig;
use crate::db::Db;
use crate::error::{io_err, Error, Result};
use crate::manager::{Manager, Paths};

/// How often the supervisor looks at the guests' processes.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Takes the state directory's lock: an exclusive `flock` held while the
/// daemon lives (the kernel drops it when the process dies, SIGKILL too).
fn take_lock(path: &Path) -> Result<fs::File> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    // SAFETY: flock on a valid descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let other = fs::read_to_string(path).unwrap_or_default();
        return Err(Error::Conflict(format!(
            "another condo daemon (pid {}) uses state directory {}",
            other.trim(),
            path.parent().unwrap_or(path).display()
        )));
    }
    f.set_len(0).map_err(io_err("truncate the lock file"))?;
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

/// Binds the API socket: owner only, or owner and `group` (0660).
fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    // Only a stale socket (we hold the state lock, and the socket is ours
    // to serve) is replaced; anything else at the path is an error.
    if let Ok(md) = fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !md.file_type().is_socket() {
            return Err(Error::invalid(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Conflict(format!(
                "another daemon serves {}",
                path.display()
            )));
        }
        fs::remove_file(path).map_err(io_err(format!("remove {}", path.display())))?;
    }
    let l = UnixListener::bind(path).map_err(io_err(format!("bind {}", path.display())))?;
    let mode = match group {
        Some(g) => {
            let gid = resolve_group(g)?;
            std::os::unix::fs::chown(path, None, Some(gid))
                .map_err(io_err(format!("chown {}", path.display())))?;
            0o660
        }
        None => 0o600,
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))?;
    Ok(l)
}

/// A group name (from /etc/group) or number.
fn resolve_group(g: &str) -> Result<u32> {
    if let Ok(n) = g.parse() {
        return Ok(n);
    }
    fs::read_to_string("/etc/group")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.first() == Some(&g)).then(|| f.get(2)?.parse().ok())?
            })
        })
        .ok_or_else(|| Error::invalid(format!("--socket-group {g:?}: no such group")))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(cfg: DaemonConfig) -> Result<()> {
    let subnet = cfg.validate()?;
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::invalid(
            "condo daemon needs root: it runs jails, cgroups and the network",
        ));
    }
    let paths = Paths {
        state: cfg.state_dir.clone(),
    };
    for d in [
        paths.state.clone(),
        paths.images(),
        paths.guests(),
        paths.snapshots(),
        paths.jail_base(),
    ] {
        fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))?;
    }
    fs::set_permissions(&paths.state, fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("chmod {}", paths.state.display())))?;
    let _lock = take_lock(&paths.lock())?;
    let db = Db::open(&paths.db())?;
    db.check()?;
    let m = Arc::new(Manager::new(cfg.clone(), subnet, db)?);
    if let Some(n) = &m.net {
        n.setup()?;
    }
    m.adopt()?;
    m.check_kvm();
    let listener = bind(&cfg.socket, cfg.socket_group.as_deref())?;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let stop = Arc::new(AtomicBool::new(false));
    tracing::info!(
        state = %cfg.state_dir.display(), socket = %cfg.socket.display(),
        cpus = m.host.cpus, memory_mib = m.host.memory_mib, "condo daemon ready"
    );
    let threads = {
        let (m1, s1) = (m.clone(), stop.clone());
        let (m2, s2) = (m.clone(), stop.clone());
        let (m3, s3) = (m.clone(), stop.clone());
        let m4 = m.clone();
        [
            std::thread::Builder::new()
                .name("api".into())
                .spawn(move || crate::server::serve(listener, m1, s1)),
            std::thread::Builder::new()
                .name("accounting".into())
                .spawn(move || crate::accounting::run(m2, s2)),
            std::thread::Builder::new()
                .name("supervisor".into())
                .spawn(move || {
                    while !s3.load(Ordering::Relaxed) {
                        m3.supervise();
                        std::thread::sleep(SUPERVISE_EVERY);
                    }
                }),
            std::thread::Builder::new()
                .name("autostart".into())
                .spawn(move || m4.autostart()),
        ]
    };
    for t in &threads {
        if let Err(e) = t {
            return Err(Error::Other(format!("cannot start a daemon thread: {e}")));
        }
    }
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("condo daemon stopping; the guests keep running");
    stop.store(true, Ordering::Relaxed);
    // Wake the accept loop so that it sees `stop`.
    let _ = std::os::unix::net::UnixStream::connect(&cfg.socket);
    let _ = fs::remove_file(&cfg.socket);
    Ok(())
}

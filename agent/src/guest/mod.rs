//! The agent inside the guest: prepares the guest when it is PID 1,
//! listens (AF_VSOCK port [`AGENT_PORT`](crate::AGENT_PORT), or a Unix
//! socket in test mode), and serves each connection on a thread of its
//! own ([`session`]). One reaper thread collects every child ([`reaper`]).
//!
//! It logs to its standard error, the guest's console, one line per event,
//! each starting `condo-agent: `.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::proto::GuestMsg;

pub mod container;
pub mod procs;
pub mod reaper;
pub mod session;
pub mod spawn;
pub mod sys;

/// Prints one `condo-agent: ` line on standard error (the guest console).
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("condo-agent: {}", format_args!($($arg)*))
    };
}
pub(crate) use log;

/// Connections served at once; more are refused with an `Error`.
pub const MAX_CONNECTIONS: usize = 64;

/// What every session shares.
pub struct Agent {
    pub reaper: reaper::Reaper,
    /// Whether a container setup was attempted; taken for writing while the
    /// root changes and for reading while a process is started.
    pub root_lock: RwLock<bool>,
    /// Serving a Unix socket on the host for tests: no container setup, and
    /// `Shutdown` ends the agent instead of powering the machine off.
    pub test_mode: bool,
    connections: AtomicUsize,
}

/// Where connections come from.
pub enum Listener {
    Vsock(OwnedFd),
    Unix(UnixListener),
}

/// The only vsock peer the agent serves: the host. Processes of the guest
/// could reach the agent through the vsock loopback (CID 1, or the guest's
/// own CID) and run anything as root; they are refused.
pub const HOST_CID: u32 = libc::VMADDR_CID_HOST;

impl Listener {
    /// The next connection, and the peer's CID for vsock.
    fn accept(&self) -> io::Result<(File, Option<u32>)> {
        match self {
            Listener::Vsock(fd) => sys::accept_vsock(fd).map(|(c, cid)| (File::from(c), Some(cid))),
            Listener::Unix(l) => l
                .accept()
                .map(|(s, _)| (File::from(OwnedFd::from(s)), None)),
        }
    }
}

/// Counts a connection for as long as its thread runs.
struct Counted(Arc<Agent>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves connections from `listener` for ever; returns only the error
/// that stopped it.
pub fn serve(listener: Listener, test_mode: bool) -> io::Error {
    let agent = Arc::new(Agent {
        reaper: reaper::Reaper::default(),
        root_lock: RwLock::new(false),
        test_mode,
        connections: AtomicUsize::new(0),
    });
    let a = agent.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || a.reaper.run())
    {
        return e;
    }
    loop {
        let (mut conn, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or memory: wait for sessions to end.
                log!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Some(cid) = peer.filter(|&c| c != HOST_CID) {
            log!("refused a connection from CID {cid}: only the host (CID {HOST_CID}) may connect");
            let msg = GuestMsg::Error(format!(
                "connections from CID {cid} are refused: only the host (CID {HOST_CID}) may connect"
            ));
            let _ = conn.write_all(&msg.to_frame_bytes());
            continue;
        }
        if agent.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            agent.connections.fetch_sub(1, Ordering::SeqCst);
            log!("refused a connection: {MAX_CONNECTIONS} are open");
            let msg = GuestMsg::Error(format!("too many connections ({MAX_CONNECTIONS} are open)"));
            let _ = conn.write_all(&msg.to_frame_bytes());
            continue;
        }
        let counted = Counted(agent.clone());
        let spawned = std::thread::Builder::new()
            .name("session".into())
            .spawn(move || {
                let c = counted;
                session::Session::new(&c.0, conn).run();
            });
        if let Err(e) = spawned {
            log!("cannot start a session thread: {e}");
        }
    }
}

/// What the guest needs before serving: as PID 1, the kernel filesystems;
/// otherwise, adopting orphans (child subreaper). In both cases a devpts
/// at `/dev/pts` for terminals (busybox's init mounts none).
pub fn prepare_guest(pid1: bool) {
    if pid1 {
        for (fs, dir) in [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")] {
            let _ = std::fs::create_dir_all(dir);
            match sys::mount(Some(fs.as_ref()), Path::new(dir), Some(fs), 0, None) {
                Err(e) if e.raw_os_error() != Some(libc::EBUSY) => {
                    log!("mounting {fs} on {dir}: {e}")
                }
                _ => {}
            }
        }
    } else if let Err(e) = sys::set_child_subreaper() {
        log!("cannot become a child subreaper: {e}");
    }
    if !Path::new("/dev/pts/ptmx").exists() {
        let _ = std::fs::create_dir_all("/dev/pts");
        if let Err(e) = sys::mount(
            Some("devpts".as_ref()),
            Path::new("/dev/pts"),
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("mode=0620,ptmxmode=0666"),
        ) {
            log!("mounting devpts on /dev/pts: {e} (no terminals)");
        }
    }
    if std::fs::symlink_metadata("/dev/ptmx").is_err() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
}

/// Listens on vsock `port`, retrying for a while: the vsock transport may
/// still be probing when the agent starts.
pub fn listen_vsock(port: u32) -> io::Result<Listener> {
    let mut tries = 0;
    loop {
        match sys::vsock_listen(port) {
            Ok(fd) => return Ok(Listener::Vsock(fd)),
            Err(e) if tries < 50 => {
                if tries == 0 {
                    log!("vsock port {port}: {e}; retrying");
                }
                tries += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

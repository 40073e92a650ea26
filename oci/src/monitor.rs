//! The process an engine waits on: the container's monitor, and the
//! monitor of each exec'd process.
//!
//! `create` starts the container's monitor in a session of its own and
//! returns once it reports the container created; the engine (conmon or
//! containerd's runc shim, both subreapers) inherits it, waits for it, and
//! takes its exit status as the container's. The monitor holds the
//! container's standard streams (or its terminal), joins the container's
//! cgroup, boots the VM (the VMM is its child and dies with it), serves
//! `start`, `kill`, `pause` and `resume` on `c.sock`, forwards the signals
//! it receives to the container's process, and once that process ends
//! stops the VM, copies the root disk's changes back and exits with the
//! process's exit code (128+N for signal N).
//!
//! An exec monitor is the same for one `exec`'d process in a running
//! container, without the VM's life cycle.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Condvar, Mutex};

use crate::commands::Ctx;
use crate::console;
use crate::control::{self, Request};
use crate::error::{Error, Result};
use crate::guest::{self, Guest, Io, Workload};
use crate::spec::{Process, Spec};
use crate::state::{self, Container, Status};

/// Where the container is in its life.
enum Phase {
    /// Created; waiting for `start`.
    Created,
    /// Its process runs.
    Started(Arc<dyn Workload>),
    /// Killed before it started: the exit code.
    Killed(i32),
    /// Its process ended.
    Done,
}

struct Shared {
    guest: Arc<dyn Guest>,
    phase: Mutex<Phase>,
    changed: Condvar,
    io: Mutex<Option<Io>>,
    process: Process,
    container: Container,
    /// The terminal this monitor relays, for resizes.
    tty: Option<i32>,
}

/// The descriptor on which `create` waits for "ok" or the reason of a
/// failure.
fn ready_pipe(fd: i32) -> Result<File> {
    if fd < 3 {
        return Err(Error::Other(format!("bad --ready-fd {fd}")));
    }
    // Only a descriptor that is open is taken over.
    // SAFETY: fcntl(F_GETFD) on any integer is harmless.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Error::Other(format!("--ready-fd {fd} is not open")));
    }
    console::set_cloexec(fd);
    // SAFETY: the descriptor is open and was handed to this process for
    // it alone (create's pipe); nothing else in this process uses it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// This process's standard streams, duplicated for the container's
/// process.
fn own_stdio() -> Result<Io> {
    let dup = |fd: i32| -> Result<OwnedFd> {
        // SAFETY: fcntl duplicates a descriptor; the result is checked.
        let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if n < 0 {
            return Err(Error::io(format!("duplicate descriptor {fd}"))(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: n is a new descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(n) })
    };
    Ok(Io::Pipes {
        stdin: dup(0)?,
        stdout: dup(1)?,
        stderr: dup(2)?,
    })
}

/// Replaces this process's standard streams with /dev/null, so that only
/// the container's process holds the engine's pipes.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; null stays open
            // until the end of this block.
            unsafe {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

/// The terminal or the pipes a process gets; with a terminal, its master
/// side goes to `socket` and this process takes the slave as its
/// controlling terminal (it leads its own session).
fn process_io(
    p: &Process,
    socket: Option<&std::path::Path>,
) -> Result<(Io, Option<i32>, Option<OwnedFd>)> {
    if !p.terminal {
        return Ok((own_stdio()?, None, None));
    }
    let socket = socket.ok_or(Error::TtyWithoutSocket)?;
    let (rows, cols) = p
        .console_size
        .map(|s| {
            (
                u16::try_from(s.height).unwrap_or(u16::MAX),
                u16::try_from(s.width).unwrap_or(u16::MAX),
            )
        })
        .unwrap_or((0, 0));
    let pty = console::open_pty(rows, cols)?;
    console::send_master(socket, &pty)?;
    let _ = console::make_controlling(pty.slave.as_raw_fd());
    let keep = pty
        .slave
        .try_clone()
        .map_err(Error::io("duplicate the terminal"))?;
    let fd = keep.as_raw_fd();
    Ok((Io::Terminal(pty.slave), Some(fd), Some(keep)))
}

/// `condo oci monitor`: runs until the container ends; returns its exit
/// code.
pub fn container_monitor(ctx: &Ctx, a: &crate::cli::MonitorArgs) -> i32 {
    let mut ready = match ready_pipe(a.ready_fd) {
        Ok(f) => f,
        Err(e) => {
            ctx.logger.error(&e);
            return 1;
        }
    };
    // Blocked before any thread starts, so that every thread inherits the
    // mask; the handler is installed once the container exists.
    let forwarder: Arc<Mutex<Option<Arc<Shared>>>> = Arc::new(Mutex::new(None));
    let f2 = forwarder.clone();
    crate::signals::forward_to(move |sig| {
        let shared = f2.lock().ok().and_then(|s| s.clone());
        if let Some(s) = shared {
            on_signal(&s, sig);
        }
    });
    let shared = match prepare(ctx, a) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(ready, "{}", e.to_string().replace('\n', " "));
            ctx.logger.log("error", &e.to_string());
            return 1;
        }
    };
    if let Ok(mut f) = forwarder.lock() {
        *f = Some(shared.clone());
    }
    let listener = match UnixListener::bind(shared.container.file("c.sock")) {
        Ok(l) => l,
        Err(e) => {
            let e = Error::path("listen on", &shared.container.file("c.sock"))(e);
            let _ = shared.guest.shutdown();
            let _ = writeln!(ready, "{e}");
            return 1;
        }
    };
    if let Err(e) = shared.container.update(|s| s.status = Status::Created) {
        let _ = shared.guest.shutdown();
        let _ = writeln!(ready, "{e}");
        return 1;
    }
    let s2 = shared.clone();
    std::thread::spawn(move || control::serve(listener, |r| handle(&s2, r)));
    let _ = writeln!(ready, "ok");
    drop(ready);
    detach_stdio();

    // Wait for start or an early kill.
    let workload = {
        let Ok(mut phase) = shared.phase.lock() else {
            return 1;
        };
        loop {
            match &*phase {
                Phase::Created => match shared.changed.wait(phase) {
                    Ok(p) => phase = p,
                    Err(_) => return 1,
                },
                Phase::Started(w) => break Ok(w.clone()),
                Phase::Killed(code) => break Err(*code),
                Phase::Done => break Err(0),
            }
        }
    };
    crate::trace::mark("started");
    let code = match workload {
        Ok(w) => match w.wait() {
            Ok(code) => code,
            Err(e) => {
                ctx.logger.log("error", &e.to_string());
                137
            }
        },
        Err(code) => code,
    };
    if let Ok(mut p) = shared.phase.lock() {
        *p = Phase::Done;
    }
    crate::trace::mark(&format!("process exited ({code})"));
    let _ = shared.container.update(|s| s.status = Status::Stopped);
    if let Err(e) = shared.guest.shutdown() {
        ctx.logger.log("error", &e.to_string());
    }
    crate::trace::mark("stopped");
    code
}

/// Everything up to "created": state, terminal, cgroup, the VM.
fn prepare(ctx: &Ctx, a: &crate::cli::MonitorArgs) -> Result<Arc<Shared>> {
    let container = Container::open(&ctx.root, &a.id)?;
    crate::trace::init(ctx.config()?.debug_log, &a.id);
    crate::trace::mark("monitor started");
    let spec_bytes = std::fs::read(container.file("spec.json"))
        .map_err(Error::path("read", &container.file("spec.json")))?;
    let spec = Spec::parse(&spec_bytes)?;
    let me = std::process::id() as i32;
    let (_, start) = state::proc_stat(me).unwrap_or(('R', 0));
    let saved = container.update(|s| {
        s.pid = me;
        s.pid_start = start;
    })?;
    let process = spec.process().clone();
    let (io, tty, _keep) = process_io(&process, a.console_socket.as_deref())?;
    // The terminal's slave stays open in this process through `Io`.
    std::mem::forget(_keep);
    let cgroups = crate::cgroup::enter(&spec, ctx.systemd_cgroup, &container.id)?;
    if !cgroups.is_empty() {
        container.update(|s| s.cgroups = cgroups.clone())?;
    }
    let guest = guest::boot(ctx, &container, &saved, &spec)?;
    Ok(Arc::new(Shared {
        guest,
        phase: Mutex::new(Phase::Created),
        changed: Condvar::new(),
        io: Mutex::new(Some(io)),
        process,
        container,
        tty,
    }))
}

/// One control request.
fn handle(s: &Shared, r: Request) -> Result<()> {
    let mut phase = s
        .phase
        .lock()
        .map_err(|_| Error::Other("monitor state lost".into()))?;
    match r {
        Request::Start => match &*phase {
            Phase::Created => {
                let io =
                    s.io.lock()
                        .ok()
                        .and_then(|mut i| i.take())
                        .ok_or(Error::StartRunning)?;
                // The engine may have sized the terminal since `create`
                // (conmon does so, instead of a consoleSize).
                let mut process = s.process.clone();
                if let Some((rows, cols)) = s.tty.and_then(console::window_size) {
                    if rows > 0 && cols > 0 {
                        process.console_size = Some(crate::spec::ConsoleSize {
                            height: rows.into(),
                            width: cols.into(),
                        });
                    }
                }
                let w = s.guest.start(&process, io)?;
                *phase = Phase::Started(w);
                s.container.update(|st| st.status = Status::Running)?;
                s.changed.notify_all();
                Ok(())
            }
            Phase::Started(_) => Err(Error::StartRunning),
            Phase::Killed(_) | Phase::Done => Err(Error::StartStopped),
        },
        Request::Kill { signal, all } => match &*phase {
            Phase::Created => {
                if ignored_before_start(signal) {
                    return Ok(());
                }
                *phase = Phase::Killed(128 + signal);
                s.changed.notify_all();
                Ok(())
            }
            Phase::Started(w) => w.signal(signal, all),
            Phase::Killed(_) | Phase::Done => {
                if all {
                    Ok(())
                } else {
                    Err(Error::NotRunning)
                }
            }
        },
        Request::Pause => match &*phase {
            Phase::Created | Phase::Started(_) => {
                s.guest.pause()?;
                s.container.update(|st| st.status = Status::Paused)?;
                Ok(())
            }
            _ => Err(Error::NotRunning),
        },
        Request::Resume => {
            let saved = s.container.load()?;
            if saved.status != Status::Paused {
                return Err(Error::NotPaused);
            }
            s.guest.resume()?;
            let back = match &*phase {
                Phase::Created => Status::Created,
                _ => Status::Running,
            };
            s.container.update(|st| st.status = back)?;
            Ok(())
        }
    }
}

/// Signals whose default action is to do nothing: a process that has not
/// started yet would not notice them.
fn ignored_before_start(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGCHLD | libc::SIGCONT | libc::SIGURG | libc::SIGWINCH
    )
}

/// A signal this monitor received.
fn on_signal(s: &Shared, sig: i32) {
    if sig == libc::SIGWINCH {
        if let (Some(fd), Ok(Phase::Started(w))) = (s.tty, s.phase.lock().as_deref()) {
            if let Some((rows, cols)) = console::window_size(fd) {
                let _ = w.resize(rows, cols);
            }
        }
        return;
    }
    let _ = handle(
        s,
        Request::Kill {
            signal: sig,
            all: false,
        },
    );
}

/// An exec'd process and the terminal it has, if any.
type Started = (Arc<dyn Workload>, Option<i32>);

/// `condo oci exec-monitor`: runs one process in a running container.
pub fn exec_monitor(ctx: &Ctx, a: &crate::cli::ExecMonitorArgs) -> i32 {
    let mut ready = match ready_pipe(a.ready_fd) {
        Ok(f) => f,
        Err(e) => {
            ctx.logger.error(&e);
            return 1;
        }
    };
    let slot: Arc<Mutex<Option<Started>>> = Arc::new(Mutex::new(None));
    let s2 = slot.clone();
    crate::signals::forward_to(move |sig| {
        if let Some((w, tty)) = s2.lock().ok().and_then(|s| s.clone()) {
            if sig == libc::SIGWINCH {
                if let Some((rows, cols)) = tty.and_then(console::window_size) {
                    let _ = w.resize(rows, cols);
                }
            } else {
                let _ = w.signal(sig, false);
            }
        }
    });
    let started = (|| -> Result<(Arc<dyn Workload>, Container)> {
        let process = Process::load(&a.process)?;
        let _ = std::fs::remove_file(&a.process);
        let container = Container::open(&ctx.root, &a.id)?;
        let saved = container.load()?;
        let (io, tty, keep) = process_io(&process, a.console_socket.as_deref())?;
        let guest = guest::attach(ctx, &container, &saved)?;
        let w = guest.start(&process, io)?;
        if let Ok(mut s) = slot.lock() {
            *s = Some((w.clone(), tty));
        }
        // A resize that came before the slot was filled.
        if let Some((rows, cols)) = tty.and_then(console::window_size) {
            if rows > 0 && cols > 0 {
                let _ = w.resize(rows, cols);
            }
        }
        std::mem::forget(keep);
        Ok((w, container))
    })();
    let (w, container) = match started {
        Ok(x) => x,
        Err(e) => {
            let _ = writeln!(ready, "{}", e.to_string().replace('\n', " "));
            ctx.logger.log("error", &e.to_string());
            return 1;
        }
    };
    let me = std::process::id();
    let mark = container.file("execs").join(me.to_string());
    let _ = std::fs::create_dir_all(container.file("execs"));
    let _ = std::fs::write(&mark, "");
    let _ = writeln!(ready, "ok");
    drop(ready);
    detach_stdio();
    let code = match w.wait() {
        Ok(c) => c,
        Err(e) => {
            ctx.logger.log("error", &e.to_string());
            137
        }
    };
    let _ = std::fs::remove_file(&mark);
    code
}

//! One host connection: the hello, then requests, and at most one process
//! whose stdio and control travel on this connection. A single thread polls
//! the socket, the process's stdio and its exit pipe; nothing blocks but
//! writes to the host (which the host paces by reading).
//!
//! Bounds: at most one frame plus 64 KiB of unparsed input, at most
//! [`STDIN_HIGH`] bytes (plus one frame) of input waiting for the process
//! (the socket is not read while more wait), one 32 KiB output chunk at a
//! time. A malformed frame is answered by an `Error`; the connection goes
//! on when the frame was delimited correctly and ends when it was not.
//!
//! When the process ends, its remaining output is sent (for at most
//! [`EXIT_GRACE`] if background children still hold its stdout), then its
//! `Exit`, and the connection is closed. When the host goes away first,
//! the agent closes its ends of the process's stdio: the process sees
//! end-of-file, a broken pipe or (on a terminal) a hangup, as with any
//! Unix consumer going away; the reaper still collects it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::{container, log, procs, reaper, spawn, sys, Agent};
use crate::proto::{
    check_version, Frame, FrameBuf, GuestMsg, HostMsg, SignalReq, MAX_DATA_CHUNK, PROTOCOL_VERSION,
};
use crate::spec::Process;

/// Input bytes waiting for the process above which the socket is not read.
pub const STDIN_HIGH: usize = 256 * 1024;

/// How long output is still forwarded after the process has ended.
pub const EXIT_GRACE: Duration = Duration::from_secs(1);

/// What the terminal's line discipline takes as end of input (Ctrl-D).
const VEOF: u8 = 0x04;

/// The process of this connection.
struct Proc {
    pid: u32,
    terminal: bool,
    stdin: Option<File>,
    stdin_buf: Vec<u8>,
    stdin_closed: bool,
    stdout: Option<File>,
    stderr: Option<File>,
    exit: Option<File>,
    status: Option<crate::proto::ExitStatus>,
    deadline: Option<Instant>,
}

/// Whether the connection goes on.
enum Flow {
    Go,
    Close,
}

pub struct Session<'a> {
    agent: &'a Agent,
    conn: File,
    frames: FrameBuf,
    hello: bool,
    proc: Option<Proc>,
    out: Vec<u8>,
}

/// Which descriptor a poll entry watches.
#[derive(Clone, Copy)]
enum Role {
    Conn,
    Stdin,
    Stdout,
    Stderr,
    Exit,
}

impl<'a> Session<'a> {
    pub fn new(agent: &'a Agent, conn: File) -> Self {
        Session {
            agent,
            conn,
            frames: FrameBuf::new(),
            hello: false,
            proc: None,
            out: Vec::new(),
        }
    }

    /// Serves the connection until either side ends it.
    pub fn run(mut self) {
        let mut scratch = vec![0u8; 64 * 1024];
        loop {
            if let Some(p) = &self.proc {
                if let Some(status) = p.status {
                    let drained = p.stdout.is_none() && p.stderr.is_none();
                    if drained || p.deadline.is_some_and(|d| Instant::now() >= d) {
                        log!("pid {} ended: {status}", p.pid);
                        let _ = self.send(GuestMsg::Exit(status));
                        return;
                    }
                }
            }
            let mut fds = Vec::with_capacity(5);
            let mut roles = Vec::with_capacity(5);
            let mut watch = |fd: &File, events: libc::c_short, role: Role| {
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events,
                    revents: 0,
                });
                roles.push(role);
            };
            let backlog = self.proc.as_ref().map_or(0, |p| p.stdin_buf.len());
            if backlog < STDIN_HIGH {
                watch(&self.conn, libc::POLLIN, Role::Conn);
            }
            let mut timeout = -1;
            if let Some(p) = &self.proc {
                if let (Some(f), false) = (&p.stdin, p.stdin_buf.is_empty()) {
                    watch(f, libc::POLLOUT, Role::Stdin);
                }
                if let Some(f) = &p.stdout {
                    watch(f, libc::POLLIN, Role::Stdout);
                }
                if let Some(f) = &p.stderr {
                    watch(f, libc::POLLIN, Role::Stderr);
                }
                if let Some(f) = &p.exit {
                    watch(f, libc::POLLIN, Role::Exit);
                }
                if let Some(d) = p.deadline {
                    let left = d.saturating_duration_since(Instant::now());
                    timeout = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
                }
            }
            if let Err(e) = sys::poll(&mut fds, timeout) {
                log!("poll: {e}");
                return;
            }
            for (pfd, role) in fds.iter().zip(roles) {
                if pfd.revents == 0 {
                    continue;
                }
                let flow = match role {
                    Role::Conn => self.read_conn(&mut scratch),
                    Role::Stdin => {
                        self.write_stdin();
                        Flow::Go
                    }
                    Role::Stdout => self.forward(false, &mut scratch),
                    Role::Stderr => self.forward(true, &mut scratch),
                    Role::Exit => {
                        self.read_exit();
                        Flow::Go
                    }
                };
                if let Flow::Close = flow {
                    if let Some(p) = &self.proc {
                        if p.status.is_none() {
                            log!("connection closed; pid {} loses its stdio", p.pid);
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Sends one message; `false` when the host is gone.
    fn send(&mut self, m: GuestMsg) -> bool {
        self.out.clear();
        m.encode(&mut self.out);
        self.conn.write_all(&self.out).is_ok()
    }

    fn reply(&mut self, m: GuestMsg) -> Flow {
        if self.send(m) {
            Flow::Go
        } else {
            Flow::Close
        }
    }

    fn error(&mut self, msg: impl std::fmt::Display) -> Flow {
        self.reply(GuestMsg::Error(msg.to_string()))
    }

    fn read_conn(&mut self, scratch: &mut [u8]) -> Flow {
        let n = match self.conn.read(scratch) {
            Ok(0) => return Flow::Close,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Flow::Go
            }
            Err(_) => return Flow::Close,
        };
        self.frames.push(&scratch[..n]);
        loop {
            match self.frames.next_frame() {
                Ok(Some(f)) => {
                    if let Flow::Close = self.frame(f) {
                        return Flow::Close;
                    }
                }
                Ok(None) => return Flow::Go,
                Err(e) => {
                    log!("closing a connection: {e}");
                    let _ = self.error(e);
                    return Flow::Close;
                }
            }
        }
    }

    fn frame(&mut self, f: Frame) -> Flow {
        let msg = match HostMsg::decode(&f) {
            Ok(m) => m,
            Err(e) => {
                log!("refused a message: {e}");
                let flow = self.error(&e);
                return if e.is_recoverable() && self.hello {
                    flow
                } else {
                    Flow::Close
                };
            }
        };
        if !self.hello {
            return self.hello(msg);
        }
        match msg {
            HostMsg::Hello(_) => self.error("hello already received"),
            HostMsg::Exec(p) => self.exec(&p),
            HostMsg::Stdin(data) => self.stdin(data),
            HostMsg::StdinClose => self.stdin_close(),
            HostMsg::Signal(s) => self.signal(s),
            HostMsg::Resize(w) => self.resize(w.rows, w.cols),
            HostMsg::Ps => match procs::container_pids() {
                Ok(pids) => self.reply(GuestMsg::Pids(pids)),
                Err(e) => self.error(e),
            },
            HostMsg::Ping => self.reply(GuestMsg::Pong),
            HostMsg::Setup(s) => self.setup(&s),
            HostMsg::Shutdown => self.shutdown(),
        }
    }

    /// The first message: the version check. The agent answers with its own
    /// version in any case, so a host that speaks several can adapt.
    fn hello(&mut self, msg: HostMsg) -> Flow {
        let HostMsg::Hello(v) = msg else {
            let _ = self.error(format!("expected Hello first, got {}", msg.name()));
            return Flow::Close;
        };
        if !self.send(GuestMsg::Hello(PROTOCOL_VERSION)) {
            return Flow::Close;
        }
        match check_version(v) {
            Ok(_) => {
                self.hello = true;
                Flow::Go
            }
            Err(e) => {
                log!("refused a connection: {e}");
                let _ = self.error(e);
                Flow::Close
            }
        }
    }

    fn exec(&mut self, p: &Process) -> Flow {
        if let Some(running) = &self.proc {
            let pid = running.pid;
            return self.error(format!("this connection already runs pid {pid}"));
        }
        if let Err(e) = p.validate() {
            return self.error(format!("bad process spec: {e}"));
        }
        let started = {
            // Not while the container's root is being changed.
            let _root = self
                .agent
                .root_lock
                .read()
                .unwrap_or_else(|e| e.into_inner());
            self.agent.reaper.register(|| spawn::spawn(p))
        };
        match started {
            Ok((pid, stdio, exit)) => {
                log!("pid {pid} started: {}", p.args.join(" "));
                self.proc = Some(Proc {
                    pid,
                    terminal: p.terminal,
                    stdin: Some(stdio.stdin),
                    stdin_buf: Vec::new(),
                    stdin_closed: false,
                    stdout: Some(stdio.stdout),
                    stderr: stdio.stderr,
                    exit: Some(exit),
                    status: None,
                    deadline: None,
                });
                self.reply(GuestMsg::Started(pid))
            }
            Err(e) => {
                log!("cannot run {}: {e}", p.args[0]);
                self.error(format!("cannot run {}: {e}", p.args[0]))
            }
        }
    }

    fn stdin(&mut self, data: Vec<u8>) -> Flow {
        let Some(p) = &mut self.proc else {
            return self.error("no process on this connection");
        };
        if p.stdin_closed {
            return self.error("stdin is already closed");
        }
        // A process that closed its input (or ended) drops what comes.
        if p.stdin.is_some() {
            p.stdin_buf.extend_from_slice(&data);
        }
        Flow::Go
    }

    fn stdin_close(&mut self) -> Flow {
        let Some(p) = &mut self.proc else {
            return self.error("no process on this connection");
        };
        if !p.stdin_closed {
            p.stdin_closed = true;
            if p.terminal {
                // The pty stays open (it is also the output): end-of-input
                // is the line discipline's EOF character.
                if p.stdin.is_some() {
                    p.stdin_buf.push(VEOF);
                }
            } else if p.stdin_buf.is_empty() {
                p.stdin = None;
            }
        }
        Flow::Go
    }

    fn write_stdin(&mut self) {
        let Some(p) = &mut self.proc else { return };
        let Some(f) = &mut p.stdin else { return };
        match f.write(&p.stdin_buf) {
            Ok(n) => {
                p.stdin_buf.drain(..n);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                // The process closed its input (EPIPE) or ended.
                p.stdin = None;
                p.stdin_buf = Vec::new();
            }
        }
        if p.stdin_buf.is_empty() && p.stdin_closed && !p.terminal {
            p.stdin = None;
        }
    }

    fn forward(&mut self, stderr: bool, scratch: &mut [u8]) -> Flow {
        let Some(p) = &mut self.proc else {
            return Flow::Go;
        };
        let slot = if stderr { &mut p.stderr } else { &mut p.stdout };
        let Some(f) = slot else { return Flow::Go };
        let chunk = &mut scratch[..MAX_DATA_CHUNK];
        match f.read(chunk) {
            // End of file; a pty master reads EIO once every slave is closed.
            Ok(0) => *slot = None,
            Ok(n) => {
                let data = chunk[..n].to_vec();
                let m = if stderr {
                    GuestMsg::Stderr(data)
                } else {
                    GuestMsg::Stdout(data)
                };
                return self.reply(m);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => *slot = None,
        }
        Flow::Go
    }

    fn read_exit(&mut self) {
        let Some(p) = &mut self.proc else { return };
        let Some(f) = &mut p.exit else { return };
        let mut raw = [0u8; 4];
        let status = match f.read_exact(&mut raw) {
            Ok(()) => reaper::exit_status(i32::from_ne_bytes(raw)),
            Err(e) => {
                // The reaper always writes before it drops the pipe.
                log!("pid {}: lost its exit status: {e}", p.pid);
                crate::proto::ExitStatus::Signal(libc::SIGKILL)
            }
        };
        p.exit = None;
        p.status = Some(status);
        p.deadline = Some(Instant::now() + EXIT_GRACE);
    }

    fn signal(&mut self, s: SignalReq) -> Flow {
        if !(1..=64).contains(&s.signal) {
            return self.error(format!("signal {} is out of range 1 to 64", s.signal));
        }
        let target = match (s.all, s.pid, &self.proc) {
            (true, Some(_), _) => return self.error("a signal goes to all or to a pid, not both"),
            (true, None, _) => {
                return match procs::signal_all(s.signal) {
                    Ok(_) => self.reply(GuestMsg::Ok),
                    Err(e) => self.error(format!("signal {} to all: {e}", s.signal)),
                }
            }
            (false, Some(pid), _) => match procs::container_pids() {
                Ok(pids) if pids.contains(&pid) => pid,
                Ok(_) => return self.error(format!("pid {pid} is not a process of the container")),
                Err(e) => return self.error(e),
            },
            (false, None, Some(p)) if p.status.is_some() => {
                let pid = p.pid;
                return self.error(format!("pid {pid} has ended"));
            }
            (false, None, Some(p)) => p.pid,
            (false, None, None) => {
                return self.error("no process on this connection (name a pid, or all)")
            }
        };
        match sys::kill(target, s.signal) {
            Ok(()) => self.reply(GuestMsg::Ok),
            Err(e) => self.error(format!("signal {} to pid {target}: {e}", s.signal)),
        }
    }

    fn resize(&mut self, rows: u16, cols: u16) -> Flow {
        let Some(p) = &self.proc else {
            return self.error("no process on this connection");
        };
        let result = match (&p.stdout, p.terminal) {
            (Some(tty), true) => sys::set_winsize(tty, rows, cols),
            (None, true) => return self.error("the terminal is closed"),
            (_, false) => return self.error("the process has no terminal"),
        };
        match result {
            Ok(()) => self.reply(GuestMsg::Ok),
            Err(e) => self.error(format!("resize: {e}")),
        }
    }

    fn setup(&mut self, s: &crate::spec::ContainerSetup) -> Flow {
        if self.agent.test_mode {
            return self.error("container setup is off in --unix test mode");
        }
        let result = {
            let mut attempted = self
                .agent
                .root_lock
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if *attempted {
                Err("the container was already set up (once per VM)".to_owned())
            } else {
                *attempted = true;
                container::setup(s).map_err(|e| format!("container setup: {e}"))
            }
        };
        match result {
            Ok(report) => {
                log!("container set up: root {}", s.root.path);
                self.reply(GuestMsg::SetupDone(report))
            }
            Err(e) => {
                log!("{e}");
                self.error(e)
            }
        }
    }

    fn shutdown(&mut self) -> Flow {
        let _ = self.send(GuestMsg::Ok);
        if self.agent.test_mode {
            log!("shutdown: exiting (--unix test mode)");
            std::process::exit(0);
        }
        log!("shutdown: powering off");
        let e = sys::power_off();
        self.error(format!("power off: {e}"))
    }
}

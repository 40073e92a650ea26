//! The host side of the agent protocol: connect to a VM's agent through
//! condo's hybrid vsock Unix socket (`CONNECT 1024\n`, `OK <port>\n`, then
//! the protocol), and run processes in the guest.
//!
//! Blocking std I/O; a [`Session`] is one process on one connection, its
//! events read by one thread while any number of [`SessionInput`] clones
//! send input, terminal sizes and signals from others. The guest is not
//! trusted: frames are size-checked before allocation, every message is
//! decoded with errors, and what [`Session::wait`] collects is capped at
//! [`MAX_OUTPUT`] per stream.
//!
//! A command-line `condo exec NAME -- CMD` is [`Client::exec`], a thread
//! copying its stdin to [`SessionInput::write_stdin`], and
//! [`Session::wait_with`] writing to its stdout and stderr, exiting with
//! [`ExitStatus::code`]. An OCI shim relays a pty the same way, plus
//! [`SessionInput::resize`] on SIGWINCH.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::proto::ExitStatus;
use crate::proto::{
    check_version, read_frame, GuestMsg, HostMsg, ProtoError, SignalReq, WinSize, AGENT_PORT,
    HEADER_LEN, MAX_DATA_CHUNK, MAX_PAYLOAD, PROTOCOL_VERSION,
};
use crate::spec::{ContainerSetup, Process, SetupReport};

/// How long a connection, a hello or a control request may take by default
/// (a guest under nested emulation can be slow).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes [`Session::wait`] collects per stream.
pub const MAX_OUTPUT: usize = 64 << 20;

/// Longest `OK <port>` line the hybrid vsock socket sends.
const MAX_OK_LINE: usize = 32;

/// Why a request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("vsock: {0}")]
    Vsock(String),
    #[error("agent protocol: {0}")]
    Proto(#[from] ProtoError),
    /// The agent refused the request; its message says why.
    #[error("the agent says: {0}")]
    Agent(String),
    #[error("the agent closed the connection")]
    Closed,
    #[error("the agent sent {got} where {want} was expected")]
    Unexpected {
        got: &'static str,
        want: &'static str,
    },
    #[error("no answer from the agent within {waited:?} ({last})")]
    Timeout { waited: Duration, last: String },
    #[error("{what} is larger than the limit of {max} bytes")]
    TooLarge { what: &'static str, max: usize },
    #[error("i/o with the agent: {0}")]
    Io(#[source] io::Error),
}

impl ClientError {
    /// Errors a booting guest gives before its agent listens: worth
    /// retrying while waiting for it.
    fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::Vsock(_)
            | ClientError::Closed
            | ClientError::Io(_)
            | ClientError::Timeout { .. } => true,
            ClientError::Proto(e) => matches!(e, ProtoError::Io(_) | ProtoError::Truncated { .. }),
            _ => false,
        }
    }
}

/// An I/O error on `s`; a timeout says how long it waited.
fn io_error(e: io::Error, s: &UnixStream) -> ClientError {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        ClientError::Timeout {
            waited: s.read_timeout().ok().flatten().unwrap_or_default(),
            last: e.to_string(),
        }
    } else {
        ClientError::Io(e)
    }
}

type Result<T> = std::result::Result<T, ClientError>;

#[derive(Debug, Clone)]
enum Target {
    /// condo's hybrid vsock socket (`--vsock cid=..,socket=PATH`).
    Vsock { uds: PathBuf, port: u32 },
    /// An agent serving a Unix socket directly (`condo-agent --unix`).
    Unix(PathBuf),
}

/// How to reach one VM's agent. Cheap to clone; every request opens its own
/// connection.
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    timeout: Duration,
}

/// A process's collected output and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

impl Client {
    /// The agent of the VM whose hybrid vsock socket is `uds_path`, on
    /// [`AGENT_PORT`].
    pub fn vsock(uds_path: impl Into<PathBuf>) -> Client {
        Client {
            target: Target::Vsock {
                uds: uds_path.into(),
                port: AGENT_PORT,
            },
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// An agent serving the Unix socket `path` directly (`condo-agent
    /// --unix PATH`, for tests on the host).
    pub fn unix(path: impl Into<PathBuf>) -> Client {
        Client {
            target: Target::Unix(path.into()),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Another vsock port than [`AGENT_PORT`].
    pub fn with_port(mut self, port: u32) -> Client {
        if let Target::Vsock { port: p, .. } = &mut self.target {
            *p = port;
        }
        self
    }

    /// The limit for connecting, the hello and each control request
    /// (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// A new connection, hello done, with the client's timeout on reads
    /// and writes.
    pub fn connect(&self) -> Result<Connection> {
        self.connect_within(self.timeout)
    }

    fn connect_within(&self, timeout: Duration) -> Result<Connection> {
        let timeout = timeout.max(Duration::from_millis(1));
        let path = match &self.target {
            Target::Vsock { uds, .. } => uds,
            Target::Unix(p) => p,
        };
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(ClientError::Io)?;
        let mut conn = Connection {
            stream,
            agent_version: 0,
        };
        if let Target::Vsock { port, .. } = &self.target {
            conn.vsock_connect(*port)?;
        }
        conn.send(&HostMsg::Hello(PROTOCOL_VERSION))?;
        match conn.recv()? {
            GuestMsg::Hello(v) => {
                conn.agent_version = v;
                check_version(v)?;
            }
            GuestMsg::Error(m) => return Err(ClientError::Agent(m)),
            m => {
                return Err(ClientError::Unexpected {
                    got: m.name(),
                    want: "Hello",
                })
            }
        }
        Ok(conn)
    }

    /// Waits until the agent answers a ping, retrying (a booting guest's
    /// agent is not listening yet) until `timeout` has passed.
    pub fn ping(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let attempt = self
                .connect_within(left.min(self.timeout))
                .and_then(|mut c| c.request(&HostMsg::Ping));
            let err = match attempt {
                Ok(GuestMsg::Pong) => return Ok(()),
                Ok(m) => ClientError::Unexpected {
                    got: m.name(),
                    want: "Pong",
                },
                Err(e) => e,
            };
            if !err.is_transient() {
                return Err(err);
            }
            if start.elapsed() >= timeout {
                return Err(ClientError::Timeout {
                    waited: start.elapsed(),
                    last: err.to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `process` on a connection of its own.
    pub fn exec(&self, process: &Process) -> Result<Session> {
        let mut conn = self.connect()?;
        let pid = match conn.request(&HostMsg::Exec(Box::new(process.clone())))? {
            GuestMsg::Started(pid) => pid,
            m => {
                return Err(ClientError::Unexpected {
                    got: m.name(),
                    want: "Started",
                })
            }
        };
        // A process may be silent for as long as it likes.
        conn.set_timeout(None)?;
        let reader = conn.stream.try_clone().map_err(ClientError::Io)?;
        Ok(Session {
            pid,
            input: SessionInput {
                conn: Arc::new(Mutex::new(conn)),
            },
            reader,
            ended: false,
        })
    }

    /// Runs `process` with no input; its output and status.
    pub fn run(&self, process: &Process) -> Result<Output> {
        let s = self.exec(process)?;
        // A process that has ended already has had its connection closed:
        // the Exit waiting to be read is what counts.
        let _ = s.close_stdin();
        s.wait()
    }

    /// Runs `process` with `stdin` as its input (written from a thread of
    /// its own while the output is read).
    pub fn run_with_stdin(&self, process: &Process, stdin: Vec<u8>) -> Result<Output> {
        let s = self.exec(process)?;
        let input = s.input();
        let writer = std::thread::spawn(move || {
            // A process that ends without reading all of it is not an
            // error of the run (as with a shell pipe).
            let _ = input.write_stdin(&stdin).and_then(|()| input.close_stdin());
        });
        let out = s.wait();
        let _ = writer.join();
        out
    }

    /// The container's processes (the agent's descendants), guest pids.
    pub fn ps(&self) -> Result<Vec<u32>> {
        match self.connect()?.request(&HostMsg::Ps)? {
            GuestMsg::Pids(p) => Ok(p),
            m => Err(ClientError::Unexpected {
                got: m.name(),
                want: "Pids",
            }),
        }
    }

    /// Sends `signal` to every process of the container.
    pub fn signal_all(&self, signal: i32) -> Result<()> {
        expect_ok(self.connect()?.request(&HostMsg::Signal(SignalReq {
            signal,
            all: true,
            pid: None,
        }))?)
    }

    /// Sends `signal` to process `pid` of the container (a descendant of
    /// the agent), from a connection of its own.
    pub fn signal(&self, pid: u32, signal: i32) -> Result<()> {
        expect_ok(self.connect()?.request(&HostMsg::Signal(SignalReq {
            signal,
            all: false,
            pid: Some(pid),
        }))?)
    }

    /// Sets the container up (once per VM): later processes run inside it.
    pub fn setup(&self, setup: &ContainerSetup) -> Result<SetupReport> {
        match self
            .connect()?
            .request(&HostMsg::Setup(Box::new(setup.clone())))?
        {
            GuestMsg::SetupDone(r) => Ok(r),
            m => Err(ClientError::Unexpected {
                got: m.name(),
                want: "SetupDone",
            }),
        }
    }

    /// Powers the guest off (after the agent has answered).
    pub fn shutdown(&self) -> Result<()> {
        expect_ok(self.connect()?.request(&HostMsg::Shutdown)?)
    }
}

fn expect_ok(m: GuestMsg) -> Result<()> {
    match m {
        GuestMsg::Ok => Ok(()),
        m => Err(ClientError::Unexpected {
            got: m.name(),
            want: "Ok",
        }),
    }
}

/// One connection to the agent after the hello: messages one by one. The
/// tool for anything [`Client`] does not wrap (and for tests that send the
/// agent malformed frames).
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    agent_version: u32,
}

impl Connection {
    /// The hybrid vsock handshake: `CONNECT <port>\n`, then `OK <n>\n`.
    fn vsock_connect(&mut self, port: u32) -> Result<()> {
        self.stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .map_err(|e| io_error(e, &self.stream))?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => {
                    return Err(ClientError::Vsock(format!(
                        "the guest did not accept a connection on port {port}"
                    )))
                }
                Ok(_) if b[0] == b'\n' => break,
                Ok(_) if line.len() < MAX_OK_LINE => line.push(b[0]),
                Ok(_) => return Err(ClientError::Vsock("overlong reply to CONNECT".into())),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e, &self.stream)),
            }
        }
        if line.starts_with(b"OK ") {
            Ok(())
        } else {
            Err(ClientError::Vsock(format!(
                "unexpected reply to CONNECT: {:?}",
                String::from_utf8_lossy(&line)
            )))
        }
    }

    /// The protocol version the agent announced.
    pub fn agent_version(&self) -> u32 {
        self.agent_version
    }

    /// The read and write limit (`None`: wait for ever).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.stream
            .set_read_timeout(t)
            .and_then(|()| self.stream.set_write_timeout(t))
            .map_err(ClientError::Io)
    }

    /// Sends one message (refused here if the agent would refuse its size).
    pub fn send(&mut self, m: &HostMsg) -> Result<()> {
        let bytes = m.to_frame_bytes();
        if bytes.len() > HEADER_LEN + MAX_PAYLOAD {
            return Err(ClientError::TooLarge {
                what: m.name(),
                max: MAX_PAYLOAD,
            });
        }
        self.send_raw(&bytes)
    }

    /// Sends bytes as they are (for tests of the agent's decoding).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(|e| io_error(e, &self.stream))
    }

    /// The next message from the agent.
    pub fn recv(&mut self) -> Result<GuestMsg> {
        match read_frame(&mut self.stream) {
            Ok(Some(f)) => Ok(GuestMsg::decode(&f)?),
            Ok(None) => Err(ClientError::Closed),
            Err(ProtoError::Io(e)) => Err(io_error(e, &self.stream)),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends a request and returns its answer; an `Error` answer is
    /// [`ClientError::Agent`].
    pub fn request(&mut self, m: &HostMsg) -> Result<GuestMsg> {
        self.send(m)?;
        match self.recv()? {
            GuestMsg::Error(e) => Err(ClientError::Agent(e)),
            r => Ok(r),
        }
    }
}

/// What a running process sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The process ended; the session has no more events.
    Exit(ExitStatus),
    /// A request sent on the session (a signal, a resize) failed.
    Error(String),
}

/// The input side of a session: shareable with other threads. Once the
/// process has ended the agent closes the connection, and these fail (a
/// broken pipe), as writing to a dead process's pipe does.
#[derive(Debug, Clone)]
pub struct SessionInput {
    conn: Arc<Mutex<Connection>>,
}

impl SessionInput {
    fn send(&self, m: &HostMsg) -> Result<()> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).send(m)
    }

    /// Sends bytes to the process's standard input (its terminal).
    pub fn write_stdin(&self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            self.send(&HostMsg::Stdin(chunk.to_vec()))?;
        }
        Ok(())
    }

    /// Ends the process's input (on a terminal: sends its EOF character).
    pub fn close_stdin(&self) -> Result<()> {
        self.send(&HostMsg::StdinClose)
    }

    /// Sets the process's terminal size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.send(&HostMsg::Resize(WinSize { rows, cols }))
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) -> Result<()> {
        self.send(&HostMsg::Signal(SignalReq {
            signal,
            all: false,
            pid: None,
        }))
    }

    /// Sends `signal` to every process of the container.
    pub fn signal_all(&self, signal: i32) -> Result<()> {
        self.send(&HostMsg::Signal(SignalReq {
            signal,
            all: true,
            pid: None,
        }))
    }
}

/// One process in the guest, on its own connection.
#[derive(Debug)]
pub struct Session {
    pid: u32,
    input: SessionInput,
    reader: UnixStream,
    ended: bool,
}

impl Session {
    /// The process's pid in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A handle for input and control, for another thread.
    pub fn input(&self) -> SessionInput {
        self.input.clone()
    }

    pub fn write_stdin(&self, data: &[u8]) -> Result<()> {
        self.input.write_stdin(data)
    }

    pub fn close_stdin(&self) -> Result<()> {
        self.input.close_stdin()
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.input.resize(rows, cols)
    }

    pub fn signal(&self, signal: i32) -> Result<()> {
        self.input.signal(signal)
    }

    /// A limit for [`Session::next_event`] (`None`: none, the default).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.reader.set_read_timeout(t).map_err(ClientError::Io)
    }

    /// The next event; after [`Event::Exit`], [`ClientError::Closed`].
    pub fn next_event(&mut self) -> Result<Event> {
        if self.ended {
            return Err(ClientError::Closed);
        }
        loop {
            let m = match read_frame(&mut self.reader) {
                Ok(Some(f)) => GuestMsg::decode(&f)?,
                Ok(None) => return Err(ClientError::Closed),
                Err(ProtoError::Io(e)) => return Err(io_error(e, &self.reader)),
                Err(e) => return Err(e.into()),
            };
            return Ok(match m {
                GuestMsg::Stdout(d) => Event::Stdout(d),
                GuestMsg::Stderr(d) => Event::Stderr(d),
                GuestMsg::Exit(s) => {
                    self.ended = true;
                    Event::Exit(s)
                }
                GuestMsg::Error(e) => Event::Error(e),
                // Confirmations of signals and resizes.
                GuestMsg::Ok => continue,
                m => {
                    return Err(ClientError::Unexpected {
                        got: m.name(),
                        want: "process output or Exit",
                    })
                }
            });
        }
    }

    /// Copies the process's output to `stdout` and `stderr` until it ends;
    /// errors of requests sent on the session (signals, resizes) are
    /// skipped. A failing writer (a closed pipe) stops the copy.
    pub fn wait_with(
        mut self,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<ExitStatus> {
        loop {
            match self.next_event()? {
                Event::Stdout(d) => stdout
                    .write_all(&d)
                    .and_then(|()| stdout.flush())
                    .map_err(ClientError::Io)?,
                Event::Stderr(d) => stderr
                    .write_all(&d)
                    .and_then(|()| stderr.flush())
                    .map_err(ClientError::Io)?,
                Event::Exit(s) => return Ok(s),
                Event::Error(_) => {}
            }
        }
    }

    /// Collects the process's output (at most [`MAX_OUTPUT`] per stream)
    /// until it ends.
    pub fn wait(self) -> Result<Output> {
        let mut out = Capped::default();
        let mut err = Capped::default();
        let status = self.wait_with(&mut out, &mut err).map_err(|e| match e {
            ClientError::Io(ref io) if io.kind() == io::ErrorKind::OutOfMemory => {
                ClientError::TooLarge {
                    what: "the process's output",
                    max: MAX_OUTPUT,
                }
            }
            e => e,
        })?;
        Ok(Output {
            stdout: out.0,
            stderr: err.0,
            status,
        })
    }
}

/// A buffer refusing to grow past [`MAX_OUTPUT`].
#[derive(Default)]
struct Capped(Vec<u8>);

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

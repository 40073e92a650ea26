//! The wire protocol between the host and `condo-agent`: framing, the hello
//! that fixes the protocol version, and every message with its encoder and
//! decoder. No I/O policy lives here beyond reading one frame from a byte
//! stream; sessions, spawning and sockets are the [`crate::guest`] and
//! [`crate::client`] modules' business.
//!
//! A frame is a 5-byte header, a big-endian `u32` payload length and a
//! one-byte message type, then the payload: raw bytes for stdio data, a
//! JSON object for control messages, nothing for the bare requests. The
//! length is checked against [`MAX_PAYLOAD`] before anything is allocated.
//! Message types are numbered per direction ([`host`] and [`guest`] codes),
//! so each side decodes only what the other may send. Each decoder returns
//! a [`ProtoError`] on malformed input and never panics; the errors that
//! leave the frame boundaries intact ([`ProtoError::is_recoverable`]) let a
//! connection go on after the peer is told.

use std::io::{self, Read};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::spec::{ContainerSetup, Process, SetupReport};

/// The protocol version this build speaks. A hello carrying another
/// version is refused by both sides (see `docs/agent.md`, "Versioning").
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// Bytes before each payload: the length (`u32`, big-endian) and the type.
pub const HEADER_LEN: usize = 5;

/// The largest payload either side accepts (1 MiB): a process spec or a
/// container setup with its inline files fits with room to spare.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// The most stdio bytes a sender puts in one data frame.
pub const MAX_DATA_CHUNK: usize = 32 * 1024;

/// What a hello's payload starts with, before the version.
const HELLO_MAGIC: &[u8; 11] = b"condo-agent";

/// Message types the host sends.
pub mod host {
    pub const HELLO: u8 = 0x01;
    pub const EXEC: u8 = 0x10;
    pub const STDIN: u8 = 0x11;
    pub const STDIN_CLOSE: u8 = 0x12;
    pub const SIGNAL: u8 = 0x13;
    pub const RESIZE: u8 = 0x14;
    pub const PS: u8 = 0x15;
    pub const PING: u8 = 0x16;
    pub const SETUP: u8 = 0x17;
    pub const SHUTDOWN: u8 = 0x18;
}

/// Message types the agent sends.
pub mod guest {
    pub const HELLO: u8 = 0x01;
    pub const STARTED: u8 = 0x80;
    pub const STDOUT: u8 = 0x81;
    pub const STDERR: u8 = 0x82;
    pub const EXIT: u8 = 0x83;
    pub const ERROR: u8 = 0x84;
    pub const PONG: u8 = 0x85;
    pub const PIDS: u8 = 0x86;
    pub const SETUP_DONE: u8 = 0x87;
    pub const OK: u8 = 0x88;
}

/// A malformed frame or message, or the stream under it failing.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("the stream ended inside a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error("{name} carries no payload, got {len} bytes")]
    UnexpectedPayload { name: &'static str, len: usize },
    #[error("bad {name} message: {source}")]
    BadJson {
        name: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("bad hello: {0}")]
    BadHello(&'static str),
    #[error("protocol version {got} is not supported (this side speaks version {ours})")]
    Version { got: u32, ours: u32 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl ProtoError {
    /// Whether the stream can go on after this error: the frame was
    /// delimited correctly and only its type or content was wrong.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            ProtoError::UnknownType(_)
                | ProtoError::UnexpectedPayload { .. }
                | ProtoError::BadJson { .. }
        )
    }
}

/// One delimited frame, its type not yet interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub ty: u8,
    pub payload: Vec<u8>,
}

/// A signal for the connection's process; or for one process of the
/// container by its guest pid (`pid`, from any connection: how a runtime's
/// separate `kill` command reaches a container's process); or for every
/// process of the container (`all`: the agent's descendants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalReq {
    pub signal: i32,
    #[serde(default)]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// How a process ended: its exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + the signal.
    pub fn code(&self) -> i32 {
        match *self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }

    /// Whether the process exited with code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StartedBody {
    pid: u32,
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    message: String,
}

#[derive(Serialize, Deserialize)]
struct PidsBody {
    pids: Vec<u32>,
}

/// What the host sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMsg {
    /// First message on every connection: the host's protocol version.
    Hello(u32),
    /// Start a process on this connection; answered by `Started` or `Error`.
    Exec(Box<Process>),
    /// Bytes for the process's standard input (or its terminal).
    Stdin(Vec<u8>),
    /// End of the process's input.
    StdinClose,
    Signal(SignalReq),
    /// New terminal size for the process's pty.
    Resize(WinSize),
    /// List the container's processes; answered by `Pids`.
    Ps,
    /// Answered by `Pong`.
    Ping,
    /// Set the container up (once per VM); answered by `SetupDone` or `Error`.
    Setup(Box<ContainerSetup>),
    /// Power the guest off; answered by `Ok` first.
    Shutdown,
}

/// What the agent sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMsg {
    /// The agent's answer to the host's hello: the version it speaks.
    Hello(u32),
    /// The process of this connection runs, with this guest pid.
    Started(u32),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The process ended; the agent closes the connection after this.
    Exit(ExitStatus),
    /// A request failed or was refused; the text says why.
    Error(String),
    Pong,
    /// The container's processes (guest pids, ascending).
    Pids(Vec<u32>),
    SetupDone(SetupReport),
    /// A request with nothing to report succeeded.
    Ok,
}

/// Appends one frame of type `ty` carrying `payload` to `out`. A payload
/// over [`MAX_PAYLOAD`] makes a frame the peer refuses: senders keep data
/// frames to [`MAX_DATA_CHUNK`] and check control messages' size.
pub fn encode_frame(ty: u8, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(ty);
    out.extend_from_slice(&payload[..len as usize]);
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string
    // keys, no custom serializers); an empty object would be refused by
    // the peer, never misread.
    serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec())
}

fn from_json<T: DeserializeOwned>(name: &'static str, payload: &[u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(payload).map_err(|source| ProtoError::BadJson { name, source })
}

fn empty<T>(name: &'static str, payload: &[u8], v: T) -> Result<T, ProtoError> {
    if payload.is_empty() {
        Ok(v)
    } else {
        Err(ProtoError::UnexpectedPayload {
            name,
            len: payload.len(),
        })
    }
}

fn hello_payload(version: u32) -> Vec<u8> {
    let mut p = HELLO_MAGIC.to_vec();
    p.extend_from_slice(&version.to_be_bytes());
    p
}

/// The version a hello payload carries (any version: checking it is the
/// caller's policy, see [`check_version`]).
fn decode_hello(payload: &[u8]) -> Result<u32, ProtoError> {
    let rest = payload
        .strip_prefix(HELLO_MAGIC.as_slice())
        .ok_or(ProtoError::BadHello("not a condo-agent hello"))?;
    let v: [u8; 4] = rest
        .try_into()
        .map_err(|_| ProtoError::BadHello("the version is not 4 bytes"))?;
    Ok(u32::from_be_bytes(v))
}

/// Accepts a peer's version if this side speaks it.
pub fn check_version(got: u32) -> Result<u32, ProtoError> {
    if got == PROTOCOL_VERSION {
        Ok(got)
    } else {
        Err(ProtoError::Version {
            got,
            ours: PROTOCOL_VERSION,
        })
    }
}

impl HostMsg {
    /// The message's name, for log lines and errors.
    pub fn name(&self) -> &'static str {
        match self {
            HostMsg::Hello(_) => "Hello",
            HostMsg::Exec(_) => "Exec",
            HostMsg::Stdin(_) => "Stdin",
            HostMsg::StdinClose => "StdinClose",
            HostMsg::Signal(_) => "Signal",
            HostMsg::Resize(_) => "Resize",
            HostMsg::Ps => "Ps",
            HostMsg::Ping => "Ping",
            HostMsg::Setup(_) => "Setup",
            HostMsg::Shutdown => "Shutdown",
        }
    }

    /// Appends the message as one frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (ty, payload) = match self {
            HostMsg::Hello(v) => (host::HELLO, hello_payload(*v)),
            HostMsg::Exec(p) => (host::EXEC, json(p)),
            HostMsg::Stdin(d) => (host::STDIN, d.clone()),
            HostMsg::StdinClose => (host::STDIN_CLOSE, Vec::new()),
            HostMsg::Signal(s) => (host::SIGNAL, json(s)),
            HostMsg::Resize(w) => (host::RESIZE, json(w)),
            HostMsg::Ps => (host::PS, Vec::new()),
            HostMsg::Ping => (host::PING, Vec::new()),
            HostMsg::Setup(s) => (host::SETUP, json(s)),
            HostMsg::Shutdown => (host::SHUTDOWN, Vec::new()),
        };
        encode_frame(ty, &payload, out);
    }

    /// The message as one frame.
    pub fn to_frame_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Interprets a frame the host sent.
    pub fn decode(frame: &Frame) -> Result<HostMsg, ProtoError> {
        let p = frame.payload.as_slice();
        Ok(match frame.ty {
            host::HELLO => HostMsg::Hello(decode_hello(p)?),
            host::EXEC => HostMsg::Exec(Box::new(from_json("Exec", p)?)),
            host::STDIN => HostMsg::Stdin(p.to_vec()),
            host::STDIN_CLOSE => empty("StdinClose", p, HostMsg::StdinClose)?,
            host::SIGNAL => HostMsg::Signal(from_json("Signal", p)?),
            host::RESIZE => HostMsg::Resize(from_json("Resize", p)?),
            host::PS => empty("Ps", p, HostMsg::Ps)?,
            host::PING => empty("Ping", p, HostMsg::Ping)?,
            host::SETUP => HostMsg::Setup(Box::new(from_json("Setup", p)?)),
            host::SHUTDOWN => empty("Shutdown", p, HostMsg::Shutdown)?,
            t => return Err(ProtoError::UnknownType(t)),
        })
    }
}

impl GuestMsg {
    /// The message's name, for log lines and errors.
    pub fn name(&self) -> &'static str {
        match self {
            GuestMsg::Hello(_) => "Hello",
            GuestMsg::Started(_) => "Started",
            GuestMsg::Stdout(_) => "Stdout",
            GuestMsg::Stderr(_) => "Stderr",
            GuestMsg::Exit(_) => "Exit",
            GuestMsg::Error(_) => "Error",
            GuestMsg::Pong => "Pong",
            GuestMsg::Pids(_) => "Pids",
            GuestMsg::SetupDone(_) => "SetupDone",
            GuestMsg::Ok => "Ok",
        }
    }

    /// Appends the message as one frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (ty, payload) = match self {
            GuestMsg::Hello(v) => (guest::HELLO, hello_payload(*v)),
            GuestMsg::Started(pid) => (guest::STARTED, json(&StartedBody { pid: *pid })),
            GuestMsg::Stdout(d) => (guest::STDOUT, d.clone()),
            GuestMsg::Stderr(d) => (guest::STDERR, d.clone()),
            GuestMsg::Exit(s) => (guest::EXIT, json(s)),
            GuestMsg::Error(m) => (guest::ERROR, json(&ErrorBody { message: m.clone() })),
            GuestMsg::Pong => (guest::PONG, Vec::new()),
            GuestMsg::Pids(p) => (guest::PIDS, json(&PidsBody { pids: p.clone() })),
            GuestMsg::SetupDone(r) => (guest::SETUP_DONE, json(r)),
            GuestMsg::Ok => (guest::OK, Vec::new()),
        };
        encode_frame(ty, &payload, out);
    }

    /// The message as one frame.
    pub fn to_frame_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Interprets a frame the agent sent.
    pub fn decode(frame: &Frame) -> Result<GuestMsg, ProtoError> {
        let p = frame.payload.as_slice();
        Ok(match frame.ty {
            guest::HELLO => GuestMsg::Hello(decode_hello(p)?),
            guest::STARTED => GuestMsg::Started(from_json::<StartedBody>("Started", p)?.pid),
            guest::STDOUT => GuestMsg::Stdout(p.to_vec()),
            guest::STDERR => GuestMsg::Stderr(p.to_vec()),
            guest::EXIT => GuestMsg::Exit(from_json("Exit", p)?),
            guest::ERROR => GuestMsg::Error(from_json::<ErrorBody>("Error", p)?.message),
            guest::PONG => empty("Pong", p, GuestMsg::Pong)?,
            guest::PIDS => GuestMsg::Pids(from_json::<PidsBody>("Pids", p)?.pids),
            guest::SETUP_DONE => GuestMsg::SetupDone(from_json("SetupDone", p)?),
            guest::OK => empty("Ok", p, GuestMsg::Ok)?,
            t => return Err(ProtoError::UnknownType(t)),
        })
    }
}

/// The payload length a header announces, checked against the limit.
fn payload_len(header: &[u8; HEADER_LEN]) -> Result<usize, ProtoError> {
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(ProtoError::TooLarge {
            len,
            max: MAX_PAYLOAD,
        });
    }
    Ok(len)
}

/// Reads one frame from a blocking stream. `Ok(None)` when the stream ends
/// cleanly between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, ProtoError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(ProtoError::Truncated {
            got,
            want: HEADER_LEN,
        });
    }
    let len = payload_len(&header)?;
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got < len {
        return Err(ProtoError::Truncated {
            got: HEADER_LEN + got,
            want: HEADER_LEN + len,
        });
    }
    Ok(Some(Frame {
        ty: header[4],
        payload,
    }))
}

/// Fills `buf` unless the stream ends first; returns how much it read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Splits frames out of bytes that arrive in pieces (a non-blocking or
/// polled stream). It holds at most one frame plus the last piece pushed:
/// an announced length over the limit is an error as soon as the header is
/// in, before the payload is buffered.
#[derive(Debug, Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held that do not yet make a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed. After an
    /// error the stream is out of step: the caller closes it.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        let Some(header) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = payload_len(header)?;
        let ty = header[4];
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Frame { ty, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ConsoleSize, Mount, Rlimit, Root, User};

    fn frame(ty: u8, payload: &[u8]) -> Frame {
        Frame {
            ty,
            payload: payload.to_vec(),
        }
    }

    fn host_round_trip(m: HostMsg) {
        let bytes = m.to_frame_bytes();
        let f = read_frame(&mut bytes.as_slice())
            .expect("read")
            .expect("frame");
        assert_eq!(HostMsg::decode(&f).expect("decode"), m);
    }

    fn guest_round_trip(m: GuestMsg) {
        let bytes = m.to_frame_bytes();
        let f = read_frame(&mut bytes.as_slice())
            .expect("read")
            .expect("frame");
        assert_eq!(GuestMsg::decode(&f).expect("decode"), m);
    }

    fn full_process() -> Process {
        Process {
            terminal: true,
            console_size: Some(ConsoleSize {
                height: 24,
                width: 80,
            }),
            user: User {
                uid: 1000,
                gid: 1000,
                umask: Some(0o22),
                additional_gids: vec![10, 20],
            },
            args: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into(), "X=y z".into()],
            cwd: "/tmp".into(),
            rlimits: vec![Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                soft: 1024,
                hard: 4096,
            }],
            no_new_privileges: true,
        }
    }

    #[test]
    fn every_host_message_round_trips() {
        host_round_trip(HostMsg::Hello(PROTOCOL_VERSION));
        host_round_trip(HostMsg::Hello(77));
        host_round_trip(HostMsg::Exec(Box::new(full_process())));
        host_round_trip(HostMsg::Exec(Box::new(Process::command(["true"]))));
        host_round_trip(HostMsg::Stdin(b"abc\0\xff".to_vec()));
        host_round_trip(HostMsg::Stdin(Vec::new()));
        host_round_trip(HostMsg::StdinClose);
        host_round_trip(HostMsg::Signal(SignalReq {
            signal: 15,
            all: true,
            pid: None,
        }));
        host_round_trip(HostMsg::Signal(SignalReq {
            signal: 9,
            all: false,
            pid: Some(77),
        }));
        host_round_trip(HostMsg::Resize(WinSize {
            rows: 50,
            cols: 132,
        }));
        host_round_trip(HostMsg::Ps);
        host_round_trip(HostMsg::Ping);
        host_round_trip(HostMsg::Setup(Box::new(ContainerSetup {
            root: Root {
                path: "/dev/vda".into(),
                readonly: true,
                fstype: Some("ext4".into()),
            },
            hostname: Some("box".into()),
            mounts: vec![Mount {
                destination: "/etc/hosts".into(),
                kind: Some("bind".into()),
                source: None,
                options: vec!["ro".into()],
                content: Some("127.0.0.1 localhost\n".into()),
            }],
        })));
        host_round_trip(HostMsg::Shutdown);
    }

    #[test]
    fn every_guest_message_round_trips() {
        guest_round_trip(GuestMsg::Hello(PROTOCOL_VERSION));
        guest_round_trip(GuestMsg::Started(4242));
        guest_round_trip(GuestMsg::Stdout(b"hi\n".to_vec()));
        guest_round_trip(GuestMsg::Stderr(vec![0xff; 100]));
        guest_round_trip(GuestMsg::Exit(ExitStatus::Code(3)));
        guest_round_trip(GuestMsg::Exit(ExitStatus::Signal(9)));
        guest_round_trip(GuestMsg::Error("no such file: \"x\"\n".into()));
        guest_round_trip(GuestMsg::Pong);
        guest_round_trip(GuestMsg::Pids(vec![1, 2, 300]));
        guest_round_trip(GuestMsg::SetupDone(SetupReport {
            skipped: vec!["/dev/mqueue".into()],
        }));
        guest_round_trip(GuestMsg::Ok);
    }

    #[test]
    fn the_wire_format_is_as_documented() {
        assert_eq!(
            HostMsg::Ping.to_frame_bytes(),
            [0, 0, 0, 0, host::PING],
            "empty frame"
        );
        let hello = HostMsg::Hello(1).to_frame_bytes();
        assert_eq!(&hello[..5], &[0, 0, 0, 15, host::HELLO]);
        assert_eq!(&hello[5..16], b"condo-agent");
        assert_eq!(&hello[16..], &[0, 0, 0, 1]);
        let exit = GuestMsg::Exit(ExitStatus::Signal(9)).to_frame_bytes();
        assert_eq!(&exit[5..], br#"{"signal":9}"#);
        let sig = HostMsg::Signal(SignalReq {
            signal: 2,
            all: false,
            pid: None,
        })
        .to_frame_bytes();
        assert_eq!(&sig[5..], br#"{"signal":2,"all":false}"#);
    }

    #[test]
    fn exit_status_maps_signals_to_128_plus_n() {
        assert_eq!(ExitStatus::Code(3).code(), 3);
        assert_eq!(ExitStatus::Signal(9).code(), 137);
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Signal(0).success());
    }

    #[test]
    fn a_clean_end_between_frames_is_none() {
        assert!(read_frame(&mut [].as_slice()).expect("eof").is_none());
    }

    #[test]
    fn short_frames_are_truncated_errors() {
        let full = HostMsg::Stdin(b"hello".to_vec()).to_frame_bytes();
        for cut in 1..full.len() {
            let e = read_frame(&mut &full[..cut]).expect_err("short frame");
            assert!(matches!(e, ProtoError::Truncated { .. }), "{cut}: {e}");
            assert!(!e.is_recoverable());
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        for len in [MAX_PAYLOAD as u32 + 1, u32::MAX] {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.push(host::STDIN);
            let e = read_frame(&mut bytes.as_slice()).expect_err("too large");
            assert!(matches!(e, ProtoError::TooLarge { .. }), "{e}");
            let mut fb = FrameBuf::new();
            fb.push(&bytes);
            assert!(matches!(fb.next_frame(), Err(ProtoError::TooLarge { .. })));
        }
        // Exactly the limit is fine.
        let mut bytes = (MAX_PAYLOAD as u32).to_be_bytes().to_vec();
        bytes.push(host::STDIN);
        bytes.resize(HEADER_LEN + MAX_PAYLOAD, 7);
        let f = read_frame(&mut bytes.as_slice())
            .expect("read")
            .expect("frame");
        assert_eq!(f.payload.len(), MAX_PAYLOAD);
    }

    #[test]
    fn unknown_types_are_recoverable_errors() {
        for ty in [0x00, 0x02, 0x19, 0x7f, 0x80, 0xff] {
            let e = HostMsg::decode(&frame(ty, b"")).expect_err("unknown");
            assert!(matches!(e, ProtoError::UnknownType(t) if t == ty));
            assert!(e.is_recoverable());
        }
        // Each direction's types are unknown to the other.
        assert!(GuestMsg::decode(&frame(host::EXEC, b"{}")).is_err());
        assert!(HostMsg::decode(&frame(guest::STARTED, b"{\"pid\":1}")).is_err());
    }

    #[test]
    fn bad_hellos_are_refused() {
        for p in [
            &b""[..],
            b"condo-agent",
            b"condo-agent\0\0\0",
            b"condo-agent\0\0\0\x01\x00",
            b"condo-agenX\0\0\0\x01",
        ] {
            let e = HostMsg::decode(&frame(host::HELLO, p)).expect_err("bad hello");
            assert!(matches!(e, ProtoError::BadHello(_)), "{p:?}: {e}");
            assert!(!e.is_recoverable());
        }
        assert!(check_version(PROTOCOL_VERSION).is_ok());
        let e = check_version(2).expect_err("version 2");
        assert_eq!(
            e.to_string(),
            "protocol version 2 is not supported (this side speaks version 1)"
        );
    }

    #[test]
    fn bad_json_and_bad_utf8_are_recoverable_errors() {
        let cases: &[(u8, &[u8])] = &[
            (host::EXEC, b""),
            (host::EXEC, b"{"),
            (host::EXEC, b"{\"args\": [\"\xff\"]}"),
            (host::EXEC, b"{\"args\": 3}"),
            (host::EXEC, b"[]"),
            (host::EXEC, b"{\"args\":[\"a\"]} trailing"),
            (host::SIGNAL, b"{\"signal\": \"TERM\"}"),
            (host::SIGNAL, b"{\"signal\": 99999999999}"),
            (host::RESIZE, b"{\"rows\": 70000, \"cols\": 1}"),
            (host::RESIZE, b"{\"rows\": -1, \"cols\": 1}"),
            (host::SETUP, b"{\"hostname\": \"x\"}"),
            (host::SETUP, b"\xc3\x28"),
        ];
        for (ty, p) in cases {
            let e = HostMsg::decode(&frame(*ty, p)).expect_err("bad json");
            assert!(matches!(e, ProtoError::BadJson { .. }), "{p:?}: {e}");
            assert!(e.is_recoverable());
        }
        let e = GuestMsg::decode(&frame(guest::EXIT, b"{\"code\":1,\"signal\":2}"))
            .expect_err("two statuses");
        assert!(e.to_string().starts_with("bad Exit message: "), "{e}");
        assert!(GuestMsg::decode(&frame(guest::STARTED, b"{\"pid\":-4}")).is_err());
        assert!(GuestMsg::decode(&frame(guest::ERROR, b"{\"message\":\"\xff\"}")).is_err());
    }

    #[test]
    fn bare_requests_refuse_a_payload() {
        for ty in [host::PING, host::PS, host::STDIN_CLOSE, host::SHUTDOWN] {
            let e = HostMsg::decode(&frame(ty, b"x")).expect_err("payload");
            assert!(matches!(e, ProtoError::UnexpectedPayload { len: 1, .. }));
            assert!(e.is_recoverable());
        }
        for ty in [guest::PONG, guest::OK] {
            assert!(GuestMsg::decode(&frame(ty, b"x")).is_err());
        }
    }

    #[test]
    fn frame_buf_splits_frames_delivered_byte_by_byte() {
        let mut stream = Vec::new();
        HostMsg::Hello(1).encode(&mut stream);
        HostMsg::Stdin(b"abc".to_vec()).encode(&mut stream);
        HostMsg::Ping.encode(&mut stream);
        let mut fb = FrameBuf::new();
        let mut got = Vec::new();
        for b in &stream {
            fb.push(std::slice::from_ref(b));
            while let Some(f) = fb.next_frame().expect("frame") {
                got.push(HostMsg::decode(&f).expect("decode"));
            }
        }
        assert_eq!(
            got,
            [
                HostMsg::Hello(1),
                HostMsg::Stdin(b"abc".to_vec()),
                HostMsg::Ping
            ]
        );
        assert_eq!(fb.pending(), 0);
    }
}

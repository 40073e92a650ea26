//! virtio-vsock with Firecracker's hybrid host side.
//!
//! The guest's AF_VSOCK stream sockets reach host programs through Unix
//! sockets, exactly as with Firecracker, so its tooling works unchanged:
//!
//! - host to guest: a host program connects to the Unix socket `uds_path`
//!   and writes `CONNECT <port>\n`; once the guest accepts on `<port>`, condo
//!   answers `OK <host port>\n` and the stream carries the data;
//! - guest to host: a guest connection to CID 2, port `P` is forwarded to
//!   the Unix socket `<uds_path>_P`, if a host program listens there.
//!
//! Flow control follows the spec's credit scheme: condo sends the guest no
//! more than it has room for, and advertises [`CONN_BUF`] bytes per
//! connection; a guest that overruns that credit has its connection reset.
//! Connections, buffered bytes and queued control packets are all capped, so
//! a guest cannot make the VMM allocate without bound.

pub mod packet;

use super::persist::{DeviceStateError, VirtioDeviceState, VsockState};
use crate::persist::Persist;
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use self::packet::{op, Header, HDR_LEN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::worker::{keep_serving, QueueWorker, DYNAMIC_TOKEN_BASE};
use super::{
    arm_notification, device_type, read_config_bytes, ActivateError, Activation, Interrupt,
    VirtioDevice, INT_VRING, VIRTIO_RING_F_EVENT_IDX,
};

/// The host's context id.
pub const HOST_CID: u64 = 2;
/// Receive buffer space condo advertises per connection: the most guest
/// data it holds for a host program that is slow to read.
pub const CONN_BUF: u32 = 256 << 10;
/// Most simultaneous connections.
pub const MAX_CONNS: usize = 256;
/// Largest payload condo accepts in or puts into one packet.
pub const MAX_PAYLOAD: usize = 64 << 10;
/// Most control packets waiting for receive buffers; beyond, the oldest
/// are dropped (a guest that floods resets without reading its queue).
const MAX_PENDING_CTRL: usize = 4096;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// First port condo gives host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
/// The listening socket's token: the first after the three queues.
const LISTENER: u64 = 3;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock guest CID {0} is reserved (use 3 to {max})", max = u32::MAX - 1)]
    BadCid(u32),
    #[error("vsock socket {path}: {err}")]
    Socket { path: PathBuf, err: std::io::Error },
}

/// The vsock device.
pub struct Vsock {
    cid: u32,
    uds_path: PathBuf,
    listener: UnixListener,
    worker: Option<QueueWorker>,
    /// Restored from a snapshot: the guest's connections are gone and it
    /// must be told (a transport reset event) when the device starts.
    reset_pending: bool,
}

impl Vsock {
    /// A device for guest CID `cid`, listening on the Unix socket
    /// `uds_path` for host connections. A stale socket file (nobody
    /// listening) is replaced; a live one is an error.
    pub fn new(cid: u32, uds_path: &Path) -> Result<Self, VsockError> {
        if !(3..u32::MAX).contains(&cid) {
            return Err(VsockError::BadCid(cid));
        }
        let err = |err| VsockError::Socket {
            path: uds_path.to_owned(),
            err,
        };
        let listener = crate::bind_unix_listener(uds_path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(Self {
            cid,
            uds_path: uds_path.to_owned(),
            listener,
            worker: None,
            reset_pending: false,
        })
    }
}

impl Persist for Vsock {
    type State = VsockState;
    type ConstructorArgs = ();
    type Error = DeviceStateError;

    fn save(&self) -> VsockState {
        VsockState {
            cid: self.cid,
            uds_path: self.uds_path.clone(),
        }
    }

    /// Listens on the state's socket again.
    fn restore(_: (), s: &VsockState) -> Result<Self, DeviceStateError> {
        Ok(Self::new(s.cid, &s.uds_path)?)
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.worker = None;
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data)
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.worker = None;
        let fail = |e: String| ActivateError::Failed(format!("vsock: {e}"));
        let Activation {
            mem,
            interrupt,
            queues,
            queue_evts,
            ..
        } = a;
        let Ok([rxq, txq, mut evq]) = <[Queue; 3]>::try_from(queues) else {
            return Err(fail("three queues needed".into()));
        };
        if std::mem::take(&mut self.reset_pending) {
            send_transport_reset(&mem, &mut evq, &interrupt);
        }
        let listener = self.listener.try_clone().map_err(|e| fail(e.to_string()))?;
        let mut w = Muxer::new(
            u64::from(self.cid),
            self.uds_path.clone(),
            mem,
            interrupt,
            rxq,
            txq,
        );
        let listen_fd = listener.as_raw_fd();
        let worker = QueueWorker::spawn_with_epoll(
            "virtio-vsock",
            queue_evts,
            &[listen_fd],
            move |token, events, epoll| {
                let r = match token {
                    t if t == TXQ as u64 => w.process_tx(epoll),
                    t if t == RXQ as u64 || t == EVQ as u64 => Ok(()),
                    LISTENER => {
                        w.accept(&listener, epoll);
                        Ok(())
                    }
                    t => {
                        w.host_event(t, events);
                        Ok(())
                    }
                };
                keep_serving("virtio-vsock", r.and_then(|()| w.process_rx()))
            },
        )
        .map_err(|e| fail(e.to_string()))?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.worker = None;
        true
    }

    fn state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Vsock(self.save())
    }

    /// Connections do not survive a snapshot: the restored guest is told
    /// when the device starts.
    fn restored(&mut self) {
        self.reset_pending = true;
    }
}

/// The event id telling the driver every connection is gone.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Puts a transport reset event in the event queue (the driver keeps a
/// buffer there) and interrupts the guest.
fn send_transport_reset(mem: &GuestMemoryMmap, evq: &mut Queue, irq: &Interrupt) {
    use vm_memory::Bytes;
    let Some(chain) = evq.pop_descriptor_chain(mem) else {
        tracing::warn!("virtio-vsock: no event buffer for the transport reset");
        return;
    };
    let head = chain.head_index();
    let written = match chain.writable().next() {
        Some(d) if d.len() >= 4 => mem
            .write_obj(EVENT_TRANSPORT_RESET, d.addr())
            .map_or(0, |()| 4),
        _ => 0,
    };
    if evq.add_used(mem, head, written).is_ok() {
        irq.trigger(INT_VRING);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// A host program connected; waiting for its `CONNECT <port>` line.
    AwaitConnectLine(Vec<u8>),
    /// REQUEST sent to the guest; waiting for RESPONSE or RST.
    LocalInit,
    Established,
}

struct Conn {
    stream: UnixStream,
    state: State,
    /// Host-side port.
    local_port: u32,
    /// Guest-side port.
    peer_port: u32,
    /// The host stream has data (edge-triggered: set until a read blocks).
    readable: bool,
    /// In the muxer's ready list.
    queued: bool,
    host_eof: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    rx_cnt: u32,
    /// Guest bytes written to the host stream.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    /// Guest bytes waiting for the host stream to take them.
    tx_buf: VecDeque<u8>,
    /// The guest will send no more: shut the stream's write side once
    /// `tx_buf` is flushed.
    peer_shut_send: bool,
    /// Both sides are done: remove once `tx_buf` is flushed.
    close_when_flushed: bool,
}

impl Conn {
    fn new(stream: UnixStream, state: State) -> Self {
        Self {
            stream,
            state,
            local_port: 0,
            peer_port: 0,
            readable: false,
            queued: false,
            host_eof: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            tx_buf: VecDeque::new(),
            peer_shut_send: false,
            close_when_flushed: false,
        }
    }

    /// Bytes the guest has room for.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Writes as much of `tx_buf` as the stream takes.
    fn flush(&mut self) -> std::io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if self.peer_shut_send {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

/// A packet of connection `c` to guest `cid`.
fn header(cid: u64, c: &Conn, op: u16) -> Header {
    Header {
        src_cid: HOST_CID,
        dst_cid: cid,
        src_port: c.local_port,
        dst_port: c.peer_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: CONN_BUF,
        fwd_cnt: c.fwd_cnt,
    }
}

/// Connects to the Unix socket `path` without blocking: a host listener
/// whose backlog is full refuses (EAGAIN) instead of stalling the device.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a new socket, owned by the UnixStream below from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: addr is a valid sockaddr_un of the given size.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// The device's worker: the queues and every connection.
struct Muxer {
    cid: u64,
    uds_path: PathBuf,
    mem: GuestMemoryMmap,
    irq: Arc<Interrupt>,
    rxq: Queue,
    txq: Queue,
    conns: HashMap<u64, Conn>,
    /// (local port, peer port) to connection token.
    by_ports: HashMap<(u32, u32), u64>,
    next_token: u64,
    next_local_port: u32,
    /// Control packets for the guest, waiting for receive buffers.
    ctrl: VecDeque<Header>,
    /// Connections with host data to send the guest.
    ready: VecDeque<u64>,
    scratch: Vec<u8>,
}

impl Muxer {
    fn new(
        cid: u64,
        uds_path: PathBuf,
        mem: GuestMemoryMmap,
        irq: Arc<Interrupt>,
        rxq: Queue,
        txq: Queue,
    ) -> Self {
        Self {
            cid,
            uds_path,
            mem,
            irq,
            rxq,
            txq,
            conns: HashMap::new(),
            by_ports: HashMap::new(),
            next_token: DYNAMIC_TOKEN_BASE,
            next_local_port: FIRST_LOCAL_PORT,
            ctrl: VecDeque::new(),
            ready: VecDeque::new(),
            scratch: vec![0u8; MAX_PAYLOAD],
        }
    }

    fn header(&self, c: &Conn, op: u16) -> Header {
        header(self.cid, c, op)
    }

    fn push_ctrl(&mut self, h: Header) {
        if self.ctrl.len() >= MAX_PENDING_CTRL {
            self.ctrl.pop_front();
        }
        self.ctrl.push_back(h);
    }

    /// A reply resetting the connection `h` belongs to.
    fn reset_reply(&mut self, h: &Header) {
        if h.op == op::RST {
            return;
        }
        self.push_ctrl(Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        });
    }

    fn add_conn(&mut self, epoll: &Epoll, conn: Conn) -> Option<u64> {
        let token = self.next_token;
        self.next_token += 1;
        let ev = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        if let Err(e) = epoll.ctl(
            ControlOperation::Add,
            conn.stream.as_raw_fd(),
            EpollEvent::new(ev, token),
        ) {
            tracing::warn!("virtio-vsock: cannot watch a connection: {e}");
            return None;
        }
        self.conns.insert(token, conn);
        crate::metrics::METRICS.vsock.conns_added.inc();
        Some(token)
    }

    /// Drops a connection (closing its stream removes it from epoll).
    fn remove(&mut self, token: u64) {
        if let Some(c) = self.conns.remove(&token) {
            crate::metrics::METRICS.vsock.conns_removed.inc();
            let key = (c.local_port, c.peer_port);
            if self.by_ports.get(&key) == Some(&token) {
                self.by_ports.remove(&key);
            }
        }
    }

    /// Resets a connection towards the guest and drops it.
    fn reset(&mut self, token: u64) {
        if let Some(c) = self.conns.get(&token) {
            if !matches!(c.state, State::AwaitConnectLine(_)) {
                let h = self.header(c, op::RST);
                self.push_ctrl(h);
            }
        }
        self.remove(token);
    }

    fn accept(&mut self, listener: &UnixListener, epoll: &Epoll) {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= MAX_CONNS {
                        tracing::warn!("virtio-vsock: too many connections; refused one");
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let conn = Conn::new(stream, State::AwaitConnectLine(Vec::new()));
                    if let Some(token) = self.add_conn(epoll, conn) {
                        // Data may already be there: edge triggering would not report it.
                        self.host_event(token, EventSet::IN);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("virtio-vsock: accept: {e}");
                    return;
                }
            }
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.by_ports.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    /// Something happened on a host stream.
    fn host_event(&mut self, token: u64, events: EventSet) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if events.contains(EventSet::OUT) && !c.tx_buf.is_empty() {
            let before = c.fwd_cnt;
            if c.flush().is_err() {
                self.reset(token);
                return;
            }
            if c.fwd_cnt != before {
                self.after_flush(token);
            }
        }
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if !events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP) {
            return;
        }
        if let State::AwaitConnectLine(line) = &mut c.state {
            // Byte by byte: what follows the line is the guest's data.
            let mut b = [0u8; 1];
            loop {
                match c.stream.read(&mut b) {
                    Ok(1) if b[0] == b'\n' => break,
                    Ok(1) if line.len() < MAX_CONNECT_LINE => line.push(b[0]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                    _ => {
                        self.remove(token);
                        return;
                    }
                }
            }
            let port = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.trim_end_matches('\r').strip_prefix("CONNECT "))
                .and_then(|p| p.trim().parse::<u32>().ok());
            let Some(port) = port else {
                tracing::debug!("virtio-vsock: bad CONNECT line from the host");
                self.remove(token);
                return;
            };
            let local = self.alloc_local_port(port);
            let Some(c) = self.conns.get_mut(&token) else {
                return;
            };
            c.local_port = local;
            c.peer_port = port;
            c.state = State::LocalInit;
            c.readable = true;
            self.by_ports.insert((local, port), token);
            let Some(c) = self.conns.get(&token) else {
                return;
            };
            let h = self.header(c, op::REQUEST);
            self.push_ctrl(h);
            return;
        }
        c.readable = true;
        if c.state == State::Established && !c.queued {
            c.queued = true;
            self.ready.push_back(token);
        }
    }

    /// Bookkeeping after guest data reached a host stream: tell the guest
    /// about the room it made, finish a shutdown.
    fn after_flush(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if c.tx_buf.is_empty() && c.close_when_flushed {
            self.reset(token);
            return;
        }
        if c.fwd_cnt.wrapping_sub(c.last_fwd_cnt_sent) >= CONN_BUF / 2 {
            c.last_fwd_cnt_sent = c.fwd_cnt;
            let h = header(self.cid, c, op::CREDIT_UPDATE);
            self.push_ctrl(h);
        }
    }

    /// Serves the transmit queue: packets from the guest.
    fn process_tx(&mut self, epoll: &Epoll) -> Result<(), virtio_queue::Error> {
        let mut payload = std::mem::take(&mut self.scratch);
        loop {
            self.txq.disable_notification(&self.mem)?;
            while let Some(chain) = self.txq.pop_descriptor_chain(&self.mem) {
                let head = chain.head_index();
                let mut hdr = [0u8; HDR_LEN];
                let parsed = chain.reader(&self.mem).ok().and_then(|mut r| {
                    r.read_exact(&mut hdr).ok()?;
                    let h = Header::parse(&hdr);
                    let len = h.len as usize;
                    if len > MAX_PAYLOAD || len > r.available_bytes() {
                        return None;
                    }
                    r.read_exact(&mut payload[..len]).ok()?;
                    Some(h)
                });
                let m = &crate::metrics::METRICS.vsock;
                match parsed {
                    Some(h) => {
                        m.tx_packets_count.inc();
                        self.guest_packet(&h, &payload[..h.len as usize], epoll)
                    }
                    None => {
                        m.tx_malformed_packets.inc();
                        tracing::debug!("virtio-vsock: malformed transmit chain dropped")
                    }
                }
                self.txq.add_used(&self.mem, head, 0)?;
            }
            super::check_avail(&self.mem, &mut self.txq)?;
            if !self.txq.enable_notification(&self.mem)? {
                break;
            }
        }
        self.scratch = payload;
        self.irq.notify_used(&self.mem, &mut self.txq)?;
        Ok(())
    }

    /// One packet from the guest.
    fn guest_packet(&mut self, h: &Header, data: &[u8], epoll: &Epoll) {
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            tracing::debug!(
                "virtio-vsock: packet {} -> {} dropped",
                h.src_cid,
                h.dst_cid
            );
            return;
        }
        if h.type_ != TYPE_STREAM {
            self.reset_reply(h);
            return;
        }
        let Some(&token) = self.by_ports.get(&(h.dst_port, h.src_port)) else {
            if h.op == op::REQUEST {
                self.guest_connect(h, epoll);
            } else {
                self.reset_reply(h);
            }
            return;
        };
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        if c.readable && c.state == State::Established && !c.queued {
            c.queued = true;
            self.ready.push_back(token);
        }
        match (h.op, &c.state) {
            (op::RESPONSE, State::LocalInit) => {
                c.state = State::Established;
                // Nothing was written to this stream yet, so its buffer
                // takes the whole line (which is not guest data: fwd_cnt
                // stays).
                let ok = format!("OK {}\n", c.local_port);
                if c.stream.write_all(ok.as_bytes()).is_err() {
                    self.reset(token);
                    return;
                }
                if c.readable && !c.queued {
                    c.queued = true;
                    self.ready.push_back(token);
                }
            }
            (op::RW, State::Established) => {
                if c.tx_buf.len() + data.len() > CONN_BUF as usize {
                    tracing::debug!("virtio-vsock: guest overran its credit; connection reset");
                    self.reset(token);
                    return;
                }
                c.tx_buf.extend(data);
                let before = c.fwd_cnt;
                if c.flush().is_err() {
                    self.reset(token);
                    return;
                }
                if c.fwd_cnt != before {
                    self.after_flush(token);
                }
            }
            (op::CREDIT_UPDATE, State::Established) => {}
            (op::CREDIT_REQUEST, State::Established) => {
                c.last_fwd_cnt_sent = c.fwd_cnt;
                let h = header(self.cid, c, op::CREDIT_UPDATE);
                self.push_ctrl(h);
            }
            (op::SHUTDOWN, State::Established) => {
                if h.flags & SHUTDOWN_SEND != 0 {
                    c.peer_shut_send = true;
                    if c.tx_buf.is_empty() {
                        let _ = c.stream.shutdown(std::net::Shutdown::Write);
                    }
                }
                let both = SHUTDOWN_SEND | SHUTDOWN_RCV;
                if h.flags & both == both || (h.flags & SHUTDOWN_SEND != 0 && c.host_eof) {
                    c.close_when_flushed = true;
                    if c.tx_buf.is_empty() {
                        self.reset(token);
                    }
                }
            }
            (op::RST, _) => self.remove(token),
            _ => self.reset(token),
        }
    }

    /// The guest connects to a host port: forward to `<uds_path>_<port>`.
    fn guest_connect(&mut self, h: &Header, epoll: &Epoll) {
        if self.conns.len() >= MAX_CONNS {
            tracing::warn!("virtio-vsock: too many connections; refused one");
            self.reset_reply(h);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            r => {
                tracing::debug!(
                    "virtio-vsock: guest connection to port {} refused: {:?}",
                    h.dst_port,
                    r.err()
                );
                self.reset_reply(h);
                return;
            }
        };
        let mut c = Conn::new(stream, State::Established);
        c.local_port = h.dst_port;
        c.peer_port = h.src_port;
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        let reply = self.header(&c, op::RESPONSE);
        match self.add_conn(epoll, c) {
            Some(token) => {
                self.by_ports.insert((h.dst_port, h.src_port), token);
                self.push_ctrl(reply);
            }
            None => self.reset_reply(h),
        }
    }

    /// The next packet for the guest that fits `room` payload bytes, its
    /// payload in `scratch`.
    fn next_rx_packet(&mut self, room: usize) -> Option<Header> {
        loop {
            if let Some(h) = self.ctrl.pop_front() {
                return Some(h);
            }
            let token = self.ready.pop_front()?;
            let Some(c) = self.conns.get_mut(&token) else {
                continue;
            };
            c.queued = false;
            if c.state != State::Established || !c.readable || c.host_eof {
                continue;
            }
            let n = (c.peer_credit() as usize).min(room).min(self.scratch.len());
            if n == 0 {
                // Resumes when the guest reports room (any packet does).
                continue;
            }
            match c.stream.read(&mut self.scratch[..n]) {
                Ok(0) => {
                    // The host program sends no more (it may still read:
                    // a half close looks the same).
                    c.host_eof = true;
                    c.readable = false;
                    let mut h = header(self.cid, c, op::SHUTDOWN);
                    h.flags = SHUTDOWN_SEND;
                    let done = c.peer_shut_send && c.tx_buf.is_empty();
                    self.push_ctrl(h);
                    if done {
                        self.reset(token);
                    }
                }
                Ok(k) => {
                    c.rx_cnt = c.rx_cnt.wrapping_add(k as u32);
                    c.last_fwd_cnt_sent = c.fwd_cnt;
                    c.queued = true;
                    let mut h = header(self.cid, c, op::RW);
                    h.len = k as u32;
                    self.ready.push_back(token);
                    return Some(h);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => c.readable = false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    c.queued = true;
                    self.ready.push_front(token);
                }
                Err(_) => self.reset(token),
            }
        }
    }

    /// Fills the guest's receive buffers with whatever is pending.
    fn process_rx(&mut self) -> Result<(), virtio_queue::Error> {
        let mut used = false;
        let mem = self.mem.clone();
        while !self.ctrl.is_empty() || !self.ready.is_empty() {
            let Some(chain) = self.rxq.pop_descriptor_chain(&mem) else {
                if arm_notification(&self.mem, &mut self.rxq)? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let Ok(mut w) = chain.writer(&mem) else {
                self.rxq.add_used(&self.mem, head, 0)?;
                used = true;
                continue;
            };
            let cap = w.available_bytes();
            if cap < HDR_LEN {
                tracing::debug!("virtio-vsock: receive buffer too small");
                self.rxq.add_used(&self.mem, head, 0)?;
                used = true;
                continue;
            }
            let Some(h) = self.next_rx_packet((cap - HDR_LEN).min(MAX_PAYLOAD)) else {
                // Nothing to send after all: give the buffer back.
                let next = self.rxq.next_avail().wrapping_sub(1);
                self.rxq.set_next_avail(next);
                break;
            };
            let len = h.len as usize;
            let ok =
                w.write_all(&h.to_bytes()).is_ok() && w.write_all(&self.scratch[..len]).is_ok();
            if !ok {
                tracing::debug!("virtio-vsock: receive buffer outside guest memory");
            }
            self.rxq
                .add_used(&self.mem, head, if ok { (HDR_LEN + len) as u32 } else { 0 })?;
            crate::metrics::METRICS.vsock.rx_packets_count.inc();
            used = true;
        }
        if used {
            self.irq.notify_used(&self.mem, &mut self.rxq)?;
        }
        Ok(())
    }
}

/// For fuzzing: host listeners on ports 0 to 3 of a per-process socket
/// path (connections are accepted and dropped by a thread), so that guest
/// connections get past REQUEST into data, credit and shutdown.
fn fuzz_host_listeners() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("condo-fuzz-vsock-{}", std::process::id()));
        for port in 0..4 {
            let p = PathBuf::from(format!("{}_{port}", base.display()));
            let _ = std::fs::remove_file(&p);
            if let Ok(l) = UnixListener::bind(&p) {
                std::thread::spawn(move || {
                    for s in l.incoming() {
                        drop(s);
                    }
                });
            }
        }
        base
    })
    .clone()
}

/// Fuzzing entry point: the guest's (hostile) transmit queue is served,
/// then the replies go into its (hostile) receive queue; guest connections
/// to ports 0 to 3 reach real (accepting) host listeners.
#[doc(hidden)]
pub fn fuzz_queues(mem: &GuestMemoryMmap, rxq: Queue, txq: Queue) {
    let (Ok(evt), Ok(epoll)) = (
        vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK),
        Epoll::new(),
    ) else {
        return;
    };
    let mut m = Muxer::new(
        3,
        fuzz_host_listeners(),
        mem.clone(),
        Arc::new(Interrupt::new(evt)),
        rxq,
        txq,
    );
    let _ = m.process_tx(&epoll);
    let _ = m.process_rx();
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as D, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const WRITE: u16 = 2;
    const NEXT: u16 = 1;
    const CID: u64 = 3;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn tmp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("condo-vsock-{}-{tag}", std::process::id()))
    }

    fn guest_hdr(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 1 << 16,
            fwd_cnt: 0,
        }
    }

    struct Rig<'a> {
        m: &'a GuestMemoryMmap,
        tx: MockSplitQueue<'a, GuestMemoryMmap>,
        rx: MockSplitQueue<'a, GuestMemoryMmap>,
        mux: Muxer,
        epoll: Epoll,
        tx_next: u16,
        rx_next: u16,
        rx_pending: Option<u64>,
    }

    impl<'a> Rig<'a> {
        fn new(m: &'a GuestMemoryMmap, uds: PathBuf) -> Self {
            let tx = MockSplitQueue::create(m, GuestAddress(0x1_0000), 64);
            let rx = MockSplitQueue::create(m, GuestAddress(0x2_0000), 64);
            let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
            let mux = Muxer::new(
                CID,
                uds,
                m.clone(),
                irq,
                rx.create_queue().unwrap(),
                tx.create_queue().unwrap(),
            );
            Self {
                m,
                tx,
                rx,
                mux,
                epoll: Epoll::new().unwrap(),
                tx_next: 0,
                rx_next: 0,
                rx_pending: None,
            }
        }

        /// The guest sends a packet (header and payload in two descriptors).
        fn send(&mut self, h: Header, data: &[u8]) {
            let i = self.tx_next;
            let at = 0x10_0000 + u64::from(i) * 0x2_0000;
            self.m.write_slice(&h.to_bytes(), GuestAddress(at)).unwrap();
            self.m.write_slice(data, GuestAddress(at + 0x100)).unwrap();
            let descs = [
                RawDescriptor::from(D::new(at, HDR_LEN as u32, NEXT, 2 * i + 1)),
                RawDescriptor::from(D::new(at + 0x100, data.len().max(1) as u32, 0, 0)),
            ];
            self.tx.add_desc_chains(&descs, 2 * i).unwrap();
            self.tx_next += 1;
            self.mux.process_tx(&self.epoll).unwrap();
        }

        /// The guest offers a receive buffer (unless the last one is still
        /// unused); returns what the device put there.
        fn recv(&mut self) -> Option<(Header, Vec<u8>)> {
            let at = match self.rx_pending {
                Some(at) => at,
                None => {
                    let i = self.rx_next;
                    let at = 0x30_0000 + u64::from(i) * 0x1000;
                    self.rx
                        .add_desc_chains(&[RawDescriptor::from(D::new(at, 0x1000, WRITE, 0))], i)
                        .unwrap();
                    self.rx_next += 1;
                    at
                }
            };
            self.rx_pending = Some(at);
            let before = self.mux.rxq.next_used();
            self.mux.process_rx().unwrap();
            if self.mux.rxq.next_used() == before {
                return None;
            }
            self.rx_pending = None;
            let mut b = [0u8; HDR_LEN];
            self.m.read_slice(&mut b, GuestAddress(at)).unwrap();
            let h = Header::parse(&b);
            let mut data = vec![0u8; h.len as usize];
            self.m
                .read_slice(&mut data, GuestAddress(at + HDR_LEN as u64))
                .unwrap();
            Some((h, data))
        }
    }

    #[test]
    fn guest_connects_to_a_host_listener_and_data_flows_both_ways() {
        let m = mem();
        let uds = tmp_path("g");
        let host_path = PathBuf::from(format!("{}_5000", uds.display()));
        let _ = std::fs::remove_file(&host_path);
        let listener = UnixListener::bind(&host_path).unwrap();
        let mut r = Rig::new(&m, uds);
        r.send(guest_hdr(op::REQUEST, 1234, 5000, 0), &[]);
        let (h, _) = r.recv().expect("a response");
        assert_eq!(
            (h.op, h.src_port, h.dst_port, h.dst_cid),
            (op::RESPONSE, 5000, 1234, CID)
        );
        let (mut host, _) = listener.accept().unwrap();
        r.send(guest_hdr(op::RW, 1234, 5000, 5), b"hello");
        let mut got = [0u8; 5];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        host.write_all(b"world").unwrap();
        let token = r.mux.by_ports[&(5000, 1234)];
        r.mux.host_event(token, EventSet::IN);
        let (h, data) = r.recv().expect("data");
        assert_eq!((h.op, data.as_slice()), (op::RW, &b"world"[..]));
        // The guest shuts both directions: the connection is reset and gone.
        let mut sd = guest_hdr(op::SHUTDOWN, 1234, 5000, 0);
        sd.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
        r.send(sd, &[]);
        let (h, _) = r.recv().expect("rst");
        assert_eq!(h.op, op::RST);
        assert!(r.mux.conns.is_empty());
        let mut rest = Vec::new();
        host.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let _ = std::fs::remove_file(&host_path);
    }

    #[test]
    fn connection_to_a_port_nobody_listens_on_is_reset() {
        let m = mem();
        let mut r = Rig::new(&m, tmp_path("none"));
        r.send(guest_hdr(op::REQUEST, 1234, 5001, 0), &[]);
        let (h, _) = r.recv().expect("a reset");
        assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, 5001, 1234));
        assert!(r.mux.conns.is_empty());
    }

    #[test]
    fn host_connect_line_becomes_a_request_and_ok_follows_the_response() {
        let m = mem();
        let mut r = Rig::new(&m, tmp_path("h"));
        let (mut host, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        host.write_all(b"CONNECT 52\nearly").unwrap();
        let token = r
            .mux
            .add_conn(
                &r.epoll,
                Conn::new(ours, State::AwaitConnectLine(Vec::new())),
            )
            .unwrap();
        r.mux.host_event(token, EventSet::IN);
        let (h, _) = r.recv().expect("a request");
        assert_eq!(
            (h.op, h.dst_port, h.src_port),
            (op::REQUEST, 52, FIRST_LOCAL_PORT)
        );
        r.send(guest_hdr(op::RESPONSE, 52, FIRST_LOCAL_PORT, 0), &[]);
        let mut line = [0u8; 14];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, format!("OK {FIRST_LOCAL_PORT}\n").as_bytes());
        // Bytes sent right after the CONNECT line reach the guest.
        let (h, data) = r.recv().expect("data");
        assert_eq!((h.op, data.as_slice()), (op::RW, &b"early"[..]));
    }

    #[test]
    fn bad_connect_lines_close_the_stream() {
        let m = mem();
        for line in [&b"HELLO 1\n"[..], b"CONNECT x\n", &[b'C'; 100]] {
            let mut r = Rig::new(&m, tmp_path("bad"));
            let (mut host, ours) = UnixStream::pair().unwrap();
            ours.set_nonblocking(true).unwrap();
            host.write_all(line).unwrap();
            let token = r
                .mux
                .add_conn(
                    &r.epoll,
                    Conn::new(ours, State::AwaitConnectLine(Vec::new())),
                )
                .unwrap();
            r.mux.host_event(token, EventSet::IN);
            assert!(r.mux.conns.is_empty(), "{line:?}");
            assert!(r.recv().is_none());
        }
    }

    #[test]
    fn hostile_packets_are_dropped_or_reset() {
        let m = mem();
        let mut r = Rig::new(&m, tmp_path("x"));
        // Claims more payload than the chain has: dropped, no reply.
        r.send(guest_hdr(op::RW, 1, 2, 60000), b"short");
        // Spoofed source CID: dropped.
        let mut spoof = guest_hdr(op::REQUEST, 1, 2, 0);
        spoof.src_cid = 7;
        r.send(spoof, &[]);
        // Huge length: dropped.
        r.send(guest_hdr(op::RW, 1, 2, u32::MAX), b"x");
        assert!(r.recv().is_none());
        assert_eq!(r.mux.txq.next_used(), 3, "every chain consumed");
        // Data for a connection that does not exist: reset.
        r.send(guest_hdr(op::RW, 9, 10, 1), b"x");
        let (h, _) = r.recv().expect("a reset");
        assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, 10, 9));
        // A reset for one that does not exist: ignored.
        r.send(guest_hdr(op::RST, 9, 10, 0), &[]);
        assert!(r.recv().is_none());
        // A chain whose header descriptor lies outside guest memory.
        let descs = [RawDescriptor::from(D::new(0xffff_0000_0000, 44, 0, 0))];
        r.tx.add_desc_chains(&descs, 2 * r.tx_next).unwrap();
        r.mux.process_tx(&r.epoll).unwrap();
        assert_eq!(r.mux.txq.next_used(), 6);
    }

    #[test]
    fn a_guest_overrunning_its_credit_is_reset() {
        let m = mem();
        let uds = tmp_path("credit");
        let host_path = PathBuf::from(format!("{}_6000", uds.display()));
        let _ = std::fs::remove_file(&host_path);
        let listener = UnixListener::bind(&host_path).unwrap();
        let mut r = Rig::new(&m, uds);
        r.send(guest_hdr(op::REQUEST, 1, 6000, 0), &[]);
        assert_eq!(r.recv().unwrap().0.op, op::RESPONSE);
        // The host program never reads: the socket buffer fills, then
        // condo's CONN_BUF, then the connection is reset.
        let _host = listener.accept().unwrap();
        let chunk = vec![7u8; MAX_PAYLOAD];
        let mut reset = false;
        for _ in 0..200 {
            r.send(guest_hdr(op::RW, 1, 6000, chunk.len() as u32), &chunk);
            if r.mux.conns.is_empty() {
                reset = true;
                break;
            }
        }
        assert!(reset);
        let mut saw_rst = false;
        while let Some((h, _)) = r.recv() {
            saw_rst |= h.op == op::RST;
        }
        assert!(saw_rst);
        let _ = std::fs::remove_file(&host_path);
    }

    #[test]
    fn reserved_cids_are_refused() {
        for cid in [0, 1, 2, u32::MAX] {
            assert!(matches!(
                Vsock::new(cid, &tmp_path("cid")),
                Err(VsockError::BadCid(_))
            ));
        }
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let p = tmp_path("stale");
        let _ = std::fs::remove_file(&p);
        drop(UnixListener::bind(&p).unwrap());
        let v = Vsock::new(3, &p).expect("stale socket replaced");
        assert!(Vsock::new(4, &p).is_err(), "live socket kept");
        drop(v);
        assert!(!p.exists(), "socket removed with the device");
    }

    #[test]
    fn restored_device_tells_the_guest_its_connections_are_gone() {
        let m = mem();
        let mq = MockSplitQueue::create(&m, GuestAddress(0x1_0000), 16);
        m.write_obj(0xffff_ffffu32, GuestAddress(0x20_0000))
            .unwrap();
        mq.add_desc_chains(&[RawDescriptor::from(D::new(0x20_0000, 8, WRITE, 0))], 0)
            .unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        let irq = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        send_transport_reset(&m, &mut q, &irq);
        assert_eq!(q.next_used(), 1);
        assert_eq!(m.read_obj::<u32>(GuestAddress(0x20_0000)).unwrap(), 0);
        assert_eq!(irq.status(), INT_VRING);
        // No buffer: nothing happens, no panic.
        send_transport_reset(&m, &mut q, &irq);
        assert_eq!(q.next_used(), 1);
    }
}

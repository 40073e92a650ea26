//! The vsock muxer: the device's queue worker. It moves packets between
//! the guest's queues and the host's Unix sockets (one [`Conn`] each),
//! accepts host connections on the device's listener, and keeps every
//! buffer and queue within the caps the device module names.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{connect_nonblocking, header, Conn, State};
use super::packet::{op, Header, HDR_LEN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::{
    CONN_BUF, FIRST_LOCAL_PORT, HOST_CID, MAX_CONNECT_LINE, MAX_CONNS, MAX_PAYLOAD,
    MAX_PENDING_CTRL,
};
use crate::virtio::worker::DYNAMIC_TOKEN_BASE;
use crate::virtio::{arm_notification, Interrupt};
use crate::GuestMemoryMmap;

/// The device's worker: the queues and every connection.
pub(super) struct Muxer {
    pub(super) cid: u64,
    pub(super) uds_path: PathBuf,
    pub(super) mem: GuestMemoryMmap,
    pub(super) irq: Arc<Interrupt>,
    pub(super) rxq: Queue,
    pub(super) txq: Queue,
    pub(super) conns: HashMap<u64, Conn>,
    /// (local port, peer port) to connection token.
    pub(super) by_ports: HashMap<(u32, u32), u64>,
    pub(super) next_token: u64,
    pub(super) next_local_port: u32,
    /// Control packets for the guest, waiting for receive buffers.
    pub(super) ctrl: VecDeque<Header>,
    /// Connections with host data to send the guest.
    pub(super) ready: VecDeque<u64>,
    pub(super) scratch: Vec<u8>,
    /// After a transport reset: the event queue and its avail index when
    /// the reset went in, until the guest has handled it.
    pub(super) reset_wait: Option<(Queue, u16)>,
    /// Host connections' requests held until the guest has handled the
    /// reset: one it took first would be reset by it, without a word to
    /// the host, and the host program would wait forever for its answer.
    pub(super) held: Vec<Header>,
}

impl Muxer {
    pub(super) fn new(
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
            reset_wait: None,
            held: Vec::new(),
        }
    }

    /// Holds host connections' requests until the guest has handled the
    /// transport reset just put in `evq`, whose avail index was `avail`
    /// then (see [`super::send_transport_reset`]).
    pub(super) fn await_reset(&mut self, evq: Queue, avail: u16) {
        self.reset_wait = Some((evq, avail));
    }

    /// The guest notified the event queue. Its driver gives the event's
    /// buffer back, and notifies, once it has handled the event: then the
    /// held requests go.
    pub(super) fn event_notified(&mut self) {
        let Some((evq, avail)) = &self.reset_wait else {
            return;
        };
        let now = evq.avail_idx(&self.mem, std::sync::atomic::Ordering::Acquire);
        if now.is_ok_and(|i| i.0 == *avail) {
            return;
        }
        self.reset_wait = None;
        for h in std::mem::take(&mut self.held) {
            self.push_ctrl(h);
        }
    }

    pub(super) fn header(&self, c: &Conn, op: u16) -> Header {
        header(self.cid, c, op)
    }

    pub(super) fn push_ctrl(&mut self, h: Header) {
        if self.ctrl.len() >= MAX_PENDING_CTRL {
            self.ctrl.pop_front();
        }
        self.ctrl.push_back(h);
    }

    /// A reply resetting the connection `h` belongs to.
    pub(super) fn reset_reply(&mut self, h: &Header) {
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

    pub(super) fn add_conn(&mut self, epoll: &Epoll, conn: Conn) -> Option<u64> {
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
    pub(super) fn remove(&mut self, token: u64) {
        if let Some(c) = self.conns.remove(&token) {
            crate::metrics::METRICS.vsock.conns_removed.inc();
            let key = (c.local_port, c.peer_port);
            if self.by_ports.get(&key) == Some(&token) {
                self.by_ports.remove(&key);
            }
        }
    }

    /// Resets a connection towards the guest and drops it.
    pub(super) fn reset(&mut self, token: u64) {
        if let Some(c) = self.conns.get(&token) {
            if !matches!(c.state, State::AwaitConnectLine(_)) {
                let h = self.header(c, op::RST);
                self.push_ctrl(h);
            }
        }
        self.remove(token);
    }

    pub(super) fn accept(&mut self, listener: &UnixListener, epoll: &Epoll) {
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

    pub(super) fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
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
    pub(super) fn host_event(&mut self, token: u64, events: EventSet) {
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
            if self.reset_wait.is_some() {
                self.held.push(h);
            } else {
                self.push_ctrl(h);
            }
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
    pub(super) fn after_flush(&mut self, token: u64) {
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
    pub(super) fn process_tx(&mut self, epoll: &Epoll) -> Result<(), virtio_queue::Error> {
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
            crate::virtio::check_avail(&self.mem, &mut self.txq)?;
            if !self.txq.enable_notification(&self.mem)? {
                break;
            }
        }
        self.scratch = payload;
        self.irq.notify_used(&self.mem, &mut self.txq)?;
        Ok(())
    }

    /// One packet from the guest.
    pub(super) fn guest_packet(&mut self, h: &Header, data: &[u8], epoll: &Epoll) {
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
    pub(super) fn guest_connect(&mut self, h: &Header, epoll: &Epoll) {
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
    pub(super) fn next_rx_packet(&mut self, room: usize) -> Option<Header> {
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
    pub(super) fn process_rx(&mut self) -> Result<(), virtio_queue::Error> {
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
#[cfg(feature = "fuzzing")]
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
#[cfg(feature = "fuzzing")]
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

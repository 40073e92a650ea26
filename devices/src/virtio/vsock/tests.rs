//! virtio-vsock: the muxer against real Unix sockets, the hybrid
//! CONNECT handshake both ways, credit, resets and hostile packets.

use super::connection::{Conn, State};
use super::muxer::Muxer;
use super::packet::{op, Header, HDR_LEN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::virtio::Interrupt;
use crate::GuestMemoryMmap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use virtio_queue::desc::{split::Descriptor as D, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{Epoll, EventSet};
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

    /// A host program connects and writes `bytes`; the muxer reads them.
    /// Returns the program's end.
    fn host_connects(&mut self, bytes: &[u8]) -> UnixStream {
        let (mut host, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        host.write_all(bytes).unwrap();
        let token = self
            .mux
            .add_conn(
                &self.epoll,
                Conn::new(ours, State::AwaitConnectLine(Vec::new())),
            )
            .unwrap();
        self.mux.host_event(token, EventSet::IN);
        host
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
    let mut host = r.host_connects(b"CONNECT 52\nearly");
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
        let _host = r.host_connects(line);
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
    assert_eq!(send_transport_reset(&m, &mut q, &irq), Some(1));
    assert_eq!(q.next_used(), 1);
    assert_eq!(m.read_obj::<u32>(GuestAddress(0x20_0000)).unwrap(), 0);
    assert_eq!(irq.status(), INT_VRING);
    // No buffer: nothing happens, no panic.
    assert_eq!(send_transport_reset(&m, &mut q, &irq), None);
    assert_eq!(q.next_used(), 1);
}

#[test]
fn host_connections_wait_until_the_guest_has_handled_the_reset() {
    let m = mem();
    let mut r = Rig::new(&m, tmp_path("held"));
    let eq = MockSplitQueue::create(&m, GuestAddress(0x4_0000), 16);
    eq.add_desc_chains(&[RawDescriptor::from(D::new(0x20_0000, 4, WRITE, 0))], 0)
        .unwrap();
    let mut evq: Queue = eq.create_queue().unwrap();
    evq.set_event_idx(true);
    let irq = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let avail = send_transport_reset(&m, &mut evq, &irq).expect("delivered");
    // The guest is asked to notify when it gives a buffer back (event
    // index: avail_event, after the used ring, is the current avail index).
    let avail_event = GuestAddress(eq.used_addr().0 + 4 + 8 * 16);
    assert_eq!(m.read_obj::<u16>(avail_event).unwrap(), avail);
    r.mux.await_reset(evq, avail);
    let _host = r.host_connects(b"CONNECT 52\n");
    assert!(r.recv().is_none(), "held while the reset is pending");
    // A notification with no buffer given back (first_look's) is not the
    // guest's answer.
    r.mux.event_notified();
    assert!(r.recv().is_none());
    eq.add_desc_chains(&[RawDescriptor::from(D::new(0x20_0000, 4, WRITE, 0))], 1)
        .unwrap();
    r.mux.event_notified();
    let (h, _) = r
        .recv()
        .expect("the request once the guest handled the reset");
    assert_eq!((h.op, h.dst_port), (op::REQUEST, 52));
}

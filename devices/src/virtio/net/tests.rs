//! virtio-net: the device and its worker against fake and real TAPs,
//! hostile chains, rate limiters and transmit polling.

use super::worker::*;
use super::*;
use crate::rate_limiter::BucketConfig;
use crate::virtio::Interrupt;
use crate::GuestMemoryMmap;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use virtio_queue::desc::{split::Descriptor as D, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const WRITE: u16 = 2;
const NEXT: u16 = 1;

/// A TAP for the test, or None where this process may not create one
/// (TAP devices need CAP_NET_ADMIN).
fn tap(tag: &str) -> Option<Tap> {
    let name = format!("cut{}{tag}", std::process::id() % 10000);
    match Tap::open(&name) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("skipping: cannot create TAP {name}: {e}");
            None
        }
    }
}

fn worker<T: FrameIo>(
    tap: T,
    mem: &GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    mergeable: bool,
) -> NetWorker<T> {
    NetWorker {
        mem: mem.clone(),
        irq: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        rx,
        tx,
        tap: Arc::new(Mutex::new(tap)),
        frame: vec![0u8; MAX_FRAME],
        pending: 0,
        tx_buf: vec![0u8; MAX_FRAME],
        mergeable,
        rx_throttle: None,
        tx_throttle: None,
        tx_poll: None,
    }
}

fn queue<'a>(
    mem: &'a GuestMemoryMmap,
    descs: &[D],
    at: u64,
) -> (Queue, MockSplitQueue<'a, GuestMemoryMmap>) {
    let mq = MockSplitQueue::create(mem, GuestAddress(at), 16);
    let raw: Vec<RawDescriptor> = descs.iter().copied().map(RawDescriptor::from).collect();
    if !raw.is_empty() {
        mq.build_desc_chain(&raw).unwrap();
    }
    (mq.create_queue().unwrap(), mq)
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

#[test]
fn frame_spans_mergeable_buffers() {
    let Some(t) = tap("a") else { return };
    let m = mem();
    // Three 2 KiB receive buffers as three separate chains.
    let mq = MockSplitQueue::create(&m, GuestAddress(0x1_0000), 16);
    for i in 0..3u64 {
        mq.add_desc_chains(
            &[RawDescriptor::from(D::new(
                0x10_0000 + i * 0x1000,
                2048,
                WRITE,
                0,
            ))],
            i as u16,
        )
        .unwrap();
    }
    let rx: Queue = mq.create_queue().unwrap();
    let (tx, _txm) = queue(&m, &[], 0x2_0000);
    let mut w = worker(t, &m, rx, tx, true);
    let len = 5000;
    for (i, b) in w.frame[..len].iter_mut().enumerate() {
        *b = i as u8;
    }
    w.pending = len;
    assert!(matches!(w.deliver().unwrap(), Delivery::Done));
    assert_eq!(w.pending, 0);
    // num_buffers in the header of the first buffer.
    let n: u16 = m.read_obj(GuestAddress(0x10_0000 + 10)).unwrap();
    assert_eq!(n, 3);
    let mut tail = [0u8; 4];
    m.read_slice(&mut tail, GuestAddress(0x10_2000 + 4996 - 4096))
        .unwrap();
    assert_eq!(
        tail,
        [4996u32 as u8, 4997u32 as u8, 4998u32 as u8, 4999u32 as u8]
    );
}

#[test]
fn too_few_buffers_waits_and_gives_them_back() {
    let Some(t) = tap("b") else { return };
    let m = mem();
    let (rx, _rxm) = queue(&m, &[D::new(0x10_0000, 1024, WRITE, 0)], 0x1_0000);
    let (tx, _txm) = queue(&m, &[], 0x2_0000);
    let mut w = worker(t, &m, rx, tx, true);
    w.pending = 4000;
    assert!(matches!(w.deliver().unwrap(), Delivery::NoBuffers));
    assert_eq!(w.rx.next_avail(), 0, "buffer returned to the ring");
    assert_eq!(w.pending, 4000, "frame kept for later");
}

#[test]
fn without_mergeable_a_small_buffer_drops_the_frame() {
    let Some(t) = tap("c") else { return };
    let m = mem();
    let (rx, _rxm) = queue(&m, &[D::new(0x10_0000, 1024, WRITE, 0)], 0x1_0000);
    let (tx, _txm) = queue(&m, &[], 0x2_0000);
    let mut w = worker(t, &m, rx, tx, false);
    w.pending = 4000;
    assert!(matches!(w.deliver().unwrap(), Delivery::Dropped));
    assert_eq!(w.pending, 0);
    assert_eq!(w.rx.next_used(), 1);
}

#[test]
fn hostile_transmit_chains_are_consumed() {
    let m = mem();
    for (i, descs) in [
        vec![D::new(0x10_0000, 4, 0, 0)], // shorter than a vnet header
        vec![D::new(0x10_0000, u32::MAX, 0, 0)], // huge
        vec![D::new(0xffff_0000_0000, 64, 0, 0)], // outside guest memory
        vec![D::new(0x10_0000, 64, WRITE, 0)], // wrong direction
        vec![D::new(0x10_0000, 12, NEXT, 1), D::new(0x3f_fff0, 64, 0, 0)], // straddles the end
    ]
    .into_iter()
    .enumerate()
    {
        let Some(t) = tap(&format!("d{i}")) else {
            return;
        };
        let (rx, _rxm) = queue(&m, &[], 0x1_0000);
        let (tx, _txm) = queue(&m, &descs, 0x2_0000);
        let mut w = worker(t, &m, rx, tx, true);
        w.process_tx(true).unwrap();
        assert_eq!(w.tx.next_used(), 1, "{descs:?}");
    }
}

/// A TAP stand-in: frames to receive, and the frames transmitted.
#[derive(Default)]
struct FakeTap {
    incoming: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    /// Each transmitted frame comes straight back, as a host's reply
    /// does when the TAP write runs its receive path.
    echo: bool,
}

impl FrameIo for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let frame = self
            .incoming
            .pop_front()
            .ok_or(std::io::ErrorKind::WouldBlock)?;
        buf[..frame.len()].copy_from_slice(&frame);
        Ok(frame.len())
    }

    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sent.push(buf.to_vec());
        if self.echo {
            self.incoming.push_back(buf.to_vec());
        }
        Ok(buf.len())
    }
}

fn throttle(bandwidth: Option<(u64, u64)>, ops: Option<(u64, u64)>, token: usize) -> Throttle {
    let cfg = |(size, refill_time)| BucketConfig {
        size,
        one_time_burst: None,
        refill_time,
    };
    let rl = RateLimiter::new(bandwidth.map(cfg), ops.map(cfg)).unwrap();
    Throttle {
        limiter: Arc::new(Mutex::new(rl)),
        token,
    }
}

/// Calls the timer's handler path until `done`, as the worker would when
/// the timerfd fires (an early call is a spurious event).
fn until_timer<T: FrameIo>(
    w: &mut NetWorker<T>,
    token: usize,
    done: impl Fn(&NetWorker<T>) -> bool,
) {
    let start = Instant::now();
    while !done(w) {
        assert!(start.elapsed() < Duration::from_secs(2), "timer stalled");
        std::thread::sleep(Duration::from_millis(2));
        w.handle(token).unwrap();
    }
}

#[test]
fn tx_bandwidth_limit_leaves_chains_in_the_queue() {
    let m = mem();
    // Three 112-byte frames; the bucket holds two (a third after 50 ms).
    let descs: Vec<D> = (0..3u16)
        .map(|i| D::new(0x10_0000 + u64::from(i) * 0x1000, 112, 0, 0))
        .collect();
    let mq = MockSplitQueue::create(&m, GuestAddress(0x2_0000), 16);
    let raw: Vec<RawDescriptor> = descs.into_iter().map(RawDescriptor::from).collect();
    mq.add_desc_chains(&raw, 0).unwrap();
    let (rx, _rxm) = queue(&m, &[], 0x1_0000);
    let mut w = worker(FakeTap::default(), &m, rx, mq.create_queue().unwrap(), true);
    w.tx_throttle = Some(throttle(Some((224, 100)), Some((100, 10_000_000)), 5));

    w.handle(TX).unwrap();
    assert_eq!((w.tx.next_used(), w.tx.next_avail()), (2, 2));
    assert_eq!(w.tap.lock().unwrap().sent.len(), 2);
    let t = w.tx_throttle.as_ref().unwrap();
    let rl = t.limiter.lock().unwrap();
    assert!(rl.is_blocked());
    // The refused frame's op was given back.
    assert_eq!(rl.ops().map(|b| b.budget()), Some(98));
    drop(rl);
    // A notification while throttled sends nothing.
    w.handle(TX).unwrap();
    assert_eq!(w.tx.next_used(), 2);

    until_timer(&mut w, 5, |w| w.tx.next_used() == 3);
    assert_eq!(w.tx.next_avail(), 3);
    let tap = w.tap.lock().unwrap();
    assert_eq!(tap.sent.len(), 3);
    assert!(tap.sent.iter().all(|f| f.len() == 112));
}

/// Waits (at most a second) for `timer` to expire, as epoll would.
fn expired(timer: &TimerFd) -> bool {
    let mut p = libc::pollfd {
        fd: timer.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 1000) == 1 }
}

#[test]
fn a_streaming_guest_is_polled_without_notifications() {
    for event_idx in [false, true] {
        let m = mem();
        let mq = MockSplitQueue::create(&m, GuestAddress(0x2_0000), 16);
        let frame = |i: u64| RawDescriptor::from(D::new(0x10_0000 + i * 0x1000, 64, 0, 0));
        mq.add_desc_chains(&[frame(0)], 0).unwrap();
        let mut tx: Queue = mq.create_queue().unwrap();
        tx.set_event_idx(event_idx);
        let (rx, _rxm) = queue(&m, &[], 0x1_0000);
        let mut w = worker(FakeTap::default(), &m, rx, tx, true);
        w.tx_poll = Some(TxPoll {
            timer: TimerFd::new().unwrap(),
            active: false,
        });
        // Whether the guest would kick for its next frame: the used
        // ring's flag, or with event index the avail_event field.
        let notified = |w: &NetWorker<FakeTap>| {
            if event_idx {
                let avail_event = GuestAddress(mq.used_addr().0 + 4 + 8 * 16);
                m.read_obj::<u16>(avail_event).unwrap() == w.tx.next_avail()
            } else {
                m.read_obj::<u16>(mq.used_addr()).unwrap() & 1 == 0
            }
        };
        let timer_expired = |w: &NetWorker<FakeTap>| expired(&w.tx_poll.as_ref().unwrap().timer);

        // A kick: the frame goes out at once; the device then polls.
        w.handle(TX).unwrap();
        assert_eq!(w.tap.lock().unwrap().sent.len(), 1);
        assert!(w.polling() && !notified(&w), "event_idx {event_idx}");
        // Frames queued meanwhile wait for the timer, even if kicked.
        mq.add_desc_chains(&[frame(1), frame(2)], 1).unwrap();
        w.handle(TX).unwrap();
        assert_eq!(w.tx.next_used(), 1);
        assert!(timer_expired(&w));
        w.handle(TX_POLL_TOKEN).unwrap();
        assert_eq!(w.tx.next_used(), 3);
        assert!(w.polling() && !notified(&w));
        // A look that finds nothing stops polling and re-arms.
        assert!(timer_expired(&w));
        w.handle(TX_POLL_TOKEN).unwrap();
        assert!(!w.polling() && notified(&w), "event_idx {event_idx}");
        // A late timer event then does nothing; a kick serves at once.
        mq.add_desc_chains(&[frame(3)], 3).unwrap();
        w.handle(TX_POLL_TOKEN).unwrap();
        assert_eq!(w.tx.next_used(), 3);
        w.handle(TX).unwrap();
        assert_eq!(w.tx.next_used(), 4);
        assert_eq!(w.tap.lock().unwrap().sent.len(), 4);
    }
}

#[test]
fn a_reply_waiting_after_a_transmit_shares_its_interrupt() {
    let m = mem();
    let mq = MockSplitQueue::create(&m, GuestAddress(0x2_0000), 16);
    mq.add_desc_chains(&[RawDescriptor::from(D::new(0x10_0000, 64, 0, 0))], 0)
        .unwrap();
    let tx: Queue = mq.create_queue().unwrap();
    let (rx, _rxm) = queue(&m, &[D::new(0x20_0000, 2048, WRITE, 0)], 0x1_0000);
    let tap = FakeTap {
        echo: true,
        ..FakeTap::default()
    };
    let mut w = worker(tap, &m, rx, tx, true);
    w.tx_poll = Some(TxPoll {
        timer: TimerFd::new().unwrap(),
        active: false,
    });
    w.handle(TX).unwrap();
    assert_eq!(w.tx.next_used(), 1, "frame sent");
    assert_eq!(w.rx.next_used(), 1, "reply delivered in the same pass");
    assert!(w.tap.lock().unwrap().incoming.is_empty());
    assert_eq!(w.irq.evt.read().unwrap(), 1, "one interrupt for both");
}

#[test]
fn rx_ops_limit_keeps_the_frame_pending() {
    let m = mem();
    let mq = MockSplitQueue::create(&m, GuestAddress(0x1_0000), 16);
    let raw: Vec<RawDescriptor> = (0..3u16)
        .map(|i| RawDescriptor::from(D::new(0x10_0000 + u64::from(i) * 0x1000, 2048, WRITE, 0)))
        .collect();
    mq.add_desc_chains(&raw, 0).unwrap();
    let (tx, _txm) = queue(&m, &[], 0x2_0000);
    let mut tap = FakeTap::default();
    tap.incoming.push_back(vec![1u8; 100]);
    tap.incoming.push_back(vec![2u8; 200]);
    let mut w = worker(tap, &m, mq.create_queue().unwrap(), tx, true);
    // One frame now, the next 60 ms later.
    w.rx_throttle = Some(throttle(None, Some((1, 60)), 4));

    w.handle(TAP_TOKEN).unwrap();
    assert_eq!((w.rx.next_used(), w.rx.next_avail()), (1, 1));
    assert_eq!(w.pending, 200, "refused frame kept");
    // Neither new buffers nor the TAP deliver while throttled.
    w.handle(RX).unwrap();
    w.handle(TAP_TOKEN).unwrap();
    assert_eq!(w.rx.next_used(), 1);

    until_timer(&mut w, 4, |w| w.rx.next_used() == 2);
    assert_eq!(w.pending, 0);
    assert!(w.tap.lock().unwrap().incoming.is_empty());
    let mut second = [0u8; 200];
    m.read_slice(&mut second, GuestAddress(0x10_1000)).unwrap();
    assert_eq!(&second[12..], &[2u8; 188][..]);
}

#[test]
fn unlimited_worker_ignores_unknown_tokens() {
    let m = mem();
    let (rx, _rxm) = queue(&m, &[D::new(0x10_0000, 2048, WRITE, 0)], 0x1_0000);
    let (tx, _txm) = queue(&m, &[D::new(0x11_0000, 64, 0, 0)], 0x2_0000);
    let mut tap = FakeTap::default();
    tap.incoming.push_back(vec![3u8; 64]);
    let mut w = worker(tap, &m, rx, tx, false);
    w.handle(4).unwrap();
    w.handle(5).unwrap();
    assert_eq!((w.rx.next_used(), w.tx.next_used()), (0, 0));
    w.handle(TAP_TOKEN).unwrap();
    w.handle(TX).unwrap();
    assert_eq!((w.rx.next_used(), w.tx.next_used()), (1, 1));
    assert_eq!(w.tap.lock().unwrap().sent.len(), 1);
}

/// Activates `net` on `rx` and `tx` with fresh queue events.
fn activate(net: &mut Net, m: &GuestMemoryMmap, rx: Queue, tx: Queue) {
    net.activate(Activation {
        mem: m.clone(),
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        queues: vec![rx, tx],
        queue_evts: vec![
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ],
        acked_features: 0,
    })
    .unwrap();
}

#[test]
fn activation_registers_the_limiter_timers() {
    let Some(t) = tap("e") else { return };
    let rl = || RateLimiter::new(None, None).unwrap();
    let mut net = Net::new("eth0", t, [2, 0, 0, 0, 0, 1])
        .rx_rate_limiter(rl())
        .tx_rate_limiter(rl());
    let m = mem();
    let (rx, _rxm) = queue(&m, &[], 0x1_0000);
    let (tx, _txm) = queue(&m, &[], 0x2_0000);
    activate(&mut net, &m, rx, tx);
    assert!(net.reset());
}

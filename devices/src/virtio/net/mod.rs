//! virtio-net on a TAP interface.
//!
//! One receive and one transmit queue. Frames cross with their 12-byte
//! `virtio_net_hdr_v1` unchanged (the TAP is opened with IFF_VNET_HDR), so
//! checksum and segmentation offloads (TSO4/6, UFO) work end to end; the
//! TAP's receive offloads follow what the guest acknowledged. Mergeable
//! receive buffers let a 64 KiB frame span several guest buffers.
//! A frame that fits no buffer, or a malformed transmit chain, is dropped
//! with a debug log; the guest cannot make the VMM buffer more than one
//! pending frame.
//!
//! Transmission polls briefly after each burst: a kick is served at once,
//! then the device leaves the guest's notifications off and looks again
//! [`TX_POLL_INTERVAL`] later, and again while looks find frames; a look
//! that finds none re-arms notifications. A frame after a quiet spell goes
//! out without delay; one queued while polling waits at most the interval,
//! without a kick. Kicks and interrupts are VM exits, which under nested
//! virtualization dominate the cost of a frame, and later completions let
//! the guest's TCP build larger TSO frames: in the nested test host a
//! 16 MiB stream took 2,000 kicks and 3,700 frames instead of 7,900 and
//! 9,100, and half the time or less. QEMU's transmit bottom half batches
//! in a similar way.
//!
//! Optional receive and transmit [`RateLimiter`]s throttle the device as in
//! Firecracker: each frame costs one op and its length (vnet header
//! included) in bytes. A refused transmit chain stays in the queue, a
//! refused received frame stays pending; the limiter's timer resumes them.

pub mod tap;

use super::persist::{limiter, DeviceStateError, NetState, VirtioDeviceState};
use crate::persist::Persist;
use crate::sync::lock;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use self::tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO, VNET_HDR_LEN};
use super::worker::{keep_serving, QueueWorker};
use super::{
    arm_notification, device_type, read_config_bytes, ActivateError, Activation, Interrupt,
    VirtioDevice, VIRTIO_RING_F_EVENT_IDX,
};
use super::{drain_queue_until_refused, serve_available};
use crate::rate_limiter::{admit, limiter_timer_event, RateLimiter};
use vmm_sys_util::timerfd::TimerFd;

const QUEUE_SIZE: u16 = 256;
/// Largest frame: 64 KiB of TSO payload plus headers, plus the vnet header.
const MAX_FRAME: usize = 65562 + VNET_HDR_LEN;

const VIRTIO_NET_F_CSUM: u32 = 0;
const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
const VIRTIO_NET_F_MAC: u32 = 5;
const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
const VIRTIO_NET_F_GUEST_UFO: u32 = 10;
const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
const VIRTIO_NET_F_HOST_UFO: u32 = 14;
const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
const VIRTIO_NET_F_STATUS: u32 = 16;
const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// How long after a transmit pass that found frames the device looks again
/// (with the guest's notifications still off).
pub const TX_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_micros(25);

const RX: usize = 0;
const TX: usize = 1;
const TAP_TOKEN: usize = 2;
const TX_POLL_TOKEN: usize = 3;
// The limiters' timers (those present, rx first) get the tokens after it.

/// The network device.
pub struct Net {
    /// The interface's id (the API's `iface_id`).
    id: String,
    tap_name: String,
    mac: [u8; 6],
    tap: Arc<Mutex<Tap>>,
    config: [u8; 10],
    /// Shared with the worker; kept here so that they survive a reset.
    rx_rate_limiter: Option<Arc<Mutex<RateLimiter>>>,
    tx_rate_limiter: Option<Arc<Mutex<RateLimiter>>>,
    worker: Option<QueueWorker>,
}

impl Net {
    /// Interface `id` on `tap`, with guest MAC address `mac`.
    pub fn new(id: &str, tap: Tap, mac: [u8; 6]) -> Self {
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        Self {
            id: id.to_owned(),
            tap_name: tap.name().to_owned(),
            mac,
            tap: Arc::new(Mutex::new(tap)),
            config,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            worker: None,
        }
    }

    /// Throttles frames delivered to the guest with `rate_limiter`: one op
    /// and the frame length in bytes per frame. Takes effect at the next
    /// activation.
    pub fn rx_rate_limiter(mut self, rate_limiter: RateLimiter) -> Self {
        self.rx_rate_limiter = Some(Arc::new(Mutex::new(rate_limiter)));
        self
    }

    /// Throttles frames the guest transmits with `rate_limiter`: one op and
    /// the frame length in bytes per frame. Takes effect at the next
    /// activation.
    pub fn tx_rate_limiter(mut self, rate_limiter: RateLimiter) -> Self {
        self.tx_rate_limiter = Some(Arc::new(Mutex::new(rate_limiter)));
        self
    }

    /// The receive and transmit limiters, shared with the running device
    /// (to change them live).
    pub fn rate_limiter_handles(&self) -> [Option<Arc<Mutex<RateLimiter>>>; 2] {
        [self.rx_rate_limiter.clone(), self.tx_rate_limiter.clone()]
    }
}

/// Where frames go to and come from: the TAP (a fake in tests).
trait FrameIo: Send {
    /// Reads one frame; `WouldBlock` when none waits.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize>;
    /// Writes one frame that lies in guest memory as `parts` (each within
    /// one region), without copying it first where the backend can.
    fn write_guest_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        parts: &[(GuestAddress, usize)],
        scratch: &mut [u8],
    ) -> std::io::Result<usize> {
        let mut n = 0;
        for &(addr, len) in parts {
            let dst = scratch
                .get_mut(n..n + len)
                .ok_or(std::io::ErrorKind::InvalidInput)?;
            mem.read_slice(dst, addr)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            n += len;
        }
        self.write_frame(&scratch[..n])
    }
}

impl FrameIo for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Tap::read_frame(self, buf)
    }

    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Tap::write_frame(self, buf)
    }

    fn write_guest_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        parts: &[(GuestAddress, usize)],
        _scratch: &mut [u8],
    ) -> std::io::Result<usize> {
        // writev straight from guest memory: the frame is not copied in
        // the VMM (the kernel copies it once, into the TAP's skb).
        let mut iov = Vec::with_capacity(parts.len());
        for &(addr, len) in parts {
            let slice = mem
                .get_slice(addr, len)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard().as_ptr().cast_mut().cast(),
                iov_len: len,
            });
        }
        self.write_iovecs(&iov)
    }
}

/// A rate limiter and the worker token of its timer.
struct Throttle {
    limiter: Arc<Mutex<RateLimiter>>,
    token: usize,
}

/// The transmit poll timer, and whether the device is polling.
struct TxPoll {
    timer: TimerFd,
    active: bool,
}

/// True while `throttle`'s limiter is blocked (waiting for its timer).
fn blocked(throttle: Option<&Throttle>) -> bool {
    throttle.is_some_and(|t| lock(&t.limiter).is_blocked())
}

fn bit(b: u32) -> u64 {
    1 << b
}

impl Persist for Net {
    type State = NetState;
    type ConstructorArgs = ();
    type Error = DeviceStateError;

    fn save(&self) -> NetState {
        let config = |rl: &Option<Arc<Mutex<RateLimiter>>>| {
            rl.as_ref().map(|rl| lock(rl).config()).unwrap_or_default()
        };
        NetState {
            id: self.id.clone(),
            tap: self.tap_name.clone(),
            mac: self.mac,
            rx_rate_limiter: config(&self.rx_rate_limiter),
            tx_rate_limiter: config(&self.tx_rate_limiter),
        }
    }

    /// Opens the TAP the state names (it must exist, or be creatable).
    fn restore(_: (), s: &NetState) -> Result<Self, DeviceStateError> {
        Ok(Self::new(&s.id, Tap::open(&s.tap)?, s.mac)
            .rx_rate_limiter(limiter(&s.rx_rate_limiter)?)
            .tx_rate_limiter(limiter(&s.tx_rate_limiter)?))
    }
}

impl VirtioDevice for Net {
    fn state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Net(self.save())
    }

    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_UFO,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_STATUS,
            VIRTIO_RING_F_EVENT_IDX,
        ]
        .into_iter()
        .fold(0, |f, b| f | bit(b))
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.worker = None;
        let fail = |e: String| ActivateError::Failed(format!("net: {e}"));
        let Activation {
            mem,
            interrupt,
            queues,
            queue_evts,
            acked_features,
        } = a;
        let mut offload = 0;
        for (feature, flag) in [
            (VIRTIO_NET_F_GUEST_CSUM, TUN_F_CSUM),
            (VIRTIO_NET_F_GUEST_TSO4, TUN_F_TSO4),
            (VIRTIO_NET_F_GUEST_TSO6, TUN_F_TSO6),
            (VIRTIO_NET_F_GUEST_UFO, TUN_F_UFO),
        ] {
            if acked_features & bit(feature) != 0 {
                offload |= flag;
            }
        }
        let tap_fd = {
            let tap = self
                .tap
                .lock()
                .map_err(|_| fail("TAP lock poisoned".into()))?;
            tap.set_offload(offload).map_err(|e| fail(e.to_string()))?;
            tap.as_raw_fd()
        };
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(fail("two queues needed".into()));
        };
        let tx_timer = TimerFd::new().map_err(|e| fail(e.to_string()))?;
        // fds[i] gets token TAP_TOKEN + i.
        let mut fds: Vec<RawFd> = vec![tap_fd, tx_timer.as_raw_fd()];
        let mut throttle = |limiter: &Option<Arc<Mutex<RateLimiter>>>| {
            limiter.as_ref().map(|limiter| {
                fds.push(lock(limiter).as_raw_fd());
                Throttle {
                    limiter: limiter.clone(),
                    token: TAP_TOKEN + fds.len() - 1,
                }
            })
        };
        let rx_throttle = throttle(&self.rx_rate_limiter);
        let tx_throttle = throttle(&self.tx_rate_limiter);
        let mut w = NetWorker {
            mem,
            irq: interrupt,
            rx,
            tx,
            tap: self.tap.clone(),
            frame: vec![0u8; MAX_FRAME],
            pending: 0,
            tx_buf: vec![0u8; MAX_FRAME],
            mergeable: acked_features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0,
            rx_throttle,
            tx_throttle,
            tx_poll: Some(TxPoll {
                timer: tx_timer,
                active: false,
            }),
        };
        let worker = QueueWorker::spawn_with_fds("virtio-net", queue_evts, &fds, move |token| {
            keep_serving("virtio-net", w.handle(token))
        })
        .map_err(|e| fail(e.to_string()))?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.worker = None;
        true
    }
}

struct NetWorker<T: FrameIo = Tap> {
    mem: GuestMemoryMmap,
    irq: Arc<Interrupt>,
    rx: Queue,
    tx: Queue,
    tap: Arc<Mutex<T>>,
    /// The frame read from the TAP and not yet delivered.
    frame: Vec<u8>,
    pending: usize,
    tx_buf: Vec<u8>,
    mergeable: bool,
    rx_throttle: Option<Throttle>,
    tx_throttle: Option<Throttle>,
    /// None: every kick is served and notifications re-armed at once.
    tx_poll: Option<TxPoll>,
}

impl<T: FrameIo> NetWorker<T> {
    /// Handles worker token `token`. A limiter's timer unblocks it and
    /// resumes its direction: the transmit queue where it stopped, or the
    /// pending frame and then the TAP (edge triggered, so it is read until
    /// empty or throttled again).
    fn handle(&mut self, token: usize) -> Result<(), virtio_queue::Error> {
        match token {
            // While polling, the timer serves the queue.
            TX if self.polling() => Ok(()),
            TX => self.poll_tx(),
            TX_POLL_TOKEN if self.polling() => self.poll_tx(),
            RX | TAP_TOKEN => self.process_rx(),
            _ if self.rx_throttle.as_ref().is_some_and(|t| t.token == token) => {
                if let Some(t) = &self.rx_throttle {
                    limiter_timer_event("virtio-net rx", &mut lock(&t.limiter));
                }
                self.process_rx()
            }
            _ if self.tx_throttle.as_ref().is_some_and(|t| t.token == token) => {
                if let Some(t) = &self.tx_throttle {
                    limiter_timer_event("virtio-net tx", &mut lock(&t.limiter));
                }
                self.poll_tx()
            }
            _ => Ok(()),
        }
    }

    fn polling(&self) -> bool {
        self.tx_poll.as_ref().is_some_and(|p| p.active)
    }

    /// Transmits what the guest queued. With a poll timer, a pass that sent
    /// something leaves the guest's notifications off and arms the timer;
    /// one that sent nothing (or a throttled one: the limiter's timer
    /// resumes) stops polling and re-arms notifications, serving whatever
    /// raced in.
    fn poll_tx(&mut self) -> Result<(), virtio_queue::Error> {
        if self.tx_poll.is_some() {
            let sent = self.process_tx(false)?;
            let throttled = blocked(self.tx_throttle.as_ref());
            if let Some(p) = self.tx_poll.as_mut() {
                if sent > 0 && !throttled && p.timer.reset(TX_POLL_INTERVAL, None).is_ok() {
                    p.active = true;
                    return Ok(());
                }
                p.active = false;
                let _ = p.timer.clear();
            }
        }
        self.process_tx(true).map(drop)
    }

    /// Transmits the available chains, stopping at the first one the
    /// transmit limiter refuses (left in the queue for the timer), and
    /// interrupts the guest if it asked. `rearm`: turn the guest's
    /// notifications back on at the end (re-checking the queue), else leave
    /// them off. Returns how many chains were used.
    fn process_tx(&mut self, rearm: bool) -> Result<usize, virtio_queue::Error> {
        let mut limiter = self.tx_throttle.as_ref().map(|t| lock(&t.limiter));
        if limiter.as_ref().is_some_and(|l| l.is_blocked()) {
            return Ok(0);
        }
        let mem = &self.mem;
        let tx_buf = &mut self.tx_buf;
        let mut tap = lock(&self.tap);
        let mut parts = Vec::new();
        let serve = |chain: super::Chain<'_>| {
            parts.clear();
            let mut len = 0usize;
            for d in chain {
                if d.is_write_only() || parts.len() >= usize::from(QUEUE_SIZE) {
                    tracing::debug!("virtio-net: malformed transmit chain");
                    return Some(0);
                }
                len = len.saturating_add(d.len() as usize);
                parts.push((d.addr(), d.len() as usize));
            }
            let m = &crate::metrics::METRICS.net;
            if !(VNET_HDR_LEN..=MAX_FRAME).contains(&len) {
                tracing::debug!("virtio-net: dropped a {len}-byte transmit chain");
                m.tx_malformed_frames.inc();
            } else if !admit(limiter.as_deref_mut(), len as u64) {
                return None;
            } else if let Err(e) = tap.write_guest_frame(mem, &parts, tx_buf) {
                tracing::debug!("virtio-net: TAP write: {e}");
                m.tap_write_fails.inc();
            } else {
                m.tx_packets_count.inc();
                m.tx_bytes_count.add((len - VNET_HDR_LEN) as u64);
            }
            Some(0)
        };
        if rearm {
            return drain_queue_until_refused(mem, &mut self.tx, &self.irq, serve);
        }
        let (sent, _) = serve_available(mem, &mut self.tx, serve)?;
        drop(tap);
        drop(limiter);
        if sent > 0 {
            // Writing to the TAP runs the host's receive path at once, so
            // the peer's TCP acknowledgement is usually waiting in the TAP
            // already. Deliver it before the transmit interrupt: one
            // interrupt then covers both (the guest has not acknowledged
            // the first when the second would be raised), where two would
            // cost the guest two more rounds of interrupt and register
            // exits per frame.
            self.process_rx()?;
            self.irq.notify_used(&self.mem, &mut self.tx)?;
        }
        Ok(sent)
    }

    /// Delivers the pending frame, then frames from the TAP, until the TAP
    /// is empty, the guest has no buffers or the receive limiter refuses a
    /// frame (kept pending for the timer).
    fn process_rx(&mut self) -> Result<(), virtio_queue::Error> {
        if blocked(self.rx_throttle.as_ref()) {
            return Ok(());
        }
        let mut delivered = false;
        loop {
            if self.pending == 0 {
                let mut tap = lock(&self.tap);
                match tap.read_frame(&mut self.frame) {
                    Ok(n) if n >= VNET_HDR_LEN => self.pending = n,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!("virtio-net: TAP read: {e}");
                        break;
                    }
                }
            }
            match self.deliver()? {
                Delivery::Done => delivered = true,
                Delivery::Dropped => {}
                Delivery::NoBuffers => {
                    // Wait for the guest to add buffers; it notifies then.
                    if arm_notification(&self.mem, &mut self.rx)? {
                        continue;
                    }
                    break;
                }
                // The limiter's timer resumes.
                Delivery::Throttled => break,
            }
        }
        if delivered {
            self.irq.notify_used(&self.mem, &mut self.rx)?;
        }
        Ok(())
    }

    /// Copies the pending frame into as many receive buffers as it needs,
    /// if the receive limiter lets it through.
    fn deliver(&mut self) -> Result<Delivery, virtio_queue::Error> {
        let mem = &self.mem;
        let len = self.pending;
        let mut chains = Vec::new();
        let mut room = 0usize;
        while room < len {
            let Some(chain) = self.rx.pop_descriptor_chain(mem) else {
                break;
            };
            let cap: usize = chain
                .clone()
                .writable()
                .map(|d| d.len() as usize)
                .fold(0usize, |a, b| a.saturating_add(b));
            room = room.saturating_add(cap);
            chains.push(chain);
            if !self.mergeable {
                break;
            }
        }
        if room < len {
            if !self.mergeable && !chains.is_empty() {
                // One buffer per frame and this one is too small: drop.
                for c in &chains {
                    self.rx.add_used(mem, c.head_index(), 0)?;
                }
                self.pending = 0;
                crate::metrics::METRICS.net.rx_dropped_frames.inc();
                tracing::debug!("virtio-net: dropped a {len}-byte frame (buffer too small)");
                return Ok(Delivery::Dropped);
            }
            // Give the buffers back and wait for more.
            let back = chains.len() as u16;
            self.rx
                .set_next_avail(self.rx.next_avail().wrapping_sub(back));
            return Ok(Delivery::NoBuffers);
        }
        let mut limiter = self.rx_throttle.as_ref().map(|t| lock(&t.limiter));
        if !admit(limiter.as_deref_mut(), len as u64) {
            let back = chains.len() as u16;
            self.rx
                .set_next_avail(self.rx.next_avail().wrapping_sub(back));
            return Ok(Delivery::Throttled);
        }
        drop(limiter);
        let count = chains.len() as u16;
        self.frame[10..12].copy_from_slice(&count.to_le_bytes());
        let mut off = 0;
        for chain in chains {
            let head = chain.head_index();
            let mut written = 0;
            if let Ok(mut w) = chain.writer(mem) {
                let n = w.available_bytes().min(len - off);
                if w.write_all(&self.frame[off..off + n]).is_ok() {
                    written = n;
                }
            }
            off += written;
            self.rx.add_used(mem, head, written as u32)?;
        }
        self.pending = 0;
        let m = &crate::metrics::METRICS.net;
        m.rx_packets_count.inc();
        m.rx_bytes_count.add((len - VNET_HDR_LEN) as u64);
        Ok(Delivery::Done)
    }
}

enum Delivery {
    Done,
    Dropped,
    NoBuffers,
    /// The receive limiter refused the frame; it stays pending.
    Throttled,
}

/// A frame sink for fuzzing: frames are discarded, none arrive.
struct NullFrames;

impl FrameIo for NullFrames {
    fn read_frame(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }

    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
}

/// Fuzzing entry point: serves a (hostile) transmit queue as kicks and
/// poll-timer events would, and delivers a `frame_len`-byte frame into a
/// (hostile) receive queue.
#[doc(hidden)]
pub fn fuzz_queues(mem: &GuestMemoryMmap, rx: Queue, tx: Queue, frame_len: usize) {
    let Ok(evt) = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK) else {
        return;
    };
    let mut w = NetWorker {
        mem: mem.clone(),
        irq: Arc::new(Interrupt::new(evt)),
        rx,
        tx,
        tap: Arc::new(Mutex::new(NullFrames)),
        frame: vec![0u8; MAX_FRAME],
        pending: frame_len.clamp(VNET_HDR_LEN, MAX_FRAME),
        tx_buf: vec![0u8; MAX_FRAME],
        mergeable: frame_len.is_multiple_of(2),
        rx_throttle: None,
        tx_throttle: None,
        tx_poll: TimerFd::new().ok().map(|timer| TxPoll {
            timer,
            active: false,
        }),
    };
    // A kick, then the poll timer's looks until polling stops (the first
    // finds what the kick left, if anything; a look that finds nothing
    // re-arms notifications).
    if w.handle(TX).is_ok() {
        for _ in 0..4 {
            if !w.polling() || w.handle(TX_POLL_TOKEN).is_err() {
                break;
            }
        }
    }
    let _ = w.process_rx();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limiter::BucketConfig;
    use std::collections::VecDeque;
    use std::time::{Duration, Instant};
    use virtio_queue::desc::{split::Descriptor as D, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
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
            let timer_expired =
                |w: &NetWorker<FakeTap>| expired(&w.tx_poll.as_ref().unwrap().timer);

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
}

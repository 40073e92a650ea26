//! The virtio-net queue worker: moves frames between the guest's receive
//! and transmit queues and the TAP (a [`FrameIo`]), with the transmit
//! polling and the rate limiters the device module describes. Runs on the
//! device's own thread.

use std::io::Write;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::timerfd::TimerFd;

use super::tap::{Tap, VNET_HDR_LEN};
use super::{MAX_FRAME, QUEUE_SIZE, RX, TAP_TOKEN, TX, TX_POLL_INTERVAL, TX_POLL_TOKEN};
use crate::rate_limiter::{admit, limiter_timer_event, RateLimiter};
use crate::sync::lock;
use crate::virtio::{arm_notification, drain_queue_until_refused, serve_available, Interrupt};
use crate::GuestMemoryMmap;

/// Where frames go to and come from: the TAP (a fake in tests).
pub(super) trait FrameIo: Send {
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
pub(super) struct Throttle {
    pub(super) limiter: Arc<Mutex<RateLimiter>>,
    pub(super) token: usize,
}

/// The transmit poll timer, and whether the device is polling.
pub(super) struct TxPoll {
    pub(super) timer: TimerFd,
    pub(super) active: bool,
}

/// True while `throttle`'s limiter is blocked (waiting for its timer).
pub(super) fn blocked(throttle: Option<&Throttle>) -> bool {
    throttle.is_some_and(|t| lock(&t.limiter).is_blocked())
}

/// What the worker thread owns for one activation: the queues, the TAP,
/// the one pending received frame, and the limiters and poll timer.
pub(super) struct NetWorker<T: FrameIo = Tap> {
    pub(super) mem: GuestMemoryMmap,
    pub(super) irq: Arc<Interrupt>,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) tap: Arc<Mutex<T>>,
    /// The frame read from the TAP and not yet delivered.
    pub(super) frame: Vec<u8>,
    pub(super) pending: usize,
    pub(super) tx_buf: Vec<u8>,
    pub(super) mergeable: bool,
    pub(super) rx_throttle: Option<Throttle>,
    pub(super) tx_throttle: Option<Throttle>,
    /// None: every kick is served and notifications re-armed at once.
    pub(super) tx_poll: Option<TxPoll>,
}

impl<T: FrameIo> NetWorker<T> {
    /// Handles worker token `token`. A limiter's timer unblocks it and
    /// resumes its direction: the transmit queue where it stopped, or the
    /// pending frame and then the TAP (edge triggered, so it is read until
    /// empty or throttled again).
    pub(super) fn handle(&mut self, token: usize) -> Result<(), virtio_queue::Error> {
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

    pub(super) fn polling(&self) -> bool {
        self.tx_poll.as_ref().is_some_and(|p| p.active)
    }

    /// Transmits what the guest queued. With a poll timer, a pass that sent
    /// something leaves the guest's notifications off and arms the timer;
    /// one that sent nothing (or a throttled one: the limiter's timer
    /// resumes) stops polling and re-arms notifications, serving whatever
    /// raced in.
    pub(super) fn poll_tx(&mut self) -> Result<(), virtio_queue::Error> {
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
    pub(super) fn process_tx(&mut self, rearm: bool) -> Result<usize, virtio_queue::Error> {
        let mut limiter = self.tx_throttle.as_ref().map(|t| lock(&t.limiter));
        if limiter.as_ref().is_some_and(|l| l.is_blocked()) {
            return Ok(0);
        }
        let mem = &self.mem;
        let tx_buf = &mut self.tx_buf;
        let mut tap = lock(&self.tap);
        let mut parts = Vec::new();
        let serve = |chain: crate::virtio::Chain<'_>| {
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
    pub(super) fn process_rx(&mut self) -> Result<(), virtio_queue::Error> {
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
    pub(super) fn deliver(&mut self) -> Result<Delivery, virtio_queue::Error> {
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

pub(super) enum Delivery {
    Done,
    Dropped,
    NoBuffers,
    /// The receive limiter refused the frame; it stays pending.
    Throttled,
}

/// A frame sink for fuzzing: frames are discarded, none arrive.
#[cfg(feature = "fuzzing")]
struct NullFrames;

#[cfg(feature = "fuzzing")]
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
#[cfg(feature = "fuzzing")]
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

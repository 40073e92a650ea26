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
mod worker;

#[cfg(feature = "fuzzing")]
pub use self::worker::fuzz_queues;
use self::worker::{NetWorker, Throttle, TxPoll};

use super::persist::{limiter, DeviceStateError, NetState, VirtioDeviceState};
use crate::persist::Persist;
use crate::sync::lock;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use self::tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO, VNET_HDR_LEN};
use super::worker::{keep_serving, QueueWorker};
use super::{
    device_type, read_config_bytes, ActivateError, Activation, VirtioDevice,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::rate_limiter::RateLimiter;
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
    /// The TAP; None while detached (a migration hands it over).
    tap: Option<Arc<Mutex<Tap>>>,
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
            tap: Some(Arc::new(Mutex::new(tap))),
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

/// A RARP "reverse request" from `mac` to everyone, behind an empty vnet
/// header: the frame QEMU sends to announce a guest that moved.
fn rarp_announce(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x8035u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 3]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    // Ethernet's minimum frame (60 bytes before the FCS).
    f.resize(VNET_HDR_LEN + 60, 0);
    f
}

/// Feature bit `b` as a mask.
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
        let Some(tap) = self.tap.clone() else {
            return Err(fail("the TAP is detached".into()));
        };
        let tap_fd = {
            let tap = lock(&tap);
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
            tap,
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

    fn detach_backend(&mut self) {
        self.worker = None;
        self.tap = None;
    }

    fn announce(&self) {
        let Some(tap) = &self.tap else { return };
        let frame = rarp_announce(self.mac);
        if let Err(e) = lock(tap).write_frame(&frame) {
            tracing::warn!("virtio-net: cannot announce {}: {e}", self.id);
        }
    }

    fn attach_backend(&mut self) -> Result<(), ActivateError> {
        if self.tap.is_none() {
            let tap = Tap::open(&self.tap_name)
                .map_err(|e| ActivateError::Failed(format!("virtio-net: {e}")))?;
            self.tap = Some(Arc::new(Mutex::new(tap)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

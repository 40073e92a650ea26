//! Virtio devices and their transport.
//!
//! Every device implements [`VirtioDevice`]: features, config space,
//! activation with its queues, reset. The transport ([`mmio::MmioTransport`],
//! virtio-mmio version 2) is generic over that trait and knows nothing of any
//! device. Guest notifications arrive on eventfds (KVM ioeventfds registered
//! by the VMM) and interrupts leave through [`Interrupt`] (a KVM irqfd).

pub mod balloon;
pub mod block;
mod iov;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod rng;
pub mod vsock;
mod worker;

pub use iov::advance as advance_iovecs;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

/// Feature bit: the device conforms to virtio 1.x (modern only).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: used/avail event index suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Device type ids (virtio spec 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
    pub const BALLOON: u32 = 5;
    pub const VSOCK: u32 = 19;
}

/// Interrupt status bit: a used buffer was added to a queue.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt line: the status register the transport exposes and
/// the eventfd that raises the guest interrupt.
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// An interrupt raised through `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            evt,
        }
    }

    /// Sets `bits` in the interrupt status and raises the interrupt, unless
    /// they were all still set: the guest has not acknowledged them yet,
    /// and it acknowledges before it looks at the rings, so it will see
    /// what this interrupt was for (as a level-triggered line would, one
    /// interrupt covers both). Each needless edge costs the guest an
    /// interrupt that finds nothing, and two register exits.
    pub fn trigger(&self, bits: u32) {
        let prev = self.status.fetch_or(bits, Ordering::SeqCst);
        if prev & bits == bits {
            return;
        }
        if let Err(e) = self.evt.write(1) {
            tracing::error!("cannot raise virtio interrupt: {e}");
        }
    }

    /// Raises a used-buffer interrupt for `queue` if its driver asked for
    /// one: its used event index was passed, or it did not turn them off.
    pub fn notify_used(
        &self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
    ) -> Result<(), virtio_queue::Error> {
        if queue.needs_notification(mem)? {
            self.trigger(INT_VRING);
        }
        Ok(())
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The guest acknowledges `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the status bits a snapshot saved, without raising the
    /// interrupt: the restored vCPUs and interrupt controllers are not
    /// back yet, and [`Interrupt::reraise_pending`] raises it once they
    /// are.
    pub fn restore_status(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
    }

    /// Raises the interrupt again if any status bit is still set: the edge
    /// that set it may have been lost (raised before the restored vCPUs
    /// and interrupt controllers were back), and [`Interrupt::trigger`]
    /// would swallow every later one while the bit stays set. At worst the
    /// guest takes one interrupt that finds what it already handled.
    pub fn reraise_pending(&self) {
        if self.status() != 0 {
            if let Err(e) = self.evt.write(1) {
                tracing::error!("cannot raise virtio interrupt: {e}");
            }
        }
    }
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("virtio device: {0}")]
    Failed(String),
}

/// What the transport hands a device when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory, the only way devices touch it.
    pub mem: GuestMemoryMmap,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// Queues as the driver configured them, event-index suppression on
    /// when negotiated.
    pub queues: Vec<Queue>,
    /// One notification eventfd per queue (a KVM ioeventfd).
    pub queue_evts: Vec<EventFd>,
    /// Features both sides agreed on.
    pub acked_features: u64,
}

/// A virtio device, independent of transport.
pub trait VirtioDevice: Send {
    /// The virtio device type id.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (VERSION_1 must be among them).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device: from now on it serves the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device. Returns false when the device cannot be reset
    /// (the driver must then not reuse it).
    fn reset(&mut self) -> bool {
        false
    }
    /// Stops serving the queues, keeping the device's state, so that guest
    /// memory and the rings hold still for a snapshot; every chain taken is
    /// finished first. The transport activates the device again afterwards.
    fn quiesce(&mut self) {
        let _ = self.reset();
    }
    /// The device's state (what it was built from, and what it holds),
    /// for a snapshot or a migration; [`persist::VirtioDeviceState::build`]
    /// builds the device again from it.
    fn state(&self) -> persist::VirtioDeviceState;
    /// The device was rebuilt from a snapshot of a running guest (not
    /// booted): whatever the guest had that the host cannot restore (open
    /// vsock connections) must be reported lost when the device starts.
    fn restored(&mut self) {}
    /// Lets go of the host resources only one process can hold (a TAP, a
    /// listening socket), so that the VMM a guest migrates to can take
    /// them. The device is quiesced and stays so until
    /// [`VirtioDevice::attach_backend`].
    fn detach_backend(&mut self) {}
    /// Tells the host's network the guest is here (after a migration): a
    /// network device sends a RARP frame from the guest's MAC, as QEMU
    /// does, so switches and bridges learn its new port at once.
    fn announce(&self) {}
    /// Takes those resources again (a migration that failed).
    fn attach_backend(&mut self) -> Result<(), ActivateError> {
        Ok(())
    }
}

/// A descriptor chain as the devices see it.
pub type Chain<'a> = virtio_queue::DescriptorChain<&'a GuestMemoryMmap>;

/// Serves every chain the driver made available: `serve` handles one chain
/// and returns how many bytes it wrote to the guest; the chain is then
/// marked used. Notifications stay off while draining (re-checked before
/// re-enabling them, so nothing added meanwhile is missed), and the guest
/// is interrupted once at the end if it asked to be.
pub fn drain_queue(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    irq: &Interrupt,
    mut serve: impl FnMut(Chain<'_>) -> u32,
) -> Result<(), virtio_queue::Error> {
    drain_queue_until_refused(mem, queue, irq, |c| Some(serve(c))).map(drop)
}

/// Like [`drain_queue`], but `serve` may refuse a chain (None: a rate
/// limiter said no): the chain goes back to the ring, draining stops with
/// notifications still off (the limiter's timer resumes it), and the
/// guest is interrupted, if it asked to be, for the chains that were used.
/// A driver whose available index runs away is an error (the device stops).
/// Returns how many chains were used.
pub fn drain_queue_until_refused(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    irq: &Interrupt,
    mut serve: impl FnMut(Chain<'_>) -> Option<u32>,
) -> Result<usize, virtio_queue::Error> {
    let mut used = 0;
    loop {
        let (n, refused) = serve_available(mem, queue, &mut serve)?;
        used += n;
        if refused || !queue.enable_notification(mem)? {
            break;
        }
    }
    irq.notify_used(mem, queue)?;
    Ok(used)
}

/// One pass over the chains available now, with the driver's
/// notifications turned off and left off (the caller polls again, or
/// re-enables them through [`drain_queue_until_refused`]). Returns how many
/// chains were used, and whether `serve` refused one (put back in the
/// ring). Does not interrupt the guest.
pub fn serve_available(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    mut serve: impl FnMut(Chain<'_>) -> Option<u32>,
) -> Result<(usize, bool), virtio_queue::Error> {
    queue.disable_notification(mem)?;
    let mut n = 0;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let Some(used) = serve(chain) else {
            queue.set_next_avail(queue.next_avail().wrapping_sub(1));
            return Ok((n, true));
        };
        queue.add_used(mem, head, used)?;
        n += 1;
    }
    check_avail(mem, queue)?;
    Ok((n, false))
}

/// Fails when the driver's available index is more than a queue's worth
/// ahead of the device (a broken or hostile driver): popping then yields
/// nothing while the ring never looks empty, so a drain loop would spin.
pub fn check_avail(mem: &GuestMemoryMmap, queue: &mut Queue) -> Result<(), virtio_queue::Error> {
    use virtio_queue::QueueOwnedT;
    queue.iter(mem).map(|_| ())
}

/// Asks the guest to notify when it adds buffers beyond those already in
/// `queue`, after the device found too few and gave them back (rolled
/// `next_avail` back). With event-index suppression the guest only
/// notifies when the avail index passes `avail_event`, so that must be the
/// current avail index, not the (rolled back) next one: else the guest never
/// notifies and the device would spin or stall. Returns true when buffers
/// arrived meanwhile.
pub fn arm_notification(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
) -> Result<bool, virtio_queue::Error> {
    use std::sync::atomic::Ordering;
    let saved = queue.next_avail();
    let avail = queue.avail_idx(mem, Ordering::Acquire)?.0;
    queue.set_next_avail(avail);
    queue.enable_notification(mem)?;
    queue.set_next_avail(saved);
    Ok(queue.avail_idx(mem, Ordering::Acquire)?.0 != avail)
}

/// Copies the `offset..offset+data.len()` window of `config` into `data`;
/// bytes past the end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - off);
    data[..n].copy_from_slice(&config[off..off + n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn pending_interrupt_is_not_raised_twice() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Interrupt::new(evt.try_clone().unwrap());
        irq.trigger(INT_VRING);
        irq.trigger(INT_VRING);
        assert_eq!(evt.read().unwrap(), 1, "one edge while unacknowledged");
        // A different cause is raised even while the first is pending.
        irq.trigger(INT_CONFIG);
        assert_eq!(evt.read().unwrap(), 1);
        // Once acknowledged, the next one is raised again.
        irq.ack(INT_VRING | INT_CONFIG);
        irq.trigger(INT_VRING);
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(irq.status(), INT_VRING);
        // An edge that may have been lost is raised again while the status
        // is set, and not once it is acknowledged.
        irq.reraise_pending();
        assert_eq!(evt.read().unwrap(), 1);
        irq.ack(INT_VRING);
        irq.reraise_pending();
        assert!(evt.read().is_err());
    }
}

//! The virtio-mmio transport, version 2 (virtio 1.x, modern only).
//!
//! Register layout per the virtio spec, section 4.2.2. The transport keeps
//! the queue configuration the driver writes, negotiates features, and
//! activates the device when the driver sets DRIVER_OK. Out-of-range,
//! misaligned or ill-timed accesses are ignored with a debug log, as real
//! hardware would; a driver that breaks the protocol gets a device that
//! sets DEVICE_NEEDS_RESET rather than a VMM that panics.

use std::sync::Arc;

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::persist::VirtioDeviceState;
use super::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;
use crate::persist::Persist;

/// Size of one device's register window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// Offset of the QueueNotify register (for ioeventfds).
pub const NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4f44_4e43; // "CNDO"

// Device status bits.
const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const DEVICE_NEEDS_RESET: u32 = 0x40;
const FAILED: u32 = 0x80;

/// A virtio device behind its MMIO registers.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
}

/// A transport and its device as a snapshot holds them. Ring positions are
/// not kept: they are in guest memory (the used index), taken while the
/// device is quiesced.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub activated: bool,
    pub queues: Vec<QueueConfig>,
    /// The device behind the transport.
    pub device: VirtioDeviceState,
}

/// One queue as the driver configured it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// Errors building a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot create a queue eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("invalid queue size {0}")]
    QueueSize(u16),
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// What a transport is rebuilt around: its device (built from the
/// state's [`TransportState::device`]), guest memory and its interrupt.
pub struct TransportArgs {
    pub device: Box<dyn VirtioDevice>,
    pub mem: GuestMemoryMmap,
    pub irq: EventFd,
}

impl Persist for MmioTransport {
    type State = TransportState;
    type ConstructorArgs = TransportArgs;
    type Error = TransportError;

    fn save(&self) -> TransportState {
        self.state()
    }

    /// The transport as the state has it, over the snapshot's memory; the
    /// device starts again if it ran.
    fn restore(a: TransportArgs, st: &TransportState) -> Result<Self, TransportError> {
        let mut t = Self::new(a.device, a.mem, a.irq)?;
        t.restore_state(st)?;
        Ok(t)
    }
}

impl MmioTransport {
    /// Wraps `device`; its interrupt is raised through `irq`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: EventFd,
    ) -> Result<Self, TransportError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|_| TransportError::QueueSize(max))?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK).map_err(TransportError::EventFd)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq)),
            queues,
            queue_evts,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The notification eventfd of each queue, for registering ioeventfds
    /// on `base + NOTIFY_OFFSET` with the queue index as datamatch.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's type id.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    fn device_features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR,
            0x10 => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => {
                tracing::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn queue_write(&mut self, f: impl FnOnce(&mut Queue)) {
        // Queue registers may only change before the device is live.
        if self.status & DRIVER_OK != 0 {
            tracing::debug!("virtio-mmio: queue register written after DRIVER_OK");
            return;
        }
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => {
                if self.status & FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xffff_ffff) | u64::from(v)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                        }
                        _ => {}
                    }
                }
            }
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => self.queue_write(|q| q.set_size(v as u16)),
            0x44 => self.queue_write(|q| q.set_ready(v == 1)),
            0x50 => {
                // Without an ioeventfd the notification arrives here.
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 => self.queue_write(|q| q.set_desc_table_address(Some(v), None)),
            0x84 => self.queue_write(|q| q.set_desc_table_address(None, Some(v))),
            0x90 => self.queue_write(|q| q.set_avail_ring_address(Some(v), None)),
            0x94 => self.queue_write(|q| q.set_avail_ring_address(None, Some(v))),
            0xa0 => self.queue_write(|q| q.set_used_ring_address(Some(v), None)),
            0xa4 => self.queue_write(|q| q.set_used_ring_address(None, Some(v))),
            _ => tracing::debug!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, in the spec's order.
        let added = v & !self.status;
        if v & self.status != self.status {
            tracing::debug!(
                "virtio-mmio: driver cleared status bits {:#x}",
                self.status & !v
            );
            return;
        }
        if added & FEATURES_OK != 0 {
            let offered = self.device_features();
            if self.driver_features & !offered != 0
                || self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0
            {
                // Refuse: FEATURES_OK stays clear, the driver sees it.
                self.status = v & !FEATURES_OK;
                return;
            }
        }
        self.status = v;
        if added & DRIVER_OK != 0 && self.status & FEATURES_OK != 0 && !self.activated {
            self.activate(false);
        }
    }

    /// Stops the device's workers (if it runs) with its rings at rest.
    pub fn quiesce(&mut self) {
        if self.activated {
            self.device.quiesce();
        }
    }

    /// Lets go of the device's host resources (see
    /// [`VirtioDevice::detach_backend`]); the transport must be quiesced.
    pub fn detach_backend(&mut self) {
        self.device.detach_backend();
    }

    /// Has the device announce where the guest is now (network devices).
    pub fn announce(&self) {
        if self.activated {
            self.device.announce();
        }
    }

    /// Takes the device's host resources again.
    pub fn attach_backend(&mut self) -> Result<(), super::ActivateError> {
        self.device.attach_backend()
    }

    /// Starts a quiesced device again, from where its rings are, and has
    /// it take a first look at them.
    pub fn resume(&mut self) {
        if self.activated {
            self.activated = false;
            self.activate(true);
            self.first_look();
        }
    }

    /// The transport's state (the device must be quiesced).
    pub fn state(&self) -> TransportState {
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            activated: self.activated,
            queues: self
                .queues
                .iter()
                .map(|q| {
                    let st = q.state();
                    QueueConfig {
                        size: st.size,
                        ready: st.ready,
                        desc_table: st.desc_table,
                        avail_ring: st.avail_ring,
                        used_ring: st.used_ring,
                    }
                })
                .collect(),
            device: self.device.state(),
        }
    }

    /// Restores a snapshot's state into this fresh transport (same device
    /// type) over the snapshot's memory, and starts the device if it ran.
    /// A saved interrupt status is set, not raised: [`Self::first_look`]
    /// raises it once the vCPUs are back.
    fn restore_state(&mut self, st: &TransportState) -> Result<(), TransportError> {
        let bad = |m: String| TransportError::Snapshot(m);
        if st.device_type != self.device.device_type() || st.queues.len() != self.queues.len() {
            return Err(bad(format!(
                "device type {} with {} queues does not match this VM's",
                st.device_type,
                st.queues.len()
            )));
        }
        for (q, c) in self.queues.iter_mut().zip(&st.queues) {
            q.try_set_size(c.size)
                .map_err(|e| bad(format!("queue size {}: {e}", c.size)))?;
            q.set_desc_table_address(Some(c.desc_table as u32), Some((c.desc_table >> 32) as u32));
            q.set_avail_ring_address(Some(c.avail_ring as u32), Some((c.avail_ring >> 32) as u32));
            q.set_used_ring_address(Some(c.used_ring as u32), Some((c.used_ring >> 32) as u32));
            q.set_ready(c.ready);
        }
        self.status = st.status;
        self.device_features_sel = st.device_features_sel;
        self.driver_features_sel = st.driver_features_sel;
        self.driver_features = st.driver_features;
        self.queue_sel = st.queue_sel;
        self.config_generation = st.config_generation;
        self.device.restored();
        if st.activated {
            self.activate(true);
            if !self.activated {
                return Err(bad(format!("device type {} did not start", st.device_type)));
            }
        }
        self.interrupt.restore_status(st.interrupt_status);
        Ok(())
    }

    /// Starts the device; `from_rings` takes the ring positions from guest
    /// memory (after a quiesce or a restore) instead of zero.
    fn activate(&mut self, from_rings: bool) {
        let mem = self.mem.clone();
        let ok = self.queues.iter().all(|q| !q.ready() || q.is_valid(&mem));
        let evts: Result<Vec<_>, _> = self.queue_evts.iter().map(|e| e.try_clone()).collect();
        let (true, Ok(queue_evts)) = (ok, evts) else {
            tracing::warn!(
                "virtio-mmio: device type {} has an invalid queue; needs reset",
                self.device.device_type()
            );
            self.status |= DEVICE_NEEDS_RESET;
            self.interrupt.trigger(super::INT_CONFIG);
            return;
        };
        // The device gets its own copies; the transport keeps the
        // configuration the driver wrote, for register reads and reset.
        // Ring positions: zero at first activation, else where the device
        // left them (the used index in guest memory).
        let event_idx = self.driver_features & (1 << super::VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues: Result<Vec<Queue>, _> = self
            .queues
            .iter()
            .map(|q| {
                let mut st = q.state();
                if st.ready && from_rings {
                    let used = q
                        .used_idx(&mem, std::sync::atomic::Ordering::Acquire)
                        .map(|w| w.0)
                        .unwrap_or(0);
                    st.next_used = used;
                    st.next_avail = used;
                }
                Queue::try_from(st).map(|mut q| {
                    q.set_event_idx(event_idx);
                    q
                })
            })
            .collect();
        let Ok(queues) = queues else {
            self.status |= DEVICE_NEEDS_RESET;
            return;
        };
        let activation = Activation {
            mem,
            interrupt: self.interrupt.clone(),
            queues,
            queue_evts,
            acked_features: self.driver_features,
        };
        match self.device.activate(activation) {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::error!("{e}");
                self.status |= DEVICE_NEEDS_RESET;
                self.interrupt.trigger(super::INT_CONFIG);
            }
        }
    }

    /// Signals every live queue of a running device once, after a resume or
    /// a restore. The guest may have left buffers there with its
    /// notifications off (the device was polling, or a rate limiter was
    /// holding requests back, and a restored limiter has no timer running);
    /// it would never kick for them, and the device would wait forever.
    /// Also raises again an interrupt the guest has not acknowledged. After
    /// a restore, call it only once the vCPUs and their interrupt
    /// controllers are back: an interrupt raised before then is lost, and
    /// the status bit it leaves set would swallow every later one.
    pub fn first_look(&self) {
        if !self.activated {
            return;
        }
        self.interrupt.reraise_pending();
        for (q, evt) in self.queues.iter().zip(&self.queue_evts) {
            if q.ready() {
                if let Err(e) = evt.write(1) {
                    tracing::warn!("virtio-mmio: queue event: {e}");
                }
            }
        }
    }

    fn reset(&mut self) {
        if self.activated && !self.device.reset() {
            // The device keeps running on its old queues; refuse the reset
            // rather than let two owners touch them.
            tracing::warn!(
                "virtio-mmio: device type {} cannot be reset",
                self.device.device_type()
            );
            self.status |= FAILED;
            return;
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.ack(u32::MAX);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
            return;
        }
        match data.len() {
            4 if offset.is_multiple_of(4) => {
                let v = self.read_reg(offset);
                data.copy_from_slice(&v.to_le_bytes());
            }
            _ => {
                tracing::debug!(
                    "virtio-mmio: {}-byte read at {offset:#x} ignored",
                    data.len()
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            if self.status & DRIVER != 0 || self.status & ACKNOWLEDGE != 0 {
                self.device.write_config(offset - 0x100, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        match data {
            [a, b, c, d] if offset.is_multiple_of(4) => {
                self.write_reg(offset, u32::from_le_bytes([*a, *b, *c, *d]))
            }
            _ => tracing::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{read_config_bytes, ActivateError};
    use std::sync::Mutex;
    use vm_memory::GuestAddress;

    struct Dummy {
        activated: Arc<Mutex<Option<u64>>>,
        config: [u8; 8],
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            1 << 3
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&self.config, offset, data)
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            *self.activated.lock().unwrap() = Some(a.acked_features);
            Ok(())
        }
        fn reset(&mut self) -> bool {
            true
        }
        fn state(&self) -> VirtioDeviceState {
            VirtioDeviceState::Rng(crate::virtio::persist::RngState {})
        }
    }

    fn dummy() -> (Dummy, Arc<Mutex<Option<u64>>>) {
        let activated = Arc::new(Mutex::new(None));
        let dev = Dummy {
            activated: activated.clone(),
            config: [1, 2, 3, 4, 5, 6, 7, 8],
        };
        (dev, activated)
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Option<u64>>>) {
        let (dev, activated) = dummy();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        (
            MmioTransport::new(Box::new(dev), memory(), irq).unwrap(),
            activated,
        )
    }

    fn r32(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w32(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn setup_queue(t: &mut MmioTransport) {
        w32(t, 0x30, 0);
        w32(t, 0x38, 16);
        w32(t, 0x80, 0x1000);
        w32(t, 0x90, 0x2000);
        w32(t, 0xa0, 0x3000);
        w32(t, 0x44, 1);
    }

    #[test]
    fn identity_registers() {
        let (mut t, _) = transport();
        assert_eq!(r32(&mut t, 0x00), MAGIC);
        assert_eq!(r32(&mut t, 0x04), 2);
        assert_eq!(r32(&mut t, 0x08), 4);
        assert_eq!(r32(&mut t, 0x34), 16);
        w32(&mut t, 0x14, 1);
        assert_eq!(r32(&mut t, 0x10), 1); // VERSION_1 is bit 32
        w32(&mut t, 0x14, 0);
        assert_eq!(r32(&mut t, 0x10), 1 << 3);
        let mut c = [0u8; 2];
        t.read(0x106, &mut c);
        assert_eq!(c, [7, 8]);
        t.read(0x107, &mut c);
        assert_eq!(c, [8, 0]);
    }

    #[test]
    fn negotiation_and_activation() {
        let (mut t, activated) = transport();
        w32(&mut t, 0x70, ACKNOWLEDGE | DRIVER);
        w32(&mut t, 0x24, 0);
        w32(&mut t, 0x20, 1 << 3);
        w32(&mut t, 0x24, 1);
        w32(&mut t, 0x20, 1);
        w32(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(r32(&mut t, 0x70) & FEATURES_OK, FEATURES_OK);
        setup_queue(&mut t);
        w32(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(*activated.lock().unwrap(), Some((1 << 32) | (1 << 3)));
        // Queue registers are frozen once live.
        w32(&mut t, 0x38, 8);
        assert_eq!(t.queues[0].size(), 16);
        // Reset.
        w32(&mut t, 0x70, 0);
        assert_eq!(r32(&mut t, 0x70), 0);
    }

    #[test]
    fn refuses_legacy_driver_and_unknown_features() {
        let (mut t, activated) = transport();
        w32(&mut t, 0x70, ACKNOWLEDGE | DRIVER);
        w32(&mut t, 0x20, 1 << 3); // no VERSION_1
        w32(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(r32(&mut t, 0x70) & FEATURES_OK, 0);
        w32(&mut t, 0x24, 1);
        w32(&mut t, 0x20, 1 | (1 << 5)); // an unoffered feature
        w32(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(r32(&mut t, 0x70) & FEATURES_OK, 0);
        w32(&mut t, 0x70, ACKNOWLEDGE | DRIVER | DRIVER_OK);
        assert_eq!(*activated.lock().unwrap(), None);
    }

    #[test]
    fn invalid_queue_needs_reset() {
        let (mut t, activated) = transport();
        w32(&mut t, 0x70, ACKNOWLEDGE | DRIVER);
        w32(&mut t, 0x24, 1);
        w32(&mut t, 0x20, 1);
        w32(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        w32(&mut t, 0x38, 16);
        w32(&mut t, 0x80, 0xfff0_0000); // outside guest memory
        w32(&mut t, 0x84, 0x1);
        w32(&mut t, 0x44, 1);
        w32(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(*activated.lock().unwrap(), None);
        assert_ne!(r32(&mut t, 0x70) & DEVICE_NEEDS_RESET, 0);
    }

    fn drive_to_live(t: &mut MmioTransport) {
        w32(t, 0x70, ACKNOWLEDGE | DRIVER);
        w32(t, 0x24, 1);
        w32(t, 0x20, 1);
        w32(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        setup_queue(t);
        w32(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    }

    #[test]
    fn resume_and_restored_first_look_signal_each_live_queue_once() {
        let (mut t, activated) = transport();
        drive_to_live(&mut t);
        assert!(activated.lock().unwrap().is_some());
        // The first activation comes with no signal: the rings are empty.
        assert!(t.queue_evts[0].read().is_err());
        t.quiesce();
        t.resume();
        assert_eq!(t.queue_evts[0].read().unwrap(), 1);
        // Snapshotted with an interrupt the guest has not acknowledged.
        t.interrupt.trigger(crate::virtio::INT_VRING);
        let st = t.save();
        let (dev, activated2) = dummy();
        let args = TransportArgs {
            device: Box::new(dev),
            mem: memory(),
            irq: EventFd::new(EFD_NONBLOCK).unwrap(),
        };
        let t2 = MmioTransport::restore(args, &st).unwrap();
        assert!(activated2.lock().unwrap().is_some());
        // A restore leaves the look, and raising the pending interrupt, to
        // its caller, once the vCPUs are back.
        assert!(t2.queue_evts[0].read().is_err());
        assert_eq!(t2.interrupt.status(), crate::virtio::INT_VRING);
        assert!(t2.interrupt.evt.read().is_err());
        t2.first_look();
        assert_eq!(t2.queue_evts[0].read().unwrap(), 1);
        assert_eq!(t2.interrupt.evt.read().unwrap(), 1);
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let (mut t, _) = transport();
        for off in [0u64, 1, 2, 3, 0x50, 0x70, 0xfff, 0x100, u64::MAX - 8] {
            let mut b1 = [0u8; 1];
            let mut b8 = [0u8; 8];
            t.read(off, &mut b1);
            t.read(off, &mut b8);
            t.write(off, &[0xff]);
            t.write(off, &[0xff; 8]);
        }
        w32(&mut t, 0x30, 99); // select a queue that does not exist
        assert_eq!(r32(&mut t, 0x34), 0);
        w32(&mut t, 0x38, 4);
        w32(&mut t, 0x50, 99);
    }
}

//! virtio-rng: entropy for the guest from the host's `getrandom(2)`.
//!
//! One queue; every device-writable buffer the guest offers is filled with
//! random bytes (at most [`MAX_REQUEST`] per chain, so a guest cannot make
//! the VMM read without bound).

use crate::GuestMemoryMmap;
use virtio_queue::Queue;
use vm_memory::Bytes;

use super::persist::{DeviceStateError, RngState, VirtioDeviceState};
use super::worker::{single_queue_worker, QueueWorker};
use super::VIRTIO_RING_F_EVENT_IDX;
use super::{device_type, drain_queue, ActivateError, Activation, Interrupt, VirtioDevice};
use crate::persist::Persist;

/// Most bytes served for one request.
pub const MAX_REQUEST: u32 = 64 << 10;
const QUEUE_SIZE: u16 = 256;

/// The entropy device.
#[derive(Default)]
pub struct Rng {
    worker: Option<QueueWorker>,
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Persist for Rng {
    type State = RngState;
    type ConstructorArgs = ();
    type Error = DeviceStateError;

    fn save(&self) -> RngState {
        RngState {}
    }

    fn restore(_: (), _: &RngState) -> Result<Self, Self::Error> {
        Ok(Self::new())
    }
}

impl VirtioDevice for Rng {
    fn state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Rng(self.save())
    }

    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let mut buf = vec![0u8; MAX_REQUEST as usize];
        self.worker = Some(single_queue_worker("virtio-rng", a, move |mem, q, irq| {
            process_queue(mem, q, irq, &mut buf)
        })?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.worker = None;
        true
    }
}

/// Serves every available request into the guest's buffers, using `buf`
/// (at least [`MAX_REQUEST`] bytes) as scratch; returns an error when the
/// queue itself is broken (the device then stops, as the spec allows).
pub fn process_queue(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    irq: &Interrupt,
    buf: &mut [u8],
) -> Result<(), virtio_queue::Error> {
    drain_queue(mem, queue, irq, |chain| {
        let mut written = 0u32;
        for desc in chain.writable() {
            let room = MAX_REQUEST - written;
            if room == 0 {
                break;
            }
            let len = (desc.len().min(room) as usize).min(buf.len());
            if getrandom(&mut buf[..len]).is_err() {
                break;
            }
            if mem.write_slice(&buf[..len], desc.addr()).is_err() {
                tracing::debug!("virtio-rng: descriptor outside guest memory");
                break;
            }
            written += len as u32;
        }
        let m = &crate::metrics::METRICS.entropy;
        m.entropy_event_count.inc();
        m.entropy_bytes.add(u64::from(written));
        written
    })
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes at most `buf.len() - done` bytes into `buf[done..]`.
        let r = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += r as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::INT_VRING;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    fn setup(descs: &[RawDescriptor]) -> (GuestMemoryMmap, Queue) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mq = MockSplitQueue::new(&mem, 16);
        mq.build_desc_chain(descs).unwrap();
        let q: Queue = mq.create_queue().unwrap();
        (mem, q)
    }

    fn irq() -> Interrupt {
        Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn fills_writable_buffers() {
        let d = SplitDescriptor::new(0x8000, 256, WRITE, 0);
        let (mem, mut q) = setup(&[RawDescriptor::from(d)]);
        let irq = irq();
        process_queue(&mem, &mut q, &irq, &mut [0u8; MAX_REQUEST as usize]).unwrap();
        let mut back = [0u8; 256];
        mem.read_slice(&mut back, GuestAddress(0x8000)).unwrap();
        assert!(back.iter().any(|&b| b != 0));
        assert_eq!(q.next_used(), 1);
        assert_eq!(irq.status(), INT_VRING);
    }

    #[test]
    fn hostile_chains_are_contained() {
        // Outside guest memory, read-only, huge, zero-length: served as far
        // as safe, never a panic or a write outside guest memory.
        for descs in [
            vec![SplitDescriptor::new(0xffff_ffff_0000, 64, WRITE, 0)],
            vec![SplitDescriptor::new(0x8000, 64, 0, 0)],
            vec![SplitDescriptor::new(0x8000, u32::MAX, WRITE, 0)],
            vec![SplitDescriptor::new(0x8000, 0, WRITE, 0)],
            vec![
                SplitDescriptor::new(0x8000, 16, WRITE | NEXT, 1),
                SplitDescriptor::new(0xf_fff8, 64, WRITE, 0),
            ],
        ] {
            let raw: Vec<RawDescriptor> = descs.into_iter().map(RawDescriptor::from).collect();
            let (mem, mut q) = setup(&raw);
            let _ = process_queue(&mem, &mut q, &irq(), &mut [0u8; MAX_REQUEST as usize]);
        }
    }

    /// Found by fuzzing: an available index far ahead of the device (more
    /// than the queue holds) made the drain loop spin forever. It is now an
    /// error (the device stops).
    #[test]
    fn runaway_available_index_stops_the_device() {
        let d = SplitDescriptor::new(0x8000, 256, WRITE, 0);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mq = MockSplitQueue::new(&mem, 16);
        mq.build_desc_chain(&[RawDescriptor::from(d)]).unwrap();
        mq.avail().idx().store(1000);
        let mut q: Queue = mq.create_queue().unwrap();
        let r = process_queue(&mem, &mut q, &irq(), &mut [0u8; MAX_REQUEST as usize]);
        assert!(r.is_err());
    }
}

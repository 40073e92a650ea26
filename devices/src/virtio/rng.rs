//! virtio-rng: entropy for the guest from the host's `getrandom(2)`.
//!
//! One queue; every device-writable buffer the guest offers is filled with
//! random bytes (at most [`MAX_REQUEST`] per chain, so a guest cannot make
//! the VMM read without bound).

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::VIRTIO_RING_F_EVENT_IDX;
use super::{device_type, ActivateError, Activation, Interrupt, VirtioDevice, INT_VRING};

/// Most bytes served for one request.
pub const MAX_REQUEST: u32 = 64 << 10;
const QUEUE_SIZE: u16 = 256;

/// The entropy device.
pub struct Rng {
    worker: Option<(EventFd, JoinHandle<()>)>,
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Self {
        Self { worker: None }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtioDevice for Rng {
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
        let fail = |e: std::io::Error| ActivateError::Failed(format!("rng: {e}"));
        let kill = EventFd::new(EFD_NONBLOCK).map_err(fail)?;
        let kill2 = kill.try_clone().map_err(fail)?;
        let Activation {
            mem,
            interrupt,
            mut queues,
            mut queue_evts,
            acked_features,
        } = a;
        let (Some(mut queue), Some(evt)) = (queues.pop(), queue_evts.pop()) else {
            return Err(ActivateError::Failed("rng: no queue".into()));
        };
        queue.set_event_idx(acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        let handle = std::thread::Builder::new()
            .name("virtio-rng".into())
            .stack_size(128 << 10)
            .spawn(move || worker(mem, interrupt, queue, evt, kill2))
            .map_err(fail)?;
        self.worker = Some((kill, handle));
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if let Some((kill, handle)) = self.worker.take() {
            let _ = kill.write(1);
            let _ = handle.join();
        }
        true
    }
}

impl Drop for Rng {
    fn drop(&mut self) {
        self.reset();
    }
}

fn worker(
    mem: GuestMemoryMmap,
    irq: Arc<Interrupt>,
    mut queue: Queue,
    evt: EventFd,
    kill: EventFd,
) {
    let Ok(epoll) = Epoll::new() else { return };
    for (fd, token) in [(evt.as_raw_fd(), 0u64), (kill.as_raw_fd(), 1)] {
        if epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .is_err()
        {
            return;
        }
    }
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for e in &events[..n] {
            if e.data() == 1 {
                return;
            }
            let _ = evt.read();
            if let Err(e) = process_queue(&mem, &mut queue, &irq) {
                tracing::warn!("virtio-rng: {e}; device stopped");
                return;
            }
        }
    }
}

/// Serves every available request; returns an error when the queue itself
/// is broken (the device then stops, as the spec allows).
pub fn process_queue(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    irq: &Interrupt,
) -> Result<(), virtio_queue::Error> {
    let mut buf = vec![0u8; MAX_REQUEST as usize];
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = queue.iter(mem)?.next() {
            let head = chain.head_index();
            let mut written = 0u32;
            for desc in chain.writable() {
                let room = MAX_REQUEST - written;
                if room == 0 {
                    break;
                }
                let len = desc.len().min(room) as usize;
                if getrandom(&mut buf[..len]).is_err() {
                    break;
                }
                if mem.write_slice(&buf[..len], desc.addr()).is_err() {
                    tracing::debug!("virtio-rng: descriptor outside guest memory");
                    break;
                }
                written += len as u32;
            }
            queue.add_used(mem, head, written)?;
        }
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    if queue.needs_notification(mem)? {
        irq.trigger(INT_VRING);
    }
    Ok(())
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
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

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
        process_queue(&mem, &mut q, &irq).unwrap();
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
            let _ = process_queue(&mem, &mut q, &irq());
        }
    }
}

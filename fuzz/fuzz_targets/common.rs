//! Guest memory and queues built from fuzz input: the input is copied to
//! the start of a 1 MiB guest, where the descriptor tables and available
//! rings of the queues lie, so it controls every descriptor (addresses,
//! lengths, flags, chaining) and every ring index.
#![allow(dead_code)]

use virtio_queue::{Queue, QueueT};
use devices::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

pub const QUEUE_SIZE: u16 = 16;

/// A 1 MiB guest whose first bytes are `data`.
pub fn guest(data: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest memory");
    let n = data.len().min(1 << 20);
    mem.write_slice(&data[..n], GuestAddress(0)).expect("fill");
    mem
}

/// Queue `i`: 16 descriptors at i*0x200, its avail ring right after them
/// (both within the input's first bytes), its used ring at 0x8000+i*0x200;
/// event index on when `event_idx`.
pub fn queue(mem: &GuestMemoryMmap, i: u64, event_idx: bool) -> Option<Queue> {
    let base = i * 0x200;
    let mut q = Queue::new(QUEUE_SIZE).ok()?;
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
    q.set_used_ring_address(Some((0x8000 + base) as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

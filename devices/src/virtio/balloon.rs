//! virtio-balloon: guest memory handed back to the host.
//!
//! The host sets a target (in 4 KiB pages); the guest driver inflates the
//! balloon by giving pages to the device, which returns them to the host
//! (`madvise(MADV_DONTNEED)`: the VMM's resident memory shrinks, and a page
//! the guest touches again later comes back zeroed). Deflating needs no work
//! on the host side. With statistics on, the device asks the guest for its
//! memory figures every interval; with free page reporting on, the guest
//! reports free page ranges, which are returned to the host as they come.
//! This is what lets one server hold many idle guests.
//!
//! Page numbers and ranges come from the guest: any outside guest RAM or not
//! page aligned are ignored (with a debug log), never touched.

use super::persist::{BalloonState, DeviceStateError, VirtioDeviceState};
use crate::persist::Persist;
use crate::sync::lock;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::timerfd::TimerFd;

use super::worker::{keep_serving, QueueWorker};
use super::{
    device_type, drain_queue, read_config_bytes, ActivateError, Activation, Interrupt,
    VirtioDevice, INT_CONFIG, VIRTIO_RING_F_EVENT_IDX,
};

/// The balloon's page size (the spec's, whatever the guest's).
pub const PAGE_SIZE: u64 = 4096;
/// 4 KiB pages in a MiB.
pub const PAGES_PER_MIB: u32 = 256;
const QUEUE_SIZE: u16 = 256;

const F_STATS_VQ: u32 = 1;
const F_DEFLATE_ON_OOM: u32 = 2;
const F_REPORTING: u32 = 5;

/// Statistic tags (virtio spec 5.5.6.3), in [`BalloonStats::tags`] order.
pub const STAT_NAMES: [&str; 10] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
];

/// The balloon's figures, as Firecracker's `GET /balloon/statistics` shows
/// them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// Pages the host asked for.
    pub target_pages: u32,
    /// Pages the guest has given.
    pub actual_pages: u32,
    /// Latest guest statistics, by tag; None until the guest reports one.
    pub tags: [Option<u64>; 10],
}

#[derive(Default)]
struct Shared {
    stats: BalloonStats,
    irq: Option<Arc<Interrupt>>,
}

/// Control of a balloon from the VMM: target and statistics.
#[derive(Clone)]
pub struct BalloonHandle(Arc<Mutex<Shared>>);

impl BalloonHandle {
    /// Sets the target size; a running guest is told at once.
    pub fn set_target_mib(&self, mib: u32) {
        let mut s = lock(&self.0);
        s.stats.target_pages = mib.saturating_mul(PAGES_PER_MIB);
        if let Some(irq) = &s.irq {
            irq.trigger(INT_CONFIG);
        }
    }

    /// Target size in MiB.
    pub fn target_mib(&self) -> u32 {
        lock(&self.0).stats.target_pages / PAGES_PER_MIB
    }

    /// The current figures.
    pub fn stats(&self) -> BalloonStats {
        lock(&self.0).stats.clone()
    }
}

/// The balloon device.
pub struct Balloon {
    shared: BalloonHandle,
    deflate_on_oom: bool,
    stats_interval_s: u16,
    free_page_reporting: bool,
    features: u64,
    queue_sizes: Vec<u16>,
    stats_interval: Duration,
    worker: Option<QueueWorker>,
}

impl Balloon {
    /// A balloon of `target_mib`; statistics every `stats_interval_s`
    /// seconds (0: none).
    pub fn new(
        target_mib: u32,
        deflate_on_oom: bool,
        stats_interval_s: u16,
        free_page_reporting: bool,
    ) -> Self {
        let mut features = 1u64 << VIRTIO_RING_F_EVENT_IDX;
        let mut queue_sizes = vec![QUEUE_SIZE, QUEUE_SIZE];
        if deflate_on_oom {
            features |= 1 << F_DEFLATE_ON_OOM;
        }
        if stats_interval_s > 0 {
            features |= 1 << F_STATS_VQ;
            queue_sizes.push(QUEUE_SIZE);
        }
        if free_page_reporting {
            features |= 1 << F_REPORTING;
            queue_sizes.push(QUEUE_SIZE);
        }
        let shared = BalloonHandle(Arc::default());
        shared.set_target_mib(target_mib);
        Self {
            shared,
            deflate_on_oom,
            stats_interval_s,
            free_page_reporting,
            features,
            queue_sizes,
            stats_interval: Duration::from_secs(stats_interval_s.into()),
            worker: None,
        }
    }

    /// The handle the VMM keeps to drive this balloon.
    pub fn handle(&self) -> BalloonHandle {
        self.shared.clone()
    }
}

impl Persist for Balloon {
    type State = BalloonState;
    type ConstructorArgs = ();
    type Error = DeviceStateError;

    fn save(&self) -> BalloonState {
        let s = lock(&self.shared.0);
        BalloonState {
            target_pages: s.stats.target_pages,
            actual_pages: s.stats.actual_pages,
            deflate_on_oom: self.deflate_on_oom,
            stats_polling_interval_s: self.stats_interval_s,
            free_page_reporting: self.free_page_reporting,
        }
    }

    fn restore(_: (), st: &BalloonState) -> Result<Self, Self::Error> {
        let b = Self::new(
            0,
            st.deflate_on_oom,
            st.stats_polling_interval_s,
            st.free_page_reporting,
        );
        {
            let mut s = lock(&b.shared.0);
            s.stats.target_pages = st.target_pages;
            s.stats.actual_pages = st.actual_pages;
        }
        Ok(b)
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let s = lock(&self.shared.0);
        let mut config = [0u8; 8];
        config[..4].copy_from_slice(&s.stats.target_pages.to_le_bytes());
        config[4..].copy_from_slice(&s.stats.actual_pages.to_le_bytes());
        read_config_bytes(&config, offset, data)
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (offset 4) is the driver's to write.
        if offset == 4 && data.len() == 4 {
            let mut s = lock(&self.shared.0);
            s.stats.actual_pages = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        }
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.worker = None;
        let fail = |e: String| ActivateError::Failed(format!("balloon: {e}"));
        let Activation {
            mem,
            interrupt,
            queues,
            queue_evts,
            acked_features,
        } = a;
        // The driver numbers only the queues of features it took.
        let stats_q = (acked_features & (1 << F_STATS_VQ) != 0).then_some(2);
        let report_q =
            (acked_features & (1 << F_REPORTING) != 0).then_some(2 + stats_q.is_some() as usize);
        if queues.len() < 2 {
            return Err(fail("two queues needed".into()));
        }
        let mut timer = TimerFd::new().map_err(|e| fail(e.to_string()))?;
        if stats_q.is_some() && !self.stats_interval.is_zero() {
            timer
                .reset(self.stats_interval, Some(self.stats_interval))
                .map_err(|e| fail(e.to_string()))?;
        }
        let timer_token = queue_evts.len();
        lock(&self.shared.0).irq = Some(interrupt.clone());
        let mut w = BalloonWorker {
            mem,
            irq: interrupt,
            queues,
            stats_q,
            report_q,
            stats_head: None,
            shared: self.shared.clone(),
        };
        let fd = timer.as_raw_fd();
        let worker =
            QueueWorker::spawn_with_fds("virtio-balloon", queue_evts, &[fd], move |token| {
                let r = if token == timer_token {
                    let _ = timer.wait();
                    w.request_stats()
                } else {
                    w.process(token)
                };
                keep_serving("virtio-balloon", r)
            })
            .map_err(|e| fail(e.to_string()))?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.worker = None;
        let mut s = lock(&self.shared.0);
        s.irq = None;
        s.stats.actual_pages = 0;
        true
    }

    fn quiesce(&mut self) {
        self.worker = None;
    }

    fn state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Balloon(self.save())
    }
}

struct BalloonWorker {
    mem: GuestMemoryMmap,
    irq: Arc<Interrupt>,
    queues: Vec<Queue>,
    stats_q: Option<usize>,
    report_q: Option<usize>,
    /// The statistics buffer the device holds until it wants new figures.
    stats_head: Option<u16>,
    shared: BalloonHandle,
}

impl BalloonWorker {
    fn process(&mut self, q: usize) -> Result<(), virtio_queue::Error> {
        let mem = &self.mem;
        let Some(queue) = self.queues.get_mut(q) else {
            return Ok(());
        };
        match q {
            0 => drain_queue(mem, queue, &self.irq, |chain| {
                crate::metrics::METRICS.balloon.inflate_count.inc();
                inflate(mem, chain);
                0
            }),
            1 => drain_queue(mem, queue, &self.irq, |_| {
                crate::metrics::METRICS.balloon.deflate_count.inc();
                0
            }),
            _ if Some(q) == self.report_q => drain_queue(mem, queue, &self.irq, |chain| {
                for d in chain {
                    if discard(mem, d.addr(), u64::from(d.len())) {
                        crate::metrics::METRICS
                            .balloon
                            .reported_pages
                            .add(u64::from(d.len()) / PAGE_SIZE);
                    }
                }
                0
            }),
            _ if Some(q) == self.stats_q => {
                // As drain_queue, except that the buffer is kept, not used:
                // notifications must still be re-armed (event index).
                loop {
                    queue.disable_notification(mem)?;
                    while let Some(chain) = queue.pop_descriptor_chain(mem) {
                        let head = chain.head_index();
                        let mut s = lock(&self.shared.0);
                        crate::metrics::METRICS.balloon.stats_updates_count.inc();
                        read_stats(mem, chain, &mut s.stats.tags);
                        drop(s);
                        // A driver that sends a second buffer gets the first back.
                        if let Some(old) = self.stats_head.replace(head) {
                            queue.add_used(mem, old, 0)?;
                            self.irq.notify_used(mem, queue)?;
                        }
                    }
                    super::check_avail(mem, queue)?;
                    if !queue.enable_notification(mem)? {
                        return Ok(());
                    }
                }
            }
            _ => Ok(()),
        }
    }

    /// Gives the statistics buffer back, asking the guest to refill it.
    fn request_stats(&mut self) -> Result<(), virtio_queue::Error> {
        let (Some(q), Some(head)) = (self.stats_q, self.stats_head.take()) else {
            return Ok(());
        };
        if let Some(queue) = self.queues.get_mut(q) {
            queue.add_used(&self.mem, head, 0)?;
            self.irq.notify_used(&self.mem, queue)?;
        }
        Ok(())
    }
}

/// Most page frame numbers one inflate buffer may list: Linux sends at
/// most 256 (`VIRTIO_BALLOON_ARRAY_PFNS_MAX`), Firecracker takes 2048. The
/// rest of a longer list is ignored, so that a hostile list (a descriptor
/// spanning all of guest memory, say) cannot keep the device busy.
const MAX_PFNS_PER_BUFFER: usize = 2048;

/// Returns every page a chain of page frame numbers names to the host, in
/// runs of consecutive pages (sorted, each page once). Returns how many
/// runs were discarded.
fn inflate(mem: &GuestMemoryMmap, chain: super::Chain<'_>) -> usize {
    let mut pfns = Vec::new();
    'list: for d in chain {
        for i in 0..u64::from(d.len() / 4) {
            if pfns.len() == MAX_PFNS_PER_BUFFER {
                tracing::debug!(
                    "virtio-balloon: page list longer than {MAX_PFNS_PER_BUFFER} entries cut"
                );
                break 'list;
            }
            let Ok(pfn) = mem.read_obj::<u32>(d.addr().unchecked_add(i * 4)) else {
                tracing::debug!("virtio-balloon: page list outside guest memory");
                break;
            };
            pfns.push(u64::from(pfn));
        }
    }
    pfns.sort_unstable();
    pfns.dedup();
    let mut runs = 0;
    let mut rest = &pfns[..];
    while let Some(&start) = rest.first() {
        let len = rest
            .iter()
            .zip(start..)
            .take_while(|(p, want)| **p == *want)
            .count();
        discard(mem, GuestAddress(start * PAGE_SIZE), len as u64 * PAGE_SIZE);
        runs += 1;
        rest = &rest[len..];
    }
    runs
}

/// Returns guest range `addr..addr+len` to the host if it lies, page
/// aligned, within one region of guest RAM; returns whether it did.
pub fn discard(mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> bool {
    if len == 0 || !addr.0.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        tracing::debug!(
            "virtio-balloon: unaligned range {:#x}+{len:#x} ignored",
            addr.0
        );
        return false;
    }
    let Some(region) = mem.find_region(addr) else {
        tracing::debug!("virtio-balloon: range {:#x} outside guest memory", addr.0);
        return false;
    };
    let off = addr.0 - region.start_addr().0;
    if off.checked_add(len).is_none_or(|end| end > region.len()) {
        tracing::debug!(
            "virtio-balloon: range {:#x}+{len:#x} crosses guest memory",
            addr.0
        );
        return false;
    }
    let Ok(host) = region.get_host_address(MemoryRegionAddress(off)) else {
        return false;
    };
    // SAFETY: `host..host+len` lies within one mapping of guest RAM (checked
    // above), which is private anonymous memory: dropping its pages only
    // makes the guest read zeros there next time, which is what a balloon
    // page or a reported free page may hold. No Rust reference points into
    // guest RAM.
    let r = unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_DONTNEED) };
    if r != 0 {
        tracing::warn!(
            "virtio-balloon: madvise: {}",
            std::io::Error::last_os_error()
        );
    }
    r == 0
}

/// Reads a statistics buffer: 10-byte (tag, value) entries.
fn read_stats(mem: &GuestMemoryMmap, chain: super::Chain<'_>, tags: &mut [Option<u64>; 10]) {
    let Ok(mut r) = chain.reader(mem) else {
        return;
    };
    let mut entry = [0u8; 10];
    // At most one entry per tag value, whatever length the guest claims.
    for _ in 0..64 {
        if std::io::Read::read_exact(&mut r, &mut entry).is_err() {
            break;
        }
        let tag = u16::from_le_bytes([entry[0], entry[1]]) as usize;
        let mut v = [0u8; 8];
        v.copy_from_slice(&entry[2..]);
        if let Some(slot) = tags.get_mut(tag) {
            *slot = Some(u64::from_le_bytes(v));
        }
    }
}

/// Fuzzing entry point: inflate, deflate, statistics and reporting queues
/// (hostile) are served, and the statistics buffer requested.
#[cfg(feature = "fuzzing")]
pub fn fuzz_queues(mem: &GuestMemoryMmap, queues: Vec<Queue>) {
    let Ok(evt) = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK) else {
        return;
    };
    let n = queues.len();
    let mut w = BalloonWorker {
        mem: mem.clone(),
        irq: Arc::new(Interrupt::new(evt)),
        queues,
        stats_q: (n > 2).then_some(2),
        report_q: (n > 3).then_some(3),
        stats_head: None,
        shared: BalloonHandle(Arc::default()),
    };
    for q in 0..n {
        let _ = w.process(q);
    }
    let _ = w.request_stats();
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as D, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const WRITE: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x40_0000),
            (GuestAddress(0x100_0000), 0x10_0000),
        ])
        .unwrap()
    }

    fn touched(mem: &GuestMemoryMmap, addr: u64) -> u8 {
        mem.read_obj::<u8>(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn discard_zeroes_pages_and_ignores_bad_ranges() {
        let m = mem();
        for a in [0x20_0000u64, 0x20_1000, 0x100_0000] {
            m.write_obj(0xaau8, GuestAddress(a)).unwrap();
        }
        assert!(discard(&m, GuestAddress(0x20_0000), 0x2000));
        assert_eq!(touched(&m, 0x20_0000), 0);
        assert_eq!(touched(&m, 0x20_1000), 0);
        // Unaligned, empty, outside RAM, crossing a region's end, overflowing.
        assert!(!discard(&m, GuestAddress(0x20_0001), 0x1000));
        assert!(!discard(&m, GuestAddress(0x20_0000), 0x800));
        assert!(!discard(&m, GuestAddress(0x20_0000), 0));
        assert!(!discard(&m, GuestAddress(0x80_0000), 0x1000));
        assert!(!discard(&m, GuestAddress(0x3f_f000), 0x2000));
        assert!(!discard(&m, GuestAddress(0x100_0000), u64::MAX - 0xfff));
        assert_eq!(touched(&m, 0x100_0000), 0xaa);
    }

    fn worker<'a>(
        m: &'a GuestMemoryMmap,
        stats: bool,
    ) -> (BalloonWorker, Vec<MockSplitQueue<'a, GuestMemoryMmap>>) {
        let n = if stats { 3 } else { 2 };
        let mocks: Vec<_> = (0..n)
            .map(|i| MockSplitQueue::create(m, GuestAddress(0x1_0000 + i as u64 * 0x1_0000), 16))
            .collect();
        let w = BalloonWorker {
            mem: m.clone(),
            irq: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            queues: mocks.iter().map(|q| q.create_queue().unwrap()).collect(),
            stats_q: stats.then_some(2),
            report_q: None,
            stats_head: None,
            shared: BalloonHandle(Arc::default()),
        };
        (w, mocks)
    }

    #[test]
    fn inflate_returns_listed_pages_and_skips_hostile_ones() {
        let m = mem();
        let (mut w, mocks) = worker(&m, false);
        for a in [0x30_0000u64, 0x30_1000, 0x30_5000, 0x100_0000] {
            m.write_obj(0x55u8, GuestAddress(a)).unwrap();
        }
        // PFNs: a run of two, one alone, one far outside RAM, u32::MAX.
        let pfns: [u32; 5] = [0x300, 0x301, 0x305, 0xfff_0000, u32::MAX];
        for (i, p) in pfns.iter().enumerate() {
            m.write_obj(*p, GuestAddress(0x20_0000 + i as u64 * 4))
                .unwrap();
        }
        mocks[0]
            .add_desc_chains(&[RawDescriptor::from(D::new(0x20_0000, 20, 0, 0))], 0)
            .unwrap();
        // A page list outside guest memory.
        mocks[0]
            .add_desc_chains(
                &[RawDescriptor::from(D::new(0xffff_0000_0000, 4096, 0, 0))],
                1,
            )
            .unwrap();
        w.process(0).unwrap();
        assert_eq!(w.queues[0].next_used(), 2);
        assert_eq!(touched(&m, 0x30_0000), 0);
        assert_eq!(touched(&m, 0x30_1000), 0);
        assert_eq!(touched(&m, 0x30_5000), 0);
        assert_eq!(touched(&m, 0x100_0000), 0x55);
    }

    /// Found by the fuzzer (a descriptor listing all of guest memory,
    /// mostly page 0, took 0.4 s: one madvise per entry).
    #[test]
    fn long_and_repetitive_page_lists_cost_little() {
        let m = mem();
        let (_w, mocks) = worker(&m, false);
        // A page list as long as guest memory: a descending run with each
        // page listed twice, then page 0x380 over and over.
        for i in 0..MAX_PFNS_PER_BUFFER as u64 {
            let pfn = if i < 128 {
                0x400 - (i / 2) as u32
            } else {
                0x380
            };
            m.write_obj(pfn, GuestAddress(0x20_0000 + i * 4)).unwrap();
        }
        let all = RawDescriptor::from(D::new(0x20_0000, u32::MAX, 0, 0));
        mocks[0].add_desc_chains(&[all], 0).unwrap();
        let mut q: Queue = mocks[0].create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&m).unwrap();
        // Pages 0x3c1..=0x400 in one run, page 0x380 in another.
        assert_eq!(inflate(&m, chain), 2);

        // Over the cap: only the first MAX_PFNS_PER_BUFFER entries count
        // (every other page, so each entry would be a run of its own).
        for i in 0..(MAX_PFNS_PER_BUFFER as u64 + 100) {
            m.write_obj(0x1000 + 2 * i as u32, GuestAddress(0x20_0000 + i * 4))
                .unwrap();
        }
        mocks[0].add_desc_chains(&[all], 1).unwrap();
        let chain = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(inflate(&m, chain), MAX_PFNS_PER_BUFFER);
    }

    #[test]
    fn stats_buffer_is_held_then_returned_on_request() {
        let m = mem();
        let (mut w, mocks) = worker(&m, true);
        // free_memory (4) = 1000, available (6) = 2000, an unknown tag 99.
        let mut buf = Vec::new();
        for (tag, v) in [(4u16, 1000u64), (6, 2000), (99, 5)] {
            buf.extend_from_slice(&tag.to_le_bytes());
            buf.extend_from_slice(&v.to_le_bytes());
        }
        m.write_slice(&buf, GuestAddress(0x20_0000)).unwrap();
        mocks[2]
            .add_desc_chains(
                &[RawDescriptor::from(D::new(
                    0x20_0000,
                    buf.len() as u32,
                    0,
                    0,
                ))],
                0,
            )
            .unwrap();
        w.process(2).unwrap();
        assert_eq!(w.queues[2].next_used(), 0, "held");
        let s = w.shared.stats();
        assert_eq!(
            (s.tags[4], s.tags[6], s.tags[0]),
            (Some(1000), Some(2000), None)
        );
        w.request_stats().unwrap();
        assert_eq!(w.queues[2].next_used(), 1, "returned");
        w.request_stats().unwrap();
        assert_eq!(w.queues[2].next_used(), 1, "nothing more to return");
    }

    #[test]
    fn config_space_carries_target_and_actual() {
        let mut b = Balloon::new(64, true, 1, true);
        assert_eq!(b.queue_max_sizes().len(), 4);
        assert_ne!(b.features() & (1 << F_DEFLATE_ON_OOM), 0);
        let mut cfg = [0u8; 8];
        b.read_config(0, &mut cfg);
        assert_eq!(u32::from_le_bytes(cfg[..4].try_into().unwrap()), 64 * 256);
        b.write_config(4, &100u32.to_le_bytes());
        b.write_config(0, &7u32.to_le_bytes()); // not the driver's: ignored
        let h = b.handle();
        assert_eq!((h.stats().actual_pages, h.target_mib()), (100, 64));
        h.set_target_mib(u32::MAX);
        assert_eq!(h.stats().target_pages, u32::MAX);
        let _ = WRITE;
    }
}

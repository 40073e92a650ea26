//! The source's side: pre-copy passes while the guest runs, then the
//! paused guest's last pages and state, and the hand-over.

use std::io::Write;
use std::time::{Duration, Instant};

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::protocol::{
    self, expect, parse, write_frame, write_json, Hello, Kind, MemoryWriter, MigrationError,
    Reason, PAGE,
};
use super::{SendMigration, Stream, Url};
use crate::vm::Vm;

/// Most pre-copy passes after the first.
const MAX_PASSES: u32 = 30;
/// Auto-converge: the throttle's first step and most (in % of vCPU time).
const THROTTLE_STEP: u32 = 20;
const THROTTLE_MAX: u32 = 95;

/// What a finished migration measured.
#[derive(Debug, Default)]
pub struct SendReport {
    pub bytes: u64,
    /// Passes over memory, the first (everything touched) included.
    pub passes: u32,
    /// From pausing the guest to the destination running it.
    pub downtime: Duration,
    pub total: Duration,
    /// The highest auto-converge throttle used (0: none).
    pub throttle_pct: u32,
}

/// Connects to `url`.
fn connect(url: &Url, timeout: Duration) -> Result<Stream, MigrationError> {
    Ok(match url {
        Url::Tcp(addr) => {
            let mut last = None;
            let addrs = std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())?;
            let mut stream = None;
            for a in addrs {
                match std::net::TcpStream::connect_timeout(&a, timeout) {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let s = stream.ok_or_else(|| {
                last.unwrap_or_else(|| std::io::Error::other(format!("{addr}: no address")))
            })?;
            let _ = s.set_nodelay(true);
            Stream::Tcp(s)
        }
        Url::Unix(p) => Stream::Unix(std::os::unix::net::UnixStream::connect(p)?),
    })
}

/// Auto-converge: pauses the vCPUs for a share of each stretch of sending.
struct Throttle {
    pct: u32,
    max: u32,
    /// Never hold the vCPUs (they are paused already).
    off: bool,
}

impl Throttle {
    /// After `busy` of sending, keeps the vCPUs out for `pct`% of the
    /// time; returns how long that took (not time spent sending).
    fn apply(&mut self, vm: &mut Vm, busy: Duration) -> Duration {
        if self.pct == 0 || self.off {
            return Duration::ZERO;
        }
        let t = Instant::now();
        let off = busy.mul_f64(f64::from(self.pct) / f64::from(100 - self.pct));
        if vm.hold().is_ok() {
            std::thread::sleep(off.min(Duration::from_millis(500)));
            vm.resume_held();
        }
        t.elapsed()
    }

    fn raise(&mut self) {
        self.pct = (self.pct + THROTTLE_STEP).min(THROTTLE_MAX);
        self.max = self.max.max(self.pct);
    }
}

/// Paces sending to a bandwidth limit.
struct Pacer {
    limit: Option<u64>,
    start: Instant,
    sent: u64,
}

impl Pacer {
    fn account(&mut self, bytes: u64) {
        self.sent += bytes;
        if let Some(bps) = self.limit {
            let due = Duration::from_secs_f64(self.sent as f64 / bps as f64);
            if let Some(wait) = due.checked_sub(self.start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// One pass's sender: pages into the stream, with throttling and pacing.
struct Pass<'a, 'm> {
    out: &'a mut Stream,
    writer: &'a mut MemoryWriter<'m>,
    throttle: &'a mut Throttle,
    pacer: &'a mut Pacer,
    deadline: Instant,
    timeout_s: u64,
    /// Time spent holding the vCPUs back, which is not sending time.
    throttled: Duration,
    /// KVM's manual dirty-log protection is on: a range's dirty bits are
    /// cleared (the pages write-protected again) just before it is read.
    manual: bool,
}

impl Pass<'_, '_> {
    /// With manual protection, clears the dirty bits of `gpa..gpa+len`
    /// before the range is read: a write after the read marks the page
    /// for the next pass.
    fn clear(&self, vm: &Vm, gpa: GuestAddress, len: usize) -> Result<(), MigrationError> {
        if self.manual {
            vm.clear_dirty_log(gpa, len as u64 / PAGE)?;
        }
        Ok(())
    }

    fn check_time(&self) -> Result<(), MigrationError> {
        if Instant::now() > self.deadline {
            return Err(MigrationError::Timeout(self.timeout_s));
        }
        Ok(())
    }

    /// Sends the pages of `gpa..gpa+len` (those not zero only, with
    /// `skip_zero`), taken from guest memory when the batch is written.
    fn send_range(
        &mut self,
        vm: &mut Vm,
        gpa: GuestAddress,
        len: usize,
        skip_zero: bool,
    ) -> Result<(), MigrationError> {
        let t = Instant::now();
        for i in 0..len as u64 / PAGE {
            let at = gpa.0 + i * PAGE;
            if skip_zero && protocol::page_is_zero(self.writer.mem(), at) {
                continue;
            }
            let before = self.writer.sent;
            self.writer.page(self.out, at)?;
            self.pacer.account(self.writer.sent - before);
        }
        self.throttled += self.throttle.apply(vm, t.elapsed());
        self.check_time()
    }
}

/// The first pass: every page the guest ever touched and that is not
/// zero.
fn send_everything(vm: &mut Vm, pass: &mut Pass<'_, '_>) -> Result<(), MigrationError> {
    const CHUNK: u64 = 1 << 20;
    let anonymous = !vm.mem_from_file;
    let regions: Vec<(GuestAddress, u64)> =
        vm.mem.iter().map(|r| (r.start_addr(), r.len())).collect();
    for (start, len) in regions {
        let mut off = 0;
        while off < len {
            let n = (len - off).min(CHUNK) as usize;
            let at = start.unchecked_add(off);
            pass.clear(vm, at, n)?;
            // Never touched (or given back by the balloon): zero, and the
            // destination's fresh memory is zero too.
            if !anonymous || crate::snapshot::memory::any_resident(&vm.mem, at, n) {
                pass.send_range(vm, at, n, true)?;
            }
            off += n as u64;
        }
    }
    Ok(())
}

/// The pages written since the dirty log was last read: by the guest
/// (`logs`, a KVM bitmap per memory slot) or by the devices (vm-memory's
/// bitmap, cleared page by page as the page is taken).
fn dirty_pages(vm: &Vm, logs: &[Vec<u64>]) -> Vec<u64> {
    let mut pages = Vec::new();
    crate::snapshot::memory::for_each_dirty(&vm.mem, logs, |d| {
        if d.by_device {
            // Cleared before the page is read: a device write after this
            // marks it again for the next pass.
            let region: &vm_memory::MmapRegion<vm_memory::bitmap::AtomicBitmap> = d.region;
            region
                .bitmap()
                .reset_addr_range((d.page * PAGE) as usize, PAGE as usize);
        }
        pages.push(d.region.start_addr().0 + d.page * PAGE);
        true
    });
    pages
}

/// Sends `pages` (sorted guest addresses), runs read together.
fn send_pages(vm: &mut Vm, pass: &mut Pass<'_, '_>, pages: &[u64]) -> Result<(), MigrationError> {
    let mut i = 0;
    while i < pages.len() {
        let mut j = i + 1;
        while j < pages.len() && pages[j] == pages[j - 1] + PAGE && j - i < 256 {
            j += 1;
        }
        pass.clear(vm, GuestAddress(pages[i]), (j - i) * PAGE as usize)?;
        pass.send_range(vm, GuestAddress(pages[i]), (j - i) * PAGE as usize, false)?;
        i = j;
    }
    Ok(())
}

/// Moves the guest to `p.destination_url`. On success the guest runs
/// there and this VM must end; on failure it runs here as before.
pub fn send(vm: &mut Vm, p: &SendMigration) -> Result<SendReport, MigrationError> {
    let url: Url = p.destination_url.parse()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(p.timeout_s);
    let mut out = connect(&url, Duration::from_secs(p.timeout_s.clamp(1, 30)))?;
    out.set_read_timeout(Some(Duration::from_secs(p.timeout_s.clamp(1, 60))))?;
    out.set_write_timeout(Some(Duration::from_secs(p.timeout_s.clamp(1, 60))))?;

    let state_now = vm.machine_state();
    let hello_at = Instant::now();
    write_json(
        &mut out,
        Kind::Hello,
        &Hello {
            version: protocol::VERSION,
            condo: env!("CARGO_PKG_VERSION").into(),
            machine: state_now,
            memory: crate::snapshot::memory::regions_of(&vm.mem),
            cpuid: vm.guest_cpuid.clone(),
        },
    )?;
    let (kind, body) = expect(&mut out, &[Kind::Accept, Kind::Refuse])?;
    if kind == Kind::Refuse {
        return Err(MigrationError::Refused(
            parse::<Reason>(kind, &body)?.reason,
        ));
    }
    // The hand-over costs at least two round trips (State -> Ready, Go ->
    // Running) on top of the last pass; this one (the destination
    // allocating the guest's memory in between) bounds them from above.
    let round_trip = hello_at.elapsed();

    // A restore still recording its working set records what it has: the
    // dirty log is the migration's from here.
    vm.record_working_set();
    let tracking_before = vm.config.machine_config.track_dirty_pages;
    // As QEMU: with KVM's manual protection, turning logging on
    // write-protects nothing, and each range is write-protected again just
    // before it is sent, not all dirty pages at every read of the log (the
    // last one just before the pause). Not when the log is the user's
    // (diff snapshots read it the usual way).
    let manual = !tracking_before && vm.set_manual_dirty_protect(true);
    tracing::info!(manual_protect = manual, "migration: dirty page logging on");
    vm.set_dirty_tracking(true)?;
    let r = precopy_and_hand_over(vm, &mut out, p, start, deadline, round_trip, manual);
    if !tracking_before {
        if let Err(e) = vm.set_dirty_tracking(false) {
            tracing::warn!("migration: cannot stop dirty page tracking: {e}");
        }
        if manual {
            vm.set_manual_dirty_protect(false);
        }
    }
    r
}

fn precopy_and_hand_over(
    vm: &mut Vm,
    out: &mut Stream,
    p: &SendMigration,
    start: Instant,
    deadline: Instant,
    round_trip: Duration,
    manual: bool,
) -> Result<SendReport, MigrationError> {
    // What the last pass's memory may take: the allowed pause less the
    // hand-over's two round trips, but at least a quarter of it (the
    // state and the destination's rebuild come on top: see
    // docs/migration.md).
    let downtime = p.downtime_ms as f64;
    let memory_budget_ms = (downtime - 2.0 * round_trip.as_secs_f64() * 1000.0).max(downtime / 4.0);
    // The writer sends pages straight from guest memory: its own handle on
    // the mapping, as the VM is changed (throttled, paused) meanwhile.
    let mem = vm.mem.clone();
    let mut writer = MemoryWriter::new(&mem);
    // A guest the user paused stays paused, here or there.
    let was_paused = vm.is_paused();
    let mut throttle = Throttle {
        pct: 0,
        max: 0,
        off: was_paused,
    };
    let mut pacer = Pacer {
        limit: p.bandwidth_mib_s.map(|m| m.saturating_mul(1 << 20)),
        start,
        sent: 0,
    };
    // Start the logs afresh: what the guest writes from now on.
    vm.dirty_log()?;
    vm.reset_device_dirty_bitmap();
    let mut pass = Pass {
        out,
        writer: &mut writer,
        throttle: &mut throttle,
        pacer: &mut pacer,
        deadline,
        timeout_s: p.timeout_s,
        throttled: Duration::ZERO,
        manual,
    };
    let t = Instant::now();
    send_everything(vm, &mut pass)?;
    pass.writer.flush(pass.out)?;
    let mut rate = pass.writer.sent as f64 / t.elapsed().as_secs_f64().max(1e-3);
    let mut passes = 1;
    let mut last_dirty = u64::MAX;
    let mut pending = dirty_pages(vm, &vm.dirty_log()?);
    loop {
        let bytes = pending.len() as u64 * PAGE;
        let estimate_ms = bytes as f64 / rate * 1000.0;
        if estimate_ms <= memory_budget_ms {
            break;
        }
        if passes > MAX_PASSES {
            tracing::warn!(
                "migration: {passes} passes did not converge; the last one ({} MiB) may take \
                 longer than {} ms",
                bytes >> 20,
                p.downtime_ms
            );
            break;
        }
        if passes >= 2 && bytes * 10 > last_dirty * 9 && pass.throttle.pct < THROTTLE_MAX {
            pass.throttle.raise();
            tracing::info!(
                "migration: the guest dirties memory as fast as the link carries it \
                 ({} MiB per pass); auto-converge throttles its vCPUs to {}%",
                bytes >> 20,
                100 - pass.throttle.pct
            );
        }
        last_dirty = bytes;
        let sent_before = pass.writer.sent;
        let t = Instant::now();
        pass.throttled = Duration::ZERO;
        send_pages(vm, &mut pass, &pending)?;
        pass.writer.flush(pass.out)?;
        let secs = t
            .elapsed()
            .saturating_sub(pass.throttled)
            .as_secs_f64()
            .max(1e-3);
        rate = ((pass.writer.sent - sent_before) as f64 / secs).max(1.0);
        passes += 1;
        tracing::debug!(
            pass = passes,
            mib = (pass.writer.sent - sent_before) >> 20,
            rate_mib_s = rate / f64::from(1 << 20),
            "migration pass"
        );
        pending = dirty_pages(vm, &vm.dirty_log()?);
    }

    // Stop and copy.
    let paused_at = Instant::now();
    if !was_paused {
        vm.pause()?;
    }
    vm.devices.quiesce();
    let r = stop_and_copy(vm, &mut pass, pending, paused_at, was_paused);
    match r {
        Ok(mut report) => {
            report.passes = passes + 1;
            report.total = start.elapsed();
            report.throttle_pct = throttle.max;
            report.bytes = writer.sent;
            Ok(report)
        }
        Err(e) => {
            // The guest stays here: its devices take their host side back
            // and it runs on.
            if let Err(a) = vm.devices.attach_backends() {
                tracing::error!("migration: cannot take the devices back: {a}");
            }
            vm.devices.resume();
            if !was_paused {
                vm.resume();
            }
            Err(e)
        }
    }
}

/// The paused guest's last pages, its state, and the hand-over.
fn stop_and_copy(
    vm: &mut Vm,
    pass: &mut Pass<'_, '_>,
    mut pending: Vec<u64>,
    paused_at: Instant,
    was_paused: bool,
) -> Result<SendReport, MigrationError> {
    pass.throttle.pct = 0;
    // The guest is paused: nothing to write-protect.
    pass.manual = false;
    let more = dirty_pages(vm, &vm.dirty_log()?);
    pending.extend(more);
    pending.sort_unstable();
    pending.dedup();
    send_pages(vm, pass, &pending)?;
    pass.writer.flush(pass.out)?;
    let state = vm.save_state()?;
    // The destination opens the same TAPs and vsock socket.
    vm.devices.detach_backends();
    let body = crate::snapshot::encode(&state);
    write_frame(pass.out, Kind::State, &body)?;
    pass.writer.sent += body.len() as u64 + 16;
    let (kind, body) = expect(pass.out, &[Kind::Ready, Kind::Failed])?;
    if kind == Kind::Failed {
        return Err(MigrationError::DestinationFailed(
            parse::<Reason>(kind, &body)?.reason,
        ));
    }
    write_json(
        pass.out,
        Kind::Go,
        &protocol::Go {
            resume: !was_paused,
        },
    )?;
    pass.out.flush()?;
    let (kind, body) = expect(pass.out, &[Kind::Running, Kind::Failed])?;
    if kind == Kind::Failed {
        return Err(MigrationError::DestinationFailed(
            parse::<Reason>(kind, &body)?.reason,
        ));
    }
    Ok(SendReport {
        downtime: paused_at.elapsed(),
        ..SendReport::default()
    })
}

//! vCPUs: configuration for boot and the per-thread run loop.
//!
//! Each vCPU runs `KVM_RUN` on its own thread and dispatches port I/O and
//! MMIO exits to the buses. A vCPU thread never decides the VM's fate on
//! its own: it reports what ended it to the VMM through [`VmExitSink`], and
//! stops when the VMM sets the stop flag and kicks it with [`KICK_SIGNAL`].

use crate::seccomp::ThreadKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::sync::{lock, wait, wait_timeout};
use devices::GuestMemoryMmap;
use devices::{Bus, ExitSignal};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::GuestAddress;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::arch::{self, BootProtocol};

/// Errors configuring or starting a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {id}: {err}")]
    Create { id: u8, err: kvm_ioctls::Error },
    #[error("cannot configure vCPU {id}: {what}")]
    Configure { id: u8, what: String },
    #[error("this host's KVM lacks CPU features the guest uses: {0}")]
    MissingCpuFeatures(String),
    #[error("cannot start vCPU thread: {0}")]
    Spawn(std::io::Error),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

/// Why a vCPU's state could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vCPU {id}: {what}: {err}")]
    Kvm {
        id: u8,
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("vCPU {0}: the MSR list is too long")]
    MsrList(u8),
    #[error("vCPU {0} has not stopped")]
    NotStopped(u8),
}

/// Why the VM ended, as seen by the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off.
    Poweroff,
    /// The guest rebooted.
    Reset,
    /// The guest kernel panicked (pvpanic or a KVM crash event).
    Panic,
    /// A vCPU triple-faulted. `state` names where it was (instruction
    /// pointer, paging and mode registers), for the error line.
    TripleFault { vcpu: u8, state: String },
    /// KVM could not run a vCPU.
    VcpuFailed { vcpu: u8, reason: String },
    /// The VMM was asked to stop (SIGTERM).
    Stopped,
    /// The guest moved to another VMM (live migration).
    Migrated,
}

/// Holds vCPU threads back from their first KVM_RUN until opened, and
/// tells the opener when they have all gone through.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    /// How many threads went through, and when the last one did.
    passed: Mutex<(usize, Option<Instant>)>,
    passed_cv: Condvar,
}

impl Gate {
    /// Called by a vCPU thread: returns once the gate is open, the
    /// thread's next step being its first KVM_RUN.
    pub fn wait(&self) {
        let mut open = lock(&self.open);
        while !*open {
            open = wait(&self.cv, open);
        }
        drop(open);
        let mut p = lock(&self.passed);
        p.0 += 1;
        p.1 = Some(Instant::now());
        self.passed_cv.notify_all();
    }

    pub fn open(&self) {
        *lock(&self.open) = true;
        self.cv.notify_all();
    }

    /// Waits (at most `limit`) until `count` threads went through; when the
    /// last of them did, or None if they did not all go in time.
    pub fn wait_passed(&self, count: usize, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        let mut p = lock(&self.passed);
        while p.0 < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            p = wait_timeout(&self.passed_cv, p, left);
        }
        p.1
    }
}

/// Where vCPU threads report the end of the VM; first report wins.
pub type VmExitSink = ExitSignal<VmExit>;

/// The signal that interrupts `KVM_RUN` so a vCPU thread sees its stop flag.
#[allow(non_snake_case)]
pub fn KICK_SIGNAL() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for [`KICK_SIGNAL`]; without one the signal
/// would kill the process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(KICK_SIGNAL(), noop_handler).map_err(VcpuError::Signal)
}

/// A configured vCPU, ready to run.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `id` of `count` with its CPUID, MSRs, FPU and local
    /// APIC; [`Vcpu::set_boot_registers`] then points it at the kernel.
    pub fn new(vm: &VmFd, id: u8, count: u8, supported_cpuid: &CpuId) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|err| VcpuError::Create { id, err })?;
        let cfg = |what: String| VcpuError::Configure { id, what };
        let mut cpuid = supported_cpuid.clone();
        arch::filter_cpuid(&mut cpuid, id, count).map_err(|e| cfg(e.to_string()))?;
        fd.set_cpuid2(&cpuid)
            .map_err(|e| cfg(format!("KVM_SET_CPUID2: {e}")))?;
        arch::setup_msrs(&fd).map_err(|e| cfg(e.to_string()))?;
        arch::setup_fpu(&fd).map_err(|e| cfg(e.to_string()))?;
        arch::set_lint(&fd).map_err(|e| cfg(e.to_string()))?;
        Ok(Self { id, fd })
    }

    /// Sets the registers to enter the kernel at `entry` with `protocol`
    /// (writing the GDT and, for the Linux protocol, page tables to `mem`).
    pub fn set_boot_registers(
        &self,
        mem: &GuestMemoryMmap,
        entry: GuestAddress,
        protocol: BootProtocol,
    ) -> Result<(), VcpuError> {
        let cfg = |what: String| VcpuError::Configure { id: self.id, what };
        arch::setup_regs(&self.fd, entry.0, protocol).map_err(|e| cfg(e.to_string()))?;
        arch::setup_sregs(mem, &self.fd, protocol).map_err(|e| cfg(e.to_string()))
    }

    /// Recreates vCPU `id` of a snapshot: CPUID as at boot, then every
    /// register, the local APIC and pending events as they were saved.
    pub fn restore(
        vm: &VmFd,
        id: u8,
        supported_cpuid: &CpuId,
        state: &VcpuState,
    ) -> Result<Self, VcpuError> {
        let missing = arch::missing_features(&state.cpuid, supported_cpuid.as_slice());
        if !missing.is_empty() {
            return Err(VcpuError::MissingCpuFeatures(missing.join(", ")));
        }
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|err| VcpuError::Create { id, err })?;
        let cfg = |what: &str, e: kvm_ioctls::Error| VcpuError::Configure {
            id,
            what: format!("{what}: {e}"),
        };
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuError::Configure {
            id,
            what: "the saved CPUID table is too long".into(),
        })?;
        fd.set_cpuid2(&cpuid)
            .map_err(|e| cfg("KVM_SET_CPUID2", e))?;
        fd.set_mp_state(state.mp_state)
            .map_err(|e| cfg("KVM_SET_MP_STATE", e))?;
        fd.set_regs(&state.regs)
            .map_err(|e| cfg("KVM_SET_REGS", e))?;
        fd.set_sregs(&state.sregs)
            .map_err(|e| cfg("KVM_SET_SREGS", e))?;
        // SAFETY: the xsave area was produced by KVM_GET_XSAVE on this
        // host for a vCPU with the same CPUID.
        unsafe { fd.set_xsave(&state.xsave) }.map_err(|e| cfg("KVM_SET_XSAVE", e))?;
        fd.set_xcrs(&state.xcrs)
            .map_err(|e| cfg("KVM_SET_XCRS", e))?;
        fd.set_debug_regs(&state.debugregs)
            .map_err(|e| cfg("KVM_SET_DEBUGREGS", e))?;
        fd.set_lapic(&state.lapic)
            .map_err(|e| cfg("KVM_SET_LAPIC", e))?;
        let msrs = Msrs::from_entries(&state.msrs).map_err(|e| VcpuError::Configure {
            id,
            what: format!("MSR list: {e:?}"),
        })?;
        let n = fd.set_msrs(&msrs).map_err(|e| cfg("KVM_SET_MSRS", e))?;
        if n != state.msrs.len() {
            tracing::warn!(
                vcpu = id,
                "restored {n} of {} MSRs (MSR {:#x} refused)",
                state.msrs.len(),
                state.msrs.get(n).map_or(0, |m| m.index)
            );
        }
        fd.set_vcpu_events(&state.events)
            .map_err(|e| cfg("KVM_SET_VCPU_EVENTS", e))?;
        Ok(Self { id, fd })
    }

    /// Everything KVM holds about this vCPU. Only valid between two
    /// KVM_RUN calls with no I/O pending (see [`VcpuControl`]).
    fn save_state(&self, msr_list: &[u32]) -> Result<VcpuState, VcpuStateError> {
        let id = self.id;
        let e = |what| move |err| VcpuStateError::Kvm { id, what, err };
        let fd = &self.fd;
        Ok(VcpuState {
            cpuid: fd
                .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .map_err(e("KVM_GET_CPUID2"))?
                .as_slice()
                .to_vec(),
            regs: fd.get_regs().map_err(e("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(e("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(e("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(e("KVM_GET_XCRS"))?,
            debugregs: fd.get_debug_regs().map_err(e("KVM_GET_DEBUGREGS"))?,
            lapic: fd.get_lapic().map_err(e("KVM_GET_LAPIC"))?,
            mp_state: fd.get_mp_state().map_err(e("KVM_GET_MP_STATE"))?,
            events: fd.get_vcpu_events().map_err(e("KVM_GET_VCPU_EVENTS"))?,
            msrs: read_msrs(id, fd, msr_list)?,
        })
    }

    pub fn start(
        self,
        parked: Option<crate::seccomp::Parked>,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        control: Arc<VcpuControl>,
        sink: Arc<VmExitSink>,
        go: Arc<Gate>,
    ) -> Result<JoinHandle<Option<()>>, VcpuError> {
        // The thread's own filter is in place before it returns (a parked
        // thread has had it since it started); `go` holds it back from its
        // first KVM_RUN until every other thread of the VMM has its filter
        // too.
        let name = format!("vcpu{}", self.id);
        let body = move || {
            go.wait();
            self.run(&pio, &mmio, &control, &sink)
        };
        match parked {
            Some(p) => p.run(body),
            None => crate::seccomp::spawn(name, ThreadKind::Vcpu, body),
        }
        .map_err(VcpuError::Spawn)
    }

    fn run(mut self, pio: &Bus, mmio: &Bus, control: &VcpuControl, sink: &VmExitSink) {
        let id = self.id;
        while !control.stop.load(Ordering::Acquire) {
            if control.paused.load(Ordering::Acquire) {
                // Complete any I/O the last exit left pending (KVM finishes
                // it on entry) without running guest code, so the state
                // saved while parked is whole.
                self.fd.set_kvm_immediate_exit(1);
                let _ = self.fd.run();
                self.fd.set_kvm_immediate_exit(0);
                // A brief hold (migration's throttle) needs no state.
                let state = if control.keep_state.load(Ordering::Acquire) {
                    self.save_state(&control.msr_list)
                } else {
                    Err(VcpuStateError::NotStopped(id))
                };
                control.park(&self.fd, id, state);
                continue;
            }
            let exit = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    crate::metrics::METRICS.vcpu.exit_io_in.inc();
                    pio.read(u64::from(port), data);
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    crate::metrics::METRICS.vcpu.exit_io_out.inc();
                    pio.write(u64::from(port), data);
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    crate::metrics::METRICS.vcpu.exit_mmio_read.inc();
                    mmio.read(addr, data);
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    crate::metrics::METRICS.vcpu.exit_mmio_write.inc();
                    mmio.write(addr, data);
                    continue;
                }
                Ok(VcpuExit::Shutdown) => VmExit::TripleFault {
                    vcpu: id,
                    state: fault_state(&self.fd),
                },
                Ok(VcpuExit::Hlt) => VmExit::Poweroff,
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::Poweroff,
                    KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                    KVM_SYSTEM_EVENT_CRASH => VmExit::Panic,
                    other => VmExit::VcpuFailed {
                        vcpu: id,
                        reason: format!("unknown KVM system event {other}"),
                    },
                },
                Ok(VcpuExit::FailEntry(reason, _)) => VmExit::VcpuFailed {
                    vcpu: id,
                    reason: format!("KVM could not enter the guest (hardware reason {reason:#x})"),
                },
                Ok(VcpuExit::InternalError) => {
                    let sub = self.fd.get_kvm_run().__bindgen_anon_1;
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so
                    // the `internal` member of the union is the one KVM set.
                    let suberror = unsafe { sub.internal.suberror };
                    VmExit::VcpuFailed {
                        vcpu: id,
                        reason: format!(
                            "KVM internal error {suberror} ({})",
                            match suberror {
                                1 => "emulation failure",
                                2 => "simultaneous exceptions",
                                3 => "delivery event failed",
                                _ => "unknown",
                            }
                        ),
                    }
                }
                Ok(other) => VmExit::VcpuFailed {
                    vcpu: id,
                    reason: format!("unexpected KVM exit {other:?}"),
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => VmExit::VcpuFailed {
                    vcpu: id,
                    reason: format!("KVM_RUN failed: {e}"),
                },
            };
            tracing::debug!(vcpu = id, ?exit, "vCPU stopped");
            sink.signal(exit);
            break;
        }
    }
}

/// Stops, pauses and resumes the vCPU threads. A thread notices a request
/// between two KVM_RUN calls; the kick signal ends a KVM_RUN early.
#[derive(Default)]
pub struct VcpuControl {
    stop: AtomicBool,
    paused: AtomicBool,
    /// How many threads are parked (paused).
    parked: Mutex<usize>,
    cv: Condvar,
    /// MSRs saved with each vCPU's state.
    msr_list: Vec<u32>,
    /// Each vCPU's state, saved when it last parked.
    states: Mutex<Vec<Option<Result<VcpuState, VcpuStateError>>>>,
    /// Parking saves the state (a pause), or not (a brief hold).
    keep_state: AtomicBool,
}

impl VcpuControl {
    /// Controls `count` vCPUs, saving `msr_list` with their state.
    pub fn new(count: usize, msr_list: Vec<u32>) -> Self {
        Self {
            msr_list,
            states: Mutex::new(vec![None; count]),
            keep_state: AtomicBool::new(true),
            ..Self::default()
        }
    }

    /// The state every vCPU saved when it parked (the VM must be paused).
    pub fn saved_states(&self) -> Result<Vec<VcpuState>, VcpuStateError> {
        let states = lock(&self.states);
        states
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Some(Ok(s)) => Ok(s.clone()),
                Some(Err(e)) => Err(e.clone()),
                None => Err(VcpuStateError::NotStopped(i as u8)),
            })
            .collect()
    }

    /// Called by a vCPU thread: records its state, waits while the VM is
    /// paused.
    fn park(&self, fd: &VcpuFd, id: u8, state: Result<VcpuState, VcpuStateError>) {
        if let Some(slot) = lock(&self.states).get_mut(usize::from(id)) {
            *slot = Some(state);
        }
        let mut n = lock(&self.parked);
        *n += 1;
        self.cv.notify_all();
        // Tells the guest's kvmclock it was stopped, so its watchdogs do
        // not count the pause as a soft lockup (as Firecracker does).
        let _ = fd.kvmclock_ctrl();
        while self.paused.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire) {
            n = wait(&self.cv, n);
        }
        *n -= 1;
        drop(n);
        if let Some(slot) = lock(&self.states).get_mut(usize::from(id)) {
            *slot = None;
        }
    }

    /// Asks every thread to stop (they exit their loop).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _n = lock(&self.parked);
        self.cv.notify_all();
    }

    /// Pauses: returns once all `count` threads, kicked by `kick`, are
    /// parked with their state saved; false if they did not all park
    /// within a second.
    pub fn pause(&self, count: usize, kick: impl Fn()) -> bool {
        self.keep_state.store(true, Ordering::Release);
        self.park_all(count, kick)
    }

    /// Like [`VcpuControl::pause`], without saving the vCPUs' state: a
    /// brief hold that only keeps the guest from running.
    pub fn hold(&self, count: usize, kick: impl Fn()) -> bool {
        self.keep_state.store(false, Ordering::Release);
        self.park_all(count, kick)
    }

    fn park_all(&self, count: usize, kick: impl Fn()) -> bool {
        self.paused.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut n = lock(&self.parked);
        while *n < count {
            if Instant::now() > deadline {
                return false;
            }
            drop(n);
            kick();
            n = lock(&self.parked);
            n = wait_timeout(&self.cv, n, Duration::from_millis(1));
        }
        true
    }

    /// Marks the VM paused before its threads start (a restored snapshot
    /// that is not resumed yet).
    pub fn set_paused(&self) {
        self.paused.store(true, Ordering::Release);
    }

    /// Resumes paused threads.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        let _n = lock(&self.parked);
        self.cv.notify_all();
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }
}

/// One vCPU as a snapshot holds it: every register KVM has, the local
/// APIC, pending events and the MSRs the host's KVM lists.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    /// The CPUID the guest sees (set again as it was, on whatever host).
    pub(crate) cpuid: Vec<kvm_cpuid_entry2>,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debugregs: kvm_debugregs,
    lapic: kvm_lapic_state,
    mp_state: kvm_mp_state,
    events: kvm_vcpu_events,
    msrs: Vec<kvm_msr_entry>,
}

/// The registers that say where a vCPU died: enough to tell a fault in
/// the real-mode trampoline from one in the kernel proper.
fn fault_state(fd: &VcpuFd) -> String {
    match (fd.get_regs(), fd.get_sregs()) {
        (Ok(r), Ok(s)) => describe_fault(&r, &s),
        (Err(e), _) | (_, Err(e)) => format!("registers unreadable: {e}"),
    }
}

fn describe_fault(r: &kvm_regs, s: &kvm_sregs) -> String {
    let regs = format!(
        "rip={:#x} rsp={:#x} cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
        r.rip, r.rsp, s.cs.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
    );
    // On AMD, KVM resets the vCPU when it reports the shutdown (the VMCB is
    // undefined after one): the registers are then those of a CPU at
    // reset, not where the guest was.
    if r.rip == 0xfff0 && s.cs.selector == 0xf000 && s.cr0 & 1 == 0 {
        format!("{regs}: the reset state; KVM on AMD does not keep the faulting registers")
    } else {
        regs
    }
}

/// Reads the MSRs of `list` that this vCPU has (KVM stops at the first one
/// it cannot read: that one is skipped and the rest read on).
fn read_msrs(id: u8, fd: &VcpuFd, list: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(list.len());
    let mut i = 0;
    while i < list.len() {
        let chunk = &list[i..(i + 255).min(list.len())];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::MsrList(id))?;
        let n = fd.get_msrs(&mut msrs).map_err(|err| VcpuStateError::Kvm {
            id,
            what: "KVM_GET_MSRS",
            err,
        })?;
        out.extend_from_slice(&msrs.as_slice()[..n.min(chunk.len())]);
        // Past the chunk, or past the MSR that stopped KVM.
        i += if n >= chunk.len() { chunk.len() } else { n + 1 };
    }
    Ok(out)
}

impl Clone for VcpuState {
    fn clone(&self) -> Self {
        Self {
            cpuid: self.cpuid.clone(),
            regs: self.regs,
            sregs: self.sregs,
            // kvm_xsave is plain data but not Clone (it ends in a flexible
            // array KVM_GET_XSAVE does not use).
            xsave: kvm_xsave {
                region: self.xsave.region,
                ..Default::default()
            },
            xcrs: self.xcrs,
            debugregs: self.debugregs,
            lapic: self.lapic,
            mp_state: self.mp_state,
            events: self.events,
            msrs: self.msrs.clone(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A vCPU state with every part filled, for the snapshot format's tests.
    pub(crate) fn sample_state() -> VcpuState {
        VcpuState {
            cpuid: vec![
                kvm_cpuid_entry2 {
                    function: 0x8000_0001,
                    eax: 0x1234_5678,
                    ebx: 0xdead_beef,
                    ..Default::default()
                };
                3
            ],
            regs: kvm_regs {
                rip: 0xffff_ffff_8100_0000,
                ..Default::default()
            },
            sregs: kvm_sregs::default(),
            xsave: kvm_xsave {
                region: [0x1234_5678; 1024],
                ..Default::default()
            },
            xcrs: kvm_xcrs::default(),
            debugregs: kvm_debugregs::default(),
            lapic: kvm_lapic_state { regs: [17; 1024] },
            mp_state: kvm_mp_state::default(),
            events: kvm_vcpu_events::default(),
            msrs: vec![
                kvm_msr_entry {
                    index: 0xc000_0080,
                    data: 0xffff_ffff_8100_0000,
                    ..Default::default()
                };
                2
            ],
        }
    }

    #[test]
    fn a_fault_in_the_reset_state_says_the_registers_are_lost() {
        let mut r = kvm_regs {
            rip: 0xfff0,
            ..Default::default()
        };
        let mut s = kvm_sregs::default();
        s.cs.selector = 0xf000;
        s.cr0 = 0x10;
        assert!(describe_fault(&r, &s).ends_with("KVM on AMD does not keep the faulting registers"));
        r.rip = 0xffff_ffff_8100_0000;
        s.cs.selector = 0x10;
        s.cr0 = 0x8005_0033;
        let d = describe_fault(&r, &s);
        assert!(
            d.starts_with("rip=0xffffffff81000000 ") && d.ends_with("efer=0x0"),
            "{d}"
        );
    }
}

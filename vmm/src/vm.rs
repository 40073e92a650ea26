//! One running VM: its KVM handles, memory, devices and vCPU threads, and
//! what can be done to it while it runs (pause, resume, Ctrl+Alt+Del, the
//! balloon, rate limiters, saving its state). It is built by
//! [`crate::builder`] and driven by [`crate::controller`]; it knows nothing
//! of where requests come from.

use std::os::unix::thread::JoinHandleExt;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use devices::sync::lock;
use devices::virtio::balloon::BalloonHandle;
use devices::virtio::persist::{DeviceHandle, SharedLimiter};
use devices::ExitReason;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::config::VmConfig;
use crate::device_manager::DeviceManager;
use crate::snapshot::{self, MachineState, MicrovmState, SnapshotError, VmState};
use crate::vcpu::{self, VcpuControl, VcpuStateError, VmExit, VmExitSink};

/// Everything that can stop a VM from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot open {path}: {err}")]
    OpenKvm {
        path: String,
        err: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("KVM: {what}: {err}")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error(transparent)]
    Load(#[from] crate::loader::LoadError),
    #[error("machine setup: {0}")]
    Arch(#[from] crate::arch::Error),
    #[error(transparent)]
    Devices(#[from] crate::device_manager::DeviceError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Vcpu(#[from] crate::vcpu::VcpuError),
    #[error(transparent)]
    VcpuState(#[from] VcpuStateError),
    #[error("event loop: {0}")]
    EventLoop(std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("seccomp: cannot start the device spawner: {0}")]
    Spawner(std::io::Error),
    #[error("the vCPUs did not stop within a second")]
    PauseTimeout,
    #[error("the microVM must be paused to create a snapshot")]
    NotPaused,
    #[error("diff snapshots need dirty page tracking: set track_dirty_pages in machine-config")]
    DiffWithoutTracking,
    #[error("cannot send Ctrl+Alt+Del: {0}")]
    CtrlAltDel(&'static str),
}

/// A running VM.
pub struct Vm {
    // Declared first: dropped (threads stopped and joined) before the
    // memory and the VM fd below go away.
    pub(crate) threads: VcpuThreads,
    pub(crate) config: VmConfig,
    pub(crate) devices: DeviceManager,
    pub(crate) sink: Arc<VmExitSink>,
    pub(crate) mem: devices::GuestMemoryMmap,
    /// Guest RAM is mapped from a snapshot's memory file.
    pub(crate) mem_from_file: bool,
    /// The CPUID vCPU 0 sees (what a migration destination must offer).
    pub(crate) guest_cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    /// A restored guest's working set: to copy in before it starts, or to
    /// record ([`snapshot::working_set`]).
    pub(crate) working_set: snapshot::working_set::Plan,
    pub(crate) vm: kvm_ioctls::VmFd,
}

impl Vm {
    /// Once the request that built the VM is answered: a restored VM's
    /// vCPU threads, held ready (filters in place) at their first
    /// KVM_RUN, are let go, and every restored device looks at its queues
    /// once (nothing the guest does meanwhile is lost: a kick goes to the
    /// device as always). The answer goes out as the guest starts, as
    /// Firecracker's does. Does nothing the second time.
    pub fn let_go(&mut self) {
        if let snapshot::working_set::Plan::Prefault(ws) = &self.working_set {
            let t = std::time::Instant::now();
            match ws.prefault(&self.mem) {
                Ok(pages) => tracing::info!(
                    pages,
                    us = t.elapsed().as_micros() as u64,
                    "working set copied in"
                ),
                Err(e) => tracing::warn!("working set: {e}"),
            }
            self.working_set = snapshot::working_set::Plan::Nothing;
        }
        // Only a restored VM's threads are held.
        if self.threads.let_go() {
            self.devices.first_look();
        }
    }

    /// Whether this VM records its working set ([`Vm::record_working_set`]).
    pub fn records_working_set(&self) -> bool {
        self.working_set.records()
    }

    /// Writes the record of the pages the guest wrote since it was
    /// restored, and stops KVM's logging of them (unless the user has it).
    /// Does nothing the second time.
    pub fn record_working_set(&mut self) {
        let snapshot::working_set::Plan::Record { path, stamp } =
            std::mem::take(&mut self.working_set)
        else {
            return;
        };
        use snapshot::working_set::{save, WorkingSet};
        let r = self
            .dirty_log()
            .map_err(|e| e.to_string())
            .and_then(|logs| {
                let ws = WorkingSet::from_dirty_logs(&self.mem, &logs);
                save(&ws, &path, &stamp)
                    .map(|()| ws.pages())
                    .map_err(|e| e.to_string())
            });
        match r {
            Ok(pages) => tracing::info!(pages, "working set recorded in {}", path.display()),
            Err(e) => tracing::debug!("no working-set record at {}: {e}", path.display()),
        }
        if !self.config.machine_config.track_dirty_pages {
            if let Err(e) = self.set_dirty_tracking(false) {
                tracing::warn!("working set: cannot stop dirty page tracking: {e}");
            }
        }
    }

    /// The configuration this VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The rate limiter of drive `id`.
    pub fn drive_limiter(&self, id: &str) -> Option<Option<&SharedLimiter>> {
        self.devices.handles.iter().find_map(|h| match h {
            DeviceHandle::Block { id: d, limiter } if d == id => Some(limiter.as_ref()),
            _ => None,
        })
    }

    /// The receive and transmit rate limiters of network interface `id`.
    pub fn net_limiters(&self, id: &str) -> Option<&[Option<SharedLimiter>; 2]> {
        self.devices.handles.iter().find_map(|h| match h {
            DeviceHandle::Net { id: n, limiters } if n == id => Some(limiters),
            _ => None,
        })
    }

    /// The balloon, if the VM has one.
    pub fn balloon(&self) -> Option<&BalloonHandle> {
        self.devices.handles.iter().find_map(|h| match h {
            DeviceHandle::Balloon(b) => Some(b),
            _ => None,
        })
    }

    /// Presses Ctrl+Alt+Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&self) -> Result<(), VmmError> {
        lock(&self.devices.i8042)
            .send_ctrl_alt_del()
            .map_err(VmmError::CtrlAltDel)
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.threads.control.is_paused()
    }

    /// Stops every vCPU (between two instructions, as far as the guest can
    /// tell) until [`Vm::resume`].
    pub fn pause(&mut self) -> Result<(), VmmError> {
        crate::metrics::METRICS.vmm.pause_count.inc();
        if self.threads.pause() {
            Ok(())
        } else {
            self.threads.control.resume();
            Err(VmmError::PauseTimeout)
        }
    }

    /// Keeps the vCPUs from running until [`Vm::resume`], without saving
    /// their state (live migration's auto-converge).
    pub fn hold(&mut self) -> Result<(), VmmError> {
        let live = self
            .threads
            .handles
            .iter()
            .filter(|h| !h.is_finished())
            .count();
        if self.threads.control.hold(live, || self.threads.kick_all()) {
            Ok(())
        } else {
            self.threads.control.resume();
            Err(VmmError::PauseTimeout)
        }
    }

    /// Lets held vCPUs run again.
    pub fn resume_held(&mut self) {
        self.threads.control.resume();
    }

    /// Resumes paused vCPUs.
    pub fn resume(&mut self) {
        crate::metrics::METRICS.vmm.resume_count.inc();
        self.threads.control.resume();
    }

    /// Readable when the guest asks to end (power off, reset, panic).
    pub fn device_exit_event(&self) -> &EventFd {
        self.devices.exit.eventfd()
    }

    /// Readable when a vCPU stopped (a fault, or a KVM exit that ends it).
    pub fn vcpu_exit_event(&self) -> &EventFd {
        self.sink.eventfd()
    }

    /// How the guest ended, once it has.
    pub fn exit_reason(&self) -> Option<VmExit> {
        let _ = self.devices.exit.eventfd().read();
        let _ = self.sink.eventfd().read();
        if let Some(r) = self.devices.exit.reason() {
            return Some(match r {
                ExitReason::Poweroff => VmExit::Poweroff,
                ExitReason::Reset => VmExit::Reset,
                ExitReason::Panic => VmExit::Panic,
            });
        }
        self.sink.reason()
    }

    /// Feeds console input to the guest's UART; returns how many bytes it
    /// took (its FIFO may be full).
    pub fn console_input(&self, bytes: &[u8]) -> usize {
        lock(&self.devices.serial).enqueue_input(bytes)
    }

    /// Stops and joins the vCPU threads.
    pub fn stop(&mut self) {
        self.threads.stop_all();
    }

    /// Writes a snapshot: the machine state to `snapshot_path`, guest
    /// memory to `mem_path` (all of it, or with `diff` only the pages
    /// written since the last snapshot). The VM must be paused; its devices
    /// are quiesced meanwhile and resume afterwards.
    pub fn snapshot(
        &mut self,
        snapshot_path: &Path,
        mem_path: &Path,
        diff: bool,
    ) -> Result<(), VmmError> {
        if !self.is_paused() {
            return Err(VmmError::NotPaused);
        }
        if diff && !self.config.machine_config.track_dirty_pages {
            return Err(VmmError::DiffWithoutTracking);
        }
        crate::metrics::METRICS.vmm.snapshot_create_count.inc();
        self.devices.quiesce();
        let r = self.write_snapshot(snapshot_path, mem_path, diff);
        self.devices.resume();
        r
    }

    fn write_snapshot(
        &self,
        snapshot_path: &Path,
        mem_path: &Path,
        diff: bool,
    ) -> Result<(), VmmError> {
        let state = self.save_state()?;
        // Pages written since the last snapshot: by the guest (KVM's log,
        // cleared as it is read) and by the devices (vm-memory's bitmap).
        let dirty = if self.config.machine_config.track_dirty_pages {
            Some(self.dirty_log()?)
        } else {
            None
        };
        let written = match (&dirty, diff) {
            (Some(logs), true) => snapshot::memory::write_dirty_memory(&self.mem, mem_path, logs),
            _ => snapshot::memory::write_memory(&self.mem, mem_path, !self.mem_from_file),
        };
        written.map_err(|e| SnapshotError::Memory {
            path: mem_path.display().to_string(),
            err: e.to_string(),
        })?;
        if dirty.is_some() {
            self.reset_device_dirty_bitmap();
        }
        Ok(snapshot::write(snapshot_path, &state)?)
    }

    /// Everything but memory, of a paused VM with its devices quiesced.
    pub fn save_state(&self) -> Result<MicrovmState, VmmError> {
        let e = |what| move |err| VmmError::Kvm { what, err };
        let mut irqchips = Vec::new();
        for chip_id in 0..3 {
            let mut chip = kvm_bindings::kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.vm
                .get_irqchip(&mut chip)
                .map_err(e("KVM_GET_IRQCHIP"))?;
            irqchips.push(chip);
        }
        Ok(MicrovmState {
            machine: self.machine_state(),
            memory: snapshot::memory::regions_of(&self.mem),
            vcpus: self.threads.control.saved_states()?,
            vm: VmState {
                irqchips,
                pit: self.vm.get_pit2().map_err(e("KVM_GET_PIT2"))?,
                clock: self.vm.get_clock().map_err(e("KVM_GET_CLOCK"))?,
            },
            serial: self.devices.serial_state(),
            devices: self.devices.transport_states(),
        })
    }

    /// The machine this VM is, as its saved state names it.
    pub fn machine_state(&self) -> MachineState {
        let c = &self.config;
        MachineState {
            vcpu_count: c.machine_config.vcpu_count,
            mem_size_mib: c.machine_config.mem_size_mib,
            track_dirty_pages: c.machine_config.track_dirty_pages,
            kernel_image_path: c.boot_source.kernel_image_path.clone(),
            initrd_path: c.boot_source.initrd_path.clone(),
            boot_args: c.boot_source.boot_args.clone(),
            root_drive: c
                .drives
                .iter()
                .find(|d| d.is_root_device)
                .map(|d| d.drive_id.clone()),
        }
    }

    /// Turns KVM's logging of the pages the guest writes on or off (a
    /// migration needs it whether or not the VM was configured with it).
    pub fn set_dirty_tracking(&self, on: bool) -> Result<(), VmmError> {
        Ok(crate::memory::register(&self.vm, &self.mem, on)?)
    }

    /// Tells the network the guest's MAC addresses are here now (after a
    /// migration): switches learn the new port at once.
    pub fn announce(&self) {
        self.devices.announce();
    }

    /// Turns KVM's manual dirty-log protection on (with the log initially
    /// all set) or off; whether it is on. With it on, turning logging on
    /// write-protects nothing, reading the log clears nothing, and
    /// [`Vm::clear_dirty_log`] write-protects the pages it is given (as QEMU
    /// migrates). Only while no memory slot logs: the mode is the VM's.
    pub fn set_manual_dirty_protect(&self, on: bool) -> bool {
        let cap = kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
        let flags = u64::from(
            kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
                | kvm_bindings::KVM_DIRTY_LOG_INITIALLY_SET,
        );
        let offered = self.vm.check_extension_raw(u64::from(cap)) as u64;
        if on && offered & flags != flags {
            return false;
        }
        let mut c = kvm_bindings::kvm_enable_cap {
            cap,
            ..Default::default()
        };
        c.args[0] = if on { flags } else { 0 };
        match self.vm.enable_cap(&c) {
            Ok(()) => on,
            Err(e) => {
                tracing::debug!("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: {e}");
                false
            }
        }
    }

    /// With manual dirty-log protection: clears the dirty bits of the
    /// `pages` pages from `gpa` (write-protecting them, so that the next
    /// write marks them again). A range outside one memory slot is left.
    pub fn clear_dirty_log(&self, gpa: GuestAddress, pages: u64) -> Result<(), VmmError> {
        vmm_sys_util::ioctl_iowr_nr!(
            KVM_CLEAR_DIRTY_LOG,
            kvm_bindings::KVMIO,
            0xc0,
            kvm_bindings::kvm_clear_dirty_log
        );
        let Some((slot, r)) = self
            .mem
            .iter()
            .enumerate()
            .find(|(_, r)| r.start_addr() <= gpa && gpa.0 - r.start_addr().0 < r.len())
        else {
            return Ok(());
        };
        let slot_pages = r.len() / 4096;
        let first = (gpa.0 - r.start_addr().0) / 4096;
        if pages == 0 || first.saturating_add(pages) > slot_pages {
            return Ok(());
        }
        // KVM takes 64-page aligned windows (the last may end the slot).
        let start = first & !63;
        let end = (first + pages).next_multiple_of(64).min(slot_pages);
        let mut bitmap = vec![0u64; (end - start).div_ceil(64) as usize];
        for p in first - start..first + pages - start {
            bitmap[(p / 64) as usize] |= 1 << (p % 64);
        }
        let mut c = kvm_bindings::kvm_clear_dirty_log {
            slot: slot as u32,
            num_pages: (end - start) as u32,
            first_page: start,
            ..Default::default()
        };
        c.__bindgen_anon_1.dirty_bitmap = bitmap.as_mut_ptr().cast();
        // SAFETY: the VM fd is live and `c` points at a bitmap of
        // `num_pages` bits that outlives the call; KVM only reads it.
        let rc =
            unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.vm, KVM_CLEAR_DIRTY_LOG(), &c) };
        if rc < 0 {
            return Err(VmmError::Kvm {
                what: "KVM_CLEAR_DIRTY_LOG",
                err: kvm_ioctls::Error::last(),
            });
        }
        Ok(())
    }

    /// KVM's dirty page log of every memory slot (cleared as it is read,
    /// unless manual protection is on).
    pub fn dirty_log(&self) -> Result<Vec<Vec<u64>>, VmmError> {
        let mut logs = Vec::new();
        for (slot, r) in self.mem.iter().enumerate() {
            let log = self
                .vm
                .get_dirty_log(slot as u32, r.len() as usize)
                .map_err(|err| VmmError::Kvm {
                    what: "KVM_GET_DIRTY_LOG",
                    err,
                })?;
            logs.push(log);
        }
        Ok(logs)
    }

    /// Clears the record of pages the devices wrote.
    pub fn reset_device_dirty_bitmap(&self) {
        for r in self.mem.iter() {
            let region: &vm_memory::MmapRegion<vm_memory::bitmap::AtomicBitmap> = r;
            region.bitmap().reset();
        }
    }
}

/// The vCPU threads, stopped and joined on drop so no exit path leaks them.
pub(crate) struct VcpuThreads {
    pub(crate) handles: Vec<JoinHandle<Option<()>>>,
    pub(crate) control: Arc<VcpuControl>,
    /// The gate holding the threads back from their first KVM_RUN, while
    /// it is closed ([`Vm::let_go`]).
    pub(crate) held: Option<Arc<vcpu::Gate>>,
}

impl VcpuThreads {
    fn kick_all(&self) {
        for h in &self.handles {
            if !h.is_finished() {
                // SAFETY: the pthread handle is valid until joined, and the
                // kick signal has a handler installed.
                unsafe { libc::pthread_kill(h.as_pthread_t(), vcpu::KICK_SIGNAL()) };
            }
        }
    }

    fn pause(&self) -> bool {
        let live = self.handles.iter().filter(|h| !h.is_finished()).count();
        self.control.pause(live, || self.kick_all())
    }

    /// Opens the gate, if the threads are held at it; whether they were.
    fn let_go(&mut self) -> bool {
        self.held.take().map(|gate| gate.open()).is_some()
    }

    pub(crate) fn stop_all(&mut self) {
        self.control.request_stop();
        // Held threads see the stop flag once let go.
        let _ = self.let_go();
        for h in self.handles.drain(..) {
            // A kick can land just before the thread enters KVM_RUN; repeat
            // it until the thread is gone.
            while !h.is_finished() {
                // SAFETY: the pthread handle is valid until joined below, and
                // the kick signal has a handler installed.
                unsafe { libc::pthread_kill(h.as_pthread_t(), vcpu::KICK_SIGNAL()) };
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = h.join();
        }
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        self.stop_all();
    }
}

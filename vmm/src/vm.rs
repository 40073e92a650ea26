//! One VM from start to end: build it from a [`VmConfig`], run it, tear it
//! down.
//!
//! The calling thread becomes the VMM's event loop: it waits (epoll) for a
//! guest-requested exit, a vCPU failure, or console input. vCPUs run on
//! their own threads. Every exit path stops and joins the vCPU threads
//! before returning, so no thread outlives [`run`].

use crate::seccomp::ThreadKind;
use devices::sync::lock;
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use devices::rate_limiter::{RateLimiter, RateLimiterConfig};
use devices::virtio::balloon::{Balloon, BalloonHandle};
use devices::virtio::block::{Block, Disk};
use devices::virtio::net::{tap::Tap, Net};
use devices::virtio::vsock::Vsock;
use devices::ExitReason;
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::api::ApiServer;
use crate::arch::{self, AcpiConfig};
use crate::config::VmConfig;
use crate::device_manager::{ConsoleOut, DeviceError, DeviceManager};
use crate::loader::{self, LoadError};
use crate::memory::{self, MemoryError};
use crate::probe::{self, ProbeError};
use crate::snapshot::{self, Snapshot, SnapshotError};
use crate::vcpu::{self, Gate, Vcpu, VcpuControl, VcpuError, VmExit, VmExitSink};

/// Everything that can stop a VM from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot open {path}: {err}")]
    OpenKvm {
        path: String,
        err: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("KVM: {what}: {err}")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("machine setup: {0}")]
    Arch(String),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Disk(devices::virtio::block::BlockError),
    #[error(transparent)]
    Net(devices::virtio::net::tap::TapError),
    #[error(transparent)]
    Vsock(devices::virtio::vsock::VsockError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("event loop: {0}")]
    EventLoop(std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("seccomp: cannot start the device spawner: {0}")]
    Spawner(std::io::Error),
}

/// How the VMM talks to the outside while the guest runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Forward the VMM's stdin to the guest's serial console.
    pub console_input: bool,
    /// Skip the exception probe (the host is known to be good).
    pub skip_probe: bool,
}

// Just below the 4 GiB boundary, clear of the MMIO gap's devices, as
// Firecracker places it.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

const TOKEN_DEVICE_EXIT: u64 = 1;
const TOKEN_VCPU_EXIT: u64 = 2;
const TOKEN_STDIN: u64 = 3;
const TOKEN_API: u64 = 4;
const TOKEN_SIGTERM: u64 = 5;
const TOKEN_METRICS: u64 = 6;

/// Opens the KVM device: `/dev/kvm`, or `$CONDO_KVM_DEVICE` when set (tests
/// use it to simulate a host without KVM).
fn open_kvm() -> Result<Kvm, VmmError> {
    let path = std::env::var_os("CONDO_KVM_DEVICE").unwrap_or_else(|| "/dev/kvm".into());
    let cpath = std::ffi::CString::new(path.as_encoded_bytes()).map_err(|_| VmmError::OpenKvm {
        path: path.to_string_lossy().into_owned(),
        err: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    Kvm::new_with_path(&cpath).map_err(|err| VmmError::OpenKvm {
        path: path.to_string_lossy().into_owned(),
        err,
    })
}

/// Opens /dev/kvm and checks it can run a standard guest.
pub fn check_kvm() -> Result<(), VmmError> {
    let kvm = open_kvm()?;
    probe::check(&kvm)?;
    Ok(())
}

/// Boots `config` and runs it until the guest ends it or a vCPU fails.
pub fn run(config: &VmConfig, opts: RunOptions) -> Result<VmExit, VmmError> {
    let mut vm = Vm::boot(config, opts)?;
    vm.event_loop(opts, None)
}

/// A running VM: its KVM handles, memory, devices and vCPU threads.
pub struct Vm {
    // Declared first: dropped (threads stopped and joined) before the
    // memory and the VM fd below go away.
    threads: VcpuThreads,
    config: VmConfig,
    devices: DeviceManager,
    sink: Arc<VmExitSink>,
    balloon: Option<BalloonHandle>,
    limiters: Limiters,
    mem: devices::GuestMemoryMmap,
    /// Guest RAM is mapped from a snapshot's memory file.
    mem_from_file: bool,
    vm: kvm_ioctls::VmFd,
}

/// A device's rate limiter, shared with the running device.
pub type SharedLimiter = Arc<std::sync::Mutex<RateLimiter>>;

/// Every device's rate limiters, by device id, for live changes.
#[derive(Default)]
struct Limiters {
    drives: Vec<(String, SharedLimiter)>,
    /// Receive and transmit.
    nets: Vec<(String, [Option<SharedLimiter>; 2])>,
}

/// A rate limiter (unlimited when `c` sets no bucket: it can be set live).
fn limiter(c: &RateLimiterConfig) -> Result<RateLimiter, VmmError> {
    RateLimiter::from_config(c).map_err(VmmError::EventLoop)
}

impl Vm {
    /// The rate limiter of drive `id`.
    pub fn drive_limiter(&self, id: &str) -> Option<&SharedLimiter> {
        self.limiters
            .drives
            .iter()
            .find_map(|(d, l)| (d == id).then_some(l))
    }

    /// The receive and transmit rate limiters of network interface `id`.
    pub fn net_limiters(&self, id: &str) -> Option<&[Option<SharedLimiter>; 2]> {
        self.limiters
            .nets
            .iter()
            .find_map(|(n, l)| (n == id).then_some(l))
    }

    /// The configuration this VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Presses Ctrl+Alt+Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&self) -> Result<(), String> {
        lock(&self.devices.i8042)
            .send_ctrl_alt_del()
            .map_err(str::to_owned)
    }

    /// The balloon, if the VM has one.
    pub fn balloon(&self) -> Option<&BalloonHandle> {
        self.balloon.as_ref()
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.threads.control.is_paused()
    }

    /// Stops every vCPU (between two instructions, as far as the guest can
    /// tell) until [`Vm::resume`].
    pub fn pause(&mut self) -> Result<(), String> {
        crate::metrics::METRICS.vmm.pause_count.inc();
        if self.threads.pause() {
            Ok(())
        } else {
            self.threads.control.resume();
            Err("the vCPUs did not stop within a second".into())
        }
    }

    /// Resumes paused vCPUs.
    pub fn resume(&mut self) {
        crate::metrics::METRICS.vmm.resume_count.inc();
        self.threads.control.resume();
    }

    /// Builds the VM `config` describes and starts its vCPUs.
    pub fn boot(config: &VmConfig, opts: RunOptions) -> Result<Self, VmmError> {
        config.validate()?;
        // Bad paths and wrong files are reported before any KVM work.
        loader::sniff_kernel(&config.kernel)?;
        if let Some(initrd) = &config.initrd {
            loader::check_initrd(initrd)?;
        }
        let kvm = open_kvm()?;
        if !opts.skip_probe {
            probe::check(&kvm)?;
        }
        let vm = create_vm(&kvm)?;
        let mem = memory::create(config.mem_bytes(), config.huge_pages)?;
        memory::register(&vm, &mem, config.track_dirty_pages)?;

        let kernel = loader::load_kernel(&mem, &config.kernel)?;
        let initrd = match &config.initrd {
            Some(p) => Some(loader::load_initrd(&mem, p)?),
            None => None,
        };
        let built = create_devices(&vm, &mem, config)?;
        // Devices are described in the DSDT; a guest booted without ACPI finds
        // them on its command line instead (both at once would probe twice).
        let mut extra = built.root_args.clone();
        if config.cmdline.split_whitespace().any(|w| w == "acpi=off") {
            extra.push_str(&built.devices.virtio_cmdline_args());
        }
        // Kernel parameters go before ` -- `, where init's arguments start.
        let cmdline = match config.cmdline.find(" -- ") {
            Some(i) => format!("{}{extra}{}", &config.cmdline[..i], &config.cmdline[i..]),
            None => format!("{}{extra}", config.cmdline),
        };
        let cmdline_size = loader::load_cmdline(&mem, &cmdline)?;

        let arch_err = |e: arch::Error| VmmError::Arch(e.to_string());
        arch::setup_mptable(&mem, config.vcpus).map_err(arch_err)?;
        let acpi = AcpiConfig {
            num_cpus: config.vcpus,
            mmio_devices: built.devices.virtio.clone(),
        };
        let rsdp = arch::create_acpi_tables(&mem, &acpi).map_err(arch_err)?;
        arch::configure_system(
            &mem,
            GuestAddress(arch::CMDLINE_START),
            cmdline_size,
            initrd,
            config.vcpus,
            kernel.protocol,
            rsdp,
            kernel.setup_header,
        )
        .map_err(arch_err)?;

        let supported = supported_cpuid(&kvm)?;
        let mut vcpus = Vec::with_capacity(config.vcpus.into());
        for id in 0..config.vcpus {
            vcpus.push(Vcpu::new(
                &vm,
                id,
                config.vcpus,
                &supported,
                &mem,
                kernel.entry,
                kernel.protocol,
            )?);
        }
        let vm = Self::start(&kvm, vm, mem, config, built, vcpus, false)?;
        tracing::info!(
            vcpus = config.vcpus,
            mem_mib = config.mem_mib,
            protocol = ?kernel.protocol,
            "guest started"
        );
        Ok(vm)
    }

    /// Restores a snapshot into this fresh process: the machine is rebuilt
    /// from the snapshot's configuration (disks, TAPs and sockets reopened),
    /// guest memory is mapped privately from `mem_path` (pages load lazily,
    /// so restoring costs the same whatever the memory size), then every
    /// vCPU, the interrupt controllers, timers, clock and devices are put
    /// back. The VM starts paused unless `resume`.
    pub fn restore(
        snapshot_path: &std::path::Path,
        mem_path: &std::path::Path,
        resume: bool,
        track_dirty: bool,
        opts: RunOptions,
    ) -> Result<Self, VmmError> {
        crate::metrics::METRICS.vmm.snapshot_load_count.inc();
        let snap = snapshot::read(snapshot_path).map_err(VmmError::Snapshot)?;
        let mut config = VmConfig::from_firecracker(snap.config.clone())?;
        config.track_dirty_pages |= track_dirty;
        if snap.vcpus.len() != usize::from(config.vcpus) {
            return Err(VmmError::Snapshot(SnapshotError::Invalid(
                "vCPU count does not match the configuration".into(),
            )));
        }
        let kvm = open_kvm()?;
        if !opts.skip_probe {
            probe::check(&kvm)?;
        }
        let vm = create_vm(&kvm)?;
        let mem = snapshot::map_memory(mem_path, &snap.mem_regions).map_err(VmmError::Snapshot)?;
        memory::register(&vm, &mem, config.track_dirty_pages)?;
        let built = create_devices(&vm, &mem, &config)?;
        let kvm_err = |what| move |err| VmmError::Kvm { what, err };
        for chip in &snap.irqchips {
            vm.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
        }
        vm.set_pit2(&snap.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
        let mut clock = snap.clock;
        clock.flags = 0;
        vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
        built
            .devices
            .restore(&snap.serial, &snap.transports)
            .map_err(VmmError::Snapshot)?;
        let supported = supported_cpuid(&kvm)?;
        let mut vcpus = Vec::with_capacity(snap.vcpus.len());
        for (id, st) in snap.vcpus.iter().enumerate() {
            vcpus.push(Vcpu::restore(&vm, id as u8, config.vcpus, &supported, st)?);
        }
        let mut vm = Self::start(&kvm, vm, mem, &config, built, vcpus, !resume)?;
        vm.devices.first_look();
        vm.mem_from_file = true;
        tracing::info!(paused = !resume, "snapshot restored");
        Ok(vm)
    }

    /// Writes a full snapshot: the machine state to `snapshot_path`, guest
    /// memory to `mem_path`. The VM must be paused; its devices are
    /// quiesced meanwhile and resume afterwards.
    pub fn snapshot(
        &mut self,
        snapshot_path: &std::path::Path,
        mem_path: &std::path::Path,
        diff: bool,
    ) -> Result<(), String> {
        if !self.is_paused() {
            return Err("the microVM must be paused to create a snapshot".into());
        }
        if diff && !self.config.track_dirty_pages {
            return Err(
                "diff snapshots need dirty page tracking: set track_dirty_pages in machine-config"
                    .into(),
            );
        }
        crate::metrics::METRICS.vmm.snapshot_create_count.inc();
        self.devices.quiesce();
        let r = self.write_snapshot(snapshot_path, mem_path, diff);
        self.devices.resume();
        r
    }

    fn write_snapshot(
        &self,
        snapshot_path: &std::path::Path,
        mem_path: &std::path::Path,
        diff: bool,
    ) -> Result<(), String> {
        let e = |what: &'static str| move |e: kvm_ioctls::Error| format!("{what}: {e}");
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
        let snap = Snapshot {
            config: self.config.to_firecracker(),
            mem_regions: snapshot::regions_of(&self.mem),
            vcpus: self.threads.control.saved_states()?,
            irqchips,
            pit: self.vm.get_pit2().map_err(e("KVM_GET_PIT2"))?,
            clock: self.vm.get_clock().map_err(e("KVM_GET_CLOCK"))?,
            serial: self.devices.serial_state(),
            transports: self.devices.transport_states(),
        };
        // Pages written since the last snapshot: by the guest (KVM's log,
        // cleared as it is read) and by the devices (vm-memory's bitmap).
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let dirty = if self.config.track_dirty_pages {
            let mut logs = Vec::new();
            for (slot, r) in self.mem.iter().enumerate() {
                let log = self
                    .vm
                    .get_dirty_log(slot as u32, r.len() as usize)
                    .map_err(e("KVM_GET_DIRTY_LOG"))?;
                logs.push(log);
            }
            Some(logs)
        } else {
            None
        };
        let written = match (&dirty, diff) {
            (Some(logs), true) => snapshot::write_dirty_memory(&self.mem, mem_path, logs),
            _ => snapshot::write_memory(&self.mem, mem_path, !self.mem_from_file),
        };
        written.map_err(|e| format!("memory file {}: {e}", mem_path.display()))?;
        if dirty.is_some() {
            for r in self.mem.iter() {
                let region: &vm_memory::MmapRegion<vm_memory::bitmap::AtomicBitmap> = r;
                region.bitmap().reset();
            }
        }
        snapshot::write(snapshot_path, &snap)
            .map_err(|e| format!("snapshot file {}: {e}", snapshot_path.display()))
    }

    /// Starts the vCPU threads (parked when `paused`).
    fn start(
        kvm: &Kvm,
        vm: kvm_ioctls::VmFd,
        mem: devices::GuestMemoryMmap,
        config: &VmConfig,
        built: Built,
        vcpus: Vec<Vcpu>,
        paused: bool,
    ) -> Result<Self, VmmError> {
        vcpu::install_kick_handler()?;
        let msr_list = kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_default();
        let control = Arc::new(VcpuControl::new(vcpus.len(), msr_list));
        if paused {
            control.set_paused();
        }
        let sink = Arc::new(VmExitSink::new().map_err(VmmError::EventLoop)?);
        let pio = Arc::new(built.devices.pio.clone());
        let mmio = Arc::new(built.devices.mmio.clone());
        let mut threads = VcpuThreads {
            handles: Vec::new(),
            control,
        };
        // No guest code runs before every thread has its seccomp filter:
        // the vCPUs wait until this (main) thread has installed its own.
        let go = Arc::new(Gate::default());
        let mut result = Ok(());
        for v in vcpus {
            let t = v.start(
                pio.clone(),
                mmio.clone(),
                threads.control.clone(),
                sink.clone(),
                go.clone(),
            );
            match t {
                Ok(h) => threads.handles.push(h),
                Err(e) => {
                    result = Err(VmmError::from(e));
                    break;
                }
            }
        }
        if result.is_ok() {
            result = crate::seccomp::install(ThreadKind::Vmm).map_err(VmmError::from);
        }
        if result.is_err() {
            // The threads that started see the stop flag once let go.
            threads.control.request_stop();
        }
        go.open();
        result?;
        Ok(Self {
            threads,
            config: config.clone(),
            devices: built.devices,
            sink,
            balloon: built.balloon,
            limiters: built.limiters,
            mem,
            mem_from_file: false,
            vm,
        })
    }
}

/// A VM with KVM's in-kernel interrupt controllers and PIT.
fn create_vm(kvm: &Kvm) -> Result<kvm_ioctls::VmFd, VmmError> {
    let kvm_err = |what| move |err| VmmError::Kvm { what, err };
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

/// What every vCPU's CPUID starts from: KVM's supported table, plus the
/// TSC-deadline timer where KVM has it.
fn supported_cpuid(kvm: &Kvm) -> Result<kvm_bindings::CpuId, VmmError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|err| VmmError::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            err,
        })?;
    if kvm.check_extension(Cap::TscDeadlineTimer) {
        arch::set_tsc_deadline(&mut cpuid);
    }
    Ok(cpuid)
}

/// The devices `config` asks for, on the buses.
struct Built {
    devices: DeviceManager,
    /// `root=/dev/vdX rw|ro` for the root disk, if any.
    root_args: String,
    limiters: Limiters,
    balloon: Option<BalloonHandle>,
}

fn create_devices(
    vm: &kvm_ioctls::VmFd,
    mem: &devices::GuestMemoryMmap,
    config: &VmConfig,
) -> Result<Built, VmmError> {
    // Device threads (started on activation, from vCPU or VMM threads) come
    // from a spawner that runs under the device filter.
    let prog = crate::seccomp::filter(ThreadKind::Device)?;
    devices::spawner::start(
        move || crate::seccomp::apply(ThreadKind::Device, prog.as_ref()).map_err(|e| e.to_string()),
        || crate::seccomp::mark_thread(ThreadKind::Device),
    )
    .map_err(VmmError::Spawner)?;
    let mut devices = DeviceManager::new(vm, Box::new(ConsoleOut))?;
    let mut root_args = String::new();
    let mut limiters = Limiters::default();
    for (i, d) in config.disks.iter().enumerate() {
        let disk = Disk::open(&d.path, d.read_only, &d.id).map_err(VmmError::Disk)?;
        let block = Block::new(disk).rate_limiter(limiter(&d.rate_limiter)?);
        if let Some(l) = block.rate_limiter_handle() {
            limiters.drives.push((d.id.clone(), l));
        }
        devices.add_virtio(vm, mem, Box::new(block))?;
        if d.root {
            let letter = char::from(b'a' + i as u8);
            let mode = if d.read_only { "ro" } else { "rw" };
            root_args = format!(" root=/dev/vd{letter} {mode}");
        }
    }
    let mut balloon = None;
    if let Some(b) = &config.balloon {
        let dev = Balloon::new(
            b.amount_mib,
            b.deflate_on_oom,
            b.stats_polling_interval_s,
            b.free_page_reporting,
        );
        balloon = Some(dev.handle());
        devices.add_virtio(vm, mem, Box::new(dev))?;
    }
    for n in &config.nets {
        let tap = Tap::open(&n.tap).map_err(VmmError::Net)?;
        let net = Net::new(tap, n.mac)
            .rx_rate_limiter(limiter(&n.rx_rate_limiter)?)
            .tx_rate_limiter(limiter(&n.tx_rate_limiter)?);
        limiters
            .nets
            .push((n.id.clone(), net.rate_limiter_handles()));
        devices.add_virtio(vm, mem, Box::new(net))?;
    }
    if let Some(v) = &config.vsock {
        let vsock = Vsock::new(v.cid, &v.uds_path).map_err(VmmError::Vsock)?;
        devices.add_virtio(vm, mem, Box::new(vsock))?;
    }
    if config.entropy {
        devices.add_virtio(vm, mem, Box::new(devices::virtio::rng::Rng::new()))?;
    }
    Ok(Built {
        devices,
        root_args,
        limiters,
        balloon,
    })
}

/// The vCPU threads, stopped and joined on drop so no exit path leaks them.
struct VcpuThreads {
    handles: Vec<JoinHandle<Option<()>>>,
    control: Arc<VcpuControl>,
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

    fn stop_all(&mut self) {
        self.control.request_stop();
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

impl Vm {
    /// Runs the VMM's loop until the guest ends or a vCPU fails: console
    /// input, guest exits, and API requests when `api` is given.
    pub fn event_loop(
        &mut self,
        opts: RunOptions,
        api: Option<&ApiServer>,
    ) -> Result<VmExit, VmmError> {
        let result = self.serve(opts, api);
        self.threads.stop_all();
        if let Err(e) = crate::metrics::flush() {
            tracing::warn!("metrics: {e}");
        }
        result
    }

    fn serve(&mut self, opts: RunOptions, api: Option<&ApiServer>) -> Result<VmExit, VmmError> {
        let ev = VmmError::EventLoop;
        let epoll = Epoll::new().map_err(ev)?;
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(self.devices.exit.eventfd().as_raw_fd(), TOKEN_DEVICE_EXIT).map_err(ev)?;
        add(self.sink.eventfd().as_raw_fd(), TOKEN_VCPU_EXIT).map_err(ev)?;
        if let Some(api) = api {
            add(api.eventfd().as_raw_fd(), TOKEN_API).map_err(ev)?;
        }
        let mut stop_signals = crate::api::StopSignals::new().map_err(ev)?;
        add(stop_signals.as_raw_fd(), TOKEN_SIGTERM).map_err(ev)?;
        // Metrics lines once a minute, as Firecracker writes them.
        let errno =
            |e: vmm_sys_util::errno::Error| ev(std::io::Error::from_raw_os_error(e.errno()));
        let mut metrics_timer = vmm_sys_util::timerfd::TimerFd::new().map_err(errno)?;
        let minute = Duration::from_secs(60);
        metrics_timer.reset(minute, Some(minute)).map_err(errno)?;
        add(metrics_timer.as_raw_fd(), TOKEN_METRICS).map_err(ev)?;
        let mut stdin_open = opts.console_input && add(libc::STDIN_FILENO, TOKEN_STDIN).is_ok();
        let mut pending: Vec<u8> = Vec::new();
        let mut events = [EpollEvent::default(); 8];

        loop {
            // With input waiting for room in the UART FIFO, poll it briefly.
            let timeout = if pending.is_empty() { -1 } else { 10 };
            let n = match epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ev(e)),
            };
            for e in &events[..n] {
                match e.data() {
                    TOKEN_API => {
                        if let Some(api) = api {
                            let _ = api.eventfd().read();
                            while let Some(p) = api.next() {
                                let r = crate::api::handle_running(self, &p.req);
                                p.respond(r);
                            }
                        }
                    }
                    TOKEN_METRICS => {
                        let _ = metrics_timer.wait();
                        if let Err(e) = crate::metrics::flush() {
                            tracing::warn!("metrics: {e}");
                        }
                    }
                    TOKEN_SIGTERM if stop_signals.read() => {
                        tracing::info!("SIGTERM: stopping the VM");
                        return Ok(VmExit::Stopped);
                    }
                    TOKEN_DEVICE_EXIT => {
                        let _ = self.devices.exit.eventfd().read();
                        if let Some(r) = self.devices.exit.reason() {
                            return Ok(match r {
                                ExitReason::Poweroff => VmExit::Poweroff,
                                ExitReason::Reset => VmExit::Reset,
                                ExitReason::Panic => VmExit::Panic,
                            });
                        }
                    }
                    TOKEN_VCPU_EXIT => {
                        let _ = self.sink.eventfd().read();
                        if let Some(exit) = self.sink.reason() {
                            return Ok(exit);
                        }
                    }
                    TOKEN_STDIN if pending.is_empty() => {
                        let mut buf = [0u8; 64];
                        // SAFETY: reading into a stack buffer of the given length.
                        let r = unsafe {
                            libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len())
                        };
                        if r <= 0 {
                            if r == 0
                                || std::io::Error::last_os_error().kind()
                                    != std::io::ErrorKind::Interrupted
                            {
                                let _ = epoll.ctl(
                                    ControlOperation::Delete,
                                    libc::STDIN_FILENO,
                                    EpollEvent::default(),
                                );
                                stdin_open = false;
                            }
                            continue;
                        }
                        pending.extend_from_slice(&buf[..r as usize]);
                    }
                    _ => {}
                }
            }
            if !pending.is_empty() {
                let mut serial = lock(&self.devices.serial);
                let taken = serial.enqueue_input(&pending);
                pending.drain(..taken);
            }
            let _ = stdin_open;
        }
    }
}

//! Builds a [`Vm`]: at boot from a [`VmConfig`], on restore from a
//! snapshot's [`MicrovmState`] and memory file. Both take the same
//! sequence ([`assemble`]): KVM VM, guest memory, (restored VM-wide state),
//! devices (each from its [`VirtioDeviceState`], made from the
//! configuration at boot), vCPUs (fresh at the kernel's entry, or as
//! saved), then the vCPU threads under their seccomp filters.
//!
//! What needs no configuration can be done ahead ([`Ahead`]): opening KVM
//! with the probe's verdict, the VM with its interrupt controllers and
//! PIT, and what KVM offers vCPUs, on a thread of its own while the VMM
//! waits for its first request. Each step is timed ([`Steps`]).

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::virtio::persist::VsockState;
use devices::virtio::persist::{BalloonState, BlockState, NetState, RngState, VirtioDeviceState};
use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::GuestAddress;

use crate::arch::{self, AcpiConfig};
use crate::config::{MacAddr, VmConfig};
use crate::device_manager::DeviceManager;
use crate::seccomp::ThreadKind;
use crate::snapshot::{self, MicrovmState, SnapshotError};
use crate::timing::Steps;
use crate::vcpu::{self, Gate, Vcpu, VcpuControl, VmExitSink};
use crate::vm::{VcpuThreads, Vm, VmmError};
use crate::{loader, memory, probe};

/// Stack of the thread that prepares a VM ahead: small, as every thread's
/// here, so that it is never a transparent huge page (a 2 MiB stack can
/// be one, and stays resident).
const HELPER_STACK: usize = 256 << 10;

// Just below the 4 GiB boundary, clear of the MMIO gap's devices, as
// Firecracker places it.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// The KVM device: `/dev/kvm`, or `$CONDO_KVM_DEVICE` when set (tests use
/// it to simulate a host without KVM).
fn kvm_path() -> std::path::PathBuf {
    std::env::var_os("CONDO_KVM_DEVICE")
        .unwrap_or_else(|| "/dev/kvm".into())
        .into()
}

/// Opens the KVM device.
fn open_kvm(path: &Path) -> Result<Kvm, VmmError> {
    let err = |err| VmmError::OpenKvm {
        path: path.display().to_string(),
        err,
    };
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| err(kvm_ioctls::Error::new(libc::EINVAL)))?;
    Kvm::new_with_path(&cpath).map_err(err)
}

/// Opens /dev/kvm and checks it can run a standard guest, probing it
/// afresh (and keeping the verdict for later runs).
pub fn check_kvm() -> Result<(), VmmError> {
    let path = kvm_path();
    let kvm = open_kvm(&path)?;
    probe::check_and_keep(&kvm, &path)?;
    Ok(())
}

/// Opens KVM, checking it unless `skip_probe` (with the host's kept
/// verdict when there is one).
fn kvm(skip_probe: bool) -> Result<Kvm, VmmError> {
    let path = kvm_path();
    let kvm = open_kvm(&path)?;
    if !skip_probe {
        probe::check_cached(&kvm, &path)?;
    }
    Ok(kvm)
}

/// What a VM is built on that needs no configuration: the VM (on a KVM
/// that was checked) with its interrupt controllers and PIT, what KVM
/// offers a vCPU's CPUID and the MSRs a vCPU's state holds.
pub struct Prepared {
    vm: VmFd,
    supported: CpuId,
    msr_list: Vec<u32>,
    /// vCPU threads started ahead under their filter (vCPU 0 first).
    parked: Vec<crate::seccomp::Parked>,
}

impl Prepared {
    fn new(skip_probe: bool) -> Result<Self, VmmError> {
        let kvm = kvm(skip_probe)?;
        let vm = create_vm(&kvm)?;
        let supported = supported_cpuid(&kvm)?;
        let msr_list = kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_default();
        Ok(Self {
            vm,
            supported,
            msr_list,
            parked: Vec::new(),
        })
    }
}

/// vCPU threads a VMM waiting for its guest starts ahead: most guests
/// have one or two vCPUs; more are started when the guest starts.
const PARKED_VCPUS: u8 = 2;

/// A [`Prepared`] VM being made ahead, or to be made when needed.
pub struct Ahead(AheadState);

enum AheadState {
    Started(JoinHandle<Result<Prepared, VmmError>>),
    Later { skip_probe: bool },
}

impl Ahead {
    /// Starts preparing a VM on a thread of its own (checking KVM unless
    /// `skip_probe`), compiling the seccomp filters first, then starting
    /// the first vCPU threads, parked under their filter. The thread runs
    /// no guest code and has ended before any vCPU runs (the builder joins
    /// it), so it needs no filter of its own.
    pub fn start(skip_probe: bool) -> Self {
        let t = std::thread::Builder::new()
            .name("vm-ahead".into())
            .stack_size(HELPER_STACK)
            .spawn(move || {
                crate::seccomp::compile_ahead();
                let mut p = Prepared::new(skip_probe)?;
                // A thread that cannot be started ahead is started later.
                p.parked = (0..PARKED_VCPUS)
                    .map_while(|i| crate::seccomp::park(format!("vcpu{i}"), ThreadKind::Vcpu).ok())
                    .collect();
                Ok(p)
            });
        match t {
            Ok(h) => Self(AheadState::Started(h)),
            Err(_) => Self::later(skip_probe),
        }
    }

    /// Prepares the VM only when the builder asks for it.
    pub fn later(skip_probe: bool) -> Self {
        Self(AheadState::Later { skip_probe })
    }

    /// The prepared VM (waiting for it if it is still being made).
    fn take(self) -> Result<Prepared, VmmError> {
        match self.0 {
            AheadState::Started(h) => h.join().unwrap_or_else(|_| {
                Err(VmmError::EventLoop(std::io::Error::other(
                    "the thread preparing the VM failed",
                )))
            }),
            AheadState::Later { skip_probe } => Prepared::new(skip_probe),
        }
    }
}

/// Where a VM comes from.
enum Source<'a> {
    /// A fresh boot.
    Boot,
    /// A saved state, its memory, and whether it starts paused.
    Restore {
        state: &'a MicrovmState,
        memory: Memory<'a>,
        paused: bool,
    },
}

/// Where a restored VM's memory comes from.
pub enum Memory<'a> {
    /// A snapshot's memory file, mapped privately.
    File(&'a Path),
    /// Memory already filled (a live migration's destination).
    Ready(devices::GuestMemoryMmap),
}

impl Vm {
    /// Builds the VM `config` describes (on `ahead`) and starts its vCPUs.
    pub fn boot(config: &VmConfig, ahead: Ahead) -> Result<Self, VmmError> {
        let mut steps = Steps::start("boot");
        // Bad paths and wrong files are reported before any KVM work.
        let b = &config.boot_source;
        loader::sniff_kernel(&b.kernel_image_path)?;
        if let Some(initrd) = &b.initrd_path {
            loader::check_initrd(initrd)?;
        }
        steps.step("files");
        let prepared = ahead.take()?;
        steps.step("kvm_vm");
        let vm = assemble(prepared, config.clone(), Source::Boot, &mut steps)?;
        steps.log();
        tracing::info!(
            vcpus = config.machine_config.vcpu_count,
            mem_mib = config.machine_config.mem_size_mib,
            "guest started"
        );
        Ok(vm)
    }

    /// Restores a snapshot into this fresh process: the machine is rebuilt
    /// from the snapshot's state (disks, TAPs and sockets reopened), guest
    /// memory is mapped privately from `mem_path` (pages load lazily, so
    /// restoring costs the same whatever the memory size), then every
    /// vCPU, the interrupt controllers, timers, clock and devices are put
    /// back. The VM starts paused unless `resume`.
    pub fn restore(
        snapshot_path: &Path,
        mem_path: &Path,
        resume: bool,
        track_dirty: bool,
        ahead: Ahead,
    ) -> Result<Self, VmmError> {
        crate::metrics::METRICS.vmm.snapshot_load_count.inc();
        let mut steps = Steps::start("restore");
        let state = snapshot::read(snapshot_path)?;
        steps.step("state");
        let vm = Self::from_state(
            &state,
            Memory::File(mem_path),
            resume,
            track_dirty,
            ahead,
            &mut steps,
        )?;
        // Its vCPUs wait at their first KVM_RUN until the answer is out
        // ([`Vm::let_go`]).
        steps.log();
        Ok(vm)
    }

    /// Rebuilds a VM from `state` with its guest memory, on `ahead`,
    /// timing its steps in `steps`.
    pub fn from_state(
        state: &MicrovmState,
        memory: Memory<'_>,
        resume: bool,
        track_dirty: bool,
        ahead: Ahead,
        steps: &mut Steps,
    ) -> Result<Self, VmmError> {
        let mut config = state.config()?;
        config.machine_config.track_dirty_pages |= track_dirty;
        let prepared = ahead.take()?;
        steps.step("kvm_vm");
        let vm = assemble(
            prepared,
            config,
            Source::Restore {
                state,
                memory,
                paused: !resume,
            },
            steps,
        )?;
        tracing::info!(paused = !resume, "snapshot restored");
        Ok(vm)
    }
}

/// The devices `config` asks for, as the states they are built from, in
/// bus order: disks, balloon, network interfaces, vsock, entropy.
fn device_states(config: &VmConfig) -> Vec<VirtioDeviceState> {
    let mut v = Vec::new();
    for d in &config.drives {
        v.push(VirtioDeviceState::Block(BlockState {
            id: d.drive_id.clone(),
            path: d.path_on_host.clone(),
            read_only: d.is_read_only,
            rate_limiter: d.rate_limiter.unwrap_or_default(),
        }));
    }
    if let Some(b) = &config.balloon {
        v.push(VirtioDeviceState::Balloon(BalloonState {
            target_pages: b
                .amount_mib
                .saturating_mul(devices::virtio::balloon::PAGES_PER_MIB),
            actual_pages: 0,
            deflate_on_oom: b.deflate_on_oom,
            stats_polling_interval_s: b.stats_polling_interval_s,
            free_page_reporting: b.free_page_reporting,
        }));
    }
    for (i, n) in config.network_interfaces.iter().enumerate() {
        v.push(VirtioDeviceState::Net(NetState {
            id: n.iface_id.clone(),
            tap: n.host_dev_name.clone(),
            mac: n.guest_mac.unwrap_or(MacAddr::default_for(i)).0,
            rx_rate_limiter: n.rx_rate_limiter.unwrap_or_default(),
            tx_rate_limiter: n.tx_rate_limiter.unwrap_or_default(),
        }));
    }
    if let Some(s) = &config.vsock {
        v.push(VirtioDeviceState::Vsock(VsockState {
            cid: s.guest_cid,
            uds_path: s.uds_path.clone(),
        }));
    }
    if config.entropy.is_some() {
        v.push(VirtioDeviceState::Rng(RngState {}));
    }
    v
}

/// The one build sequence of boot and restore, on a VM prepared ahead;
/// each step is timed in `steps`.
fn assemble(
    prepared: Prepared,
    config: VmConfig,
    source: Source<'_>,
    steps: &mut Steps,
) -> Result<Vm, VmmError> {
    let kvm_err = |what| move |err| VmmError::Kvm { what, err };
    let Prepared {
        vm,
        supported,
        msr_list,
        parked,
    } = prepared;
    let m = &config.machine_config;
    let mut working_set = snapshot::working_set::Plan::Nothing;
    let (mem, from_file) = match &source {
        Source::Boot => (memory::create(m.mem_bytes(), m.huge_pages)?, false),
        Source::Restore {
            state,
            memory: Memory::File(path),
            ..
        } => {
            working_set = snapshot::working_set::Plan::for_restore(path, m.track_dirty_pages);
            (snapshot::memory::map_memory(path, &state.memory)?, true)
        }
        Source::Restore {
            state,
            memory: Memory::Ready(mem),
            ..
        } => {
            if snapshot::memory::regions_of(mem) != state.memory {
                return Err(SnapshotError::Invalid(
                    "the memory received does not have the state's layout".into(),
                )
                .into());
            }
            (mem.clone(), false)
        }
    };
    memory::register(&vm, &mem, m.track_dirty_pages || working_set.records())?;
    steps.step("memory");
    if let Source::Restore { state, .. } = &source {
        for chip in &state.vm.irqchips {
            vm.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
        }
        vm.set_pit2(&state.vm.pit)
            .map_err(kvm_err("KVM_SET_PIT2"))?;
        let mut clock = state.vm.clock;
        clock.flags = 0;
        vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
        steps.step("vm_state");
    }

    let serial = match &source {
        Source::Boot => None,
        Source::Restore { state, .. } => Some(&state.serial),
    };
    let mut devices = DeviceManager::new(&vm, serial)?;
    match &source {
        Source::Boot => {
            let virtio = device_states(&config);
            if !virtio.is_empty() {
                start_device_spawner()?;
            }
            for d in virtio {
                devices.add_virtio(&vm, &mem, &d, None)?;
            }
        }
        Source::Restore { state, .. } => {
            if !state.devices.is_empty() {
                start_device_spawner()?;
            }
            for t in &state.devices {
                devices.add_virtio(&vm, &mem, &t.device, Some(t))?;
            }
        }
    }
    steps.step("devices");

    let count = m.vcpu_count;
    let mut vcpus = Vec::with_capacity(count.into());
    let paused = matches!(source, Source::Restore { paused: true, .. });
    let restored = matches!(source, Source::Restore { .. });
    let guest_cpuid = match source {
        Source::Boot => {
            let c = &config;
            let b = &c.boot_source;
            let kernel = loader::load_kernel(&mem, &b.kernel_image_path)?;
            steps.step("kernel");
            let initrd = match &b.initrd_path {
                Some(p) => Some(loader::load_initrd(&mem, p)?),
                None => None,
            };
            steps.step("initrd");
            // Devices are described in the DSDT; a guest booted without
            // ACPI finds them on its command line instead (both at once
            // would probe twice).
            let no_acpi = b.cmdline().split_whitespace().any(|w| w == "acpi=off");
            let extra = if no_acpi {
                devices.virtio_cmdline_args()
            } else {
                String::new()
            };
            let cmdline_size = loader::load_cmdline(&mem, &c.kernel_cmdline(&extra))?;
            arch::setup_mptable(&mem, count)?;
            let acpi = AcpiConfig {
                vcpu_count: count,
                mmio_devices: devices.virtio.clone(),
            };
            let rsdp = arch::create_acpi_tables(&mem, &acpi)?;
            arch::configure_system(
                &mem,
                GuestAddress(arch::CMDLINE_START),
                cmdline_size,
                initrd,
                kernel.protocol,
                rsdp,
                kernel.setup_header,
            )?;
            steps.step("tables");
            for id in 0..count {
                let v = Vcpu::new(&vm, id, count, &supported)?;
                v.set_boot_registers(&mem, kernel.entry, kernel.protocol)?;
                vcpus.push(v);
            }
            steps.step("vcpus");
            let mut c = supported.clone();
            arch::filter_cpuid(&mut c, 0, count)?;
            c.as_slice().to_vec()
        }
        Source::Restore { state, .. } => {
            for (id, st) in state.vcpus.iter().enumerate() {
                vcpus.push(Vcpu::restore(&vm, id as u8, &supported, st)?);
            }
            steps.step("vcpus");
            state
                .vcpus
                .first()
                .map(|v| v.cpuid.clone())
                .unwrap_or_default()
        }
    };
    // A restored VM's vCPUs are held until its request is answered.
    let vm = start(
        vm, mem, config, devices, vcpus, parked, msr_list, paused, restored, steps,
    )?;
    Ok(Vm {
        mem_from_file: from_file,
        guest_cpuid,
        working_set,
        ..vm
    })
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

/// What this host's KVM offers a guest's CPUID (to check a guest that
/// comes from elsewhere against).
pub fn guest_cpuid_of_host() -> Result<Vec<kvm_bindings::kvm_cpuid_entry2>, VmmError> {
    let kvm = open_kvm(&kvm_path())?;
    Ok(supported_cpuid(&kvm)?.as_slice().to_vec())
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

/// Device threads (started on activation, from vCPU or VMM threads) come
/// from a spawner that runs under the device filter; started only for a
/// VM with virtio devices.
fn start_device_spawner() -> Result<(), VmmError> {
    let prog = crate::seccomp::filter(ThreadKind::Device)?;
    devices::spawner::start(
        move || crate::seccomp::apply(ThreadKind::Device, prog.as_ref()),
        || crate::seccomp::mark_thread(ThreadKind::Device),
    )
    .map_err(VmmError::Spawner)
}

/// Starts the vCPU threads (parked when `paused`); returns once they are
/// in KVM_RUN, or, when `hold`, once they are ready to enter it and wait
/// for [`Vm::let_go`].
#[allow(clippy::too_many_arguments)]
fn start(
    vm: VmFd,
    mem: devices::GuestMemoryMmap,
    config: VmConfig,
    devices: DeviceManager,
    vcpus: Vec<Vcpu>,
    parked: Vec<crate::seccomp::Parked>,
    msr_list: Vec<u32>,
    paused: bool,
    hold: bool,
    steps: &mut Steps,
) -> Result<Vm, VmmError> {
    vcpu::install_kick_handler()?;
    let control = Arc::new(VcpuControl::new(vcpus.len(), msr_list));
    if paused {
        control.set_paused();
    }
    let sink = Arc::new(VmExitSink::new().map_err(VmmError::EventLoop)?);
    let pio = Arc::new(devices.pio.clone());
    let mmio = Arc::new(devices.mmio.clone());
    let mut threads = VcpuThreads {
        handles: Vec::new(),
        control,
        held: None,
    };
    // No guest code runs before every thread has its seccomp filter:
    // the vCPUs wait until this (main) thread has installed its own.
    let go = Arc::new(Gate::default());
    let mut result = Ok(());
    let mut parked = parked.into_iter();
    for v in vcpus {
        let t = v.start(
            parked.next(),
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
    steps.step("threads");
    if let Err(e) = result {
        go.open();
        return Err(e);
    }
    if hold {
        threads.held = Some(go);
    } else {
        go.open();
        // The guest runs once its vCPUs are in KVM_RUN: the request that
        // started it is answered then, not before.
        let count = threads.handles.len();
        match go.wait_passed(count, std::time::Duration::from_secs(1)) {
            Some(at) => steps.step_at("first_run", at),
            None => tracing::warn!("the vCPU threads took over a second to start"),
        }
    }
    Ok(Vm {
        threads,
        config,
        devices,
        sink,
        mem,
        mem_from_file: false,
        guest_cpuid: Vec::new(),
        working_set: snapshot::working_set::Plan::Nothing,
        vm,
    })
}

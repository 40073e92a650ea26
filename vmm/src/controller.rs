//! The controller: one VMM's [`RequestHandler`], and its event loop.
//!
//! [`Vmm`] owns the VM's life: while it is configured it holds the
//! [`VmConfig`] being built; `InstanceStart` boots it and `LoadSnapshot`
//! restores one; then it holds the running [`Vm`]. Every request, whatever
//! its origin, is served by [`Vmm::handle`]. [`Vmm::run`] serves requests
//! from an [`Inbox`] and, once the guest runs, waits (epoll) for a guest
//! exit, a vCPU failure, SIGTERM, console input, the metrics timer or a
//! request. The vCPUs run on their own threads; every exit path stops and
//! joins them before returning.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::builder::Ahead;
use crate::config::{BalloonConfig, MachineConfigUpdate, VmConfig};
use crate::rpc::{
    BalloonStatistics, Inbox, InstanceInfo, InstanceState, RequestHandler, SnapshotType, VmError,
    VmRequest, VmResponse, VmResult,
};
use crate::signals::StopSignals;
use crate::vcpu::VmExit;
use crate::vm::{Vm, VmmError};

/// How the VMM talks to the outside while the guest runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Forward the VMM's stdin to the guest's serial console.
    pub console_input: bool,
    /// Skip the exception probe (the host is known to be good).
    pub skip_probe: bool,
}

/// The VMM: a VM being configured, or running.
pub struct Vmm {
    opts: RunOptions,
    state: State,
    /// The VM being prepared ahead, until a boot or restore takes it.
    ahead: Option<Ahead>,
    /// The guest has moved to another VMM: this one ends.
    migrated: bool,
}

enum State {
    Configuring {
        config: Box<VmConfig>,
        has_boot_source: bool,
        /// Something was configured (a snapshot can no longer be loaded).
        configured: bool,
    },
    Running(Box<Vm>),
}

const TOKEN_DEVICE_EXIT: u64 = 1;
const TOKEN_VCPU_EXIT: u64 = 2;
const TOKEN_STDIN: u64 = 3;
const TOKEN_REQUEST: u64 = 4;
const TOKEN_SIGTERM: u64 = 5;
const TOKEN_METRICS: u64 = 6;
const TOKEN_RECORD: u64 = 7;

impl Vmm {
    /// A VMM with nothing configured: 1 vCPU, 128 MiB, no kernel yet.
    pub fn new(opts: RunOptions) -> Self {
        Self {
            opts,
            ahead: None,
            state: State::Configuring {
                config: Box::default(),
                has_boot_source: false,
                configured: false,
            },
            migrated: false,
        }
    }

    /// Whether the guest has been started (booted or restored).
    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running(_))
    }

    /// Serves `inbox` until the guest ends: the requests that configure and
    /// start it (unless it runs already), then the event loop.
    pub fn run(mut self, inbox: Option<&Inbox>) -> Result<VmExit, VmmError> {
        if !self.is_running() && inbox.is_some() {
            // While it waits for the requests that start the guest, the
            // VMM prepares what any guest needs: the VM with its interrupt
            // controllers, and the threads' seccomp filters.
            self.ahead = Some(Ahead::start(self.opts.skip_probe));
        }
        while !self.is_running() {
            let Some(inbox) = inbox else {
                return Err(crate::config::ConfigError::NoKernel.into());
            };
            let Some(p) = inbox.wait() else {
                return Err(VmmError::EventLoop(std::io::Error::other(
                    "the API thread stopped",
                )));
            };
            p.serve(&mut self);
        }
        let result = self.serve(inbox);
        if let State::Running(vm) = &mut self.state {
            // A restore stopped before its working set was recorded
            // records what it has.
            vm.record_working_set();
            vm.stop();
        }
        if let Err(e) = crate::metrics::flush() {
            tracing::warn!("metrics: {e}");
        }
        result
    }

    fn serve(&mut self, inbox: Option<&Inbox>) -> Result<VmExit, VmmError> {
        let ev = VmmError::EventLoop;
        let State::Running(vm) = &mut self.state else {
            return Err(crate::config::ConfigError::NoKernel.into());
        };
        // The request that restored the guest has its answer: now it runs.
        vm.let_go();
        let epoll = Epoll::new().map_err(ev)?;
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(vm.device_exit_event().as_raw_fd(), TOKEN_DEVICE_EXIT).map_err(ev)?;
        add(vm.vcpu_exit_event().as_raw_fd(), TOKEN_VCPU_EXIT).map_err(ev)?;
        if let Some(inbox) = inbox {
            add(inbox.eventfd().as_raw_fd(), TOKEN_REQUEST).map_err(ev)?;
        }
        let mut stop_signals = StopSignals::new().map_err(ev)?;
        add(stop_signals.as_raw_fd(), TOKEN_SIGTERM).map_err(ev)?;
        // Metrics lines once a minute, as Firecracker writes them.
        let errno =
            |e: vmm_sys_util::errno::Error| ev(std::io::Error::from_raw_os_error(e.errno()));
        let mut metrics_timer = vmm_sys_util::timerfd::TimerFd::new().map_err(errno)?;
        let minute = Duration::from_secs(60);
        metrics_timer.reset(minute, Some(minute)).map_err(errno)?;
        add(metrics_timer.as_raw_fd(), TOKEN_METRICS).map_err(ev)?;
        // A restore recording its working set stops logging after a while.
        let mut record_timer = None;
        if vm.records_working_set() {
            let mut t = vmm_sys_util::timerfd::TimerFd::new().map_err(errno)?;
            t.reset(crate::snapshot::working_set::RECORD_AFTER, None)
                .map_err(errno)?;
            add(t.as_raw_fd(), TOKEN_RECORD).map_err(ev)?;
            record_timer = Some(t);
        }
        if self.opts.console_input {
            // Without a readable stdin the guest simply gets no input.
            let _ = add(libc::STDIN_FILENO, TOKEN_STDIN);
        }
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
                    TOKEN_REQUEST => {
                        if let Some(inbox) = inbox {
                            let _ = inbox.eventfd().read();
                            while let Some(p) = inbox.try_next() {
                                p.serve(self);
                            }
                            if self.migrated {
                                return Ok(VmExit::Migrated);
                            }
                        }
                    }
                    TOKEN_RECORD => {
                        if let Some(t) = &mut record_timer {
                            let _ = t.wait();
                        }
                        if let State::Running(vm) = &mut self.state {
                            vm.record_working_set();
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
                    TOKEN_DEVICE_EXIT | TOKEN_VCPU_EXIT => {
                        if let Some(exit) = self.vm()?.exit_reason() {
                            return Ok(exit);
                        }
                    }
                    TOKEN_STDIN if pending.is_empty() && !read_stdin(&mut pending) => {
                        let _ = epoll.ctl(
                            ControlOperation::Delete,
                            libc::STDIN_FILENO,
                            EpollEvent::default(),
                        );
                    }
                    _ => {}
                }
            }
            if !pending.is_empty() {
                let taken = self.vm()?.console_input(&pending);
                pending.drain(..taken);
            }
        }
    }

    fn vm(&self) -> Result<&Vm, VmmError> {
        match &self.state {
            State::Running(vm) => Ok(vm),
            State::Configuring { .. } => Err(crate::config::ConfigError::NoKernel.into()),
        }
    }

    /// Serves a request before the guest starts.
    fn configure(&mut self, req: VmRequest) -> VmResult {
        let State::Configuring {
            config,
            has_boot_source,
            configured,
        } = &mut self.state
        else {
            return Err(VmError::AlreadyRunning);
        };
        let changes = matches!(
            req,
            VmRequest::PutBootSource(_)
                | VmRequest::PutMachineConfig(_)
                | VmRequest::PatchMachineConfig(_)
                | VmRequest::PutDrive(_)
                | VmRequest::PutNetworkInterface(_)
                | VmRequest::PutVsock(_)
                | VmRequest::PutBalloon(_)
                | VmRequest::PutEntropy(_)
        );
        let r = match req {
            VmRequest::GetInstanceInfo => Ok(info(InstanceState::NotStarted)),
            VmRequest::GetVmConfig => Ok(VmResponse::VmConfig(config.clone())),
            VmRequest::GetMachineConfig => {
                Ok(VmResponse::MachineConfig(config.machine_config.clone()))
            }
            VmRequest::PutBootSource(b) => {
                config.set_boot_source(b)?;
                *has_boot_source = true;
                Ok(VmResponse::Empty)
            }
            VmRequest::PutMachineConfig(m) => {
                let u = MachineConfigUpdate::from(m);
                Ok(config
                    .update_machine_config(&u)
                    .map(|_| VmResponse::Empty)?)
            }
            VmRequest::PatchMachineConfig(u) => Ok(config
                .update_machine_config(&u)
                .map(|_| VmResponse::Empty)?),
            VmRequest::PutDrive(d) => Ok(config.insert_drive(d).map(|_| VmResponse::Empty)?),
            VmRequest::PutNetworkInterface(n) => Ok(config
                .insert_network_interface(n)
                .map(|_| VmResponse::Empty)?),
            VmRequest::PutVsock(v) => Ok(config.set_vsock(v).map(|_| VmResponse::Empty)?),
            VmRequest::PutBalloon(b) => Ok(config.set_balloon(b).map(|_| VmResponse::Empty)?),
            VmRequest::PutEntropy(e) => Ok(config.set_entropy(e).map(|_| VmResponse::Empty)?),
            VmRequest::GetBalloon => config
                .balloon
                .clone()
                .map(VmResponse::Balloon)
                .ok_or(VmError::NoBalloon),
            VmRequest::InstanceStart if !*has_boot_source => Err(VmError::NoBootSource),
            VmRequest::InstanceStart => {
                match Vm::boot(config, take_ahead(&mut self.ahead, &self.opts)) {
                    Ok(vm) => {
                        self.state = State::Running(Box::new(vm));
                        Ok(VmResponse::Empty)
                    }
                    Err(e) => {
                        tracing::info!("InstanceStart failed: {e}");
                        Err(e.into())
                    }
                }
            }
            VmRequest::LoadSnapshot(_) | VmRequest::ReceiveMigration(_) if *configured => {
                Err(VmError::LoadAfterConfig)
            }
            VmRequest::ReceiveMigration(r) => {
                let ahead = take_ahead(&mut self.ahead, &self.opts);
                match crate::migration::receive::receive(&r.receiver_url, ahead) {
                    Ok(vm) => {
                        tracing::info!("migration: the guest runs here now");
                        self.state = State::Running(Box::new(vm));
                        Ok(VmResponse::Empty)
                    }
                    Err(e) => {
                        tracing::warn!("migration: receive failed: {e}");
                        Err(e.into())
                    }
                }
            }
            VmRequest::LoadSnapshot(l) => {
                let mem = l.mem_path()?;
                let track = l.enable_diff_snapshots.unwrap_or(false)
                    || l.track_dirty_pages.unwrap_or(false);
                match Vm::restore(
                    &l.snapshot_path,
                    mem,
                    l.resume_vm.unwrap_or(false),
                    track,
                    take_ahead(&mut self.ahead, &self.opts),
                ) {
                    Ok(vm) => {
                        self.state = State::Running(Box::new(vm));
                        Ok(VmResponse::Empty)
                    }
                    Err(e) => {
                        tracing::info!("snapshot load failed: {e}");
                        Err(e.into())
                    }
                }
            }
            VmRequest::PatchDrive(_)
            | VmRequest::PatchNetworkInterface(_)
            | VmRequest::PatchBalloon(_)
            | VmRequest::GetBalloonStats
            | VmRequest::FlushMetrics
            | VmRequest::SendCtrlAltDel
            | VmRequest::Pause
            | VmRequest::Resume
            | VmRequest::SendMigration(_)
            | VmRequest::CreateSnapshot(_) => Err(VmError::NotStarted),
            r @ (VmRequest::PutLogger(_) | VmRequest::PutMetrics(_) | VmRequest::GetMetrics) => {
                common(r)
            }
        };
        if changes && r.is_ok() {
            if let State::Configuring { configured, .. } = &mut self.state {
                *configured = true;
            }
        }
        r
    }

    /// Serves a request while the guest runs (or is paused).
    fn control(vm: &mut Vm, req: VmRequest, migrated: &mut bool) -> VmResult {
        match req {
            VmRequest::SendMigration(p) => {
                let r = crate::migration::send::send(vm, &p);
                let m = &crate::metrics::METRICS.migration;
                match r {
                    Ok(rep) => {
                        m.count.inc();
                        m.bytes_sent.add(rep.bytes);
                        m.passes.add(rep.passes.into());
                        m.downtime_ms.add(rep.downtime.as_millis() as u64);
                        m.total_ms.add(rep.total.as_millis() as u64);
                        tracing::info!(
                            "migration: sent {} MiB in {} passes, {} ms in all, the guest paused \
                             {} ms{}",
                            rep.bytes >> 20,
                            rep.passes,
                            rep.total.as_millis(),
                            rep.downtime.as_millis(),
                            if rep.throttle_pct > 0 {
                                format!(" (vCPUs throttled to {}%)", 100 - rep.throttle_pct)
                            } else {
                                String::new()
                            }
                        );
                        *migrated = true;
                        Ok(VmResponse::Empty)
                    }
                    Err(e) => {
                        m.failures.inc();
                        tracing::warn!("migration: failed, the guest runs here still: {e}");
                        Err(e.into())
                    }
                }
            }
            VmRequest::ReceiveMigration(_) => Err(VmError::Started),
            VmRequest::GetInstanceInfo => Ok(info(if vm.is_paused() {
                InstanceState::Paused
            } else {
                InstanceState::Running
            })),
            VmRequest::GetVmConfig => Ok(VmResponse::VmConfig(Box::new(vm.config().clone()))),
            VmRequest::GetMachineConfig => Ok(VmResponse::MachineConfig(
                vm.config().machine_config.clone(),
            )),
            VmRequest::Pause => Ok(vm.pause().map(|_| VmResponse::Empty)?),
            VmRequest::Resume => {
                vm.resume();
                Ok(VmResponse::Empty)
            }
            VmRequest::GetBalloon => {
                let (Some(h), Some(b)) = (vm.balloon(), &vm.config().balloon) else {
                    return Err(VmError::NoBalloon);
                };
                Ok(VmResponse::Balloon(BalloonConfig {
                    amount_mib: h.target_mib(),
                    ..b.clone()
                }))
            }
            VmRequest::PatchBalloon(u) => {
                let (Some(h), Some(b)) = (vm.balloon().cloned(), vm.config().balloon.clone())
                else {
                    return Err(VmError::NoBalloon);
                };
                vm.config.set_balloon(BalloonConfig {
                    amount_mib: u.amount_mib,
                    ..b
                })?;
                h.set_target_mib(u.amount_mib);
                Ok(VmResponse::Empty)
            }
            VmRequest::GetBalloonStats => {
                let Some(h) = vm.balloon() else {
                    return Err(VmError::NoBalloon);
                };
                if vm
                    .config()
                    .balloon
                    .as_ref()
                    .is_none_or(|b| b.stats_polling_interval_s == 0)
                {
                    return Err(VmError::BalloonStatsDisabled);
                }
                let s = h.stats();
                let per_mib = devices::virtio::balloon::PAGES_PER_MIB;
                let guest: BTreeMap<&'static str, u64> = devices::virtio::balloon::STAT_NAMES
                    .iter()
                    .zip(s.tags)
                    .filter_map(|(n, v)| Some((*n, v?)))
                    .collect();
                Ok(VmResponse::BalloonStatistics(BalloonStatistics {
                    target_pages: s.target_pages,
                    actual_pages: s.actual_pages,
                    target_mib: s.target_pages / per_mib,
                    actual_mib: s.actual_pages / per_mib,
                    guest,
                }))
            }
            VmRequest::InstanceStart => Err(VmError::AlreadyRunning),
            VmRequest::FlushMetrics => match crate::metrics::flush() {
                Ok(true) => Ok(VmResponse::Empty),
                Ok(false) => Err(VmError::NoMetricsDestination),
                Err(e) => Err(VmError::FlushMetrics(e)),
            },
            VmRequest::SendCtrlAltDel => Ok(vm.send_ctrl_alt_del().map(|_| VmResponse::Empty)?),
            VmRequest::PatchDrive(d) => {
                if d.path_on_host.is_some() {
                    return Err(VmError::DrivePath);
                }
                let limiter = vm
                    .drive_limiter(&d.drive_id)
                    .ok_or_else(|| VmError::NoDrive(d.drive_id.clone()))?;
                if let (Some(l), Some(rl)) = (limiter, &d.rate_limiter) {
                    devices::sync::lock(l).patch(rl);
                }
                Ok(VmResponse::Empty)
            }
            VmRequest::PatchNetworkInterface(n) => {
                let ls = vm
                    .net_limiters(&n.iface_id)
                    .ok_or_else(|| VmError::NoNetworkInterface(n.iface_id.clone()))?;
                for (l, rl) in ls.iter().zip([&n.rx_rate_limiter, &n.tx_rate_limiter]) {
                    if let (Some(l), Some(rl)) = (l, rl) {
                        devices::sync::lock(l).patch(rl);
                    }
                }
                Ok(VmResponse::Empty)
            }
            VmRequest::CreateSnapshot(c) => {
                let diff = c.snapshot_type == SnapshotType::Diff;
                Ok(vm
                    .snapshot(&c.snapshot_path, &c.mem_file_path, diff)
                    .map(|_| VmResponse::Empty)?)
            }
            VmRequest::LoadSnapshot(_) => Err(VmError::LoadAfterConfig),
            VmRequest::PutBootSource(_)
            | VmRequest::PutMachineConfig(_)
            | VmRequest::PatchMachineConfig(_)
            | VmRequest::PutDrive(_)
            | VmRequest::PutNetworkInterface(_)
            | VmRequest::PutVsock(_)
            | VmRequest::PutBalloon(_)
            | VmRequest::PutEntropy(_) => Err(VmError::Started),
            r @ (VmRequest::PutLogger(_) | VmRequest::PutMetrics(_) | VmRequest::GetMetrics) => {
                common(r)
            }
        }
    }
}

/// The VM prepared ahead, or one to prepare now.
fn take_ahead(ahead: &mut Option<Ahead>, opts: &RunOptions) -> Ahead {
    ahead
        .take()
        .unwrap_or_else(|| Ahead::later(opts.skip_probe))
}

/// Requests every state answers the same way: the logger and metrics.
fn common(req: VmRequest) -> VmResult {
    match req {
        VmRequest::PutLogger(l) => (|| {
            if let Some(level) = &l.level {
                crate::logger::set_level(level)?;
            }
            if let Some(p) = &l.log_path {
                crate::logger::set_path(p).map_err(|err| VmError::File {
                    path: p.clone(),
                    err,
                })?;
            }
            Ok(VmResponse::Empty)
        })(),
        VmRequest::PutMetrics(m) => crate::metrics::set_path(&m.metrics_path)
            .map(|_| VmResponse::Empty)
            .map_err(|err| VmError::File {
                path: m.metrics_path.clone(),
                err,
            }),
        VmRequest::GetMetrics => Ok(VmResponse::Metrics(crate::metrics::prometheus())),
        _ => Err(VmError::Invalid("not a logger or metrics request".into())),
    }
}

fn info(state: InstanceState) -> VmResponse {
    VmResponse::InstanceInfo(InstanceInfo {
        app_name: "condo",
        id: "anonymous-instance",
        state,
        vmm_version: env!("CARGO_PKG_VERSION"),
    })
}

/// Reads console input into `pending`; false once stdin is closed.
fn read_stdin(pending: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 64];
    // SAFETY: reading into a stack buffer of the given length.
    let r = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    if r > 0 {
        pending.extend_from_slice(&buf[..r as usize]);
        return true;
    }
    r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
}

impl RequestHandler for Vmm {
    fn handle(&mut self, req: VmRequest) -> VmResult {
        match &mut self.state {
            State::Configuring { .. } => self.configure(req),
            State::Running(vm) => Self::control(vm, req, &mut self.migrated),
        }
    }
}

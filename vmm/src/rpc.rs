//! The one way into a VMM: typed requests, handled in one place.
//!
//! Every entry point (the command line, Firecracker's config file, the REST
//! API, and the host manager and live migration through the API) turns
//! what it was asked into [`VmRequest`]s for a [`RequestHandler`] (the
//! [`crate::controller::Vmm`]), and gets a [`VmResponse`] or a [`VmError`]
//! back. The HTTP server lives at the edge (`crate::api`), knows these types
//! and nothing of the VM; the VM knows nothing of either.
//!
//! Requests from other threads travel through a [`channel`]: the sender
//! blocks for the answer, the receiving side wakes the VMM's event loop
//! through an eventfd.

use std::path::PathBuf;
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{
    BalloonConfig, BalloonUpdate, BootSource, ConfigError, Drive, DriveUpdate, EntropyConfig,
    MachineConfig, MachineConfigUpdate, NetworkInterface, NetworkInterfaceUpdate, VmConfig,
    VsockConfig,
};

/// Everything a VMM can be asked.
#[derive(Debug)]
pub enum VmRequest {
    /// `GET /`: the instance's state.
    GetInstanceInfo,
    /// `GET /vm/config`.
    GetVmConfig,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /drives/{id}`.
    PutDrive(Drive),
    /// `PATCH /drives/{id}`.
    PatchDrive(DriveUpdate),
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface(NetworkInterface),
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(NetworkInterfaceUpdate),
    /// `PUT /vsock`.
    PutVsock(VsockConfig),
    /// `PUT /balloon`.
    PutBalloon(BalloonConfig),
    /// `PATCH /balloon`.
    PatchBalloon(BalloonUpdate),
    /// `GET /balloon`.
    GetBalloon,
    /// `GET /balloon/statistics`.
    GetBalloonStats,
    /// `PUT /entropy`.
    PutEntropy(EntropyConfig),
    /// `PUT /logger`.
    PutLogger(LoggerConfig),
    /// `PUT /metrics`.
    PutMetrics(MetricsConfig),
    /// `GET /metrics`: every counter as Prometheus text.
    GetMetrics,
    /// `InstanceStart`: boot the configured VM.
    InstanceStart,
    /// `FlushMetrics`.
    FlushMetrics,
    /// `SendCtrlAltDel`.
    SendCtrlAltDel,
    /// `PATCH /vm {"state": "Paused"}`.
    Pause,
    /// `PATCH /vm {"state": "Resumed"}`.
    Resume,
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreate),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoad),
    /// `PUT /migration/send`: move the running guest to another VMM.
    SendMigration(crate::migration::SendMigration),
    /// `PUT /migration/receive`: take a guest another VMM sends.
    ReceiveMigration(crate::migration::ReceiveMigration),
}

/// `PUT /logger`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    #[serde(default)]
    pub log_path: Option<PathBuf>,
    #[serde(default)]
    pub level: Option<String>,
    /// Accepted, no effect.
    #[serde(default)]
    pub show_level: Option<bool>,
    /// Accepted, no effect.
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    /// Accepted, no effect.
    #[serde(default)]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: PathBuf,
}

/// A full snapshot, or the pages written since the last one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum SnapshotType {
    #[default]
    Full,
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Firecracker's target version: accepted, unused.
    #[serde(default)]
    pub version: Option<String>,
}

/// Where a snapshot's memory comes from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    pub backend_path: PathBuf,
    pub backend_type: MemBackendType,
}

/// Memory backends: a file (`Uffd` is refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum MemBackendType {
    File,
    Uffd,
}

/// `PUT /snapshot/load`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoad {
    pub snapshot_path: PathBuf,
    #[serde(default)]
    pub mem_file_path: Option<PathBuf>,
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    #[serde(default)]
    pub resume_vm: Option<bool>,
}

impl SnapshotLoad {
    /// The memory file: exactly one of `mem_file_path` and a `File`
    /// `mem_backend`.
    pub fn mem_path(&self) -> Result<&std::path::Path, VmError> {
        match (&self.mem_file_path, &self.mem_backend) {
            (Some(p), None) => Ok(p),
            (None, Some(b)) if b.backend_type == MemBackendType::File => Ok(&b.backend_path),
            (None, Some(b)) => Err(VmError::Invalid(format!(
                "memory backend {:?} is not supported (File)",
                b.backend_type
            ))),
            _ => Err(VmError::Invalid(
                "give exactly one of mem_file_path and mem_backend".into(),
            )),
        }
    }
}

/// `GET /`.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceInfo {
    pub app_name: &'static str,
    pub id: &'static str,
    pub state: InstanceState,
    pub vmm_version: &'static str,
}

/// Where the VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum InstanceState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// `GET /balloon/statistics`.
#[derive(Clone, Debug, Serialize)]
pub struct BalloonStatistics {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub target_mib: u32,
    pub actual_mib: u32,
    /// The guest's figures it reported, by Firecracker's names.
    #[serde(flatten)]
    pub guest: std::collections::BTreeMap<&'static str, u64>,
}

/// What a request returns.
#[derive(Debug)]
pub enum VmResponse {
    /// Done; nothing to say.
    Empty,
    InstanceInfo(InstanceInfo),
    VmConfig(Box<VmConfig>),
    MachineConfig(MachineConfig),
    Balloon(BalloonConfig),
    BalloonStatistics(BalloonStatistics),
    /// Prometheus text.
    Metrics(String),
}

/// Why a request failed. Every one is the client's to fix (an API client
/// gets a 400 with this text as Firecracker's `fault_message`).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Cannot start microvm without kernel configuration.")]
    NoBootSource,
    #[error("The microVM is already running.")]
    AlreadyRunning,
    #[error("The requested operation is not supported before starting the microVM.")]
    NotStarted,
    #[error("The requested operation is not supported after starting the microVM.")]
    Started,
    #[error("Loading a microVM snapshot not allowed after configuring boot-specific resources.")]
    LoadAfterConfig,
    #[error("No balloon device configured.")]
    NoBalloon,
    #[error("Statistics for the balloon device are not enabled")]
    BalloonStatsDisabled,
    #[error("no drive {0:?}")]
    NoDrive(String),
    #[error("no network interface {0:?}")]
    NoNetworkInterface(String),
    #[error("changing a drive's path_on_host is not supported by condo yet")]
    DrivePath,
    #[error("no metrics destination: PUT /metrics first")]
    NoMetricsDestination,
    #[error("cannot write metrics: {0}")]
    FlushMetrics(std::io::Error),
    #[error("{path}: {err}")]
    File { path: PathBuf, err: std::io::Error },
    #[error("{0}")]
    Logger(#[from] crate::logger::LevelError),
    #[error(transparent)]
    Vmm(#[from] Box<crate::VmmError>),
    #[error(transparent)]
    Migration(#[from] crate::migration::MigrationError),
    #[error("{0}")]
    Invalid(String),
}

impl From<crate::VmmError> for VmError {
    fn from(e: crate::VmmError) -> Self {
        Self::Vmm(Box::new(e))
    }
}

/// Something that serves [`VmRequest`]s.
pub trait RequestHandler {
    /// Serves one request.
    fn handle(&mut self, req: VmRequest) -> Result<VmResponse, VmError>;
}

/// What a request gets back.
pub type VmResult = Result<VmResponse, VmError>;

/// A request waiting for the VMM's answer.
pub struct Pending {
    pub req: VmRequest,
    reply: mpsc::SyncSender<VmResult>,
}

impl Pending {
    /// Has `handler` serve the request, and sends the answer back.
    pub fn serve(self, handler: &mut impl RequestHandler) {
        let r = handler.handle(self.req);
        let _ = self.reply.send(r);
    }
}

/// The sending side of a [`channel`]; clone one per requesting thread.
#[derive(Clone)]
pub struct Requester {
    tx: mpsc::Sender<Pending>,
    wake: std::sync::Arc<EventFd>,
}

/// The VMM is gone (shutting down): no answer will come.
#[derive(Debug, thiserror::Error)]
#[error("the VMM is shutting down")]
pub struct Gone;

impl Requester {
    /// Sends `req` and waits for the VMM's answer.
    pub fn request(&self, req: VmRequest) -> Result<VmResult, Gone> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.tx.send(Pending { req, reply }).map_err(|_| Gone)?;
        self.wake.write(1).map_err(|_| Gone)?;
        answer.recv().map_err(|_| Gone)
    }
}

/// The receiving side of a [`channel`], polled by the VMM's event loop.
pub struct Inbox {
    rx: mpsc::Receiver<Pending>,
    wake: std::sync::Arc<EventFd>,
}

impl Inbox {
    /// Readable when requests wait.
    pub fn eventfd(&self) -> &EventFd {
        &self.wake
    }

    /// The next waiting request, if any.
    pub fn try_next(&self) -> Option<Pending> {
        self.rx.try_recv().ok()
    }

    /// Waits for the next request; None when every requester is gone.
    pub fn wait(&self) -> Option<Pending> {
        self.rx.recv().ok()
    }
}

/// A request channel into a VMM.
pub fn channel() -> std::io::Result<(Requester, Inbox)> {
    let wake = std::sync::Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let (tx, rx) = mpsc::channel();
    Ok((
        Requester {
            tx,
            wake: wake.clone(),
        },
        Inbox { rx, wake },
    ))
}

//! Firecracker's REST API on a Unix socket.
//!
//! The API thread accepts connections and parses requests; every request is
//! handed to the VMM thread (over a channel, waking its epoll through an
//! eventfd) and answered when the VMM has dealt with it, so the API never
//! touches the VM itself and never blocks the guest. Before the guest
//! starts, requests build its configuration ([`PreBoot`]); once it runs,
//! [`handle_running`] serves the runtime operations. Field names, status
//! codes and `{"fault_message": ...}` errors follow Firecracker's OpenAPI
//! spec.

pub mod http;

use crate::seccomp::ThreadKind;
use devices::sync::lock;
use std::io::BufReader;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::http::{read_request, HttpError, Request, Response};
use crate::config::{
    BootSource, Drive, EntropyConfig, FcBalloon, FcVsock, FirecrackerConfig, MachineConfig,
    NetworkInterface,
};
use crate::vm::Vm;
use crate::VmConfig;

/// Most API connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 32;

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API socket {path}: {err}")]
    Socket { path: PathBuf, err: std::io::Error },
}

/// A request waiting for the VMM's answer.
pub struct Pending {
    pub req: Request,
    reply: mpsc::SyncSender<Response>,
}

impl Pending {
    /// Sends the answer back to the connection.
    pub fn respond(self, r: Response) {
        let m = &crate::metrics::METRICS.api_server;
        m.requests_count.inc();
        if r.status >= 400 {
            m.failed_requests_count.inc();
        }
        let _ = self.reply.send(r);
    }
}

/// The running API server, as the VMM thread sees it.
pub struct ApiServer {
    rx: mpsc::Receiver<Pending>,
    evt: EventFd,
    path: PathBuf,
}

impl ApiServer {
    /// Listens on `path` (a stale socket nobody serves is replaced).
    pub fn start(path: &Path) -> Result<Self, ApiError> {
        let err = |err| ApiError::Socket {
            path: path.to_owned(),
            err,
        };
        let listener = devices::bind_unix_listener(path).map_err(err)?;
        let evt = EventFd::new(EFD_NONBLOCK).map_err(err)?;
        let wake = evt.try_clone().map_err(err)?;
        let (tx, rx) = mpsc::channel();
        crate::seccomp::spawn("api".into(), ThreadKind::Api, move || {
            accept_loop(listener, tx, wake)
        })
        .map_err(err)?;
        Ok(Self {
            rx,
            evt,
            path: path.to_owned(),
        })
    }

    /// Readable when requests wait.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// The next waiting request, if any.
    pub fn next(&self) -> Option<Pending> {
        self.rx.try_recv().ok()
    }

    /// Waits for the next request; None when the API thread is gone.
    pub fn wait(&self) -> Option<Pending> {
        self.rx.recv().ok()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, tx: mpsc::Sender<Pending>, wake: EventFd) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            let _ = Response::fault(503, "too many API connections").write_to(&mut stream);
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let (tx, wake, active) = (tx.clone(), wake.try_clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("api-conn".into())
            .stack_size(256 << 10)
            .spawn(move || {
                crate::seccomp::mark_thread(ThreadKind::Api);
                if let Ok(wake) = wake {
                    serve_connection(stream, &tx, &wake);
                }
                active.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            tracing::warn!("api: cannot start a connection thread");
        }
    }
}

fn serve_connection(stream: UnixStream, tx: &mpsc::Sender<Pending>, wake: &EventFd) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut input = BufReader::new(stream);
    loop {
        let req = match read_request(&mut input) {
            Ok(r) => r,
            Err(HttpError::Closed) | Err(HttpError::Io(_)) => return,
            Err(e) => {
                let _ = Response::fault(400, e).write_to(&mut out);
                return;
            }
        };
        let close = req.close;
        let (reply, answer) = mpsc::sync_channel(1);
        if tx.send(Pending { req, reply }).is_err() || wake.write(1).is_err() {
            return;
        }
        let Ok(resp) = answer.recv() else {
            let _ = Response::fault(503, "the VMM is shutting down").write_to(&mut out);
            return;
        };
        if resp.write_to(&mut out).is_err() || close {
            return;
        }
    }
}

/// SIGTERM, turned into a readable eventfd for the VMM's epoll.
pub struct StopSignals(EventFd);

static SIGTERM_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigterm(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = SIGTERM_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is a live 8-byte buffer.
        let _ = unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

impl StopSignals {
    /// Installs the SIGTERM handler.
    pub fn new() -> std::io::Result<Self> {
        let evt = EventFd::new(EFD_NONBLOCK)?;
        SIGTERM_FD.store(evt.as_raw_fd(), Ordering::Relaxed);
        vmm_sys_util::signal::register_signal_handler(libc::SIGTERM, on_sigterm)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        Ok(Self(evt))
    }

    /// Whether a SIGTERM arrived (clears it).
    pub fn read(&mut self) -> bool {
        self.0.read().is_ok()
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        SIGTERM_FD.store(-1, Ordering::Relaxed);
    }
}

fn parse<T: for<'de> Deserialize<'de>>(req: &Request) -> Result<T, Response> {
    serde_json::from_slice(&req.body)
        .map_err(|e| Response::fault(400, format!("bad request body: {e}")))
}

/// The path's `{id}` after `prefix/`.
fn path_id<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)?
        .strip_prefix('/')
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

fn invalid(req: &Request) -> Response {
    Response::fault(
        400,
        format!(
            "Invalid request method and/or path: {} {}.",
            req.method, req.path
        ),
    )
}

fn instance_info(state: &str) -> Response {
    Response::json(
        json!({
            "app_name": "condo",
            "id": "anonymous-instance",
            "state": state,
            "vmm_version": env!("CARGO_PKG_VERSION"),
        })
        .to_string(),
    )
}

/// Requests every state answers the same way.
fn common(req: &Request) -> Option<Response> {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/version") => Some(Response::json(
            json!({ "firecracker_version": env!("CARGO_PKG_VERSION") }).to_string(),
        )),
        ("PUT", "/logger") => Some(match parse::<LoggerConfig>(req) {
            Err(r) => r,
            Ok(l) => {
                let _ = (l.show_level, l.show_log_origin, l.module);
                let level = l.level.map_or(Ok(()), |lv| crate::logger::set_level(&lv));
                let path = l.log_path.map_or(Ok(()), |p| {
                    crate::logger::set_path(&p).map_err(|e| format!("{}: {e}", p.display()))
                });
                match level.and(path) {
                    Ok(()) => Response::no_content(),
                    Err(e) => Response::fault(400, e),
                }
            }
        }),
        ("PUT", "/metrics") => Some(match parse::<MetricsConfig>(req) {
            Err(r) => r,
            Ok(m) => match crate::metrics::set_path(&m.metrics_path) {
                Ok(()) => Response::no_content(),
                Err(e) => Response::fault(400, format!("{}: {e}", m.metrics_path.display())),
            },
        }),
        ("GET", "/metrics") => Some(Response::text(crate::metrics::prometheus())),
        ("PUT", "/mmds") | ("PUT", "/mmds/config") => Some(Response::fault(
            400,
            format!("{} is not supported by condo yet", req.path),
        )),
        _ => None,
    }
}

/// What the API has configured before the guest starts.
#[derive(Default)]
pub struct PreBoot {
    fc: FirecrackerConfig,
    has_boot_source: bool,
    /// Something was configured (a snapshot can no longer be loaded).
    configured: bool,
}

/// What the pre-boot handler decided.
pub enum PreBootOutcome {
    /// Answer the client.
    Reply(Response),
    /// InstanceStart with this configuration: boot it, then answer.
    Start(VmConfig),
    /// Load a snapshot, then answer.
    Restore {
        snapshot: PathBuf,
        mem: PathBuf,
        resume: bool,
        /// Track dirty pages in the restored VM (for diff snapshots).
        track_dirty: bool,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    action_type: String,
}

/// `PUT /logger`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggerConfig {
    #[serde(default)]
    log_path: Option<PathBuf>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    show_level: Option<bool>,
    #[serde(default)]
    show_log_origin: Option<bool>,
    #[serde(default)]
    module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsConfig {
    metrics_path: PathBuf,
}

/// `PUT /snapshot/create`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotCreate {
    snapshot_path: PathBuf,
    mem_file_path: PathBuf,
    #[serde(default)]
    snapshot_type: Option<String>,
    #[serde(default)]
    version: Option<String>,
}

/// `PUT /snapshot/load`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotLoad {
    snapshot_path: PathBuf,
    #[serde(default)]
    mem_file_path: Option<PathBuf>,
    #[serde(default)]
    mem_backend: Option<MemBackend>,
    #[serde(default)]
    enable_diff_snapshots: Option<bool>,
    #[serde(default)]
    track_dirty_pages: Option<bool>,
    #[serde(default)]
    resume_vm: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemBackend {
    backend_path: PathBuf,
    backend_type: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmState {
    state: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonUpdate {
    amount_mib: u32,
}

/// `PATCH /drives/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrivePatch {
    drive_id: String,
    path_on_host: Option<String>,
    rate_limiter: Option<devices::rate_limiter::RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetPatch {
    iface_id: String,
    rx_rate_limiter: Option<devices::rate_limiter::RateLimiterConfig>,
    tx_rate_limiter: Option<devices::rate_limiter::RateLimiterConfig>,
}

/// Machine configuration fields, all optional (PATCH /machine-config).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MachinePatch {
    vcpu_count: Option<u64>,
    mem_size_mib: Option<u64>,
    smt: Option<bool>,
    track_dirty_pages: Option<bool>,
    cpu_template: Option<serde_json::Value>,
    huge_pages: Option<crate::config::HugePages>,
}

impl PreBoot {
    /// A fresh configuration: 1 vCPU, 128 MiB, nothing else.
    pub fn new() -> Self {
        Self {
            fc: FirecrackerConfig {
                machine_config: MachineConfig::default(),
                ..FirecrackerConfig::default()
            },
            has_boot_source: false,
            configured: false,
        }
    }

    /// Serves one request before the guest starts.
    pub fn handle(&mut self, req: &Request) -> PreBootOutcome {
        use PreBootOutcome::Reply;
        if let Some(r) = common(req) {
            return Reply(r);
        }
        let r = match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => instance_info("Not started"),
            ("GET", "/machine-config") => json_of(&self.fc.machine_config),
            ("GET", "/vm/config") => json_of(&self.fc),
            ("PUT", "/boot-source") => match parse::<BootSource>(req) {
                Ok(b) => {
                    self.fc.boot_source = b;
                    self.has_boot_source = true;
                    Response::no_content()
                }
                Err(r) => r,
            },
            ("PUT", "/machine-config") => match parse::<MachineConfig>(req) {
                Ok(m) => self.set_machine(m),
                Err(r) => r,
            },
            ("PATCH", "/machine-config") => match parse::<MachinePatch>(req) {
                Ok(p) => {
                    let mut m = self.fc.machine_config.clone();
                    m.vcpu_count = p.vcpu_count.unwrap_or(m.vcpu_count);
                    m.mem_size_mib = p.mem_size_mib.unwrap_or(m.mem_size_mib);
                    m.smt = p.smt.or(m.smt);
                    m.track_dirty_pages = p.track_dirty_pages.or(m.track_dirty_pages);
                    m.cpu_template = p.cpu_template.or(m.cpu_template);
                    m.huge_pages = p.huge_pages.or(m.huge_pages);
                    self.set_machine(m)
                }
                Err(r) => r,
            },
            ("PUT", "/vsock") => match parse::<FcVsock>(req) {
                Ok(v) if v.guest_cid < 3 || v.guest_cid >= u64::from(u32::MAX) => {
                    Response::fault(400, format!("vsock guest CID {} is reserved", v.guest_cid))
                }
                Ok(v) => {
                    self.fc.vsock = Some(v);
                    Response::no_content()
                }
                Err(r) => r,
            },
            ("PUT", "/balloon") => match parse::<FcBalloon>(req) {
                Ok(b) => {
                    self.fc.balloon = Some(b);
                    Response::no_content()
                }
                Err(r) => r,
            },
            ("GET", "/balloon") => match &self.fc.balloon {
                Some(b) => json_of(b),
                None => Response::fault(400, "No balloon device configured."),
            },
            ("PUT", "/entropy") => match parse::<EntropyConfig>(req) {
                Ok(e) => {
                    self.fc.entropy = Some(e);
                    Response::no_content()
                }
                Err(r) => r,
            },
            ("PUT", "/actions") => match parse::<Action>(req) {
                Ok(a) if a.action_type == "InstanceStart" => return self.start(),
                Ok(a) if a.action_type == "FlushMetrics" || a.action_type == "SendCtrlAltDel" => {
                    Response::fault(
                        400,
                        "The requested operation is not supported before starting the microVM.",
                    )
                }
                Ok(a) => Response::fault(400, format!("unknown action_type {:?}", a.action_type)),
                Err(r) => r,
            },
            ("PUT", "/snapshot/load") => match parse::<SnapshotLoad>(req) {
                Err(r) => r,
                Ok(_) if self.configured => Response::fault(
                    400,
                    "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
                ),
                Ok(l) => {
                    let mem = match (l.mem_file_path, l.mem_backend) {
                        (Some(p), None) => p,
                        (None, Some(b)) if b.backend_type == "File" => b.backend_path,
                        (None, Some(b)) => {
                            return Reply(Response::fault(
                                400,
                                format!("memory backend {:?} is not supported (File)", b.backend_type),
                            ))
                        }
                        _ => {
                            return Reply(Response::fault(
                                400,
                                "give exactly one of mem_file_path and mem_backend",
                            ))
                        }
                    };
                    return PreBootOutcome::Restore {
                        snapshot: l.snapshot_path,
                        mem,
                        resume: l.resume_vm.unwrap_or(false),
                        track_dirty: l.enable_diff_snapshots.unwrap_or(false)
                            || l.track_dirty_pages.unwrap_or(false),
                    };
                }
            },
            ("PUT", "/snapshot/create") => Response::fault(
                400,
                "The requested operation is not supported before starting the microVM.",
            ),
            ("PATCH", "/vm")
            | ("PATCH", "/balloon")
            | ("GET", "/balloon/statistics")
            | ("PATCH", "/balloon/statistics") => Response::fault(
                400,
                "The requested operation is not supported before starting the microVM.",
            ),
            ("PUT", p) if path_id(p, "/drives").is_some() => match parse::<Drive>(req) {
                Ok(d) if Some(d.drive_id.as_str()) != path_id(p, "/drives") => Response::fault(
                    400,
                    "The id from the path does not match the id from the body!",
                ),
                Ok(d) => {
                    let drives = self.fc.drives.get_or_insert_with(Vec::new);
                    match drives.iter_mut().find(|x| x.drive_id == d.drive_id) {
                        Some(x) => *x = d,
                        None => drives.push(d),
                    }
                    Response::no_content()
                }
                Err(r) => r,
            },
            ("PUT", p) if path_id(p, "/network-interfaces").is_some() => {
                match parse::<NetworkInterface>(req) {
                    Ok(n) if Some(n.iface_id.as_str()) != path_id(p, "/network-interfaces") => {
                        Response::fault(
                            400,
                            "The id from the path does not match the id from the body!",
                        )
                    }
                    Ok(n) => {
                        let nets = self.fc.network_interfaces.get_or_insert_with(Vec::new);
                        match nets.iter_mut().find(|x| x.iface_id == n.iface_id) {
                            Some(x) => *x = n,
                            None => nets.push(n),
                        }
                        Response::no_content()
                    }
                    Err(r) => r,
                }
            }
            _ => invalid(req),
        };
        if req.method != "GET" && r.status == 204 {
            self.configured = true;
        }
        Reply(r)
    }

    fn set_machine(&mut self, m: MachineConfig) -> Response {
        if m.vcpu_count == 0 || m.vcpu_count > u64::from(crate::config::MAX_VCPUS) {
            return Response::fault(400, crate::ConfigError::VcpuCount(m.vcpu_count));
        }
        if !(crate::config::MIN_MEM_MIB..=crate::config::MAX_MEM_MIB).contains(&m.mem_size_mib) {
            return Response::fault(400, crate::ConfigError::MemSize(m.mem_size_mib));
        }
        if m.smt == Some(true) {
            return Response::fault(400, crate::ConfigError::Smt);
        }
        self.fc.machine_config = m;
        Response::no_content()
    }

    fn start(&self) -> PreBootOutcome {
        if !self.has_boot_source {
            return PreBootOutcome::Reply(Response::fault(
                400,
                "Cannot start microvm without kernel configuration.",
            ));
        }
        match VmConfig::from_firecracker(self.fc.clone()) {
            Ok(c) => PreBootOutcome::Start(c),
            Err(e) => PreBootOutcome::Reply(Response::fault(400, e)),
        }
    }
}

/// Runs a VM driven by the API on `server`: `initial` boots at once (a
/// config file or flags); without it the VM is configured over the API and
/// boots on InstanceStart. Returns when the guest ends.
pub fn run(
    server: &ApiServer,
    initial: Option<VmConfig>,
    opts: crate::RunOptions,
) -> Result<crate::VmExit, crate::VmmError> {
    let mut vm = match initial {
        Some(c) => Vm::boot(&c, opts)?,
        None => {
            let mut pre = PreBoot::new();
            loop {
                let Some(p) = server.wait() else {
                    return Err(crate::VmmError::EventLoop(std::io::Error::other(
                        "the API thread stopped",
                    )));
                };
                match pre.handle(&p.req) {
                    PreBootOutcome::Reply(r) => p.respond(r),
                    PreBootOutcome::Start(c) => match Vm::boot(&c, opts) {
                        Ok(vm) => {
                            p.respond(Response::no_content());
                            break vm;
                        }
                        Err(e) => {
                            tracing::warn!("InstanceStart failed: {e}");
                            p.respond(Response::fault(400, e));
                        }
                    },
                    PreBootOutcome::Restore {
                        snapshot,
                        mem,
                        resume,
                        track_dirty,
                    } => match Vm::restore(&snapshot, &mem, resume, track_dirty, opts) {
                        Ok(vm) => {
                            p.respond(Response::no_content());
                            break vm;
                        }
                        Err(e) => {
                            tracing::warn!("snapshot load failed: {e}");
                            p.respond(Response::fault(400, e));
                        }
                    },
                }
            }
        }
    };
    vm.event_loop(opts, Some(server))
}

fn json_of(v: &impl serde::Serialize) -> Response {
    match serde_json::to_string(v) {
        Ok(s) => Response::json(s),
        Err(e) => Response::fault(500, e),
    }
}

const AFTER_START: &str = "The requested operation is not supported after starting the microVM.";

/// Serves one request while the guest runs (or is paused).
pub fn handle_running(vm: &mut Vm, req: &Request) -> Response {
    if let Some(r) = common(req) {
        return r;
    }
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/") => instance_info(if vm.is_paused() { "Paused" } else { "Running" }),
        ("GET", "/machine-config") => json_of(&vm.config().to_firecracker().machine_config),
        ("GET", "/vm/config") => json_of(&vm.config().to_firecracker()),
        ("PATCH", "/vm") => match parse::<VmState>(req) {
            Ok(s) if s.state == "Paused" => match vm.pause() {
                Ok(()) => Response::no_content(),
                Err(e) => Response::fault(400, e),
            },
            Ok(s) if s.state == "Resumed" => {
                vm.resume();
                Response::no_content()
            }
            Ok(s) => Response::fault(
                400,
                format!("unknown state {:?} (Paused, Resumed)", s.state),
            ),
            Err(r) => r,
        },
        ("GET", "/balloon") => match (vm.balloon(), &vm.config().to_firecracker().balloon) {
            (Some(h), Some(b)) => {
                let mut b = b.clone();
                b.amount_mib = h.target_mib();
                json_of(&b)
            }
            _ => Response::fault(400, "No balloon device configured."),
        },
        ("PATCH", "/balloon") => match (vm.balloon(), parse::<BalloonUpdate>(req)) {
            (_, Err(r)) => r,
            (None, _) => Response::fault(400, "No balloon device configured."),
            (Some(_), Ok(u)) if u64::from(u.amount_mib) > vm.config().mem_mib => Response::fault(
                400,
                format!(
                    "balloon size {} MiB is larger than guest memory ({} MiB)",
                    u.amount_mib,
                    vm.config().mem_mib
                ),
            ),
            (Some(h), Ok(u)) => {
                h.set_target_mib(u.amount_mib);
                Response::no_content()
            }
        },
        ("GET", "/balloon/statistics") => match vm.balloon() {
            None => Response::fault(400, "No balloon device configured."),
            Some(_)
                if vm
                    .config()
                    .balloon
                    .as_ref()
                    .is_none_or(|b| b.stats_polling_interval_s == 0) =>
            {
                Response::fault(400, "Statistics for the balloon device are not enabled")
            }
            Some(h) => {
                let s = h.stats();
                let mut v = json!({
                    "target_pages": s.target_pages,
                    "actual_pages": s.actual_pages,
                    "target_mib": s.target_pages / 256,
                    "actual_mib": s.actual_pages / 256,
                });
                for (name, val) in devices::virtio::balloon::STAT_NAMES.iter().zip(s.tags) {
                    if let Some(val) = val {
                        v[*name] = json!(val);
                    }
                }
                Response::json(v.to_string())
            }
        },
        ("PUT", "/actions") => match parse::<Action>(req) {
            Ok(a) if a.action_type == "InstanceStart" => {
                Response::fault(400, "The microVM is already running.")
            }
            Ok(a) if a.action_type == "FlushMetrics" => match crate::metrics::flush() {
                Ok(true) => Response::no_content(),
                Ok(false) => Response::fault(400, "no metrics destination: PUT /metrics first"),
                Err(e) => Response::fault(400, format!("cannot write metrics: {e}")),
            },
            Ok(a) if a.action_type == "SendCtrlAltDel" => match vm.send_ctrl_alt_del() {
                Ok(()) => Response::no_content(),
                Err(e) => Response::fault(400, format!("cannot send Ctrl+Alt+Del: {e}")),
            },
            Ok(a) => Response::fault(400, format!("unknown action_type {:?}", a.action_type)),
            Err(r) => r,
        },
        ("PATCH", p) if path_id(p, "/drives").is_some() => match parse::<DrivePatch>(req) {
            Err(r) => r,
            Ok(d) if Some(d.drive_id.as_str()) != path_id(p, "/drives") => Response::fault(
                400,
                "The id from the path does not match the id from the body!",
            ),
            Ok(d) if d.path_on_host.is_some() => Response::fault(
                400,
                "changing a drive's path_on_host is not supported by condo yet",
            ),
            Ok(d) => match vm.drive_limiter(&d.drive_id) {
                None => Response::fault(400, format!("no drive {:?}", d.drive_id)),
                Some(l) => {
                    if let Some(rl) = &d.rate_limiter {
                        lock(l).patch(rl);
                    }
                    Response::no_content()
                }
            },
        },
        ("PATCH", p) if path_id(p, "/network-interfaces").is_some() => {
            match parse::<NetPatch>(req) {
                Err(r) => r,
                Ok(n) if Some(n.iface_id.as_str()) != path_id(p, "/network-interfaces") => {
                    Response::fault(
                        400,
                        "The id from the path does not match the id from the body!",
                    )
                }
                Ok(n) => match vm.net_limiters(&n.iface_id) {
                    None => Response::fault(400, format!("no network interface {:?}", n.iface_id)),
                    Some(ls) => {
                        for (l, rl) in ls.iter().zip([&n.rx_rate_limiter, &n.tx_rate_limiter]) {
                            if let (Some(l), Some(rl)) = (l, rl) {
                                lock(l).patch(rl);
                            }
                        }
                        Response::no_content()
                    }
                },
            }
        }
        ("PUT", "/snapshot/create") => match parse::<SnapshotCreate>(req) {
            Err(r) => r,
            Ok(c)
                if !matches!(
                    c.snapshot_type.as_deref(),
                    None | Some("Full") | Some("Diff")
                ) =>
            {
                Response::fault(
                    400,
                    format!("unknown snapshot type {:?} (Full, Diff)", c.snapshot_type),
                )
            }
            Ok(c) => {
                let _ = c.version;
                let diff = c.snapshot_type.as_deref() == Some("Diff");
                match vm.snapshot(&c.snapshot_path, &c.mem_file_path, diff) {
                    Ok(()) => Response::no_content(),
                    Err(e) => Response::fault(400, e),
                }
            }
        },
        ("PUT", "/snapshot/load") => Response::fault(
            400,
            "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
        ),
        ("PUT", _) => Response::fault(400, AFTER_START),
        _ => invalid(req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            close: false,
        }
    }

    fn status(o: PreBootOutcome) -> (u16, String) {
        match o {
            PreBootOutcome::Reply(r) => (r.status, r.body.unwrap_or_default()),
            PreBootOutcome::Start(_) | PreBootOutcome::Restore { .. } => (0, String::new()),
        }
    }

    #[test]
    fn configure_then_start() {
        let mut p = PreBoot::new();
        assert_eq!(
            status(p.handle(&req(
                "PUT",
                "/actions",
                r#"{"action_type": "InstanceStart"}"#
            )))
            .0,
            400,
            "no kernel yet"
        );
        for (m, path, body) in [
            (
                "PUT",
                "/boot-source",
                r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0"}"#,
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
            ),
            ("PATCH", "/machine-config", r#"{"mem_size_mib": 512}"#),
            (
                "PUT",
                "/drives/root",
                r#"{"drive_id": "root", "path_on_host": "/r", "is_root_device": true}"#,
            ),
            (
                "PUT",
                "/drives/root",
                r#"{"drive_id": "root", "path_on_host": "/r2", "is_root_device": true}"#,
            ),
            ("PUT", "/vsock", r#"{"guest_cid": 3, "uds_path": "/v"}"#),
            (
                "PUT",
                "/balloon",
                r#"{"amount_mib": 0, "deflate_on_oom": true}"#,
            ),
            ("PUT", "/entropy", "{}"),
        ] {
            assert_eq!(status(p.handle(&req(m, path, body))).0, 204, "{m} {path}");
        }
        match p.handle(&req(
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
        )) {
            PreBootOutcome::Start(c) => {
                assert_eq!((c.vcpus, c.mem_mib, c.disks.len()), (2, 512, 1));
                assert_eq!(c.disks[0].path, PathBuf::from("/r2"));
                assert!(c.entropy && c.vsock.is_some() && c.balloon.is_some());
            }
            PreBootOutcome::Reply(r) => panic!("{r:?}"),
            PreBootOutcome::Restore { .. } => panic!("not a restore"),
        }
    }

    #[test]
    fn bad_requests_get_400_with_a_fault_message() {
        let mut p = PreBoot::new();
        for (m, path, body) in [
            ("PUT", "/machine-config", "{not json"),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 0, "mem_size_mib": 128}"#,
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 1}"#,
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 128, "bogus": 1}"#,
            ),
            (
                "PUT",
                "/drives/a",
                r#"{"drive_id": "b", "path_on_host": "/r", "is_root_device": false}"#,
            ),
            ("PUT", "/drives/", r#"{}"#),
            ("PUT", "/vsock", r#"{"guest_cid": 2, "uds_path": "/v"}"#),
            ("DELETE", "/", ""),
            ("GET", "/nothing", ""),
            ("PATCH", "/vm", r#"{"state": "Paused"}"#),
            ("PUT", "/actions", r#"{"action_type": "Dance"}"#),
            ("PUT", "/snapshot/create", "{}"),
            ("PUT", "/snapshot/load", r#"{"snapshot_path": "/s"}"#),
            (
                "PUT",
                "/snapshot/load",
                r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#,
            ),
        ] {
            let (code, body) = status(p.handle(&req(m, path, body)));
            assert_eq!(code, 400, "{m} {path}");
            assert!(body.contains("fault_message"), "{m} {path}: {body}");
        }
        let (code, body) = status(p.handle(&req("GET", "/", "")));
        assert_eq!(code, 200);
        assert!(body.contains("Not started"));
    }
}

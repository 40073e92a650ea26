//! The guests' lifecycle: create, start, stop, restart, pause, resume,
//! snapshot, clone, delete; admission control; supervision (a guest that
//! ended is noticed, marked stopped or crashed, and restarted as its
//! policy says, with back-off); and adoption when the daemon starts (the
//! guests outlive the daemon: a running one is adopted as it is, one that
//! died meanwhile is marked crashed, a half-done create or delete is
//! finished or rolled back, and anything of this state directory that no
//! guest owns, a process, a namespace, a cgroup, a directory, is removed).
//!
//! Each guest runs as its own `condo jail` process (a new session, so it
//! outlives the daemon), with its own uid, cgroup and network namespace;
//! the daemon talks to its VMM through the API socket only. Every in-jail
//! path is the same for all guests (`/vm/kernel`, `/vm/disk`, `/run/...`),
//! so a snapshot of one guest restores in another's jail.
//!
//! Locking: one mutex per guest serializes the operations on it (held
//! across waits on the VMM); the database mutex is only held for a query
//! or a transaction, never while waiting on a process.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cgroup;
use crate::config::{DaemonConfig, Subnet};
use crate::db::{self, Db, GuestRow, Pools, SnapshotRow};
use crate::disk;
use crate::error::{io_err, Error, Result};
use crate::events::Events;
use crate::model::{
    check_name, CloneRequest, DeleteRequest, GuestSpec, GuestState, ImageSpec, RestartPolicy,
    SnapshotRequest,
};
use crate::net::Network;
use crate::procfs;
use crate::vmm::VmmApi;

/// How long a VMM has to answer its API after its jail was started.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a VMM has to end after SIGTERM before it is killed.
const TERM_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest back-off between automatic restarts.
const MAX_BACKOFF_S: u64 = 60;
/// A guest that ran this long before it ended restarts without back-off.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How long a clone's agent has to take its own address after restore.
const CLONE_READDRESS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a guest being snapshotted has to show it has an agent.
const AGENT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The file in a snapshot's directory saying its guest had an agent.
const AGENT_MARKER: &str = "agent";

/// The state directory's layout.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state: PathBuf,
}

impl Paths {
    pub fn db(&self) -> PathBuf {
        self.state.join("condo.db")
    }
    pub fn lock(&self) -> PathBuf {
        self.state.join("daemon.lock")
    }
    pub fn images(&self) -> PathBuf {
        self.state.join("images")
    }
    pub fn image(&self, name: &str) -> PathBuf {
        self.images().join(name)
    }
    pub fn guests(&self) -> PathBuf {
        self.state.join("guests")
    }
    pub fn guest(&self, id: i64) -> PathBuf {
        self.guests().join(id.to_string())
    }
    pub fn disk(&self, id: i64) -> PathBuf {
        self.guest(id).join("disk")
    }
    pub fn console_sock(&self, id: i64) -> PathBuf {
        self.guest(id).join("console.sock")
    }
    pub fn console_log(&self, id: i64) -> PathBuf {
        self.guest(id).join("console.log")
    }
    pub fn exit_file(&self, id: i64) -> PathBuf {
        self.guest(id).join("exit")
    }
    pub fn vmm_log(&self, id: i64) -> PathBuf {
        self.guest(id).join("vmm.log")
    }
    pub fn snapshots(&self) -> PathBuf {
        self.state.join("snapshots")
    }
    pub fn snapshot(&self, name: &str) -> PathBuf {
        self.snapshots().join(name)
    }
    pub fn kept(&self) -> PathBuf {
        self.state.join("kept")
    }
    /// The jails' base directory (`condo jail --chroot-base-dir`).
    pub fn jail_base(&self) -> PathBuf {
        self.state.join("jail")
    }
    pub fn jail_dir(&self, id: i64) -> PathBuf {
        self.jail_base().join("condo").join(jail_id(id))
    }
    pub fn jail_root(&self, id: i64) -> PathBuf {
        self.jail_dir(id).join("root")
    }
    /// The guest's VMM API socket as the host sees it.
    pub fn api_sock(&self, id: i64) -> PathBuf {
        self.jail_root(id).join("run/api.sock")
    }
    /// The guest's vsock (hybrid, Unix socket side) as the host sees it.
    pub fn vsock(&self, id: i64) -> PathBuf {
        self.jail_root(id).join("run/vsock.sock")
    }
}

/// The jail id (and cgroup name) of guest `id`.
pub fn jail_id(id: i64) -> String {
    format!("vm{id}")
}

/// The host's capacity.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct HostInfo {
    pub cpus: u32,
    pub memory_mib: u64,
}

impl HostInfo {
    pub fn detect() -> Self {
        // SAFETY: no arguments.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u32;
        let memory_mib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            / 1024;
        Self { cpus, memory_mib }
    }
}

/// The last accounting sample of a running guest.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct GuestStats {
    pub t_ms: i64,
    /// CPU time since the guest's VMM started (its cgroup's counter).
    pub cpu_time_us: u64,
    /// CPU use over the last interval, in % of one host CPU.
    pub cpu_pct: f64,
    pub rss_bytes: u64,
    /// Guest RAM the guest has touched (resident in the VMM).
    pub touched_bytes: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub oom_kills: u64,
}

/// A guest as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestInfo {
    pub id: i64,
    pub name: String,
    pub state: GuestState,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub uid: u32,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub exit_status: Option<i32>,
    pub autostart: bool,
    pub restart: RestartPolicy,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    #[serde(default)]
    pub stats: Option<GuestStats>,
    pub spec: GuestSpec,
    /// Where a moved (or migrating) guest went: the destination daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
}

/// Capacity, commitments and use: `GET /host`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostReport {
    pub cpus: u32,
    pub memory_mib: u64,
    pub cpu_overcommit: f64,
    pub memory_overcommit: f64,
    pub guests: u64,
    pub running: u64,
    pub committed_vcpus: u64,
    pub committed_memory_mib: u64,
    /// The guests' CPU use over the last interval over the host's CPUs, %.
    pub cpu_utilization_pct: f64,
    /// The guests' resident memory, MiB.
    pub guest_rss_mib: u64,
    pub memory_available_mib: u64,
}

/// What the daemon does with guests.
pub struct Manager {
    pub cfg: DaemonConfig,
    pub paths: Paths,
    db: Mutex<Db>,
    pub net: Option<Network>,
    pub cgroups: cgroup::Layout,
    pub events: Events,
    pub host: HostInfo,
    pub stats: Mutex<HashMap<i64, GuestStats>>,
    pub(crate) locks: Mutex<HashMap<i64, Arc<Mutex<()>>>>,
    /// Jail processes this daemon started (it reaps them).
    children: Mutex<Vec<i32>>,
    pub(crate) restart_at: Mutex<HashMap<i64, Instant>>,
    condo_bin: PathBuf,
    /// `condo kvm-check` passed when the daemon started: the jailed VMMs
    /// (which cannot see the host's kept verdict) skip the probe.
    kvm_ok: std::sync::atomic::AtomicBool,
    /// Receiving slots of live migrations into this daemon, by id.
    pub(crate) slots: Mutex<HashMap<String, Arc<crate::migrate::Slot>>>,
    /// The cluster key (`--peer-key-file`), sent to other daemons' TCP
    /// ports and asked of requests on ours.
    pub peer_key: Option<crate::peer::PeerKey>,
}

/// How a guest's VMM starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Boot<'a> {
    /// From its kernel (and disk).
    Cold,
    /// From a snapshot's state and memory (a clone's first start).
    Restore(&'a Path),
    /// Empty, to receive the guest of a live migration.
    Receive,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The kernel command line a guest boots with: the daemon's part first,
/// the user's after (words after a ` -- ` go to the guest's init).
pub fn compose_cmdline(ip_arg: Option<&str>, user: Option<&str>) -> String {
    let mut s = String::from("console=ttyS0 reboot=k panic=1");
    if let Some(ip) = ip_arg {
        s.push(' ');
        s.push_str(ip);
    }
    if let Some(u) = user.map(str::trim).filter(|u| !u.is_empty()) {
        s.push(' ');
        s.push_str(u);
    }
    s
}

impl Manager {
    pub fn new(cfg: DaemonConfig, subnet: Subnet, db: Db) -> Result<Self> {
        let net = if cfg.no_network {
            None
        } else {
            let mut n = Network::new(&cfg.bridge, subnet, !cfg.no_nat)?;
            if let Some(r) = &cfg.address_range {
                n.hosts = subnet.range(r)?;
            }
            Some(n)
        };
        let peer_key = cfg
            .peer_key_file
            .as_deref()
            .map(crate::peer::PeerKey::load)
            .transpose()?;
        let condo_bin = match &cfg.condo_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| Error::Other(format!("cannot find the condo binary: {e}")))?,
        };
        Ok(Self {
            cgroups: cgroup::Layout::detect(&cfg.cgroup_parent),
            paths: Paths {
                state: cfg.state_dir.clone(),
            },
            cfg,
            db: Mutex::new(db),
            net,
            events: Events::default(),
            host: HostInfo::detect(),
            stats: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            children: Mutex::new(Vec::new()),
            restart_at: Mutex::new(HashMap::new()),
            condo_bin,
            kvm_ok: std::sync::atomic::AtomicBool::new(false),
            slots: Mutex::new(HashMap::new()),
            peer_key,
        })
    }

    /// The binary a guest's jail starts as: the lean `condo-vmm` beside
    /// condo when it is there (the full binary would only exec it: one
    /// program load fewer per start), else condo itself.
    fn jail_bin(&self) -> PathBuf {
        let lean = self.condo_bin.with_file_name("condo-vmm");
        if lean.is_file() {
            lean
        } else {
            self.condo_bin.clone()
        }
    }

    /// Runs `condo kvm-check` once: when this host's KVM can run guests,
    /// the guests' VMMs skip their own probe (each would otherwise probe
    /// again: the host's kept verdict is outside their jail). Otherwise
    /// they probe, and a guest's start fails with the probe's one line.
    pub fn check_kvm(&self) {
        let ok = std::process::Command::new(&self.condo_bin)
            .arg("kvm-check")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            tracing::warn!("condo kvm-check failed: guests will not start on this host's KVM");
        }
        self.kvm_ok.store(ok, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn db(&self) -> MutexGuard<'_, Db> {
        lock(&self.db)
    }

    pub(crate) fn guest_lock(&self, id: i64) -> Arc<Mutex<()>> {
        lock(&self.locks).entry(id).or_default().clone()
    }

    pub(crate) fn api(&self, id: i64) -> VmmApi {
        VmmApi::new(&self.paths.api_sock(id))
    }

    // Queries.

    pub fn info(&self, g: &GuestRow) -> GuestInfo {
        GuestInfo {
            id: g.id,
            name: g.name.clone(),
            state: g.state,
            vcpus: g.spec.vcpus,
            memory_mib: g.spec.memory_mib,
            ip: g.ip.map(|a| a.to_string()),
            mac: g.mac.clone(),
            uid: g.uid,
            pid: g.pid,
            restarts: g.restarts,
            exit_status: g.exit_status,
            autostart: g.spec.autostart,
            restart: g.spec.restart,
            created_ms: g.created_ms,
            started_ms: g.started_ms,
            stats: if g.state.has_process() {
                lock(&self.stats).get(&g.id).copied()
            } else {
                None
            },
            spec: g.spec.clone(),
            moved_to: g.migration.as_ref().and_then(|n| n.to.clone()),
        }
    }

    pub fn list(&self) -> Result<Vec<GuestInfo>> {
        let rows = self.db().guests()?;
        Ok(rows.iter().map(|g| self.info(g)).collect())
    }

    pub fn get(&self, name: &str) -> Result<GuestInfo> {
        let g = self.db().guest(name)?;
        Ok(self.info(&g))
    }

    pub fn host_report(&self) -> Result<HostReport> {
        let rows = self.db().guests()?;
        let stats = lock(&self.stats).clone();
        let mut r = HostReport {
            cpus: self.host.cpus,
            memory_mib: self.host.memory_mib,
            cpu_overcommit: self.cfg.cpu_overcommit,
            memory_overcommit: self.cfg.memory_overcommit,
            guests: 0,
            running: 0,
            committed_vcpus: 0,
            committed_memory_mib: 0,
            cpu_utilization_pct: 0.0,
            guest_rss_mib: 0,
            memory_available_mib: meminfo("MemAvailable:") / 1024,
        };
        let mut cpu = 0.0;
        let mut rss = 0;
        for g in &rows {
            r.guests += 1;
            r.committed_vcpus += u64::from(g.spec.vcpus);
            r.committed_memory_mib += g.spec.memory_mib;
            if g.state.has_process() {
                r.running += 1;
                if let Some(s) = stats.get(&g.id) {
                    cpu += s.cpu_pct;
                    rss += s.rss_bytes;
                }
            }
        }
        r.cpu_utilization_pct = cpu / f64::from(self.host.cpus.max(1));
        r.guest_rss_mib = rss >> 20;
        Ok(r)
    }

    // Admission.

    /// Refuses guests whose vCPUs or memory would take the host's
    /// commitments past its overcommit ratios.
    pub(crate) fn admit(&self, tx: &rusqlite::Connection, new: &[GuestSpec]) -> Result<()> {
        let c = Db::commitments_of(tx)?;
        let add_cpu: u64 = new.iter().map(|s| u64::from(s.vcpus)).sum();
        let add_mem: u64 = new.iter().map(|s| s.memory_mib).sum();
        let cpu_cap = (f64::from(self.host.cpus) * self.cfg.cpu_overcommit).floor() as u64;
        let mem_cap = (self.host.memory_mib as f64 * self.cfg.memory_overcommit).floor() as u64;
        let what = if new.len() == 1 {
            "this guest".to_owned()
        } else {
            format!("these {} guests", new.len())
        };
        if c.vcpus + add_cpu > cpu_cap {
            return Err(Error::invalid(format!(
                "admission refused: {what} would commit {} vCPUs ({} committed + {add_cpu}), past the host's {cpu_cap} ({} CPUs x cpu_overcommit {})",
                c.vcpus + add_cpu,
                c.vcpus,
                self.host.cpus,
                self.cfg.cpu_overcommit
            )));
        }
        if c.memory_mib + add_mem > mem_cap {
            return Err(Error::invalid(format!(
                "admission refused: {what} would commit {} MiB of memory ({} MiB committed + {add_mem} MiB), past the host's {mem_cap} MiB ({} MiB x memory_overcommit {})",
                c.memory_mib + add_mem,
                c.memory_mib,
                self.host.memory_mib,
                self.cfg.memory_overcommit
            )));
        }
        Ok(())
    }

    pub(crate) fn pools(&self) -> Pools {
        Pools {
            uid_base: self.cfg.uid_base,
            uid_count: self.cfg.uid_count,
            net: self.net.as_ref().map(|n| (n.subnet, n.hosts.clone())),
        }
    }

    /// Fills a specification's kernel, initrd, root image and command
    /// line from its image, and checks the files.
    fn resolve(&self, mut spec: GuestSpec) -> Result<GuestSpec> {
        spec.validate()?;
        if let Some(name) = &spec.image {
            let img = self.db().image(name).map_err(|e| match e {
                Error::NotFound(m) => Error::invalid(m),
                e => e,
            })?;
            if spec.kernel.is_none() {
                spec.kernel = img.spec.kernel.clone();
                if spec.initrd.is_none() {
                    spec.initrd = img.spec.initrd.clone();
                }
            }
            if spec.rootfs.is_none() {
                spec.rootfs = img.spec.rootfs.clone();
            }
            spec.cmdline = match (img.spec.cmdline, spec.cmdline.take()) {
                (Some(a), Some(b)) => Some(format!("{a} {b}")),
                (a, b) => b.or(a),
            };
        }
        if spec.kernel.is_none() {
            return Err(Error::invalid(format!(
                "image {:?} has no kernel: give one",
                spec.image.as_deref().unwrap_or_default()
            )));
        }
        spec.net = Some(spec.net.unwrap_or(self.net.is_some()));
        if spec.has_net() && self.net.is_none() {
            return Err(Error::invalid(
                "this daemon runs without a network (--no-network): create the guest without one",
            ));
        }
        spec.validate()?;
        spec.check_files()?;
        Ok(spec)
    }

    // Create.

    /// Creates a guest (and starts it when its spec says so).
    pub fn create(&self, spec: GuestSpec) -> Result<GuestInfo> {
        let spec = self.resolve(spec)?;
        let alloc = {
            let pools = self.pools();
            let mut db = self.db();
            db.transaction(|tx| {
                self.admit(tx, std::slice::from_ref(&spec))?;
                Db::insert_guests(tx, std::slice::from_ref(&spec), &pools, None)
            })?
        };
        let a = &alloc[0];
        if let Err(e) = self.prepare_files(&spec, a.id, a.uid, None) {
            self.rollback_create(a.id);
            return Err(e);
        }
        self.db().set_state(a.id, GuestState::Stopped)?;
        self.events.emit(&spec.name, "created", "");
        if spec.start {
            self.start(&spec.name)
        } else {
            self.get(&spec.name)
        }
    }

    /// The guest's directory and writable disk (a clone of `from`, or of
    /// its root image, or empty).
    fn prepare_files(
        &self,
        spec: &GuestSpec,
        id: i64,
        uid: u32,
        from: Option<&Path>,
    ) -> Result<()> {
        let dir = self.paths.guest(id);
        fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod {}", dir.display())))?;
        let disk = self.paths.disk(id);
        let source = from.map(Path::to_path_buf).or_else(|| spec.rootfs.clone());
        match (source, spec.disk_mib) {
            (Some(src), size) => {
                disk::clone_file(&src, &disk)?;
                if let Some(mib) = size {
                    disk::grow(&disk, mib)?;
                }
            }
            (None, Some(mib)) => disk::create_empty(&disk, mib)?,
            (None, None) => return Ok(()),
        }
        std::os::unix::fs::chown(&disk, Some(uid), Some(uid))
            .map_err(io_err(format!("chown {}", disk.display())))
    }

    /// Undoes a create that did not finish: no process, namespace,
    /// cgroup, file or row is left.
    fn rollback_create(&self, id: i64) {
        self.kill_jail_processes(id);
        if let Some(n) = &self.net {
            n.detach(id);
        }
        self.cgroups.remove(&jail_id(id));
        let _ = fs::remove_dir_all(self.paths.jail_dir(id));
        let _ = fs::remove_dir_all(self.paths.guest(id));
        if let Err(e) = self.db().delete_guest(id) {
            tracing::error!("cannot remove guest {id} from the database: {e}");
        }
    }

    /// Kills any jail process of guest `id` (found by its command line).
    /// Its VMM (a fork of the jail) dies with the jail, but may take a
    /// moment to: it is waited for too, so that nothing of the guest runs
    /// when this returns.
    pub(crate) fn kill_jail_processes(&self, id: i64) {
        let want = jail_id(id);
        let t0 = Instant::now();
        loop {
            let left: Vec<i32> = procfs::jail_processes(&self.paths.jail_base())
                .into_iter()
                .filter(|(_, jid)| *jid == want)
                .map(|(pid, _)| pid)
                .collect();
            if left.is_empty() || t0.elapsed() > Duration::from_secs(15) {
                return;
            }
            for pid in left {
                procfs::signal(pid, libc::SIGKILL);
                self.wait_gone(pid, None, Duration::from_secs(5));
            }
        }
    }

    // Start.

    pub fn start(&self, name: &str) -> Result<GuestInfo> {
        let id = self.db().guest(name)?.id;
        let l = self.guest_lock(id);
        let _g = lock(&l);
        let g = self.db().guest(name)?;
        match g.state {
            GuestState::Stopped | GuestState::Crashed => {}
            s => {
                check_here(&g)?;
                return Err(Error::Conflict(format!(
                    "guest {name} is {s}: it can be started when stopped or crashed"
                )));
            }
        }
        lock(&self.restart_at).remove(&id);
        self.start_locked(&g)?;
        self.get(name)
    }

    fn start_locked(&self, g: &GuestRow) -> Result<()> {
        self.db().set_starting(g.id, None, None)?;
        let t0 = Instant::now();
        match self.launch(g) {
            Ok((pid, start)) => {
                self.db().set_running(g.id, pid, start)?;
                self.events.emit(
                    &g.name,
                    "started",
                    format!("pid {pid} in {} ms", t0.elapsed().as_millis()),
                );
                Ok(())
            }
            Err(e) => {
                self.cleanup_process(g.id);
                self.db().set_ended(g.id, GuestState::Crashed, None)?;
                self.events.emit(&g.name, "start-failed", e.to_string());
                Err(e)
            }
        }
    }

    /// The `condo jail ... -- run ...` arguments of a guest.
    fn jail_args(&self, g: &GuestRow, netns: Option<&Path>, boot: Boot<'_>) -> Vec<String> {
        let restore = match boot {
            Boot::Restore(dir) => Some(dir),
            _ => None,
        };
        let p = &self.paths;
        let id = g.id;
        let s = &g.spec;
        let mut a: Vec<String> = vec![
            "jail".into(),
            "--id".into(),
            jail_id(id),
            "--uid".into(),
            g.uid.to_string(),
            "--gid".into(),
            g.uid.to_string(),
            "--chroot-base-dir".into(),
            p.jail_base().display().to_string(),
            "--parent-cgroup".into(),
            self.cfg.cgroup_parent.clone(),
            "--console-socket".into(),
            p.console_sock(id).display().to_string(),
            "--console-log".into(),
            p.console_log(id).display().to_string(),
            "--exit-file".into(),
            p.exit_file(id).display().to_string(),
        ];
        if let Some(ns) = netns {
            a.push("--netns".into());
            a.push(ns.display().to_string());
        }
        let mut file = |at: &str, host: &Path| {
            a.push("--file-at".into());
            a.push(format!("{at}={}", host.display()));
        };
        if let Some(k) = &s.kernel {
            file("/vm/kernel", k);
        }
        if let Some(i) = &s.initrd {
            file("/vm/initrd", i);
        }
        let has_disk = p.disk(id).exists();
        if has_disk {
            file("/vm/disk", &p.disk(id));
        }
        if let Some(snap) = restore {
            file("/vm/snap", &snap.join("state"));
            file("/vm/mem", &snap.join("mem"));
        }
        for c in self.cgroups.settings(s) {
            a.push("--cgroup".into());
            a.push(c);
        }
        a.extend([
            "--".into(),
            "run".into(),
            "--api-sock".into(),
            "/run/api.sock".into(),
        ]);
        if self.kvm_ok.load(std::sync::atomic::Ordering::Relaxed) {
            a.push("--no-kvm-probe".into());
        }
        if !matches!(boot, Boot::Cold) {
            return a;
        }
        let ip_arg = match (&self.net, g.ip) {
            (Some(n), Some(ip)) if s.has_net() => Some(n.kernel_ip_arg(ip, &g.name)),
            _ => None,
        };
        a.extend([
            "--kernel".into(),
            "/vm/kernel".into(),
            "--cpus".into(),
            s.vcpus.to_string(),
            "--memory".into(),
            s.memory_mib.to_string(),
            "--huge-pages".into(),
            s.huge_pages.as_arg().into(),
            "--cmdline".into(),
            compose_cmdline(ip_arg.as_deref(), s.cmdline.as_deref()),
            "--vsock".into(),
            "cid=3,socket=/run/vsock.sock".into(),
        ]);
        if s.initrd.is_some() {
            a.extend(["--initrd".into(), "/vm/initrd".into()]);
        }
        if has_disk {
            let root = if s.rootfs.is_some() { ",root=on" } else { "" };
            a.extend(["--disk".into(), format!("path=/vm/disk{root}")]);
        }
        if let (true, Some(mac)) = (netns.is_some(), &g.mac) {
            a.extend(["--net".into(), format!("tap=tap0,mac={mac}")]);
        }
        a
    }

    /// Starts a guest's jail and waits until its VMM answers (and, for a
    /// clone's first start, has restored its snapshot).
    fn launch(&self, g: &GuestRow) -> Result<(i32, u64)> {
        let restore = g
            .snapshot
            .as_deref()
            .filter(|_| g.started_ms.is_none())
            .map(|s| self.paths.snapshot(s));
        if let Some(r) = &restore {
            if !r.join("mem").exists() {
                return Err(Error::Other(format!(
                    "snapshot {} is gone: {} has no memory file",
                    g.snapshot.as_deref().unwrap_or_default(),
                    r.display()
                )));
            }
        }
        let boot = match &restore {
            Some(r) => Boot::Restore(r),
            None => Boot::Cold,
        };
        let (pid, start) = self.spawn_jail(g, boot)?;
        if restore.is_some() {
            let t = Instant::now();
            if let Err(e) = self.api(g.id).snapshot_load("/vm/snap", "/vm/mem") {
                procfs::signal(pid, libc::SIGKILL);
                return Err(e);
            }
            let restored_ms = t.elapsed().as_millis() as u64;
            self.db().clear_snapshot(g.id)?;
            self.readdress_clone(g);
            tracing::debug!(guest = %g.name, restored_ms, ready_ms = t.elapsed().as_millis() as u64, "restored");
        }
        Ok((pid, start))
    }

    /// Starts a guest's jail (network namespace first) and waits until its
    /// VMM answers its API.
    pub(crate) fn spawn_jail(&self, g: &GuestRow, boot: Boot<'_>) -> Result<(i32, u64)> {
        let id = g.id;
        let _ = fs::remove_dir_all(self.paths.jail_dir(id));
        let _ = fs::remove_file(self.paths.exit_file(id));
        self.cgroups.remove(&jail_id(id));
        let netns = match (&self.net, g.spec.has_net()) {
            (Some(n), true) => Some(n.attach(id, g.uid)?),
            _ => None,
        };
        let args = self.jail_args(g, netns.as_deref(), boot);
        let log_path = self.paths.vmm_log(id);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("open {}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io_err(format!("open {}", log_path.display())))?;
        let mut cmd = std::process::Command::new(self.jail_bin());
        cmd.args(&args)
            .env("CONDO_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: setsid is async-signal-safe; the jail leaves the
        // daemon's session so that it outlives the daemon.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        tracing::debug!(guest = %g.name, ?args, "starting jail");
        let t_spawn = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| Error::Other(format!("cannot run {}: {e}", self.condo_bin.display())))?;
        let pid = child.id() as i32;
        // The daemon reaps it (reap_children) rather than through Child.
        drop(child);
        lock(&self.children).push(pid);
        let start = procfs::start_time(pid).unwrap_or(0);
        if matches!(boot, Boot::Receive) {
            self.db().set_process(id, pid, start)?;
        } else {
            self.db().set_starting(id, Some(pid), Some(start))?;
        }
        let api = self.api(id);
        let t0 = Instant::now();
        loop {
            if api.answers(Duration::from_secs(2)) {
                break;
            }
            if !procfs::is_same(pid, start) {
                self.reap_children();
                return Err(Error::Other(format!(
                    "the guest's VMM ended at start: {}",
                    last_error_line(&log_path)
                )));
            }
            if t0.elapsed() > START_TIMEOUT {
                procfs::signal(pid, libc::SIGKILL);
                return Err(Error::Other(format!(
                    "the guest's VMM did not answer within {} s",
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::debug!(guest = %g.name, answered_ms = t_spawn.elapsed().as_millis() as u64, "VMM answers");
        Ok((pid, start))
    }

    /// Gives a guest just restored from a snapshot its own MAC, address and
    /// name inside (they were the source guest's), through its agent. A
    /// guest without an agent keeps the source's identity: that is said in
    /// an event, the guest runs all the same.
    fn readdress_clone(&self, g: &GuestRow) {
        let (Some(net), Some(ip), Some(mac)) = (&self.net, g.ip, &g.mac) else {
            return;
        };
        let snap_has_agent = g
            .snapshot
            .as_deref()
            .is_some_and(|s| self.paths.snapshot(s).join(AGENT_MARKER).exists());
        if !g.spec.has_net() {
            return;
        }
        if !snap_has_agent {
            self.events.emit(
                &g.name,
                "readdress-skipped",
                "the snapshot's guest had no agent: the clone keeps its address inside",
            );
            return;
        }
        let p = agent::spec::Process::command(net.guest_readdress_command(ip, mac, &g.name));
        let client = agent::client::Client::vsock(self.paths.vsock(g.id))
            .with_timeout(CLONE_READDRESS_TIMEOUT);
        // Just after the restore the guest's vsock transport is being reset
        // (the VMM tells it its old connections are gone): the first
        // connections may be closed on it. The command can run twice.
        let t0 = Instant::now();
        let r = loop {
            match client.run(&p) {
                Err(_) if t0.elapsed() < CLONE_READDRESS_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                r => break r,
            }
        };
        match r {
            Ok(out) if out.status.code() == 0 => {
                if let Err(e) = net.forget_learned(g.id) {
                    tracing::warn!(guest = %g.name, "{e}");
                }
                self.events
                    .emit(&g.name, "readdressed", format!("{ip} {mac}"));
            }
            Ok(out) => self.events.emit(
                &g.name,
                "readdress-failed",
                format!(
                    "the guest kept its snapshot's address: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ),
            Err(e) => self.events.emit(
                &g.name,
                "readdress-failed",
                format!("the guest kept its snapshot's address (no agent answered: {e})"),
            ),
        }
    }

    /// Removes what a guest's process leaves: its namespace, cgroup and
    /// jail directory.
    pub(crate) fn cleanup_process(&self, id: i64) {
        if let Some(n) = &self.net {
            n.detach(id);
        }
        self.cgroups.remove(&jail_id(id));
        let _ = fs::remove_dir_all(self.paths.jail_dir(id));
        lock(&self.stats).remove(&id);
    }

    /// Reaps the jail processes this daemon started that have ended.
    pub fn reap_children(&self) {
        lock(&self.children).retain(|&pid| {
            let mut st = 0;
            // SAFETY: a status out-parameter; `pid` is our child.
            let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
            r == 0
        });
    }

    /// Waits until `pid` (started at `start`, when known) is gone.
    pub(crate) fn wait_gone(&self, pid: i32, start: Option<u64>, t: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            self.reap_children();
            let alive = match start {
                Some(s) => procfs::is_same(pid, s),
                None => procfs::start_time(pid).is_some_and(|s| procfs::is_same(pid, s)),
            };
            if !alive {
                return true;
            }
            if t0.elapsed() >= t {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Records how a guest whose process is gone ended. Returns the state
    /// it is left in.
    pub(crate) fn finish(&self, g: &GuestRow) -> Result<GuestState> {
        self.reap_children();
        let status = fs::read_to_string(self.paths.exit_file(g.id))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        self.cleanup_process(g.id);
        let state = if g.stop_requested || status == Some(0) {
            GuestState::Stopped
        } else {
            GuestState::Crashed
        };
        self.db().set_ended(g.id, state, status)?;
        let detail = match status {
            Some(s) => format!("exit status {s}"),
            None => "killed".into(),
        };
        self.events.emit(
            &g.name,
            if state == GuestState::Stopped {
                "stopped"
            } else {
                "crashed"
            },
            detail,
        );
        if !g.stop_requested {
            let again = match g.spec.restart {
                RestartPolicy::No => false,
                RestartPolicy::OnFailure => state == GuestState::Crashed,
                RestartPolicy::Always => true,
            };
            if again {
                let ran = g
                    .started_ms
                    .map(|s| Duration::from_millis((db::now_ms() - s).max(0) as u64))
                    .unwrap_or_default();
                let delay = if ran >= HEALTHY_RUN {
                    1
                } else {
                    (1u64 << g.restarts.min(6)).min(MAX_BACKOFF_S)
                };
                lock(&self.restart_at).insert(g.id, Instant::now() + Duration::from_secs(delay));
                self.events
                    .emit(&g.name, "restart-scheduled", format!("in {delay} s"));
            }
        }
        Ok(state)
    }

    // Stop.

    pub fn stop(&self, name: &str, timeout_s: Option<u64>) -> Result<GuestInfo> {
        let id = self.db().guest(name)?.id;
        let l = self.guest_lock(id);
        let _g = lock(&l);
        let g = self.db().guest(name)?;
        check_here(&g)?;
        lock(&self.restart_at).remove(&id);
        self.stop_locked(&g, timeout_s.unwrap_or(self.cfg.stop_timeout_s))?;
        self.get(name)
    }

    fn stop_locked(&self, g: &GuestRow, timeout_s: u64) -> Result<()> {
        if !g.state.has_process() {
            return Ok(());
        }
        {
            let db = self.db();
            db.set_stop_requested(g.id, true)?;
            db.set_state(g.id, GuestState::Stopping)?;
        }
        self.events.emit(&g.name, "stopping", "");
        if let (Some(pid), Some(start)) = (g.pid, g.pid_start) {
            let api = self.api(g.id);
            let mut gone = false;
            if timeout_s > 0 {
                if g.state == GuestState::Paused {
                    let _ = api.resume();
                }
                if api.ctrl_alt_del().is_ok() {
                    gone = self.wait_gone(pid, Some(start), Duration::from_secs(timeout_s));
                }
            }
            if !gone {
                // The jail forwards SIGTERM: the VMM stops the VM at once.
                procfs::signal(pid, libc::SIGTERM);
                gone = self.wait_gone(pid, Some(start), TERM_TIMEOUT);
            }
            if !gone {
                // The VMM dies with its jail (parent-death signal).
                procfs::signal(pid, libc::SIGKILL);
                self.wait_gone(pid, Some(start), TERM_TIMEOUT);
            }
        } else {
            self.kill_jail_processes(g.id);
        }
        let mut g = g.clone();
        g.stop_requested = true;
        self.finish(&g)?;
        Ok(())
    }

    pub fn restart(&self, name: &str, timeout_s: Option<u64>) -> Result<GuestInfo> {
        let id = self.db().guest(name)?.id;
        let l = self.guest_lock(id);
        let _g = lock(&l);
        let g = self.db().guest(name)?;
        check_here(&g)?;
        self.stop_locked(&g, timeout_s.unwrap_or(self.cfg.stop_timeout_s))?;
        let g = self.db().guest(name)?;
        self.start_locked(&g)?;
        self.events.emit(name, "restarted", "");
        self.get(name)
    }

    // Pause, resume.

    pub fn pause(&self, name: &str) -> Result<GuestInfo> {
        self.pause_resume(name, true)
    }

    pub fn resume(&self, name: &str) -> Result<GuestInfo> {
        self.pause_resume(name, false)
    }

    fn pause_resume(&self, name: &str, pause: bool) -> Result<GuestInfo> {
        let id = self.db().guest(name)?.id;
        let l = self.guest_lock(id);
        let _g = lock(&l);
        let g = self.db().guest(name)?;
        let (from, to, verb) = if pause {
            (GuestState::Running, GuestState::Paused, "paused")
        } else {
            (GuestState::Paused, GuestState::Running, "resumed")
        };
        if g.state != from {
            check_here(&g)?;
            return Err(Error::Conflict(format!(
                "guest {name} is {}: only a {from} guest can be {verb}",
                g.state
            )));
        }
        let api = self.api(id);
        if pause {
            api.pause()?
        } else {
            api.resume()?
        }
        self.db().set_state(id, to)?;
        self.events.emit(name, verb, "");
        self.get(name)
    }

    // Delete.

    pub fn delete(&self, name: &str, req: &DeleteRequest) -> Result<()> {
        let id = self.db().guest(name)?.id;
        let l = self.guest_lock(id);
        let _g = lock(&l);
        let g = self.db().guest(name)?;
        if g.state == GuestState::Creating {
            return Err(Error::Conflict(format!(
                "guest {name} is being created: delete it once it is"
            )));
        }
        if g.state.in_migration() {
            check_here(&g)?;
        }
        if g.state.has_process() {
            if !req.force {
                return Err(Error::Conflict(format!(
                    "guest {name} is {}: stop it first, or delete with force",
                    g.state
                )));
            }
            self.stop_locked(&g, 0)?;
        }
        self.db().set_state(id, GuestState::Deleting)?;
        self.finish_delete(&g, req.keep_disk.unwrap_or(g.spec.keep_disk))?;
        Ok(())
    }

    fn finish_delete(&self, g: &GuestRow, keep_disk: bool) -> Result<()> {
        self.kill_jail_processes(g.id);
        self.cleanup_process(g.id);
        lock(&self.restart_at).remove(&g.id);
        let disk = self.paths.disk(g.id);
        if keep_disk && disk.exists() {
            let kept = self.paths.kept();
            fs::create_dir_all(&kept).map_err(io_err(format!("create {}", kept.display())))?;
            let to = kept.join(format!("{}-{}.disk", g.name, g.id));
            fs::rename(&disk, &to).map_err(io_err(format!("keep {}", disk.display())))?;
            self.events
                .emit(&g.name, "disk-kept", to.display().to_string());
        }
        let dir = self.paths.guest(g.id);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
        }
        self.db().delete_guest(g.id)?;
        lock(&self.locks).remove(&g.id);
        self.events.emit(&g.name, "deleted", "");
        Ok(())
    }

    // Snapshots and clones.

    pub fn snapshot(&self, name: &str, req: &SnapshotRequest) -> Result<SnapshotRow> {
        let snap = req.snapshot.clone().unwrap_or_else(|| name.to_owned());
        check_name("snapshot", &snap)?;
        let id = self.db().guest(name)?.id;
        let l = self.guest_lock(id);
        let _g = lock(&l);
        let g = self.db().guest(name)?;
        if !matches!(g.state, GuestState::Running | GuestState::Paused) {
            check_here(&g)?;
            return Err(Error::Conflict(format!(
                "guest {name} is {}: only a running or paused guest can be snapshotted",
                g.state
            )));
        }
        let final_dir = self.paths.snapshot(&snap);
        if final_dir.exists() {
            return Err(Error::invalid(format!(
                "a snapshot named {snap:?} already exists"
            )));
        }
        let tmp = self.paths.snapshots().join(format!(".{snap}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        let api = self.api(id);
        let was_running = g.state == GuestState::Running;
        // Whether the guest has an agent that can give its clones their
        // own addresses (`readdress_clone`): asked while it runs.
        let agent = was_running
            && self.net.is_some()
            && g.spec.has_net()
            && agent::client::Client::vsock(self.paths.vsock(id))
                .ping(AGENT_PROBE_TIMEOUT)
                .is_ok();
        if was_running {
            api.pause()?;
        }
        let r = self.take_snapshot(&g, &api, &tmp).and_then(|()| {
            if agent {
                let m = tmp.join(AGENT_MARKER);
                fs::write(&m, b"").map_err(io_err(format!("write {}", m.display())))?;
            }
            Ok(())
        });
        if was_running {
            if let Err(e) = api.resume() {
                tracing::error!("guest {name}: cannot resume after the snapshot: {e}");
            }
        }
        let run = self.paths.jail_root(id).join("run");
        let _ = fs::remove_file(run.join("snap.state"));
        let _ = fs::remove_file(run.join("snap.mem"));
        if let Err(e) = r {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &final_dir).map_err(io_err(format!("rename {}", tmp.display())))?;
        let row = SnapshotRow {
            name: snap.clone(),
            guest: name.to_owned(),
            spec: g.spec.clone(),
            created_ms: db::now_ms(),
        };
        if let Err(e) = self.db().insert_snapshot(&row) {
            let _ = fs::remove_dir_all(&final_dir);
            return Err(e);
        }
        self.events.emit(name, "snapshot", snap);
        Ok(row)
    }

    fn take_snapshot(&self, g: &GuestRow, api: &VmmApi, dir: &Path) -> Result<()> {
        api.snapshot_create("/run/snap.state", "/run/snap.mem")?;
        let run = self.paths.jail_root(g.id).join("run");
        for (from, to) in [("snap.state", "state"), ("snap.mem", "mem")] {
            let (f, t) = (run.join(from), dir.join(to));
            fs::rename(&f, &t).map_err(io_err(format!("move {}", f.display())))?;
            std::os::unix::fs::chown(&t, Some(0), Some(0))
                .map_err(io_err(format!("chown {}", t.display())))?;
            // Clones (each its own uid) map the memory file read-only.
            fs::set_permissions(&t, fs::Permissions::from_mode(0o644))
                .map_err(io_err(format!("chmod {}", t.display())))?;
        }
        let disk = self.paths.disk(g.id);
        if disk.exists() {
            disk::clone_file(&disk, &dir.join("disk"))?;
        }
        Ok(())
    }

    pub fn snapshots(&self) -> Result<Vec<SnapshotRow>> {
        self.db().snapshots()
    }

    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        let s = self.db().snapshot(name)?;
        if let Some(g) = self
            .db()
            .guests()?
            .into_iter()
            .find(|g| g.snapshot.as_deref() == Some(name))
        {
            return Err(Error::Conflict(format!(
                "guest {} has not yet been restored from snapshot {name}",
                g.name
            )));
        }
        let dir = self.paths.snapshot(&s.name);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
        }
        self.db().delete_snapshot(name)
    }

    /// Creates `req.count` guests restored from a snapshot (its memory file
    /// mapped privately by each: shared until written), each with its own
    /// copy-on-write disk, uid, address and cgroup, and starts them.
    pub fn clone_snapshot(&self, snap: &str, req: &CloneRequest) -> Result<Vec<GuestInfo>> {
        req.validate()?;
        let s = self.db().snapshot(snap)?;
        let specs: Vec<GuestSpec> = req
            .names()
            .into_iter()
            .map(|n| {
                let mut sp = s.spec.clone();
                sp.name = n;
                sp.start = true;
                sp
            })
            .collect();
        let snap_dir = self.paths.snapshot(snap);
        for sp in &specs {
            sp.validate()?;
        }
        let allocs = {
            let pools = self.pools();
            let mut db = self.db();
            db.transaction(|tx| {
                self.admit(tx, &specs)?;
                Db::insert_guests(tx, &specs, &pools, Some(snap))
            })?
        };
        let disk = snap_dir.join("disk");
        for (sp, a) in specs.iter().zip(&allocs) {
            let from = disk.exists().then_some(disk.as_path());
            let r = self
                .prepare_files(sp, a.id, a.uid, from)
                .and_then(|()| self.db().set_state(a.id, GuestState::Stopped));
            if let Err(e) = r {
                for a in &allocs {
                    self.rollback_create(a.id);
                }
                return Err(e);
            }
            self.events
                .emit(&sp.name, "created", format!("from snapshot {snap}"));
        }
        // Start them a few at a time: each start mostly waits on its VMM.
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let errors = Mutex::new(Vec::new());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers = (self.host.cpus as usize * 2).clamp(2, 8).min(names.len());
        std::thread::scope(|sc| {
            for _ in 0..workers {
                sc.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(n) = names.get(i) else { break };
                    if let Err(e) = self.start(n) {
                        lock(&errors).push(format!("{n}: {e}"));
                    }
                });
            }
        });
        let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
        if !errors.is_empty() {
            return Err(Error::Other(format!(
                "{} of {} clones did not start: {}",
                errors.len(),
                names.len(),
                errors.join("; ")
            )));
        }
        names.iter().map(|n| self.get(n)).collect()
    }

    // Images.

    /// Copies a kernel (and initrd) and/or a root image into the state
    /// directory as a named image.
    pub fn import_image(&self, spec: ImageSpec) -> Result<ImageSpec> {
        spec.validate()?;
        if self.db().image(&spec.name).is_ok() {
            return Err(Error::invalid(format!(
                "an image named {:?} already exists",
                spec.name
            )));
        }
        let dir = self.paths.image(&spec.name);
        let tmp = self.paths.images().join(format!(".{}.tmp", spec.name));
        let _ = fs::remove_dir_all(&tmp);
        let r = (|| {
            fs::create_dir_all(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
            for (src, name) in [
                (&spec.kernel, "kernel"),
                (&spec.initrd, "initrd"),
                (&spec.rootfs, "rootfs"),
            ] {
                if let Some(src) = src {
                    let to = tmp.join(name);
                    disk::clone_file(src, &to)?;
                    fs::set_permissions(&to, fs::Permissions::from_mode(0o644))
                        .map_err(io_err(format!("chmod {}", to.display())))?;
                }
            }
            let _ = fs::remove_dir_all(&dir);
            fs::rename(&tmp, &dir).map_err(io_err(format!("rename {}", tmp.display())))
        })();
        if let Err(e) = r {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let stored = ImageSpec {
            name: spec.name.clone(),
            kernel: spec.kernel.as_ref().map(|_| dir.join("kernel")),
            initrd: spec.initrd.as_ref().map(|_| dir.join("initrd")),
            rootfs: spec.rootfs.as_ref().map(|_| dir.join("rootfs")),
            cmdline: spec.cmdline.clone(),
        };
        if let Err(e) = self.db().insert_image(&stored) {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        self.events.emit("", "image-imported", spec.name);
        Ok(stored)
    }

    pub fn images(&self) -> Result<Vec<ImageSpec>> {
        Ok(self.db().images()?.into_iter().map(|i| i.spec).collect())
    }

    pub fn delete_image(&self, name: &str) -> Result<()> {
        self.db().image(name)?;
        if let Some(g) = self
            .db()
            .guests()?
            .into_iter()
            .find(|g| g.spec.image.as_deref() == Some(name))
        {
            return Err(Error::Conflict(format!(
                "image {name} is used by guest {}",
                g.name
            )));
        }
        let dir = self.paths.image(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
        }
        self.db().delete_image(name)
    }

    /// The console socket of a guest that has a process.
    pub fn console_socket(&self, name: &str) -> Result<PathBuf> {
        let g = self.db().guest(name)?;
        if !g.state.has_process() {
            return Err(Error::Conflict(format!(
                "guest {name} is {}: it has no console",
                g.state
            )));
        }
        Ok(self.paths.console_sock(g.id))
    }

    /// The vsock socket (host side) of a guest that has a process.
    pub fn vsock_socket(&self, name: &str) -> Result<PathBuf> {
        let g = self.db().guest(name)?;
        if g.state != GuestState::Running {
            return Err(Error::Conflict(format!(
                "guest {name} is {}: exec needs a running guest",
                g.state
            )));
        }
        Ok(self.paths.vsock(g.id))
    }

    // Supervision and adoption.

    /// One round of supervision: notices guests whose process ended, and
    /// starts those whose restart is due.
    pub fn supervise(&self) {
        self.reap_children();
        let rows = match self.db().guests() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("supervision: {e}");
                return;
            }
        };
        for g in rows {
            if g.state == GuestState::Migrating {
                // Only one that no migration of this daemon owns (its lock
                // is free): the daemon was restarted during the move.
                self.settle_migrating(&g);
                continue;
            }
            if !g.state.has_process()
                || g.state == GuestState::Starting
                || g.state == GuestState::Incoming
            {
                continue;
            }
            let alive = match (g.pid, g.pid_start) {
                (Some(p), Some(s)) => procfs::is_same(p, s),
                _ => false,
            };
            if alive {
                continue;
            }
            let l = self.guest_lock(g.id);
            let Ok(_guard) = l.try_lock() else { continue };
            // Re-read under the lock: an operation may have finished it.
            let Ok(Some(g)) = self.db().guest_by_id(g.id) else {
                continue;
            };
            if g.state.has_process()
                && !matches!((g.pid, g.pid_start), (Some(p), Some(s)) if procfs::is_same(p, s))
            {
                if let Err(e) = self.finish(&g) {
                    tracing::error!("guest {}: {e}", g.name);
                }
            }
        }
        let due: Vec<i64> = {
            let now = Instant::now();
            let mut r = lock(&self.restart_at);
            let due: Vec<i64> = r
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in &due {
                r.remove(id);
            }
            due
        };
        for id in due {
            let l = self.guest_lock(id);
            let _guard = lock(&l);
            let Ok(Some(g)) = self.db().guest_by_id(id) else {
                continue;
            };
            if matches!(g.state, GuestState::Stopped | GuestState::Crashed) {
                let _ = self.db().add_restart(id);
                self.events.emit(
                    &g.name,
                    "restarting",
                    format!("policy {:?}", g.spec.restart),
                );
                if let Err(e) = self.start_locked(&g) {
                    tracing::warn!("guest {}: restart failed: {e}", g.name);
                    if let Ok(Some(g)) = self.db().guest_by_id(id) {
                        let delay = (1u64 << g.restarts.min(6)).min(MAX_BACKOFF_S);
                        lock(&self.restart_at)
                            .insert(id, Instant::now() + Duration::from_secs(delay));
                    }
                }
            }
        }
    }

    /// At start-up: adopts every guest whose process is alive, finishes
    /// what was interrupted, and removes what no guest owns.
    pub fn adopt(&self) -> Result<()> {
        let ids = self.db().guest_ids()?;
        let mut live_jails: Vec<i32> = Vec::new();
        let mut known: Vec<i64> = Vec::new();
        for (id, name, state) in &ids {
            known.push(*id);
            let g = match self.db().guest_by_id(*id) {
                Ok(Some(g)) => g,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(
                        "guest {name} (id {id}, {state}): unreadable row left alone: {e}"
                    );
                    self.events.emit(name, "unreadable", e.to_string());
                    continue;
                }
            };
            match g.state {
                GuestState::Creating => {
                    self.rollback_create(g.id);
                    self.events.emit(&g.name, "create-rolled-back", "");
                }
                GuestState::Deleting => {
                    if let Err(e) = self.finish_delete(&g, g.spec.keep_disk) {
                        tracing::error!("guest {}: {e}", g.name);
                    }
                }
                GuestState::Incoming => {
                    let live = self.adopt_incoming(&g);
                    live_jails.extend(g.pid.filter(|_| live));
                }
                GuestState::Migrating if !matches!((g.pid, g.pid_start), (Some(p), Some(st)) if procfs::is_same(p, st)) =>
                {
                    self.settle_migrating(&g);
                }
                s if s.has_process() => {
                    let alive = matches!((g.pid, g.pid_start), (Some(p), Some(st)) if procfs::is_same(p, st));
                    if alive && s != GuestState::Starting {
                        live_jails.extend(g.pid);
                        self.events.emit(
                            &g.name,
                            "adopted",
                            format!("pid {}", g.pid.unwrap_or_default()),
                        );
                        if s == GuestState::Stopping {
                            // The stop was interrupted: finish it.
                            let _ = self.stop_locked(&g, self.cfg.stop_timeout_s);
                        }
                    } else {
                        // Died meanwhile, or its start was interrupted.
                        if alive {
                            if let Some(p) = g.pid {
                                procfs::signal(p, libc::SIGKILL);
                                self.wait_gone(p, g.pid_start, TERM_TIMEOUT);
                            }
                        }
                        self.kill_jail_processes(g.id);
                        if let Err(e) = self.finish(&g) {
                            tracing::error!("guest {}: {e}", g.name);
                        }
                    }
                }
                _ => {}
            }
        }
        // Whatever no guest owns.
        for (pid, jid) in procfs::jail_processes(&self.paths.jail_base()) {
            if !live_jails.contains(&pid) {
                tracing::warn!("killing orphan jail process {pid} ({jid})");
                procfs::signal(pid, libc::SIGKILL);
            }
        }
        let rows = self.db().guests().unwrap_or_default();
        let has_process = |id: i64| rows.iter().any(|g| g.id == id && g.state.has_process());
        if let Some(n) = &self.net {
            for id in n.attached_ids() {
                if !has_process(id) {
                    n.detach(id);
                }
            }
        }
        for jid in self.cgroups.jail_ids() {
            match jid.strip_prefix("vm").and_then(|v| v.parse::<i64>().ok()) {
                Some(id) if has_process(id) => {}
                _ => self.cgroups.remove(&jid),
            }
        }
        let all_ids: Vec<i64> = self
            .db()
            .guest_ids()?
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        if let Ok(rd) = fs::read_dir(self.paths.guests()) {
            for e in rd.flatten() {
                let id = e.file_name().to_str().and_then(|s| s.parse::<i64>().ok());
                if !id.is_some_and(|id| all_ids.contains(&id)) {
                    tracing::warn!("removing orphan guest directory {}", e.path().display());
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        if let Ok(rd) = fs::read_dir(self.paths.jail_base().join("condo")) {
            for e in rd.flatten() {
                let id = e
                    .file_name()
                    .to_str()
                    .and_then(|s| s.strip_prefix("vm")?.parse::<i64>().ok());
                if !id.is_some_and(has_process) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let _ = known;
        Ok(())
    }

    /// Starts the guests marked autostart that are not running.
    pub fn autostart(&self) {
        let rows = self.db().guests().unwrap_or_default();
        for g in rows {
            if g.spec.autostart && matches!(g.state, GuestState::Stopped | GuestState::Crashed) {
                match self.start(&g.name) {
                    Ok(_) => self.events.emit(&g.name, "autostarted", ""),
                    Err(e) => tracing::warn!("autostart of {}: {e}", g.name),
                }
            }
        }
    }
}

/// Refuses an operation on a guest a live migration owns, or that moved
/// away, with a 409 that says so.
pub(crate) fn check_here(g: &GuestRow) -> Result<()> {
    let to = g
        .migration
        .as_ref()
        .and_then(|n| n.to.as_deref())
        .unwrap_or("another daemon");
    match g.state {
        GuestState::Migrating => Err(Error::Conflict(format!(
            "guest {} is migrating to {to}: wait for the move to end",
            g.name
        ))),
        GuestState::Incoming => Err(Error::Conflict(format!(
            "guest {} is arriving from another daemon: wait for the move to end",
            g.name
        ))),
        GuestState::Moved => Err(Error::Conflict(format!(
            "guest {} moved to {to} and runs there (`condo rm {}` forgets it here)",
            g.name, g.name
        ))),
        _ => Ok(()),
    }
}

fn meminfo(key: &str) -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// The last `condo: error:` line of a VMM log (or its last line).
fn last_error_line(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| l.contains("error"))
        .or_else(|| text.lines().last())
        .unwrap_or("no message (see the guest's vmm.log)")
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_arguments_come_before_the_users() {
        assert_eq!(
            compose_cmdline(Some("ip=1"), Some("quiet -- echo hi")),
            "console=ttyS0 reboot=k panic=1 ip=1 quiet -- echo hi"
        );
        assert_eq!(
            compose_cmdline(None, None),
            "console=ttyS0 reboot=k panic=1"
        );
    }
}

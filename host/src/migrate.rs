//! Live migration between daemons: `condo migrate NAME --to DEST` moves a
//! running guest from this daemon to another (on this host or another)
//! with the VMM's own live migration (docs/migration.md), and the daemons
//! keep their databases consistent whatever happens.
//!
//! The guest keeps what the VMM's migration keeps, and the daemons keep
//! the rest:
//! - its name, specification, MAC and IPv4 address (the two daemons serve
//!   the same subnet on one network, each handing out addresses from a
//!   range of its own, so the guest needs no new address);
//! - its disk, where it is: the destination hard-links the source's disk
//!   file into its own state directory (both state directories on one file
//!   system: shared storage mounted at the same path on every host, or one
//!   local file system for two daemons on one host) and gives it to its
//!   own uid; nothing is copied;
//! - its usage history, sent after the move, so that its accounting goes
//!   on where it runs.
//!
//! The VMMs never touch the network: each jailed VMM streams through a
//! Unix socket in its jail (`/run/migrate.sock`), and the daemons relay
//! the stream between them (over the destination's API socket, or its
//! authenticated TCP peer port, see `peer.rs`).
//!
//! The exchange:
//! 1. the source asks the destination for a receiving slot (`POST
//!    /migrations`): it checks the guest (name, admission, address, files),
//!    records it `incoming`, starts an empty jailed VMM in the guest's own
//!    network namespace and has it wait (`PUT /migration/receive`);
//! 2. the source records the guest `migrating`, listens in its VMM's jail,
//!    and has its VMM send (`PUT /migration/send`); the first connection is
//!    relayed to the slot's stream (`GET /migrations/{id}/stream`);
//! 3. each daemon records what its own VMM says: the destination's
//!    receive succeeded, the guest is `running` there; the source's send
//!    succeeded, it is `moved` here (its VMM ends); either failed, the slot
//!    is rolled back (no process, row, namespace or disk link left) and the
//!    guest runs on the source as before.
//!
//! The VMM's protocol leaves one window: the destination resumes the guest
//! and says `Running`; if that word is lost on the way, the source resumes
//! it too. The source daemon closes it: after a failed send it asks the
//! slot, and when the destination runs the guest, it stops its own copy.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::db::{Db, GuestRow, MigrationNote, Usage};
use crate::error::{io_err, Error, Result};
use crate::http::Response;
use crate::manager::{check_here, lock, Boot, Manager};
use crate::model::{GuestState, IncomingGuest, MigrateRequest, UsageImport, MAX_USAGE_RECORDS};
use crate::peer::{relay, Conn, PeerAddr, PeerClient, REQUEST_TIMEOUT};
use crate::procfs;

/// The migration socket inside a VMM's jail (both ends).
const JAIL_SOCK: &str = "/run/migrate.sock";
/// A slot whose stream has not arrived by then is given up.
const STREAM_WAIT: Duration = Duration::from_secs(60);
/// How long the source's VMM has to connect to its jail's socket.
const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// Finished slots are forgotten after this.
const SLOT_KEPT: Duration = Duration::from_secs(900);
/// How long the source waits for the destination to record the guest.
const COMMIT_WAIT: Duration = Duration::from_secs(60);

/// Where a receiving slot is.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotState {
    /// The empty VMM waits; no stream yet.
    Waiting,
    /// The stream is being relayed to the VMM.
    Streaming,
    /// The guest runs here (running or paused).
    Done(GuestState),
    /// Rolled back: nothing of it is left.
    Failed(String),
}

/// A receiving slot of this daemon.
#[derive(Debug)]
pub struct Slot {
    pub id: String,
    pub guest_id: i64,
    pub name: String,
    /// The waiting VMM's jail process.
    pid: i32,
    state: Mutex<SlotState>,
    changed: Condvar,
    finished: Mutex<Option<Instant>>,
}

impl Slot {
    fn state(&self) -> SlotState {
        lock(&self.state).clone()
    }

    fn set(&self, s: SlotState) {
        let end = matches!(s, SlotState::Done(_) | SlotState::Failed(_));
        *lock(&self.state) = s;
        if end {
            *lock(&self.finished) = Some(Instant::now());
        }
        self.changed.notify_all();
    }

    /// Waits until the slot is finished, at most `t`.
    fn wait_end(&self, t: Duration) -> SlotState {
        let deadline = Instant::now() + t;
        let mut s = lock(&self.state);
        loop {
            if matches!(*s, SlotState::Done(_) | SlotState::Failed(_)) {
                return s.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                return s.clone();
            }
            s = match self.changed.wait_timeout(s, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// `GET /migrations/{id}`, and the answer to `POST /migrations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotInfo {
    pub id: String,
    pub guest: String,
    /// waiting, streaming, done or failed.
    pub status: String,
    /// Once done: the guest's state here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<GuestState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// This daemon's sampling interval (the resolution of raw usage).
    pub sample_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// The answer to `POST /guests/{name}/migrate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrateReport {
    pub guest: String,
    pub to: String,
    /// From the request to the guest running there, ms.
    pub ms: u64,
    /// Its state on the destination.
    pub state: GuestState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Usage records handed to the destination.
    pub usage_records: u64,
}

/// A fresh slot id: 128 random bits in hex.
fn new_slot_id() -> Result<String> {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(Error::Other(format!(
            "getrandom: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Checks a disk an incoming guest brings: a regular file (not a link),
/// not root's, named like a daemon's guest disk (`.../guests/ID/disk`),
/// outside this daemon's own state directory. A peer is trusted (it holds
/// the cluster key, or root's API socket), but not with any file of the
/// host.
fn check_incoming_disk(d: &Path, own_state: &Path) -> Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let bad = |why: &str| Error::invalid(format!("disk {}: {why}", d.display()));
    let parts: Vec<&str> = d.iter().filter_map(|c| c.to_str()).collect();
    let named = parts.len() >= 3
        && parts[parts.len() - 1] == "disk"
        && parts[parts.len() - 3] == "guests"
        && parts[parts.len() - 2].bytes().all(|b| b.is_ascii_digit());
    if !named || d.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(bad(
            "not a guest disk of a condo daemon (.../guests/ID/disk)",
        ));
    }
    if d.starts_with(own_state) {
        return Err(bad(
            "this daemon's own guest disk: the guest is here already",
        ));
    }
    let md = std::fs::symlink_metadata(d).map_err(|e| {
        bad(&format!(
            "{e} (a guest moves between daemons whose state directories share one file system, mounted at the same path)"
        ))
    })?;
    if !md.file_type().is_file() {
        return Err(bad("not a regular file"));
    }
    if md.uid() == 0 {
        return Err(bad("owned by root: not a guest's disk"));
    }
    Ok((md.uid(), md.gid()))
}

impl Manager {
    // The destination's side.

    /// `POST /migrations`: checks an incoming guest, records it
    /// `incoming`, starts its empty VMM and has it wait for the stream.
    pub fn prepare_incoming(self: &Arc<Self>, req: IncomingGuest) -> Result<SlotInfo> {
        req.validate()?;
        self.prune_slots();
        let spec = req.spec.clone();
        for (what, p) in [("kernel", &spec.kernel), ("initrd", &spec.initrd)] {
            if let Some(p) = p {
                if !p.is_file() {
                    return Err(Error::invalid(format!(
                        "the guest's {what} {} is not on this host: a guest moves between hosts that have its kernel and initrd at the same paths",
                        p.display()
                    )));
                }
            }
        }
        match (spec.has_net(), &self.net, req.ip) {
            (true, None, _) => {
                return Err(Error::invalid(
                    "the guest has a network interface and this daemon runs without a network",
                ))
            }
            (true, Some(_), None) => {
                return Err(Error::invalid("the guest has a network but no address"))
            }
            (true, Some(n), Some(ip)) if !n.subnet.holds_guest(ip) => {
                return Err(Error::invalid(format!(
                    "the guest's address {ip} is not one of this daemon's subnet {}: daemons a guest moves between serve the same subnet (docs/host.md)",
                    n.subnet
                )))
            }
            (false, _, Some(_)) => {
                return Err(Error::invalid("an address for a guest without a network"))
            }
            _ => {}
        }
        let disk_owner = match &req.disk {
            Some(d) => Some(check_incoming_disk(d, &self.paths.state)?),
            None => None,
        };
        let slot_id = new_slot_id()?;
        let note = MigrationNote {
            from: Some(req.source.clone()),
            slot: Some(slot_id.clone()),
            disk_owner,
            ..MigrationNote::default()
        };
        let alloc = {
            let pools = self.pools();
            let mut db = self.db();
            db.transaction(|tx| {
                self.admit(tx, std::slice::from_ref(&spec))?;
                Db::insert_incoming(tx, &spec, &pools, req.ip, req.mac.as_deref(), &note)
            })?
        };
        // The record of this guest having moved away from here is gone:
        // its directory (console log, VMM log) goes with it.
        if let Some(old) = alloc.replaced {
            let _ = std::fs::remove_dir_all(self.paths.guest(old));
        }
        let g = match self.db().guest_by_id(alloc.id)? {
            Some(g) => g,
            None => return Err(Error::Other("the incoming guest's row vanished".into())),
        };
        let launched = (|| {
            let dir = self.paths.guest(g.id);
            std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err(format!("chmod {}", dir.display())))?;
            if let Some(src) = &req.disk {
                let to = self.paths.disk(g.id);
                std::fs::hard_link(src, &to).map_err(|e| {
                    if e.raw_os_error() == Some(libc::EXDEV) {
                        Error::invalid(format!(
                            "disk {} is on another file system than this daemon's state directory {}: a guest moves between daemons whose state directories share one file system (shared storage mounted at the same path)",
                            src.display(),
                            self.paths.state.display()
                        ))
                    } else {
                        Error::io(format!("link {} to {}", src.display(), to.display()), e)
                    }
                })?;
                std::os::unix::fs::chown(&to, Some(g.uid), Some(g.uid))
                    .map_err(io_err(format!("chown {}", to.display())))?;
            }
            self.spawn_jail(&g, Boot::Receive)
        })();
        let (pid, start) = match launched {
            Ok(p) => p,
            Err(e) => {
                self.rollback_incoming(&g, &e.to_string());
                return Err(e);
            }
        };
        let slot = Arc::new(Slot {
            id: slot_id.clone(),
            guest_id: g.id,
            name: g.name.clone(),
            pid,
            state: Mutex::new(SlotState::Waiting),
            changed: Condvar::new(),
            finished: Mutex::new(None),
        });
        lock(&self.slots).insert(slot_id.clone(), slot.clone());
        self.events
            .emit(&g.name, "incoming", format!("from {}", req.source));
        let (m, s) = (self.clone(), slot.clone());
        let timeout = Duration::from_secs(req.timeout_s + 300);
        let spawned = std::thread::Builder::new()
            .name("migrate-in".into())
            .spawn(move || m.receive(&s, pid, start, timeout));
        if let Err(e) = spawned {
            procfs::signal(pid, libc::SIGKILL);
            self.rollback_incoming(&g, "no thread");
            slot.set(SlotState::Failed(e.to_string()));
            return Err(Error::Other(format!("cannot start a thread: {e}")));
        }
        // A source that never streams: the waiting VMM is stopped, the
        // receive fails and the slot is rolled back.
        let s = slot.clone();
        let _ = std::thread::Builder::new()
            .name("migrate-wait".into())
            .spawn(move || {
                if s.wait_end(STREAM_WAIT) == SlotState::Waiting {
                    tracing::warn!(guest = %s.name, "no migration stream within {} s: giving the slot up", STREAM_WAIT.as_secs());
                    procfs::signal(s.pid, libc::SIGKILL);
                }
            });
        Ok(self.slot_info(&slot))
    }

    /// The receiving VMM's request, and what its answer means for the
    /// database.
    fn receive(&self, slot: &Slot, pid: i32, start: u64, timeout: Duration) {
        let api = self.api(slot.guest_id);
        let r = api.receive_migration(&format!("unix:{JAIL_SOCK}"), timeout);
        let l = self.guest_lock(slot.guest_id);
        let _g = lock(&l);
        let g = match self.db().guest_by_id(slot.guest_id) {
            Ok(Some(g)) => g,
            _ => {
                slot.set(SlotState::Failed("the guest's row vanished".into()));
                return;
            }
        };
        let outcome = r.and_then(|()| {
            let paused = api
                .instance_state(Duration::from_secs(10))
                .is_ok_and(|s| s == "Paused");
            {
                let db = self.db();
                db.set_running(g.id, pid, start)?;
                if paused {
                    db.set_state(g.id, GuestState::Paused)?;
                }
                db.set_migration(g.id, None)?;
            }
            Ok(if paused {
                GuestState::Paused
            } else {
                GuestState::Running
            })
        });
        match outcome {
            Ok(state) => {
                let from = g
                    .migration
                    .as_ref()
                    .and_then(|n| n.from.clone())
                    .unwrap_or_default();
                self.events
                    .emit(&g.name, "migrated-in", format!("from {from}, {state}"));
                slot.set(SlotState::Done(state));
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(guest = %g.name, "incoming migration failed: {msg}");
                self.rollback_incoming(&g, &msg);
                slot.set(SlotState::Failed(msg));
            }
        }
    }

    /// Removes everything of an incoming guest: its process, namespace,
    /// cgroup, directory (its link to the disk: the disk goes back to its
    /// owner) and row.
    pub(crate) fn rollback_incoming(&self, g: &GuestRow, why: &str) {
        self.kill_jail_processes(g.id);
        self.cleanup_process(g.id);
        let disk = self.paths.disk(g.id);
        if let Some((uid, gid)) = g.migration.as_ref().and_then(|n| n.disk_owner) {
            if disk.exists() {
                if let Err(e) = std::os::unix::fs::chown(&disk, Some(uid), Some(gid)) {
                    tracing::error!("cannot give {} back to uid {uid}: {e}", disk.display());
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.paths.guest(g.id));
        {
            let mut db = self.db();
            if let Err(e) = db.delete_guest(g.id).and_then(|()| db.delete_usage(g.id)) {
                tracing::error!("cannot remove guest {} from the database: {e}", g.name);
            }
        }
        lock(&self.locks).remove(&g.id);
        self.events.emit(&g.name, "migrate-in-failed", why);
    }

    fn slot(&self, id: &str) -> Result<Arc<Slot>> {
        lock(&self.slots)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no migration slot {id:?}")))
    }

    fn slot_info(&self, s: &Slot) -> SlotInfo {
        let (status, state, error) = match s.state() {
            SlotState::Waiting => ("waiting", None, None),
            SlotState::Streaming => ("streaming", None, None),
            SlotState::Done(st) => ("done", Some(st), None),
            SlotState::Failed(e) => ("failed", None, Some(e)),
        };
        let ip = self
            .db()
            .guest_by_id(s.guest_id)
            .ok()
            .flatten()
            .and_then(|g| g.ip.map(|a| a.to_string()));
        SlotInfo {
            id: s.id.clone(),
            guest: s.name.clone(),
            status: status.into(),
            state,
            error,
            sample_ms: self.cfg.sample_ms,
            ip,
        }
    }

    /// Forgets slots that ended long ago.
    fn prune_slots(&self) {
        lock(&self.slots).retain(|_, s| lock(&s.finished).is_none_or(|t| t.elapsed() < SLOT_KEPT));
    }

    /// `GET /migrations/{id}`.
    pub fn slot_status(&self, id: &str) -> Result<SlotInfo> {
        let s = self.slot(id)?;
        Ok(self.slot_info(&s))
    }

    /// `DELETE /migrations/{id}`: the source gives up; the slot is rolled
    /// back unless the guest runs here already (409).
    pub fn abort_slot(&self, id: &str) -> Result<()> {
        let s = self.slot(id)?;
        if let SlotState::Waiting | SlotState::Streaming = s.state() {
            procfs::signal(s.pid, libc::SIGKILL);
        }
        match s.wait_end(Duration::from_secs(30)) {
            SlotState::Done(_) => Err(Error::Conflict(format!(
                "guest {} runs here: the move finished",
                s.name
            ))),
            SlotState::Failed(_) => Ok(()),
            _ => Err(Error::Other(format!(
                "the slot of {} did not end in 30 s",
                s.name
            ))),
        }
    }

    /// `POST /migrations/{id}/usage`: the guest's history from the source.
    pub fn import_usage(&self, id: &str, u: &UsageImport) -> Result<()> {
        u.validate()?;
        let s = self.slot(id)?;
        if !matches!(s.state(), SlotState::Done(_)) {
            return Err(Error::Conflict(format!(
                "guest {} does not run here (yet)",
                s.name
            )));
        }
        if u.res_ms != crate::accounting::MINUTE_MS && u.res_ms != self.cfg.sample_ms as i64 {
            return Err(Error::invalid(format!(
                "records of {} ms: this daemon keeps {} ms and minutes",
                u.res_ms, self.cfg.sample_ms
            )));
        }
        let rows: Vec<Usage> = u
            .records
            .iter()
            .map(|r| Usage {
                t_ms: r[0],
                dur_ms: r[1],
                cpu_us: r[2],
                rss: r[3],
                touched: r[4],
                disk_rd: r[5],
                disk_wr: r[6],
                net_rx: r[7],
                net_tx: r[8],
            })
            .collect();
        self.db().import_usage(s.guest_id, u.res_ms, &rows)
    }

    /// `GET /migrations/{id}/stream` (`Upgrade: migration`): answers 101
    /// and relays the connection to the waiting VMM's socket.
    pub fn serve_stream(&self, id: &str, pending: &[u8], mut client: Conn) {
        use std::io::Write;
        let s = match self.slot(id) {
            Ok(s) => s,
            Err(e) => {
                let _ = Response::error(e.status(), e).write_to(&mut client);
                return;
            }
        };
        {
            let mut st = lock(&s.state);
            if *st != SlotState::Waiting {
                let _ = Response::error(409, format!("migration slot {id} is not waiting"))
                    .write_to(&mut client);
                return;
            }
            *st = SlotState::Streaming;
        }
        s.changed.notify_all();
        let sock = self.paths.jail_root(s.guest_id).join("run/migrate.sock");
        let t0 = Instant::now();
        let vmm = loop {
            match UnixStream::connect(&sock) {
                Ok(c) => break Some(c),
                Err(_) if t0.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!(guest = %s.name, "cannot reach the receiving VMM at {}: {e}", sock.display());
                    break None;
                }
            }
        };
        let Some(vmm) = vmm else {
            let _ = Response::error(500, "the receiving VMM does not listen").write_to(&mut client);
            procfs::signal(s.pid, libc::SIGKILL);
            return;
        };
        let head = "HTTP/1.1 101 Switching Protocols\r\nServer: condo-daemon\r\nUpgrade: migration\r\nConnection: Upgrade\r\n\r\n";
        if client.write_all(head.as_bytes()).is_err() {
            procfs::signal(s.pid, libc::SIGKILL);
            return;
        }
        let (sent, back) = relay(client, pending, Conn::Unix(vmm));
        tracing::info!(guest = %s.name, "migration stream: {sent} bytes in, {back} out");
    }

    // The source's side.

    /// How this daemon names itself to others (events, logs).
    fn self_name(&self) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{} ({})", host.trim(), self.paths.state.display())
    }

    /// `POST /guests/{name}/migrate`: moves a running or paused guest to
    /// another daemon. Answered when it runs there (and both databases say
    /// so), or with the reason it stays here.
    pub fn migrate_out(&self, name: &str, req: &MigrateRequest) -> Result<MigrateReport> {
        req.validate()?;
        let to = PeerAddr::parse(&req.to)?;
        let t0 = Instant::now();
        let id = self.db().guest(name)?.id;
        let l = self.guest_lock(id);
        let _guard = lock(&l);
        let g = self.db().guest(name)?;
        if !matches!(g.state, GuestState::Running | GuestState::Paused) {
            check_here(&g)?;
            return Err(Error::Conflict(format!(
                "guest {name} is {}: only a running or paused guest can be migrated",
                g.state
            )));
        }
        let peer = PeerClient::new(to.clone(), self.peer_key.clone());
        let info: serde_json::Value = peer.get("/").map_err(|e| match e {
            Error::Invalid(i) => Error::invalid(format!("{to} refused: {i}")),
            e => e,
        })?;
        if info["state_dir"].as_str() == self.paths.state.to_str() {
            return Err(Error::invalid(format!(
                "{to} is this daemon: give another daemon"
            )));
        }
        let disk = self.paths.disk(id);
        let timeout_s = req.timeout_s.unwrap_or(3600);
        let incoming = IncomingGuest {
            spec: g.spec.clone(),
            ip: g.ip,
            mac: g.mac.clone(),
            disk: disk.exists().then_some(disk),
            source: self.self_name(),
            timeout_s,
        };
        let slot: SlotInfo = peer
            .send("POST", "/migrations", &incoming, REQUEST_TIMEOUT)
            .map_err(|e| match e {
                Error::Invalid(i) => Error::invalid(format!("{to} refused {name}: {i}")),
                Error::Conflict(c) => Error::Conflict(format!("{to} refused {name}: {c}")),
                Error::Full(f) => Error::invalid(format!("{to} refused {name}: {f}")),
                e => Error::Other(format!("{to}: {e}")),
            })?;
        let note = MigrationNote {
            to: Some(to.to_string()),
            slot: Some(slot.id.clone()),
            ..MigrationNote::default()
        };
        let listen = (|| {
            let sock = self.paths.jail_root(id).join("run/migrate.sock");
            let _ = std::fs::remove_file(&sock);
            let l =
                UnixListener::bind(&sock).map_err(io_err(format!("bind {}", sock.display())))?;
            std::os::unix::fs::chown(&sock, Some(g.uid), Some(g.uid))
                .map_err(io_err(format!("chown {}", sock.display())))?;
            l.set_nonblocking(true)
                .map_err(io_err(format!("listen on {}", sock.display())))?;
            {
                let db = self.db();
                db.set_state(id, GuestState::Migrating)?;
                db.set_migration(id, Some(&note))?;
            }
            Ok::<_, Error>((l, sock))
        })();
        let (listener, sock) = match listen {
            Ok(v) => v,
            Err(e) => {
                let _ = peer.call(
                    "DELETE",
                    &format!("/migrations/{}", slot.id),
                    None,
                    REQUEST_TIMEOUT,
                );
                let _ = self.db().set_state(id, g.state);
                let _ = self.db().set_migration(id, None);
                return Err(e);
            }
        };
        self.events.emit(name, "migrating", format!("to {to}"));
        let stop = AtomicBool::new(false);
        let sent = std::thread::scope(|sc| {
            let relay_thread = sc.spawn(|| self.relay_out(&listener, &peer, &slot.id, &stop));
            let r = self.api(id).send_migration(
                &format!("unix:{JAIL_SOCK}"),
                req.downtime_ms,
                timeout_s,
                req.bandwidth_mib_s,
                Duration::from_secs(timeout_s + 120),
            );
            stop.store(true, Ordering::Relaxed);
            let relayed = relay_thread
                .join()
                .unwrap_or_else(|_| Err(Error::Other("the relay thread panicked".into())));
            if let (Ok(()), Err(e)) = (&r, &relayed) {
                tracing::warn!(guest = %name, "migration relay: {e}");
            }
            match (r, relayed) {
                (Ok(()), _) => Ok(()),
                (Err(e), Err(re)) => Err(Error::Other(format!("{e} (relay: {re})"))),
                (Err(e), Ok(())) => Err(e),
            }
        });
        drop(listener);
        let _ = std::fs::remove_file(&sock);
        let slot_path = format!("/migrations/{}", slot.id);
        let mut split = false;
        if let Err(e) = sent {
            // Did the destination resume it anyway (its Running lost)?
            let there = peer
                .get::<SlotInfo>(&slot_path)
                .ok()
                .filter(|s| s.status == "done" || s.status == "streaming");
            let there = match there {
                Some(s) if s.status == "streaming" => {
                    // It is still deciding: wait for its answer.
                    self.wait_slot(&peer, &slot_path, COMMIT_WAIT)
                        .filter(|s| s.status == "done")
                }
                other => other,
            };
            if there.is_none() {
                let _ = peer.call("DELETE", &slot_path, None, REQUEST_TIMEOUT);
                return Err(self.migration_failed(&g, &to, &e.to_string()));
            }
            tracing::error!(
                guest = %name,
                "the send failed ({e}) but {to} runs the guest: stopping the copy here"
            );
            if let Some(p) = g.pid {
                procfs::signal(p, libc::SIGKILL);
            }
            split = true;
        }
        let ms = t0.elapsed().as_millis() as u64;
        self.finish_moved(&g, &to, ms, split)?;
        let done = self.wait_slot(&peer, &slot_path, COMMIT_WAIT);
        let (state, ip) = match &done {
            Some(s) if s.status == "done" => (s.state.unwrap_or(GuestState::Running), s.ip.clone()),
            other => {
                let why = other
                    .as_ref()
                    .map(|s| format!("{} {}", s.status, s.error.clone().unwrap_or_default()))
                    .unwrap_or_else(|| "no answer".into());
                return Err(Error::Other(format!(
                    "{name} left this daemon but {to} does not say it runs it ({why}): see both daemons' events"
                )));
            }
        };
        let usage_records = match self.send_usage(&peer, &slot, id) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(guest = %name, "usage history not handed over: {e}");
                self.events
                    .emit(name, "usage-kept", format!("not handed to {to}: {e}"));
                0
            }
        };
        Ok(MigrateReport {
            guest: name.to_owned(),
            to: to.to_string(),
            ms,
            state,
            ip,
            usage_records,
        })
    }

    /// Polls a slot until it is done or failed, at most `t`.
    fn wait_slot(&self, peer: &PeerClient, path: &str, t: Duration) -> Option<SlotInfo> {
        let t0 = Instant::now();
        loop {
            let s = peer.get::<SlotInfo>(path).ok();
            match &s {
                Some(i) if i.status == "done" || i.status == "failed" => return s,
                _ if t0.elapsed() >= t => return s,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The source's relay: the VMM's connection to its jail's socket, to
    /// the destination's slot stream.
    fn relay_out(
        &self,
        listener: &UnixListener,
        peer: &PeerClient,
        slot: &str,
        stop: &AtomicBool,
    ) -> Result<()> {
        let t0 = Instant::now();
        let vmm = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if stop.load(Ordering::Relaxed) || t0.elapsed() > CONNECT_WAIT {
                        return Err(Error::Other("the VMM did not connect".into()));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(Error::Other(format!("accept: {e}"))),
            }
        };
        let _ = vmm.set_nonblocking(false);
        let (conn, pending) = match peer.open_stream(&format!("/migrations/{slot}/stream")) {
            Ok(v) => v,
            Err(e) => {
                let _ = vmm.shutdown(std::net::Shutdown::Both);
                return Err(e);
            }
        };
        let (back, sent) = relay(conn, &pending, Conn::Unix(vmm));
        tracing::info!("migration stream: {sent} bytes out, {back} back");
        Ok(())
    }

    /// The guest runs on the destination: its VMM here ends, what it
    /// used goes, and its row says `moved` (keeping its name, address and
    /// console log until `condo rm`).
    fn finish_moved(&self, g: &GuestRow, to: &PeerAddr, ms: u64, split: bool) -> Result<()> {
        if let (Some(pid), Some(start)) = (g.pid, g.pid_start) {
            // The VMM exits once the destination runs the guest; its jail
            // follows.
            if !self.wait_gone(pid, Some(start), Duration::from_secs(30)) {
                procfs::signal(pid, libc::SIGKILL);
                self.wait_gone(pid, Some(start), Duration::from_secs(5));
            }
        }
        self.kill_jail_processes(g.id);
        self.cleanup_process(g.id);
        // The destination has its own link to the disk.
        let _ = std::fs::remove_file(self.paths.disk(g.id));
        self.db().set_moved(g.id)?;
        lock(&self.restart_at).remove(&g.id);
        self.events.emit(
            &g.name,
            "moved",
            format!(
                "to {to} in {ms} ms{}",
                if split {
                    " (the copy here was stopped: the destination had resumed it)"
                } else {
                    ""
                }
            ),
        );
        Ok(())
    }

    /// A failed move: the guest runs here as before (or, if its VMM died
    /// meanwhile, ended as any guest ends).
    fn migration_failed(&self, g: &GuestRow, to: &PeerAddr, why: &str) -> Error {
        let alive = matches!((g.pid, g.pid_start), (Some(p), Some(s)) if procfs::is_same(p, s));
        let name = &g.name;
        let _ = self.db().set_migration(g.id, None);
        if alive {
            let state = match self.api(g.id).instance_state(Duration::from_secs(10)) {
                Ok(s) if s == "Paused" => GuestState::Paused,
                _ => GuestState::Running,
            };
            let _ = self.db().set_state(g.id, state);
            self.events
                .emit(name, "migrate-failed", format!("to {to}: {why}"));
            Error::Other(format!(
                "migration of {name} to {to} failed: {why}; {name} runs here still"
            ))
        } else {
            let _ = self.db().set_state(g.id, GuestState::Running);
            if let Ok(Some(g)) = self.db().guest_by_id(g.id) {
                let _ = self.finish(&g);
            }
            self.events
                .emit(name, "migrate-failed", format!("to {to}: {why}"));
            Error::Other(format!(
                "migration of {name} to {to} failed: {why}; its VMM ended meanwhile"
            ))
        }
    }

    /// Hands the guest's usage history to the destination, then forgets it
    /// here. Returns the records sent.
    fn send_usage(&self, peer: &PeerClient, slot: &SlotInfo, id: i64) -> Result<u64> {
        let records = self.db().usage_all(id)?;
        let mut sent = 0u64;
        let mut by_res: std::collections::BTreeMap<i64, Vec<[i64; 9]>> = Default::default();
        for (res, u) in records {
            if res != crate::accounting::MINUTE_MS && res as u64 != slot.sample_ms {
                continue; // raw samples of another resolution: not kept there
            }
            by_res.entry(res).or_default().push([
                u.t_ms, u.dur_ms, u.cpu_us, u.rss, u.touched, u.disk_rd, u.disk_wr, u.net_rx,
                u.net_tx,
            ]);
        }
        for (res, rows) in by_res {
            for chunk in rows.chunks(MAX_USAGE_RECORDS / 2) {
                let body = UsageImport {
                    res_ms: res,
                    records: chunk.to_vec(),
                };
                let b = serde_json::to_string(&body).map_err(|e| Error::Other(e.to_string()))?;
                peer.call(
                    "POST",
                    &format!("/migrations/{}/usage", slot.id),
                    Some(&b),
                    REQUEST_TIMEOUT,
                )?;
                sent += chunk.len() as u64;
            }
        }
        self.db().delete_usage(id)?;
        Ok(sent)
    }

    // After a restart.

    /// At start-up, an `incoming` guest: its receive finished (the VMM
    /// runs the guest) or it is rolled back. Returns whether its jail
    /// lives on.
    pub(crate) fn adopt_incoming(&self, g: &GuestRow) -> bool {
        let alive = matches!((g.pid, g.pid_start), (Some(p), Some(s)) if procfs::is_same(p, s));
        let state = alive
            .then(|| self.api(g.id).instance_state(Duration::from_secs(2)).ok())
            .flatten();
        let (Some(pid), Some(start)) = (g.pid, g.pid_start) else {
            self.rollback_incoming(g, "the daemon was restarted before the guest arrived");
            return false;
        };
        match state.as_deref() {
            Some(s @ ("Running" | "Paused")) => {
                let db = self.db();
                let r = db.set_running(g.id, pid, start).and_then(|()| {
                    if s == "Paused" {
                        db.set_state(g.id, GuestState::Paused)?;
                    }
                    db.set_migration(g.id, None)
                });
                drop(db);
                if let Err(e) = r {
                    tracing::error!("guest {}: {e}", g.name);
                }
                self.events.emit(
                    &g.name,
                    "adopted",
                    "it had arrived while the daemon was down",
                );
                true
            }
            _ => {
                self.rollback_incoming(g, "the daemon was restarted before the guest arrived");
                false
            }
        }
    }

    /// A `migrating` guest that no migration of this daemon owns (the
    /// daemon was restarted during the move): once its VMM answers again
    /// the move failed and it runs here; if its VMM ended with status 0,
    /// the move succeeded (the VMM exits only then) and it is `moved`.
    pub(crate) fn settle_migrating(&self, g: &GuestRow) {
        let l = self.guest_lock(g.id);
        let Ok(_guard) = l.try_lock() else { return };
        let Ok(Some(g)) = self.db().guest_by_id(g.id) else {
            return;
        };
        if g.state != GuestState::Migrating {
            return;
        }
        let alive = matches!((g.pid, g.pid_start), (Some(p), Some(s)) if procfs::is_same(p, s));
        if alive {
            if let Ok(s) = self.api(g.id).instance_state(Duration::from_millis(500)) {
                let state = if s == "Paused" {
                    GuestState::Paused
                } else {
                    GuestState::Running
                };
                let _ = self.db().set_state(g.id, state);
                let _ = self.db().set_migration(g.id, None);
                self.events.emit(
                    &g.name,
                    "migrate-failed",
                    "the daemon was restarted during the move; the guest runs here",
                );
            }
            return;
        }
        self.reap_children();
        let status = std::fs::read_to_string(self.paths.exit_file(g.id))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if status == Some(0) {
            self.cleanup_process(g.id);
            let _ = std::fs::remove_file(self.paths.disk(g.id));
            if let Err(e) = self.db().set_moved(g.id) {
                tracing::error!("guest {}: {e}", g.name);
            }
            let to = g
                .migration
                .as_ref()
                .and_then(|n| n.to.clone())
                .unwrap_or_default();
            self.events.emit(
                &g.name,
                "moved",
                format!("to {to} (the move ended while the daemon was down)"),
            );
        } else {
            let _ = self.db().set_migration(g.id, None);
            if let Err(e) = self.finish(&g) {
                tracing::error!("guest {}: {e}", g.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn slot_ids_are_random_hex() {
        let (a, b) = (new_slot_id().unwrap(), new_slot_id().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn only_guest_disks_of_other_daemons_are_taken() {
        let d = std::env::temp_dir().join(format!("condo-migrate-{}", std::process::id()));
        let other = d.join("b/guests/7");
        std::fs::create_dir_all(&other).unwrap();
        let own = d.join("a");
        let disk = other.join("disk");
        std::fs::write(&disk, b"x").unwrap();
        // Files of root (this test runs as root in CI) are refused; any
        // other owner is a guest's.
        let r = check_incoming_disk(&disk, &own);
        // SAFETY: no arguments.
        if unsafe { libc::geteuid() } == 0 {
            assert!(r.unwrap_err().to_string().contains("root"));
            std::os::unix::fs::chown(&disk, Some(200_000), Some(200_000)).unwrap();
            assert_eq!(
                check_incoming_disk(&disk, &own).unwrap(),
                (200_000, 200_000)
            );
        }
        for bad in [
            d.join("b/guests/7/other"),
            d.join("b/guests/x/disk"),
            d.join("b/guests/7/../7/disk"),
            PathBuf::from("/etc/shadow"),
        ] {
            assert!(
                check_incoming_disk(&bad, &own).is_err(),
                "{}",
                bad.display()
            );
        }
        assert!(
            check_incoming_disk(&disk, &d).is_err(),
            "own state directory"
        );
        let _ = std::fs::remove_dir_all(d);
    }
}

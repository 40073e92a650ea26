//! The daemon's state database: SQLite (compiled in), WAL mode, in the
//! state directory. It owns the schema and every query; the rest of the
//! daemon sees typed rows. What is read back is checked like a request (a
//! row that does not parse is an error naming it, never a panic).
//!
//! Tables: `guests` (one row per guest: its resolved specification, state,
//! the uid, address and process it was given), `images`, `snapshots`,
//! `usage` (samples at full resolution and one-minute aggregates) and
//! `usage_guests` (name and size of every guest that has samples, kept
//! after the guest is deleted, for utilization traces).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{GuestSpec, GuestState};

/// Version 2 added `guests.migration` (live migration between daemons).
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS guests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    uid INTEGER NOT NULL UNIQUE,
    ip TEXT UNIQUE,
    mac TEXT,
    pid INTEGER,
    pid_start INTEGER,
    restarts INTEGER NOT NULL DEFAULT 0,
    exit_status INTEGER,
    snapshot TEXT,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    migration TEXT
);
CREATE TABLE IF NOT EXISTS images (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    name TEXT PRIMARY KEY,
    guest TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_guests (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    mem_mib INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    guest_id INTEGER NOT NULL,
    res_ms INTEGER NOT NULL,
    t_ms INTEGER NOT NULL,
    dur_ms INTEGER NOT NULL,
    cpu_us INTEGER NOT NULL,
    rss INTEGER NOT NULL,
    touched INTEGER NOT NULL,
    disk_rd INTEGER NOT NULL,
    disk_wr INTEGER NOT NULL,
    net_rx INTEGER NOT NULL,
    net_tx INTEGER NOT NULL,
    PRIMARY KEY (guest_id, res_ms, t_ms)
) WITHOUT ROWID;
";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One guest as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestRow {
    pub id: i64,
    pub name: String,
    /// The specification with the image resolved (kernel, initrd, rootfs
    /// and command line filled in).
    pub spec: GuestSpec,
    pub state: GuestState,
    pub uid: u32,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<String>,
    /// The guest's `condo jail` process and its start time (clock ticks
    /// after boot, /proc/PID/stat field 22: a reused PID has another).
    pub pid: Option<i32>,
    pub pid_start: Option<u64>,
    pub restarts: u32,
    pub exit_status: Option<i32>,
    /// Restored from this snapshot (its next start restores again only
    /// when it never ran; a stopped clone boots cold).
    pub snapshot: Option<String>,
    /// The daemon asked it to stop: its end is not a failure and the
    /// restart policy does not apply.
    pub stop_requested: bool,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    /// The live migration this guest is in, or the one that moved it.
    pub migration: Option<MigrationNote>,
}

/// What a guest's row remembers of a live migration (JSON in
/// `guests.migration`): where it went (`migrating`, `moved`), or where it
/// comes from and whose its disk was (`incoming`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationNote {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The destination's slot (on both sides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// The disk's owner before the destination took it (uid, gid), given
    /// back when the migration fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_owner: Option<(u32, u32)>,
}

/// A stored image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRow {
    pub name: String,
    /// Paths in the state directory's `images/NAME/`.
    pub spec: crate::model::ImageSpec,
    pub created_ms: i64,
}

/// A stored snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRow {
    pub name: String,
    pub guest: String,
    /// The snapshotted guest's specification (clones get it).
    pub spec: GuestSpec,
    pub created_ms: i64,
}

/// One usage record: a sample (res_ms = the sampling interval) or a
/// one-minute aggregate (res_ms = 60000). Counters are what was used in
/// the `dur_ms` before `t_ms`; gauges are the last value (RSS, touched).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub t_ms: i64,
    pub dur_ms: i64,
    pub cpu_us: i64,
    pub rss: i64,
    pub touched: i64,
    pub disk_rd: i64,
    pub disk_wr: i64,
    pub net_rx: i64,
    pub net_tx: i64,
}

/// The database connection.
pub struct Db {
    conn: Connection,
}

fn bad_row(what: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("{what}: {e}").into(),
    )
}

fn guest_from(r: &Row) -> rusqlite::Result<GuestRow> {
    let name: String = r.get("name")?;
    let spec: String = r.get("spec")?;
    let spec: GuestSpec =
        serde_json::from_str(&spec).map_err(|e| bad_row(&format!("guest {name} spec"), e))?;
    spec.validate()
        .map_err(|e| bad_row(&format!("guest {name} spec"), e))?;
    let state: String = r.get("state")?;
    let state = GuestState::parse(&state)
        .ok_or_else(|| bad_row(&format!("guest {name}"), format!("state {state:?}")))?;
    let ip: Option<String> = r.get("ip")?;
    let ip = ip
        .map(|s| s.parse::<Ipv4Addr>())
        .transpose()
        .map_err(|e| bad_row(&format!("guest {name} ip"), e))?;
    let migration: Option<String> = r.get("migration")?;
    let migration = migration
        .map(|s| serde_json::from_str::<MigrationNote>(&s))
        .transpose()
        .map_err(|e| bad_row(&format!("guest {name} migration"), e))?;
    Ok(GuestRow {
        id: r.get("id")?,
        name,
        spec,
        state,
        uid: r.get("uid")?,
        ip,
        mac: r.get("mac")?,
        pid: r.get("pid")?,
        pid_start: r.get::<_, Option<i64>>("pid_start")?.map(|v| v as u64),
        restarts: r.get("restarts")?,
        exit_status: r.get("exit_status")?,
        snapshot: r.get("snapshot")?,
        stop_requested: r.get::<_, i64>("stop_requested")? != 0,
        created_ms: r.get("created_ms")?,
        started_ms: r.get("started_ms")?,
        migration,
    })
}

/// What a new guest is given: its row id, uid and address.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub id: i64,
    pub uid: u32,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<String>,
    /// The record of the same guest having moved away that an incoming
    /// guest replaced: its files are the caller's to remove.
    pub replaced: Option<i64>,
}

/// The MAC address that goes with a guest's IPv4 address (locally
/// administered, as Firecracker's examples do: 06:00 then the address).
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("06:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The address range and uid range a new guest takes from.
pub struct Pools {
    pub uid_base: u32,
    pub uid_count: u32,
    /// (subnet, host numbers) when guests get addresses.
    pub net: Option<(crate::config::Subnet, std::ops::Range<u32>)>,
}

/// Totals that admission control compares against the host.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Commitments {
    pub guests: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
}

impl Db {
    /// Opens (creating) the database at `path`: WAL mode, a busy timeout,
    /// the schema.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Db(format!("cannot use WAL mode (got {mode})")));
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(Error::Db(format!(
                "{} has schema version {version}; this condo knows {SCHEMA_VERSION}",
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA)?;
        // Version 1 databases: the table exists without the new column.
        let has_migration: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('guests') WHERE name = 'migration'")?
            .exists([])?;
        if !has_migration {
            conn.execute_batch("ALTER TABLE guests ADD COLUMN migration TEXT")?;
        }
        conn.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION}"))?;
        Ok(Self { conn })
    }

    /// Runs `f` in one transaction: all of its changes or none.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let tx = self.conn.transaction()?;
        let v = f(&tx)?;
        tx.commit()?;
        Ok(v)
    }

    /// Checks the database file's integrity (`PRAGMA quick_check`).
    pub fn check(&self) -> Result<()> {
        let r: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if r == "ok" {
            Ok(())
        } else {
            Err(Error::Db(format!("integrity check: {r}")))
        }
    }

    pub fn guests(&self) -> Result<Vec<GuestRow>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT * FROM guests ORDER BY name")?;
        let rows = st.query_map([], guest_from)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn guest(&self, name: &str) -> Result<GuestRow> {
        self.conn
            .prepare_cached("SELECT * FROM guests WHERE name = ?1")?
            .query_row([name], guest_from)
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("no guest named {name:?}")))
    }

    pub fn guest_by_id(&self, id: i64) -> Result<Option<GuestRow>> {
        Ok(self
            .conn
            .prepare_cached("SELECT * FROM guests WHERE id = ?1")?
            .query_row([id], guest_from)
            .optional()?)
    }

    /// Every guest's id and name, read without parsing the rest (what a
    /// start-up clean-up needs even when a row is damaged).
    pub fn guest_ids(&self) -> Result<Vec<(i64, String, String)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, name, state FROM guests")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn commitments(&self) -> Result<Commitments> {
        Self::commitments_of(&self.conn)
    }

    /// What every guest in the database commits (inside a transaction:
    /// the admission check and the insert see the same rows). A guest that
    /// moved to another daemon commits nothing here.
    pub fn commitments_of(conn: &Connection) -> Result<Commitments> {
        let (guests, vcpus, mem): (i64, f64, f64) = conn.query_row(
            "SELECT COUNT(*), TOTAL(json_extract(spec, '$.vcpus')),
             TOTAL(json_extract(spec, '$.memory_mib')) FROM guests WHERE state != 'moved'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(Commitments {
            guests: guests.max(0) as u64,
            vcpus: vcpus.max(0.0) as u64,
            memory_mib: mem.max(0.0) as u64,
        })
    }
    /// Inserts guest `spec`'s row in `state` with its uid, address and
    /// MAC, the snapshot it is cloned from or its incoming migration's
    /// note, and its row in the usage tables; its id.
    fn insert_guest(
        tx: &Connection,
        spec: &GuestSpec,
        state: &str,
        (uid, ip, mac): (u32, Option<Ipv4Addr>, Option<&str>),
        snapshot: Option<&str>,
        migration: Option<&str>,
    ) -> Result<i64> {
        let spec_json = serde_json::to_string(spec).map_err(|e| Error::Other(e.to_string()))?;
        tx.prepare_cached(
            "INSERT INTO guests (name, spec, state, uid, ip, mac, snapshot, created_ms, migration)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            spec.name,
            spec_json,
            state,
            uid,
            ip.map(|a| a.to_string()),
            mac,
            snapshot,
            now_ms(),
            migration
        ])?;
        let id = tx.last_insert_rowid();
        tx.prepare_cached(
            "INSERT OR REPLACE INTO usage_guests (id, name, vcpus, mem_mib) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![id, spec.name, spec.vcpus, spec.memory_mib])?;
        Ok(id)
    }

    /// Inserts guests in state `creating` with the lowest free uid and
    /// address each; the caller checked admission in the same transaction.
    pub fn insert_guests(
        tx: &Connection,
        specs: &[GuestSpec],
        pools: &Pools,
        snapshot: Option<&str>,
    ) -> Result<Vec<Allocation>> {
        let mut out = Vec::new();
        let mut used_uids: Vec<u32> = {
            let mut st = tx.prepare_cached("SELECT uid FROM guests")?;
            let v = st.query_map([], |r| r.get(0))?;
            v.collect::<rusqlite::Result<_>>()?
        };
        used_uids.sort_unstable();
        let mut used_ips: Vec<u32> = {
            let mut st = tx.prepare_cached("SELECT ip FROM guests WHERE ip IS NOT NULL")?;
            let v = st.query_map([], |r| r.get::<_, String>(0))?;
            let v: Vec<String> = v.collect::<rusqlite::Result<_>>()?;
            v.iter()
                .filter_map(|s| s.parse::<Ipv4Addr>().ok())
                .map(u32::from)
                .collect()
        };
        used_ips.sort_unstable();
        for spec in specs {
            let exists: bool = tx
                .prepare_cached("SELECT 1 FROM guests WHERE name = ?1")?
                .exists([&spec.name])?;
            if exists {
                return Err(Error::invalid(format!(
                    "a guest named {:?} already exists",
                    spec.name
                )));
            }
            let uid = (pools.uid_base..pools.uid_base + pools.uid_count)
                .find(|u| used_uids.binary_search(u).is_err())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "no free uid left in {}..{} (one per guest)",
                        pools.uid_base,
                        pools.uid_base + pools.uid_count
                    ))
                })?;
            if let Err(i) = used_uids.binary_search(&uid) {
                used_uids.insert(i, uid);
            }
            let ip = match (&pools.net, spec.has_net()) {
                (Some((subnet, hosts)), true) => {
                    let ip = hosts
                        .clone()
                        .map(|h| u32::from(subnet.host(h)))
                        .find(|a| used_ips.binary_search(a).is_err())
                        .ok_or_else(|| {
                            Error::invalid(format!("no free address left in {subnet}"))
                        })?;
                    if let Err(i) = used_ips.binary_search(&ip) {
                        used_ips.insert(i, ip);
                    }
                    Some(Ipv4Addr::from(ip))
                }
                _ => None,
            };
            let mac = ip.map(mac_for);
            let id = Self::insert_guest(
                tx,
                spec,
                "creating",
                (uid, ip, mac.as_deref()),
                snapshot,
                None,
            )?;
            out.push(Allocation {
                id,
                uid,
                ip,
                mac,
                replaced: None,
            });
        }
        Ok(out)
    }

    /// Inserts a guest arriving from another daemon, in state `incoming`:
    /// the lowest free uid, but the address and MAC it has (refused when
    /// another guest here has the address or the name; a record of the
    /// same guest having moved away is replaced). The caller checked
    /// admission in the same transaction.
    pub fn insert_incoming(
        tx: &Connection,
        spec: &GuestSpec,
        pools: &Pools,
        ip: Option<Ipv4Addr>,
        mac: Option<&str>,
        note: &MigrationNote,
    ) -> Result<Allocation> {
        let existing: Option<(i64, String)> = tx
            .prepare_cached("SELECT id, state FROM guests WHERE name = ?1")?
            .query_row([&spec.name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let replaced = existing.as_ref().map(|(id, _)| *id);
        if let Some((id, state)) = existing {
            if state != "moved" {
                return Err(Error::invalid(format!(
                    "a guest named {:?} already exists here ({state})",
                    spec.name
                )));
            }
            tx.execute("DELETE FROM guests WHERE id = ?1", [id])?;
            tx.execute("DELETE FROM usage WHERE guest_id = ?1", [id])?;
            tx.execute("DELETE FROM usage_guests WHERE id = ?1", [id])?;
        }
        if let Some(ip) = ip {
            let holder: Option<String> = tx
                .prepare_cached("SELECT name FROM guests WHERE ip = ?1")?
                .query_row([ip.to_string()], |r| r.get(0))
                .optional()?;
            if let Some(h) = holder {
                return Err(Error::invalid(format!(
                    "address {ip} is taken here by guest {h}"
                )));
            }
        }
        let mut used: Vec<u32> = {
            let mut st = tx.prepare_cached("SELECT uid FROM guests")?;
            let v = st.query_map([], |r| r.get(0))?;
            v.collect::<rusqlite::Result<_>>()?
        };
        used.sort_unstable();
        let uid = (pools.uid_base..pools.uid_base + pools.uid_count)
            .find(|u| used.binary_search(u).is_err())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "no free uid left in {}..{} (one per guest)",
                    pools.uid_base,
                    pools.uid_base + pools.uid_count
                ))
            })?;
        let note_json = serde_json::to_string(note).map_err(|e| Error::Other(e.to_string()))?;
        let id = Self::insert_guest(tx, spec, "incoming", (uid, ip, mac), None, Some(&note_json))?;
        Ok(Allocation {
            id,
            uid,
            ip,
            mac: mac.map(str::to_owned),
            replaced,
        })
    }

    /// Records a guest's process without changing its state.
    pub fn set_process(&self, id: i64, pid: i32, pid_start: u64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE guests SET pid = ?2, pid_start = ?3 WHERE id = ?1")?
            .execute(params![id, pid, pid_start as i64])?;
        Ok(())
    }

    /// Records (or forgets) a guest's migration note.
    pub fn set_migration(&self, id: i64, note: Option<&MigrationNote>) -> Result<()> {
        let json = note
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| Error::Other(e.to_string()))?;
        self.conn
            .prepare_cached("UPDATE guests SET migration = ?2 WHERE id = ?1")?
            .execute(params![id, json])?;
        Ok(())
    }

    /// Records that a guest moved to another daemon: no process here.
    pub fn set_moved(&self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE guests SET state = 'moved', pid = NULL, pid_start = NULL,
                 exit_status = NULL WHERE id = ?1",
            )?
            .execute([id])?;
        Ok(())
    }

    pub fn set_state(&self, id: i64, state: GuestState) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE guests SET state = ?2 WHERE id = ?1")?
            .execute(params![id, state.as_str()])?;
        Ok(())
    }

    /// Records a started guest's process.
    pub fn set_running(&self, id: i64, pid: i32, pid_start: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE guests SET state = 'running', pid = ?2, pid_start = ?3, exit_status = NULL,
                 stop_requested = 0, started_ms = ?4 WHERE id = ?1",
            )?
            .execute(params![id, pid, pid_start as i64, now_ms()])?;
        Ok(())
    }

    /// Records that a guest's process is being started (before it exists).
    pub fn set_starting(&self, id: i64, pid: Option<i32>, pid_start: Option<u64>) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE guests SET state = 'starting', pid = ?2, pid_start = ?3, stop_requested = 0
                 WHERE id = ?1",
            )?
            .execute(params![id, pid, pid_start.map(|v| v as i64)])?;
        Ok(())
    }

    /// Records how a guest's process ended.
    pub fn set_ended(&self, id: i64, state: GuestState, status: Option<i32>) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE guests SET state = ?2, exit_status = ?3, pid = NULL, pid_start = NULL
                 WHERE id = ?1",
            )?
            .execute(params![id, state.as_str(), status])?;
        Ok(())
    }

    pub fn set_stop_requested(&self, id: i64, yes: bool) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE guests SET stop_requested = ?2 WHERE id = ?1")?
            .execute(params![id, yes as i64])?;
        Ok(())
    }

    pub fn add_restart(&self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE guests SET restarts = restarts + 1 WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    pub fn clear_snapshot(&self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE guests SET snapshot = NULL WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    pub fn delete_guest(&self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM guests WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    // Images.

    pub fn images(&self) -> Result<Vec<ImageRow>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT name, spec, created_ms FROM images ORDER BY name")?;
        let rows = st.query_map([], |r| {
            let name: String = r.get(0)?;
            let spec: String = r.get(1)?;
            Ok(ImageRow {
                spec: serde_json::from_str(&spec)
                    .map_err(|e| bad_row(&format!("image {name}"), e))?,
                name,
                created_ms: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn image(&self, name: &str) -> Result<ImageRow> {
        self.images()?
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| Error::NotFound(format!("no image named {name:?}")))
    }

    pub fn insert_image(&self, img: &crate::model::ImageSpec) -> Result<()> {
        let spec = serde_json::to_string(img).map_err(|e| Error::Other(e.to_string()))?;
        match self.conn.execute(
            "INSERT INTO images (name, spec, created_ms) VALUES (?1, ?2, ?3)",
            params![img.name, spec, now_ms()],
        ) {
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(Error::invalid(format!(
                    "an image named {:?} already exists",
                    img.name
                )))
            }
            r => r.map(|_| ()).map_err(Error::from),
        }
    }

    pub fn delete_image(&self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM images WHERE name = ?1", [name])?;
        Ok(())
    }

    // Snapshots.

    pub fn snapshots(&self) -> Result<Vec<SnapshotRow>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT name, guest, spec, created_ms FROM snapshots ORDER BY name")?;
        let rows = st.query_map([], |r| {
            let name: String = r.get(0)?;
            let spec: String = r.get(2)?;
            Ok(SnapshotRow {
                spec: serde_json::from_str(&spec)
                    .map_err(|e| bad_row(&format!("snapshot {name}"), e))?,
                name,
                guest: r.get(1)?,
                created_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn snapshot(&self, name: &str) -> Result<SnapshotRow> {
        self.snapshots()?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::NotFound(format!("no snapshot named {name:?}")))
    }

    pub fn insert_snapshot(&self, s: &SnapshotRow) -> Result<()> {
        let spec = serde_json::to_string(&s.spec).map_err(|e| Error::Other(e.to_string()))?;
        self.conn.execute(
            "INSERT OR REPLACE INTO snapshots (name, guest, spec, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![s.name, s.guest, spec, s.created_ms],
        )?;
        Ok(())
    }

    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM snapshots WHERE name = ?1", [name])?;
        Ok(())
    }

    // Usage.

    /// Stores samples (one transaction for all guests of a tick).
    pub fn insert_usage(&mut self, res_ms: i64, rows: &[(i64, Usage)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO usage (guest_id, res_ms, t_ms, dur_ms, cpu_us, rss, touched,
                 disk_rd, disk_wr, net_rx, net_tx) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for (id, u) in rows {
                st.execute(params![
                    id, res_ms, u.t_ms, u.dur_ms, u.cpu_us, u.rss, u.touched, u.disk_rd, u.disk_wr,
                    u.net_rx, u.net_tx
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every record of a guest: (resolution, record), in time order.
    pub fn usage_all(&self, guest_id: i64) -> Result<Vec<(i64, Usage)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT res_ms, t_ms, dur_ms, cpu_us, rss, touched, disk_rd, disk_wr, net_rx, net_tx
             FROM usage WHERE guest_id = ?1 ORDER BY res_ms, t_ms",
        )?;
        let rows = st.query_map([guest_id], |r| {
            Ok((
                r.get(0)?,
                Usage {
                    t_ms: r.get(1)?,
                    dur_ms: r.get(2)?,
                    cpu_us: r.get(3)?,
                    rss: r.get(4)?,
                    touched: r.get(5)?,
                    disk_rd: r.get(6)?,
                    disk_wr: r.get(7)?,
                    net_rx: r.get(8)?,
                    net_tx: r.get(9)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Forgets a guest's records (its history went with it to another
    /// daemon).
    pub fn delete_usage(&mut self, guest_id: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM usage WHERE guest_id = ?1", [guest_id])?;
        tx.execute("DELETE FROM usage_guests WHERE id = ?1", [guest_id])?;
        tx.commit()?;
        Ok(())
    }

    /// Stores records from another daemon, keeping any this daemon has at
    /// the same time.
    pub fn import_usage(&mut self, guest_id: i64, res_ms: i64, rows: &[Usage]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO usage (guest_id, res_ms, t_ms, dur_ms, cpu_us, rss, touched,
                 disk_rd, disk_wr, net_rx, net_tx) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for u in rows {
                st.execute(params![
                    guest_id, res_ms, u.t_ms, u.dur_ms, u.cpu_us, u.rss, u.touched, u.disk_rd,
                    u.disk_wr, u.net_rx, u.net_tx
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops records of resolution `res_ms` older than `before_ms`.
    pub fn prune_usage(&self, res_ms: i64, before_ms: i64) -> Result<()> {
        self.conn.execute(
            "DELETE FROM usage WHERE res_ms = ?1 AND t_ms < ?2",
            params![res_ms, before_ms],
        )?;
        Ok(())
    }

    /// A guest's records of resolution `res_ms` since `since_ms`, in time
    /// order.
    pub fn usage(&self, guest_id: i64, res_ms: i64, since_ms: i64) -> Result<Vec<Usage>> {
        let mut st = self.conn.prepare_cached(
            "SELECT t_ms, dur_ms, cpu_us, rss, touched, disk_rd, disk_wr, net_rx, net_tx FROM usage
             WHERE guest_id = ?1 AND res_ms = ?2 AND t_ms >= ?3 ORDER BY t_ms",
        )?;
        let rows = st.query_map(params![guest_id, res_ms, since_ms], |r| {
            Ok(Usage {
                t_ms: r.get(0)?,
                dur_ms: r.get(1)?,
                cpu_us: r.get(2)?,
                rss: r.get(3)?,
                touched: r.get(4)?,
                disk_rd: r.get(5)?,
                disk_wr: r.get(6)?,
                net_rx: r.get(7)?,
                net_tx: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Every guest with records: id, name, vCPUs, memory.
    pub fn usage_guests(&self) -> Result<Vec<(i64, String, u32, u64)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, name, vcpus, mem_mib FROM usage_guests ORDER BY name, id",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Forgets usage_guests rows that have no guest and no records left.
    pub fn prune_usage_guests(&self) -> Result<()> {
        self.conn.execute(
            "DELETE FROM usage_guests WHERE id NOT IN (SELECT id FROM guests)
             AND id NOT IN (SELECT DISTINCT guest_id FROM usage)",
            [],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Subnet;

    fn temp_db(name: &str) -> (std::path::PathBuf, Db) {
        let d = std::env::temp_dir().join(format!("condo-db-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let db = Db::open(&d.join("condo.db")).unwrap();
        (d, db)
    }

    fn spec(name: &str) -> GuestSpec {
        let mut s = GuestSpec::named(name);
        s.kernel = Some("/k".into());
        s.net = Some(true);
        s
    }

    #[test]
    fn guests_get_the_lowest_free_uid_and_address() {
        let (d, mut db) = temp_db("alloc");
        let pools = Pools {
            uid_base: 1000,
            uid_count: 3,
            net: Some((Subnet::parse("10.9.0.0/24").unwrap(), 2..255)),
        };
        let a = db
            .transaction(|tx| Db::insert_guests(tx, &[spec("a"), spec("b")], &pools, None))
            .unwrap();
        assert_eq!((a[0].uid, a[1].uid), (1000, 1001));
        assert_eq!(a[1].ip, Some(Ipv4Addr::new(10, 9, 0, 3)));
        assert_eq!(a[1].mac.as_deref(), Some("06:00:0a:09:00:03"));
        db.delete_guest(a[0].id).unwrap();
        let c = db
            .transaction(|tx| Db::insert_guests(tx, &[spec("c")], &pools, None))
            .unwrap();
        assert_eq!(
            (c[0].uid, c[0].ip),
            (1000, Some(Ipv4Addr::new(10, 9, 0, 2)))
        );
        let e = db
            .transaction(|tx| Db::insert_guests(tx, &[spec("c")], &pools, None))
            .unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        // All or nothing: the second of two does not fit, neither is made.
        let e = db
            .transaction(|tx| Db::insert_guests(tx, &[spec("d"), spec("e")], &pools, None))
            .unwrap_err();
        assert!(e.to_string().contains("no free uid"), "{e}");
        assert_eq!(db.guests().unwrap().len(), 2);
        let g = db.guest("c").unwrap();
        assert_eq!(g.state, GuestState::Creating);
        assert_eq!(db.commitments().unwrap().memory_mib, 256);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn incoming_guests_keep_their_address_and_replace_a_moved_record() {
        let (d, mut db) = temp_db("incoming");
        let pools = Pools {
            uid_base: 1000,
            uid_count: 10,
            net: Some((Subnet::parse("10.9.0.0/24").unwrap(), 2..100)),
        };
        let a = db
            .transaction(|tx| Db::insert_guests(tx, &[spec("a")], &pools, None))
            .unwrap();
        let ip = |n| Some(Ipv4Addr::new(10, 9, 0, n));
        let note = MigrationNote {
            from: Some("x".into()),
            ..MigrationNote::default()
        };
        // Its own address, even outside this daemon's range.
        let b = db
            .transaction(|tx| {
                Db::insert_incoming(
                    tx,
                    &spec("b"),
                    &pools,
                    ip(150),
                    Some("06:00:0a:09:00:96"),
                    &note,
                )
            })
            .unwrap();
        let row = db.guest("b").unwrap();
        assert_eq!(
            (row.state, row.ip, row.uid),
            (GuestState::Incoming, ip(150), 1001)
        );
        assert_eq!(row.migration, Some(note.clone()));
        assert_eq!(b.ip, ip(150));
        // Taken address, taken name: refused.
        let e = db
            .transaction(|tx| Db::insert_incoming(tx, &spec("c"), &pools, a[0].ip, None, &note))
            .unwrap_err();
        assert!(e.to_string().contains("taken here by guest a"), "{e}");
        let e = db
            .transaction(|tx| Db::insert_incoming(tx, &spec("a"), &pools, ip(160), None, &note))
            .unwrap_err();
        assert!(e.to_string().contains("already exists here"), "{e}");
        // A guest that moved away commits nothing, keeps its address, and
        // is replaced when it comes back.
        db.set_moved(a[0].id).unwrap();
        assert_eq!(db.commitments().unwrap().memory_mib, 128);
        let e = db
            .transaction(|tx| Db::insert_incoming(tx, &spec("c"), &pools, a[0].ip, None, &note))
            .unwrap_err();
        assert!(e.to_string().contains("taken here"), "{e}");
        let back = db
            .transaction(|tx| Db::insert_incoming(tx, &spec("a"), &pools, a[0].ip, None, &note))
            .unwrap();
        assert_eq!(
            back.replaced,
            Some(a[0].id),
            "the moved record's files are to go"
        );
        assert_eq!(b.replaced, None);
        assert_eq!(db.guest("a").unwrap().state, GuestState::Incoming);
        assert_eq!(db.guests().unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_version_1_database_gains_the_migration_column() {
        let (d, db) = temp_db("v1");
        drop(db);
        let path = d.join("condo.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP TABLE guests; CREATE TABLE guests (id INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT NOT NULL UNIQUE, spec TEXT NOT NULL, state TEXT NOT NULL,
                 uid INTEGER NOT NULL UNIQUE, ip TEXT UNIQUE, mac TEXT, pid INTEGER,
                 pid_start INTEGER, restarts INTEGER NOT NULL DEFAULT 0, exit_status INTEGER,
                 snapshot TEXT, stop_requested INTEGER NOT NULL DEFAULT 0,
                 created_ms INTEGER NOT NULL, started_ms INTEGER); PRAGMA user_version=1;",
            )
            .unwrap();
        }
        let mut db = Db::open(&path).unwrap();
        let pools = Pools {
            uid_base: 1000,
            uid_count: 10,
            net: None,
        };
        let a = db
            .transaction(|tx| Db::insert_guests(tx, &[spec("a")], &pools, None))
            .unwrap();
        db.set_migration(a[0].id, Some(&MigrationNote::default()))
            .unwrap();
        assert!(db.guest("a").unwrap().migration.is_some());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn damaged_rows_are_errors() {
        let (d, mut db) = temp_db("damaged");
        let pools = Pools {
            uid_base: 1000,
            uid_count: 10,
            net: None,
        };
        db.transaction(|tx| Db::insert_guests(tx, &[spec("a")], &pools, None))
            .unwrap();
        db.conn
            .execute(
                "UPDATE guests SET spec = '{\"name\":\"a\",\"vcpus\":0}'",
                [],
            )
            .unwrap();
        assert!(db.guests().is_err());
        assert_eq!(db.guest_ids().unwrap().len(), 1);
        db.conn
            .execute("UPDATE guests SET spec = 'not json'", [])
            .unwrap();
        assert!(db.guest("a").is_err());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn usage_is_stored_and_pruned() {
        let (d, mut db) = temp_db("usage");
        let u = |t| Usage {
            t_ms: t,
            dur_ms: 1000,
            cpu_us: 5,
            ..Usage::default()
        };
        db.insert_usage(1000, &[(1, u(1000)), (1, u(2000)), (2, u(2000))])
            .unwrap();
        assert_eq!(db.usage(1, 1000, 0).unwrap().len(), 2);
        db.prune_usage(1000, 1500).unwrap();
        assert_eq!(db.usage(1, 1000, 0).unwrap(), vec![u(2000)]);
        let _ = std::fs::remove_dir_all(d);
    }
}

//! `condo plan --apply`: the planner's moves made by the hosts' daemons.
//! Each move `{order, guest, from, to}` is a live migration that host
//! `from`'s daemon performs (`POST /guests/{guest}/migrate` with `to`'s
//! daemon as the destination), one after the other in the plan's order,
//! stopping at the first failure. Before any move, every guest is checked
//! to be running (or paused) on the host the plan moves it from: a stale
//! plan changes nothing.
//!
//! The daemons are named by the inventory (`"daemon"` of each host), and
//! each is reached at that address both by this command and by the other
//! daemons: `unix:PATH` (daemons on this host), or `tcp:HOST:PORT` (their
//! `--peer-listen` port, with the cluster key).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::manager::GuestInfo;
use crate::migrate::MigrateReport;
use crate::model::{GuestState, MigrateRequest};
use crate::peer::{PeerAddr, PeerClient, PeerKey};

/// One move of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub order: usize,
    pub guest: String,
    pub from: String,
    pub to: String,
}

/// The deadline of one move.
const MOVE_TIMEOUT: Duration = Duration::from_secs(3 * 3600);

/// Makes `moves` in order; `daemons` maps host names to daemon
/// addresses. Writes one line per move to `out`; the error (one line)
/// says what moved, what failed and what was not tried.
pub fn apply(
    moves: &[Move],
    daemons: &BTreeMap<String, String>,
    key: Option<PeerKey>,
    out: &mut dyn Write,
) -> Result<()> {
    if moves.is_empty() {
        let _ = writeln!(out, "apply: nothing to move");
        return Ok(());
    }
    let mut clients: BTreeMap<&str, PeerClient> = BTreeMap::new();
    for m in moves {
        for h in [&m.from, &m.to] {
            if clients.contains_key(h.as_str()) {
                continue;
            }
            let addr = daemons.get(h).ok_or_else(|| {
                Error::invalid(format!(
                    "--apply: host {h:?} has no daemon in the inventory"
                ))
            })?;
            let addr = PeerAddr::parse(addr)
                .map_err(|e| Error::invalid(format!("--apply: host {h:?}: {e}")))?;
            clients.insert(h, PeerClient::new(addr, key.clone()));
        }
    }
    // Every guest where the plan says it is, before anything moves.
    let mut checked: Vec<&str> = Vec::new();
    for m in moves {
        if checked.contains(&m.guest.as_str()) {
            continue;
        }
        checked.push(&m.guest);
        let c = &clients[m.from.as_str()];
        let g: GuestInfo = c.get(&format!("/guests/{}", m.guest)).map_err(|e| {
            Error::invalid(format!(
                "--apply: the plan is stale: guest {} is not on host {} ({}: {e}); nothing was moved",
                m.guest, m.from, c.addr
            ))
        })?;
        if !matches!(g.state, GuestState::Running | GuestState::Paused) {
            return Err(Error::invalid(format!(
                "--apply: the plan is stale: guest {} is {} on host {}; nothing was moved",
                m.guest, g.state, m.from
            )));
        }
    }
    let mut done: Vec<String> = Vec::new();
    for (i, m) in moves.iter().enumerate() {
        let src = &clients[m.from.as_str()];
        let dst = &clients[m.to.as_str()];
        let req = MigrateRequest {
            to: dst.addr.to_string(),
            ..MigrateRequest::default()
        };
        let r: Result<MigrateReport> = src.send(
            "POST",
            &format!("/guests/{}/migrate", m.guest),
            &req,
            MOVE_TIMEOUT,
        );
        match r {
            Ok(rep) => {
                let _ = writeln!(
                    out,
                    "move {}/{}: {} {} -> {}: moved in {} ms ({} there)",
                    i + 1,
                    moves.len(),
                    m.guest,
                    m.from,
                    m.to,
                    rep.ms,
                    rep.state
                );
                done.push(format!("{} ({} -> {})", m.guest, m.from, m.to));
            }
            Err(e) => {
                let rest: Vec<String> = moves[i + 1..]
                    .iter()
                    .map(|m| format!("{} ({} -> {})", m.guest, m.from, m.to))
                    .collect();
                return Err(Error::Other(format!(
                    "plan applied in part: moved {}; {} ({} -> {}) failed: {e}; not tried: {}",
                    if done.is_empty() {
                        "none".to_owned()
                    } else {
                        done.join(", ")
                    },
                    m.guest,
                    m.from,
                    m.to,
                    if rest.is_empty() {
                        "none".to_owned()
                    } else {
                        rest.join(", ")
                    }
                )));
            }
        }
    }
    Ok(())
}

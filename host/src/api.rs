//! The daemon's REST API (documented in docs/host-api.yaml): every route
//! becomes a typed [`Route`] in one place, bodies are parsed into the
//! model's request types (unknown fields refused) and validated there, and
//! each route is one call on the [`Manager`]. Errors are `{"error": ...}`
//! with the status of their kind. Streams (events, the console) are served
//! by `server.rs`; this module answers everything that is one response.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::accounting;
use crate::db::now_ms;
use crate::error::{Error, Result};
use crate::http::{Request, Response};
use crate::manager::Manager;
use crate::model::{
    CloneRequest, DeleteRequest, GuestSpec, ImageSpec, SnapshotRequest, StopRequest,
};

/// A guest action (`POST /guests/{name}/{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    Pause,
    Resume,
    Snapshot,
}

/// Every route of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Info,
    Host,
    Metrics,
    Events,
    Trace,
    ListGuests,
    CreateGuest,
    GetGuest(String),
    DeleteGuest(String),
    GuestAction(String, Action),
    GuestUsage(String),
    Console(String),
    Exec(String),
    ListImages,
    ImportImage,
    DeleteImage(String),
    ListSnapshots,
    DeleteSnapshot(String),
    CloneSnapshot(String),
}

/// Maps a method and path to a route; a 404 or 405 otherwise.
pub fn route(method: &str, path: &str) -> std::result::Result<Route, Response> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let not_allowed = || Response::error(405, format!("{method} is not allowed on {path}"));
    let name = |s: &str| s.to_owned();
    let r = match (parts.as_slice(), method) {
        ([""] | [], "GET") => Route::Info,
        (["host"], "GET") => Route::Host,
        (["metrics"], "GET") => Route::Metrics,
        (["events"], "GET") => Route::Events,
        (["usage", "trace"], "GET") => Route::Trace,
        (["guests"], "GET") => Route::ListGuests,
        (["guests"], "POST") => Route::CreateGuest,
        (["guests", g], "GET") => Route::GetGuest(name(g)),
        (["guests", g], "DELETE") => Route::DeleteGuest(name(g)),
        (["guests", g, "usage"], "GET") => Route::GuestUsage(name(g)),
        (["guests", g, "console"], "GET") => Route::Console(name(g)),
        (["guests", g, "exec"], "POST") => Route::Exec(name(g)),
        (["guests", g, a], "POST") => {
            let action = match *a {
                "start" => Action::Start,
                "stop" => Action::Stop,
                "restart" => Action::Restart,
                "pause" => Action::Pause,
                "resume" => Action::Resume,
                "snapshot" => Action::Snapshot,
                _ => return Err(Response::error(404, format!("no action {a:?}"))),
            };
            Route::GuestAction(name(g), action)
        }
        (["images"], "GET") => Route::ListImages,
        (["images"], "POST") => Route::ImportImage,
        (["images", i], "DELETE") => Route::DeleteImage(name(i)),
        (["snapshots"], "GET") => Route::ListSnapshots,
        (["snapshots", s], "DELETE") => Route::DeleteSnapshot(name(s)),
        (["snapshots", s, "clone"], "POST") => Route::CloneSnapshot(name(s)),
        ([""] | [] | ["host"] | ["metrics"] | ["events"] | ["usage", "trace"], _)
        | (["guests"], _)
        | (["guests", _], _)
        | (["guests", _, _], _)
        | (["images"], _)
        | (["images", _], _)
        | (["snapshots"], _)
        | (["snapshots", _], _)
        | (["snapshots", _, "clone"], _) => return Err(not_allowed()),
        _ => return Err(Response::error(404, format!("no such resource {path}"))),
    };
    Ok(r)
}

/// Parses a JSON body (an empty body is the type's default, where it has
/// one).
pub fn body<T: DeserializeOwned>(req: &Request) -> Result<T> {
    serde_json::from_slice(&req.body).map_err(|e| Error::invalid(format!("request body: {e}")))
}

fn body_or_default<T: DeserializeOwned + Default>(req: &Request) -> Result<T> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        body(req)
    }
}

fn json<T: Serialize>(status: u16, v: &T) -> Response {
    match serde_json::to_string(v) {
        Ok(s) => Response::with_status(status, s),
        Err(e) => Response::error(500, e),
    }
}

fn reply<T: Serialize>(status: u16, r: Result<T>) -> Response {
    match r {
        Ok(v) => json(status, &v),
        Err(e) => Response::error(e.status(), e),
    }
}

/// A request's `since` parameter (default: `default_ago_ms` ago).
pub fn since(req: &Request, default_ago_ms: i64) -> Result<i64> {
    let now = now_ms();
    match req.param("since") {
        Some(s) => Ok(accounting::parse_since(s, now)?),
        None => Ok((now - default_ago_ms).max(0)),
    }
}

/// Everything the daemon checks in a request before it acts on it: the
/// route, the body parsed into its type and validated, the query
/// parameters. Pure (no state, no files but `stat` of given paths): the
/// fuzz target `host_request` drives it.
pub fn check(req: &Request) -> Result<Route> {
    let r = route(&req.method, &req.path)
        .map_err(|resp| Error::invalid(resp.body.unwrap_or_default()))?;
    match &r {
        Route::CreateGuest => body::<GuestSpec>(req)?.validate()?,
        Route::ImportImage => body::<ImageSpec>(req)?.validate()?,
        Route::CloneSnapshot(_) => body::<CloneRequest>(req)?.validate()?,
        Route::GuestAction(_, Action::Stop | Action::Restart) => {
            body_or_default::<StopRequest>(req)?.validate()?
        }
        Route::GuestAction(_, Action::Snapshot) => {
            if let Some(s) = body_or_default::<SnapshotRequest>(req)?.snapshot {
                crate::model::check_name("snapshot", &s)?;
            }
        }
        Route::DeleteGuest(_) => {
            body_or_default::<DeleteRequest>(req)?;
        }
        Route::Exec(_) => {
            body::<crate::model::ExecRequest>(req)?.process()?;
        }
        Route::GuestUsage(_) | Route::Events | Route::Trace => {
            since(req, 0)?;
        }
        _ => {}
    }
    if let Some(i) = req.param("interval") {
        i.parse::<u64>()
            .map_err(|_| Error::invalid(format!("interval {i:?}")))?;
    }
    Ok(r)
}

/// Answers one request (not the streams).
pub fn handle(m: &Manager, req: &Request) -> Response {
    let route = match route(&req.method, &req.path) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match route {
        Route::Info => json(
            200,
            &serde_json::json!({
                "name": "condo-daemon",
                "version": env!("CARGO_PKG_VERSION"),
                "state_dir": m.cfg.state_dir,
                "bridge": m.net.as_ref().map(|n| n.bridge.clone()),
                "subnet": m.net.as_ref().map(|n| n.subnet.to_string()),
            }),
        ),
        Route::Host => reply(200, m.host_report()),
        Route::Metrics => match accounting::prometheus(m) {
            Ok(t) => Response::typed(t, "text/plain; version=0.0.4"),
            Err(e) => Response::error(e.status(), e),
        },
        Route::Trace => {
            let r = (|| {
                let interval = match req.param("interval") {
                    Some(v) => v.parse::<u64>().map_err(|_| {
                        Error::invalid(format!("interval {v:?}: a number of seconds"))
                    })?,
                    None => 300,
                };
                let since = since(req, 7 * 86_400_000)?;
                accounting::trace(m, interval, since)
            })();
            match r {
                Ok(t) => Response::typed(t, "text/csv"),
                Err(e) => Response::error(e.status(), e),
            }
        }
        Route::Events => json(200, &m.events.since(since(req, 3_600_000).unwrap_or(0))),
        Route::ListGuests => reply(200, m.list()),
        Route::CreateGuest => reply(201, body::<GuestSpec>(req).and_then(|s| m.create(s))),
        Route::GetGuest(n) => reply(200, m.get(&n)),
        Route::DeleteGuest(n) => match body_or_default::<DeleteRequest>(req).and_then(|d| {
            let mut d = d;
            if req.param("force").is_some_and(|v| v == "1" || v == "true") {
                d.force = true;
            }
            m.delete(&n, &d)
        }) {
            Ok(()) => Response::no_content(),
            Err(e) => Response::error(e.status(), e),
        },
        Route::GuestAction(n, a) => match a {
            Action::Start => reply(200, m.start(&n)),
            Action::Stop | Action::Restart => {
                let r = body_or_default::<StopRequest>(req).and_then(|s| {
                    s.validate()?;
                    if a == Action::Stop {
                        m.stop(&n, s.timeout_s)
                    } else {
                        m.restart(&n, s.timeout_s)
                    }
                });
                reply(200, r)
            }
            Action::Pause => reply(200, m.pause(&n)),
            Action::Resume => reply(200, m.resume(&n)),
            Action::Snapshot => reply(
                201,
                body_or_default::<SnapshotRequest>(req).and_then(|s| m.snapshot(&n, &s)),
            ),
        },
        Route::GuestUsage(n) => reply(
            200,
            since(req, 600_000)
                .and_then(|s| accounting::history(m, &n, s, req.param("resolution"))),
        ),
        Route::ListImages => reply(200, m.images()),
        Route::ImportImage => reply(201, body::<ImageSpec>(req).and_then(|s| m.import_image(s))),
        Route::DeleteImage(n) => match m.delete_image(&n) {
            Ok(()) => Response::no_content(),
            Err(e) => Response::error(e.status(), e),
        },
        Route::ListSnapshots => reply(200, m.snapshots()),
        Route::DeleteSnapshot(n) => match m.delete_snapshot(&n) {
            Ok(()) => Response::no_content(),
            Err(e) => Response::error(e.status(), e),
        },
        Route::CloneSnapshot(s) => reply(
            201,
            body::<CloneRequest>(req).and_then(|c| m.clone_snapshot(&s, &c)),
        ),
        Route::Console(_) | Route::Exec(_) => {
            Response::error(400, "this resource is a stream: see docs/host-api.yaml")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_typed() {
        assert_eq!(route("GET", "/guests").unwrap(), Route::ListGuests);
        assert_eq!(route("GET", "/guests/").unwrap(), Route::ListGuests);
        assert_eq!(
            route("POST", "/guests/a/stop").unwrap(),
            Route::GuestAction("a".into(), Action::Stop)
        );
        assert_eq!(route("GET", "/").unwrap(), Route::Info);
        assert_eq!(route("PUT", "/guests").unwrap_err().status, 405);
        assert_eq!(route("POST", "/guests/a/explode").unwrap_err().status, 404);
        assert_eq!(route("GET", "/nothing").unwrap_err().status, 404);
        assert_eq!(
            route("POST", "/snapshots/s/clone").unwrap(),
            Route::CloneSnapshot("s".into())
        );
    }
}

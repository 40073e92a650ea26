//! The daemon's API server on its Unix socket: a thread per connection
//! (at most [`MAX_CONNECTIONS`]; more get a 503), requests read with the
//! caps of `http.rs`, answered by `api.rs`. Two routes are streams served
//! here: `GET /events` (JSON lines until the client leaves) and `GET
//! /guests/{name}/console` with `Upgrade: console` (after a 101, bytes
//! both ways between the client and the console socket the guest's jail
//! process holds), and `POST /guests/{name}/exec` (the guest agent's
//! protocol relayed, see `exec.rs`), and `GET /migrations/{id}/stream`
//! (a live migration's stream relayed to the receiving VMM, see
//! `migrate.rs`).
//!
//! [`serve_peers`] is the optional TCP peer port (`--peer-listen`): the
//! same requests, but only the migration routes, and each must carry the
//! cluster key.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::api::{self, Route};
use crate::http::{self, HttpError, Response};
use crate::manager::Manager;
use crate::peer::{Conn, PeerKey};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection idle this long between requests is closed.
const IDLE: Duration = Duration::from_secs(60);

/// Serves connections until `stop` is set.
pub fn serve(listener: UnixListener, m: Arc<Manager>, stop: Arc<AtomicBool>) {
    accept_loop(
        listener.incoming(),
        MAX_CONNECTIONS,
        "api-conn",
        &stop,
        move |s| connection(s, &m),
    );
}

/// Serves the connections of `incoming` (until `stop`), each on a thread
/// `name` of its own running `serve`; past `max` at once, a connection is
/// answered 503 and closed.
fn accept_loop<S: std::io::Write + Send + 'static>(
    incoming: impl Iterator<Item = std::io::Result<S>>,
    max: usize,
    name: &str,
    stop: &AtomicBool,
    serve: impl Fn(S) + Send + Sync + 'static,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let serve = Arc::new(serve);
    for conn in incoming {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(mut s) = conn else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= max {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = Response::error(503, "too many connections").write_to(&mut s);
            continue;
        }
        let (serve, done) = (serve.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                serve(s);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("cannot start a connection thread ({name})");
        }
    }
}

fn connection(s: UnixStream, m: &Arc<Manager>) {
    let _ = s.set_read_timeout(Some(IDLE));
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    loop {
        let req = match http::read_request(&mut r) {
            Ok(req) => req,
            Err(HttpError::Closed) | Err(HttpError::Io(_)) => return,
            Err(e) => {
                let _ = Response::error(400, e).write_to(&mut w);
                return;
            }
        };
        let started = std::time::Instant::now();
        match api::route(&req.method, &req.path) {
            Ok(Route::Events) => return events(&req, m, &mut w),
            Ok(Route::Console(name)) => return console(&name, r, w, m),
            Ok(Route::Exec(name)) => return crate::exec::serve(&name, &req, r, w, m),
            Ok(Route::MigrationStream(id)) => {
                let (pending, inner) = crate::peer::unbuffer(r);
                return m.serve_stream(&id, &pending, Conn::Unix(inner));
            }
            _ => {}
        }
        let resp = api::handle(m, &req);
        tracing::debug!(
            method = %req.method, path = %req.path, status = resp.status,
            ms = started.elapsed().as_millis() as u64, "request"
        );
        if resp.write_to(&mut w).is_err() || req.close {
            return;
        }
    }
}

/// Most connections the peer port serves at once.
const MAX_PEER_CONNECTIONS: usize = 64;

/// Serves the TCP peer port until `stop` is set: the migration routes
/// only, each request with the cluster key.
pub fn serve_peers(listener: TcpListener, m: Arc<Manager>, key: PeerKey, stop: Arc<AtomicBool>) {
    accept_loop(
        listener.incoming(),
        MAX_PEER_CONNECTIONS,
        "peer-conn",
        &stop,
        move |s| peer_connection(s, &m, &key),
    );
}

fn peer_connection(s: TcpStream, m: &Arc<Manager>, key: &PeerKey) {
    let _ = s.set_read_timeout(Some(IDLE));
    let _ = s.set_nodelay(true);
    let peer = s
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let Ok(w) = s.try_clone() else { return };
    let mut w = Conn::Tcp(w);
    let mut r = BufReader::new(Conn::Tcp(s));
    loop {
        let req = match http::read_request(&mut r) {
            Ok(req) => req,
            Err(HttpError::Closed) | Err(HttpError::Io(_)) => return,
            Err(e) => {
                let _ = Response::error(400, e).write_to(&mut w);
                return;
            }
        };
        if !key.verify(req.authorization.as_deref()) {
            tracing::warn!(%peer, path = %req.path, "peer request without the cluster key");
            let _ = Response::error(401, "this port needs the cluster key (--peer-key-file)")
                .write_to(&mut w);
            return;
        }
        match api::route(&req.method, &req.path) {
            Ok(Route::MigrationStream(id)) => {
                let (pending, inner) = crate::peer::unbuffer(r);
                return m.serve_stream(&id, &pending, inner);
            }
            Ok(route) if route.is_peer() => {}
            Ok(_) => {
                let _ = Response::error(
                    403,
                    "the peer port serves migration requests only; use the daemon's socket",
                )
                .write_to(&mut w);
                if req.close {
                    return;
                }
                continue;
            }
            Err(resp) => {
                let _ = resp.write_to(&mut w);
                if req.close {
                    return;
                }
                continue;
            }
        }
        let resp = api::handle(m, &req);
        tracing::debug!(%peer, method = %req.method, path = %req.path, status = resp.status, "peer request");
        if resp.write_to(&mut w).is_err() || req.close {
            return;
        }
    }
}

/// `GET /events[?since=...][&follow=false]`: past events, then each new
/// one, one JSON object a line.
fn events(req: &http::Request, m: &Manager, w: &mut UnixStream) {
    let since = match api::since(req, 0) {
        Ok(s) => s,
        Err(e) => {
            let _ = Response::error(e.status(), e).write_to(w);
            return;
        }
    };
    let follow = !req
        .param("follow")
        .is_some_and(|v| v == "false" || v == "0");
    let (past, rx) = m.events.subscribe(since);
    let head = "HTTP/1.1 200 OK\r\nServer: condo-daemon\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n";
    if w.write_all(head.as_bytes()).is_err() {
        return;
    }
    let line = |e: &crate::events::Event| {
        let mut s = serde_json::to_string(e).unwrap_or_default();
        s.push('\n');
        s
    };
    for e in &past {
        if w.write_all(line(e).as_bytes()).is_err() {
            return;
        }
    }
    if !follow {
        return;
    }
    let _ = w.set_write_timeout(Some(Duration::from_secs(10)));
    loop {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(e) => {
                if w.write_all(line(&e).as_bytes()).is_err() {
                    return;
                }
            }
            // A keep-alive blank line notices a client that left.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if w.write_all(b"\n").is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// `GET /guests/{name}/console` with `Upgrade: console`.
fn console(name: &str, r: BufReader<UnixStream>, mut w: UnixStream, m: &Manager) {
    let sock = match m.console_socket(name) {
        Ok(s) => s,
        Err(e) => {
            let _ = Response::error(e.status(), e).write_to(&mut w);
            return;
        }
    };
    let mut con = match UnixStream::connect(&sock) {
        Ok(c) => c,
        Err(e) => {
            let _ = Response::error(500, format!("console of {name}: {e}")).write_to(&mut w);
            return;
        }
    };
    let head = "HTTP/1.1 101 Switching Protocols\r\nServer: condo-daemon\r\nUpgrade: console\r\nConnection: Upgrade\r\n\r\n";
    if w.write_all(head.as_bytes()).is_err() {
        return;
    }
    let _ = w.set_read_timeout(None);
    // What the client sent after its request head is console input.
    let pending = r.buffer().to_vec();
    let client_in = r.into_inner();
    let _ = client_in.set_read_timeout(None);
    if !pending.is_empty() && con.write_all(&pending).is_err() {
        return;
    }
    relay(client_in, w, con);
}

/// Copies bytes both ways between `client` (read side `cr`, write side
/// `cw`) and `peer` until either side closes.
pub fn relay(mut cr: UnixStream, mut cw: UnixStream, peer: UnixStream) {
    let Ok(mut peer_r) = peer.try_clone() else {
        return;
    };
    let mut peer_w = peer;
    let down = std::thread::spawn(move || {
        let _ = std::io::copy(&mut peer_r, &mut cw);
        let _ = cw.shutdown(std::net::Shutdown::Both);
    });
    let mut buf = [0u8; 4096];
    loop {
        match cr.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if peer_w.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = peer_w.shutdown(std::net::Shutdown::Both);
    let _ = down.join();
}

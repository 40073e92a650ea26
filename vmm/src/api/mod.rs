//! Firecracker's REST API on a Unix socket: the HTTP edge of the VMM.
//!
//! The API thread accepts connections and hands each to a connection
//! thread (an idle one when there is one: one waits from the start, and
//! each goes back to waiting when its connection ends), which parses
//! requests ([`http`]), routes them to typed [`crate::rpc::VmRequest`]s
//! ([`request`], one file per resource), hands them to the VMM through a
//! [`Requester`] and writes the typed answer back as HTTP ([`response`]).
//! The API never touches the VM and never blocks the guest. Field names,
//! status codes and `{"fault_message": ...}` errors follow Firecracker's
//! OpenAPI spec.

pub mod http;
pub mod request;
pub mod response;

use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use self::http::{read_request, HttpError, Response};
use self::request::Route;
use crate::rpc::Requester;
use crate::seccomp::ThreadKind;

/// Most API connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 32;

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API socket {path}: {err}")]
    Socket { path: PathBuf, err: std::io::Error },
}

/// The running API server; its socket is removed when it is dropped.
pub struct ApiServer {
    path: PathBuf,
}

impl ApiServer {
    /// Listens on `path` (a stale socket nobody serves is replaced) and
    /// hands requests to the VMM through `to_vmm`.
    pub fn start(path: &Path, to_vmm: Requester) -> Result<Self, ApiError> {
        let err = |err| ApiError::Socket {
            path: path.to_owned(),
            err,
        };
        let listener = devices::bind_unix_listener(path).map_err(err)?;
        crate::seccomp::spawn("api".into(), ThreadKind::Api, move || {
            accept_loop(listener, to_vmm)
        })
        .map_err(err)?;
        Ok(Self {
            path: path.to_owned(),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The connection threads' side: the connections waiting for a thread, and
/// how many connections are being served or waiting.
struct Workers {
    queue: std::sync::Mutex<std::sync::mpsc::Receiver<UnixStream>>,
    active: AtomicUsize,
}

/// A connection thread: serves connections from the queue, one after the
/// other, until the API thread is gone.
fn start_worker(workers: &Arc<Workers>, to_vmm: &Requester) -> std::io::Result<()> {
    let (workers, to_vmm) = (workers.clone(), to_vmm.clone());
    std::thread::Builder::new()
        .name("api-conn".into())
        .stack_size(256 << 10)
        .spawn(move || {
            crate::seccomp::mark_thread(ThreadKind::Api);
            loop {
                let next = devices::sync::lock(&workers.queue).recv();
                let Ok(stream) = next else { return };
                serve_connection(stream, &to_vmm);
                workers.active.fetch_sub(1, Ordering::AcqRel);
            }
        })
        .map(|_| ())
}

fn accept_loop(listener: UnixListener, to_vmm: Requester) {
    let (tx, rx) = std::sync::mpsc::channel();
    let workers = Arc::new(Workers {
        queue: std::sync::Mutex::new(rx),
        active: AtomicUsize::new(0),
    });
    // One thread waits from the start: the first request (the one that
    // starts or restores the guest) finds it ready. Threads are only
    // started when every one is busy, and stay for the next connections.
    let mut threads = usize::from(start_worker(&workers, &to_vmm).is_ok());
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let active = workers.active.fetch_add(1, Ordering::AcqRel) + 1;
        if active > MAX_CONNECTIONS {
            workers.active.fetch_sub(1, Ordering::AcqRel);
            let _ = Response::fault(503, "too many API connections").write_to(&mut stream);
            continue;
        }
        if active > threads {
            if start_worker(&workers, &to_vmm).is_err() {
                workers.active.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!("api: cannot start a connection thread");
                continue;
            }
            threads += 1;
        }
        if tx.send(stream).is_err() {
            return;
        }
    }
}

fn serve_connection(stream: UnixStream, to_vmm: &Requester) {
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
        let resp = match request::route(&req) {
            Route::Reply(r) => r,
            Route::Vm(vm_req) => match to_vmm.request(vm_req) {
                Ok(result) => response::to_http(result),
                Err(gone) => {
                    let _ = Response::fault(503, gone).write_to(&mut out);
                    return;
                }
            },
        };
        let m = &crate::metrics::METRICS.api_server;
        m.requests_count.inc();
        if resp.status >= 400 {
            m.failed_requests_count.inc();
        }
        if resp.write_to(&mut out).is_err() || req.close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::http::Request;
    use super::*;
    use crate::rpc::RequestHandler;
    use crate::{RunOptions, Vmm};

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            close: false,
        }
    }

    /// The status and body the API would answer, with `vmm` serving.
    fn call(vmm: &mut Vmm, method: &str, path: &str, body: &str) -> (u16, String) {
        let r = match request::route(&req(method, path, body)) {
            Route::Reply(r) => r,
            Route::Vm(v) => response::to_http(vmm.handle(v)),
        };
        (r.status, r.body.unwrap_or_default())
    }

    #[test]
    fn configure_then_start() {
        let mut vmm = Vmm::new(RunOptions::default());
        let start = r#"{"action_type": "InstanceStart"}"#;
        let (code, body) = call(&mut vmm, "PUT", "/actions", start);
        assert_eq!(code, 400, "no kernel yet");
        assert!(body.contains("without kernel configuration"), "{body}");
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
            assert_eq!(call(&mut vmm, m, path, body).0, 204, "{m} {path}");
        }
        let (code, body) = call(&mut vmm, "GET", "/vm/config", "");
        assert_eq!(code, 200);
        let c: crate::VmConfig = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (
                c.machine_config.vcpu_count,
                c.machine_config.mem_size_mib,
                c.drives.len()
            ),
            (2, 512, 1)
        );
        assert_eq!(c.drives[0].path_on_host, std::path::PathBuf::from("/r2"));
        assert!(c.entropy.is_some() && c.vsock.is_some() && c.balloon.is_some());
        // A snapshot can no longer be loaded over this configuration.
        let load = r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#;
        let (code, body) = call(&mut vmm, "PUT", "/snapshot/load", load);
        assert_eq!(code, 400);
        assert!(body.contains("not allowed after configuring"), "{body}");
        // InstanceStart now gets as far as opening the kernel.
        let (code, body) = call(&mut vmm, "PUT", "/actions", start);
        assert_eq!(code, 400);
        assert!(body.contains("/k"), "{body}");
    }

    #[test]
    fn bad_requests_get_400_with_a_fault_message() {
        let mut vmm = Vmm::new(RunOptions::default());
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
            ("PATCH", "/vm", r#"{"state": "Asleep"}"#),
            ("PUT", "/actions", r#"{"action_type": "Dance"}"#),
            ("PUT", "/snapshot/create", "{}"),
            ("PUT", "/snapshot/load", r#"{"snapshot_path": "/s"}"#),
            (
                "PUT",
                "/snapshot/load",
                r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#,
            ),
            ("PUT", "/mmds", "{}"),
            ("PATCH", "/balloon", r#"{"amount_mib": 1}"#),
            ("GET", "/balloon", ""),
        ] {
            let (code, body) = call(&mut vmm, m, path, body);
            assert_eq!(code, 400, "{m} {path}");
            assert!(body.contains("fault_message"), "{m} {path}: {body}");
        }
        let (code, body) = call(&mut vmm, "GET", "/", "");
        assert_eq!(code, 200);
        assert!(body.contains("Not started"), "{body}");
        let (code, body) = call(&mut vmm, "GET", "/version", "");
        assert_eq!(code, 200);
        assert!(body.contains("firecracker_version"), "{body}");
    }
}

//! HTTP requests to typed [`VmRequest`]s: the router, and one file per
//! resource, each turning a method and a body into a request (or a 400).
//! Nothing here touches the VM.

mod actions;
mod balloon;
mod boot_source;
mod drive;
mod entropy;
mod logger;
mod machine_config;
mod metrics;
mod migration;
mod net;
mod snapshot;
mod vm;
mod vsock;

use serde::de::DeserializeOwned;

use super::http::{Request, Response};
use crate::rpc::VmRequest;

/// What the API does with a request.
pub enum Route {
    /// Hand it to the VMM.
    Vm(VmRequest),
    /// Answer at once (a bad request, or one the VMM has no part in).
    Reply(Response),
}

impl From<Result<VmRequest, Response>> for Route {
    fn from(r: Result<VmRequest, Response>) -> Self {
        match r {
            Ok(v) => Route::Vm(v),
            Err(resp) => Route::Reply(resp),
        }
    }
}

/// Routes one request by its path's first segment.
pub fn route(req: &Request) -> Route {
    let path = req.path.strip_prefix('/').unwrap_or(&req.path);
    let (resource, rest) = match path.split_once('/') {
        Some((r, rest)) => (r, Some(rest)),
        None => (path, None),
    };
    let m = req.method.as_str();
    let r = match (resource, rest) {
        ("", None) if m == "GET" => Ok(VmRequest::GetInstanceInfo),
        ("version", None) if m == "GET" => {
            return Route::Reply(Response::json(
                serde_json::json!({ "firecracker_version": env!("CARGO_PKG_VERSION") }).to_string(),
            ))
        }
        ("actions", None) => actions::parse(req),
        ("balloon", sub) => balloon::parse(req, sub),
        ("boot-source", None) => boot_source::parse(req),
        ("drives", Some(id)) if valid_id(id) => drive::parse(req, id),
        ("entropy", None) => entropy::parse(req),
        ("logger", None) => logger::parse(req),
        ("machine-config", None) => machine_config::parse(req),
        ("metrics", None) => metrics::parse(req),
        ("migration", Some(sub)) => migration::parse(req, sub),
        ("mmds", _) if m == "PUT" || m == "PATCH" || m == "GET" => Err(Response::fault(
            400,
            format!("{} is not supported by condo yet", req.path),
        )),
        ("network-interfaces", Some(id)) if valid_id(id) => net::parse(req, id),
        ("snapshot", Some(sub)) => snapshot::parse(req, sub),
        ("vm", sub) => vm::parse(req, sub),
        ("vsock", None) => vsock::parse(req),
        _ => Err(invalid(req)),
    };
    r.into()
}

/// A path id: non-empty, one segment.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains('/')
}

/// The request's JSON body as `T` (unknown fields refused by `T`).
fn body<T: DeserializeOwned>(req: &Request) -> Result<T, Response> {
    serde_json::from_slice(&req.body)
        .map_err(|e| Response::fault(400, format!("bad request body: {e}")))
}

/// Firecracker's answer to a method or path it does not serve.
fn invalid(req: &Request) -> Response {
    Response::fault(
        400,
        format!(
            "Invalid request method and/or path: {} {}.",
            req.method, req.path
        ),
    )
}

/// Firecracker's answer when a path's id and the body's differ.
fn id_mismatch() -> Response {
    Response::fault(
        400,
        "The id from the path does not match the id from the body!",
    )
}

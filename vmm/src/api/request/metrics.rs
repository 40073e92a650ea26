//! `/metrics`: `PUT` sets where Firecracker's JSON lines go, `GET` returns
//! every counter as Prometheus text.

use super::{body, invalid, Request, Response, VmRequest};

pub(super) fn parse(req: &Request) -> Result<VmRequest, Response> {
    match req.method.as_str() {
        "PUT" => Ok(VmRequest::PutMetrics(body(req)?)),
        "GET" => Ok(VmRequest::GetMetrics),
        _ => Err(invalid(req)),
    }
}

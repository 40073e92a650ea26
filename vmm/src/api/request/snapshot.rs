//! `PUT /snapshot/create` and `PUT /snapshot/load`.

use super::{body, invalid, Request, Response, VmRequest};

pub(super) fn parse(req: &Request, sub: &str) -> Result<VmRequest, Response> {
    match (req.method.as_str(), sub) {
        ("PUT", "create") => Ok(VmRequest::CreateSnapshot(body(req)?)),
        ("PUT", "load") => Ok(VmRequest::LoadSnapshot(body(req)?)),
        _ => Err(invalid(req)),
    }
}

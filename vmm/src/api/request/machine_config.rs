//! `/machine-config`: `GET`, and `PUT`/`PATCH` before boot.

use super::{body, invalid, Request, Response, VmRequest};

pub(super) fn parse(req: &Request) -> Result<VmRequest, Response> {
    match req.method.as_str() {
        "GET" => Ok(VmRequest::GetMachineConfig),
        "PUT" => Ok(VmRequest::PutMachineConfig(body(req)?)),
        "PATCH" => Ok(VmRequest::PatchMachineConfig(body(req)?)),
        _ => Err(invalid(req)),
    }
}

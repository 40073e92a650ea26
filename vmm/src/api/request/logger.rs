//! `PUT /logger`: level and destination, changeable any time.

use super::{body, invalid, Request, Response, VmRequest};

pub(super) fn parse(req: &Request) -> Result<VmRequest, Response> {
    match req.method.as_str() {
        "PUT" => Ok(VmRequest::PutLogger(body(req)?)),
        _ => Err(invalid(req)),
    }
}

//! `/balloon`: `PUT` before boot, `GET` and `PATCH` (the target size)
//! always, `GET /balloon/statistics`.

use super::{body, invalid, Request, Response, VmRequest};

pub(super) fn parse(req: &Request, sub: Option<&str>) -> Result<VmRequest, Response> {
    match (req.method.as_str(), sub) {
        ("PUT", None) => Ok(VmRequest::PutBalloon(body(req)?)),
        ("GET", None) => Ok(VmRequest::GetBalloon),
        ("PATCH", None) => Ok(VmRequest::PatchBalloon(body(req)?)),
        ("GET", Some("statistics")) => Ok(VmRequest::GetBalloonStats),
        // Changing the statistics interval live is not implemented.
        ("PATCH", Some("statistics")) => Err(Response::fault(
            400,
            "changing the balloon statistics interval is not supported by condo yet",
        )),
        _ => Err(invalid(req)),
    }
}

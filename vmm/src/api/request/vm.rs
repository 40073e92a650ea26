//! `PATCH /vm` (pause, resume) and `GET /vm/config`.

use serde::Deserialize;

use super::{body, invalid, Request, Response, VmRequest};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmState {
    state: State,
}

#[derive(Deserialize)]
enum State {
    Paused,
    Resumed,
}

pub(super) fn parse(req: &Request, sub: Option<&str>) -> Result<VmRequest, Response> {
    match (req.method.as_str(), sub) {
        ("PATCH", None) => Ok(match body::<VmState>(req)?.state {
            State::Paused => VmRequest::Pause,
            State::Resumed => VmRequest::Resume,
        }),
        ("GET", Some("config")) => Ok(VmRequest::GetVmConfig),
        _ => Err(invalid(req)),
    }
}

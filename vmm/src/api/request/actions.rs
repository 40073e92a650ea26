//! `PUT /actions`: InstanceStart, FlushMetrics, SendCtrlAltDel.

use serde::Deserialize;

use super::{body, invalid, Request, Response, VmRequest};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    action_type: ActionType,
}

#[derive(Deserialize)]
enum ActionType {
    InstanceStart,
    FlushMetrics,
    SendCtrlAltDel,
}

pub(super) fn parse(req: &Request) -> Result<VmRequest, Response> {
    if req.method != "PUT" {
        return Err(invalid(req));
    }
    Ok(match body::<Action>(req)?.action_type {
        ActionType::InstanceStart => VmRequest::InstanceStart,
        ActionType::FlushMetrics => VmRequest::FlushMetrics,
        ActionType::SendCtrlAltDel => VmRequest::SendCtrlAltDel,
    })
}

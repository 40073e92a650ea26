//! `PUT /migration/send` and `PUT /migration/receive` (Cloud
//! Hypervisor's `vm.send-migration` and `vm.receive-migration`): each is
//! answered when the migration has ended.

use super::{body, invalid, Request, Response, VmRequest};

pub(super) fn parse(req: &Request, sub: &str) -> Result<VmRequest, Response> {
    match (req.method.as_str(), sub) {
        ("PUT", "send") => Ok(VmRequest::SendMigration(body(req)?)),
        ("PUT", "receive") => Ok(VmRequest::ReceiveMigration(body(req)?)),
        _ => Err(invalid(req)),
    }
}

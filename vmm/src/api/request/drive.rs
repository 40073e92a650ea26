//! `PUT /drives/{id}` before boot, `PATCH /drives/{id}` after (rate
//! limiters).

use crate::config::{Drive, DriveUpdate};

use super::{body, id_mismatch, invalid, Request, Response, VmRequest};

pub(super) fn parse(req: &Request, id: &str) -> Result<VmRequest, Response> {
    match req.method.as_str() {
        "PUT" => {
            let d: Drive = body(req)?;
            if d.drive_id != id {
                return Err(id_mismatch());
            }
            Ok(VmRequest::PutDrive(d))
        }
        "PATCH" => {
            let d: DriveUpdate = body(req)?;
            if d.drive_id != id {
                return Err(id_mismatch());
            }
            Ok(VmRequest::PatchDrive(d))
        }
        _ => Err(invalid(req)),
    }
}

//! `PUT /network-interfaces/{id}` before boot, `PATCH` after (rate
//! limiters).

use crate::config::{NetworkInterface, NetworkInterfaceUpdate};

use super::{body, id_mismatch, invalid, Request, Response, VmRequest};

pub(super) fn parse(req: &Request, id: &str) -> Result<VmRequest, Response> {
    match req.method.as_str() {
        "PUT" => {
            let n: NetworkInterface = body(req)?;
            if n.iface_id != id {
                return Err(id_mismatch());
            }
            Ok(VmRequest::PutNetworkInterface(n))
        }
        "PATCH" => {
            let n: NetworkInterfaceUpdate = body(req)?;
            if n.iface_id != id {
                return Err(id_mismatch());
            }
            Ok(VmRequest::PatchNetworkInterface(n))
        }
        _ => Err(invalid(req)),
    }
}

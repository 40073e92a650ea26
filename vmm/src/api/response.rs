//! Typed answers to HTTP responses: a body as Firecracker's schema has
//! it, 204 for nothing to say, and every [`VmError`] as a 400 with
//! Firecracker's `{"fault_message": ...}`.

use super::http::Response;
use crate::rpc::{VmResponse, VmResult};

fn json(v: &impl serde::Serialize) -> Response {
    match serde_json::to_string(v) {
        Ok(s) => Response::json(s),
        Err(e) => Response::fault(500, e),
    }
}

/// The HTTP response for a request's outcome.
pub fn to_http(r: VmResult) -> Response {
    match r {
        Ok(VmResponse::Empty) => Response::no_content(),
        Ok(VmResponse::InstanceInfo(i)) => json(&i),
        Ok(VmResponse::VmConfig(c)) => json(&c),
        Ok(VmResponse::MachineConfig(m)) => json(&m),
        Ok(VmResponse::Balloon(b)) => json(&b),
        Ok(VmResponse::BalloonStatistics(s)) => json(&s),
        Ok(VmResponse::Metrics(text)) => Response::text(text),
        Err(e) => Response::fault(400, e),
    }
}

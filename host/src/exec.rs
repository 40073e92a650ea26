//! `POST /guests/{name}/exec`: runs a command in the guest through the
//! guest agent on vsock. The agent (branch `agent`) has not landed yet:
//! until it does, the route answers 501 with that reason.

use std::io::BufReader;
use std::os::unix::net::UnixStream;

use crate::http::{Request, Response};
use crate::manager::Manager;

/// Serves one exec request on the client's connection.
pub fn serve(
    name: &str,
    _req: &Request,
    _r: BufReader<UnixStream>,
    mut w: UnixStream,
    m: &Manager,
) {
    let resp = match m.vsock_socket(name) {
        Ok(_) => Response::error(
            501,
            "exec needs the guest agent, which this build does not have yet",
        ),
        Err(e) => Response::error(e.status(), e),
    };
    let _ = resp.write_to(&mut w);
}

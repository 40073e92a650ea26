//! `condo-agent`, the guest agent: runs processes on the host's behalf over
//! virtio-vsock (see `docs/agent.md`).
//!
//!     condo-agent [--port N]     serve AF_VSOCK port N (default 1024)
//!     condo-agent --unix PATH    test mode on a host: serve a Unix socket,
//!                                no guest preparation, no container setup,
//!                                Shutdown exits instead of powering off
//!
//! As PID 1 (`rdinit=/sbin/condo-agent`) it first mounts /proc, /sys and
//! /dev; beside another init it becomes a child subreaper. Arguments it
//! does not know (a kernel passes its leftovers to init) are logged and
//! ignored.

use std::process::ExitCode;

use agent::guest;

fn main() -> ExitCode {
    let pid1 = std::process::id() == 1;
    let mut port = agent::AGENT_PORT;
    let mut unix = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => port = p,
                None => {
                    eprintln!("condo-agent: error: --port wants a number");
                    return ExitCode::FAILURE;
                }
            },
            "--unix" => match args.next() {
                Some(p) => unix = Some(p),
                None => {
                    eprintln!("condo-agent: error: --unix wants a path");
                    return ExitCode::FAILURE;
                }
            },
            other => eprintln!("condo-agent: ignoring argument {other:?}"),
        }
    }
    let listener = match unix {
        Some(path) => {
            let _ = std::fs::remove_file(&path);
            match std::os::unix::net::UnixListener::bind(&path) {
                Ok(l) => {
                    eprintln!("condo-agent: test mode, listening on {path}");
                    guest::Listener::Unix(l)
                }
                Err(e) => {
                    eprintln!("condo-agent: error: cannot listen on {path}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => {
            guest::prepare_guest(pid1);
            match guest::listen_vsock(port) {
                Ok(l) => {
                    eprintln!(
                        "condo-agent: listening on vsock port {port} (protocol version {}{})",
                        agent::PROTOCOL_VERSION,
                        if pid1 { ", as PID 1" } else { "" }
                    );
                    l
                }
                Err(e) => {
                    eprintln!("condo-agent: error: cannot listen on vsock port {port}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let test_mode = matches!(listener, guest::Listener::Unix(_));
    let e = guest::serve(listener, test_mode);
    eprintln!("condo-agent: error: {e}");
    ExitCode::FAILURE
}

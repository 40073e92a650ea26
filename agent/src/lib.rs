//! condo's guest agent: a small static program inside the guest
//! (`condo-agent`) that runs processes on the host's behalf over
//! virtio-vsock, the wire protocol both sides speak, and the host-side
//! client.
//!
//! - [`proto`]: framing, the hello and version check, every message and its
//!   decoder (the guest distrusts the host's bytes and the host the guest's).
//! - [`spec`]: the process spec (modelled on the OCI runtime spec's
//!   `process` object) and the once-per-VM container setup.
//! - [`client`]: the host side: connect through condo's hybrid vsock Unix
//!   socket, run processes, relay their stdio, signals and terminal size.
//! - [`guest`]: the agent itself (Linux only): listening, sessions, process
//!   spawning and reaping, container setup. `src/main.rs` is its entry.
//!
//! The protocol is described in `docs/agent.md`.

pub mod client;
pub mod proto;
pub mod spec;

#[cfg(target_os = "linux")]
pub mod guest;

pub use proto::{AGENT_PORT, PROTOCOL_VERSION};

//! condo's OCI runtime: runc's command line (`condo oci ...`, or the
//! binary under the name `condo-runtime`), each container in its own
//! microVM.
//!
//! podman's conmon and containerd's runc shim call it exactly as they call
//! runc: `create` starts a monitor process (the PID the engine waits for,
//! whose exit status is the container's) that boots the VM with the
//! bundle's root file system as its disk and the guest agent in its
//! initramfs, and holds the process until `start`; `kill`, `pause`,
//! `resume`, `exec`, `ps`, `state` and `delete` act on it. See
//! `docs/oci.md`.
//!
//! Modules: [`cli`] (the flags), [`commands`] (each command's rules),
//! [`monitor`] (the process the engine waits for), [`guest`] (the VM and
//! its agent), [`spec`] (config.json), [`state`] (the state directory),
//! [`rootfs`] (the root disk image), [`cgroup`], [`console`], [`control`]
//! (the monitor's socket), [`config`] (the runtime's own settings),
//! [`image`] (`condo run --image`).

pub mod cgroup;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod control;
pub mod error;
pub mod guest;
pub mod image;
pub mod monitor;
pub mod rlimit;
pub mod rootfs;
pub mod signals;
pub mod spec;
pub mod state;
pub mod time;
pub mod trace;

pub use cli::OciArgs;
pub use error::Error;

/// Runs one `condo oci` command; returns the exit status.
pub fn run(args: OciArgs) -> i32 {
    commands::run(args)
}

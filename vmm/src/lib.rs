//! condo's VMM: one virtual machine on Linux KVM.
//!
//! The layers, from the outside in (see `docs/architecture.md`):
//! - [`api`]: Firecracker's REST API, the HTTP edge; turns requests into
//!   [`rpc::VmRequest`]s and answers back. Knows nothing of the VM.
//! - [`rpc`]: the typed requests, responses and errors, the
//!   [`rpc::RequestHandler`] trait and the channel into a VMM.
//! - [`controller`]: [`controller::Vmm`], the one request handler, with the
//!   event loop; holds the configuration until the guest starts, then the
//!   running [`vm::Vm`].
//! - [`config`]: one model per resource, checked in one place.
//! - [`builder`] (boot and restore, one sequence), [`vm`] (the running VM),
//!   [`device_manager`], [`vcpu`], [`memory`], [`loader`], [`arch`]: the
//!   machine itself; [`snapshot`]: its typed, versioned state and memory
//!   files.
//!
//! Device models live in the `devices` crate.

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod controller;
mod device_manager;
mod loader;
pub mod logger;
mod memory;
pub mod metrics;
pub mod migration;
pub mod probe;
pub mod rpc;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod timing;
mod vcpu;
pub mod vm;

pub use builder::check_kvm;
pub use config::{ConfigError, VmConfig};
pub use controller::{RunOptions, Vmm};
pub use vcpu::VmExit;
pub use vm::{Vm, VmmError};

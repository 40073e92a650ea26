//! condo's VMM: one virtual machine on Linux KVM.
//!
//! This crate owns KVM setup, guest memory, kernel loading, the vCPU threads,
//! the device manager and the VMM event loop. Device models live in the
//! `devices` crate; x86-specific machine setup (CPUID, MSRs, registers, boot
//! tables) lives in [`arch`]. The `condo` binary is a thin front end over
//! [`run`].

pub mod api;
pub mod arch;
pub mod config;
mod device_manager;
mod loader;
pub mod logger;
mod memory;
pub mod metrics;
pub mod probe;
pub mod seccomp;
pub mod snapshot;
mod vcpu;
mod vm;

pub use config::{
    BalloonConfig, ConfigError, DiskConfig, HugePages, NetConfig, VmConfig, VsockConfig,
    DEFAULT_CMDLINE,
};
pub use vcpu::VmExit;
pub use vm::{check_kvm, run, RunOptions, Vm, VmmError};

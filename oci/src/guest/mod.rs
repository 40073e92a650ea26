//! Where a container's processes run, behind one interface: its microVM
//! (the guest agent over vsock, [`vm`]), or, for the runtime's own tests on
//! machines that cannot boot a VM, the host ([`host`]).
//!
//! The monitor and the exec monitor only see [`Guest`] (the container's
//! machine: set up, start a process, pause, stop) and [`Workload`] (one
//! started process: signal, resize, wait).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::error::Result;
use crate::spec::Process;

pub mod agent;
pub mod host;
pub mod vm;

/// The descriptors a process's standard streams use on the host side.
pub enum Io {
    /// Standard input, output and error as the engine gave them.
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A terminal (the slave side of the pty whose master the engine
    /// has).
    Terminal(OwnedFd),
}

/// One started process.
pub trait Workload: Send + Sync {
    /// Delivers signal `sig` (to every process of the container with
    /// `all`).
    fn signal(&self, sig: i32, all: bool) -> Result<()>;
    /// The terminal changed size.
    fn resize(&self, rows: u16, cols: u16) -> Result<()>;
    /// Waits for the process to end (its output delivered): its exit code,
    /// 128+N when signal N killed it.
    fn wait(&self) -> Result<i32>;
}

/// The machine a container runs on.
pub trait Guest: Send + Sync {
    /// Starts `process` with its standard streams on `io`.
    fn start(&self, process: &Process, io: Io) -> Result<Arc<dyn Workload>>;
    /// Freezes every process (every vCPU of a VM).
    fn pause(&self) -> Result<()>;
    /// Undoes [`Guest::pause`].
    fn resume(&self) -> Result<()>;
    /// Stops the machine and releases what it holds (the VM's root disk
    /// copied back into the bundle's rootfs).
    fn shutdown(&self) -> Result<()>;
}

/// Boots the container's machine (the monitor, at `create`).
pub fn boot(
    ctx: &crate::commands::Ctx,
    c: &crate::state::Container,
    saved: &crate::state::Saved,
    spec: &crate::spec::Spec,
) -> Result<Arc<dyn Guest>> {
    match saved.backend {
        crate::state::Backend::Host => Ok(Arc::new(host::HostGuest::default())),
        crate::state::Backend::Vm => {
            let config = ctx.config()?;
            Ok(Arc::new(vm::VmGuest::boot(
                &config,
                &ctx.logger,
                c,
                saved,
                spec,
            )?))
        }
    }
}

/// Reaches the machine of a running container (an exec monitor).
pub fn attach(
    ctx: &crate::commands::Ctx,
    c: &crate::state::Container,
    saved: &crate::state::Saved,
) -> Result<Arc<dyn Guest>> {
    match saved.backend {
        crate::state::Backend::Host => Ok(Arc::new(host::HostGuest::default())),
        crate::state::Backend::Vm => {
            let config = ctx.config()?;
            Ok(Arc::new(vm::VmGuest::attach(&config, c)?))
        }
    }
}

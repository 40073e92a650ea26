//! The guest agent, as the VM backend uses it (placeholder until the
//! agent's client lands: every call reports that it is missing).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::guest::{Io, Workload};
use crate::spec::{Process, Spec};

/// The container setup the agent gets once per VM.
pub struct Setup;

/// The agent of one VM, reached through the VMM's vsock socket.
pub struct Agent {
    #[allow(dead_code)]
    vsock: PathBuf,
}

fn missing() -> Error {
    Error::Guest("the guest agent client is not part of this build yet".into())
}

/// The setup message for `spec`.
pub fn container_setup(_spec: &Spec) -> Result<Setup> {
    Ok(Setup)
}

impl Agent {
    pub fn new(vsock: PathBuf) -> Agent {
        Agent { vsock }
    }

    pub fn wait_ready(
        &self,
        _deadline: Instant,
        _exited: impl Fn() -> Option<String>,
    ) -> Result<()> {
        Err(missing())
    }

    pub fn setup(&self, _s: &Setup) -> Result<()> {
        Err(missing())
    }

    pub fn exec(&self, _p: &Process, _io: Io) -> Result<Arc<dyn Workload>> {
        Err(missing())
    }

    pub fn shutdown(&self) -> Result<()> {
        Err(missing())
    }
}

//! The host backend: processes run on the host, with no isolation at all.
//! It exists so that the runtime's command-line contract (states, pid
//! files, exit codes, signals, terminals) is tested on machines whose KVM
//! cannot boot a guest; it is chosen only by `CONDO_OCI_TEST_BACKEND=host`
//! at `create`, never by a configuration an engine writes.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::guest::{Guest, Io, Workload};
use crate::spec::Process;

/// Processes on the host (the process groups it started).
#[derive(Default)]
pub struct HostGuest {
    groups: std::sync::Mutex<Vec<i32>>,
}

impl HostGuest {
    fn signal_groups(&self, sig: i32) {
        let groups = self.groups.lock().map(|g| g.clone()).unwrap_or_default();
        for pid in groups {
            // SAFETY: kill takes two integers.
            unsafe {
                libc::kill(-pid, sig);
            }
        }
    }
}

/// One host process, leader of its own process group.
struct HostProcess {
    pid: i32,
}

impl Guest for HostGuest {
    fn start(&self, p: &Process, io: Io) -> Result<Arc<dyn Workload>> {
        let mut cmd = Command::new(&p.args[0]);
        cmd.args(&p.args[1..]).env_clear();
        for kv in &p.env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        if std::path::Path::new(&p.cwd).is_dir() {
            cmd.current_dir(&p.cwd);
        }
        let (stdin, stdout, stderr): (OwnedFd, OwnedFd, OwnedFd) = match io {
            Io::Pipes {
                stdin,
                stdout,
                stderr,
            } => (stdin, stdout, stderr),
            Io::Terminal(t) => {
                let dup = |t: &OwnedFd| t.try_clone().map_err(Error::io("duplicate the terminal"));
                (dup(&t)?, dup(&t)?, t)
            }
        };
        cmd.stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        crate::signals::unblock_in_child(&mut cmd);
        cmd.process_group(0);
        let child = cmd.spawn().map_err(|e| {
            Error::Guest(format!(
                "exec: {:?}: {}",
                p.args[0],
                crate::spec::os_text(&e)
            ))
        })?;
        let pid = child.id() as i32;
        if let Ok(mut g) = self.groups.lock() {
            g.push(pid);
        }
        Ok(Arc::new(HostProcess { pid }))
    }

    fn pause(&self) -> Result<()> {
        self.signal_groups(libc::SIGSTOP);
        Ok(())
    }

    fn resume(&self) -> Result<()> {
        self.signal_groups(libc::SIGCONT);
        Ok(())
    }

    fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}

impl Workload for HostProcess {
    fn signal(&self, sig: i32, all: bool) -> Result<()> {
        let target = if all { -self.pid } else { self.pid };
        // SAFETY: kill takes two integers.
        if unsafe { libc::kill(target, sig) } < 0 {
            return Err(Error::io("signal the process")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn resize(&self, _rows: u16, _cols: u16) -> Result<()> {
        // The process has the engine's terminal itself.
        Ok(())
    }

    fn wait(&self) -> Result<i32> {
        let mut status = 0;
        loop {
            // SAFETY: waitpid writes the status into an int we own.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if rc == self.pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(Error::io("wait for the process")(e));
            }
        }
        Ok(exit_code(status))
    }
}

/// A wait status as a shell reports it: the exit code, or 128+N.
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

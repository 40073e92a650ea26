//! Reaping every child of the agent: the processes it started and, as PID 1
//! or a child subreaper, every orphan of the guest. One thread waits for
//! all of them; a session learns its process's wait status through a pipe
//! registered under the process's pid.
//!
//! A process is registered while the table is locked, and the reaper looks
//! an ended child up under the same lock after peeking at it (`WNOWAIT`),
//! so a process that ends at once is never reaped before its session is
//! registered, and a child std's `Command::spawn` reaps itself (when exec
//! fails) is never taken from it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::{log, sys};

/// The registered processes, by pid: where to write their wait status.
#[derive(Default)]
pub struct Reaper {
    waiting: Mutex<HashMap<u32, File>>,
    /// Signalled when a child is registered (the reaper sleeps on it while
    /// the agent has no children).
    children: Condvar,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, HashMap<u32, File>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `start` with the table locked and registers the pid it
    /// returns. Returns what `start` did and the pipe on which the
    /// process's raw wait status (4 bytes, native order) arrives.
    pub fn register<T>(
        &self,
        start: impl FnOnce() -> io::Result<(u32, T)>,
    ) -> io::Result<(u32, T, File)> {
        let (rx, tx) = sys::pipe()?;
        let mut waiting = self.lock();
        let (pid, t) = start()?;
        waiting.insert(pid, tx);
        drop(waiting);
        self.children.notify_all();
        Ok((pid, t, rx))
    }

    /// The reaper thread's loop.
    pub fn run(&self) {
        loop {
            match sys::peek_exited_child() {
                Ok(Some(pid)) => {
                    let mut waiting = self.lock();
                    // None: std reaped it (a failed exec) while we waited
                    // for the lock.
                    if let Some(status) = sys::reap(pid) {
                        if let Some(mut tx) = waiting.remove(&pid) {
                            // The session may be gone (EPIPE): nobody to tell.
                            let _ = tx.write_all(&status.to_ne_bytes());
                        }
                    }
                }
                Ok(None) => {
                    let waiting = self.lock();
                    let _ = self.children.wait_timeout(waiting, Duration::from_secs(1));
                }
                Err(e) => {
                    log!("waiting for children: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// A raw wait status as the protocol reports it.
pub fn exit_status(raw: i32) -> crate::proto::ExitStatus {
    use crate::proto::ExitStatus;
    if libc::WIFSIGNALED(raw) {
        ExitStatus::Signal(libc::WTERMSIG(raw))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(raw))
    }
}

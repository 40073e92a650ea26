//! Starting one process as its spec says: program and arguments, exactly
//! the given environment, working directory, credentials (supplementary
//! groups, gid, uid), umask, rlimits, no-new-privileges, in a new session,
//! with pipes or a new pty (its controlling terminal) for stdio.
//!
//! std's `Command` forks and execs, and reports an exec failure (such as a
//! missing program) as an error of `spawn`; the credential steps run in a
//! pre-exec hook because they must follow the rlimits (raising a hard limit
//! needs root) and std would drop privileges before its hooks.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::sys;
use crate::spec::Process;

/// The agent's ends of a started process's stdio, all non-blocking.
pub struct Stdio3 {
    /// Its standard input (or the pty master, for a terminal).
    pub stdin: File,
    /// Its standard output (or the pty master again).
    pub stdout: File,
    /// Its standard error; `None` on a terminal, where it shares the pty.
    pub stderr: Option<File>,
}

/// Starts the process `p` (already validated); its pid and stdio.
pub fn spawn(p: &Process) -> io::Result<(u32, Stdio3)> {
    let mut cmd = Command::new(&p.args[0]);
    cmd.args(&p.args[1..])
        .env_clear()
        .current_dir(p.cwd_or_root());
    for e in &p.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }

    let pty = if p.terminal {
        let (master, slave) = sys::open_pty()?;
        if let Some(size) = p.console_size {
            sys::set_winsize(&master, size.height, size.width)?;
        }
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        Some(master)
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        None
    };

    // Everything the hook needs is prepared here: it runs in the forked
    // child, where allocating is not safe.
    let mut rlimits = Vec::with_capacity(p.rlimits.len());
    for r in &p.rlimits {
        let resource = r
            .resource()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        rlimits.push((
            resource,
            libc::rlimit {
                rlim_cur: r.soft,
                rlim_max: r.hard,
            },
        ));
    }
    let groups: Vec<libc::gid_t> = p.user.additional_gids.clone();
    let (uid, gid) = (p.user.uid, p.user.gid);
    let umask = p.user.umask;
    let terminal = p.terminal;
    let no_new_privs = p.no_new_privileges;
    // SAFETY: getuid(2) takes no arguments and cannot fail.
    let as_root = unsafe { libc::getuid() } == 0;
    let hook = move || -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: each call below is an async-signal-safe system call
        // taking integers or pointers to data prepared before the fork
        // (`rlimits`, `groups`), which stays alive in the child until exec.
        unsafe {
            check(libc::setsid())?;
            if terminal {
                check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            }
            for (resource, lim) in &rlimits {
                check(libc::setrlimit(*resource, lim))?;
            }
            if let Some(m) = umask {
                libc::umask(m);
            }
            if as_root {
                check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            }
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            if no_new_privs {
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls (above).
    unsafe { cmd.pre_exec(hook) };

    let mut child = cmd.spawn()?;
    let pid = child.id();
    let stdio = match pty {
        Some(master) => Stdio3 {
            stdin: master.try_clone()?,
            stdout: master,
            stderr: None,
        },
        None => {
            let take = |fd: Option<OwnedFd>| {
                fd.map(File::from)
                    .ok_or_else(|| io::Error::other("std gave no pipe"))
            };
            Stdio3 {
                stdin: take(child.stdin.take().map(OwnedFd::from))?,
                stdout: take(child.stdout.take().map(OwnedFd::from))?,
                stderr: Some(take(child.stderr.take().map(OwnedFd::from))?),
            }
        }
    };
    // Dropping `child` neither waits for nor kills the process: the
    // reaper collects it.
    drop(child);
    sys::set_nonblocking(&stdio.stdin)?;
    sys::set_nonblocking(&stdio.stdout)?;
    if let Some(e) = &stdio.stderr {
        sys::set_nonblocking(e)?;
    }
    Ok((pid, stdio))
}

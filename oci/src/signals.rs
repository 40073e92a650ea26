//! Signals sent to a monitor process: the monitors block the ones they
//! forward to the container's process (termination requests, the user
//! signals, SIGWINCH for terminal resizes) and take them one at a time on
//! a thread of their own; children they start get a clean mask back.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// What a monitor passes on to the process it watches.
pub const FORWARDED: &[i32] = &[
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

fn set_of(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t; the numbers are valid signals.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Blocks [`FORWARDED`] in this thread (call it before starting any
/// thread, so that every thread inherits the mask) and starts a thread
/// that calls `handler` with each one as it arrives.
pub fn forward_to(handler: impl Fn(i32) + Send + 'static) {
    let set = set_of(FORWARDED);
    // SAFETY: set is a valid sigset_t; the old mask is not asked for.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: set is valid and the signals are blocked in every thread;
        // sigwait writes the signal number into sig.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc == 0 {
            handler(sig);
        }
    });
}

/// The child of `cmd` starts with no blocked signal and the default
/// action for each, whatever this process blocked.
pub fn unblock_in_child(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls
    // async-signal-safe functions (sigemptyset, sigprocmask, signal).
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
}

//! SIGTERM, turned into a readable eventfd for the VMM's event loop: the
//! handler only writes to the eventfd (async-signal-safe); the loop stops
//! the VM cleanly when it reads it.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The eventfd SIGTERM writes to.
pub struct StopSignals(EventFd);

static SIGTERM_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigterm(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = SIGTERM_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is a live 8-byte buffer.
        let _ = unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

impl StopSignals {
    /// Installs the SIGTERM handler.
    pub fn new() -> std::io::Result<Self> {
        let evt = EventFd::new(EFD_NONBLOCK)?;
        SIGTERM_FD.store(evt.as_raw_fd(), Ordering::Relaxed);
        vmm_sys_util::signal::register_signal_handler(libc::SIGTERM, on_sigterm)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        Ok(Self(evt))
    }

    /// Whether a SIGTERM arrived (clears it).
    pub fn read(&mut self) -> bool {
        self.0.read().is_ok()
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        SIGTERM_FD.store(-1, Ordering::Relaxed);
    }
}

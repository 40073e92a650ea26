//! Raw mode for an interactive console, restored when dropped.

use vmm_sys_util::terminal::Terminal;

/// Guard: stdin is in raw mode while it lives.
pub struct RawMode;

impl RawMode {
    /// Puts stdin in raw mode; `None` when that fails (the guest still runs,
    /// with line-buffered input).
    pub fn enter() -> Option<Self> {
        match std::io::stdin().lock().set_raw_mode() {
            Ok(()) => Some(Self),
            Err(e) => {
                tracing::warn!("cannot put the terminal in raw mode: {e}");
                None
            }
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Err(e) = std::io::stdin().lock().set_canon_mode() {
            tracing::warn!("cannot restore the terminal: {e}");
        }
    }
}

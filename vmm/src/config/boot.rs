//! What the guest boots: kernel, initrd and command line (Firecracker's
//! `boot-source`). The files are opened when the VM is built, not here.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The longest kernel command line accepted: x86 COMMAND_LINE_SIZE (2048)
/// less the NUL.
pub const MAX_CMDLINE_LEN: usize = 2047;

/// Command line used when none is given: serial console, `reboot=k` so a
/// reboot reaches the i8042 reset line, and `panic=1` so a panicking kernel
/// without pvpanic still ends the VM.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Firecracker's `BootSource`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// ELF `vmlinux` (PVH or 64-bit entry) or `bzImage`.
    pub kernel_image_path: PathBuf,
    /// Optional initial ramdisk.
    #[serde(default)]
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line ([`DEFAULT_CMDLINE`] when absent).
    #[serde(default)]
    pub boot_args: Option<String>,
}

impl BootSource {
    /// Checks the command line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = self.cmdline();
        if c.len() > MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong(c.len()));
        }
        if !c.is_ascii() || c.contains('\0') {
            return Err(ConfigError::CmdlineInvalid);
        }
        Ok(())
    }

    /// The kernel command line as given.
    pub fn cmdline(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_CMDLINE)
    }
}

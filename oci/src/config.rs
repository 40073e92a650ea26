//! The runtime's own configuration: where the guest kernel and the agent's
//! initramfs are, how large a VM is when the container sets no limit, and
//! where root disk images are cached. A JSON file, `/etc/condo/oci.json`
//! by default (`--config` or `CONDO_OCI_CONFIG` name another); every key
//! is optional:
//!
//! ```json
//! {
//!   "kernel": "/usr/local/lib/condo/vmlinux",
//!   "initrd": "/usr/local/lib/condo/initramfs.cpio.gz",
//!   "cmdline": "console=ttyS0 reboot=k panic=1 quiet rdinit=/sbin/condo-agent",
//!   "vcpus": 1,
//!   "memory_mib": 256,
//!   "boot_timeout_s": 60,
//!   "image_cache": "/var/cache/condo/oci",
//!   "vmm": "/usr/local/bin/condo",
//!   "debug_log": "/var/log/condo-oci.log",
//!   "huge_pages": "None"
//! }
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The configuration file read when none is named.
pub const DEFAULT_FILE: &str = "/etc/condo/oci.json";
/// Where the set-up installs the guest kernel and initramfs.
pub const DEFAULT_DIR: &str = "/usr/local/lib/condo";

/// The guest's kernel command line: the agent is the guest's init.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 quiet rdinit=/sbin/condo-agent";

/// The runtime's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// The guest kernel (ELF vmlinux or bzImage).
    pub kernel: PathBuf,
    /// The initramfs holding the guest agent.
    pub initrd: PathBuf,
    /// The guest kernel's command line (the root disk and agent options
    /// are added).
    pub cmdline: String,
    /// vCPUs of a container without a CPU quota.
    pub vcpus: u64,
    /// Guest memory of a container without a memory limit.
    pub memory_mib: u64,
    /// How long a VM may take to boot and answer.
    pub boot_timeout_s: u64,
    /// Root disk images, by content of the rootfs.
    pub image_cache: PathBuf,
    /// The VMM binary (default: this program).
    pub vmm: Option<PathBuf>,
    /// A file for the monitors' timings of each container's phases.
    pub debug_log: Option<PathBuf>,
    /// What backs guest memory (`machine-config.huge_pages`): `None`
    /// (4 KiB pages: the host keeps only what the guest touched, the
    /// densest for many small containers), `Transparent` or `2M`.
    pub huge_pages: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            kernel: Path::new(DEFAULT_DIR).join("vmlinux"),
            initrd: Path::new(DEFAULT_DIR).join("initramfs.cpio.gz"),
            cmdline: DEFAULT_CMDLINE.into(),
            vcpus: 1,
            memory_mib: 256,
            boot_timeout_s: 60,
            image_cache: PathBuf::from("/var/cache/condo/oci"),
            vmm: None,
            debug_log: None,
            huge_pages: "None".into(),
        }
    }
}

impl RuntimeConfig {
    /// Reads the file `path`, or the default file when `path` is None (a
    /// missing default file means every default).
    pub fn load(path: Option<&Path>) -> Result<RuntimeConfig> {
        let (path, required) = match path {
            Some(p) => (p.to_owned(), true),
            None => (PathBuf::from(DEFAULT_FILE), false),
        };
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default())
            }
            Err(e) => return Err(Error::path("read runtime configuration", &path)(e)),
        };
        Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parses and checks a configuration file's bytes.
    pub fn parse(text: &[u8]) -> std::result::Result<RuntimeConfig, String> {
        let c: RuntimeConfig = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        if c.vcpus == 0 || c.vcpus > 64 {
            return Err("vcpus must be 1 to 64".into());
        }
        if c.memory_mib < 64 {
            return Err("memory_mib must be at least 64".into());
        }
        if !matches!(c.huge_pages.as_str(), "None" | "Transparent" | "2M") {
            return Err("huge_pages must be None, Transparent or 2M".into());
        }
        Ok(c)
    }

    /// The VMM binary.
    pub fn vmm(&self) -> Result<PathBuf> {
        match &self.vmm {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe().map_err(Error::io("find this program")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c: RuntimeConfig = serde_json::from_str(r#"{"vcpus": 2}"#).expect("parse");
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_mib, 256);
        assert!(serde_json::from_str::<RuntimeConfig>(r#"{"kernal": "x"}"#).is_err());
    }
}

//! Snapshot files: the machine state ([`MicrovmState`]) and guest memory.
//!
//! The state file is `CONDOSNP`, a format version, the body's length and
//! its CRC-32, then the body: the [`MicrovmState`] as JSON. Every part of
//! it is a typed state of its own (the machine, each vCPU, the interrupt
//! controllers, PIT and clock, the UART, every virtio transport with its
//! device), named field by field, unknown fields refused; it is not the
//! API's or the config file's shape, so either can change without
//! breaking snapshots. A file that is not a condo snapshot, of another
//! version, truncated, corrupted or holding a malformed state is refused
//! with one clear error. Live migration sends the same [`MicrovmState`],
//! framed the same way.
//!
//! The memory file is guest RAM, region after region ([`memory`]).

pub mod memory;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use devices::legacy::SerialState;
use devices::virtio::mmio::TransportState;
use devices::virtio::persist::VirtioDeviceState;
use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};

use crate::config::{
    BalloonConfig, BootSource, ConfigError, Drive, EntropyConfig, MacAddr, MachineConfigUpdate,
    NetworkInterface, VmConfig, VsockConfig,
};
use crate::vcpu::VcpuState;

const MAGIC: &[u8; 8] = b"CONDOSNP";
/// The state format this build writes and reads. 1 embedded the config
/// file's shape and packed device state by hand; 2 is typed throughout.
pub const VERSION: u32 = 2;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// Largest state body accepted (the real ones are tens of KiB per vCPU).
pub const MAX_BODY: u64 = 64 << 20;

/// Why a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read snapshot {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("cannot write snapshot {path}: {err}")]
    Write { path: PathBuf, err: std::io::Error },
    #[error("{0} is not a condo snapshot")]
    NotSnapshot(String),
    #[error("snapshot {path} has format version {found}; this condo reads version {VERSION}")]
    Version { path: String, found: u32 },
    #[error("snapshot {0} is truncated or corrupted (checksum mismatch)")]
    Corrupt(String),
    #[error("snapshot: {0}")]
    Invalid(String),
    #[error("memory file {path}: {err}")]
    Memory { path: String, err: String },
}

/// The machine a snapshot was taken of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineState {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    pub track_dirty_pages: bool,
    /// What it booted (for the record: a restored guest does not boot).
    pub kernel_image_path: PathBuf,
    pub initrd_path: Option<PathBuf>,
    pub boot_args: Option<String>,
    /// The drive that is the guest's root file system, if any.
    pub root_drive: Option<String>,
}

/// One region of guest RAM, in memory-file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRegionState {
    /// Guest-physical address.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

/// KVM's VM-wide state: interrupt controllers, PIT, clock.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// Everything a paused VM is, but its memory.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MicrovmState {
    pub machine: MachineState,
    pub memory: Vec<MemoryRegionState>,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub serial: SerialState,
    /// Every virtio transport with its device, in bus order.
    pub devices: Vec<TransportState>,
}

impl MicrovmState {
    /// Checks what the parts must agree on.
    pub fn check(&self) -> Result<(), SnapshotError> {
        let bad = |m: String| Err(SnapshotError::Invalid(m));
        if self.vcpus.len() != usize::from(self.machine.vcpu_count) {
            return bad(format!(
                "{} vCPU states for a machine of {} vCPUs",
                self.vcpus.len(),
                self.machine.vcpu_count
            ));
        }
        let total = self
            .memory
            .iter()
            .try_fold(0u64, |a, r| a.checked_add(r.size));
        if total != Some(self.machine.mem_size_mib << 20) {
            return bad(format!(
                "memory regions do not add up to the machine's {} MiB",
                self.machine.mem_size_mib
            ));
        }
        if self.vm.irqchips.len() != 3 {
            return bad(format!(
                "{} interrupt controller states, 3 expected",
                self.vm.irqchips.len()
            ));
        }
        Ok(())
    }

    /// The configuration of the VM this state rebuilds (for
    /// `GET /vm/config`, and for the next snapshot), checked as any.
    pub fn config(&self) -> Result<VmConfig, ConfigError> {
        let m = &self.machine;
        let mut c = VmConfig::default();
        c.set_boot_source(BootSource {
            kernel_image_path: m.kernel_image_path.clone(),
            initrd_path: m.initrd_path.clone(),
            boot_args: m.boot_args.clone(),
        })?;
        c.update_machine_config(&MachineConfigUpdate {
            vcpu_count: Some(m.vcpu_count),
            mem_size_mib: Some(m.mem_size_mib),
            track_dirty_pages: Some(m.track_dirty_pages),
            ..MachineConfigUpdate::default()
        })?;
        for t in &self.devices {
            match &t.device {
                VirtioDeviceState::Block(b) => c.insert_drive(Drive {
                    drive_id: b.id.clone(),
                    path_on_host: b.path.clone(),
                    is_root_device: m.root_drive.as_deref() == Some(b.id.as_str()),
                    is_read_only: b.read_only,
                    rate_limiter: Some(b.rate_limiter),
                    ..Drive::default()
                })?,
                VirtioDeviceState::Net(n) => c.insert_network_interface(NetworkInterface {
                    iface_id: n.id.clone(),
                    host_dev_name: n.tap.clone(),
                    guest_mac: Some(MacAddr(n.mac)),
                    rx_rate_limiter: Some(n.rx_rate_limiter),
                    tx_rate_limiter: Some(n.tx_rate_limiter),
                })?,
                VirtioDeviceState::Vsock(v) => c.set_vsock(VsockConfig {
                    guest_cid: v.cid,
                    uds_path: v.uds_path.clone(),
                    vsock_id: None,
                })?,
                VirtioDeviceState::Balloon(b) => c.set_balloon(BalloonConfig {
                    amount_mib: b.target_pages / devices::virtio::balloon::PAGES_PER_MIB,
                    deflate_on_oom: b.deflate_on_oom,
                    stats_polling_interval_s: b.stats_polling_interval_s,
                    free_page_hinting: false,
                    free_page_reporting: b.free_page_reporting,
                })?,
                VirtioDeviceState::Rng(_) => c.set_entropy(EntropyConfig::default())?,
            }
        }
        Ok(c)
    }
}

/// CRC-32 (IEEE).
pub fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// A state file holding `body`: the header (magic, version, length,
/// checksum) and the body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// `state` encoded and framed.
pub fn encode(state: &MicrovmState) -> Vec<u8> {
    // Serializing plain data structs to JSON cannot fail.
    frame(&serde_json::to_vec(state).unwrap_or_default())
}

/// Writes the state file (to a temporary name, then renamed: a crash never
/// leaves half a snapshot under the real name).
pub fn write(path: &Path, state: &MicrovmState) -> Result<(), SnapshotError> {
    let err = |err| SnapshotError::Write {
        path: path.to_owned(),
        err,
    };
    let tmp = path.with_extension("condo-tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&encode(state)).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Reads and checks a state file.
pub fn read(path: &Path) -> Result<MicrovmState, SnapshotError> {
    let name = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|err| SnapshotError::Read {
        path: name.clone(),
        err,
    })?;
    let mut bytes = Vec::new();
    f.take(HEADER_LEN as u64 + MAX_BODY + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| SnapshotError::Read {
            path: name.clone(),
            err,
        })?;
    decode(&bytes, &name)
}

/// Checks and decodes a state file's bytes (`name` for errors).
pub fn decode(bytes: &[u8], name: &str) -> Result<MicrovmState, SnapshotError> {
    let name = name.to_owned();
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(SnapshotError::NotSnapshot(name));
    };
    if &header[..8] != MAGIC {
        return Err(SnapshotError::NotSnapshot(name));
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != VERSION {
        return Err(SnapshotError::Version {
            path: name,
            found: version,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[12..20]);
    let len = u64::from_le_bytes(len);
    let crc = u32::from_le_bytes([header[20], header[21], header[22], header[23]]);
    let body = &bytes[HEADER_LEN..];
    if len > MAX_BODY || body.len() as u64 != len || crc32(body) != crc {
        return Err(SnapshotError::Corrupt(name));
    }
    let state: MicrovmState =
        serde_json::from_slice(body).map_err(|e| SnapshotError::Invalid(format!("{name}: {e}")))?;
    state.check()?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    pub(crate) fn sample() -> MicrovmState {
        MicrovmState {
            machine: MachineState {
                vcpu_count: 0,
                mem_size_mib: 1,
                track_dirty_pages: false,
                kernel_image_path: "/k".into(),
                initrd_path: None,
                boot_args: None,
                root_drive: None,
            },
            memory: vec![MemoryRegionState {
                base: 0,
                size: 1 << 20,
            }],
            vcpus: Vec::new(),
            vm: VmState {
                irqchips: vec![kvm_irqchip::default(); 3],
                pit: kvm_pit_state2::default(),
                clock: kvm_clock_data::default(),
            },
            serial: SerialState::default(),
            devices: Vec::new(),
        }
    }

    #[test]
    fn corrupt_foreign_and_truncated_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("condo-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s");
        write(&p, &sample()).unwrap();
        assert!(read(&p).is_ok());
        let good = std::fs::read(&p).unwrap();
        // A flipped byte in the body.
        let mut bad = good.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0x20;
        std::fs::write(&p, &bad).unwrap();
        assert!(matches!(read(&p), Err(SnapshotError::Corrupt(_))));
        // Truncated.
        std::fs::write(&p, &good[..good.len() - 10]).unwrap();
        assert!(matches!(read(&p), Err(SnapshotError::Corrupt(_))));
        // Another version.
        let mut v1 = good.clone();
        v1[8] = 1;
        std::fs::write(&p, &v1).unwrap();
        assert!(matches!(
            read(&p),
            Err(SnapshotError::Version { found: 1, .. })
        ));
        // Not a snapshot at all; empty; a huge claimed length.
        std::fs::write(&p, b"hello world, this is not it").unwrap();
        assert!(matches!(read(&p), Err(SnapshotError::NotSnapshot(_))));
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(read(&p), Err(SnapshotError::NotSnapshot(_))));
        let mut huge = good.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&p, &huge).unwrap();
        assert!(matches!(read(&p), Err(SnapshotError::Corrupt(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn malformed_states_are_refused_with_their_reason() {
        let json = |s: &MicrovmState| serde_json::to_value(s).unwrap();
        let decode_value =
            |v: serde_json::Value| decode(&frame(v.to_string().as_bytes()), "s").map(|_| ());
        assert!(decode_value(json(&sample())).is_ok());
        // An unknown field, a missing one, a wrong type.
        let mut v = json(&sample());
        v["machine"]["color"] = "red".into();
        let e = decode_value(v).unwrap_err().to_string();
        assert!(e.contains("unknown field `color`"), "{e}");
        let mut v = json(&sample());
        v["machine"].as_object_mut().unwrap().remove("mem_size_mib");
        assert!(decode_value(v).is_err());
        let mut v = json(&sample());
        v["vcpus"] = "many".into();
        assert!(decode_value(v).is_err());
        // Parts that do not agree.
        let mut s = sample();
        s.machine.vcpu_count = 2;
        let e = decode_value(json(&s)).unwrap_err().to_string();
        assert!(e.contains("0 vCPU states for a machine of 2"), "{e}");
        let mut s = sample();
        s.machine.mem_size_mib = 2;
        assert!(decode_value(json(&s)).is_err());
        let mut s = sample();
        s.vm.irqchips.pop();
        assert!(decode_value(json(&s)).is_err());
        // A device state of an unknown kind.
        let mut v = json(&sample());
        v["devices"] = serde_json::json!([{"device_type": 2, "status": 0,
            "device_features_sel": 0, "driver_features_sel": 0, "driver_features": 0,
            "queue_sel": 0, "config_generation": 0, "interrupt_status": 0,
            "activated": false, "queues": [], "device": {"Gpu": {}}}]);
        let e = decode_value(v).unwrap_err().to_string();
        assert!(e.contains("unknown variant `Gpu`"), "{e}");
    }
}

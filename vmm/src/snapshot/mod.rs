//! Snapshot files: the machine state ([`MicrovmState`]) and guest memory.
//!
//! The state file is `CONDOSNP`, a format version, the body's length and
//! its CRC-32, then the body: the [`MicrovmState`] in bincode (fields in
//! order, integers as varints, KVM's structures as byte strings). Every
//! part of it is a typed state of its own (the machine, each vCPU, the
//! interrupt controllers, PIT and clock, the UART, every virtio transport
//! with its device); it is not the API's or the config file's shape, so
//! either can change without breaking snapshots. The encoding is
//! positional: a state type that changes shape changes the format, which
//! gets a new [`VERSION`] (a test pins the encoding of a sample state).
//! Decoding reads at most the body, allocates at most [`MAX_BODY`] and
//! refuses trailing bytes; a file that is not a condo snapshot, of another
//! version, truncated, corrupted or holding a malformed state is refused
//! with one clear error. Live migration sends the same [`MicrovmState`],
//! framed the same way.
//!
//! The memory file is guest RAM, region after region ([`memory`]); beside
//! it, a restore may keep the guest's first writes ([`working_set`]).

pub mod memory;
pub mod working_set;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bincode::Options as _;
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
/// file's shape and packed device state by hand; 2 is typed throughout,
/// in JSON; 3 is version 2's types in bincode (decoding a 2-vCPU state
/// took 0.8 ms of CPU as JSON, about 40 ms in the nested test host).
pub const VERSION: u32 = 3;
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

/// The body's encoding: bincode with varints, bounded by [`MAX_BODY`],
/// nothing allowed after the state.
fn codec() -> impl bincode::Options {
    bincode::DefaultOptions::new()
        .with_limit(MAX_BODY)
        .reject_trailing_bytes()
}

/// `state` encoded and framed.
pub fn encode(state: &MicrovmState) -> Vec<u8> {
    // Plain data structs of known sizes, far below the limit: encoding
    // cannot fail.
    frame(&codec().serialize(state).unwrap_or_default())
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
    let state: MicrovmState = codec()
        .deserialize(body)
        .map_err(|e| SnapshotError::Invalid(format!("{name}: malformed state: {e}")))?;
    state.check()?;
    Ok(state)
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// A live transport of `device_type` with one queue, for `device`.
    fn transport(device_type: u32, device: VirtioDeviceState) -> TransportState {
        TransportState {
            device_type,
            status: 15,
            device_features_sel: 1,
            driver_features_sel: 1,
            driver_features: 1 << 32,
            queue_sel: 0,
            config_generation: 1,
            interrupt_status: 0,
            activated: true,
            queues: vec![devices::virtio::mmio::QueueConfig {
                size: 256,
                ready: true,
                desc_table: 0x1000,
                avail_ring: 0x2000,
                used_ring: 0x3000,
            }],
            device,
        }
    }

    #[test]
    fn malformed_states_are_refused_with_their_reason() {
        let body = |s: &MicrovmState| encode(s)[HEADER_LEN..].to_vec();
        let decode_body = |b: &[u8]| decode(&frame(b), "s").map(|_| ());
        assert!(decode_body(&body(&sample())).is_ok());
        // Cut short, with bytes after the state, not a state at all.
        let good = body(&sample());
        for cut in [1, good.len() / 2, good.len() - 1] {
            let e = decode_body(&good[..cut]).unwrap_err().to_string();
            assert!(e.contains("malformed state"), "{e}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(decode_body(&long).is_err());
        assert!(decode_body(&[0xff; 64]).is_err());
        // A length prefix far past the body allocates nothing: refused.
        let mut huge = sample();
        huge.machine.kernel_image_path = "k".repeat(300).into();
        let mut b = body(&huge);
        let at = b
            .windows(3)
            .position(|w| w == [251, 44, 1])
            .expect("the path's length");
        b[at..at + 3].copy_from_slice(&[253, 0xff, 0xff]);
        b.splice(at + 3..at + 3, [0xff; 6]);
        assert!(decode_body(&b).is_err());
        // Parts that do not agree.
        let mut s = sample();
        s.machine.vcpu_count = 2;
        let e = decode_body(&body(&s)).unwrap_err().to_string();
        assert!(e.contains("0 vCPU states for a machine of 2"), "{e}");
        let mut s = sample();
        s.machine.mem_size_mib = 2;
        assert!(decode_body(&body(&s)).is_err());
        let mut s = sample();
        s.vm.irqchips.pop();
        assert!(decode_body(&body(&s)).is_err());
        // A device state of an unknown kind: the variant's index is past
        // the last device type.
        let mut s = sample();
        s.devices.push(transport(
            4,
            VirtioDeviceState::Rng(devices::virtio::persist::RngState {}),
        ));
        let mut b = body(&s);
        let last = b.len() - 1;
        assert_eq!(b[last], 4, "the Rng variant's index ends the body");
        b[last] = 9;
        let e = decode_body(&b).unwrap_err().to_string();
        assert!(e.contains("variant index"), "{e}");
    }

    /// The encoding is positional: a state type that changes shape changes
    /// the format. When this fails, bump [`VERSION`] and pin the new sum.
    #[test]
    fn the_encoding_of_a_sample_state_is_pinned() {
        use devices::virtio::persist::{BalloonState, BlockState, NetState, RngState, VsockState};
        let mut s = sample();
        s.machine.vcpu_count = 1;
        s.vcpus.push(crate::vcpu::tests::sample_state());
        s.serial.in_buffer = b"ok".to_vec();
        let limits = devices::rate_limiter::RateLimiterConfig::default();
        let kinds = [
            VirtioDeviceState::Block(BlockState {
                id: "rootfs".into(),
                path: "/d".into(),
                read_only: true,
                rate_limiter: limits,
            }),
            VirtioDeviceState::Net(NetState {
                id: "eth0".into(),
                tap: "tap0".into(),
                mac: [2, 0, 0, 0, 0, 1],
                rx_rate_limiter: limits,
                tx_rate_limiter: limits,
            }),
            VirtioDeviceState::Vsock(VsockState {
                cid: 3,
                uds_path: "/v".into(),
            }),
            VirtioDeviceState::Balloon(BalloonState {
                target_pages: 1,
                actual_pages: 2,
                deflate_on_oom: true,
                stats_polling_interval_s: 3,
                free_page_reporting: false,
            }),
            VirtioDeviceState::Rng(RngState {}),
        ];
        for (i, device) in kinds.into_iter().enumerate() {
            s.devices.push(transport(i as u32, device));
        }
        let b = encode(&s);
        assert!(decode(&b, "pinned").is_ok());
        assert_eq!(
            (VERSION, b.len(), crc32(&b[HEADER_LEN..])),
            (3, 8327, 1_081_251_649),
            "the state encoding changed: bump VERSION"
        );
    }
}

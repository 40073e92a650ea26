//! Is this `/dev/kvm` able to run a standard guest?
//!
//! Some nested or paravirtualized KVMs (such as `kvm_pvm`) answer every
//! ioctl and run simple code, but never deliver exceptions or interrupts
//! through the guest's IDT, so a Linux guest dies early with an emulation
//! failure (on `cmpxchg16b`, `xrstor`, `int3`). The probe runs a 64-bit
//! guest of a few instructions that takes a breakpoint exception through its
//! IDT and returns from it, executes `lock cmpxchg16b`, then executes `ud2`
//! and must land in its #UD handler, which reports back on an I/O port. It
//! costs a few milliseconds and turns an obscure KVM register dump into one
//! clear line.
//!
//! A probe VM costs as much as the VMM's own set-up (half of a snapshot
//! restore's time in the nested test host), so its verdict is kept per
//! host ([`check_cached`]): in `/run/condo/kvm-probe` (or the user's runtime
//! directory), keyed by the boot, kernel, KVM device, API version and CPU
//! vendor, and probed again when any of them changes or `condo kvm-check`
//! asks. A host that cannot run guests still gets its one clear line.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use kvm_ioctls::{Cap, Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress};

use crate::arch::{self, BootProtocol};
use crate::memory;

/// Why KVM is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("KVM API version {0}, condo needs 12")]
    ApiVersion(i32),
    #[error("KVM lacks a capability condo needs: {0}")]
    MissingCap(&'static str),
    #[error("cannot set up the KVM probe guest: {0}")]
    Setup(String),
    #[error(
        "/dev/kvm cannot run a standard guest: a probe guest's exceptions or instructions \
         were not handled as on real hardware ({0}){hint}",
        hint = pvm_hint()
    )]
    NoExceptions(String),
    /// An earlier probe's verdict on this host, as it was reported then.
    #[error("{0}")]
    Cached(String),
}

/// What identifies this host's KVM for the probe's verdict: the boot, the
/// kernel, the KVM device and its API version, the CPU vendor, and this
/// probe's own version. Any change runs the probe again.
fn host_key(kvm: &Kvm, device: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let boot_id = read("/proc/sys/kernel/random/boot_id")?;
    let release = read("/proc/sys/kernel/osrelease")?;
    let vendor = read("/proc/cpuinfo")?
        .lines()
        .find_map(|l| l.strip_prefix("vendor_id"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let dev = std::fs::metadata(device).ok()?;
    Some(format!(
        "probe={PROBE_VERSION} boot={} kernel={} kvm={}:{:x}:{} api={} vendor={vendor}",
        boot_id.trim(),
        release.trim(),
        device.display(),
        dev.rdev(),
        dev.ino(),
        kvm.get_api_version()
    ))
}

/// Bumped whenever the probe checks something new.
const PROBE_VERSION: u32 = 1;
const CACHE_MAGIC: &str = "condo-kvm-probe v1";
/// Largest cache file read.
const CACHE_MAX: u64 = 4096;

/// Where the verdict is kept: `$CONDO_RUNTIME_DIR`, else `/run/condo` for
/// root, else `$XDG_RUNTIME_DIR/condo`; none otherwise (the probe then
/// runs every time).
fn cache_path() -> Option<PathBuf> {
    let dir = match std::env::var_os("CONDO_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d),
        // SAFETY: geteuid has no preconditions and cannot fail.
        None if unsafe { libc::geteuid() } == 0 => PathBuf::from("/run/condo"),
        None => PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?).join("condo"),
    };
    Some(dir.join("kvm-probe"))
}

/// The verdict `path` holds for `key`, if it holds one.
fn read_verdict(path: &Path, key: &str) -> Option<Result<(), ProbeError>> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(CACHE_MAX)
        .read_to_string(&mut text)
        .ok()?;
    let mut lines = text.lines();
    if lines.next()? != CACHE_MAGIC || lines.next()? != key {
        return None;
    }
    match lines.next()? {
        "ok" => Some(Ok(())),
        v => Some(Err(ProbeError::Cached(
            v.strip_prefix("cannot ")?.to_owned(),
        ))),
    }
}

/// Keeps `verdict` for `key` (written whole, then renamed into place, so a
/// reader never sees half of it); best effort.
fn write_verdict(path: &Path, key: &str, verdict: &Result<(), ProbeError>) {
    let v = match verdict {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("cannot {}", e.to_string().replace('\n', " ")),
    };
    let Some(dir) = path.parent() else { return };
    let tmp = dir.join(format!("kvm-probe.{}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, format!("{CACHE_MAGIC}\n{key}\n{v}\n")))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::debug!(
            "cannot keep the KVM probe's verdict in {}: {e}",
            path.display()
        );
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The probe's verdict for this host: kept from an earlier run while the
/// host's KVM is the same (see [`host_key`]), else probed now and kept.
pub fn check_cached(kvm: &Kvm, device: &Path) -> Result<(), ProbeError> {
    let key = host_key(kvm, device);
    let path = cache_path();
    if let (Some(key), Some(path)) = (&key, &path) {
        if let Some(v) = read_verdict(path, key) {
            return v;
        }
    }
    let verdict = check(kvm);
    if let (Some(key), Some(path)) = (&key, &path) {
        write_verdict(path, key, &verdict);
    }
    verdict
}

/// Probes now, and keeps the verdict for later runs (`condo kvm-check`,
/// the host daemon's start).
pub fn check_and_keep(kvm: &Kvm, device: &Path) -> Result<(), ProbeError> {
    let verdict = check(kvm);
    if let (Some(key), Some(path)) = (host_key(kvm, device), cache_path()) {
        write_verdict(&path, &key, &verdict);
    }
    verdict
}

const IDT_ADDR: u64 = 0x1000;
const CODE_ADDR: u64 = 0x2000;
const HANDLER_ADDR: u64 = 0x3000;
const BP_HANDLER_ADDR: u64 = 0x3100;
const CMPXCHG_ADDR: u64 = 0x4000;
const REPORT_PORT: u16 = 0xf4;
const REPORT_VALUE: u8 = 0x42;
const TIMEOUT: Duration = Duration::from_secs(5);

fn pvm_hint() -> &'static str {
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        "; this host's KVM is the paravirtualized kvm_pvm: run condo inside the nested test host (testhost/run)"
    } else {
        ""
    }
}

/// Checks the KVM API and capabilities, then runs the exception probe.
pub fn check(kvm: &Kvm) -> Result<(), ProbeError> {
    let v = kvm.get_api_version();
    if v != 12 {
        return Err(ProbeError::ApiVersion(v));
    }
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(ProbeError::MissingCap(name));
        }
    }
    exception_probe(kvm)
}

/// int3; mov edi, CMPXCHG_ADDR; xor eax/edx/ebx/ecx; lock cmpxchg16b [rdi]; ud2
const PROBE_CODE: [u8; 21] = [
    0xcc, // int3 (its handler returns with iretq)
    0xbf,
    CMPXCHG_ADDR as u8,
    (CMPXCHG_ADDR >> 8) as u8,
    0,
    0, // mov edi, imm32
    0x31,
    0xc0,
    0x31,
    0xd2,
    0x31,
    0xdb,
    0x31,
    0xc9, // xor eax,eax; edx; ebx; ecx
    0xf0,
    0x48,
    0x0f,
    0xc7,
    0x0f, // lock cmpxchg16b [rdi]
    0x0f,
    0x0b, // ud2
];

/// A 64-bit interrupt gate to `handler` through code selector `cs`.
fn idt_gate(handler: u64, cs: u16) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&cs.to_le_bytes());
    g[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

fn exception_probe(kvm: &Kvm) -> Result<(), ProbeError> {
    let setup = |e: String| ProbeError::Setup(e);
    let vm = kvm
        .create_vm()
        .map_err(|e| setup(format!("KVM_CREATE_VM: {e}")))?;
    let mem = memory::create_regions(&[(GuestAddress(0), 2 << 20)], 2 << 20)
        .map_err(|e| setup(e.to_string()))?;
    memory::register(&vm, &mem, false).map_err(|e| setup(e.to_string()))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| setup(format!("KVM_CREATE_VCPU: {e}")))?;
    let mut cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| setup(format!("KVM_GET_SUPPORTED_CPUID: {e}")))?;
    arch::filter_cpuid(&mut cpuid, 0, 1).map_err(|e| setup(e.to_string()))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| setup(format!("KVM_SET_CPUID2: {e}")))?;
    arch::setup_sregs(&mem, &vcpu, BootProtocol::LinuxBoot).map_err(|e| setup(e.to_string()))?;
    arch::setup_regs(&vcpu, CODE_ADDR, BootProtocol::LinuxBoot)
        .map_err(|e| setup(e.to_string()))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| setup(format!("KVM_GET_SREGS: {e}")))?;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 16 * 32 - 1;
    let cs = sregs.cs.selector;
    vcpu.set_sregs(&sregs)
        .map_err(|e| setup(format!("KVM_SET_SREGS: {e}")))?;
    let write = |bytes: &[u8], at: u64| {
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|e| setup(e.to_string()))
    };
    write(&idt_gate(BP_HANDLER_ADDR, cs), IDT_ADDR + 3 * 16)?;
    write(&idt_gate(HANDLER_ADDR, cs), IDT_ADDR + 6 * 16)?;
    write(&PROBE_CODE, CODE_ADDR)?;
    write(&[0x48, 0xcf], BP_HANDLER_ADDR)?; // iretq
                                            // mov al, 0x42; out 0xf4, al; hlt
    write(
        &[0xb0, REPORT_VALUE, 0xe6, REPORT_PORT as u8, 0xf4],
        HANDLER_ADDR,
    )?;

    let (tx, rx) = mpsc::channel();
    let runner = std::thread::Builder::new()
        .name("kvm-probe".into())
        .stack_size(64 << 10)
        .spawn(move || {
            // Keep the VM and its memory alive while the vCPU runs.
            let _keep = (&vm, &mem);
            let outcome = match vcpu.run() {
                Ok(VcpuExit::IoOut(REPORT_PORT, [REPORT_VALUE])) => Ok(()),
                Ok(VcpuExit::Shutdown) => Err("KVM reported a triple fault".to_owned()),
                Ok(VcpuExit::InternalError) => Err("KVM reported an internal error".to_owned()),
                Ok(other) => Err(format!("unexpected exit {other:?}")),
                Err(e) => Err(format!("KVM_RUN: {e}")),
            };
            let _ = tx.send(outcome);
        })
        .map_err(|e| setup(e.to_string()))?;
    match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(())) => {
            let _ = runner.join();
            Ok(())
        }
        Ok(Err(why)) => Err(ProbeError::NoExceptions(why)),
        // The thread is left behind: the caller exits on this error.
        Err(_) => Err(ProbeError::NoExceptions(format!(
            "the probe guest did not finish in {} s",
            TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_layout() {
        let g = idt_gate(0x1234_5678_9abc_def0, 0x08);
        assert_eq!(&g[0..2], &[0xf0, 0xde]);
        assert_eq!(&g[2..4], &[0x08, 0x00]);
        assert_eq!(g[4], 0);
        assert_eq!(g[5], 0x8e);
        assert_eq!(&g[6..8], &[0xbc, 0x9a]);
        assert_eq!(&g[8..12], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(&g[12..16], &[0, 0, 0, 0]);
    }

    /// On any host with KVM the probe must give an answer, never hang.
    #[test]
    fn probe_answers() {
        let Ok(kvm) = Kvm::new() else { return };
        match check(&kvm) {
            Ok(()) => {}
            Err(ProbeError::NoExceptions(why)) => assert!(!why.is_empty()),
            Err(e) => panic!("probe setup failed: {e}"),
        }
    }

    #[test]
    fn a_kept_verdict_counts_only_for_its_key() {
        let dir = std::env::temp_dir().join(format!("condo-probe-{}", std::process::id()));
        let path = dir.join("kvm-probe");
        assert!(read_verdict(&path, "k").is_none(), "nothing kept yet");
        write_verdict(&path, "k", &Ok(()));
        assert!(matches!(read_verdict(&path, "k"), Some(Ok(()))));
        assert!(read_verdict(&path, "other key").is_none());
        let no = ProbeError::NoExceptions("ud2 not delivered".into());
        let line = no.to_string();
        write_verdict(&path, "k", &Err(no));
        match read_verdict(&path, "k") {
            Some(Err(e)) => assert_eq!(e.to_string(), line, "the same one line"),
            other => panic!("{other:?}"),
        }
        // A file that is not a verdict, or is cut short, is no verdict.
        for junk in [
            "",
            "garbage",
            "condo-kvm-probe v1\nk\n",
            "condo-kvm-probe v1\nk\nmaybe\n",
        ] {
            std::fs::write(&path, junk).unwrap();
            assert!(read_verdict(&path, "k").is_none(), "{junk:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

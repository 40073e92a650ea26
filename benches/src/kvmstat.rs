//! KVM's view of a benchmarked guest, the same for condo and QEMU: the
//! per-VM statistics in debugfs (`/sys/kernel/debug/kvm/<pid>-<fd>/`,
//! exits by kind summed over the vCPUs), and, for one census round per
//! VMM, in-kernel histograms on KVM's tracepoints (tracefs hist triggers):
//! exits by reason, the ports, MSRs and MMIO addresses the guest touched.
//! Both need root (the benchmarks run as root in the test host); without
//! them the figures are left out, never guessed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const DEBUGFS: &str = "/sys/kernel/debug";
const TRACEFS: &str = "/sys/kernel/tracing";

/// The statistics the tables show, in this order.
pub const STATS: &[&str] = &[
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "irq_window_exits",
    "hypercalls",
    "insn_emulation",
    "halt_wakeup",
    "pages_2m",
    "pages_4k",
];

fn mounted(dir: &str, probe: &str) -> bool {
    Path::new(dir).join(probe).exists()
}

fn mount(fs: &str, dir: &str) {
    let (Ok(src), Ok(target), Ok(kind)) = (
        std::ffi::CString::new(fs),
        std::ffi::CString::new(dir),
        std::ffi::CString::new(fs),
    ) else {
        return;
    };
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call
    // and no data; failure is only reported by the return value.
    unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
}

/// Mounts debugfs and tracefs where they are missing; whether KVM's
/// statistics can be read.
pub fn available() -> bool {
    if !mounted(DEBUGFS, "kvm") {
        mount("debugfs", DEBUGFS);
    }
    if !mounted(TRACEFS, "events") {
        mount("tracefs", TRACEFS);
    }
    mounted(DEBUGFS, "kvm")
}

/// The VMs KVM has now (their debugfs directories, named `<tid>-<fd>`
/// after the thread that created each: condo creates its VM on a helper
/// thread, so the name need not hold the VMM's pid).
pub fn vms() -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(Path::new(DEBUGFS).join("kvm")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().contains('-'))
        .map(|e| e.path())
        .collect()
}

/// KVM's statistics (see [`STATS`]) for the VMs that are not in `before`
/// (taken with [`vms`] before the VMM started; the benchmarks run one VMM
/// at a time); empty when debugfs cannot be read.
pub fn vm_stats(before: &[PathBuf]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for dir in vms().into_iter().filter(|d| !before.contains(d)) {
        for name in STATS {
            if let Some(v) = std::fs::read_to_string(dir.join(name))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                *out.entry((*name).to_owned()).or_insert(0) += v;
            }
        }
    }
    out
}

/// One histogram: an event, its keys, and what to call them.
struct Hist {
    event: &'static str,
    keys: &'static str,
}

const HISTS: &[Hist] = &[
    Hist {
        event: "kvm_exit",
        keys: "isa,exit_reason",
    },
    Hist {
        event: "kvm_pio",
        keys: "rw,port.hex",
    },
    Hist {
        event: "kvm_msr",
        keys: "write,ecx.hex",
    },
    Hist {
        event: "kvm_mmio",
        keys: "type,gpa.hex",
    },
];

fn trigger(event: &str) -> PathBuf {
    Path::new(TRACEFS)
        .join("events/kvm")
        .join(event)
        .join("trigger")
}

/// Exit counts by reason and the ports, MSRs and MMIO addresses touched,
/// from hist triggers installed for the length of one run.
pub struct Census {
    installed: Vec<&'static Hist>,
}

/// What a census counted: (what, count), most frequent first.
#[derive(Default)]
pub struct CensusResult {
    pub reasons: Vec<(String, u64)>,
    pub ports: Vec<(String, u64)>,
    pub msrs: Vec<(String, u64)>,
    pub mmio: Vec<(String, u64)>,
}

impl Census {
    /// Installs the histograms (cleared); None when tracefs has no KVM
    /// events or no hist triggers.
    pub fn start() -> Option<Self> {
        let mut installed = Vec::new();
        for h in HISTS {
            let t = trigger(h.event);
            // Remove one left by an interrupted run first, so the counts
            // start from zero.
            let _ = std::fs::write(&t, format!("!hist:keys={}", h.keys));
            if std::fs::write(&t, format!("hist:keys={}:size=4096", h.keys)).is_ok() {
                installed.push(h);
            }
        }
        if installed.is_empty() {
            None
        } else {
            Some(Self { installed })
        }
    }

    /// Reads the histograms and removes them.
    pub fn finish(self) -> CensusResult {
        let mut r = CensusResult::default();
        for h in &self.installed {
            let dir = Path::new(TRACEFS).join("events/kvm").join(h.event);
            let text = std::fs::read_to_string(dir.join("hist")).unwrap_or_default();
            let rows = parse_hist(&text);
            let _ = std::fs::write(trigger(h.event), format!("!hist:keys={}", h.keys));
            match h.event {
                "kvm_exit" => r.reasons = name_reasons(&rows),
                "kvm_pio" => r.ports = name_rows(&rows, &[("rw", &["in", "out"])], "port"),
                "kvm_msr" => r.msrs = name_rows(&rows, &[("write", &["read", "write"])], "ecx"),
                _ => {
                    let types: &[&str] = &["unsatisfied read", "read", "write"];
                    r.mmio = name_rows(&rows, &[("type", types)], "gpa");
                }
            }
        }
        r
    }
}

/// Rows of a hist file: the key fields and the hit count.
fn parse_hist(text: &str) -> Vec<(BTreeMap<String, String>, u64)> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let (Some(open), Some(close)) = (line.find('{'), line.find('}')) else {
            continue;
        };
        let keys: BTreeMap<String, String> = line[open + 1..close]
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once(':')?;
                Some((k.trim().to_owned(), v.trim().to_owned()))
            })
            .collect();
        let hits = line[close..]
            .split_once("hitcount:")
            .and_then(|(_, n)| n.split_whitespace().next())
            .and_then(|n| n.parse().ok());
        if let Some(hits) = hits {
            rows.push((keys, hits));
        }
    }
    rows
}

/// `kind value` names for rows keyed by a small enum field and a value.
fn name_rows(
    rows: &[(BTreeMap<String, String>, u64)],
    enums: &[(&str, &[&str])],
    value: &str,
) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = rows
        .iter()
        .map(|(k, n)| {
            let mut name = String::new();
            for (field, names) in enums {
                let i: usize = k.get(*field).and_then(|v| v.parse().ok()).unwrap_or(0);
                name.push_str(names.get(i).copied().unwrap_or("?"));
                name.push(' ');
            }
            name.push_str(k.get(value).map_or("?", String::as_str));
            (name, *n)
        })
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

fn name_reasons(rows: &[(BTreeMap<String, String>, u64)]) -> Vec<(String, u64)> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for (k, n) in rows {
        let isa: u32 = k.get("isa").and_then(|v| v.parse().ok()).unwrap_or(0);
        let code: u32 = k
            .get("exit_reason")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        *out.entry(reason_name(isa, code)).or_insert(0) += n;
    }
    let mut v: Vec<_> = out.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// The name of exit `code` for KVM's `isa` (1 VMX, 2 SVM).
fn reason_name(isa: u32, code: u32) -> String {
    let svm = |c: u32| -> Option<&'static str> {
        Some(match c {
            0x00..=0x0f => "read_cr",
            0x10..=0x1f => "write_cr",
            0x20..=0x2f => "read_dr",
            0x30..=0x3f => "write_dr",
            0x40..=0x5f => "exception",
            0x60 => "interrupt",
            0x61 => "nmi",
            0x64 => "vintr",
            0x65 => "cr0_sel_write",
            0x6e => "rdtsc",
            0x72 => "cpuid",
            0x77 => "pause",
            0x78 => "hlt",
            0x79 => "invlpg",
            0x7b => "io",
            0x7c => "msr",
            0x7f => "shutdown",
            0x81 => "vmmcall",
            0x87 => "rdtscp",
            0x89 => "wbinvd",
            0x8d => "xsetbv",
            0x400 => "npf",
            _ => return None,
        })
    };
    let vmx = |c: u32| -> Option<&'static str> {
        Some(match c {
            0 => "exception_nmi",
            1 => "interrupt",
            2 => "triple_fault",
            7 => "interrupt_window",
            10 => "cpuid",
            12 => "hlt",
            18 => "vmcall",
            28 => "cr_access",
            29 => "dr_access",
            30 => "io",
            31 => "msr_read",
            32 => "msr_write",
            40 => "pause",
            48 => "ept_violation",
            49 => "ept_misconfig",
            52 => "preemption_timer",
            55 => "xsetbv",
            _ => return None,
        })
    };
    let name = match isa {
        1 => vmx(code),
        2 => svm(code),
        _ => None,
    };
    name.map_or_else(|| format!("{code:#x}"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_rows_are_read_and_named() {
        let text = "# event histogram\n#\n\
            { rw:          1, port: 0x00000000000003f8 } hitcount:         73\n\
            { rw:          0, port: 0x00000000000003fd } hitcount:         62\n\
            \nTotals:\n    Hits: 135\n";
        let rows = parse_hist(text);
        assert_eq!(rows.len(), 2);
        let named = name_rows(&rows, &[("rw", &["in", "out"])], "port");
        assert_eq!(named[0], ("out 0x00000000000003f8".to_owned(), 73));
        assert_eq!(named[1].0, "in 0x00000000000003fd");
        let exits = "{ isa: 2, exit_reason: 124 } hitcount: 10\n\
                     { isa: 2, exit_reason: 1024 } hitcount: 3\n\
                     { isa: 2, exit_reason: 3 } hitcount: 1\n\
                     { isa: 2, exit_reason: 0 } hitcount: 1\n";
        let r = name_reasons(&parse_hist(exits));
        assert_eq!(r[0], ("msr".to_owned(), 10));
        assert_eq!(r[1], ("npf".to_owned(), 3));
        assert_eq!(r[2], ("read_cr".to_owned(), 2));
    }
}

//! `condo-bench boot`: boot-to-init time and VMM memory overhead, condo
//! side by side with QEMU `microvm`, same kernel and initramfs, alternating,
//! several rounds; prints medians and ratios as Markdown tables, with where
//! the time goes.
//!
//! Boot-to-init is the wall time from spawning the VMM to the guest's
//! `/init` printing `condo-guest: ready` on the serial console. VMM overhead
//! is the VMM process's resident memory minus the guest RAM pages it has
//! touched (the Rss of the guest RAM mapping), read from /proc/PID/smaps
//! while the guest idles after boot.
//!
//! Where the time goes: condo runs with `--log-level info` and logs each
//! step of its build (`vmm::timing`), so a boot splits into the process's
//! start (spawn to the first step: exec, arguments), the VMM's steps, and
//! the guest (its vCPUs' first KVM_RUN to `/init`). KVM's statistics for
//! the guest (debugfs) are read when `/init` speaks, for both VMMs; one
//! more round per VMM counts exits by reason, ports and MSRs (tracefs
//! histograms, see `kvmstat`).
//!
//! Usage: condo-bench boot --condo PATH --qemu PATH --kernel VMLINUX
//!        --initrd INITRAMFS [--rounds N] [--cpus N] [--memory MiB]
//!        [--condo-b PATH]
//! `--condo-b` adds a second condo build to every round (an A/B
//! comparison of two builds in the same test host).
//!
//! The other subcommands: `snapshot` ([`snapshot`]), `migration`
//! ([`migration`]), `density` ([`density`]), and `consolidation`
//! ([`consolidation`]) with its `consolidation-report`
//! ([`consolidation_report`]).

#![allow(clippy::print_stdout)]

mod consolidation;
mod consolidation_report;
mod density;
mod kvmstat;
mod migration;
mod snapshot;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    condo: String,
    condo_b: Option<String>,
    qemu: String,
    kernel: String,
    initrd: String,
    rounds: usize,
    cpus: u32,
    mem_mib: u64,
}

/// What one boot measured.
#[derive(Clone, Debug, Default)]
struct Sample {
    boot_ms: f64,
    overhead_kib: u64,
    /// condo only: spawn to the first timed step, the steps, and the first
    /// KVM_RUN to /init.
    phases: Option<Phases>,
    /// KVM's statistics when /init spoke.
    stats: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default)]
struct Phases {
    start_ms: f64,
    vmm_ms: f64,
    guest_ms: f64,
    steps: Vec<(String, u64)>,
    beside: Vec<(String, u64)>,
}

fn usage() -> ! {
    eprintln!(
        "usage: condo-bench boot|snapshot|migration|density|consolidation --condo PATH --qemu PATH --kernel VMLINUX --initrd INITRAMFS \
         [--rounds N] [--cpus N] [--memory MiB] [--condo-b PATH]"
    );
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("boot") => {}
        Some("density") => match density::main(args) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("condo-bench density: {e}");
                std::process::exit(1)
            }
        },
        Some("snapshot") => match snapshot::main(args) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("condo-bench snapshot: {e}");
                std::process::exit(1)
            }
        },
        Some("consolidation") => match consolidation::main(args) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("condo-bench consolidation: {e}");
                std::process::exit(1)
            }
        },
        Some("consolidation-report") => match consolidation_report::main(args) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("condo-bench consolidation-report: {e}");
                std::process::exit(1)
            }
        },
        Some("migration") => match migration::main(args) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("condo-bench migration: {e}");
                std::process::exit(1)
            }
        },
        _ => usage(),
    }
    let mut o = Opts {
        condo: String::new(),
        condo_b: None,
        qemu: String::new(),
        kernel: String::new(),
        initrd: String::new(),
        rounds: 7,
        cpus: 2,
        mem_mib: 256,
    };
    while let Some(flag) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--condo" => o.condo = v,
            "--condo-b" => o.condo_b = Some(v),
            "--qemu" => o.qemu = v,
            "--kernel" => o.kernel = v,
            "--initrd" => o.initrd = v,
            "--rounds" => o.rounds = v.parse().unwrap_or_else(|_| usage()),
            "--cpus" => o.cpus = v.parse().unwrap_or_else(|_| usage()),
            "--memory" => o.mem_mib = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if o.condo.is_empty() || o.qemu.is_empty() || o.kernel.is_empty() || o.initrd.is_empty() {
        usage();
    }
    o
}

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 quiet condo.end=wait";

fn condo_cmd(o: &Opts, condo: &str) -> Command {
    let mut c = Command::new(condo);
    c.args(["--log-level", "info", "run", "--kernel", &o.kernel])
        .args(["--initrd", &o.initrd])
        .args([
            "--cpus",
            &o.cpus.to_string(),
            "--memory",
            &o.mem_mib.to_string(),
        ])
        .args(["--cmdline", CMDLINE]);
    c
}

fn qemu_cmd(o: &Opts) -> Command {
    qemu_microvm(&o.qemu, o.cpus, o.mem_mib, &o.kernel, &o.initrd, CMDLINE)
}

/// QEMU as every benchmark runs it: `microvm` on KVM with the host's CPU,
/// nothing but a serial console on stdout, the given kernel and initrd.
pub(crate) fn qemu_microvm(
    qemu: &str,
    cpus: impl ToString,
    mem_mib: u64,
    kernel: &str,
    initrd: &str,
    cmdline: &str,
) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=on",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-monitor",
        "none",
    ])
    .args(["-smp", &cpus.to_string(), "-m", &mem_mib.to_string()])
    .args(["-kernel", kernel, "-initrd", initrd])
    .args(["-append", cmdline]);
    c
}

/// A condo log line of its build steps (`vmm::timing`): when it started
/// (CLOCK_MONOTONIC, µs), and each step's µs.
#[derive(Clone, Debug, Default)]
pub(crate) struct StepsLine {
    pub start_mono_us: u64,
    pub total_us: u64,
    pub steps: Vec<(String, u64)>,
    pub beside: Vec<(String, u64)>,
}

/// Parses `... VMM steps kind="boot" start_mono_us=1 total_us=2 steps=a:1,b:1`.
pub(crate) fn parse_steps(line: &str) -> Option<StepsLine> {
    if !line.contains("VMM steps") {
        return None;
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
    };
    let list = |text: &str| -> Vec<(String, u64)> {
        text.split(',')
            .filter_map(|p| {
                let (n, v) = p.split_once(':')?;
                Some((n.to_owned(), v.parse().ok()?))
            })
            .collect()
    };
    Some(StepsLine {
        start_mono_us: field("start_mono_us")?.parse().ok()?,
        total_us: field("total_us")?.parse().ok()?,
        steps: list(field("steps")?),
        beside: field("beside").map(list).unwrap_or_default(),
    })
}

/// CLOCK_MONOTONIC in µs (the clock condo's step line uses).
pub(crate) fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000
}

/// Spawns the VMM, waits for the ready line, measures, kills it.
fn one(mut cmd: Command, mem_mib: u64) -> Result<Sample, String> {
    let vms_before = kvmstat::vms();
    let spawn_mono = monotonic_us();
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let err = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.trim_end() == "condo-guest: ready" {
                let _ = tx.send((Instant::now(), monotonic_us()));
            }
        }
    });
    let (stx, srx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if let Some(s) = parse_steps(&line) {
                let _ = stx.send(s);
            }
        }
    });
    let (ready, ready_mono) = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(t) => t,
        Err(_) => {
            kill(&mut child);
            return Err("guest did not reach /init in 60 s".into());
        }
    };
    let stats = kvmstat::vm_stats(&vms_before);
    let boot_ms = (ready - start).as_secs_f64() * 1000.0;
    let phases = srx.try_recv().ok().map(|s| {
        let vmm_end = s.start_mono_us + s.total_us;
        Phases {
            start_ms: s.start_mono_us.saturating_sub(spawn_mono) as f64 / 1000.0,
            vmm_ms: s.total_us as f64 / 1000.0,
            guest_ms: ready_mono.saturating_sub(vmm_end) as f64 / 1000.0,
            steps: s.steps,
            beside: s.beside,
        }
    });
    // Let the boot's last allocations settle before reading memory.
    std::thread::sleep(Duration::from_millis(300));
    let overhead_kib = vmm_overhead_kib(child.id(), mem_mib);
    kill(&mut child);
    Ok(Sample {
        boot_ms,
        overhead_kib: overhead_kib?,
        phases,
        stats,
    })
}

/// How long the host is left to itself after a VMM ends: KVM and the
/// kernel tear a VM down (its memory, the VM's threads) for a while after
/// the process has gone, and the next VMM must not pay for that.
pub(crate) const SETTLE: Duration = Duration::from_millis(1500);

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
    std::thread::sleep(SETTLE);
}

/// Total Rss minus the Rss of the guest RAM mapping(s): anonymous mappings
/// at least as large as the guest RAM chunk. QEMU and condo both map guest
/// RAM as one anonymous region for small guests.
fn vmm_overhead_kib(pid: u32, mem_mib: u64) -> Result<u64, String> {
    let smaps =
        std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(|e| format!("smaps: {e}"))?;
    let mut total = 0u64;
    let mut guest = 0u64;
    let mut cur_size_kib = 0u64;
    let mut cur_is_guest = false;
    for line in smaps.lines() {
        let mut it = line.split_whitespace();
        let first = it.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            let mut range = first.split('-');
            let s = u64::from_str_radix(range.next().unwrap_or("0"), 16).unwrap_or(0);
            let e = u64::from_str_radix(range.next().unwrap_or("0"), 16).unwrap_or(0);
            cur_size_kib = e.saturating_sub(s) / 1024;
            let path = line.split_whitespace().nth(5);
            cur_is_guest = path.is_none() && cur_size_kib >= mem_mib * 1024;
        } else if first == "Size:" {
            let _ = cur_size_kib;
        } else if first == "Rss:" {
            let v: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            total += v;
            if cur_is_guest {
                guest += v;
            }
        }
    }
    if guest == 0 {
        return Err("guest RAM mapping not found in smaps".into());
    }
    Ok(total - guest)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median of what `f` gives for each sample that has it.
fn median_of(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> f64 {
    median(samples.iter().filter_map(f).collect())
}

/// One VMM of the comparison: its name and how to start it.
struct Vmm {
    name: &'static str,
    cmd: Box<dyn Fn() -> Command>,
    samples: Vec<Sample>,
}

/// Every step name of `steps`, once each, in the order first taken.
pub(crate) fn step_names<'a>(steps: impl IntoIterator<Item = &'a (String, u64)>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (name, _) in steps {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// A Markdown table under heading `title`: a `first` column, then one per
/// `cols`; each row a label and its cells.
pub(crate) fn print_table(title: &str, first: &str, cols: &[&str], rows: &[(String, Vec<String>)]) {
    println!();
    println!("### {title}");
    println!();
    println!("| {first} | {} |", cols.join(" | "));
    println!("|---|{}", "---|".repeat(cols.len()));
    for (label, cells) in rows {
        println!("| {label} | {} |", cells.join(" | "));
    }
}

/// A table of medians of condo's steps and phases, one column per condo.
fn print_breakdown(vmms: &[Vmm]) {
    let condos: Vec<&Vmm> = vmms.iter().filter(|v| v.name != "qemu").collect();
    // Every step any condo build took, in the order they took them.
    let steps = step_names(condos.iter().flat_map(|v| {
        v.samples
            .iter()
            .filter_map(|s| s.phases.as_ref())
            .flat_map(|p| p.steps.iter().chain(&p.beside))
    }));
    if steps.is_empty() {
        return;
    }
    let names: Vec<&str> = condos.iter().map(|v| v.name).collect();
    let mut rows = Vec::new();
    let mut row = |label: String, f: &dyn Fn(&Phases) -> Option<f64>| {
        let cells: Vec<String> = condos
            .iter()
            .map(|v| {
                format!(
                    "{:.1}",
                    median_of(&v.samples, |s| s.phases.as_ref().and_then(f))
                )
            })
            .collect();
        rows.push((label, cells));
    };
    row("process start (spawn to first step)".into(), &|p| {
        Some(p.start_ms)
    });
    for name in &steps {
        let beside = condos.iter().any(|v| {
            v.samples
                .iter()
                .filter_map(|s| s.phases.as_ref())
                .any(|p| p.beside.iter().any(|(k, _)| k == name))
        });
        let label = if beside {
            format!("VMM, on another thread meanwhile: {name}")
        } else {
            format!("VMM: {name}")
        };
        row(label, &|p: &Phases| {
            p.steps
                .iter()
                .chain(&p.beside)
                .find(|(k, _)| k == name)
                .map(|(_, us)| *us as f64 / 1000.0)
        });
    }
    row("VMM, all steps".into(), &|p| Some(p.vmm_ms));
    row("guest: first KVM_RUN to /init".into(), &|p| {
        Some(p.guest_ms)
    });
    print_table(
        "Where condo's boot goes (medians, ms)",
        "step",
        &names,
        &rows,
    );
}

/// A table of KVM's statistics (medians of the timed rounds).
fn print_stats(vmms: &[Vmm]) {
    if vmms
        .iter()
        .all(|v| v.samples.iter().all(|s| s.stats.is_empty()))
    {
        return;
    }
    println!();
    println!("### KVM's statistics for the guest at /init (debugfs, medians)");
    println!();
    let names: Vec<&str> = vmms.iter().map(|v| v.name).collect();
    println!("| statistic | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(names.len()));
    for stat in kvmstat::STATS {
        let cells: Vec<String> = vmms
            .iter()
            .map(|v| {
                format!(
                    "{:.0}",
                    median_of(&v.samples, |s| s.stats.get(*stat).map(|n| *n as f64))
                )
            })
            .collect();
        println!("| {stat} | {} |", cells.join(" | "));
    }
}

/// Side-by-side census tables: exits by reason, ports, MSRs, MMIO.
pub(crate) fn print_census(censuses: &[(&str, kvmstat::CensusResult)], title: &str) {
    if censuses.is_empty() {
        return;
    }
    let names: Vec<&str> = censuses.iter().map(|c| c.0).collect();
    type Pick = fn(&kvmstat::CensusResult) -> &Vec<(String, u64)>;
    let parts: [(&str, &str, Pick, usize); 4] = [
        ("exits by reason", "exit reason", |c| &c.reasons, 30),
        ("port accesses", "port", |c| &c.ports, 24),
        ("MSR accesses", "MSR", |c| &c.msrs, 24),
        ("MMIO accesses", "address", |c| &c.mmio, 12),
    ];
    for (title_what, what, pick, limit) in parts {
        // Rows in order of the largest count any VMM has.
        let mut keys: Vec<(String, u64)> = Vec::new();
        for (_, c) in censuses {
            for (k, n) in pick(c) {
                match keys.iter_mut().find(|(kk, _)| kk == k) {
                    Some(e) => e.1 = e.1.max(*n),
                    None => keys.push((k.clone(), *n)),
                }
            }
        }
        if keys.is_empty() {
            continue;
        }
        keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        println!();
        println!("### {title}: {title_what} (one census round each)");
        println!();
        println!("| {what} | {} |", names.join(" | "));
        println!("|---|{}", "---|".repeat(names.len()));
        let total = |c: &kvmstat::CensusResult| pick(c).iter().map(|r| r.1).sum::<u64>();
        let totals: Vec<String> = censuses.iter().map(|(_, c)| total(c).to_string()).collect();
        println!("| all | {} |", totals.join(" | "));
        for (k, _) in keys.iter().take(limit) {
            let cells: Vec<String> = censuses
                .iter()
                .map(|(_, c)| {
                    pick(c)
                        .iter()
                        .find(|(kk, _)| kk == k)
                        .map_or("0".into(), |r| r.1.to_string())
                })
                .collect();
            println!("| {k} | {} |", cells.join(" | "));
        }
    }
}

fn main() {
    let o = std::sync::Arc::new(parse());
    let kvm_stats = kvmstat::available();
    let mut vmms = Vec::new();
    let a = o.clone();
    vmms.push(Vmm {
        name: "condo",
        cmd: Box::new(move || condo_cmd(&a, &a.condo)),
        samples: Vec::new(),
    });
    if let Some(b) = o.condo_b.clone() {
        let ob = o.clone();
        vmms.push(Vmm {
            name: "condo-b",
            cmd: Box::new(move || condo_cmd(&ob, &b)),
            samples: Vec::new(),
        });
    }
    let oq = o.clone();
    vmms.push(Vmm {
        name: "qemu",
        cmd: Box::new(move || qemu_cmd(&oq)),
        samples: Vec::new(),
    });
    // The probe's verdict is kept per host: every condo run after the
    // first reuses it, so the first timed round should too.
    for condo in std::iter::once(&o.condo).chain(&o.condo_b) {
        let _ = Command::new(condo)
            .arg("kvm-check")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for round in 1..=o.rounds {
        // Each VMM takes each place in the order in turn.
        if round > 1 {
            vmms.rotate_left(1);
        }
        for v in &mut vmms {
            match one((v.cmd)(), o.mem_mib) {
                Ok(s) => {
                    let split = s.phases.as_ref().map_or(String::new(), |p| {
                        format!(
                            " (start {:.1}, VMM {:.1}, guest {:.1})",
                            p.start_ms, p.vmm_ms, p.guest_ms
                        )
                    });
                    println!(
                        "round {round} {:7}: boot-to-init {:7.1} ms{split}, VMM overhead {:6} KiB, exits {}",
                        v.name,
                        s.boot_ms,
                        s.overhead_kib,
                        s.stats.get("exits").map_or("-".into(), |n| n.to_string())
                    );
                    v.samples.push(s);
                }
                Err(e) => {
                    eprintln!("condo-bench: {} round {round}: {e}", v.name);
                    std::process::exit(1);
                }
            }
        }
    }
    let rank = |name: &str| match name {
        "condo" => 0,
        "condo-b" => 1,
        _ => 2,
    };
    vmms.sort_by_key(|v| rank(v.name));
    // One more boot each with the exit histograms on (they cost time, so
    // they stay out of the timed rounds).
    let mut censuses = Vec::new();
    if kvm_stats {
        for v in &vmms {
            let Some(c) = kvmstat::Census::start() else {
                break;
            };
            let r = one((v.cmd)(), o.mem_mib);
            let result = c.finish();
            if r.is_ok() {
                censuses.push((v.name, result));
            }
        }
    }
    let qemu = vmms.iter().find(|v| v.name == "qemu").map(|v| &v.samples);
    let qb = qemu.map_or(f64::NAN, |q| median_of(q, |s| Some(s.boot_ms)));
    let qm = qemu.map_or(f64::NAN, |q| median_of(q, |s| Some(s.overhead_kib as f64))) / 1024.0;
    println!();
    println!(
        "| metric ({} rounds, {} vCPUs, {} MiB) | {} | condo / QEMU |",
        o.rounds,
        o.cpus,
        o.mem_mib,
        vmms.iter()
            .map(|v| if v.name == "qemu" {
                "QEMU microvm"
            } else {
                v.name
            })
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}---|", "---|".repeat(vmms.len()));
    let cb = median_of(&vmms[0].samples, |s| Some(s.boot_ms));
    let cm = median_of(&vmms[0].samples, |s| Some(s.overhead_kib as f64)) / 1024.0;
    let cells = |f: &dyn Fn(&Vmm) -> String| vmms.iter().map(f).collect::<Vec<_>>().join(" | ");
    println!(
        "| boot to /init, median | {} | {:.2} |",
        cells(&|v| format!("{:.0} ms", median_of(&v.samples, |s| Some(s.boot_ms)))),
        cb / qb
    );
    println!(
        "| VMM memory overhead, median | {} | {:.2} |",
        cells(&|v| format!(
            "{:.2} MiB",
            median_of(&v.samples, |s| Some(s.overhead_kib as f64)) / 1024.0
        )),
        cm / qm
    );
    print_breakdown(&vmms);
    print_stats(&vmms);
    print_census(&censuses, "Boot to /init");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_line_is_read() {
        let l = "2026-11-29T13:14:27.588245Z  INFO VMM steps kind=\"boot\" \
                 start_mono_us=6587090 total_us=1115751 steps=files:4444,kvm:527860 beside=load:9";
        let s = parse_steps(l).unwrap();
        assert_eq!(s.start_mono_us, 6_587_090);
        assert_eq!(s.total_us, 1_115_751);
        assert_eq!(
            s.steps,
            vec![("files".into(), 4444), ("kvm".into(), 527_860)]
        );
        assert_eq!(s.beside, vec![("load".into(), 9)]);
        assert!(parse_steps("INFO guest started").is_none());
    }
}

//! `condo-bench boot`: boot-to-init time and VMM memory overhead, condo
//! side by side with QEMU `microvm`, same kernel and initramfs, alternating,
//! several rounds; prints medians and ratios (and a Markdown table).
//!
//! Boot-to-init is the wall time from spawning the VMM to the guest's
//! `/init` printing `condo-guest: ready` on the serial console. VMM overhead
//! is the VMM process's resident memory minus the guest RAM pages it has
//! touched (the Rss of the guest RAM mapping), read from /proc/PID/smaps
//! while the guest idles after boot.
//!
//! Usage: condo-bench boot --condo PATH --qemu PATH --kernel VMLINUX
//!        --initrd INITRAMFS [--rounds N] [--cpus N] [--memory MiB]
//!
//! The other subcommands: `snapshot` ([`snapshot`]), `migration`
//! ([`migration`]), `density` ([`density`]), and `consolidation`
//! ([`consolidation`]) with its `consolidation-report`
//! ([`consolidation_report`]).

#![allow(clippy::print_stdout)]

mod consolidation;
mod consolidation_report;
mod density;
mod migration;
mod snapshot;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    condo: String,
    qemu: String,
    kernel: String,
    initrd: String,
    rounds: usize,
    cpus: u32,
    mem_mib: u64,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    boot_ms: f64,
    overhead_kib: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: condo-bench boot|snapshot|migration|density|consolidation --condo PATH --qemu PATH --kernel VMLINUX --initrd INITRAMFS \
         [--rounds N] [--cpus N] [--memory MiB]"
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

fn condo_cmd(o: &Opts) -> Command {
    let mut c = Command::new(&o.condo);
    c.args(["run", "--kernel", &o.kernel, "--initrd", &o.initrd])
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

/// Spawns the VMM, waits for the ready line, measures, kills it.
fn one(mut cmd: Command, mem_mib: u64) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.trim_end() == "condo-guest: ready" {
                let _ = tx.send(Instant::now());
            }
        }
    });
    let ready = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(t) => t,
        Err(_) => {
            kill(&mut child);
            return Err("guest did not reach /init in 60 s".into());
        }
    };
    let boot_ms = (ready - start).as_secs_f64() * 1000.0;
    // Let the boot's last allocations settle before reading memory.
    std::thread::sleep(Duration::from_millis(300));
    let overhead_kib = vmm_overhead_kib(child.id(), mem_mib);
    kill(&mut child);
    Ok(Sample {
        boot_ms,
        overhead_kib: overhead_kib?,
    })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
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

fn median(mut v: Vec<f64>) -> f64 {
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

fn main() {
    let o = parse();
    let mut condo = Vec::new();
    let mut qemu = Vec::new();
    for round in 1..=o.rounds {
        for (name, cmd, acc) in [
            ("condo", condo_cmd(&o), &mut condo),
            ("qemu", qemu_cmd(&o), &mut qemu),
        ] {
            match one(cmd, o.mem_mib) {
                Ok(s) => {
                    println!(
                        "round {round} {name:5}: boot-to-init {:7.1} ms, VMM overhead {:6} KiB",
                        s.boot_ms, s.overhead_kib
                    );
                    acc.push(s);
                }
                Err(e) => {
                    eprintln!("condo-bench: {name} round {round}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    let cb = median(condo.iter().map(|s| s.boot_ms).collect());
    let qb = median(qemu.iter().map(|s| s.boot_ms).collect());
    let cm = median(condo.iter().map(|s| s.overhead_kib as f64).collect()) / 1024.0;
    let qm = median(qemu.iter().map(|s| s.overhead_kib as f64).collect()) / 1024.0;
    println!();
    println!(
        "| metric ({} rounds, {} vCPUs, {} MiB) | condo | QEMU microvm | condo / QEMU |",
        o.rounds, o.cpus, o.mem_mib
    );
    println!("|---|---|---|---|");
    println!(
        "| boot to /init, median | {cb:.0} ms | {qb:.0} ms | {:.2} |",
        cb / qb
    );
    println!(
        "| VMM memory overhead, median | {cm:.2} MiB | {qm:.2} MiB | {:.2} |",
        cm / qm
    );
}

//! `condo-bench density`: how many idle guests one host carries through
//! the host daemon, and at what cost each, against QEMU `microvm`.
//!
//! A `condo daemon` (no network) boots one idle 128 MiB, 1-vCPU guest,
//! snapshots it, and clones it in batches (`POST /snapshots/base/clone`)
//! until `--max` guests or the host refuses (the daemon's admission, a
//! failed clone, or less than `--reserve-mib` of memory available). Then:
//! the start rate (clones per second of clone requests, and per host
//! core), each guest's host memory (PSS of its VMM, guest RAM included,
//! plus its jail process; and the drop of the host's MemAvailable per
//! guest, which also counts the kernel's share), the daemon's RSS and its
//! API latency with that many guests. Then the guests go, and as many
//! QEMU `microvm` processes (same kernel, initramfs, memory) boot side by
//! side (while memory lasts) for their per-guest memory.
//!
//! Prints `key=value` lines; `benches/density.sh` makes the table.
//!
//! Usage: condo-bench density --condo PATH --qemu PATH --kernel VMLINUX
//!        --initrd INITRAMFS --dir DIR [--max N] [--batch N] [--qemu-max N]
//!        [--reserve-mib N]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    condo: String,
    qemu: String,
    kernel: String,
    initrd: String,
    dir: PathBuf,
    max: usize,
    batch: usize,
    qemu_max: usize,
    reserve_mib: u64,
}

const MEM_MIB: u64 = 128;
const CMDLINE: &str = "quiet condo.end=wait";

fn usage() -> ! {
    eprintln!(
        "usage: condo-bench density --condo PATH --qemu PATH --kernel VMLINUX --initrd INITRAMFS \
         --dir DIR [--max N] [--batch N] [--qemu-max N] [--reserve-mib N]"
    );
    std::process::exit(2)
}

fn parse(mut args: impl Iterator<Item = String>) -> Opts {
    let mut o = Opts {
        condo: String::new(),
        qemu: String::new(),
        kernel: String::new(),
        initrd: String::new(),
        dir: PathBuf::new(),
        max: 1000,
        batch: 10,
        qemu_max: 1000,
        reserve_mib: 512,
    };
    while let Some(flag) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        let num = |v: &str| v.parse::<usize>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--condo" => o.condo = v,
            "--qemu" => o.qemu = v,
            "--kernel" => o.kernel = v,
            "--initrd" => o.initrd = v,
            "--dir" => o.dir = PathBuf::from(v),
            "--max" => o.max = num(&v),
            "--batch" => o.batch = num(&v).max(1),
            "--qemu-max" => o.qemu_max = num(&v),
            "--reserve-mib" => o.reserve_mib = num(&v) as u64,
            _ => usage(),
        }
    }
    if o.condo.is_empty()
        || o.qemu.is_empty()
        || o.kernel.is_empty()
        || o.dir.as_os_str().is_empty()
    {
        usage();
    }
    o
}

fn meminfo_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A field (kB) of /proc/PID/smaps_rollup or status.
fn proc_kib(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn child_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn api(sock: &Path, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
    host::http::request(sock, method, path, body, Duration::from_secs(3600))
        .map(|r| (r.status, r.body))
        .map_err(|e| format!("{method} {path}: {e}"))
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > limit {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills every jail process under `jail_dir` (the daemon leaves its
/// guests running when it ends).
fn kill_jails(jail_dir: &Path) {
    let want = jail_dir.as_os_str().as_encoded_bytes().to_vec();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == b"--chroot-base-dir" && w[1] == want.as_slice())
        {
            // SAFETY: signalling a process this benchmark's daemon started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

pub fn main(args: impl Iterator<Item = String>) -> Result<(), String> {
    let o = parse(args);
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir).map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "cores={cores} host_memory_mib={}",
        meminfo_kib("MemTotal:") / 1024
    );
    let (n, rate) = condo(&o, cores)?;
    if n > 0 {
        qemu(&o, n.min(o.qemu_max))?;
    }
    println!("clone_rate_per_core={:.2}", rate / cores as f64);
    Ok(())
}

/// The condo part; returns the number of clones and the clone rate.
fn condo(o: &Opts, cores: usize) -> Result<(usize, f64), String> {
    let state = o.dir.join("state");
    let sock = o.dir.join("condo.sock");
    let log = std::fs::File::create(o.dir.join("daemon.log")).map_err(|e| e.to_string())?;
    let daemon = Command::new(&o.condo)
        .args([
            "--log-level",
            "warn",
            "daemon",
            "--no-network",
            "--state-dir",
        ])
        .arg(&state)
        .arg("--listen")
        .arg(&sock)
        .args(["--memory-overcommit", "100", "--cpu-overcommit", "1000"])
        .args(["--uid-count", "100000", "--cgroup-parent", "condo-density"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", o.condo))?;
    let daemon = KillOnDrop(daemon);
    let daemon_pid = daemon.0.id();
    wait_for("the daemon's socket", Duration::from_secs(60), || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    })?;
    let avail0 = meminfo_kib("MemAvailable:");
    let spec = serde_json_spec(&o.kernel, &o.initrd);
    let (st, body) = api(&sock, "POST", "/guests", Some(&spec))?;
    if st != 201 {
        return Err(format!("create base: {st} {body}"));
    }
    let console = state.join("guests/1/console.log");
    wait_for("the base guest's boot", Duration::from_secs(300), || {
        std::fs::read_to_string(&console)
            .map(|s| s.contains("condo-guest: ready"))
            .unwrap_or(false)
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let (st, body) = api(
        &sock,
        "POST",
        "/guests/base/snapshot",
        Some(r#"{"snapshot": "base"}"#),
    )?;
    if st != 201 {
        return Err(format!("snapshot: {st} {body}"));
    }
    let reserve_kib = o.reserve_mib * 1024;
    let mut made = 0usize;
    let mut clone_time = Duration::ZERO;
    let mut stop_reason = format!("reached --max {}", o.max);
    let mut batch_no = 0;
    while made < o.max {
        let avail = meminfo_kib("MemAvailable:");
        // The next batch must fit, at the cost per guest seen so far.
        let per = if made > 0 {
            avail0.saturating_sub(avail) / (made as u64 + 1)
        } else {
            MEM_MIB * 1024
        };
        let count = o.batch.min(o.max - made);
        if avail < reserve_kib + per * count as u64 {
            stop_reason = format!(
                "host memory: {} MiB available, {} MiB kept in reserve",
                avail / 1024,
                o.reserve_mib
            );
            break;
        }
        batch_no += 1;
        let body = format!(r#"{{"name": "d{batch_no}", "count": {count}}}"#);
        let t0 = Instant::now();
        let (st, resp) = api(&sock, "POST", "/snapshots/base/clone", Some(&body))?;
        let dt = t0.elapsed();
        if st != 201 {
            stop_reason = format!("the daemon refused: {st} {}", resp.trim());
            break;
        }
        clone_time += dt;
        made += count;
        eprintln!(
            "density: {made} clones ({:.1} per second in this batch)",
            count as f64 / dt.as_secs_f64()
        );
    }
    let rate = made as f64 / clone_time.as_secs_f64().max(1e-9);
    println!("clones={made} stop_reason={stop_reason}");
    println!(
        "clone_rate={rate:.2} clone_seconds={:.2} cores={cores}",
        clone_time.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(5));
    // Per-guest memory.
    let (st, list) = api(&sock, "GET", "/guests", None)?;
    if st != 200 {
        return Err(format!("list: {st}"));
    }
    let list: Vec<serde_json::Value> = serde_json::from_str(&list).map_err(|e| e.to_string())?;
    let pids: Vec<u32> = list
        .iter()
        .filter_map(|g| g["pid"].as_u64().map(|p| p as u32))
        .collect();
    let mut pss = Vec::new();
    let mut vmm_pss = Vec::new();
    let mut running = 0;
    for &jail in &pids {
        let Some(vmm) = child_of(jail) else { continue };
        running += 1;
        let v = proc_kib(vmm, "smaps_rollup", "Pss:") as f64;
        let j = proc_kib(jail, "smaps_rollup", "Pss:") as f64;
        vmm_pss.push(v);
        pss.push(v + j);
    }
    let avail1 = meminfo_kib("MemAvailable:");
    let guests = running.max(1) as f64;
    println!(
        "condo_running={running} condo_pss_kib_median={:.0} condo_vmm_pss_kib_median={:.0} condo_memavailable_drop_kib_per_guest={:.0}",
        median(pss),
        median(vmm_pss),
        avail0.saturating_sub(avail1) as f64 / guests
    );
    println!(
        "daemon_rss_kib={}",
        proc_kib(daemon_pid, "status", "VmRSS:")
    );
    let mut one = Vec::new();
    let mut all = Vec::new();
    let mut host = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        api(&sock, "GET", "/guests/d1-1", None)?;
        one.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        api(&sock, "GET", "/host", None)?;
        host.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    for _ in 0..5 {
        let t = Instant::now();
        api(&sock, "GET", "/guests", None)?;
        all.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "api_get_guest_ms={:.2} api_get_host_ms={:.2} api_list_guests_ms={:.2}",
        median(one),
        median(host),
        median(all)
    );
    drop(daemon);
    kill_jails(&state.join("jail"));
    // The memory comes back before QEMU's turn.
    let _ = wait_for(
        "the guests' memory to come back",
        Duration::from_secs(120),
        || meminfo_kib("MemAvailable:") + 64 * 1024 >= avail0,
    );
    Ok((running, rate))
}

fn serde_json_spec(kernel: &str, initrd: &str) -> String {
    format!(
        r#"{{"name": "base", "kernel": "{kernel}", "initrd": "{initrd}", "cmdline": "{CMDLINE}",
            "vcpus": 1, "memory_mib": {MEM_MIB}, "net": false}}"#
    )
}

/// Boots QEMU microvm guests side by side; prints their per-guest memory.
fn qemu(o: &Opts, want: usize) -> Result<(), String> {
    let avail0 = meminfo_kib("MemAvailable:");
    let mut vms: Vec<KillOnDrop> = Vec::new();
    let reserve_kib = o.reserve_mib * 1024;
    let mut stop = format!("as many as condo's ({want})");
    while vms.len() < want {
        let avail = meminfo_kib("MemAvailable:");
        let per = if vms.is_empty() {
            64 * 1024
        } else {
            avail0.saturating_sub(avail) / vms.len() as u64
        };
        if avail < reserve_kib + per {
            stop = format!("host memory: {} MiB available", avail / 1024);
            break;
        }
        let mut c = Command::new(&o.qemu);
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
            "-smp",
            "1",
            "-m",
            &MEM_MIB.to_string(),
            "-kernel",
            &o.kernel,
            "-initrd",
            &o.initrd,
            "-append",
            &format!("console=ttyS0 reboot=k panic=1 {CMDLINE}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut child = c.spawn().map_err(|e| format!("{}: {e}", o.qemu))?;
        let out = child.stdout.take().ok_or("qemu stdout")?;
        let vm = KillOnDrop(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = String::new();
            let mut said = false;
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if !said && line.contains("condo-guest: ready") {
                    let _ = tx.send(());
                    said = true;
                }
                line.clear();
            }
        });
        if rx.recv_timeout(Duration::from_secs(300)).is_err() {
            stop = "a QEMU guest did not boot".into();
            break;
        }
        vms.push(vm);
    }
    std::thread::sleep(Duration::from_secs(5));
    let pss: Vec<f64> = vms
        .iter()
        .map(|v| proc_kib(v.0.id(), "smaps_rollup", "Pss:") as f64)
        .collect();
    let avail1 = meminfo_kib("MemAvailable:");
    println!(
        "qemu_running={} qemu_stop_reason={stop} qemu_pss_kib_median={:.0} qemu_memavailable_drop_kib_per_guest={:.0}",
        vms.len(),
        median(pss),
        avail0.saturating_sub(avail1) as f64 / vms.len().max(1) as f64
    );
    Ok(())
}

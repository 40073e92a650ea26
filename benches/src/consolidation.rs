//! `condo-bench consolidation`: issue 17's scenario for real. Three guests,
//! each a small server (`guest/tools/server.c`) whose load takes about 30 %
//! of one host CPU when it runs alone; first each alone on the host, then
//! all three together on the same single CPU. Measured from outside: each
//! guest's requests served per second and their latency (a load generator
//! here sends requests at a fixed rate over the daemon's bridge and times
//! every answer), and the host's utilization, from the host manager's
//! accounting (`GET /guests/{name}/usage`, the guests' cgroups) and
//! cross-checked with the host's own `/proc/stat`.
//!
//! Run it where one CPU is the whole host: inside the nested test host
//! (`benches/consolidation.sh`), whose one CPU is the "host CPU".
//!
//! Steps:
//! 1. a `condo daemon` (bridge and subnet of its own, no NAT), three
//!    guests created through it (1 vCPU, 128 MiB each), each running
//!    `server 7000`;
//! 2. calibration on the first guest alone (the others paused): the rounds
//!    of work per request are adjusted (a line fitted through the
//!    measures) until its CPU, as the daemon's accounting sees it, is the
//!    target (`--target-pct`, 30) at the rate (`--rate`, requests per
//!    second);
//! 3. phase one: each guest alone (the others paused), a warm-up then a
//!    measured window; phase two: all three at once, the same;
//! 4. the host's utilization every second throughout, both ways, and what
//!    the accounting does not see: this process's CPU (the load generator),
//!    the daemon's, and the interrupts' share of `/proc/stat`.
//!
//! `--halt-poll-ns 0` turns KVM's halt polling off for the run (and puts
//! the old value back after): a polling vCPU burns host CPU while its
//! guest waits, which the accounting charges to the guest, and KVM polls
//! only while nothing else is runnable, so a guest would cost more alone
//! than beside others.
//!
//! The load is open loop: request k of a guest is due at start + k/rate
//! whether or not the previous ones were answered, and its latency counts
//! from when it was due (a guest that falls behind shows it, no
//! coordinated omission). Each guest has one connection; its server
//! answers requests in order.
//!
//! Prints progress, then one line `@@consolidation-result JSON`;
//! `condo-bench consolidation-report` turns that into the results file and
//! the plot.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const PORT: u16 = 7000;
const BOOT_LIMIT: Duration = Duration::from_secs(180);

struct Opts {
    condo: String,
    kernel: String,
    initrd: String,
    dir: PathBuf,
    guests: usize,
    rate: f64,
    target_pct: f64,
    warmup_s: f64,
    window_s: f64,
    calib_s: f64,
    work: Option<u64>,
    /// Pin the guests to this host CPU (cgroup cpuset) and count it alone
    /// as "the host CPU"; default: the whole host (the test host has one).
    cpu: Option<u32>,
    /// KVM's halt polling (`/sys/module/kvm/parameters/halt_poll_ns`) for
    /// the run, restored after; default: left as it is.
    halt_poll_ns: Option<u64>,
}

fn usage() -> ! {
    eprintln!(
        "usage: condo-bench consolidation --condo PATH --kernel VMLINUX --initrd INITRAMFS --dir DIR \
         [--guests 3] [--rate 10] [--target-pct 30] [--warmup-s 5] [--window-s 60] [--calib-s 8] [--work N] [--cpu N] [--halt-poll-ns N]"
    );
    std::process::exit(2)
}

fn parse(mut args: impl Iterator<Item = String>) -> Opts {
    let mut o = Opts {
        condo: String::new(),
        kernel: String::new(),
        initrd: String::new(),
        dir: PathBuf::new(),
        guests: 3,
        rate: 10.0,
        target_pct: 30.0,
        warmup_s: 5.0,
        window_s: 60.0,
        calib_s: 8.0,
        work: None,
        cpu: None,
        halt_poll_ns: None,
    };
    while let Some(flag) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        let num = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|x| *x > 0.0)
                .unwrap_or_else(|| usage())
        };
        match flag.as_str() {
            "--condo" => o.condo = v,
            "--kernel" => o.kernel = v,
            "--initrd" => o.initrd = v,
            "--dir" => o.dir = PathBuf::from(v),
            "--guests" => o.guests = num(&v) as usize,
            "--rate" => o.rate = num(&v),
            "--target-pct" => o.target_pct = num(&v),
            "--warmup-s" => o.warmup_s = num(&v),
            "--window-s" => o.window_s = num(&v),
            "--calib-s" => o.calib_s = num(&v),
            "--work" => o.work = Some(num(&v) as u64),
            "--cpu" => o.cpu = Some(v.parse().unwrap_or_else(|_| usage())),
            "--halt-poll-ns" => o.halt_poll_ns = Some(v.parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    if o.condo.is_empty()
        || o.kernel.is_empty()
        || o.initrd.is_empty()
        || o.dir.as_os_str().is_empty()
    {
        usage();
    }
    o
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn api(sock: &Path, method: &str, path: &str, body: Option<&str>) -> Result<Value, String> {
    let r = host::http::request(sock, method, path, body, Duration::from_secs(600))
        .map_err(|e| format!("{method} {path}: {e}"))?;
    if !(200..300).contains(&r.status) {
        return Err(format!("{method} {path}: {} {}", r.status, r.body));
    }
    if r.body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&r.body).map_err(|e| format!("{method} {path}: {e}"))
}

/// The daemon this benchmark runs its guests under.
struct Daemon {
    child: Child,
    sock: PathBuf,
    state: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(Value::Array(gs)) = api(&self.sock, "GET", "/guests", None) {
            for g in gs {
                if let Some(n) = g["name"].as_str() {
                    let _ = api(&self.sock, "DELETE", &format!("/guests/{n}?force=1"), None);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(o: &Opts) -> Result<Daemon, String> {
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    let sock = o.dir.join("condo.sock");
    let state = o.dir.join("state");
    let log = std::fs::File::create(o.dir.join("daemon.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&o.condo)
        .args(["--log-level", "warn", "daemon", "--state-dir"])
        .arg(&state)
        .arg("--listen")
        .arg(&sock)
        .args(["--bridge", "cbench", "--subnet", "10.77.0.0/24", "--no-nat"])
        .args(["--cgroup-parent", "condo-bench", "--stop-timeout-s", "5"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", o.condo))?;
    let mut d = Daemon { child, sock, state };
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&d.sock).is_err() {
        if let Ok(Some(st)) = d.child.try_wait() {
            let log = std::fs::read_to_string(o.dir.join("daemon.log")).unwrap_or_default();
            return Err(format!("the daemon exited ({st}): {log}"));
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("the daemon's socket never appeared".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Keep the daemon from being dropped before its guests.
    let _ = &mut d;
    Ok(d)
}

/// A guest's console log.
fn console(d: &Daemon, name: &str) -> String {
    let id = api(&d.sock, "GET", &format!("/guests/{name}"), None)
        .ok()
        .and_then(|g| g["id"].as_i64())
        .unwrap_or(-1);
    std::fs::read_to_string(d.state.join(format!("guests/{id}/console.log"))).unwrap_or_default()
}

/// The host's CPU counters (`/proc/stat`: the `cpu` line, or `cpuN`'s):
/// busy, total, and interrupt (hard and soft) jiffies (guest time is
/// inside user time).
fn proc_stat(cpu: Option<u32>) -> (u64, u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let want = cpu.map_or_else(|| "cpu".to_owned(), |c| format!("cpu{c}"));
    let f: Vec<u64> = s
        .lines()
        .find(|l| l.split_whitespace().next() == Some(want.as_str()))
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    if f.len() < 8 {
        return (0, 0, 0);
    }
    let idle = f[3] + f[4];
    let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
    (busy, busy + idle, f[5] + f[6])
}

/// CPU time of this process (the load generator and the sampler), µs.
fn self_cpu_us() -> u64 {
    // SAFETY: getrusage writes one rusage into the zeroed value it is
    // given, which lives for the call.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// CPU time (user and system) of process `pid`, µs; 0 when it is gone.
fn pid_cpu_us(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis: utime and stime
    // are the 12th and 13th of them.
    let after = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf takes no pointer and only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    f.iter().sum::<u64>() * 1_000_000 / hz
}

/// KVM's halt-polling knob.
const HALT_POLL: &str = "/sys/module/kvm/parameters/halt_poll_ns";

/// Sets KVM's halt polling for the run and puts the old value back when
/// dropped.
struct HaltPoll(Option<String>);

impl HaltPoll {
    fn set(ns: Option<u64>) -> Result<Self, String> {
        let Some(ns) = ns else { return Ok(Self(None)) };
        let old = std::fs::read_to_string(HALT_POLL).map_err(|e| format!("{HALT_POLL}: {e}"))?;
        std::fs::write(HALT_POLL, ns.to_string()).map_err(|e| format!("{HALT_POLL}: {e}"))?;
        Ok(Self(Some(old.trim().to_owned())))
    }
}

impl Drop for HaltPoll {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = std::fs::write(HALT_POLL, old);
        }
    }
}

/// One second of the host sampler: its middle (s since the origin), the
/// host's utilization by `/proc/stat`, and the CPU of the load generator
/// and of the daemon, all in % of the host's CPUs.
#[derive(Debug, Clone, Copy)]
struct Second {
    t: f64,
    proc_pct: f64,
    /// The part of `proc_pct` in interrupts (the network path's softirqs).
    irq_pct: f64,
    loadgen_pct: f64,
    daemon_pct: f64,
}

/// The means over the seconds whose middle lies in [t0, t1] (s).
fn window_means(series: &[Second], t0: f64, t1: f64) -> Second {
    let w: Vec<&Second> = series.iter().filter(|p| p.t >= t0 && p.t <= t1).collect();
    let n = w.len() as f64;
    let mean = |f: fn(&Second) -> f64| {
        if w.is_empty() {
            f64::NAN
        } else {
            w.iter().map(|p| f(p)).sum::<f64>() / n
        }
    };
    Second {
        t: (t0 + t1) / 2.0,
        proc_pct: mean(|p| p.proc_pct),
        irq_pct: mean(|p| p.irq_pct),
        loadgen_pct: mean(|p| p.loadgen_pct),
        daemon_pct: mean(|p| p.daemon_pct),
    }
}

/// One guest's connection and what its requests measured.
struct Client {
    name: String,
    stream: TcpStream,
}

/// What one guest's load measured in a window.
#[derive(Debug, Clone, Default)]
struct LoadStats {
    sent: u64,
    answered: u64,
    /// Answers whose time fell in the window, per second.
    throughput: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Drives every client at `rate` with `work` rounds a request for
/// `warmup + window`; the window's figures per client.
fn run_load(
    clients: &mut [Client],
    rate: f64,
    work: u64,
    warmup: Duration,
    window: Duration,
) -> Result<Vec<LoadStats>, String> {
    let start = Instant::now() + Duration::from_millis(100);
    let (w0, w1) = (start + warmup, start + warmup + window);
    let n = clients.len().max(1);
    std::thread::scope(|sc| {
        let mut handles = Vec::new();
        for (i, c) in clients.iter_mut().enumerate() {
            let due: Arc<Mutex<VecDeque<Instant>>> = Arc::new(Mutex::new(VecDeque::new()));
            let done = Arc::new(AtomicBool::new(false));
            let mut w = c.stream.try_clone().map_err(|e| e.to_string())?;
            let r = c.stream.try_clone().map_err(|e| e.to_string())?;
            let (due2, done2) = (due.clone(), done.clone());
            // Guests' schedules are staggered within one period.
            let offset = Duration::from_secs_f64(i as f64 / n as f64 / rate);
            let line = format!("{work}\n");
            let sender = sc.spawn(move || {
                let mut sent = 0u64;
                loop {
                    let t = start + offset + Duration::from_secs_f64(sent as f64 / rate);
                    if t >= w1 {
                        break;
                    }
                    if let Some(d) = t.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    due2.lock().map(|mut q| q.push_back(t)).ok();
                    if w.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                    sent += 1;
                }
                done2.store(true, Ordering::Relaxed);
                sent
            });
            let receiver = sc.spawn(move || {
                let _ = r.set_read_timeout(Some(Duration::from_millis(200)));
                let mut rd = BufReader::new(r);
                let mut lat: Vec<f64> = Vec::new();
                let mut in_window = 0u64;
                let mut answered = 0u64;
                let mut line = String::new();
                let mut grace: Option<Instant> = None;
                loop {
                    line.clear();
                    match rd.read_line(&mut line) {
                        Ok(0) => break,
                        Ok(_) => {
                            let now = Instant::now();
                            let t = due.lock().ok().and_then(|mut q| q.pop_front());
                            let Some(t) = t else { continue };
                            answered += 1;
                            if t >= w0 && t < w1 {
                                lat.push((now - t).as_secs_f64() * 1000.0);
                            }
                            if now >= w0 && now < w1 {
                                in_window += 1;
                            }
                        }
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => break,
                    }
                    if done.load(Ordering::Relaxed) {
                        let g =
                            *grace.get_or_insert_with(|| Instant::now() + Duration::from_secs(10));
                        let empty = due.lock().map(|q| q.is_empty()).unwrap_or(true);
                        if empty || Instant::now() > g {
                            break;
                        }
                    }
                }
                (lat, in_window, answered)
            });
            handles.push((sender, receiver));
        }
        let mut out = Vec::new();
        for (s, r) in handles {
            let sent = s.join().map_err(|_| "sender panicked".to_string())?;
            let (mut lat, in_window, answered) =
                r.join().map_err(|_| "receiver panicked".to_string())?;
            lat.sort_by(f64::total_cmp);
            out.push(LoadStats {
                sent,
                answered,
                throughput: in_window as f64 / window.as_secs_f64(),
                p50_ms: percentile(&lat, 50.0),
                p90_ms: percentile(&lat, 90.0),
                p99_ms: percentile(&lat, 99.0),
                max_ms: lat.last().copied().unwrap_or(f64::NAN),
            });
        }
        Ok(out)
    })
}

/// A guest's CPU over [t0, t1] (Unix ms), in % of one host CPU, from the
/// daemon's accounting: the samples that lie inside the window.
fn guest_cpu_pct(d: &Daemon, name: &str, t0: i64, t1: i64) -> Result<f64, String> {
    let u = api(
        &d.sock,
        "GET",
        &format!("/guests/{name}/usage?since={}&resolution=raw", t0 / 1000),
        None,
    )?;
    let (mut cpu, mut dur) = (0i64, 0i64);
    for s in u["samples"].as_array().into_iter().flatten() {
        let (t, d_ms) = (
            s["t_ms"].as_i64().unwrap_or(0),
            s["dur_ms"].as_i64().unwrap_or(0),
        );
        if t >= t0 && t + d_ms <= t1 {
            cpu += s["cpu_us"].as_i64().unwrap_or(0);
            dur += d_ms;
        }
    }
    if dur == 0 {
        return Err(format!("no samples of {name} in the window"));
    }
    Ok(cpu as f64 / (dur as f64 * 1000.0) * 100.0)
}

/// Every sample of a guest since `t0` (Unix ms): (t_ms, dur_ms, cpu_us).
fn guest_samples(d: &Daemon, name: &str, t0: i64) -> Vec<(i64, i64, i64)> {
    api(
        &d.sock,
        "GET",
        &format!("/guests/{name}/usage?since={}&resolution=raw", t0 / 1000),
        None,
    )
    .ok()
    .and_then(|u| {
        u["samples"].as_array().map(|v| {
            v.iter()
                .map(|s| {
                    (
                        s["t_ms"].as_i64().unwrap_or(0),
                        s["dur_ms"].as_i64().unwrap_or(0),
                        s["cpu_us"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
    })
    .unwrap_or_default()
}

fn set_paused(d: &Daemon, name: &str, paused: bool) -> Result<(), String> {
    let want = if paused { "paused" } else { "running" };
    let now = api(&d.sock, "GET", &format!("/guests/{name}"), None)?;
    if now["state"].as_str() == Some(want) {
        return Ok(());
    }
    let action = if paused { "pause" } else { "resume" };
    api(&d.sock, "POST", &format!("/guests/{name}/{action}"), None).map(|_| ())
}

/// The next calibration guess from the (work, CPU %) pairs measured so far.
/// A request costs a fixed part (the network path, the guest's interrupts
/// and wake-ups: most of it in the nested test host) plus its rounds of
/// work, so the CPU is a line in the work: its least-squares fit over every
/// pair (the single measures are noisy), solved for the target; from one
/// pair, or a fit that does not rise, a proportional step over the idle
/// guest's CPU.
fn next_work(seen: &[(f64, f64)], target: f64, idle: f64) -> u64 {
    let n = seen.len() as f64;
    let Some(&(w, p)) = seen.last() else {
        return 1000;
    };
    let proportional = || {
        let scale = ((target - idle).max(1.0) / (p - idle).max(0.5)).clamp(0.2, 5.0);
        w * scale
    };
    let next = if seen.len() >= 2 {
        let (mw, mp) = (
            seen.iter().map(|s| s.0).sum::<f64>() / n,
            seen.iter().map(|s| s.1).sum::<f64>() / n,
        );
        let sxx: f64 = seen.iter().map(|s| (s.0 - mw).powi(2)).sum();
        let sxy: f64 = seen.iter().map(|s| (s.0 - mw) * (s.1 - mp)).sum();
        let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        if slope > 0.0 {
            // Not more than five times, or a fifth of, the last guess.
            (mw + (target - mp) / slope).clamp(w * 0.2, w * 5.0)
        } else {
            proportional()
        }
    } else {
        proportional()
    };
    next.max(1000.0) as u64
}

/// The host's utilization by /proc/stat over a window (busy, total
/// jiffies at its start and end).
fn util(a: (u64, u64, u64), b: (u64, u64, u64)) -> f64 {
    let (db, dt) = (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1));
    if dt == 0 {
        return f64::NAN;
    }
    db as f64 / dt as f64 * 100.0
}

fn stats_json(s: &LoadStats) -> Value {
    json!({
        "sent": s.sent, "answered": s.answered, "throughput": s.throughput,
        "p50_ms": s.p50_ms, "p90_ms": s.p90_ms, "p99_ms": s.p99_ms, "max_ms": s.max_ms,
    })
}

pub fn main(args: impl Iterator<Item = String>) -> Result<(), String> {
    let o = parse(args);
    let cpus = match o.cpu {
        Some(_) => 1,
        // SAFETY: sysconf takes no pointer and only reads a constant.
        None => unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1),
    };
    let halt_poll = HaltPoll::set(o.halt_poll_ns)?;
    let halt_poll_ns: Value = match std::fs::read_to_string(HALT_POLL) {
        Ok(v) => v.trim().parse::<u64>().map_or(Value::Null, Value::from),
        Err(_) => Value::Null,
    };
    let d = start_daemon(&o)?;
    let names: Vec<String> = (1..=o.guests).map(|i| format!("s{i}")).collect();
    for n in &names {
        let mut spec = json!({
            "name": n, "kernel": o.kernel, "initrd": o.initrd, "vcpus": 1, "memory_mib": 128,
            "cmdline": format!("quiet condo.end=wait -- \"server {PORT}\""),
        });
        if let Some(c) = o.cpu {
            spec["cpuset"] = c.to_string().into();
        }
        api(&d.sock, "POST", "/guests", Some(&spec.to_string()))?;
        println!("created {n}");
    }
    for n in &names {
        let t0 = Instant::now();
        while !console(&d, n).contains("server: listening") {
            if t0.elapsed() > BOOT_LIMIT {
                return Err(format!("{n}'s server did not start: {}", console(&d, n)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut clients = Vec::new();
    for n in &names {
        let g = api(&d.sock, "GET", &format!("/guests/{n}"), None)?;
        let ip = g["ip"]
            .as_str()
            .ok_or("a guest without an address")?
            .to_owned();
        let t0 = Instant::now();
        let stream = loop {
            match TcpStream::connect_timeout(
                &format!("{ip}:{PORT}")
                    .parse()
                    .map_err(|e| format!("{ip}: {e}"))?,
                Duration::from_secs(5),
            ) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() > Duration::from_secs(60) => {
                    return Err(format!("cannot reach {n} at {ip}:{PORT}: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let _ = stream.set_nodelay(true);
        clients.push(Client {
            name: n.clone(),
            stream,
        });
        println!("{n} serves at {ip}:{PORT}");
    }
    for n in &names[1..] {
        set_paused(&d, n, true)?;
    }
    // The host sampler: /proc/stat every second from here on.
    let origin = now_unix_ms();
    let rel = |t: i64| (t - origin) as f64 / 1000.0;
    let stop = Arc::new(AtomicBool::new(false));
    let series: Arc<Mutex<Vec<Second>>> = Arc::new(Mutex::new(Vec::new()));
    let daemon_pid = d.child.id();
    let sampler = {
        let (stop, series) = (stop.clone(), series.clone());
        std::thread::spawn(move || {
            let mut prev = (proc_stat(o.cpu), self_cpu_us(), pid_cpu_us(daemon_pid));
            let mut prev_t = Instant::now();
            let t0 = prev_t;
            let mut k = 1u32;
            while !stop.load(Ordering::Relaxed) {
                let due = t0 + Duration::from_secs(u64::from(k));
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                let cur = (proc_stat(o.cpu), self_cpu_us(), pid_cpu_us(daemon_pid));
                let now = Instant::now();
                let span_us = (now - prev_t).as_secs_f64() * 1e6 * cpus as f64;
                let t = (now_unix_ms() - origin) as f64 / 1000.0;
                let pct = |a: u64, b: u64| b.saturating_sub(a) as f64 / span_us * 100.0;
                if let Ok(mut s) = series.lock() {
                    s.push(Second {
                        t: t - 0.5,
                        proc_pct: util(prev.0, cur.0),
                        irq_pct: util((prev.0 .2, prev.0 .1, 0), (cur.0 .2, cur.0 .1, 0)),
                        loadgen_pct: pct(prev.1, cur.1),
                        daemon_pct: pct(prev.2, cur.2),
                    });
                }
                prev = cur;
                prev_t = now;
                k += 1;
            }
        })
    };
    // The means of the sampler's seconds over a window (Unix ms), once
    // the sampler has passed its end.
    let means = |w0: i64, w1: i64| {
        std::thread::sleep(Duration::from_millis(
            (w1 + 1600 - now_unix_ms()).clamp(0, 2000) as u64,
        ));
        let s = series.lock().map(|s| s.clone()).unwrap_or_default();
        window_means(&s, rel(w0), rel(w1))
    };
    let mut phases: Vec<Value> = Vec::new();
    // Idle: the first guest alone, no load.
    let t0 = now_unix_ms();
    std::thread::sleep(Duration::from_secs_f64(o.calib_s.max(3.0)));
    let idle_pct = guest_cpu_pct(&d, &names[0], t0, now_unix_ms()).unwrap_or(0.0);
    println!("{} idle: {idle_pct:.1} % of a host CPU", names[0]);
    // Calibration on the first guest.
    let mut calibration: Vec<Value> = Vec::new();
    let mut work = o.work.unwrap_or((4_000_000.0 / o.rate).max(1000.0) as u64);
    if o.work.is_none() {
        let c0 = now_unix_ms();
        let mut seen: Vec<(f64, f64)> = Vec::new();
        for _ in 0..8 {
            let t0 = now_unix_ms();
            run_load(
                &mut clients[..1],
                o.rate,
                work,
                Duration::from_secs(1),
                Duration::from_secs_f64(o.calib_s),
            )?;
            let pct = guest_cpu_pct(&d, &names[0], t0 + 1000, now_unix_ms())?;
            println!(
                "calibration: {work} rounds a request at {} req/s: {pct:.1} %",
                o.rate
            );
            calibration.push(json!({"work": work, "cpu_pct": pct}));
            if (pct - o.target_pct).abs() <= 0.03 * o.target_pct {
                break;
            }
            seen.push((work as f64, pct));
            work = next_work(&seen, o.target_pct, idle_pct);
        }
        phases.push(json!({"name": "calibration", "t0_s": rel(c0), "t1_s": rel(now_unix_ms())}));
    }
    println!(
        "work: {work} rounds a request, {} requests/s a guest",
        o.rate
    );
    let warmup = Duration::from_secs_f64(o.warmup_s);
    let window = Duration::from_secs_f64(o.window_s);
    // Phase one: each alone.
    let mut solo: Vec<Value> = Vec::new();
    for i in 0..names.len() {
        for (j, n) in names.iter().enumerate() {
            set_paused(&d, n, j != i)?;
        }
        let p0 = now_unix_ms();
        let w0 = p0 + 100 + warmup.as_millis() as i64;
        let stats = run_load(&mut clients[i..=i], o.rate, work, warmup, window)?;
        let w1 = w0 + window.as_millis() as i64;
        let m = means(w0, w1);
        let (host, loadgen, daemon) = (m.proc_pct, m.loadgen_pct, m.daemon_pct);
        let cpu = guest_cpu_pct(&d, &names[i], w0, w1 + 1000)?;
        let st = &stats[0];
        println!(
            "{} alone: {:.2} req/s, p50 {:.1} ms, p99 {:.1} ms, guest CPU {cpu:.1} %, host (/proc/stat) {host:.1} %, load generator {loadgen:.1} %, daemon {daemon:.1} %",
            names[i],
            st.throughput,
            st.p50_ms,
            st.p99_ms,
        );
        solo.push(json!({
            "guest": names[i], "load": stats_json(st), "guest_cpu_pct": cpu,
            "host_proc_pct": host, "loadgen_pct": loadgen, "daemon_pct": daemon,
            "irq_pct": m.irq_pct,
        }));
        phases
            .push(json!({"name": format!("{} alone", names[i]), "t0_s": rel(w0), "t1_s": rel(w1)}));
    }
    // Phase two: all together.
    for n in &names {
        set_paused(&d, n, false)?;
    }
    let p0 = now_unix_ms();
    let w0 = p0 + 100 + warmup.as_millis() as i64;
    let stats = run_load(&mut clients, o.rate, work, warmup, window)?;
    let w1 = w0 + window.as_millis() as i64;
    let m = means(w0, w1);
    let (together_proc, loadgen, daemon) = (m.proc_pct, m.loadgen_pct, m.daemon_pct);
    let mut together = Vec::new();
    let mut acct_sum = 0.0;
    for (n, st) in names.iter().zip(&stats) {
        let cpu = guest_cpu_pct(&d, n, w0, w1 + 1000)?;
        acct_sum += cpu;
        println!(
            "{n} together: {:.2} req/s, p50 {:.1} ms, p99 {:.1} ms, guest CPU {cpu:.1} %",
            st.throughput, st.p50_ms, st.p99_ms
        );
        together.push(json!({"guest": n, "load": stats_json(st), "guest_cpu_pct": cpu}));
    }
    println!(
        "together: host utilization {:.1} % (accounting: the guests' CPU over {cpus} CPU), {together_proc:.1} % (/proc/stat), load generator {loadgen:.1} %, daemon {daemon:.1} %",
        acct_sum / cpus as f64
    );
    phases.push(json!({"name": "all together", "t0_s": rel(w0), "t1_s": rel(w1)}));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    // The accounting's series: the guests' CPU per second, over the host.
    let mut acct: std::collections::BTreeMap<i64, f64> = std::collections::BTreeMap::new();
    for n in &names {
        for (t, dur, cpu) in guest_samples(&d, n, origin) {
            if dur <= 0 || t < origin {
                continue;
            }
            let k = (t - origin + dur / 2) / 1000;
            *acct.entry(k).or_insert(0.0) +=
                cpu as f64 / (dur as f64 * 1000.0) * 100.0 / cpus as f64;
        }
    }
    let secs = series.lock().map(|s| s.clone()).unwrap_or_default();
    let proc_series: Vec<(f64, f64)> = secs.iter().map(|p| (p.t, p.proc_pct)).collect();
    let loadgen_series: Vec<(f64, f64)> = secs.iter().map(|p| (p.t, p.loadgen_pct)).collect();
    let result = json!({
        "config": {
            "guests": o.guests, "rate": o.rate, "work": work, "target_pct": o.target_pct,
            "warmup_s": o.warmup_s, "window_s": o.window_s, "host_cpus": cpus,
            "halt_poll_ns": halt_poll_ns,
            "guest": "1 vCPU, 128 MiB, minimal 6.1 kernel, busybox initramfs, server 7000",
        },
        "idle_pct": idle_pct,
        "calibration": calibration,
        "solo": solo,
        "together": {
            "guests": together,
            "host_acct_pct": acct_sum / cpus as f64,
            "host_proc_pct": together_proc,
            "loadgen_pct": loadgen,
            "daemon_pct": daemon,
            "irq_pct": m.irq_pct,
        },
        "phases": phases,
        "series_proc": proc_series,
        "series_loadgen": loadgen_series,
        "series_acct": acct.iter().map(|(k, v)| (*k as f64 + 0.5, *v)).collect::<Vec<_>>(),
    });
    for c in &clients {
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        let _ = &c.name;
    }
    drop(d);
    drop(halt_poll);
    println!("@@consolidation-result {result}");
    Ok(())
}

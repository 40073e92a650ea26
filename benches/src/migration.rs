//! `condo-bench migration`: live migration, condo side by side with QEMU's
//! (`migrate tcp:`), the same guest in the same host, alternating: total
//! time, downtime seen from outside and bytes sent, for an idle 256 MiB
//! guest, an idle 2 GiB guest and a guest dirtying 64 MiB/s.
//!
//! Each round boots the guest on a source VMM, starts an empty destination
//! VMM listening on 127.0.0.1 and moves the guest over TCP on loopback.
//! condo: two `condo run --api-sock` processes, `PUT /migration/receive`
//! on the empty one and `PUT /migration/send` with `downtime_ms` 300 (or
//! `--downtime-ms`) on the running one. QEMU `microvm`: a destination
//! started with `-incoming tcp:`, and QMP `migrate` on the source after
//! `downtime-limit` set to the same, auto-converge on (condo throttles a guest that dirties faster than the
//! link carries without being asked) and `max-bandwidth` lifted from its
//! default 128 MiB/s (condo has no cap unless asked for one).
//!
//! The guest prints a tick on its serial console every 10 ms (the dirtying
//! guest also runs `dirty 128 64`: 128 MiB written over and over at
//! 64 MiB/s). Both VMMs' consoles are read with host timestamps:
//!
//! - downtime seen from outside: from the last output on the source's
//!   console to the first output on the destination's;
//! - total time: from the migration request to the destination's first
//!   output (the guest runs there);
//! - bytes on the wire: the IP octets sent on loopback meanwhile (the
//!   benchmark runs in a network namespace of its own, where nothing else
//!   talks, so that is the migration stream and its acknowledgements);
//! - beside them each VMM's own figures: condo's migration metrics
//!   (`bytes_sent`, `downtime_ms`, `total_ms`, `passes`, from the source's
//!   metrics file, flushed when it exits), QEMU's `query-migrate`
//!   (`total-time`, `downtime`, `ram.transferred`, `dirty-sync-count`);
//! - the downtime seen from outside in three parts: the source's silence
//!   before the VMM paused the guest, the VMM's own downtime, and from the
//!   VMM's own end (condo's answer to the send request, QEMU's `completed`
//!   event) to the destination's first output;
//! - the longest gap in the source's output while pre-copy ran (a vCPU
//!   held back by auto-converge shows there), and the longest gap in the
//!   second before the request (the measurement's resolution).
//!
//! The guest's tick counter is checked to go on across the move (the
//! destination's first tick follows the source's last), so a guest that
//! rebooted or ran twice fails the round. A failed round is reported and
//! the benchmark goes on.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::median;
use crate::snapshot::{api_within, expect_204, wait_socket, CMDLINE_BASE, TICKER};

/// QEMU's `max-bandwidth` for an uncapped migration: 1 TiB/s.
const UNCAPPED: u64 = 1 << 40;
const BOOT_LIMIT: Duration = Duration::from_secs(180);
const MIGRATION_LIMIT: Duration = Duration::from_secs(600);
/// How long the source's console is watched before the request, for the
/// guest's normal gaps between outputs.
const BASELINE: Duration = Duration::from_secs(1);
/// Ticks the destination must print before the round counts.
const TICKS_AFTER: usize = 20;

struct Opts {
    condo: String,
    qemu: String,
    kernel: String,
    initrd: String,
    dir: PathBuf,
    rounds: usize,
    cpus: u32,
    cases: Vec<Case>,
    port: u16,
    /// The pause both VMMs are allowed (condo's `downtime_ms`, QEMU's
    /// `downtime-limit`; default 300, condo's default).
    downtime_ms: u64,
    /// condo's `--log-level` (its migration lines are at `info`).
    condo_log: String,
}

/// One guest to move.
#[derive(Clone)]
struct Case {
    name: &'static str,
    /// For the tables.
    label: &'static str,
    mem_mib: u64,
    /// The guest's command (after ` -- ` on its kernel command line).
    command: String,
    /// The word (and how many times it must be printed) that says the
    /// guest is ready to move.
    ready: (&'static str, usize),
    /// Whether the bytes target (at most QEMU's) applies.
    bytes_target: bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "idle256",
            label: "idle, 256 MiB",
            mem_mib: 256,
            command: TICKER.into(),
            ready: ("tick", 20),
            bytes_target: true,
        },
        Case {
            name: "idle2048",
            label: "idle, 2 GiB",
            mem_mib: 2048,
            command: TICKER.into(),
            ready: ("tick", 20),
            bytes_target: true,
        },
        Case {
            name: "dirty64",
            label: "dirtying 64 MiB/s, 256 MiB",
            mem_mib: 256,
            // 128 MiB touched in 2 s; ready once all of it is dirtied.
            command: format!("dirty 128 64 & {TICKER}"),
            ready: ("dirty", 3),
            bytes_target: false,
        },
    ]
}

/// Not run unless named: a guest dirtying as fast as it can, which
/// outruns the link, so that both VMMs' auto-converge throttles it.
fn extra_cases() -> Vec<Case> {
    vec![Case {
        name: "dirtyfast",
        label: "dirtying as fast as it can, 256 MiB",
        mem_mib: 256,
        command: format!("dirty 128 0 & {TICKER}"),
        ready: ("dirty", 3),
        bytes_target: false,
    }]
}

fn usage() -> ! {
    eprintln!(
        "usage: condo-bench migration --condo PATH --qemu PATH --kernel VMLINUX --initrd INITRAMFS \
         --dir DIR [--rounds N] [--cpus N] [--cases idle256,idle2048,dirty64,dirtyfast] [--port FIRST] [--condo-log LEVEL] [--downtime-ms MS]"
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
        rounds: 3,
        cpus: 2,
        cases: cases(),
        port: 47100,
        condo_log: "info".into(),
        downtime_ms: 300,
    };
    while let Some(flag) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--condo" => o.condo = v,
            "--qemu" => o.qemu = v,
            "--kernel" => o.kernel = v,
            "--initrd" => o.initrd = v,
            "--dir" => o.dir = PathBuf::from(v),
            "--rounds" => o.rounds = v.parse().unwrap_or_else(|_| usage()),
            "--cpus" => o.cpus = v.parse().unwrap_or_else(|_| usage()),
            "--port" => o.port = v.parse().unwrap_or_else(|_| usage()),
            "--condo-log" => o.condo_log = v,
            "--downtime-ms" => o.downtime_ms = v.parse().unwrap_or_else(|_| usage()),
            "--cases" => {
                let all: Vec<Case> = cases().into_iter().chain(extra_cases()).collect();
                o.cases = v
                    .split(',')
                    .map(|n| {
                        all.iter()
                            .find(|c| c.name == n)
                            .cloned()
                            .unwrap_or_else(|| {
                                eprintln!("condo-bench migration: no case {n:?}");
                                usage()
                            })
                    })
                    .collect();
            }
            _ => usage(),
        }
    }
    if o.condo.is_empty()
        || o.qemu.is_empty()
        || o.kernel.is_empty()
        || o.initrd.is_empty()
        || o.dir.as_os_str().is_empty()
        || o.rounds == 0
    {
        usage();
    }
    o
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A VMM's serial console: every chunk read from its standard output,
/// with the time it arrived.
#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<Chunk>>>);

/// Bytes read from a console, and when.
type Chunk = (Instant, Vec<u8>);

impl Console {
    fn read_from(mut out: impl Read + Send + 'static) -> Self {
        let c = Console::default();
        let chunks = c.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                let t = Instant::now();
                lock(&chunks).push((t, buf[..n].to_vec()));
            }
        });
        c
    }

    fn times(&self) -> Vec<Instant> {
        lock(&self.0).iter().map(|(t, _)| *t).collect()
    }

    /// Everything printed so far.
    fn text(&self) -> String {
        let chunks = lock(&self.0);
        let bytes: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The numbers of the complete `tickN` lines in `text`.
fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim_end().strip_prefix("tick")?.parse().ok())
        .collect()
}

/// A VMM process: its console, its standard error in a file; killed when
/// dropped.
struct Vmm {
    child: Child,
    console: Console,
    log: PathBuf,
}

impl Vmm {
    fn spawn(mut cmd: Command, log: PathBuf) -> Result<Self, String> {
        let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        Ok(Self {
            child,
            console: Console::read_from(out),
            log,
        })
    }

    /// Waits until the console has shown `word` `n` times.
    fn wait_for(&mut self, (word, n): (&str, usize), limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if self.console.text().matches(word).count() >= n {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!(
                    "the VMM ended ({st}) before its guest printed {word:?} {n} times{}",
                    self.tail()
                ));
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "the guest did not print {word:?} {n} times in {} s{}",
                    limit.as_secs(),
                    self.tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to end by itself.
    fn wait_exit(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            match self.child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => return Err(format!("the source ended with {st}{}", self.tail())),
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        Err(format!("the source did not end{}", self.tail()))
    }

    /// The end of the VMM's standard error and console, for an error.
    fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let console = self.console.text();
        let last = |s: &str, n: usize| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join(" | ")
        };
        format!(
            "; its log: [{}]; its console: [{}]",
            last(&log, 4),
            last(&console, 3)
        )
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A QMP connection (capabilities negotiated); events are kept for
/// [`Qmp::migration_event`].
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
    events: Vec<String>,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Self, String> {
        let w = UnixStream::connect(path).map_err(|e| format!("QMP {}: {e}", path.display()))?;
        let _ = w.set_read_timeout(Some(Duration::from_secs(60)));
        let mut q = Self {
            r: BufReader::new(w.try_clone().map_err(|e| e.to_string())?),
            w,
            events: Vec::new(),
        };
        q.line()?;
        q.cmd(r#"{"execute": "qmp_capabilities"}"#)?;
        Ok(q)
    }

    fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) => Err("QMP closed".into()),
            Ok(_) => Ok(l),
            Err(e) => Err(format!("QMP: {e}")),
        }
    }

    /// Sends one command; its answer.
    fn cmd(&mut self, json: &str) -> Result<String, String> {
        writeln!(self.w, "{json}").map_err(|e| format!("QMP: {e}"))?;
        loop {
            let l = self.line()?;
            if l.starts_with(r#"{"error""#) {
                return Err(format!("QMP {json}: {}", l.trim_end()));
            }
            if l.starts_with(r#"{"return""#) {
                return Ok(l);
            }
            self.events.push(l);
        }
    }

    /// Waits for a `MIGRATION` event with one of `statuses`; returns it.
    fn migration_event(&mut self, statuses: &[&str], limit: Duration) -> Result<String, String> {
        let _ = self.w.set_read_timeout(Some(limit));
        let is_it = |l: &str| {
            l.contains(r#""event": "MIGRATION""#)
                && statuses
                    .iter()
                    .any(|s| l.contains(&format!(r#""status": "{s}""#)))
        };
        if let Some(i) = self.events.iter().position(|l| is_it(l)) {
            return Ok(self.events.remove(i));
        }
        loop {
            let l = self.line()?;
            if is_it(&l) {
                let _ = self.w.set_read_timeout(Some(Duration::from_secs(60)));
                return Ok(l);
            }
        }
    }
}

/// The number after the first `"key":` in `json` (QMP answers and
/// condo's metrics lines are flat enough for that).
fn json_num(json: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\"");
    let at = json.find(&pat)? + pat.len();
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The object after `"key":` in `json`, up to its closing brace (objects
/// without nested objects).
fn json_obj<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\"");
    let at = json.find(&pat)? + pat.len();
    let rest = &json[at..];
    let end = rest.find('}')?;
    Some(&rest[..end])
}

/// A JSON string's body for `s`.
fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Gives the benchmark a network namespace of its own with its loopback
/// up, so that the IP counters count the migration stream and nothing
/// else. Must run before any thread starts.
fn private_loopback() -> Result<(), String> {
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain system call; it changes only which network namespace
    // this (still single-threaded) process and its children use.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(err("unshare(CLONE_NEWNET)"));
    }
    // SAFETY: plain system call; the descriptor is owned just below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket"));
    }
    // SAFETY: `fd` is a fresh descriptor no one else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ifreq` is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS fills `ifr`, which lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } != 0 {
        return Err(err("SIOCGIFFLAGS lo"));
    }
    // SAFETY: the flags member is the one SIOCGIFFLAGS just set.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `ifr`, which lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } != 0 {
        return Err(err("SIOCSIFFLAGS lo"));
    }
    Ok(())
}

/// IP octets this network namespace has sent (`IpExt: OutOctets`).
fn ip_out_octets() -> Result<u64, String> {
    let s = std::fs::read_to_string("/proc/net/netstat")
        .map_err(|e| format!("/proc/net/netstat: {e}"))?;
    let mut lines = s.lines().filter(|l| l.starts_with("IpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Err("/proc/net/netstat has no IpExt counters".into());
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutOctets")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| "/proc/net/netstat has no IpExt OutOctets".into())
}

/// Waits until something listens on 127.0.0.1:`port` (found in
/// /proc/net/tcp: connecting would be taken for the migration).
fn wait_listening(port: u16, limit: Duration) -> Result<(), String> {
    let local = format!("0100007F:{port:04X}");
    let start = Instant::now();
    loop {
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let listening = tcp.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")
        });
        if listening {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(format!(
                "nothing listened on 127.0.0.1:{port} in {} s",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What one migration measured.
#[derive(Clone, Debug, Default)]
struct Sample {
    /// Request to the destination's first output.
    total_ms: f64,
    /// The source's last output to the destination's first.
    downtime_ms: f64,
    /// IP octets sent on loopback from the request to the end.
    wire_bytes: u64,
    vmm_total_ms: f64,
    vmm_downtime_ms: f64,
    vmm_bytes: u64,
    passes: u64,
    /// Longest gap in the source's output between the request and its
    /// last output.
    stall_ms: f64,
    /// Longest gap in the source's output in the second before the
    /// request.
    idle_gap_ms: f64,
    /// From the request: the source's last output, the VMM saying the
    /// migration is over (condo's answer to the send request, QEMU's
    /// `completed` event on the source), the destination's first output.
    last_src_ms: f64,
    done_ms: f64,
}

/// `t` as the logs show it (UTC, to the microsecond).
fn utc(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:06}Z",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        d.subsec_micros()
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The figures seen from outside: total, downtime, stall and idle gap,
/// from the two consoles; checks that the guest's counter went on.
fn outside(src: &Console, dst: &Console, t_req: Instant, s: &mut Sample) -> Result<(), String> {
    let src_t = src.times();
    let first_dst = dst
        .times()
        .into_iter()
        .find(|t| *t >= t_req)
        .ok_or("no output from the destination")?;
    let last_src = src_t
        .iter()
        .copied()
        .rfind(|t| *t < first_dst)
        .ok_or("no output from the source")?;
    if let Some(late) = src_t.iter().find(|t| **t > first_dst) {
        return Err(format!(
            "the source printed {:.1} ms after the destination's first output: the guest ran twice",
            ms(*late - first_dst)
        ));
    }
    let (before, after) = (ticks(&src.text()), ticks(&dst.text()));
    match (before.last(), after.first()) {
        (Some(b), Some(a)) if a > b => {}
        (b, a) => {
            return Err(format!(
                "the guest's counter did not go on: the source's last tick {b:?}, the \
                 destination's first {a:?}"
            ))
        }
    }
    let gap_max = |from: Instant, to: Instant| {
        src_t
            .windows(2)
            .filter(|w| w[1] > from && w[1] <= to)
            .map(|w| ms(w[1] - w[0]))
            .fold(0.0, f64::max)
    };
    s.total_ms = ms(first_dst - t_req);
    s.last_src_ms = ms(last_src.saturating_duration_since(t_req));
    s.downtime_ms = ms(first_dst - last_src);
    s.stall_ms = gap_max(t_req, last_src);
    s.idle_gap_ms = gap_max(t_req - BASELINE, t_req);
    Ok(())
}

fn condo_cmd(o: &Opts, sock: &Path) -> Command {
    let _ = std::fs::remove_file(sock);
    let mut c = Command::new(&o.condo);
    c.args(["run", "--log-level", "info", "--api-sock"])
        .arg(sock);
    c
}

fn boot_args(case: &Case) -> String {
    format!("{CMDLINE_BASE} -- \"{}\"", case.command)
}

/// One condo migration: boot on a source, move to an empty destination.
fn condo_round(o: &Opts, case: &Case, port: u16) -> Result<Sample, String> {
    let (src_sock, dst_sock) = (o.dir.join("src.sock"), o.dir.join("dst.sock"));
    let metrics = o.dir.join("src.metrics");
    let _ = std::fs::remove_file(&metrics);
    let mut src = Vmm::spawn(condo_cmd(o, &src_sock), o.dir.join("condo-src.log"))?;
    wait_socket(&src_sock)?;
    let put = |path: &str, body: String| expect_204(&src_sock, "PUT", path, &body);
    put(
        "/metrics",
        format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
    )?;
    put(
        "/boot-source",
        format!(
            r#"{{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "{}"}}"#,
            o.kernel,
            o.initrd,
            json_escape(&boot_args(case))
        ),
    )?;
    put(
        "/machine-config",
        format!(
            r#"{{"vcpu_count": {}, "mem_size_mib": {}}}"#,
            o.cpus, case.mem_mib
        ),
    )?;
    put("/actions", r#"{"action_type": "InstanceStart"}"#.into())?;
    src.wait_for(case.ready, BOOT_LIMIT)?;

    let mut dst = Vmm::spawn(condo_cmd(o, &dst_sock), o.dir.join("condo-dst.log"))?;
    wait_socket(&dst_sock)?;
    let receive = {
        let (sock, body) = (
            dst_sock.clone(),
            format!(r#"{{"receiver_url": "tcp:127.0.0.1:{port}"}}"#),
        );
        std::thread::spawn(move || {
            let r = api_within(&sock, "PUT", "/migration/receive", &body, MIGRATION_LIMIT);
            (r, Instant::now())
        })
    };
    wait_listening(port, Duration::from_secs(30))?;
    std::thread::sleep(BASELINE);
    let octets = ip_out_octets()?;
    let t_req = Instant::now();
    let t_req_utc = std::time::SystemTime::now();
    let send = format!(
        r#"{{"destination_url": "tcp:127.0.0.1:{port}", "downtime_ms": {}, "timeout_s": {}}}"#,
        o.downtime_ms,
        MIGRATION_LIMIT.as_secs()
    );
    let sent = api_within(&src_sock, "PUT", "/migration/send", &send, MIGRATION_LIMIT)?;
    let done = t_req.elapsed();
    if sent.0 != 204 {
        return Err(format!(
            "send: {}{}",
            sent.1.lines().last().unwrap_or(""),
            src.tail()
        ));
    }
    let (received, received_at) = receive
        .join()
        .map_err(|_| "the receiving thread panicked")?;
    let (received, received_at) = (received?, received_at.saturating_duration_since(t_req));
    if received.0 != 204 {
        return Err(format!(
            "receive: {}{}",
            received.1.lines().last().unwrap_or(""),
            dst.tail()
        ));
    }
    // The source ends once the guest runs on the destination, and flushes
    // its metrics as it does.
    src.wait_exit(Duration::from_secs(30))?;
    let ended_at = t_req.elapsed();
    dst.wait_for(("tick", TICKS_AFTER), BOOT_LIMIT)?;
    let mut s = Sample {
        wire_bytes: ip_out_octets()? - octets,
        done_ms: ms(done),
        ..Sample::default()
    };
    outside(&src.console, &dst.console, t_req, &mut s)?;
    let m = std::fs::read_to_string(&metrics)
        .map_err(|e| format!("the source's metrics {}: {e}", metrics.display()))?;
    let sum = |key: &str| {
        m.lines()
            .filter_map(|l| json_num(json_obj(l, "migration")?, key))
            .sum::<f64>()
    };
    s.vmm_bytes = sum("bytes_sent") as u64;
    s.vmm_total_ms = sum("total_ms");
    s.vmm_downtime_ms = sum("downtime_ms");
    s.passes = sum("passes") as u64;
    if s.vmm_bytes == 0 {
        return Err(format!("no migration in the source's metrics: {m}"));
    }
    // condo's own lines (throttling included) go with the round's.
    for vmm in [&src, &dst] {
        let log = std::fs::read_to_string(&vmm.log).unwrap_or_default();
        for l in log.lines().filter(|l| l.contains("migration")) {
            eprintln!("condo: {}", l.trim());
        }
    }
    eprintln!(
        "condo: request at {}, source's last output +{:.0} ms, answered +{:.0} ms, receive answered +{:.0} ms, source ended +{:.0} ms, destination's first output +{:.0} ms",
        utc(t_req_utc),
        s.last_src_ms,
        s.done_ms,
        ms(received_at),
        ms(ended_at),
        s.total_ms
    );
    Ok(s)
}

fn qemu_cmd(o: &Opts, case: &Case, qmp: &Path, incoming: Option<u16>) -> Command {
    let _ = std::fs::remove_file(qmp);
    let mut c = crate::qemu_microvm(
        &o.qemu,
        o.cpus,
        case.mem_mib,
        &o.kernel,
        &o.initrd,
        &boot_args(case),
    );
    c.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    if let Some(port) = incoming {
        c.args(["-incoming", &format!("tcp:127.0.0.1:{port}")]);
    }
    c
}

/// One QEMU migration: boot on a source, move to a `-incoming` one.
fn qemu_round(o: &Opts, case: &Case, port: u16) -> Result<Sample, String> {
    let (src_qmp, dst_qmp) = (o.dir.join("src.qmp"), o.dir.join("dst.qmp"));
    let mut src = Vmm::spawn(
        qemu_cmd(o, case, &src_qmp, None),
        o.dir.join("qemu-src.log"),
    )?;
    wait_socket(&src_qmp)?;
    src.wait_for(case.ready, BOOT_LIMIT)?;
    let mut dst = Vmm::spawn(
        qemu_cmd(o, case, &dst_qmp, Some(port)),
        o.dir.join("qemu-dst.log"),
    )?;
    wait_socket(&dst_qmp)?;
    let mut dq = Qmp::connect(&dst_qmp)?;
    wait_listening(port, Duration::from_secs(30))?;
    let mut q = Qmp::connect(&src_qmp)?;
    q.cmd(
        r#"{"execute": "migrate-set-capabilities", "arguments": {"capabilities": [
            {"capability": "events", "state": true},
            {"capability": "auto-converge", "state": true}]}}"#,
    )?;
    q.cmd(&format!(
        r#"{{"execute": "migrate-set-parameters", "arguments": {{"downtime-limit": {}, "max-bandwidth": {UNCAPPED}}}}}"#,
        o.downtime_ms
    ))?;
    std::thread::sleep(BASELINE);
    let octets = ip_out_octets()?;
    let t_req = Instant::now();
    let t_req_utc = std::time::SystemTime::now();
    q.cmd(&format!(
        r#"{{"execute": "migrate", "arguments": {{"uri": "tcp:127.0.0.1:{port}"}}}}"#
    ))?;
    let ev = q.migration_event(&["completed", "failed", "cancelled"], MIGRATION_LIMIT)?;
    let done = t_req.elapsed();
    let mut info = q.cmd(r#"{"execute": "query-migrate"}"#)?;
    if !ev.contains("completed") {
        return Err(format!("QEMU migration: {}; {}", ev.trim(), info.trim()));
    }
    // QEMU sends the event before it works out its times (they read 0
    // until then).
    let t = Instant::now();
    while json_num(&info, "total-time").unwrap_or(0.0) == 0.0
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(5));
        info = q.cmd(r#"{"execute": "query-migrate"}"#)?;
    }
    dst.wait_for(("tick", TICKS_AFTER), BOOT_LIMIT)?;
    let mut s = Sample {
        wire_bytes: ip_out_octets()? - octets,
        done_ms: ms(done),
        ..Sample::default()
    };
    outside(&src.console, &dst.console, t_req, &mut s)?;
    let num = |json: Option<&str>, key: &str| {
        json.and_then(|j| json_num(j, key))
            .ok_or_else(|| format!("query-migrate has no {key}: {}", info.trim()))
    };
    s.vmm_total_ms = num(Some(&info), "total-time")?;
    s.vmm_downtime_ms = num(Some(&info), "downtime")?;
    let ram = json_obj(&info, "ram");
    s.vmm_bytes = num(ram, "transferred")? as u64;
    s.passes = num(ram, "dirty-sync-count")? as u64;
    eprintln!(
        "qemu: request at {}, source's last output +{:.0} ms, completed +{:.0} ms (downtime {:.0} ms), destination's first output +{:.0} ms",
        utc(t_req_utc),
        s.last_src_ms,
        s.done_ms,
        s.vmm_downtime_ms,
        s.total_ms
    );
    let _ = q.cmd(r#"{"execute": "quit"}"#);
    let _ = dq.cmd(r#"{"execute": "quit"}"#);
    Ok(s)
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / f64::from(1 << 20))
}

fn ratio(c: f64, q: f64) -> String {
    if q > 0.0 && c.is_finite() && q.is_finite() {
        format!("{:.2}", c / q)
    } else {
        "-".into()
    }
}

fn figure(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    match unit {
        "B" => mib(v),
        "ms" => format!("{v:.0} ms"),
        _ => format!("{v:.0}"),
    }
}

/// A guest's rounds: condo's and QEMU's samples, and how many rounds of
/// each failed.
struct CaseResult<'a> {
    case: &'a Case,
    condo: Vec<Sample>,
    qemu: Vec<Sample>,
    condo_failed: usize,
    qemu_failed: usize,
}

/// Prints the Markdown tables: a compact one, one row per metric and
/// guest, and every round.
fn report(o: &Opts, results: &[CaseResult<'_>]) {
    type Get = fn(&Sample) -> f64;
    let med = |v: &[Sample], f: Get| median(v.iter().map(f).collect());
    let total: Get = |s| s.total_ms;
    let down: Get = |s| s.downtime_ms;
    let wire: Get = |s| s.wire_bytes as f64;
    println!("@@summary");
    println!(
        "| guest (rounds: {}, medians) | total: condo | QEMU | ratio | downtime seen from outside: condo | QEMU | ratio | bytes on the wire: condo | QEMU | ratio |",
        o.rounds
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for CaseResult {
        case,
        condo: c,
        qemu: q,
        ..
    } in results
    {
        let cell = |f: Get, unit: &str| {
            let (a, b) = (med(c, f), med(q, f));
            format!(
                "{} | {} | {}",
                figure(a, unit),
                figure(b, unit),
                ratio(a, b)
            )
        };
        println!(
            "| {} | {} | {} | {} |",
            case.label,
            cell(total, "ms"),
            cell(down, "ms"),
            cell(wire, "B")
        );
    }
    println!();
    println!("| guest | metric (median) | condo | QEMU | condo / QEMU | target |");
    println!("|---|---|---|---|---|---|");
    for CaseResult {
        case,
        condo: c,
        qemu: q,
        condo_failed: cf,
        qemu_failed: qf,
    } in results
    {
        let rows: [(&str, Get, &str, bool); 11] = [
            (
                "total time: request to the guest's first output on the destination",
                total,
                "ms",
                true,
            ),
            (
                "downtime seen from outside: last output on the source to first on the destination",
                down,
                "ms",
                true,
            ),
            (
                "bytes on the wire (IP octets on loopback)",
                wire,
                "B",
                case.bytes_target,
            ),
            (
                "the VMM's own total time (condo `total_ms`, QEMU `total-time`)",
                |s| s.vmm_total_ms,
                "ms",
                false,
            ),
            (
                "the VMM's own downtime (condo `downtime_ms`, QEMU `downtime`)",
                |s| s.vmm_downtime_ms,
                "ms",
                false,
            ),
            (
                "the VMM's own bytes (condo `bytes_sent`, QEMU `ram.transferred`)",
                |s| s.vmm_bytes as f64,
                "B",
                false,
            ),
            (
                "passes over memory (condo `passes`, QEMU `dirty-sync-count`)",
                |s| s.passes as f64,
                "",
                false,
            ),
            (
                "downtime seen from outside, part 1: the source's silence before the VMM paused the guest (its end minus its own downtime)",
                |s| s.done_ms - s.vmm_downtime_ms - s.last_src_ms,
                "ms",
                false,
            ),
            (
                "downtime seen from outside, part 3: from the VMM's own end to the destination's first output (part 2 is the VMM's own downtime)",
                |s| s.total_ms - s.done_ms,
                "ms",
                false,
            ),
            (
                "longest gap in the source's output while pre-copy ran",
                |s| s.stall_ms,
                "ms",
                false,
            ),
            (
                "longest gap in the source's output in the second before (resolution)",
                |s| s.idle_gap_ms,
                "ms",
                false,
            ),
        ];
        let mut label = format!(
            "{} (rounds: condo {}, QEMU {}{})",
            case.label,
            c.len(),
            q.len(),
            if cf + qf > 0 {
                format!("; failed: condo {cf}, QEMU {qf}")
            } else {
                String::new()
            }
        );
        for (name, f, unit, target) in rows {
            let (a, b) = (med(c, f), med(q, f));
            let verdict = match (target, a.is_finite() && b.is_finite()) {
                (false, _) => "".to_string(),
                (true, false) => "at most QEMU's: -".to_string(),
                (true, true) if a <= b => "at most QEMU's: met".to_string(),
                (true, true) => "at most QEMU's: **missed**".to_string(),
            };
            println!(
                "| {label} | {name} | {} | {} | {} | {verdict} |",
                figure(a, unit),
                figure(b, unit),
                ratio(a, b)
            );
            label.clear();
        }
    }
    println!();
    println!("Every round:");
    println!();
    println!("| guest | VMM | total | downtime (outside) | own downtime | on the wire | own bytes | passes | longest gap in pre-copy |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for CaseResult {
        case,
        condo: c,
        qemu: q,
        ..
    } in results
    {
        for (name, v) in [("condo", c), ("QEMU", q)] {
            for s in v {
                println!(
                    "| {} | {name} | {:.0} ms | {:.0} ms | {:.0} ms | {} | {} | {} | {:.0} ms |",
                    case.label,
                    s.total_ms,
                    s.downtime_ms,
                    s.vmm_downtime_ms,
                    mib(s.wire_bytes as f64),
                    mib(s.vmm_bytes as f64),
                    s.passes,
                    s.stall_ms
                );
            }
        }
    }
}

/// Runs the benchmark: a line per migration, then the tables.
pub fn main(args: impl Iterator<Item = String>) -> Result<(), String> {
    let o = parse(args);
    let netns = match private_loopback() {
        Ok(()) => "private",
        Err(e) => {
            eprintln!(
                "condo-bench migration: no network namespace of its own ({e}): the bytes on \
                 the wire count whatever else this host sends meanwhile"
            );
            "shared"
        }
    };
    println!("migration netns={netns} downtime_ms={}", o.downtime_ms);
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    let mut port = o.port;
    let mut results = Vec::new();
    for case in &o.cases {
        let (mut c, mut q, mut cf, mut qf) = (Vec::new(), Vec::new(), 0, 0);
        for round in 1..=o.rounds {
            // Alternating, and which goes first alternates too.
            let order = if round % 2 == 1 {
                ["condo", "qemu"]
            } else {
                ["qemu", "condo"]
            };
            for vmm in order {
                port += 1;
                let r = if vmm == "condo" {
                    condo_round(&o, case, port)
                } else {
                    qemu_round(&o, case, port)
                };
                match r {
                    Ok(s) => {
                        println!(
                            "migration case={} vmm={vmm} round={round} total_ms={:.1} downtime_ms={:.1} \
                             wire_bytes={} vmm_total_ms={:.0} vmm_downtime_ms={:.0} vmm_bytes={} \
                             passes={} stall_ms={:.1} idle_gap_ms={:.1} last_src_ms={:.1} \
                             done_ms={:.1}",
                            case.name,
                            s.total_ms,
                            s.downtime_ms,
                            s.wire_bytes,
                            s.vmm_total_ms,
                            s.vmm_downtime_ms,
                            s.vmm_bytes,
                            s.passes,
                            s.stall_ms,
                            s.idle_gap_ms,
                            s.last_src_ms,
                            s.done_ms
                        );
                        if vmm == "condo" { &mut c } else { &mut q }.push(s);
                    }
                    Err(e) => {
                        println!(
                            "migration case={} vmm={vmm} round={round} failed: {e}",
                            case.name
                        );
                        *if vmm == "condo" { &mut cf } else { &mut qf } += 1;
                    }
                }
            }
        }
        results.push(CaseResult {
            case,
            condo: c,
            qemu: q,
            condo_failed: cf,
            qemu_failed: qf,
        });
    }
    report(&o, &results);
    Ok(())
}

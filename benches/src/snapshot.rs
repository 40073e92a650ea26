//! `condo-bench snapshot`: snapshot create time, restore-to-answer latency
//! for a small and a large guest, and the memory an idle VMM waiting for a
//! restore costs; condo and QEMU side by side, with where condo's restore
//! goes.
//!
//! The guest prints a tick on its serial console every 10 ms. For each
//! memory size a base VM boots and is paused and snapshotted (create time
//! measured); then, each round, a fresh VMM process restores it and the
//! time from the restore request to the guest's first tick is measured.
//! condo: `PUT /snapshot/load` with `resume_vm` on a `condo run --api-sock`.
//! QEMU: `stop` + `migrate` to a file (`exec:cat`) over QMP, then a fresh
//! `-incoming defer` process, `migrate-incoming` and `cont` once the state
//! is in. Each restoring VMM is left to finish its own start-up (its CPU
//! time stops growing) before the request, as a VMM kept waiting for a
//! restore would have; QEMU is ready when its QMP socket answers.
//!
//! condo restores four ways: with the host's kept KVM probe verdict (what
//! every run after the first does), with the verdict removed first (so the
//! probe runs), with `--no-kvm-probe`, and with the memory file's
//! working-set record removed first (so the restore has none to copy in,
//! and records it again, as a snapshot's first restore does). Its log line of steps
//! (`vmm::timing`, `--log-level info`) splits the load; KVM's statistics
//! (debugfs) are read at the first tick, and one census round per VMM
//! counts exits by reason from the request to the first tick.
//! `--condo-b PATH` restores with a second condo build too (A/B); each
//! build restores snapshots it made itself.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::kvmstat;

struct Opts {
    condo: String,
    condo_b: Option<String>,
    qemu: String,
    kernel: String,
    initrd: String,
    rounds: usize,
    dir: PathBuf,
    /// Guest sizes to measure, MiB.
    sizes: Vec<u64>,
}

fn usage() -> ! {
    eprintln!(
        "usage: condo-bench snapshot --condo PATH --qemu PATH --kernel VMLINUX --initrd INITRAMFS \
         --dir DIR [--rounds N] [--condo-b PATH] [--sizes MIB,MIB]"
    );
    std::process::exit(2)
}

fn parse(mut args: impl Iterator<Item = String>) -> Opts {
    let mut o = Opts {
        condo: String::new(),
        condo_b: None,
        qemu: String::new(),
        kernel: String::new(),
        initrd: String::new(),
        rounds: 5,
        dir: PathBuf::new(),
        sizes: vec![128, 2048],
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
            "--dir" => o.dir = PathBuf::from(v),
            "--sizes" => {
                o.sizes = v
                    .split(',')
                    .map(|m| m.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            _ => usage(),
        }
    }
    if o.condo.is_empty()
        || o.qemu.is_empty()
        || o.kernel.is_empty()
        || o.initrd.is_empty()
        || o.dir.as_os_str().is_empty()
    {
        usage();
    }
    o
}

fn api(sock: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    api_within(sock, method, path, body, Duration::from_secs(60))
}

/// One API request, answered within `limit`: its status and response.
pub(crate) fn api_within(
    sock: &Path,
    method: &str,
    path: &str,
    body: &str,
    limit: Duration,
) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_read_timeout(Some(limit));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let code = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad response {resp:?}"))?;
    Ok((code, resp))
}

pub(crate) fn expect_204(sock: &Path, method: &str, path: &str, body: &str) -> Result<(), String> {
    match api(sock, method, path, body)? {
        (204, _) => Ok(()),
        (_, r) => Err(format!("{method} {path}: {r}")),
    }
}

/// The guest: a tick on the serial console every 10 ms.
pub(crate) const TICKER: &str = "i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.01; done";
pub(crate) const CMDLINE_BASE: &str = "console=ttyS0 reboot=k panic=1 quiet";

/// A VMM process whose serial lines are timestamped as they arrive, and
/// whose step lines (condo's, on stderr) are collected.
struct Vmm {
    child: Child,
    lines: std::sync::mpsc::Receiver<(Instant, String)>,
    steps: std::sync::mpsc::Receiver<crate::StepsLine>,
    /// KVM's VMs before this VMM started.
    vms_before: Vec<PathBuf>,
}

impl Vmm {
    fn spawn(mut cmd: Command) -> Result<Self, String> {
        let vms_before = kvmstat::vms();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let err = child.stderr.take().ok_or("no stderr")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let (stx, steps) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Some(s) = crate::parse_steps(&line) {
                    let _ = stx.send(s);
                }
            }
        });
        Ok(Self {
            child,
            lines,
            steps,
            vms_before,
        })
    }

    /// When the next tick line arrives.
    fn next_tick(&self, limit: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, l)) if l.trim_start().starts_with("tick") => return Ok(t),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "the guest did not tick; the VMM's threads: {}",
                        threads_of(self.child.id())
                    ))
                }
            }
        }
    }

    /// Waits until the process has finished starting up: its CPU time has
    /// not grown for 60 ms (at most 10 s).
    fn wait_idle(&self) {
        let pid = self.child.id();
        let mut last = cpu_ticks(pid);
        let mut quiet = 0;
        let start = Instant::now();
        while quiet < 3 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
            let now = cpu_ticks(pid);
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
        }
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                std::thread::sleep(crate::SETTLE);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(crate::SETTLE);
    }
}

/// Each thread of process `pid` as `name:state:wchan` (what a VMM that
/// hangs is doing).
fn threads_of(pid: u32) -> String {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(gone)".into();
    };
    let mut out = Vec::new();
    for t in rd.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let state = stat_fields(&p.join("stat"))
            .into_iter()
            .next()
            .unwrap_or_default();
        out.push(format!(
            "{}:{state}:{}",
            read("comm").trim(),
            read("wchan").trim()
        ));
    }
    out.join(" ")
}

/// The fields of a `stat` file of /proc after the command name (the first
/// is the state, field 3 in proc(5)); none when unreadable.
fn stat_fields(path: &Path) -> Vec<String> {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    rest.split_whitespace().map(str::to_owned).collect()
}

/// Field `field` (numbered as in proc(5)) of `/proc/{pid}/stat`, 0 when
/// unreadable.
fn stat_field(pid: u32, field: usize) -> u64 {
    stat_fields(Path::new(&format!("/proc/{pid}/stat")))
        .get(field - 3)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    stat_field(pid, 14) + stat_field(pid, 15)
}

/// Minor page faults of process `pid` so far.
fn minor_faults(pid: u32) -> u64 {
    stat_field(pid, 10)
}

pub(crate) fn wait_socket(sock: &Path) -> Result<(), String> {
    let start = Instant::now();
    while UnixStream::connect(sock).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("{} never appeared", sock.display()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// A condo API server (with its steps logged), `extra` flags added.
fn condo_api(bin: &str, sock: &Path, extra: &[&str]) -> Result<Vmm, String> {
    let _ = std::fs::remove_file(sock);
    let mut c = Command::new(bin);
    c.args(["--log-level", "info", "run"])
        .args(extra)
        .arg("--api-sock")
        .arg(sock);
    let vm = Vmm::spawn(c)?;
    wait_socket(sock)?;
    Ok(vm)
}

/// QEMU's machine, as the boot and I/O benchmarks run it, with QMP.
fn qemu(o: &Opts, mem_mib: u64, qmp: &Path, incoming: bool) -> Result<Vmm, String> {
    let _ = std::fs::remove_file(qmp);
    let mut c = crate::qemu_microvm(
        &o.qemu,
        2,
        mem_mib,
        &o.kernel,
        &o.initrd,
        &format!("{CMDLINE_BASE} -- \"{TICKER}\""),
    );
    c.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    if incoming {
        c.args(["-incoming", "defer"]);
    }
    let vm = Vmm::spawn(c)?;
    wait_socket(qmp)?;
    Ok(vm)
}

/// A QMP connection (capabilities negotiated).
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Self, String> {
        let w = UnixStream::connect(path).map_err(|e| format!("QMP: {e}"))?;
        let _ = w.set_read_timeout(Some(Duration::from_secs(120)));
        let mut q = Self {
            r: BufReader::new(w.try_clone().map_err(|e| e.to_string())?),
            w,
        };
        let mut greeting = String::new();
        q.r.read_line(&mut greeting).map_err(|e| e.to_string())?;
        q.cmd(r#"{"execute": "qmp_capabilities"}"#)?;
        Ok(q)
    }

    /// Sends one command; its answer (events are skipped).
    fn cmd(&mut self, json: &str) -> Result<String, String> {
        writeln!(self.w, "{json}").map_err(|e| e.to_string())?;
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l).map_err(|e| e.to_string())? == 0 {
                return Err("QMP closed".into());
            }
            if l.contains("\"error\"") {
                return Err(format!("QMP {json}: {l}"));
            }
            if l.contains("\"return\"") {
                return Ok(l);
            }
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One restore's figures.
#[derive(Default)]
struct Restore {
    load_ms: f64,
    /// From the request to the VMM's first step, and from its last step
    /// to the answer (condo).
    before_ms: f64,
    after_ms: f64,
    /// The VMM process's minor page faults while it served the load.
    load_faults: u64,
    answer_ms: f64,
    steps: Vec<(String, u64)>,
    stats: BTreeMap<String, u64>,
}

/// One way of restoring, and what its rounds measured.
struct Variant {
    name: String,
    bin: String,
    flags: Vec<&'static str>,
    /// Remove the host's kept probe verdict before each restore.
    forget_verdict: bool,
    /// Remove the memory file's working-set record before each restore
    /// (so that the restore records it again, as a snapshot's first does).
    forget_working_set: bool,
    restores: Vec<Restore>,
}

/// Where condo keeps the probe's verdict (as `vmm::probe` chooses it for
/// root without `CONDO_RUNTIME_DIR`).
fn verdict_path() -> PathBuf {
    std::env::var_os("CONDO_RUNTIME_DIR")
        .map_or_else(|| PathBuf::from("/run/condo"), PathBuf::from)
        .join("kvm-probe")
}

/// A condo snapshot of a ticking guest of `mem_mib` made by `bin` in
/// `dir`: (state, memory, create ms, the idle API server's RSS).
fn condo_snapshot(
    o: &Opts,
    bin: &str,
    tag: &str,
    mem_mib: u64,
) -> Result<(PathBuf, PathBuf, f64, u64), String> {
    let snap = o.dir.join(format!("{tag}{mem_mib}.snap"));
    let mem = o.dir.join(format!("{tag}{mem_mib}.mem"));
    let sock = o.dir.join("base.sock");
    let base = condo_api(bin, &sock, &[])?;
    base.wait_idle();
    let api_rss = rss_kib(base.child.id());
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "{CMDLINE_BASE} -- \"{TICKER}\""}}"#,
        o.kernel, o.initrd
    );
    expect_204(&sock, "PUT", "/boot-source", &boot)?;
    expect_204(
        &sock,
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count": 2, "mem_size_mib": {mem_mib}}}"#),
    )?;
    expect_204(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    )?;
    base.next_tick(Duration::from_secs(60))?;
    expect_204(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#)?;
    let t = Instant::now();
    expect_204(
        &sock,
        "PUT",
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            snap.display(),
            mem.display()
        ),
    )?;
    let create_ms = ms(t.elapsed());
    base.stop();
    Ok((snap, mem, create_ms, api_rss))
}

/// One condo restore of `snap`/`mem` as `v` asks, with a census when
/// `census` is given.
fn condo_restore(
    o: &Opts,
    v: &Variant,
    snap: &Path,
    mem: &Path,
    census: Option<&mut Option<kvmstat::CensusResult>>,
) -> Result<Restore, String> {
    let load = format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": true}}"#,
        snap.display(),
        mem.display()
    );
    if v.forget_verdict {
        let _ = std::fs::remove_file(verdict_path());
    }
    if v.forget_working_set {
        let mut ws = mem.as_os_str().to_owned();
        ws.push(".ws");
        let _ = std::fs::remove_file(ws);
    }
    let sock = o.dir.join("r.sock");
    let vm = condo_api(&v.bin, &sock, &v.flags)?;
    vm.wait_idle();
    let counting = census.as_ref().and_then(|_| kvmstat::Census::start());
    let faults = minor_faults(vm.child.id());
    let t0_mono = crate::monotonic_us();
    let t0 = Instant::now();
    expect_204(&sock, "PUT", "/snapshot/load", &load)?;
    let load_ms = ms(t0.elapsed());
    let load_faults = minor_faults(vm.child.id()).saturating_sub(faults);
    let t2 = vm.next_tick(Duration::from_secs(30))?;
    let counted = counting.map(kvmstat::Census::finish);
    let stats = kvmstat::vm_stats(&vm.vms_before);
    let line = vm.steps.recv_timeout(Duration::from_secs(1)).ok();
    // Before the VMM's first step: the request read, parsed and handed to
    // the VMM thread; after its last: the answer written back.
    let before_ms = line.as_ref().map_or(0.0, |l| {
        l.start_mono_us.saturating_sub(t0_mono) as f64 / 1000.0
    });
    let steps = line.map(|l| l.steps).unwrap_or_default();
    let after_ms = load_ms - before_ms - steps.iter().map(|s| s.1).sum::<u64>() as f64 / 1000.0;
    if let (Some(slot), Some(c)) = (census, counted) {
        *slot = Some(c);
    }
    vm.stop();
    Ok(Restore {
        load_ms,
        before_ms,
        after_ms,
        load_faults,
        answer_ms: ms(t2 - t0),
        steps,
        stats,
    })
}

/// Polls QMP until the migration (out or in) has completed.
fn wait_migration(q: &mut Qmp) -> Result<(), String> {
    loop {
        let r = q.cmd(r#"{"execute": "query-migrate"}"#)?;
        if r.contains("\"completed\"") {
            return Ok(());
        }
        if r.contains("\"failed\"") {
            return Err(format!("QEMU migration failed: {r}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// QEMU: a snapshot of the same guest: (state file, create ms).
fn qemu_snapshot(o: &Opts, mem_mib: u64) -> Result<(PathBuf, f64), String> {
    let state = o.dir.join(format!("q{mem_mib}.mig"));
    let _ = std::fs::remove_file(&state);
    let qmp = o.dir.join("qmp.sock");
    let base = qemu(o, mem_mib, &qmp, false)?;
    base.next_tick(Duration::from_secs(60))
        .map_err(|e| format!("QEMU boot: {e}"))?;
    let mut q = Qmp::connect(&qmp)?;
    q.cmd(r#"{"execute": "stop"}"#)?;
    let t = Instant::now();
    q.cmd(&format!(
        r#"{{"execute": "migrate", "arguments": {{"uri": "exec:cat > {}"}}}}"#,
        state.display()
    ))?;
    wait_migration(&mut q)?;
    let create_ms = ms(t.elapsed());
    let _ = q.cmd(r#"{"execute": "quit"}"#);
    base.stop();
    Ok((state, create_ms))
}

/// One QEMU restore of `state`: its figures and the idle RSS before it.
fn qemu_restore(
    o: &Opts,
    mem_mib: u64,
    state: &Path,
    census: Option<&mut Option<kvmstat::CensusResult>>,
) -> Result<(Restore, u64), String> {
    let qmp = o.dir.join("qmp.sock");
    let vm = qemu(o, mem_mib, &qmp, true)?;
    let mut q = Qmp::connect(&qmp)?;
    vm.wait_idle();
    let idle = rss_kib(vm.child.id());
    let counting = census.as_ref().and_then(|_| kvmstat::Census::start());
    let t0 = Instant::now();
    q.cmd(&format!(
        r#"{{"execute": "migrate-incoming", "arguments": {{"uri": "exec:cat {}"}}}}"#,
        state.display()
    ))?;
    // The state was saved from a stopped VM, so it arrives stopped:
    // resume it once it is in (condo's `resume_vm`).
    wait_migration(&mut q)?;
    q.cmd(r#"{"execute": "cont"}"#)?;
    let load_ms = ms(t0.elapsed());
    let t2 = vm.next_tick(Duration::from_secs(60)).map_err(|e| {
        let st = q.cmd(r#"{"execute": "query-status"}"#).unwrap_or_default();
        let mig = q.cmd(r#"{"execute": "query-migrate"}"#).unwrap_or_default();
        format!("QEMU restore: {e}; status {st} migration {mig}")
    })?;
    let counted = counting.map(kvmstat::Census::finish);
    let stats = kvmstat::vm_stats(&vm.vms_before);
    if let (Some(slot), Some(c)) = (census, counted) {
        *slot = Some(c);
    }
    let _ = q.cmd(r#"{"execute": "quit"}"#);
    vm.stop();
    Ok((
        Restore {
            load_ms,
            before_ms: 0.0,
            after_ms: 0.0,
            load_faults: 0,
            answer_ms: ms(t2 - t0),
            steps: Vec::new(),
            stats,
        },
        idle,
    ))
}

fn med(v: &[Restore], f: impl Fn(&Restore) -> Option<f64>) -> f64 {
    crate::median(v.iter().filter_map(f).collect())
}

/// Everything measured for one guest size.
fn one_size(o: &Opts, mem_mib: u64, kvm: bool) -> Result<(), String> {
    // condo builds: (name, binary, tag of their snapshot files).
    let mut builds = vec![("condo", o.condo.clone(), "c")];
    if let Some(b) = &o.condo_b {
        builds.push(("condo-b", b.clone(), "b"));
    }
    let mut snaps = Vec::new();
    let mut variants = Vec::new();
    for (name, bin, tag) in &builds {
        let (snap, mem, create_ms, rss) = condo_snapshot(o, bin, tag, mem_mib)?;
        println!(
            "snapshot vmm={name} mem_mib={mem_mib} create_ms={create_ms:.1} idle_rss_kib={rss}"
        );
        snaps.push((snap, mem));
        let all = [
            ("", vec![], false, false),
            (" (fresh probe)", vec![], true, false),
            (" (--no-kvm-probe)", vec!["--no-kvm-probe"], false, false),
            (" (first restore: no working set)", vec![], false, true),
        ];
        for (suffix, flags, forget, forget_ws) in all {
            // The second build only restores the usual way.
            if *name == "condo-b" && !suffix.is_empty() {
                continue;
            }
            variants.push((
                snaps.len() - 1,
                Variant {
                    name: format!("{name}{suffix}"),
                    bin: bin.clone(),
                    flags,
                    forget_verdict: forget,
                    forget_working_set: forget_ws,
                    restores: Vec::new(),
                },
            ));
        }
    }
    let (qstate, qcreate) = qemu_snapshot(o, mem_mib)?;
    println!("snapshot vmm=qemu mem_mib={mem_mib} create_ms={qcreate:.1}");
    let mut qemu_restores = Vec::new();
    let mut qemu_idle = 0;
    // Alternating: every way once per round, QEMU's turn moving along.
    for round in 0..o.rounds {
        let n = variants.len() + 1;
        for k in 0..n {
            let i = (k + round) % n;
            if i == variants.len() {
                let (r, idle) = qemu_restore(o, mem_mib, &qstate, None)?;
                qemu_idle = idle;
                qemu_restores.push(r);
            } else {
                let (s, v) = &variants[i];
                let (snap, mem) = &snaps[*s];
                let r = condo_restore(o, v, snap, mem, None)?;
                variants[i].1.restores.push(r);
            }
        }
    }
    for (_, v) in &variants {
        println!(
            "snapshot vmm={} mem_mib={mem_mib} load_ms={:.1} answer_ms={:.1}",
            v.name,
            med(&v.restores, |r| Some(r.load_ms)),
            med(&v.restores, |r| Some(r.answer_ms))
        );
    }
    println!(
        "snapshot vmm=qemu mem_mib={mem_mib} load_ms={:.1} answer_ms={:.1} idle_rss_kib={qemu_idle}",
        med(&qemu_restores, |r| Some(r.load_ms)),
        med(&qemu_restores, |r| Some(r.answer_ms))
    );
    print_steps(mem_mib, &variants);
    print_stats(mem_mib, &variants, &qemu_restores);
    // A census round each, for the smaller guest.
    if kvm && mem_mib <= 128 {
        let mut censuses = Vec::new();
        let census_of = |n: &str| !n.contains('(') || n.contains("no working set");
        for (s, v) in variants.iter().filter(|(_, v)| census_of(&v.name)) {
            let (snap, mem) = &snaps[*s];
            let mut c = None;
            condo_restore(o, v, snap, mem, Some(&mut c))?;
            if let Some(c) = c {
                censuses.push((v.name.as_str(), c));
            }
        }
        let mut c = None;
        qemu_restore(o, mem_mib, &qstate, Some(&mut c))?;
        if let Some(c) = c {
            censuses.push(("qemu", c));
        }
        crate::print_census(
            &censuses,
            &format!("Restore request to first tick, {mem_mib} MiB"),
        );
    }
    for (snap, mem) in &snaps {
        let _ = std::fs::remove_file(snap);
        let _ = std::fs::remove_file(mem);
    }
    let _ = std::fs::remove_file(&qstate);
    Ok(())
}

/// condo's load steps (medians, ms), one column per way of restoring.
fn print_steps(mem_mib: u64, variants: &[(usize, Variant)]) {
    let names = crate::step_names(
        variants
            .iter()
            .flat_map(|(_, v)| v.restores.iter().flat_map(|r| &r.steps)),
    );
    if names.is_empty() {
        return;
    }
    let cols: Vec<&str> = variants.iter().map(|(_, v)| v.name.as_str()).collect();
    let mut rows = Vec::new();
    let mut row = |label: String, digits: usize, f: &dyn Fn(&Restore) -> Option<f64>| {
        let cells = variants
            .iter()
            .map(|(_, v)| format!("{:.digits$}", med(&v.restores, f)))
            .collect();
        rows.push((label, cells));
    };
    for n in &names {
        row(format!("VMM: {n}"), 1, &|r| {
            r.steps
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, us)| *us as f64 / 1000.0)
        });
    }
    row("VMM, all steps".into(), 1, &|r| {
        Some(r.steps.iter().map(|s| s.1).sum::<u64>() as f64 / 1000.0)
    });
    row("request to the first step".into(), 1, &|r| {
        Some(r.before_ms)
    });
    row("last step to the answer".into(), 1, &|r| Some(r.after_ms));
    row("load request, answered".into(), 1, &|r| Some(r.load_ms));
    row("first tick".into(), 1, &|r| Some(r.answer_ms));
    row("VMM minor page faults during the load".into(), 0, &|r| {
        Some(r.load_faults as f64)
    });
    crate::print_table(
        &format!("Where condo's load goes, {mem_mib} MiB (medians, ms)"),
        "step",
        &cols,
        &rows,
    );
}

/// KVM's statistics at the first tick (medians).
fn print_stats(mem_mib: u64, variants: &[(usize, Variant)], qemu: &[Restore]) {
    let mut cols: Vec<(&str, &[Restore])> = variants
        .iter()
        .filter(|(_, v)| !v.name.contains('('))
        .map(|(_, v)| (v.name.as_str(), v.restores.as_slice()))
        .collect();
    cols.push(("qemu", qemu));
    if cols
        .iter()
        .all(|(_, r)| r.iter().all(|r| r.stats.is_empty()))
    {
        return;
    }
    println!();
    println!(
        "### KVM's statistics from the restore to the first tick, {mem_mib} MiB (debugfs, medians)"
    );
    println!();
    let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
    println!("| statistic | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(names.len()));
    for stat in kvmstat::STATS {
        let cells: Vec<String> = cols
            .iter()
            .map(|(_, r)| format!("{:.0}", med(r, |x| x.stats.get(*stat).map(|n| *n as f64))))
            .collect();
        println!("| {stat} | {} |", cells.join(" | "));
    }
}

/// Runs the benchmark; prints one line per VMM, way and guest size, then
/// the tables.
pub fn main(args: impl Iterator<Item = String>) -> Result<(), String> {
    let o = parse(args);
    std::fs::create_dir_all(&o.dir).map_err(|e| e.to_string())?;
    let kvm = kvmstat::available();
    for condo in std::iter::once(&o.condo).chain(&o.condo_b) {
        let _ = Command::new(condo)
            .arg("kvm-check")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for &mem in &o.sizes {
        one_size(&o, mem, kvm)?;
    }
    Ok(())
}

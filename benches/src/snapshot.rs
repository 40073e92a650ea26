//! `condo-bench snapshot`: snapshot create time, restore-to-answer latency
//! for a small and a large guest, and the memory an idle VMM waiting for a
//! restore costs; condo and QEMU side by side.
//!
//! The guest prints a tick on its serial console every 10 ms. For each
//! memory size a base VM boots and is paused and snapshotted (create time
//! measured); then, each round, a fresh VMM process restores it and the
//! time from the restore request to the guest's first tick is measured.
//! condo: `PUT /snapshot/load` with `resume_vm` on a `condo run --api-sock`.
//! QEMU: `stop` + `migrate` to a file (`exec:cat`) over QMP, then a fresh
//! `-incoming defer` process, `migrate-incoming` and `cont` once the state
//! is in. condo maps guest memory lazily, so its restore
//! should not grow with the guest's size.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    condo: String,
    qemu: String,
    kernel: String,
    initrd: String,
    rounds: usize,
    dir: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: condo-bench snapshot --condo PATH --qemu PATH --kernel VMLINUX --initrd INITRAMFS --dir DIR [--rounds N]"
    );
    std::process::exit(2)
}

fn parse(mut args: impl Iterator<Item = String>) -> Opts {
    let mut o = Opts {
        condo: String::new(),
        qemu: String::new(),
        kernel: String::new(),
        initrd: String::new(),
        rounds: 5,
        dir: PathBuf::new(),
    };
    while let Some(flag) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--condo" => o.condo = v,
            "--qemu" => o.qemu = v,
            "--kernel" => o.kernel = v,
            "--initrd" => o.initrd = v,
            "--rounds" => o.rounds = v.parse().unwrap_or_else(|_| usage()),
            "--dir" => o.dir = PathBuf::from(v),
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

/// A VMM process whose serial lines are timestamped as they arrive.
struct Vmm {
    child: Child,
    lines: std::sync::mpsc::Receiver<(Instant, String)>,
}

impl Vmm {
    fn spawn(mut cmd: Command) -> Result<Self, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// When the next tick line arrives.
    fn next_tick(&self, limit: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, l)) if l.trim_start().starts_with("tick") => return Ok(t),
                Ok(_) => {}
                Err(_) => return Err("the guest did not tick".into()),
            }
        }
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

fn condo_api(o: &Opts, sock: &Path) -> Result<Vmm, String> {
    let _ = std::fs::remove_file(sock);
    let mut c = Command::new(&o.condo);
    // The KVM probe checks the host, not the restore: it is left out of
    // the timing.
    c.args(["run", "--no-kvm-probe", "--api-sock"]).arg(sock);
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

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// condo: create time, medians of load-request and load-to-tick times,
/// and the idle API server's RSS.
fn condo_size(o: &Opts, mem_mib: u64) -> Result<String, String> {
    let snap = o.dir.join(format!("vm{mem_mib}.snap"));
    let mem = o.dir.join(format!("vm{mem_mib}.mem"));
    let sock = o.dir.join("base.sock");
    let base = condo_api(o, &sock)?;
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
    let load = format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": true}}"#,
        snap.display(),
        mem.display()
    );
    let (mut loads, mut answers) = (Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        let sock = o.dir.join("r.sock");
        let vm = condo_api(o, &sock)?;
        let t0 = Instant::now();
        expect_204(&sock, "PUT", "/snapshot/load", &load)?;
        loads.push(ms(t0.elapsed()));
        let t2 = vm.next_tick(Duration::from_secs(30))?;
        answers.push(ms(t2 - t0));
        vm.stop();
    }
    let _ = std::fs::remove_file(&mem);
    Ok(format!(
        "snapshot vmm=condo mem_mib={mem_mib} create_ms={create_ms:.1} load_ms={:.1} answer_ms={:.1} idle_rss_kib={api_rss}",
        median(loads),
        median(answers)
    ))
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

/// QEMU: the same figures through QMP and file migration.
fn qemu_size(o: &Opts, mem_mib: u64) -> Result<String, String> {
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
    let (mut loads, mut answers, mut idle) = (Vec::new(), Vec::new(), 0);
    for _ in 0..o.rounds {
        let vm = qemu(o, mem_mib, &qmp, true)?;
        let mut q = Qmp::connect(&qmp)?;
        idle = rss_kib(vm.child.id());
        let t0 = Instant::now();
        q.cmd(&format!(
            r#"{{"execute": "migrate-incoming", "arguments": {{"uri": "exec:cat {}"}}}}"#,
            state.display()
        ))?;
        // The state was saved from a stopped VM, so it arrives stopped:
        // resume it once it is in (condo's `resume_vm`).
        wait_migration(&mut q)?;
        q.cmd(r#"{"execute": "cont"}"#)?;
        loads.push(ms(t0.elapsed()));
        let t2 = vm.next_tick(Duration::from_secs(60)).map_err(|e| {
            let st = q.cmd(r#"{"execute": "query-status"}"#).unwrap_or_default();
            let mig = q.cmd(r#"{"execute": "query-migrate"}"#).unwrap_or_default();
            format!("QEMU restore: {e}; status {st} migration {mig}")
        })?;
        answers.push(ms(t2 - t0));
        let _ = q.cmd(r#"{"execute": "quit"}"#);
        vm.stop();
    }
    let _ = std::fs::remove_file(&state);
    Ok(format!(
        "snapshot vmm=qemu mem_mib={mem_mib} create_ms={create_ms:.1} load_ms={:.1} answer_ms={:.1} idle_rss_kib={idle}",
        median(loads),
        median(answers)
    ))
}

/// Runs the benchmark; prints one line per VMM and guest size.
pub fn main(args: impl Iterator<Item = String>) -> Result<(), String> {
    let o = parse(args);
    std::fs::create_dir_all(&o.dir).map_err(|e| e.to_string())?;
    for mem in [128, 2048] {
        println!("{}", condo_size(&o, mem)?);
        println!("{}", qemu_size(&o, mem)?);
    }
    Ok(())
}

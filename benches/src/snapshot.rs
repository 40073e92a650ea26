//! `condo-bench snapshot`: snapshot create time, restore-to-answer latency
//! for a small and a large guest, and the memory an idle API server costs.
//!
//! A guest answers on vsock port 5000 (an echo server). For each memory
//! size a base VM boots through the API and is snapshotted (the create time
//! is measured); then, each round, a fresh condo loads the snapshot with
//! `resume_vm` and the time until the guest echoes a byte over vsock is
//! measured from the load request. Restore maps guest memory lazily, so
//! this should not grow with the guest's size.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    condo: String,
    kernel: String,
    initrd: String,
    rounds: usize,
    dir: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: condo-bench snapshot --condo PATH --kernel VMLINUX --initrd INITRAMFS --dir DIR [--rounds N]"
    );
    std::process::exit(2)
}

fn parse(mut args: impl Iterator<Item = String>) -> Opts {
    let mut o = Opts {
        condo: String::new(),
        kernel: String::new(),
        initrd: String::new(),
        rounds: 5,
        dir: PathBuf::new(),
    };
    while let Some(flag) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--condo" => o.condo = v,
            "--kernel" => o.kernel = v,
            "--initrd" => o.initrd = v,
            "--rounds" => o.rounds = v.parse().unwrap_or_else(|_| usage()),
            "--dir" => o.dir = PathBuf::from(v),
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

fn api(sock: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
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

fn expect_204(sock: &Path, method: &str, path: &str, body: &str) -> Result<(), String> {
    match api(sock, method, path, body)? {
        (204, _) => Ok(()),
        (_, r) => Err(format!("{method} {path}: {r}")),
    }
}

fn spawn_api(o: &Opts, sock: &Path) -> Result<Child, String> {
    let _ = std::fs::remove_file(sock);
    let child = Command::new(&o.condo)
        // The KVM probe checks the host, not the restore: it is left out
        // of the timing.
        .args(["run", "--no-kvm-probe", "--api-sock"])
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn condo: {e}"))?;
    let start = Instant::now();
    while UnixStream::connect(sock).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("API socket never appeared".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(child)
}

/// One byte echoed by the guest over vsock; retries until it answers.
fn ping(uds: &Path, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if start.elapsed() > limit {
            return Err("the guest did not answer on vsock".into());
        }
        let Ok(mut s) = UnixStream::connect(uds) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        if s.write_all(b"CONNECT 5000\n").is_err() {
            continue;
        }
        let mut r = BufReader::new(match s.try_clone() {
            Ok(c) => c,
            Err(_) => continue,
        });
        let mut line = String::new();
        if r.read_line(&mut line).is_err() || !line.starts_with("OK ") {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let mut b = [0u8; 1];
        if s.write_all(b"x").is_ok() && r.read_exact(&mut b).is_ok() && b[0] == b'x' {
            return Ok(());
        }
    }
}

fn stop(mut c: Child) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = c.kill();
    let _ = c.wait();
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn one_size(o: &Opts, mem_mib: u64) -> Result<String, String> {
    let uds = o.dir.join(format!("v{mem_mib}.sock"));
    let snap = o.dir.join(format!("vm{mem_mib}.snap"));
    let mem = o.dir.join(format!("vm{mem_mib}.mem"));
    let sock = o.dir.join("base.sock");
    let base = spawn_api(o, &sock)?;
    let api_rss = rss_kib(base.id());
    let cmd = "while true; do vsock listen 5000 >/dev/null; done";
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "console=ttyS0 panic=1 quiet -- \"{cmd}\""}}"#,
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
        "/vsock",
        &format!(r#"{{"guest_cid": 3, "uds_path": "{}"}}"#, uds.display()),
    )?;
    expect_204(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    )?;
    ping(&uds, Duration::from_secs(60))?;
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
    let create_ms = t.elapsed().as_secs_f64() * 1000.0;
    stop(base);
    let load = format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": true}}"#,
        snap.display(),
        mem.display()
    );
    let (mut loads, mut answers) = (Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        let sock = o.dir.join("r.sock");
        let vm = spawn_api(o, &sock)?;
        let t0 = Instant::now();
        expect_204(&sock, "PUT", "/snapshot/load", &load)?;
        let t1 = Instant::now();
        ping(&uds, Duration::from_secs(30))?;
        let t2 = Instant::now();
        loads.push((t1 - t0).as_secs_f64() * 1000.0);
        answers.push((t2 - t0).as_secs_f64() * 1000.0);
        stop(vm);
    }
    let _ = std::fs::remove_file(&mem);
    Ok(format!(
        "snapshot mem_mib={mem_mib} create_ms={create_ms:.1} load_ms={:.1} answer_ms={:.1} api_idle_rss_kib={api_rss}",
        median(loads),
        median(answers)
    ))
}

/// Runs the benchmark; prints one line per guest size.
pub fn main(args: impl Iterator<Item = String>) -> Result<(), String> {
    let o = parse(args);
    std::fs::create_dir_all(&o.dir).map_err(|e| e.to_string())?;
    for mem in [128, 2048] {
        let line = one_size(&o, mem)?;
        println!("{line}");
    }
    Ok(())
}

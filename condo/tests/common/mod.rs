//! Helpers shared by condo's integration tests: running the binary with a
//! deadline and finding the guest artifacts the scripts built.

#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished `condo` run left behind.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// The stderr lines, ignoring empty ones.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// Asserts the run failed with exit 1 and exactly one error line that
    /// contains `needle`.
    pub fn assert_one_error_line(&self, needle: &str) {
        let lines = self.stderr_lines();
        assert_eq!(self.code, Some(1), "exit status; stderr: {}", self.stderr);
        assert_eq!(lines.len(), 1, "want one stderr line, got: {:?}", lines);
        assert!(lines[0].starts_with("condo: error: "), "line: {}", lines[0]);
        assert!(
            lines[0].contains(needle),
            "line {:?} lacks {:?}",
            lines[0],
            needle
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
    }
}

/// The first number after `key` in `file` (a /proc file of `key: N ...`
/// lines).
pub fn proc_number(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {file}"))
}

/// The condo binary under test.
pub fn condo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_condo"))
}

/// Runs `cmd` with stdin closed; kills it and fails the test after `limit`.
pub fn run(cmd: Command, limit: Duration) -> Outcome {
    match try_run(cmd, limit) {
        Ok(o) => o,
        Err(hung) => panic!("{hung}"),
    }
}

/// Like [`run`], but a run still going after `limit` is retried (twice at
/// most): the nested test host (QEMU TCG emulating SVM) now and then stalls
/// a guest for minutes, which no hardware KVM does. The stalled run's output
/// is printed so a real hang stays visible.
pub fn run_retrying_stall(make: impl Fn() -> Command, limit: Duration) -> Outcome {
    for _ in 0..2 {
        match try_run(make(), limit) {
            Ok(o) => return o,
            Err(hung) => eprintln!("warning: retrying a stalled run: {hung}"),
        }
    }
    run(make(), limit)
}

/// Runs `cmd`; `Err` with its output when it is still going after `limit`.
pub fn try_run(mut cmd: Command, limit: Duration) -> Result<Outcome, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn condo");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let threads = thread_states(child.id());
            let _ = child.kill();
            let _ = child.wait();
            let so = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
            let se = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
            return Err(format!(
                "condo did not finish within {limit:?}\nthreads (name state wchan):\n{threads}\nstdout:\n{so}\nstderr:\n{se}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    Ok(Outcome {
        code: status.code(),
        stdout: String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned(),
        elapsed,
    })
}

/// Where each thread of process `pid` is, for diagnosing a hang: name,
/// scheduler state and kernel wait channel (a vCPU in KVM_RUN shows as
/// running or in kvm_vcpu_block; a blocked lock as futex_wait).
fn thread_states(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(unavailable)".into();
    };
    let mut out = String::new();
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat
            .rsplit(") ")
            .next()
            .and_then(|r| r.split(' ').next())
            .unwrap_or("?")
            .to_owned();
        out.push_str(&format!(
            "  {} {} {}\n",
            read("comm").trim(),
            state,
            read("wchan").trim()
        ));
    }
    out
}

/// A guest artifact named by an environment variable that `scripts/test.sh`
/// sets (from `guest/build.sh`).
pub fn artifact(var: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: run the tests through scripts/test.sh"));
    assert!(p.is_file(), "{var}={} does not exist", p.display());
    p
}

/// A fresh temporary directory for one test.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("condo-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Whether this CPU has hardware virtualization (then /dev/kvm should be a
/// complete KVM).
pub fn host_has_hw_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false)
}

/// One request to condo's API socket (a fresh connection each time, as
/// `curl --unix-socket` does); returns the status and the body.
pub fn api(sock: &std::path::Path, method: &str, path: &str, body: &str) -> (u16, String) {
    api_within(sock, method, path, body, Duration::from_secs(30))
}

/// Like [`api`], waiting up to `limit` for the answer (a migration is
/// answered when it is over).
pub fn api_within(
    sock: &std::path::Path,
    method: &str,
    path: &str,
    body: &str,
    limit: Duration,
) -> (u16, String) {
    try_api_within(sock, method, path, body, limit)
        .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", sock.display()))
}

/// Like [`api_within`], with the connection's errors returned (a server
/// at its connection cap closes new connections at once).
pub fn try_api_within(
    sock: &std::path::Path,
    method: &str,
    path: &str,
    body: &str,
    limit: Duration,
) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(sock)?;
    s.set_read_timeout(Some(limit))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Waits (up to 10 s) for a Unix socket to appear.
pub fn wait_for_socket(p: &std::path::Path) {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(p).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the tests run as root (the jail needs it).
pub fn is_root() -> bool {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() == 0 }
}

/// A CPU limit for `condo jail --cgroup` in whichever cgroup version this
/// host has the cpu controller.
pub fn jail_cpu_limit() -> String {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .map(|s| s.split_whitespace().any(|c| c == "cpu"))
        .unwrap_or(false);
    if v2 {
        "cpu.max=50000 100000".into()
    } else {
        "cpu.cfs_quota_us=50000".into()
    }
}

/// The one child of process `pid` (the jailed VMM of a `condo jail`).
pub fn only_child(pid: u32) -> u32 {
    let start = Instant::now();
    loop {
        let s =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = s.split_whitespace().next() {
            return c.parse().expect("child pid");
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "condo jail started no VMM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks, from the host, what a jailed VMM (process `vmm`) is: user
/// `uid` with no capabilities, PID 1 in its own mount, PID, IPC and UTS
/// namespaces (and network when `new_net`), a root holding exactly
/// `root_entries` and the four device nodes, no inherited descriptor to
/// `secret`, at most `nofile` descriptors, and cgroup `id`.
pub fn assert_jailed(
    vmm: u32,
    uid: u32,
    root_entries: &[&str],
    new_net: bool,
    secret: &std::path::Path,
    nofile: u64,
    id: &str,
) {
    let proc = std::path::PathBuf::from(format!("/proc/{vmm}"));
    let status = std::fs::read_to_string(proc.join("status")).expect("status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(field("Uid:"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(field("Gid:"), format!("{uid} {uid} {uid} {uid}"));
    for cap in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(cap), "0000000000000000", "{cap} of the jailed VMM");
    }
    assert!(
        field("NSpid:").ends_with(" 1"),
        "the VMM is PID 1 of its namespace"
    );
    let mut kinds = vec!["mnt", "pid", "ipc", "uts"];
    if new_net {
        kinds.push("net");
    }
    for ns in kinds {
        let theirs = std::fs::read_link(proc.join("ns").join(ns)).expect("ns");
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("ns");
        assert_ne!(theirs, ours, "the VMM shares our {ns} namespace");
    }
    let list = |p: std::path::PathBuf| {
        let mut v: Vec<String> = std::fs::read_dir(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let mut want: Vec<String> = root_entries.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(
        list(proc.join("root")),
        want,
        "what the jailed VMM sees at /"
    );
    assert_eq!(
        list(proc.join("root/dev")),
        ["kvm", "net", "null", "urandom"]
    );
    let fds = list(proc.join("fd"));
    for fd in &fds {
        let target = std::fs::read_link(proc.join("fd").join(fd)).unwrap_or_default();
        assert_ne!(target, secret, "the VMM kept an inherited descriptor");
    }
    let limits = std::fs::read_to_string(proc.join("limits")).expect("limits");
    let max_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(max_files, Some(nofile));
    let cgroup = std::fs::read_to_string(proc.join("cgroup")).expect("cgroup");
    assert!(
        cgroup.contains(&format!("/condo/{id}\n")),
        "the VMM is not in cgroup condo/{id}: {cgroup}"
    );
}

/// A child process killed (and reaped) when the test ends, also when it
/// fails: a leftover condo would hold the test's output pipe open.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

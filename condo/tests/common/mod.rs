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
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
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

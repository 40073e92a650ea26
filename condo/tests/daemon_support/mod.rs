//! A `condo daemon` for one test: its own state directory, socket,
//! bridge, subnet and cgroup parent, so that tests do not collide; the
//! client commands run against it; on drop every guest is removed and the
//! daemon, its jails, namespaces and bridge are gone.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::{self, condo, Outcome};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Daemon {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub sock: PathBuf,
    pub bridge: String,
    pub subnet_prefix: String,
    pub cgroup: String,
    extra: Vec<String>,
    child: Option<std::process::Child>,
}

impl Daemon {
    /// Starts a daemon with `extra` options (e.g. --no-network).
    pub fn start(name: &str, extra: &[&str]) -> Self {
        Self::start_at(name, None, extra)
    }

    /// Starts a daemon whose state directory is `state` (default: in the
    /// test's directory).
    pub fn start_at(name: &str, state: Option<&Path>, extra: &[&str]) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) + (std::process::id() % 50) * 4;
        let dir = common::tempdir(&format!("daemon-{name}"));
        let mut d = Self {
            state: state.map_or_else(|| dir.join("state"), Path::to_path_buf),
            sock: dir.join("condo.sock"),
            bridge: format!("ct{}", n % 1000),
            subnet_prefix: format!("10.{}.{}", 200 + n / 250 % 50, n % 250),
            cgroup: format!("condo-test-{}-{n}", std::process::id()),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .expect("daemon log");
        let mut c = condo();
        c.args(["--log-level", "info", "daemon", "--state-dir"])
            .arg(&self.state)
            .arg("--listen")
            .arg(&self.sock)
            .args(["--bridge", &self.bridge])
            .args(["--subnet", &format!("{}.0/24", self.subnet_prefix)])
            .args(["--cgroup-parent", &self.cgroup])
            .args(["--stop-timeout-s", "20"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(c.spawn().expect("spawn condo daemon"));
        let t0 = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.sock).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("condo daemon exited with {st}:\n{}", self.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the daemon's socket never appeared:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// The address of host number `n` of this daemon's subnet.
    pub fn ip(&self, n: u32) -> String {
        format!("{}.{n}", self.subnet_prefix)
    }

    /// `condo ARGS` against this daemon.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = condo();
        c.args(args).env("CONDO_SOCKET", &self.sock);
        c
    }

    /// Runs `condo ARGS`; returns its outcome.
    pub fn run(&self, args: &[&str]) -> Outcome {
        common::run(self.cmd(args), Duration::from_secs(300))
    }

    /// Runs `condo ARGS` and asserts it succeeded; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(
            o.code,
            Some(0),
            "condo {args:?}\nstdout:\n{}\nstderr:\n{}\ndaemon log:\n{}",
            o.stdout,
            o.stderr,
            self.log()
        );
        o.stdout
    }

    /// One API request.
    pub fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        common::api(&self.sock, method, path, body)
    }

    /// A guest as `GET /guests/{name}` shows it.
    pub fn guest(&self, name: &str) -> serde_json::Value {
        let (st, body) = self.api("GET", &format!("/guests/{name}"), "");
        assert_eq!(st, 200, "{body}");
        serde_json::from_str(&body).expect("guest JSON")
    }

    pub fn state_of(&self, name: &str) -> String {
        self.guest(name)["state"].as_str().unwrap_or("?").to_owned()
    }

    /// Waits until `f` holds (polling), or fails with `what`.
    pub fn wait_for(&self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(
                t0.elapsed() < limit,
                "timed out waiting for {what}\ndaemon log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A guest's console output so far (its console log).
    pub fn console(&self, name: &str) -> String {
        let id = self.guest(name)["id"].as_i64().expect("id");
        std::fs::read_to_string(self.state.join(format!("guests/{id}/console.log")))
            .unwrap_or_default()
    }

    /// Waits until a guest's console shows `needle`.
    pub fn wait_console(&self, name: &str, needle: &str, limit: Duration) {
        let t0 = Instant::now();
        loop {
            let c = self.console(name);
            if c.contains(needle) {
                return;
            }
            assert!(
                t0.elapsed() < limit,
                "guest {name} never printed {needle:?}; console:\n{c}\ndaemon log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL of the daemon (its guests run on).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same state directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The jail processes of this daemon's state directory.
    pub fn jail_processes(&self) -> Vec<u32> {
        let want = self.state.join("jail");
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
            if args.windows(2).any(|w| {
                w[0] == b"--chroot-base-dir" && w[1] == want.as_os_str().as_encoded_bytes()
            }) {
                out.push(pid);
            }
        }
        // A jail's VMM is a fork of it, with the same command line.
        let parent = |pid: u32| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            s.rfind(')')
                .and_then(|i| s[i + 2..].split(' ').nth(1)?.parse::<u32>().ok())
        };
        let all = out.clone();
        out.retain(|p| !parent(*p).is_some_and(|pp| all.contains(&pp)));
        out
    }

    /// The network namespaces of this daemon's guests.
    pub fn netns(&self) -> Vec<String> {
        let prefix = format!("condo-{}-", self.bridge);
        let mut v: Vec<String> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| n.starts_with(&prefix))
            .collect();
        v.sort();
        v
    }

    /// The guests' cgroups of this daemon.
    pub fn cgroups(&self) -> Vec<String> {
        let mut v = Vec::new();
        for base in [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/cpu",
            "/sys/fs/cgroup/memory",
        ] {
            let p = Path::new(base).join(&self.cgroup);
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    v.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        v.sort();
        v.dedup();
        v
    }

    /// The guest directories in the state directory.
    pub fn guest_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state.join("guests"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let (st, body) = self.api("GET", "/guests", "");
            if st == 200 {
                if let Ok(v) = serde_json::from_str::<Vec<serde_json::Value>>(&body) {
                    for g in v {
                        if let Some(n) = g["name"].as_str() {
                            let _ = self.api("DELETE", &format!("/guests/{n}?force=1"), "");
                        }
                    }
                }
            }
        }
        self.kill9();
        for pid in self.jail_processes() {
            // SAFETY: signalling a process this test's daemon started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        for ns in self.netns() {
            let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &format!("condo_{}", self.bridge)])
            .stderr(Stdio::null())
            .status();
        for base in [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/cpu",
            "/sys/fs/cgroup/cpuacct",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/cpuset",
        ] {
            let p = Path::new(base).join(&self.cgroup);
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
            let _ = std::fs::remove_dir(&p);
        }
    }
}

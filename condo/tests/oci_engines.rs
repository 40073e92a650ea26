//! condo's OCI runtime under real engines, as a user sets it up: Debian's
//! podman (with conmon) and containerd (ctr and the runc shim) call
//! `condo-runtime`, and every container runs in its own microVM.
//!
//! These need a KVM that boots Linux and the engines: `scripts/test.sh`
//! runs them in one nested test-host session with the engine layer
//! (`testhost/run --engines`, `CONDO_OCI_ENGINES=1`). Elsewhere each test
//! says it is skipped and passes.
//!
//! The set-up is the one `docs/oci.md` describes: the binary linked as
//! /usr/local/bin/condo-runtime, the guest kernel and the agent's
//! initramfs in /usr/local/lib/condo, `condo-runtime check` passing, the
//! runtime named `condo` in containers.conf's `[engine.runtimes]` (the
//! engine layer's configuration) and given to ctr with `--runc-binary`.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{artifact, run, Outcome};

/// A container's whole life in the nested test host takes seconds; one
/// still going after this is hung.
const LIMIT: Duration = Duration::from_secs(240);
const RUNTIME: &str = "/usr/local/bin/condo-runtime";
const IMAGE: &str = "localhost/busybox";
const CTR_IMAGE: &str = "localhost/busybox:latest";
const TRACE: &str = "/tmp/condo-oci-trace.log";

/// Whether this run has the engines; sets them up once.
fn engines() -> bool {
    static READY: Mutex<Option<bool>> = Mutex::new(None);
    let mut r = READY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ok) = *r {
        return ok;
    }
    if std::env::var_os("CONDO_OCI_ENGINES").is_none() {
        eprintln!("skipped: needs the test host's engine layer (scripts/test.sh)");
        *r = Some(false);
        return false;
    }
    install();
    *r = Some(true);
    true
}

/// What a user does (docs/oci.md): install the runtime, its kernel and
/// initramfs; import an image into each engine.
fn install() {
    std::fs::create_dir_all("/usr/local/bin").expect("mkdir");
    std::fs::create_dir_all("/usr/local/lib/condo").expect("mkdir");
    std::fs::create_dir_all("/etc/condo").expect("mkdir");
    let _ = std::fs::remove_file(RUNTIME);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_condo"), RUNTIME).expect("symlink");
    std::fs::copy(
        artifact("CONDO_GUEST_VMLINUX"),
        "/usr/local/lib/condo/vmlinux",
    )
    .expect("kernel");
    std::fs::copy(
        artifact("CONDO_GUEST_INITRAMFS"),
        "/usr/local/lib/condo/initramfs.cpio.gz",
    )
    .expect("initramfs");
    std::fs::write(
        "/etc/condo/oci.json",
        format!("{{\"debug_log\": \"{TRACE}\"}}"),
    )
    .expect("config");
    let o = sh(&format!("{RUNTIME} check"));
    assert_eq!(o.code, Some(0), "condo-runtime check:\n{}", o.stdout);
    let o = sh(&format!(
        "podman import /usr/local/share/condo-test/busybox.tar {IMAGE} && \
         podman save --format oci-archive -o /tmp/busybox-oci.tar {IMAGE} && \
         ctr image import --base-name {IMAGE} /tmp/busybox-oci.tar"
    ));
    assert_eq!(o.code, Some(0), "importing the image: {}", o.stderr);
}

fn sh(cmd: &str) -> Outcome {
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(cmd);
    run(c, LIMIT)
}

/// Asserts success and returns stdout's lines.
fn ok_lines(o: &Outcome) -> Vec<String> {
    assert_eq!(
        o.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}\ntrace:\n{}",
        o.stdout,
        o.stderr,
        trace_tail()
    );
    o.stdout
        .lines()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect()
}

fn trace_tail() -> String {
    let t = std::fs::read_to_string(TRACE).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn podman(args: &str) -> Outcome {
    sh(&format!("podman {args}"))
}

fn ctr_run(args: &str) -> Outcome {
    sh(&format!(
        "ctr run --rm --runtime io.containerd.runc.v2 --runc-binary {RUNTIME} {args}"
    ))
}

/// Host processes that belong to condo's runtime (monitors, VMMs) and name
/// `id` on their command line or in their working directory.
fn leftovers(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let ours = cmdline.contains("oci") || cmdline.contains("run --config-file");
        if ours && (cmdline.contains(id) || cwd.contains(id)) {
            found.push(format!("{pid}: {cmdline} (in {cwd})"));
        }
    }
    found
}

/// State directories of container `id` the runtime may have left, under
/// whatever `--root` the engine gave it: a directory named `id` under /run
/// that holds condo's state or VM files.
fn left_files(id: &str) -> Vec<String> {
    fn walk(dir: &Path, id: &str, depth: u32, found: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name() == id
                && ["state.json", "vm.json", "v.sock", "c.sock", "rootfs.img"]
                    .iter()
                    .any(|f| p.join(f).exists())
            {
                found.push(p.display().to_string());
            } else if depth > 0 {
                walk(&p, id, depth - 1, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new("/run"), id, 5, &mut found);
    found
}

fn assert_gone(id: &str) {
    let start = Instant::now();
    loop {
        let procs = leftovers(id);
        let files = left_files(id);
        if procs.is_empty() && files.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "left behind for {id}: {procs:?} {files:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn podman_runs_a_container_that_prints_and_exits() {
    if !engines() {
        return;
    }
    let o = podman(&format!(
        "run --rm --runtime condo {IMAGE} echo hello from a microVM"
    ));
    assert_eq!(ok_lines(&o), ["hello from a microVM"]);
    // The process ran in a VM: its kernel is the guest's, not the host's.
    let o = podman(&format!("run --rm --runtime condo {IMAGE} uname -r"));
    let host = sh("uname -r");
    assert_ne!(
        ok_lines(&o),
        ok_lines(&host),
        "the container saw the host's kernel"
    );
}

#[test]
fn podman_gets_exit_codes_3_and_137() {
    if !engines() {
        return;
    }
    let o = podman(&format!("run --rm --runtime condo {IMAGE} sh -c 'exit 3'"));
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    let o = podman(&format!(
        "run --rm --runtime condo {IMAGE} sh -c 'kill -9 $$'"
    ));
    assert_eq!(o.code, Some(137), "{}", o.stderr);
}

#[test]
fn podman_env_cwd_user_and_hostname_are_as_configured() {
    if !engines() {
        return;
    }
    let o = podman(&format!(
        "run --rm --runtime condo -e GREETING=bonjour -w /tmp -u 1000:1001 --hostname box1 {IMAGE} \
         sh -c 'echo $GREETING; pwd; id -u; id -g; hostname; cat /etc/hostname'"
    ));
    assert_eq!(
        ok_lines(&o),
        ["bonjour", "/tmp", "1000", "1001", "box1", "box1"]
    );
}

#[test]
fn podman_writes_reach_the_image_rootfs() {
    if !engines() {
        return;
    }
    let _ = podman("rm -f writer");
    let o = podman(&format!(
        "run --name writer --runtime condo {IMAGE} sh -c 'echo written in the VM > /written; rm /bin/yes'"
    ));
    ok_lines(&o);
    let diff = ok_lines(&podman("diff writer")).join("\n");
    assert!(diff.contains("A /written"), "podman diff: {diff}");
    assert!(diff.contains("D /bin/yes"), "podman diff: {diff}");
    ok_lines(&podman("cp writer:/written /tmp/written-copy"));
    assert_eq!(
        std::fs::read_to_string("/tmp/written-copy").expect("copied"),
        "written in the VM\n"
    );
    ok_lines(&podman("rm writer"));
}

#[test]
fn podman_exec_logs_stop_and_rm() {
    if !engines() {
        return;
    }
    let _ = podman("rm -f c1");
    ok_lines(&podman(&format!(
        "run -d --name c1 --hostname h1 --runtime condo {IMAGE} sh -c 'echo started; exec sleep 1000'"
    )));
    // A second process in the running container.
    let o = podman("exec c1 sh -c 'echo exec in $(hostname); exit 4'");
    assert_eq!(o.code, Some(4), "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "exec in h1");
    let logs = ok_lines(&podman("logs c1"));
    assert_eq!(logs, ["started"]);
    let id = ok_lines(&podman("inspect c1 --format '{{.Id}}'")).join("");
    // stop: SIGTERM ends sleep.
    let start = Instant::now();
    ok_lines(&podman("stop -t 30 c1"));
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "stop waited for its timeout"
    );
    let code = ok_lines(&podman("inspect c1 --format '{{.State.ExitCode}}'"));
    assert_eq!(code, ["143"]);
    ok_lines(&podman("rm c1"));
    assert_gone(&id);
}

#[test]
fn podman_stop_kills_after_the_timeout() {
    if !engines() {
        return;
    }
    let _ = podman("rm -f stubborn");
    ok_lines(&podman(&format!(
        "run -d --name stubborn --runtime condo {IMAGE} sh -c 'trap \"echo got TERM\" TERM; while :; do sleep 1; done'"
    )));
    let id = ok_lines(&podman("inspect stubborn --format '{{.Id}}'")).join("");
    // Wait until the shell runs (its trap set).
    let start = Instant::now();
    while !podman("exec stubborn true").code.eq(&Some(0)) {
        assert!(start.elapsed() < LIMIT);
    }
    let start = Instant::now();
    let _ = podman("stop -t 3 stubborn");
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "stop returned before its timeout"
    );
    let code = ok_lines(&podman("inspect stubborn --format '{{.State.ExitCode}}'"));
    assert_eq!(code, ["137"]);
    let logs = podman("logs stubborn").stdout;
    assert!(logs.contains("got TERM"), "SIGTERM came first: {logs:?}");
    ok_lines(&podman("rm stubborn"));
    assert_gone(&id);
    // rm -f of a running container.
    ok_lines(&podman(&format!(
        "run -d --name rmf --runtime condo {IMAGE} sleep 1000"
    )));
    let id = ok_lines(&podman("inspect rmf --format '{{.Id}}'")).join("");
    ok_lines(&podman("rm -f rmf"));
    assert_gone(&id);
}

/// A pseudo-terminal for an engine's own `-t`: the engine gets the slave
/// as its controlling terminal; the test types into the master.
struct Terminal {
    master: std::fs::File,
    child: std::process::Child,
}

impl Terminal {
    fn spawn(cmd: &str, rows: u16, cols: u16) -> Terminal {
        let pty = oci::console::open_pty(rows, cols).expect("pty");
        let slave = pty.slave;
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(cmd);
        let fd = |f: &OwnedFd| Stdio::from(f.try_clone().expect("dup"));
        c.stdin(fd(&slave)).stdout(fd(&slave)).stderr(fd(&slave));
        // SAFETY: setsid and TIOCSCTTY on the child's stdin (the slave)
        // between fork and exec, both async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = c.spawn().expect("spawn");
        drop(slave);
        Terminal {
            master: std::fs::File::from(pty.master),
            child,
        }
    }

    fn type_line(&mut self, line: &str) {
        self.master.write_all(line.as_bytes()).expect("type");
        self.master.write_all(b"\r").expect("type");
    }

    /// Reads until the output holds `want`; returns all of it.
    fn expect(&mut self, want: &str, seen: &mut String) {
        let start = Instant::now();
        let fd = self.master.as_raw_fd();
        while !seen.contains(want) {
            assert!(
                start.elapsed() < LIMIT,
                "no {want:?} on the terminal; saw {seen:?}\ntrace:\n{}",
                trace_tail()
            );
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one descriptor we own.
            if unsafe { libc::poll(&mut p, 1, 200) } <= 0 {
                continue;
            }
            let mut buf = [0u8; 4096];
            match self.master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        assert!(seen.contains(want), "no {want:?}; saw {seen:?}");
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize we own; the kernel signals
        // the terminal's foreground process group (the engine).
        unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }

    fn wait(mut self) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st.code();
            }
            assert!(start.elapsed() < LIMIT, "the engine did not exit");
            // Drain, so that the engine never blocks writing.
            let mut p = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one descriptor we own.
            if unsafe { libc::poll(&mut p, 1, 100) } > 0 {
                let mut buf = [0u8; 4096];
                let _ = self.master.read(&mut buf);
            }
        }
    }
}

/// An interactive shell: input echoes, the size is the user's terminal's
/// and follows a resize, the exit code comes back.
fn interactive(cmd: &str) {
    let mut t = Terminal::spawn(cmd, 33, 101);
    let mut seen = String::new();
    t.type_line("stty size; echo computed-$((6*7))");
    t.expect("computed-42", &mut seen);
    assert!(
        seen.contains("echo computed-$((6*7))"),
        "no echo of the input: {seen:?}"
    );
    assert!(seen.contains("33 101"), "terminal size: {seen:?}");
    t.resize(40, 120);
    // The resize travels engine -> runtime -> agent; ask until it arrived.
    let start = Instant::now();
    let mut round = 0;
    loop {
        round += 1;
        t.type_line(&format!("echo size-{round}-$(stty size | tr ' ' x)"));
        let mut out = String::new();
        t.expect(&format!("size-{round}-"), &mut out);
        t.expect("\n", &mut out);
        seen.push_str(&out);
        let mut more = String::new();
        t.expect(&format!("size-{round}-"), &mut more);
        if more.contains(&format!("size-{round}-40x120"))
            || out.contains(&format!("size-{round}-40x120"))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "resize never arrived: {seen:?}{more:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    t.type_line("exit 5");
    assert_eq!(t.wait(), Some(5));
}

#[test]
fn podman_run_it_is_an_interactive_terminal() {
    if !engines() {
        return;
    }
    interactive(&format!("podman run -it --rm --runtime condo {IMAGE} sh"));
}

#[test]
fn ctr_runs_a_container_that_prints_and_exits_with_its_codes() {
    if !engines() {
        return;
    }
    let o = ctr_run(&format!("{CTR_IMAGE} ctr-hello echo hello from containerd"));
    assert_eq!(ok_lines(&o), ["hello from containerd"]);
    let o = ctr_run(&format!("{CTR_IMAGE} ctr-3 sh -c 'exit 3'"));
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    let o = ctr_run(&format!("{CTR_IMAGE} ctr-137 sh -c 'kill -9 $$'"));
    assert_eq!(o.code, Some(137), "{}", o.stderr);
    for id in ["ctr-hello", "ctr-3", "ctr-137"] {
        assert_gone(id);
    }
}

#[test]
fn ctr_env_and_cwd_are_as_configured() {
    if !engines() {
        return;
    }
    // ctr 1.6 has no flag for the user or the hostname (podman's test
    // covers those).
    let o = ctr_run(&format!(
        "--env GREETING=hallo --cwd /tmp {CTR_IMAGE} ctr-env \
         sh -c 'echo $GREETING; pwd; id -u; hostname'"
    ));
    let lines = ok_lines(&o);
    assert_eq!(lines[..3], ["hallo", "/tmp", "0"]);
    assert!(!lines[3].is_empty(), "hostname: {lines:?}");
}

#[test]
fn ctr_run_t_is_an_interactive_terminal() {
    if !engines() {
        return;
    }
    interactive(&format!(
        "ctr run -t --rm --runtime io.containerd.runc.v2 --runc-binary {RUNTIME} {CTR_IMAGE} ctr-tty sh"
    ));
    assert_gone("ctr-tty");
}

#[test]
fn ctr_kill_exec_and_delete() {
    if !engines() {
        return;
    }
    let id = "ctr-life";
    // The container ignores SIGTERM; ctr run waits for it in the
    // background, as a user's shell would.
    let mut fg = Command::new("/bin/sh");
    fg.arg("-c").arg(format!(
        "ctr run --runtime io.containerd.runc.v2 --runc-binary {RUNTIME} {CTR_IMAGE} {id} \
         sh -c 'trap \"echo got TERM\" TERM; echo ready; while :; do sleep 1; done'"
    ));
    fg.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut fg = fg.spawn().expect("ctr run");
    let mut out = fg.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    loop {
        let o = sh(&format!("ctr task exec --exec-id probe {id} true"));
        if o.code == Some(0) {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "the container never ran: {}",
            o.stderr
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let o = sh(&format!(
        "ctr task exec --exec-id e1 {id} sh -c 'echo in exec; exit 4'"
    ));
    assert_eq!(o.code, Some(4), "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "in exec");
    let ps = ok_lines(&sh(&format!("ctr task ps {id}")));
    assert!(ps.len() >= 2, "ctr task ps: {ps:?}");
    ok_lines(&sh(&format!("ctr task kill {id}")));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        fg.try_wait().expect("wait"),
        None,
        "SIGTERM was not ignored"
    );
    ok_lines(&sh(&format!("ctr task kill --signal SIGKILL {id}")));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = fg.try_wait().expect("wait") {
            break st;
        }
        assert!(start.elapsed() < LIMIT, "ctr run did not end after SIGKILL");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(137));
    let out = reader.join().expect("reader");
    assert!(out.contains("got TERM"), "{out:?}");
    ok_lines(&sh(&format!("ctr container delete {id}")));
    assert_gone(id);
}

/// The runtime's own states with a real VM, driven as runc would be.
#[test]
fn runtime_states_with_a_real_vm() {
    if !engines() {
        return;
    }
    // SAFETY: prctl with integer arguments: adopt the monitor, as an
    // engine does.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let dir = common::tempdir("oci-vm-states");
    let b = dir.join("bundle");
    std::fs::create_dir_all(&b).expect("bundle");
    let o = sh(&format!(
        "mkdir -p {0}/rootfs && tar -C {0}/rootfs -xf /usr/local/share/condo-test/busybox.tar",
        b.display()
    ));
    ok_lines(&o);
    std::fs::write(
        b.join("config.json"),
        r#"{"ociVersion":"1.0.2","process":{"args":["sh","-c","read line; exit 9"],"cwd":"/","env":["PATH=/bin"]},
           "root":{"path":"rootfs"},"hostname":"states"}"#,
    )
    .expect("config");
    let root = dir.join("root");
    let rt = |args: &str| {
        sh(&format!(
            "{RUNTIME} --root {} {args} </dev/null >{1}/out 2>{1}/err; rc=$?; cat {1}/out; cat {1}/err >&2; exit $rc",
            root.display(),
            dir.display()
        ))
    };
    let state = |id: &str| -> String {
        let o = rt(&format!("state {id}"));
        let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("state json");
        v["status"].as_str().unwrap_or_default().to_owned()
    };
    let o = rt(&format!(
        "create --bundle {} --pid-file {}/pid vm1",
        b.display(),
        dir.display()
    ));
    ok_lines(&o);
    let pid: i32 = std::fs::read_to_string(dir.join("pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(state("vm1"), "created");
    ok_lines(&rt("delete vm1"));
    assert_gone("vm1");
    // Again, to run it: its stdin is /dev/null, so `read` ends at once.
    let o = rt(&format!(
        "create --bundle {} --pid-file {}/pid vm2",
        b.display(),
        dir.display()
    ));
    ok_lines(&o);
    let mut st = 0;
    // SAFETY: waitpid writes into an int we own; the first monitor is our
    // child (subreaper) and has ended.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    let pid: i32 = std::fs::read_to_string(dir.join("pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    ok_lines(&rt("start vm2"));
    let mut st = 0;
    // SAFETY: waitpid writes into an int we own; the monitor is our child
    // now (subreaper).
    let rc = unsafe { libc::waitpid(pid, &mut st, 0) };
    assert_eq!(rc, pid);
    assert_eq!(libc::WEXITSTATUS(st), 9);
    assert_eq!(state("vm2"), "stopped");
    let o = rt("kill vm2 KILL");
    assert!(o.stderr.contains("container not running"), "{}", o.stderr);
    ok_lines(&rt("delete vm2"));
    let o = rt("state vm2");
    assert!(
        o.stderr.contains("container does not exist"),
        "{}",
        o.stderr
    );
    assert_gone("vm2");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `condo run --image` without an engine: the OCI archive podman saved,
/// its cmd replaced, the same agent; the exit code comes back.
#[test]
fn condo_run_image_runs_an_oci_archive() {
    if !engines() {
        return;
    }
    let o = sh(&format!(
        "{} run --image /tmp/busybox-oci.tar -- sh -c 'echo from the image in $(pwd); exit 6' </dev/null",
        env!("CARGO_BIN_EXE_condo")
    ));
    assert_eq!(
        o.code,
        Some(6),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    assert_eq!(o.stdout.trim(), "from the image in /");
}

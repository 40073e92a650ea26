//! The OCI runtime's command-line contract (`condo oci`, `condo-runtime`),
//! checked without KVM: the states and commands of the OCI runtime
//! specification, runc's error lines for bad bundles and unknown ids, the
//! pid file naming a child of the caller whose exit status is the
//! container's, terminals over the console socket, `exec`.
//!
//! The container's processes run on the host here (the test-only backend,
//! `CONDO_OCI_TEST_BACKEND=host`): what is checked is the runtime's own
//! behaviour around them. The same contract with real VMs and real engines
//! is `oci_engines.rs`, in the nested test host.

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use common::{condo, run, tempdir, Outcome};

const LIMIT: Duration = Duration::from_secs(60);

/// The test process adopts orphans, as conmon and containerd's shim do,
/// so that it can wait for the monitors `create` leaves behind.
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    });
}

/// A bundle in `dir` whose process runs `script` with `sh -c`.
fn bundle(dir: &Path, script: &str, extra: &str) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("rootfs")).expect("rootfs");
    let config = format!(
        r#"{{"ociVersion":"1.0.2","process":{{"args":["sh","-c",{}],"cwd":"/","env":["PATH=/usr/bin:/bin"]{extra}}},"root":{{"path":"rootfs"}},"hostname":"c"}}"#,
        serde_json::to_string(script).expect("json")
    );
    std::fs::write(b.join("config.json"), config).expect("config");
    b
}

/// `condo oci --root ROOT ARGS...` with the host backend.
fn oci(root: &Path, args: &[&str]) -> Outcome {
    let mut c = condo();
    c.env("CONDO_OCI_TEST_BACKEND", "host")
        .arg("oci")
        .arg("--root")
        .arg(root)
        .args(args);
    run_detached(c)
}

/// Runs `cmd` with its output in files, as an engine gives a runtime
/// descriptors: the monitors `create` and `exec` start keep them open
/// (they are the container's), so a pipe would not reach its end when
/// the command exits.
fn run_detached(mut cmd: Command) -> Outcome {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("condo-test-{}-oci-out", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (out, err) = (dir.join(format!("{n}.out")), dir.join(format!("{n}.err")));
    let start = Instant::now();
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(std::fs::File::create(&err).expect("err"))
        .spawn()
        .expect("spawn condo");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let o = Outcome {
        code: status.code(),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        elapsed: start.elapsed(),
    };
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&err);
    o
}

fn ok(o: &Outcome) {
    assert_eq!(
        o.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        o.stdout,
        o.stderr
    );
}

fn status(root: &Path, id: &str) -> String {
    let o = oci(root, &["state", id]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("state JSON");
    assert_eq!(v["id"], id);
    assert_eq!(v["ociVersion"], "1.0.2");
    v["status"].as_str().expect("status").to_owned()
}

/// Waits for process `pid` (a child of this process, as a subreaper) and
/// returns its exit status as a shell shows it.
fn wait_exit(pid: i32) -> i32 {
    let start = Instant::now();
    loop {
        let mut st = 0;
        // SAFETY: waitpid writes into an int we own.
        let rc = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if rc == pid {
            return if libc::WIFSIGNALED(st) {
                128 + libc::WTERMSIG(st)
            } else {
                libc::WEXITSTATUS(st)
            };
        }
        assert!(
            rc == 0,
            "pid {pid} is not our child: {}",
            std::io::Error::last_os_error()
        );
        assert!(start.elapsed() < LIMIT, "container {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn create(root: &Path, bundle: &Path, id: &str) -> i32 {
    become_subreaper();
    let pidfile = bundle.with_file_name(format!("{id}.pid"));
    let o = oci(
        root,
        &[
            "create",
            "--bundle",
            bundle.to_str().expect("path"),
            "--pid-file",
            pidfile.to_str().expect("path"),
            id,
        ],
    );
    ok(&o);
    std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid")
}

#[test]
fn a_container_goes_from_created_to_running_to_stopped_with_its_exit_code() {
    let dir = tempdir("oci-life");
    let root = dir.join("root");
    let b = bundle(&dir, "sleep 0.5; exit 3", "");
    let pid = create(&root, &b, "life");
    assert_eq!(status(&root, "life"), "created");
    let o = oci(&root, &["state", "life"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["pid"], pid);
    assert_eq!(v["bundle"], b.to_str().expect("path"));
    ok(&oci(&root, &["start", "life"]));
    assert_eq!(status(&root, "life"), "running");
    oci(&root, &["start", "life"])
        .assert_one_error_line("cannot start an already running container");
    oci(&root, &["delete", "life"])
        .assert_one_error_line("cannot delete container life that is not stopped: running");
    assert_eq!(
        wait_exit(pid),
        3,
        "the monitor's exit status is the container's"
    );
    assert_eq!(status(&root, "life"), "stopped");
    oci(&root, &["kill", "life", "KILL"]).assert_one_error_line("container not running");
    ok(&oci(&root, &["kill", "--all", "life", "KILL"]));
    oci(&root, &["start", "life"])
        .assert_one_error_line("cannot start a container that has stopped");
    ok(&oci(&root, &["delete", "life"]));
    oci(&root, &["state", "life"]).assert_one_error_line("container does not exist");
    assert!(
        !root.join("life").exists(),
        "delete left the state directory"
    );
}

#[test]
fn signals_reach_the_process_and_pause_freezes_it() {
    let dir = tempdir("oci-signals");
    let root = dir.join("root");
    let b = bundle(&dir, "sleep 60", "");
    let pid = create(&root, &b, "sig");
    ok(&oci(&root, &["start", "sig"]));
    ok(&oci(&root, &["pause", "sig"]));
    assert_eq!(status(&root, "sig"), "paused");
    oci(&root, &["resume", "sig"]);
    assert_eq!(status(&root, "sig"), "running");
    oci(&root, &["resume", "sig"]).assert_one_error_line("container not paused");
    oci(&root, &["kill", "sig", "NOSUCHSIGNAL"])
        .assert_one_error_line("unknown signal \"NOSUCHSIGNAL\"");
    ok(&oci(&root, &["kill", "sig", "KILL"]));
    assert_eq!(wait_exit(pid), 137);
    ok(&oci(&root, &["delete", "sig"]));

    // SIGTERM (kill's default) to a container that was never started.
    let pid = create(&root, &b, "early");
    ok(&oci(&root, &["kill", "early"]));
    assert_eq!(wait_exit(pid), 143);
    ok(&oci(&root, &["delete", "early"]));
}

#[test]
fn delete_force_stops_a_running_container() {
    let dir = tempdir("oci-force");
    let root = dir.join("root");
    let b = bundle(&dir, "sleep 60", "");
    let pid = create(&root, &b, "force");
    ok(&oci(&root, &["start", "force"]));
    ok(&oci(&root, &["delete", "--force", "force"]));
    assert_eq!(wait_exit(pid), 137);
    assert!(!root.join("force").exists());
    oci(&root, &["delete", "force"]).assert_one_error_line("container does not exist");
    ok(&oci(&root, &["delete", "--force", "force"]));
}

#[test]
fn exec_runs_a_second_process_whose_monitor_exits_with_its_status() {
    let dir = tempdir("oci-exec");
    let root = dir.join("root");
    let b = bundle(&dir, "sleep 60", "");
    let pid = create(&root, &b, "ex");
    ok(&oci(&root, &["start", "ex"]));
    let process = dir.join("process.json");
    std::fs::write(
        &process,
        r#"{"args":["sh","-c","exit 7"],"cwd":"/","env":["PATH=/usr/bin:/bin"]}"#,
    )
    .expect("process");
    let pidfile = dir.join("exec.pid");
    ok(&oci(
        &root,
        &[
            "exec",
            "--process",
            process.to_str().expect("path"),
            "--detach",
            "--pid-file",
            pidfile.to_str().expect("path"),
            "ex",
        ],
    ));
    let epid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(wait_exit(epid), 7);
    let o = oci(&root, &["ps", "--format", "json", "ex"]);
    ok(&o);
    let pids: Vec<i32> = serde_json::from_str(&o.stdout).expect("ps json");
    assert!(pids.contains(&pid), "{pids:?} lacks the monitor {pid}");
    ok(&oci(&root, &["kill", "ex", "KILL"]));
    assert_eq!(wait_exit(pid), 137);
    let o = oci(&root, &["exec", "ex", "true"]);
    o.assert_one_error_line("cannot exec in a stopped container");
    ok(&oci(&root, &["delete", "ex"]));
}

#[test]
fn a_terminal_goes_to_the_console_socket() {
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let dir = tempdir("oci-tty");
    let root = dir.join("root");
    let b = bundle(&dir, "echo hello from the terminal", r#","terminal":true"#);
    let sock = dir.join("console.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    become_subreaper();
    let pidfile = dir.join("tty.pid");
    let receiver = std::thread::spawn(move || {
        let (c, _) = l.accept().expect("accept");
        let mut buf = [0u8; 128];
        let (_, f) = c.recv_with_fd(&mut buf).expect("recv");
        f.expect("the terminal's master")
    });
    // Without --console-socket: runc's refusal.
    oci(
        &root,
        &["create", "--bundle", b.to_str().expect("path"), "nosock"],
    )
    .assert_one_error_line(
        "cannot allocate tty if runc will detach without setting console socket",
    );
    ok(&oci(
        &root,
        &[
            "create",
            "--bundle",
            b.to_str().expect("path"),
            "--console-socket",
            sock.to_str().expect("path"),
            "--pid-file",
            pidfile.to_str().expect("path"),
            "tty",
        ],
    ));
    let master = receiver.join().expect("receiver");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    ok(&oci(&root, &["start", "tty"]));
    let mut out = Vec::new();
    let start = Instant::now();
    while !String::from_utf8_lossy(&out).contains("hello from the terminal") {
        let mut buf = [0u8; 256];
        // SAFETY: read into a buffer we own from a descriptor we own.
        let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
        assert!(start.elapsed() < LIMIT);
    }
    assert!(
        String::from_utf8_lossy(&out).contains("hello from the terminal"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(wait_exit(pid), 0);
    ok(&oci(&root, &["delete", "tty"]));
}

#[test]
fn bad_bundles_and_ids_get_runcs_error_lines_and_leave_nothing() {
    let dir = tempdir("oci-bad");
    let root = dir.join("root");
    let create_in = |b: &Path, id: &str| {
        oci(
            &root,
            &["create", "--bundle", b.to_str().expect("path"), id],
        )
    };
    let b = dir.join("malformed");
    std::fs::create_dir_all(b.join("rootfs")).expect("dir");
    std::fs::write(b.join("config.json"), "{\"process\": [1,").expect("write");
    create_in(&b, "m").assert_one_error_line("config.json: ");
    let b = dir.join("noconfig");
    std::fs::create_dir_all(&b).expect("dir");
    create_in(&b, "n").assert_one_error_line("JSON specification file config.json not found");
    let b = bundle(&dir.join("norootfs"), "true", "");
    std::fs::remove_dir(b.join("rootfs")).expect("rmdir");
    create_in(&b, "r").assert_one_error_line(&format!(
        "invalid rootfs: stat {}: no such file or directory",
        b.join("rootfs").display()
    ));
    let b = dir.join("noargs");
    std::fs::create_dir_all(b.join("rootfs")).expect("dir");
    std::fs::write(
        b.join("config.json"),
        r#"{"process":{"cwd":"/"},"root":{"path":"rootfs"}}"#,
    )
    .expect("write");
    create_in(&b, "a").assert_one_error_line("args must not be empty");
    let good = bundle(&dir.join("good"), "sleep 60", "");
    create_in(&good, "../escape").assert_one_error_line("invalid container ID format");
    for cmd in [
        &["state", "nope"][..],
        &["start", "nope"],
        &["kill", "nope"],
        &["delete", "nope"],
        &["pause", "nope"],
        &["resume", "nope"],
        &["ps", "nope"],
        &["exec", "nope", "true"],
    ] {
        oci(&root, cmd).assert_one_error_line("container does not exist");
    }
    // Nothing of the failed creates is left.
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    // A second create of a live id.
    let pid = create(&root, &good, "dup");
    create_in(&good, "dup").assert_one_error_line("container with given ID already exists");
    ok(&oci(&root, &["delete", "dup"]));
    assert_eq!(wait_exit(pid), 137);
}

#[test]
fn hostile_state_files_are_one_error_line() {
    let dir = tempdir("oci-state");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("evil")).expect("dir");
    for text in ["", "{\"id\":", "[1,2]", "{\"id\":\"evil\",\"pid\":-1}"] {
        std::fs::write(root.join("evil/state.json"), text).expect("write");
        oci(&root, &["state", "evil"]).assert_one_error_line("invalid state of container evil");
        oci(&root, &["kill", "evil", "9"]).assert_one_error_line("invalid state of container evil");
    }
    ok(&oci(&root, &["delete", "--force", "evil"]));
    assert!(!root.join("evil").exists());
}

#[test]
fn the_log_file_gets_json_lines_as_containerds_shim_reads_them() {
    let dir = tempdir("oci-log");
    let root = dir.join("root");
    let log = dir.join("log.json");
    let o = oci(
        &root,
        &[
            "--log",
            log.to_str().expect("path"),
            "--log-format",
            "json",
            "state",
            "nope",
        ],
    );
    o.assert_one_error_line("container does not exist");
    let text = std::fs::read_to_string(&log).expect("log");
    let v: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a line")).expect("json");
    assert_eq!(v["level"], "error");
    assert_eq!(v["msg"], "container does not exist");
}

#[test]
fn condo_runtime_is_the_runtime_under_its_own_name() {
    let dir = tempdir("oci-name");
    let link = dir.join("condo-runtime");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_condo"), &link).expect("symlink");
    let mut c = Command::new(&link);
    c.args(["--root"])
        .arg(dir.join("root"))
        .args(["state", "nope"]);
    run_detached(c).assert_one_error_line("container does not exist");
    let mut c = Command::new(&link);
    c.arg("features");
    let o = run(c, LIMIT);
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("features JSON");
    assert_eq!(v["ociVersionMin"], "1.0.0");
    let mut c = Command::new(&link);
    c.arg("--version");
    ok(&run(c, LIMIT));
}

#[test]
fn check_says_what_is_missing() {
    let dir = tempdir("oci-check");
    let config = dir.join("oci.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"kernel":"{0}/no-vmlinux","initrd":"{0}/no-initrd","image_cache":"{0}/cache"}}"#,
            dir.display()
        ),
    )
    .expect("config");
    let mut c = condo();
    c.args(["oci", "--config"])
        .arg(&config)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("check");
    let o = run(c, LIMIT);
    assert_eq!(o.code, Some(1), "{}", o.stdout);
    assert!(o.stdout.contains("MISSING guest kernel"), "{}", o.stdout);
    assert!(o.stdout.contains("MISSING agent initramfs"), "{}", o.stdout);
    // A configuration file with a typo is named.
    std::fs::write(&config, r#"{"kernal": "x"}"#).expect("config");
    let mut c = condo();
    c.args(["oci", "--config"])
        .arg(&config)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("check");
    let o = run(c, LIMIT);
    assert_eq!(o.code, Some(1));
    assert!(o.stdout.contains("unknown field"), "{}", o.stdout);
}

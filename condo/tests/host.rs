//! The host daemon with real guests (they need a KVM that boots Linux:
//! `scripts/test.sh` runs these in the nested test host, in one session):
//! the whole lifecycle through the CLI, limits enforced, guests reaching
//! each other and the host over the bridge, a daemon SIGKILLed and started
//! again re-adopting its guests (and cleaning up a create it was killed
//! in), the console, and concurrent creates and deletes of booting guests.
//! Each test has a daemon of its own (state directory, socket, bridge,
//! subnet, cgroup parent).

mod common;
mod daemon_support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::artifact;
use daemon_support::Daemon;

/// A guest boots in seconds even in the nested test host.
const BOOT: Duration = Duration::from_secs(120);

/// `condo create` arguments for a test guest running `cmd` (then waiting).
fn create_args(name: &str, cmd: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "create".into(),
        name.into(),
        "--kernel".into(),
        artifact("CONDO_GUEST_VMLINUX").display().to_string(),
        "--initrd".into(),
        artifact("CONDO_GUEST_INITRAMFS").display().to_string(),
        "--cmdline".into(),
        format!("quiet condo.end=wait -- \"{cmd}\""),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn create(d: &Daemon, name: &str, cmd: &str, extra: &[&str]) -> String {
    let a = create_args(name, cmd, extra);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    d.ok(&a)
}

const TICK: &str = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done";

/// The highest `tick N` a console shows.
fn last_tick(console: &str) -> Option<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tick ")?.parse().ok())
        .max()
}

/// The VMM of a guest: the child of its jail process.
fn vmm_pid(d: &Daemon, name: &str) -> u32 {
    let jail = d.guest(name)["pid"].as_u64().expect("pid") as u32;
    common::only_child(jail)
}

/// user + system CPU time of a process, clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &s[s.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// Nothing of the daemon's is left but what its running guests own.
fn assert_consistent(d: &Daemon) {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&d.api("GET", "/guests", "").1).expect("list");
    let running: Vec<&serde_json::Value> = list
        .iter()
        .filter(|g| matches!(g["state"].as_str(), Some("running" | "paused")))
        .collect();
    let mut jails = d.jail_processes();
    jails.sort();
    let mut pids: Vec<u32> = running
        .iter()
        .map(|g| g["pid"].as_u64().unwrap_or(0) as u32)
        .collect();
    pids.sort();
    assert_eq!(
        jails, pids,
        "jail processes against running guests: {list:?}"
    );
    let mut want_ns: Vec<String> = running
        .iter()
        .filter(|g| g["spec"]["net"] == true)
        .map(|g| format!("condo-{}-{}", d.bridge, g["id"]))
        .collect();
    want_ns.sort();
    assert_eq!(d.netns(), want_ns, "network namespaces");
    let mut want_cg: Vec<String> = running.iter().map(|g| format!("vm{}", g["id"])).collect();
    want_cg.sort();
    assert_eq!(d.cgroups(), want_cg, "cgroups");
    let mut ids: Vec<String> = list.iter().map(|g| g["id"].to_string()).collect();
    ids.sort();
    assert_eq!(d.guest_dirs(), ids, "guest directories");
    assert!(
        list.iter()
            .all(|g| g["state"] != "creating" && g["state"] != "deleting"),
        "{list:?}"
    );
}

#[test]
fn the_whole_lifecycle_through_the_cli() {
    let d = Daemon::start("life", &[]);
    let out = create(&d, "g1", TICK, &[]);
    assert!(
        out.contains("g1: running") && out.contains(&d.ip(2)),
        "{out}"
    );
    d.wait_console("g1", "tick 2", BOOT);
    // ls: state, vCPUs, memory, CPU %, RSS, IP (after a sample).
    d.wait_for("a sample of g1", BOOT, || !d.guest("g1")["stats"].is_null());
    let ls = d.ok(&["ls"]);
    let row = ls.lines().find(|l| l.starts_with("g1 ")).expect("g1 in ls");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1..4], ["running", "1", "128M"], "{ls}");
    assert!(
        cols[4].parse::<f64>().is_ok() && cols[5].ends_with('M'),
        "{ls}"
    );
    assert_eq!(cols[6], d.ip(2));
    // Pause: the guest's clock stops ticking; resume: it goes on.
    d.ok(&["pause", "g1"]);
    assert_eq!(d.state_of("g1"), "paused");
    let t = last_tick(&d.console("g1"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(last_tick(&d.console("g1")), t, "a paused guest ticked");
    d.ok(&["resume", "g1"]);
    let t = t.unwrap_or(0);
    d.wait_for("ticks after resume", BOOT, || {
        last_tick(&d.console("g1")) > Some(t + 1)
    });
    // Snapshot, and two clones that go on from it.
    d.ok(&["snapshot", "g1", "--as", "s1"]);
    assert_eq!(d.state_of("g1"), "running");
    let snap_tick = last_tick(&d.console("g1")).unwrap_or(0);
    assert!(d.ok(&["snapshots"]).contains("s1"));
    let out = d.ok(&["clone", "s1", "c", "--count", "2"]);
    assert!(
        out.contains("c-1: running") && out.contains("c-2: running"),
        "{out}"
    );
    for c in ["c-1", "c-2"] {
        d.wait_for(&format!("{c} ticking on"), BOOT, || {
            last_tick(&d.console(c)).is_some_and(|n| n > snap_tick.saturating_sub(3) && n >= 1)
        });
        assert!(
            !d.console(c).contains("condo-guest: ready"),
            "{c} booted instead of restoring"
        );
    }
    // Stop: Ctrl+Alt+Del, the guest's init powers off.
    d.ok(&["stop", "g1"]);
    assert_eq!(d.state_of("g1"), "stopped");
    assert!(d.console("g1").contains("condo-guest: ctrl-alt-del"));
    assert_eq!(d.guest("g1")["exit_status"], 0);
    d.ok(&["start", "g1"]);
    d.wait_for("the second boot", BOOT, || {
        d.console("g1").matches("condo-guest: ready").count() == 2
    });
    d.ok(&["restart", "g1", "--timeout", "0"]);
    assert_eq!(d.state_of("g1"), "running");
    d.wait_console("g1", "tick 1", BOOT);
    // What the operator can read.
    let ev = d.ok(&["events", "--since", "1h", "--no-follow"]);
    for kind in [
        "created",
        "started",
        "paused",
        "resumed",
        "snapshot",
        "stopped",
        "restarted",
    ] {
        assert!(
            ev.contains(&format!("\"kind\":\"{kind}\"")),
            "no {kind} event in {ev}"
        );
    }
    let usage = d.ok(&["usage", "show", "g1", "--since", "10m"]);
    let u: serde_json::Value = serde_json::from_str(&usage).expect("usage JSON");
    assert!(!u["samples"].as_array().unwrap().is_empty(), "{usage}");
    let trace = d.ok(&["usage", "export", "--interval", "1", "--since", "10m"]);
    assert!(
        trace.starts_with("guest,vcpus,mem_mib,time_s,cpu_pct\n"),
        "{trace}"
    );
    assert!(trace.lines().any(|l| l.starts_with("g1,1,128,")), "{trace}");
    let m = d.api("GET", "/metrics", "").1;
    assert!(
        m.contains("condo_guest_cpu_seconds_total{guest=\"g1\"}"),
        "{m}"
    );
    let top = d.ok(&["top", "--once"]);
    assert!(top.contains("c-2") && top.contains("running"), "{top}");
    let host = d.ok(&["host"]);
    assert!(host.contains("3 running"), "{host}");
    // Delete: refused while running, unless forced.
    d.run(&["rm", "g1"])
        .assert_one_error_line("guest g1 is running: stop it first");
    d.ok(&["rm", "--force", "g1", "c-1", "c-2"]);
    d.ok(&["snapshots", "--rm", "s1"]);
    assert_consistent(&d);
    assert!(d.ok(&["ls"]).lines().count() == 1);
}

#[test]
fn limits_hold_cpu_and_contain_memory() {
    let d = Daemon::start("limits", &[]);
    create(
        &d,
        "spin",
        "echo spinning; while :; do :; done",
        &["--cpu-limit", "20", "--net", "none"],
    );
    create(&d, "calm", TICK, &["--net", "none"]);
    d.wait_console("spin", "spinning", BOOT);
    d.wait_console("calm", "tick 1", BOOT);
    // Measured from outside: the VMM's CPU time over 10 s.
    let vmm = vmm_pid(&d, "spin");
    // SAFETY: no arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, c0) = (Instant::now(), cpu_ticks(vmm));
    std::thread::sleep(Duration::from_secs(10));
    let (t1, c1) = (Instant::now(), cpu_ticks(vmm));
    let pct = (c1 - c0) as f64 / hz / (t1 - t0).as_secs_f64() * 100.0;
    eprintln!("a guest spinning under cpu.max 20 %: {pct:.1} % of a host CPU");
    assert!(
        pct <= 22.0,
        "the spinning guest used {pct:.1} % of a host CPU"
    );
    assert!(pct >= 5.0, "the spinning guest hardly ran ({pct:.1} %)");
    // A guest that fills more memory than its limit is contained: its VMM
    // is killed at the limit; the others run on.
    create(
        &d,
        "hog",
        "echo filling; dd if=/dev/zero of=/tmp/fill bs=1M count=220 2>/dev/null; echo filled",
        &["--memory", "256", "--memory-limit", "96", "--net", "none"],
    );
    let before = last_tick(&d.console("calm")).unwrap_or(0);
    d.wait_for("the hog to be stopped at its limit", BOOT, || {
        d.state_of("hog") == "crashed"
    });
    assert!(!d.console("hog").contains("filled"), "{}", d.console("hog"));
    assert_eq!(d.state_of("calm"), "running");
    assert_eq!(d.state_of("spin"), "running");
    d.wait_for("calm to tick on", BOOT, || {
        last_tick(&d.console("calm")) > Some(before + 2)
    });
    let ev = d.ok(&["events", "--since", "1h", "--no-follow"]);
    assert!(
        ev.contains("\"guest\":\"hog\",\"kind\":\"crashed\""),
        "{ev}"
    );
}

#[test]
fn guests_reach_each_other_and_the_host_over_the_bridge() {
    let d = Daemon::start("net", &[]);
    let (a, b, gw) = (d.ip(2), d.ip(3), d.ip(1));
    create(
        &d,
        "a",
        "nc -l -p 5000 > /tmp/got & until grep -q hello /tmp/got 2>/dev/null; do sleep 0.2; done; echo got $(cat /tmp/got)",
        &[],
    );
    create(
        &d,
        "b",
        &format!(
            "ip addr show eth0 | grep -q {b} && echo addr-ok; \
             ping -c 3 -W 5 {a} >/dev/null && echo ping-ok; \
             echo hello-over-tcp | nc -w 5 {a} 5000; \
             ping -c 1 -W 5 {gw} >/dev/null && echo host-ok"
        ),
        &[],
    );
    for (g, needle) in [
        ("b", "addr-ok"),
        ("b", "ping-ok"),
        ("a", "got hello-over-tcp"),
        ("b", "host-ok"),
    ] {
        d.wait_console(g, needle, BOOT);
    }
    // The host reaches the guest too.
    let ok = std::process::Command::new("ping")
        .args(["-c", "1", "-W", "5", &a])
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "the host cannot ping {a}");
    // The address is stable across a restart.
    d.ok(&["restart", "b", "--timeout", "0"]);
    assert_eq!(d.guest("b")["ip"], b.as_str());
    d.wait_for("b's second boot", BOOT, || {
        d.console("b").matches("addr-ok").count() == 2
    });
}

#[test]
fn a_daemon_killed_and_started_again_adopts_its_guests() {
    let mut d = Daemon::start("adopt", &["--cpu-overcommit", "32"]);
    create(&d, "t1", TICK, &[]);
    create(&d, "t2", TICK, &["--net", "none"]);
    d.wait_console("t1", "tick 2", BOOT);
    d.wait_console("t2", "tick 2", BOOT);
    d.wait_for("a sample", BOOT, || !d.guest("t1")["stats"].is_null());
    let pid1 = d.guest("t1")["pid"].as_u64().unwrap();
    let pid2 = d.guest("t2")["pid"].as_u64().unwrap();
    let cpu1 = d.guest("t1")["stats"]["cpu_time_us"].as_u64().unwrap();
    let tick = last_tick(&d.console("t1")).unwrap_or(0);
    d.kill9();
    // While no daemon runs, t2 dies.
    // SAFETY: signalling a process this test's daemon started.
    unsafe { libc::kill(pid2 as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(2));
    d.restart();
    assert_eq!(d.state_of("t1"), "running");
    assert_eq!(
        d.guest("t1")["pid"].as_u64(),
        Some(pid1),
        "t1 was restarted"
    );
    assert_eq!(d.state_of("t2"), "crashed");
    d.wait_for("t1's counters to go on", BOOT, || {
        d.guest("t1")["stats"]["cpu_time_us"]
            .as_u64()
            .is_some_and(|c| c > cpu1)
    });
    d.wait_for("t1 to tick on", BOOT, || {
        last_tick(&d.console("t1")) > Some(tick + 2)
    });
    assert!(
        d.console("t1").matches("condo-guest: ready").count() == 1,
        "t1 booted again"
    );
    let ev = d.ok(&["events", "--since", "1h", "--no-follow"]);
    assert!(ev.contains("\"guest\":\"t1\",\"kind\":\"adopted\""), "{ev}");
    assert!(ev.contains("\"guest\":\"t2\",\"kind\":\"crashed\""), "{ev}");
    // The console is the jail's: it outlived the daemon.
    assert!(d.console("t1").contains("tick 0"));
    // A create interrupted half-way: the daemon is killed in the middle of
    // cloning three guests; started again, it leaves no orphan.
    d.ok(&["snapshot", "t1", "--as", "s"]);
    let mut clone = d.cmd(&["clone", "s", "k", "--count", "3"]);
    clone
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = common::KillOnDrop(clone.spawn().expect("clone"));
    d.wait_for("the clones to be under way", BOOT, || {
        d.jail_processes().len() >= 2 || d.guest_dirs().len() >= 3
    });
    d.kill9();
    let _ = child.0.wait();
    d.restart();
    assert_consistent(&d);
    assert_eq!(d.state_of("t1"), "running");
    d.ok(&["start", "t2"]);
    d.wait_for("t2 to boot again", BOOT, || {
        d.console("t2").contains("tick 1")
    });
    assert_consistent(&d);
}

#[test]
fn the_console_takes_input_and_keeps_output() {
    let d = Daemon::start("console", &[]);
    let a = create_args("sh1", "echo shell-ready", &["--net", "none"]);
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    // The test init runs a shell on the console after its command.
    let cmdline = "quiet condo.end=shell -- \"echo shell-ready\"";
    let i = a.iter().position(|x| *x == "--cmdline").unwrap();
    a[i + 1] = cmdline;
    d.ok(&a);
    d.wait_console("sh1", "shell-ready", BOOT);
    let mut c = d.cmd(&["console", "sh1"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = common::KillOnDrop(c.spawn().expect("console"));
    let mut stdin = child.0.stdin.take().unwrap();
    let mut stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut all = String::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = tx.send(all.clone());
        }
    });
    // The history first: what the guest printed before we attached.
    let t0 = Instant::now();
    let mut seen = String::new();
    while !seen.contains("shell-ready") {
        seen = rx.recv_timeout(BOOT).expect("console history");
    }
    stdin
        .write_all(b"echo $((6*7))-from-the-console\n")
        .unwrap();
    while !seen.contains("42-from-the-console") {
        assert!(t0.elapsed() < BOOT, "no answer on the console: {seen}");
        seen = rx.recv_timeout(BOOT).expect("console answer");
    }
    drop(stdin);
    let st = child.0.wait().unwrap();
    assert!(st.success(), "condo console ended with {st}");
    // A guest without a process has no console.
    d.ok(&["stop", "sh1", "--timeout", "0"]);
    d.run(&["console", "sh1"])
        .assert_one_error_line("guest sh1 is stopped: it has no console");
}

/// A guest that keeps crashing is restarted by its policy, with back-off;
/// a stop ends that. An autostart guest is started by a daemon that
/// starts.
#[test]
fn restart_policy_and_autostart() {
    let mut d = Daemon::start("policy", &[]);
    let a = create_args(
        "crashy",
        "sleep 1; echo going-down",
        &["--net", "none", "--restart", "on-failure"],
    );
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    let i = a.iter().position(|x| *x == "--cmdline").unwrap();
    // The test init panics the kernel when its command is done.
    a[i + 1] = "quiet condo.end=panic -- \"sleep 1; echo going-down\"";
    d.ok(&a);
    d.wait_for("two automatic restarts", BOOT * 2, || {
        d.guest("crashy")["restarts"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(d.guest("crashy")["exit_status"], 2, "a guest panic");
    let ev = d.ok(&["events", "--since", "1h", "--no-follow"]);
    assert!(
        ev.contains("\"kind\":\"restart-scheduled\",\"detail\":\"in 2 s\""),
        "{ev}"
    );
    d.ok(&["stop", "crashy", "--timeout", "0"]);
    let r = d.guest("crashy")["restarts"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        d.guest("crashy")["restarts"].as_u64().unwrap(),
        r,
        "restarted after a stop"
    );
    assert!(matches!(
        d.state_of("crashy").as_str(),
        "stopped" | "crashed"
    ));
    create(
        &d,
        "auto",
        TICK,
        &["--net", "none", "--autostart", "--no-start"],
    );
    assert_eq!(d.state_of("auto"), "stopped");
    d.restart();
    d.wait_for("the autostart", BOOT, || d.state_of("auto") == "running");
    d.wait_console("auto", "tick 1", BOOT);
}

/// `condo exec` through the guest agent: output, errors and exit status
/// come back, input goes in, and a guest without a process refuses.
#[test]
fn exec_runs_commands_through_the_guest_agent() {
    let d = Daemon::start("exec", &[]);
    let a = create_args("x", "echo up", &["--net", "none"]);
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    let i = a.iter().position(|x| *x == "--cmdline").unwrap();
    a[i + 1] = "quiet condo.agent=1 condo.end=wait -- \"echo up\"";
    d.ok(&a);
    d.wait_console("x", "condo-guest: ready", BOOT);
    let o = d.run(&[
        "exec",
        "x",
        "--",
        "sh",
        "-c",
        "echo hello $((6*7)); echo oops >&2; exit 3",
    ]);
    assert_eq!(
        o.code,
        Some(3),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    assert_eq!(o.stdout, "hello 42\n");
    assert_eq!(o.stderr, "oops\n");
    let mut c = d.cmd(&["exec", "x", "--", "tr", "a-z", "A-Z"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("exec");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through the agent\n")
        .unwrap();
    let out = child.wait_with_output().expect("exec output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "THROUGH THE AGENT\n");
    d.run(&["exec", "x", "--", "/nonexistent"])
        .assert_one_error_line("/nonexistent");
    d.ok(&["stop", "x", "--timeout", "0"]);
    d.run(&["exec", "x", "--", "true"])
        .assert_one_error_line("guest x is stopped: exec needs a running guest");
}

/// Creates and deletes of booting guests from three clients at once.
#[test]
fn concurrent_creates_and_deletes_of_running_guests_stay_consistent() {
    let d = Daemon::start("busy", &["--cpu-overcommit", "32"]);
    std::thread::scope(|s| {
        for t in 0..3 {
            let d = &d;
            s.spawn(move || {
                for i in 0..4 {
                    let name = format!("b{}", (t + i) % 5);
                    if (t + i) % 2 == 0 {
                        let a = create_args(&name, TICK, &["--memory", "64"]);
                        let a: Vec<&str> = a.iter().map(String::as_str).collect();
                        let o = d.run(&a);
                        assert!(
                            o.code == Some(0) || o.stderr.contains("already exists"),
                            "{}",
                            o.stderr
                        );
                    } else {
                        let o = d.run(&["rm", "--force", &name]);
                        assert!(
                            o.code == Some(0)
                                || o.stderr.contains("no guest named")
                                || o.stderr.contains("is being created"),
                            "{}",
                            o.stderr
                        );
                    }
                }
            });
        }
    });
    assert_consistent(&d);
}

//! The host daemon with real guests (they need a KVM that boots Linux:
//! `scripts/test.sh` runs these in the nested test host, in one session):
//! the whole lifecycle through the CLI, limits enforced, guests reaching
//! each other and the host over the bridge (and beyond it through NAT; a clone
//! with its own address), a daemon SIGKILLed and started
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
    // An "uplink": a network namespace behind a veth pair, with no route
    // back to the guests' subnet, so only NAT gets a guest's packets
    // answered from there.
    let outside = Outside::new();
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
    // A guest reaches beyond the host through the daemon's NAT: the
    // outside sees the host's address, not the guest's.
    create(
        &d,
        "n",
        &format!(
            "until echo via-nat | nc -w 5 {} {}; do sleep 1; done; echo nat-ok",
            Outside::ADDR,
            Outside::PORT
        ),
        &[],
    );
    d.wait_console("n", "nat-ok", BOOT);
    let (peer, got) = outside.received();
    assert_eq!(got.trim(), "via-nat");
    assert_eq!(peer, Outside::HOST_ADDR, "not masqueraded");
    d.ok(&["rm", "--force", "n"]); // room for the clone below (admission)
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
    // A clone restored from a snapshot takes its own MAC, address and name
    // in the guest (through its agent), and both answer on the bridge.
    let a = create_args("s", "echo up", &[]);
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    let i = a.iter().position(|x| *x == "--cmdline").unwrap();
    a[i + 1] = "quiet condo.agent=1 condo.end=wait -- \"echo up\"";
    d.ok(&a);
    d.wait_console("s", "condo-guest: ready", BOOT);
    d.ok(&["snapshot", "s", "--as", "s-snap"]);
    d.ok(&["clone", "s-snap", "t"]);
    let (s_ip, t_ip) = (
        d.guest("s")["ip"].as_str().unwrap_or_default().to_string(),
        d.guest("t")["ip"].as_str().unwrap_or_default().to_string(),
    );
    assert_ne!(s_ip, t_ip);
    let addr = d.ok(&["exec", "t", "--", "ip", "-4", "addr", "show", "eth0"]);
    assert!(
        addr.contains(&format!("{t_ip}/")) && !addr.contains(&format!("{s_ip}/")),
        "the clone's eth0 (it should be {t_ip}):\n{addr}\nevents:\n{}",
        d.ok(&["events", "--since", "1h", "--no-follow"])
    );
    let link = d.ok(&["exec", "t", "--", "ip", "link", "show", "eth0"]);
    let t_mac = d.guest("t")["mac"].as_str().unwrap_or_default().to_string();
    assert!(
        link.contains(&t_mac),
        "the clone's MAC should be {t_mac}:\n{link}"
    );
    assert_eq!(d.ok(&["exec", "t", "--", "hostname"]).trim(), "t");
    for ip in [&s_ip, &t_ip] {
        let ok = std::process::Command::new("ping")
            .args(["-c", "1", "-W", "5", ip])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "the host cannot ping {ip} once the clone runs");
    }
    let ev = d.ok(&["events", "--since", "1h", "--no-follow"]);
    assert!(ev.contains("\"kind\":\"readdressed\""), "{ev}");
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
    // On a terminal: the command gets a pty of the terminal's size, and a
    // resize of the terminal (SIGWINCH) reaches it.
    let (master, slave) = open_pty(24, 80);
    let mut c = d.cmd(&[
        "exec",
        "x",
        "--",
        "sh",
        "-c",
        "stty size; read l; stty size; echo done",
    ]);
    let io = |f: &std::fs::File| std::process::Stdio::from(f.try_clone().expect("pty"));
    c.stdin(io(&slave)).stdout(io(&slave)).stderr(io(&slave));
    let mut child = common::KillOnDrop(c.spawn().expect("exec on a pty"));
    drop(slave);
    let mut seen = String::new();
    let mut m = master.try_clone().expect("pty");
    let mut read_until = |needle: &str, seen: &mut String| {
        let t0 = Instant::now();
        let mut buf = [0u8; 256];
        while !seen.contains(needle) {
            assert!(t0.elapsed() < BOOT, "no {needle:?} on the pty: {seen:?}");
            match m.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    };
    read_until("24 80", &mut seen);
    set_pty_size(&master, 40, 100);
    // SAFETY: a signal to our own child, still running.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGWINCH) };
    std::thread::sleep(Duration::from_secs(1));
    (&master).write_all(b"go\r").expect("pty");
    read_until("done", &mut seen);
    assert!(
        seen.contains("40 100"),
        "the resize did not reach the command: {seen:?}"
    );
    let _ = child.0.wait();
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

/// A new pseudo-terminal pair of `rows` x `cols`: (master, slave).
fn open_pty(rows: u16, cols: u16) -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new descriptors into m and s; the name and
    // termios are not asked for, the size is read from ws.
    let rc = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned by nothing else.
    unsafe { (std::fs::File::from_raw_fd(m), std::fs::File::from_raw_fd(s)) }
}

/// Resizes a pseudo-terminal through its master.
fn set_pty_size(master: &std::fs::File, rows: u16, cols: u16) {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer; the fd is open.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

/// A network namespace standing for the world beyond the host: a veth
/// pair, `HOST_ADDR` on the host's side, `ADDR` inside, and a TCP listener
/// on `ADDR:PORT` (a thread in that namespace) keeping what it is sent and
/// from whom.
struct Outside {
    ns: String,
    veth: String,
    got: std::sync::mpsc::Receiver<(String, String)>,
    ip: String,
}

impl Outside {
    const HOST_ADDR: &'static str = "198.51.100.1";
    const ADDR: &'static str = "198.51.100.2";
    const PORT: u16 = 6000;

    fn new() -> Self {
        let n = std::process::id() % 10000;
        let (ns, veth, peer) = (format!("ct-out-{n}"), format!("ctu{n}"), format!("cto{n}"));
        // iproute2's ip, not busybox's (which has no netns).
        let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .into_iter()
            .find(|p| {
                std::fs::canonicalize(p)
                    .is_ok_and(|c| c.file_name().is_some_and(|n| n != "busybox"))
            })
            .expect("iproute2's ip");
        // Each step through iproute2's ip directly (busybox's sh would run
        // its own applet for `ip`).
        for args in [
            format!("netns add {ns}"),
            format!("link add {veth} type veth peer name {peer}"),
            format!("link set {peer} netns {ns}"),
            format!("addr add {}/24 dev {veth}", Self::HOST_ADDR),
            format!("link set {veth} up"),
            format!("-n {ns} addr add {}/24 dev {peer}", Self::ADDR),
            format!("-n {ns} link set {peer} up"),
            format!("-n {ns} link set lo up"),
        ] {
            let st = std::process::Command::new(ip)
                .args(args.split_whitespace())
                .status()
                .expect("ip");
            assert!(st.success(), "ip {args}");
        }
        let (tx, got) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&path).expect("netns");
            // SAFETY: setns on an open namespace file; it moves only this
            // thread into the namespace.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let l = std::net::TcpListener::bind((Self::ADDR, Self::PORT)).expect("listen outside");
            let (mut c, peer) = l.accept().expect("accept outside");
            let mut got = String::new();
            let _ = c.read_to_string(&mut got);
            let _ = tx.send((peer.ip().to_string(), got));
        });
        Self {
            ns,
            veth,
            got,
            ip: ip.to_string(),
        }
    }

    /// The first connection's peer address and what it sent.
    fn received(&self) -> (String, String) {
        self.got
            .recv_timeout(BOOT)
            .expect("nothing reached the outside")
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.ip)
            .args(["link", "del", &self.veth])
            .status();
        let _ = std::process::Command::new(&self.ip)
            .args(["netns", "del", &self.ns])
            .status();
    }
}

/// Every `tick N` a console shows, in order.
fn ticks(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tick ")?.parse().ok())
        .collect()
}

/// A TCP port for a daemon's --peer-listen, different for each test.
fn peer_port(n: u16) -> u16 {
    17_000 + (std::process::id() % 4000) as u16 * 2 + n
}

/// Two daemons on one network (bridges joined, one subnet, the second
/// handing out .100 to .200 and listening for peers on TCP), with a
/// cluster key. Returns them, the join, the key file and the second's
/// peer address.
fn two_daemons(
    name: &str,
    port: u16,
) -> (
    Daemon,
    Daemon,
    daemon_support::JoinedBridges,
    std::path::PathBuf,
    String,
) {
    let dir = common::tempdir(&format!("{name}-key"));
    let key = daemon_support::key_file(&dir);
    let ks = key.to_str().expect("key path").to_owned();
    let a = Daemon::start(&format!("{name}-a"), &["--peer-key-file", &ks]);
    let range = format!("{p}.100-{p}.200", p = a.subnet_prefix);
    let listen = format!("127.0.0.1:{port}");
    let b = Daemon::start_sharing(
        &format!("{name}-b"),
        &a,
        &[
            "--address-range",
            &range,
            "--uid-base",
            "300000",
            "--peer-listen",
            &listen,
            "--peer-key-file",
            &ks,
        ],
    );
    let net = daemon_support::JoinedBridges::new(&a, &b);
    (a, b, net, key, format!("tcp:{listen}"))
}

#[test]
fn a_guest_moves_to_another_daemon_and_keeps_ticking() {
    let (a, b, _net, _key, to_b) = two_daemons("mig", peer_port(0));
    create(&a, "g1", TICK, &[]);
    a.wait_console("g1", "tick 2", BOOT);
    let (ip, mac) = {
        let g = a.guest("g1");
        (
            g["ip"].as_str().expect("ip").to_owned(),
            g["mac"].as_str().expect("mac").to_owned(),
        )
    };
    // Refused by the destination: a guest of that name is there.
    let args = create_args("g1", TICK, &["--no-start"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    b.ok(&args);
    a.run(&["migrate", "g1", "--to", &to_b])
        .assert_one_error_line("already exists here");
    assert_eq!(a.state_of("g1"), "running");
    b.ok(&["rm", "g1"]);
    // Failed half-way: at 1 MiB/s the guest's memory does not go in 2 s.
    // It runs on where it was, and the destination keeps nothing of it.
    a.run(&[
        "migrate",
        "g1",
        "--to",
        &to_b,
        "--bandwidth",
        "1",
        "--timeout",
        "2",
    ])
    .assert_one_error_line("runs here still");
    assert_eq!(a.state_of("g1"), "running");
    let t = last_tick(&a.console("g1")).unwrap_or(0);
    a.wait_for("g1 ticking on after the failed move", BOOT, || {
        last_tick(&a.console("g1")) > Some(t + 1)
    });
    b.wait_for("the destination's slot rolled back", BOOT, || {
        b.api("GET", "/guests", "").1 == "[]"
    });
    assert_consistent(&b);
    // The peer port wants the cluster key.
    let mut s = std::net::TcpStream::connect(to_b.trim_start_matches("tcp:")).expect("peer port");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("read");
    assert_eq!(&head, b"HTTP/1.1 401");
    // The move.
    let t_move = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let out = a.ok(&["migrate", "g1", "--to", &to_b]);
    eprintln!("{}", out.trim());
    assert!(
        out.contains("g1: moved to") && out.contains(&format!("running there, {ip}")),
        "{out}"
    );
    assert_eq!(a.state_of("g1"), "moved");
    assert_eq!(a.guest("g1")["moved_to"], to_b.as_str());
    let g = b.guest("g1");
    assert_eq!(g["state"], "running");
    assert_eq!(
        (g["ip"].as_str(), g["mac"].as_str()),
        (Some(ip.as_str()), Some(mac.as_str()))
    );
    assert!(b
        .ok(&["ls"])
        .lines()
        .any(|l| l.starts_with("g1 ") && l.contains("running")));
    // No gap: the destination's ticks follow the source's last (a line cut
    // by the hand-over may be lost: at most one number).
    let src = ticks(&a.console("g1"));
    let last_src = *src.last().expect("ticks on the source");
    b.wait_for("g1 ticking on the destination", BOOT, || {
        last_tick(&b.console("g1")) > Some(last_src + 2)
    });
    let dst = ticks(&b.console("g1"));
    assert!(
        dst[0] == last_src + 1 || dst[0] == last_src + 2,
        "source ended at tick {last_src}, destination began at {}",
        dst[0]
    );
    assert!(dst.windows(2).all(|w| w[1] == w[0] + 1), "{dst:?}");
    // Its address went with it: the host reaches it through the network.
    let pinged = (0..5).any(|_| {
        std::process::Command::new("ping")
            .args(["-c", "1", "-W", "3", &ip])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(pinged, "the host cannot ping {ip} after the move");
    // Its accounting goes on there, history included.
    let u: serde_json::Value =
        serde_json::from_str(&b.ok(&["usage", "show", "g1", "--since", "10m"])).expect("usage");
    let samples = u["samples"].as_array().expect("samples");
    assert!(
        samples.iter().any(|s| s["t_ms"].as_i64() < Some(t_move)),
        "no history from before the move: {u}"
    );
    assert!(b
        .ok(&["events", "--since", "1h", "--no-follow"])
        .contains("\"kind\":\"migrated-in\""));
    assert!(a
        .ok(&["events", "--since", "1h", "--no-follow"])
        .contains("\"kind\":\"moved\""));
    assert_consistent(&a);
    assert_consistent(&b);
    // The record here keeps the name until it is removed.
    a.run(&["start", "g1"]).assert_one_error_line("moved to");
    a.ok(&["rm", "g1"]);
    assert!(a.ok(&["ls"]).lines().count() == 1);
}

#[test]
fn plan_apply_moves_guests_between_daemons() {
    let (a, b, _net, key, to_b) = two_daemons("apply", peer_port(1));
    create(&a, "p1", TICK, &[]);
    create(&a, "p2", TICK, &[]);
    a.wait_console("p1", "tick 1", BOOT);
    a.wait_console("p2", "tick 1", BOOT);
    // The utilization trace, at 10 s: two intervals of each guest at least.
    let mut trace = String::new();
    a.wait_for("two intervals of usage", BOOT, || {
        trace = a.ok(&["usage", "export", "--interval", "10", "--since", "10m"]);
        ["p1,", "p2,"]
            .iter()
            .all(|g| trace.lines().filter(|l| l.starts_with(g)).count() >= 2)
    });
    // The planner replays 300 s intervals: the guests' minute of life is
    // relabelled, 10 s to 300 s.
    let relabelled: String = trace
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let f: Vec<&str> = l.split(',').collect();
            if i == 0 || f.len() != 5 {
                return format!("{l}\n");
            }
            let t: u64 = f[3].parse().expect("time_s");
            format!("{},{},{},{},{}\n", f[0], f[1], f[2], t * 30, f[4])
        })
        .collect();
    let dir = common::tempdir("apply-plan");
    let (tf, inv, plan) = (
        dir.join("trace.csv"),
        dir.join("hosts.json"),
        dir.join("plan.json"),
    );
    std::fs::write(&tf, relabelled).expect("trace");
    // p2 to the second daemon first: the planner then empties one host.
    a.ok(&["migrate", "p2", "--to", &to_b]);
    let host = |name: &str, daemon: &str| {
        format!(
            r#"{{"name": "{name}", "cores": 2, "mips_per_core": 2500, "ram_mb": 4096, "idle_watts": 50, "max_watts": 100, "daemon": "{daemon}"}}"#
        )
    };
    std::fs::write(
        &inv,
        format!(
            r#"{{"hosts": [{}, {}], "placement": {{"p1": "a", "p2": "b"}}}}"#,
            host("a", &format!("unix:{}", a.sock.display())),
            host("b", &to_b)
        ),
    )
    .expect("inventory");
    let plan_args = |c: &mut std::process::Command| {
        c.args(["plan", "--trace"])
            .arg(&tf)
            .arg("--inventory")
            .arg(&inv)
            .arg("--plan-out")
            .arg(&plan)
            .arg("--apply")
            .arg("--peer-key-file")
            .arg(&key);
    };
    let mut c = common::condo();
    plan_args(&mut c);
    let o = common::run(c, Duration::from_secs(600));
    assert_eq!(o.code, Some(0), "{}\n{}", o.stdout, o.stderr);
    eprintln!("{}", o.stdout);
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan).expect("plan")).expect("plan JSON");
    let moves = p["moves"].as_array().expect("moves");
    assert_eq!(moves.len(), 1, "{p}");
    let (g, to) = (
        moves[0]["guest"].as_str().expect("guest"),
        moves[0]["to"].as_str().expect("to"),
    );
    assert!(
        o.stdout.contains(&format!("move 1/1: {g} ")),
        "{}",
        o.stdout
    );
    // Both guests now on one daemon, running and ticking.
    let d = if to == "a" { &a } else { &b };
    for n in ["p1", "p2"] {
        assert_eq!(d.state_of(n), "running", "{n}");
        let t = last_tick(&d.console(n)).unwrap_or(0);
        d.wait_for(&format!("{n} ticking"), BOOT, || {
            last_tick(&d.console(n)) > Some(t)
        });
    }
    // The same plan again is stale: nothing moves, one line says why.
    let mut c = common::condo();
    plan_args(&mut c);
    common::run(c, Duration::from_secs(600)).assert_one_error_line("the plan is stale");
    assert_consistent(&a);
    assert_consistent(&b);
}

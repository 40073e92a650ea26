//! The agent binary and the client on this host, without a VM: the agent
//! serves a Unix socket (`condo-agent --unix`, its test mode) and the
//! client drives it as it would through vsock. Container setup and
//! power-off are off in that mode; the real-guest tests
//! (`condo/tests/agent.rs`) cover them.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::client::{Client, ClientError, Event, ExitStatus, Session};
use agent::proto::{host, GuestMsg, HostMsg, PROTOCOL_VERSION};
use agent::spec::{Process, Rlimit};

/// A `condo-agent --unix` of one test, killed when the test ends.
struct LocalAgent {
    child: Child,
    dir: PathBuf,
    client: Client,
}

impl LocalAgent {
    fn start(name: &str) -> LocalAgent {
        let dir = std::env::temp_dir().join(format!("condo-agent-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sock = dir.join("agent.sock");
        let log = std::fs::File::create(dir.join("agent.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_condo-agent"))
            .arg("--unix")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start condo-agent");
        let client = Client::unix(&sock).with_timeout(Duration::from_secs(10));
        let a = LocalAgent { child, dir, client };
        a.client
            .ping(Duration::from_secs(10))
            .expect("the agent answers");
        a
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(script: &str) -> Process {
    Process::command(["sh", "-c", script])
}

fn is_root() -> bool {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() == 0 }
}

/// The container's pids once there are at least `n`.
fn wait_for_pids(c: &Client, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = c.ps().expect("ps");
        if pids.len() >= n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} processes: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads events until the collected stdout contains `needle`.
fn read_until(s: &mut Session, out: &mut Vec<u8>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    while !String::from_utf8_lossy(out).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {:?}",
            String::from_utf8_lossy(out)
        );
        match s.next_event().expect("event") {
            Event::Stdout(d) | Event::Stderr(d) => out.extend_from_slice(&d),
            e => panic!(
                "{e:?} before {needle:?}; output {:?}",
                String::from_utf8_lossy(out)
            ),
        }
    }
}

#[test]
fn echo_hi_gives_its_output_and_exit_0() {
    let a = LocalAgent::start("echo");
    let o = a
        .client
        .run(&Process::command(["echo", "hi"]))
        .expect("run");
    assert_eq!(o.stdout, b"hi\n");
    assert_eq!(o.stderr, b"");
    assert_eq!(o.status, ExitStatus::Code(0));
    assert!(a.log().contains("started: echo hi"), "{}", a.log());
}

#[test]
fn exit_codes_and_signals_are_reported() {
    let a = LocalAgent::start("exit");
    let o = a
        .client
        .run(&sh("echo out; echo err >&2; exit 3"))
        .expect("run");
    assert_eq!(
        (o.stdout.as_slice(), o.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(o.status, ExitStatus::Code(3));
    let o = a.client.run(&sh("kill -KILL $$")).expect("run");
    assert_eq!(o.status, ExitStatus::Signal(9));
    assert_eq!(o.status.code(), 137);
}

#[test]
fn env_cwd_umask_rlimits_and_user_are_as_given() {
    let a = LocalAgent::start("spec");
    let mut p = sh("echo $FOO; pwd; umask; ulimit -n; ulimit -Hn; env | sort");
    p.env = vec!["FOO=bar baz".into(), "PATH=/usr/bin:/bin".into()];
    p.cwd = "/tmp".into();
    p.user.umask = Some(0o027);
    p.rlimits = vec![Rlimit {
        kind: "RLIMIT_NOFILE".into(),
        soft: 100,
        hard: 200,
    }];
    let o = a.client.run(&p).expect("run");
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..5],
        ["bar baz", "/tmp", "0027", "100", "200"],
        "{out}"
    );
    // Exactly the environment given (the shell adds PWD, SHLVL and _).
    let env: Vec<&str> = lines[5..]
        .iter()
        .copied()
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
        .collect();
    assert_eq!(env, ["FOO=bar baz", "PATH=/usr/bin:/bin"], "{out}");
    if !is_root() {
        eprintln!("skipping the user part: not root");
        return;
    }
    let mut p = sh("id -u; id -g; id -G; cat /proc/self/status | grep NoNewPrivs");
    p.user.uid = 1000;
    p.user.gid = 1001;
    p.user.additional_gids = vec![2000, 2001];
    p.no_new_privileges = true;
    let o = a.client.run(&p).expect("run");
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["1000", "1001", "1001 2000 2001"], "{out}");
    assert!(lines[3].ends_with("1"), "{out}");
}

#[test]
fn a_program_that_cannot_run_is_an_error_before_started() {
    let a = LocalAgent::start("noexec");
    let e = a
        .client
        .exec(&Process::command(["/nonexistent/prog"]))
        .expect_err("no such program");
    let ClientError::Agent(m) = &e else {
        panic!("{e}")
    };
    assert!(
        m.contains("cannot run /nonexistent/prog") && m.contains("No such file"),
        "{m}"
    );
    let mut p = Process::command(["true"]);
    p.cwd = "/nonexistent".into();
    assert!(matches!(a.client.exec(&p), Err(ClientError::Agent(_))));
    let e = a
        .client
        .exec(&Process::command(Vec::<String>::new()))
        .expect_err("no args");
    assert!(e.to_string().contains("args is empty"), "{e}");
    // And it still serves.
    assert_eq!(
        a.client
            .run(&Process::command(["true"]))
            .expect("run")
            .status,
        ExitStatus::Code(0)
    );
}

#[test]
fn stdin_is_piped_through() {
    let a = LocalAgent::start("stdin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let o = a
        .client
        .run_with_stdin(&Process::command(["cat"]), data.clone())
        .expect("run");
    assert_eq!(o.status, ExitStatus::Code(0));
    assert!(
        o.stdout == data,
        "cat gave back {} of {} bytes",
        o.stdout.len(),
        data.len()
    );
    // A process that reads nothing ends anyway.
    let o = a
        .client
        .run_with_stdin(&Process::command(["true"]), vec![0; 4 << 20])
        .expect("run");
    assert_eq!(o.status, ExitStatus::Code(0));
    // Large output in both streams at once.
    let o = a
        .client
        .run(&sh(
            "head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2",
        ))
        .expect("run");
    assert_eq!((o.stdout.len(), o.stderr.len()), (3_000_000, 2_000_000));
}

#[test]
fn a_terminal_has_the_size_given_resizes_and_echoes() {
    let a = LocalAgent::start("tty");
    let p = sh("stty size; tty; read line; stty size; echo got:$line").with_terminal(24, 80);
    let mut s = a.client.exec(&p).expect("exec");
    let mut out = Vec::new();
    read_until(&mut s, &mut out, "24 80");
    read_until(&mut s, &mut out, "/dev/pts/");
    s.resize(30, 100).expect("resize");
    s.write_stdin(b"hello\r").expect("stdin");
    read_until(&mut s, &mut out, "30 100");
    read_until(&mut s, &mut out, "got:hello");
    let text = String::from_utf8_lossy(&out).into_owned();
    // The line discipline echoed the input, and the terminal turns \n
    // into \r\n.
    assert!(text.contains("hello\r\n"), "{text:?}");
    loop {
        match s.next_event().expect("event") {
            Event::Exit(st) => {
                assert_eq!(st, ExitStatus::Code(0));
                break;
            }
            Event::Stdout(_) => {}
            e => panic!("{e:?}"),
        }
    }
}

#[test]
fn signals_reach_the_process_and_all_processes() {
    let a = LocalAgent::start("signal");
    let s = a
        .client
        .exec(&Process::command(["sleep", "30"]))
        .expect("exec");
    s.signal(15).expect("signal");
    assert_eq!(s.wait().expect("wait").status, ExitStatus::Signal(15));

    let s1 = a
        .client
        .exec(&Process::command(["sleep", "30"]))
        .expect("exec");
    let s2 = a.client.exec(&sh("sleep 30 & wait")).expect("exec");
    // The shell's sleep is listed too, once the shell has started it.
    let pids = wait_for_pids(&a.client, 3);
    assert!(
        pids.contains(&s1.pid()) && pids.contains(&s2.pid()),
        "{pids:?}"
    );
    a.client.signal_all(9).expect("signal all");
    assert_eq!(s1.wait().expect("wait").status, ExitStatus::Signal(9));
    assert_eq!(s2.wait().expect("wait").status, ExitStatus::Signal(9));
    assert!(a.client.ps().expect("ps").is_empty());
    // By pid, from another connection (as a runtime's `kill` command does);
    // only the container's processes.
    let s = a
        .client
        .exec(&Process::command(["sleep", "30"]))
        .expect("exec");
    a.client.signal(s.pid(), 2).expect("signal by pid");
    assert_eq!(s.wait().expect("wait").status, ExitStatus::Signal(2));
    let e = a
        .client
        .signal(std::process::id(), 9)
        .expect_err("not in the container");
    assert!(
        e.to_string().contains("not a process of the container"),
        "{e}"
    );
    // A bad signal number is refused, and reported as an event.
    let mut s = a
        .client
        .exec(&Process::command(["sleep", "30"]))
        .expect("exec");
    s.signal(99).expect("send");
    assert!(matches!(s.next_event(), Ok(Event::Error(m)) if m.contains("out of range")));
    s.signal(9).expect("signal");
    assert_eq!(s.wait().expect("wait").status, ExitStatus::Signal(9));
}

#[test]
fn two_processes_run_at_once() {
    let a = LocalAgent::start("two");
    let first = a.client.exec(&sh("read x; echo first:$x")).expect("exec");
    let second = a.client.exec(&sh("read x; echo second:$x")).expect("exec");
    assert_ne!(first.pid(), second.pid());
    // The second finishes while the first still waits for its input.
    second.write_stdin(b"b\n").expect("stdin");
    let o2 = second.wait().expect("wait");
    assert_eq!(o2.stdout, b"second:b\n");
    first.write_stdin(b"a\n").expect("stdin");
    let o1 = first.wait().expect("wait");
    assert_eq!(o1.stdout, b"first:a\n");
}

#[test]
fn hostile_messages_are_refused_and_the_agent_serves_on() {
    let a = LocalAgent::start("hostile");
    let mut c = a.client.connect().expect("connect");
    // A well-delimited frame of an unknown type, or with bad content: an
    // Error, and the connection goes on.
    c.send_raw(&[0, 0, 0, 1, 0x7f, 0]).expect("send");
    assert!(matches!(c.recv(), Ok(GuestMsg::Error(m)) if m.contains("unknown message type 0x7f")));
    for payload in [&b"{\"a\""[..], b"{\"args\":[\"\xff\"]}", b"[]", b""] {
        let mut bad = Vec::new();
        agent::proto::encode_frame(host::EXEC, payload, &mut bad);
        c.send_raw(&bad).expect("send");
        assert!(matches!(c.recv(), Ok(GuestMsg::Error(m)) if m.starts_with("bad Exec message")));
    }
    c.send_raw(&[0, 0, 0, 1, host::PING, 0]).expect("send");
    assert!(matches!(c.recv(), Ok(GuestMsg::Error(m)) if m.contains("carries no payload")));
    c.send(&HostMsg::Stdin(b"x".to_vec())).expect("send");
    assert!(matches!(c.recv(), Ok(GuestMsg::Error(m)) if m.contains("no process")));
    c.send(&HostMsg::Ping).expect("send");
    assert_eq!(c.recv().expect("pong"), GuestMsg::Pong);
    // A length over the limit: an Error, then the connection is closed.
    c.send_raw(&[0xff, 0xff, 0xff, 0xff, host::STDIN])
        .expect("send");
    assert!(matches!(c.recv(), Ok(GuestMsg::Error(m)) if m.contains("exceeds the limit")));
    assert!(matches!(c.recv(), Err(ClientError::Closed)));

    // Another version, and no hello: refused at once.
    let raw = |bytes: Vec<u8>| {
        let mut s =
            std::os::unix::net::UnixStream::connect(a.dir.join("agent.sock")).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        std::io::Write::write_all(&mut s, &bytes).expect("send");
        let mut back = Vec::new();
        s.read_to_end(&mut back).expect("read");
        let mut r = back.as_slice();
        let mut msgs = Vec::new();
        while let Some(f) = agent::proto::read_frame(&mut r).expect("frame") {
            msgs.push(GuestMsg::decode(&f).expect("decode"));
        }
        msgs
    };
    let msgs = raw(HostMsg::Hello(PROTOCOL_VERSION + 1).to_frame_bytes());
    assert_eq!(msgs[0], GuestMsg::Hello(PROTOCOL_VERSION));
    assert!(
        matches!(&msgs[1], GuestMsg::Error(m) if m.contains("protocol version 2 is not supported")),
        "{msgs:?}"
    );
    let msgs = raw(HostMsg::Ping.to_frame_bytes());
    assert!(
        matches!(&msgs[..], [GuestMsg::Error(m)] if m.contains("expected Hello first")),
        "{msgs:?}"
    );
    let msgs = raw(b"GET / HTTP/1.1\r\n\r\n".to_vec());
    assert!(
        matches!(&msgs[..], [GuestMsg::Error(m)] if m.contains("exceeds the limit")),
        "{msgs:?}"
    );
    // Setup is refused in test mode (it would change this host's root).
    let e = a
        .client
        .setup(&serde_json::from_str(r#"{"root":{"path":"/"}}"#).expect("setup"))
        .expect_err("setup");
    assert!(e.to_string().contains("test mode"), "{e}");

    let o = a
        .client
        .run(&Process::command(["echo", "still here"]))
        .expect("run");
    assert_eq!(o.stdout, b"still here\n");
}

#[test]
fn a_host_that_goes_away_leaves_the_agent_serving() {
    let a = LocalAgent::start("away");
    let s = a
        .client
        .exec(&Process::command(["sleep", "30"]))
        .expect("exec");
    let pid = s.pid();
    drop(s);
    let o = a
        .client
        .run(&Process::command(["echo", "hi"]))
        .expect("run");
    assert_eq!(o.stdout, b"hi\n");
    // The orphaned process still runs (its output goes nowhere) and is
    // part of the container.
    assert!(a.client.ps().expect("ps").contains(&pid));
    a.client.signal_all(9).expect("kill");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a.client.ps().expect("ps").is_empty() {
        assert!(Instant::now() < deadline, "the process was not reaped");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn shutdown_in_test_mode_ends_the_agent() {
    let mut a = LocalAgent::start("shutdown");
    a.client.shutdown().expect("shutdown");
    let status = a.child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}

//! The guest agent in real guests: condo boots the test initramfs with
//! `condo.agent=1` (the agent beside busybox's init) or with
//! `rdinit=/sbin/condo-agent` (the agent as the guest's init, as containers
//! run it), and the host drives it through the hybrid vsock socket with
//! `agent::client`. These need a KVM that can boot Linux: `scripts/test.sh`
//! runs them in the nested test host otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use agent::client::{Client, ClientError, Event, ExitStatus, Session};
use agent::proto::{host, GuestMsg, HostMsg};
use agent::spec::{ContainerSetup, Mount, Process, Root};
use common::{artifact, condo, tempdir, KillOnDrop};

/// From spawning condo to the agent answering; a nested test host can be
/// slow, and a guest still silent after this is stalled.
const BOOT: Duration = Duration::from_secs(60);

/// condo's guest kernel and the test initramfs.
const CONDO_KERNEL: (&str, &str) = ("CONDO_GUEST_VMLINUX", "CONDO_GUEST_INITRAMFS");

/// Debian's cloud kernel and the test initramfs with its modules.
const CLOUD_KERNEL: (&str, &str) = ("CONDO_CLOUD_KERNEL", "CONDO_CLOUD_INITRAMFS");

/// How long a powered-off guest's VMM may take to exit.
const EXIT: Duration = Duration::from_secs(30);

/// A running guest whose agent answers.
struct Vm {
    vmm: KillOnDrop,
    client: Client,
    dir: PathBuf,
}

impl Vm {
    /// Boots the test guest with `opts` on its command line (and `disk` as
    /// a virtio-blk disk), retrying a boot that stalls (the nested test
    /// host now and then stalls a guest, which no hardware KVM does).
    fn boot(name: &str, opts: &str, disk: Option<&Path>) -> Vm {
        Vm::boot_kernel(name, CONDO_KERNEL, opts, disk)
    }

    /// [`Vm::boot`] with another kernel and initramfs (the variables naming
    /// them).
    fn boot_kernel(name: &str, kernel: (&str, &str), opts: &str, disk: Option<&Path>) -> Vm {
        let dir = tempdir(name);
        for attempt in 1..=3 {
            let uds = dir.join("v.sock");
            let _ = std::fs::remove_file(&uds);
            let console = std::fs::File::create(dir.join("console.log")).expect("console log");
            let mut c = condo();
            c.args(["run", "--memory", "256", "--kernel"])
                .arg(artifact(kernel.0))
                .arg("--initrd")
                .arg(artifact(kernel.1))
                .arg("--vsock")
                .arg(format!("cid=3,socket={}", uds.display()))
                .arg("--cmdline")
                .arg(format!("console=ttyS0 panic=1 quiet {opts}"));
            if let Some(d) = disk {
                c.arg("--disk").arg(format!("path={}", d.display()));
            }
            let child = c
                .stdin(Stdio::null())
                .stdout(console.try_clone().expect("console"))
                .stderr(console)
                .spawn()
                .expect("spawn condo");
            let vm = Vm {
                vmm: KillOnDrop(child),
                client: Client::vsock(&uds),
                dir: dir.clone(),
            };
            match vm.client.ping(BOOT) {
                Ok(()) => return vm,
                Err(e) if attempt < 3 => {
                    eprintln!(
                        "warning: retrying a boot whose agent did not answer: {e}\nconsole:\n{}",
                        vm.console()
                    );
                }
                Err(e) => panic!("the agent never answered: {e}\nconsole:\n{}", vm.console()),
            }
        }
        unreachable!()
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    fn run(&self, p: &Process) -> agent::client::Output {
        self.client
            .run(p)
            .unwrap_or_else(|e| panic!("{:?}: {e}\nconsole:\n{}", p.args, self.console()))
    }

    /// Powers the guest off through the agent; condo must then exit 0.
    fn shutdown(mut self) {
        self.client.shutdown().expect("shutdown");
        let start = Instant::now();
        loop {
            if let Some(st) = self.vmm.0.try_wait().expect("wait") {
                assert_eq!(
                    st.code(),
                    Some(0),
                    "condo after power-off\n{}",
                    self.console()
                );
                return;
            }
            assert!(
                start.elapsed() < EXIT,
                "condo did not exit after the agent powered off\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn sh(script: &str) -> Process {
    Process::command(["sh", "-c", script])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Reads the session's output until it contains `needle`.
fn read_until(s: &mut Session, out: &mut Vec<u8>, needle: &str) {
    while !text(out).contains(needle) {
        match s.next_event() {
            Ok(Event::Stdout(d)) | Ok(Event::Stderr(d)) => out.extend_from_slice(&d),
            other => panic!("{other:?} before {needle:?}; output so far {:?}", text(out)),
        }
    }
}

/// The guest agent beside busybox's init: `echo hi`, exit codes, a signal
/// death as 128+N, environment, working directory and credentials as the
/// spec says, a program that does not exist; then power-off.
#[test]
fn agent_runs_processes_in_a_guest() {
    let vm = Vm::boot("agent-exec", "condo.agent=1 condo.end=wait", None);
    let o = vm.run(&Process::command(["echo", "hi"]));
    assert_eq!(
        (text(&o.stdout), o.status),
        ("hi\n".into(), ExitStatus::Code(0))
    );

    let o = vm.run(&sh("echo to-stderr >&2; exit 3"));
    assert_eq!(text(&o.stderr), "to-stderr\n");
    assert_eq!(o.status, ExitStatus::Code(3));
    let o = vm.run(&sh("kill -KILL $$"));
    assert_eq!((o.status, o.status.code()), (ExitStatus::Signal(9), 137));

    let mut p = sh("echo $GREETING; pwd; id -u; id -g; id -G; umask");
    p.env = vec!["GREETING=hello guest".into(), "PATH=/bin:/sbin".into()];
    p.cwd = "/tmp".into();
    p.user.uid = 1000;
    p.user.gid = 1001;
    p.user.additional_gids = vec![2000];
    p.user.umask = Some(0o077);
    let o = vm.run(&p);
    assert_eq!(
        text(&o.stdout).lines().collect::<Vec<_>>(),
        ["hello guest", "/tmp", "1000", "1001", "1001 2000", "0077"],
        "stderr: {}",
        text(&o.stderr)
    );

    let e = vm
        .client
        .exec(&Process::command(["/no/such/program"]))
        .expect_err("a missing program");
    assert!(
        matches!(&e, ClientError::Agent(m) if m.contains("No such file")),
        "{e}"
    );
    assert!(vm
        .console()
        .contains("condo-agent: listening on vsock port 1024"));
    vm.shutdown();
}

/// Input piped through `cat`; a terminal with the size given that a
/// Resize changes and that echoes input; a signal to a sleeping process;
/// two processes at once; Ps and a signal to all.
#[test]
fn agent_relays_stdin_terminals_and_signals() {
    let vm = Vm::boot("agent-io", "condo.agent=1 condo.end=wait", None);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let o = vm
        .client
        .run_with_stdin(&Process::command(["cat"]), data.clone())
        .expect("cat");
    assert_eq!(o.status, ExitStatus::Code(0));
    assert!(
        o.stdout == data,
        "cat returned {} of {} bytes",
        o.stdout.len(),
        data.len()
    );

    let p = sh("stty size; read line; stty size; echo got:$line").with_terminal(24, 80);
    let mut s = vm.client.exec(&p).expect("exec on a terminal");
    let mut out = Vec::new();
    read_until(&mut s, &mut out, "24 80");
    s.resize(40, 120).expect("resize");
    s.write_stdin(b"typed\r").expect("input");
    read_until(&mut s, &mut out, "got:typed");
    let t = text(&out);
    assert!(t.contains("40 120"), "{t:?}");
    assert!(t.contains("typed\r\n"), "input echoed: {t:?}");

    let sleeper = vm
        .client
        .exec(&Process::command(["sleep", "600"]))
        .expect("sleep");
    sleeper.signal(15).expect("SIGTERM");
    assert_eq!(sleeper.wait().expect("wait").status, ExitStatus::Signal(15));

    let first = vm.client.exec(&sh("read x; echo first:$x")).expect("first");
    let second = vm
        .client
        .exec(&sh("read x; echo second:$x"))
        .expect("second");
    second.write_stdin(b"2\n").expect("input");
    assert_eq!(second.wait().expect("second").stdout, b"second:2\n");
    first.write_stdin(b"1\n").expect("input");
    assert_eq!(first.wait().expect("first").stdout, b"first:1\n");

    let a = vm
        .client
        .exec(&Process::command(["sleep", "600"]))
        .expect("sleep");
    let b = vm.client.exec(&sh("sleep 600 & wait")).expect("sleep");
    // The shell's sleep is listed too, once the shell has started it.
    let start = Instant::now();
    let pids = loop {
        let pids = vm.client.ps().expect("ps");
        if pids.len() >= 3 || start.elapsed() > Duration::from_secs(20) {
            break pids;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        pids.contains(&a.pid()) && pids.contains(&b.pid()) && pids.len() >= 3,
        "{pids:?}"
    );
    vm.client.signal_all(9).expect("signal all");
    assert_eq!(a.wait().expect("wait").status.code(), 137);
    assert_eq!(b.wait().expect("wait").status.code(), 137);
    vm.shutdown();
}

/// Malformed host messages get an Error; the connection goes on while
/// frames are intact and is closed when they are not; the agent serves on.
#[test]
fn agent_refuses_hostile_messages_and_serves_on() {
    let vm = Vm::boot("agent-hostile", "condo.agent=1 condo.end=wait", None);
    let mut c = vm.client.connect().expect("connect");
    c.send_raw(&[0, 0, 0, 0, 0x6e]).expect("send");
    assert!(matches!(c.recv(), Ok(GuestMsg::Error(m)) if m.contains("unknown message type 0x6e")));
    let mut bad = Vec::new();
    agent::proto::encode_frame(host::EXEC, b"{\"args\": \"not a list\"}", &mut bad);
    c.send_raw(&bad).expect("send");
    assert!(matches!(c.recv(), Ok(GuestMsg::Error(m)) if m.starts_with("bad Exec message")));
    c.send(&HostMsg::Exec(Box::new(Process::command(["a\0b"]))))
        .expect("send");
    assert!(matches!(c.recv(), Ok(GuestMsg::Error(m)) if m.contains("NUL")));
    c.send(&HostMsg::Resize(agent::proto::WinSize { rows: 1, cols: 1 }))
        .expect("send");
    assert!(matches!(c.recv(), Ok(GuestMsg::Error(m)) if m.contains("no process")));
    c.send(&HostMsg::Ping).expect("send");
    assert_eq!(c.recv().expect("pong"), GuestMsg::Pong);
    c.send_raw(&[0x7f, 0, 0, 0, host::STDIN]).expect("send");
    assert!(matches!(c.recv(), Ok(GuestMsg::Error(m)) if m.contains("exceeds the limit")));
    assert!(matches!(c.recv(), Err(ClientError::Closed)));

    let o = vm.run(&Process::command(["echo", "still serving"]));
    assert_eq!(text(&o.stdout), "still serving\n");

    // A process of the guest reaching the agent through the vsock loopback
    // (CID 1) would run anything as root: refused.
    let mut p = sh("vsock connect 1 1024 < /dev/null");
    p.user.uid = 1000;
    let o = vm.run(&p);
    assert!(
        text(&o.stdout).contains("only the host (CID 2) may connect"),
        "{:?} {:?}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(vm.console().contains("refused a connection from CID 1"));
    assert!(vm.console().contains("condo-agent: refused a message"));
    vm.shutdown();
}

/// The agent as the guest's init (`rdinit=/sbin/condo-agent`) sets a
/// container up on an ext4 disk: its root, hostname, /proc, a /dev tmpfs
/// with devpts, a tmpfs, an inline /etc/hosts; mqueue (not in the guest
/// kernel) is reported skipped. Processes then run inside it, on pipes
/// and on a terminal.
#[test]
fn agent_sets_up_a_container_root() {
    let dir = tempdir("agent-root-image");
    let image = dir.join("root.ext4");
    std::fs::copy(artifact("CONDO_GUEST_ROOTFS"), &image).expect("copy the root image");
    let vm = Vm::boot("agent-container", "rdinit=/sbin/condo-agent", Some(&image));
    let mount = |dest: &str, kind: &str, options: &[&str]| Mount {
        destination: dest.into(),
        kind: Some(kind.into()),
        source: Some(kind.into()),
        options: options.iter().map(|s| s.to_string()).collect(),
        content: None,
    };
    let hosts = "127.0.0.1 localhost\n10.0.0.7 box1\n";
    let setup = ContainerSetup {
        root: Root {
            path: "/dev/vda".into(),
            readonly: false,
            fstype: None,
        },
        hostname: Some("box1".into()),
        mounts: vec![
            mount("/proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                ],
            ),
            mount("/dev/mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
            mount("/tmp", "tmpfs", &["nosuid", "nodev", "size=1m"]),
            Mount {
                destination: "/etc/hosts".into(),
                kind: Some("bind".into()),
                source: None,
                options: vec!["rbind".into(), "ro".into()],
                content: Some(hosts.into()),
            },
        ],
    };
    let report = vm
        .client
        .setup(&setup)
        .unwrap_or_else(|e| panic!("setup: {e}\nconsole:\n{}", vm.console()));
    assert_eq!(report.skipped, ["/dev/mqueue"]);

    let o = vm.run(&sh(
        "hostname; cat /etc/hosts; cat /proc/1/comm; \
         grep -E '^[^ ]+ /(tmp|dev|proc) ' /proc/mounts | cut -d' ' -f2,3 | sort; \
         ls /sbin; echo x > /dev/null && echo dev-null-ok; \
         echo hi > /etc/hosts || echo hosts-ro; touch /written && echo root-rw",
    ));
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "box1", "{out}\n{}", text(&o.stderr));
    assert_eq!(
        lines[1..3],
        ["127.0.0.1 localhost", "10.0.0.7 box1"],
        "{out}"
    );
    assert_eq!(lines[3], "condo-agent", "the agent is PID 1: {out}");
    assert_eq!(
        lines[4..7],
        ["/dev tmpfs", "/proc proc", "/tmp tmpfs"],
        "{out}"
    );
    assert!(
        out.contains("dev-null-ok") && out.contains("hosts-ro") && out.contains("root-rw"),
        "{out}"
    );

    let mut s = vm
        .client
        .exec(&sh("tty; stty size").with_terminal(33, 99))
        .expect("a terminal inside the container");
    let mut got = Vec::new();
    read_until(&mut s, &mut got, "33 99");
    assert!(text(&got).contains("/dev/pts/0"), "{:?}", text(&got));
    loop {
        match s.next_event().expect("event") {
            Event::Exit(st) => break assert_eq!(st, ExitStatus::Code(0)),
            Event::Stdout(_) => {}
            e => panic!("{e:?}"),
        }
    }
    // Nothing left running in the container (its /proc is the guest's).
    assert_eq!(vm.client.ps().expect("ps"), Vec::<u32>::new());
    let e = vm.client.setup(&setup).expect_err("a second setup");
    assert!(e.to_string().contains("once per VM"), "{e}");
    vm.shutdown();
}

/// Debian's unmodified cloud kernel, where vsock is a module: init.sh loads
/// the modules before it starts the agent.
#[test]
fn agent_runs_under_debian_cloud_kernel() {
    let vm = Vm::boot_kernel(
        "agent-cloud",
        CLOUD_KERNEL,
        "condo.agent=1 condo.end=wait",
        None,
    );
    let o = vm.run(&Process::command(["uname", "-r"]));
    assert!(text(&o.stdout).contains("cloud"), "{:?}", text(&o.stdout));
    assert_eq!(o.status, ExitStatus::Code(0));
    vm.shutdown();
}

//! Live migration between two condo processes: a ticking guest moves and
//! its counter goes on without a gap, and back again; a guest with an
//! ext4 disk and a TCP connection from the host moves and both carry on; a
//! guest dirtying memory converges; a destination killed in mid-transfer
//! leaves the guest running on the source; a hostile stream is refused.

use super::*;
use common::{api, api_within};

/// How long a migration may take in the nested test host.
const MIGRATION_LIMIT: Duration = Duration::from_secs(240);

/// Waits for a receiving VMM's socket file to appear (connecting to it
/// would be taken as the migration).
fn wait_for_listener(p: &Path) {
    let start = std::time::Instant::now();
    while !p.exists() {
        assert!(start.elapsed() < LIMIT, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Moves the guest of `src` (API socket `src_sock`) to a fresh condo
/// waiting in `dir` as `name`, over a Unix socket. Returns the destination
/// and the source's exit status.
fn migrate(dir: &Path, src: &mut LiveVm, src_sock: &Path, name: &str) -> (LiveVm, PathBuf) {
    let (dst, dst_sock) = api_vm(dir, name);
    let url = format!("unix:{}", dir.join(format!("{name}.migration")).display());
    let receive = {
        let (sock, body) = (
            dst_sock.clone(),
            serde_json::json!({ "receiver_url": url }).to_string(),
        );
        std::thread::spawn(move || {
            api_within(&sock, "PUT", "/migration/receive", &body, MIGRATION_LIMIT)
        })
    };
    let listen = dir.join(format!("{name}.migration"));
    wait_for_listener(&listen);
    let send = serde_json::json!({ "destination_url": url, "downtime_ms": 300 }).to_string();
    let (code, resp) = api_within(src_sock, "PUT", "/migration/send", &send, MIGRATION_LIMIT);
    assert_eq!(code, 204, "send: {resp}");
    let (code, resp) = receive.join().expect("receive thread");
    assert_eq!(code, 204, "receive: {resp}");
    let status = src.child.wait().expect("wait for the source");
    assert!(status.success(), "the source ends cleanly: {status}");
    (dst, dst_sock)
}

/// Every tick from 1 to the last printed by the VMs, in order, each once:
/// the guest's counter never skipped or repeated across the moves. The
/// consoles are read as one stream, as a user attached to the guest sees
/// it: a line the guest was printing when it moved ends on the next VMM.
fn assert_ticks_continue(vms: &[&LiveVm]) {
    let mut console = Vec::new();
    for vm in vms {
        console.extend_from_slice(&vm.raw.lock().expect("raw"));
    }
    let ticks: Vec<u64> = String::from_utf8_lossy(&console)
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("tick")?.parse::<u64>().ok())
        .collect();
    let want: Vec<u64> = (1..=ticks.len() as u64).collect();
    assert_eq!(ticks, want, "ticks across the migrations");
}

#[test]
fn migration_moves_a_ticking_guest_and_back() {
    let d = tempdir("migrate");
    let sock = d.join("a.sock");
    let mut c = guest(128, "", TICKER);
    c.arg("--api-sock").arg(&sock);
    let mut a = LiveVm::spawn(c);
    a.wait_until("ticks", LIMIT, |v| last_tick(v) >= 3);
    let (mut b, b_sock) = migrate(&d, &mut a, &sock, "b");
    let at = last_tick(&a);
    b.wait_until("the guest to tick on the destination", LIMIT, |v| {
        last_tick(v) >= at + 3
    });
    assert!(api(&b_sock, "GET", "/", "").1.contains("Running"));
    let m = api(&b_sock, "GET", "/metrics", "").1;
    assert!(m.contains("condo_migration_count"), "{m}");
    // And back again, to a third process.
    let (c2, _) = migrate(&d, &mut b, &b_sock, "c");
    let at = last_tick(&b);
    c2.wait_until("the guest to tick after the second move", LIMIT, |v| {
        last_tick(v) >= at + 3
    });
    assert_ticks_continue(&[&a, &b, &c2]);
}

/// A guest appending to a file on its ext4 root and answering a TCP
/// connection the host opened before the move: after it, the same
/// connection still answers, and the disk holds every line once and checks
/// clean.
#[test]
fn migration_keeps_disk_writes_and_a_tcp_connection() {
    use std::io::{BufRead, Write};
    let host = "169.254.79.1";
    make_tap("condotap3", host);
    let d = tempdir("migrate-dev");
    let root = d.join("rootfs.ext4");
    std::fs::copy(artifact("CONDO_GUEST_ROOTFS"), &root).unwrap();
    let cmd = "ip addr add 169.254.79.2/24 dev eth0; ip link set eth0 up; \
               (nc -l -p 7000 -e cat &); i=0; while true; do i=$((i+1)); \
               echo line$i >> /log; sync; echo tick$i; sleep 0.2; done";
    let sock = d.join("a.sock");
    let mut c = condo();
    c.args(["run", "--memory", "128", "--kernel"])
        .arg(vmlinux())
        .arg("--disk")
        .arg(format!("path={},root=on", root.display()))
        .args(["--net", "tap=condotap3,mac=06:00:ac:10:00:04"])
        .arg("--api-sock")
        .arg(&sock)
        .arg("--cmdline")
        .arg(format!(
            "console=ttyS0 panic=1 quiet init=/init -- \"{cmd}\""
        ));
    let mut a = LiveVm::spawn(c);
    a.wait_until("ticks", LIMIT, |v| last_tick(v) >= 3);
    let conn = (0..50)
        .find_map(|_| {
            std::net::TcpStream::connect(("169.254.79.2", 7000))
                .map_err(|_| std::thread::sleep(Duration::from_millis(200)))
                .ok()
        })
        .expect("connect to the guest");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut echo = |w: &std::net::TcpStream, msg: &str| {
        let mut w = w;
        writeln!(w, "{msg}").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).expect("the guest's echo");
        line.trim_end().to_owned()
    };
    assert_eq!(echo(&conn, "before"), "before");
    let (mut b, _) = migrate(&d, &mut a, &sock, "b");
    let at = last_tick(&a);
    b.wait_until("the guest to write on the destination", LIMIT, |v| {
        last_tick(v) >= at + 5
    });
    assert_eq!(echo(&conn, "after"), "after", "the connection survived");
    drop(conn);
    assert!(sigterm_and_wait(&mut b).success());
    assert_ticks_continue(&[&a, &b]);
    assert_image_clean(&root);
    let log = read_from_image(&root, "/log");
    let lines: Vec<&str> = log.lines().collect();
    let want: Vec<String> = (1..=lines.len()).map(|i| format!("line{i}")).collect();
    assert_eq!(lines, want, "the guest's log on disk");
    assert!(lines.len() as u64 >= last_tick(&b));
}

/// A guest writing 32 MiB of memory over and over at 24 MiB/s (faster than
/// the debug build sends in the test host) moves: auto-converge throttles
/// it until a pass fits, and it goes on.
#[test]
fn migration_of_a_guest_dirtying_memory_converges() {
    let d = tempdir("migrate-dirty");
    let sock = d.join("a.sock");
    let mut c = guest(256, "", "dirty 32 24");
    c.arg("--api-sock").arg(&sock);
    let mut a = LiveVm::spawn(c);
    a.wait_until("the dirtier to run", LIMIT, |v| v.count("dirty") >= 2);
    let (b, _) = migrate(&d, &mut a, &sock, "b");
    let before = b.count("dirty");
    b.wait_until("the dirtier to go on", LIMIT, |v| {
        v.count("dirty") >= before + 3
    });
}

/// The destination dies in the middle of the transfer: the send fails
/// with one clear error and the guest goes on ticking on the source.
#[test]
fn a_destination_killed_mid_transfer_leaves_the_guest_running() {
    let d = tempdir("migrate-kill");
    let sock = d.join("a.sock");
    // 96 MiB the guest has written: a transfer long enough to cut.
    let mut c = guest(256, "", &format!("dirty 96 0 & {TICKER}"));
    c.arg("--api-sock").arg(&sock);
    let a = LiveVm::spawn(c);
    a.wait_until("ticks", LIMIT, |v| last_tick(v) >= 5);
    let (mut b, b_sock) = api_vm(&d, "b");
    let url = format!("unix:{}", d.join("b.migration").display());
    let body = serde_json::json!({ "receiver_url": url }).to_string();
    let receive = std::thread::spawn(move || {
        api_within(&b_sock, "PUT", "/migration/receive", &body, MIGRATION_LIMIT)
    });
    wait_for_listener(&d.join("b.migration"));
    let send_sock = sock.clone();
    let send = std::thread::spawn(move || {
        let body = serde_json::json!({ "destination_url": url }).to_string();
        api_within(&send_sock, "PUT", "/migration/send", &body, MIGRATION_LIMIT)
    });
    std::thread::sleep(Duration::from_millis(300));
    b.child.kill().expect("kill the destination");
    let _ = b.child.wait();
    let _ = receive.join();
    let (code, resp) = send.join().expect("send thread");
    assert_eq!(code, 400, "{resp}");
    assert!(resp.contains("migration"), "{resp}");
    let at = last_tick(&a);
    a.wait_until("the guest to tick on at the source", LIMIT, |v| {
        last_tick(v) >= at + 3
    });
    assert!(api(&sock, "GET", "/", "").1.contains("Running"));
}

/// Garbage, and a stream cut after its hello, sent to a receiving VMM:
/// each is refused with a clear error, and the VMM can still be used.
#[test]
fn a_hostile_migration_stream_is_refused() {
    use std::io::Write;
    let d = tempdir("migrate-hostile");
    let (_b, b_sock) = api_vm(&d, "b");
    for garbage in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        b"CMIG\x01\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
    ] {
        let url = format!("unix:{}", d.join("b.migration").display());
        let (sock, body) = (
            b_sock.clone(),
            serde_json::json!({ "receiver_url": url }).to_string(),
        );
        let receive = std::thread::spawn(move || {
            api_within(&sock, "PUT", "/migration/receive", &body, MIGRATION_LIMIT)
        });
        wait_for_listener(&d.join("b.migration"));
        let mut s = std::os::unix::net::UnixStream::connect(d.join("b.migration")).unwrap();
        s.write_all(&garbage).unwrap();
        drop(s);
        let (code, resp) = receive.join().expect("receive thread");
        assert_eq!(code, 400, "{resp}");
        assert!(resp.contains("migration stream"), "{resp}");
    }
    assert!(api(&b_sock, "GET", "/", "").1.contains("Not started"));
}

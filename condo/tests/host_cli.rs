//! The host daemon without booting a guest (no KVM needed; the daemon
//! needs root): bad requests get a 400 (or 404, 405, 409) with a message,
//! admission control names its numbers, a second daemon on the same state
//! directory is refused, concurrent creates and deletes leave a consistent
//! database, a full state directory is a clear error with the database
//! intact, images and disks are copied and removed, the trace has the
//! planner's header. Guests are created stopped (`start: false`).

mod common;
mod daemon_support;

use std::time::Duration;

use common::{condo, run, tempdir};
use daemon_support::Daemon;

fn root_or_skip(name: &str) -> bool {
    if !common::is_root() {
        eprintln!("{name}: skipped, the daemon needs root");
        return false;
    }
    true
}

fn kernel(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("vmlinux");
    std::fs::write(&p, b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0").expect("write fake kernel");
    p
}

fn spec(name: &str, kernel: &std::path::Path, extra: &str) -> String {
    format!(
        r#"{{"name": "{name}", "kernel": "{}", "start": false{extra}}}"#,
        kernel.display()
    )
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no error message in {body:?}"))
}

#[test]
fn bad_requests_get_a_status_and_a_message() {
    if !root_or_skip("bad_requests") {
        return;
    }
    let d = Daemon::start("bad", &["--no-network"]);
    let k = kernel(&d.dir);
    let (st, body) = d.api("POST", "/guests", &spec("a", &k, ""));
    assert_eq!(st, 201, "{body}");
    let cases: Vec<(String, u16, &str)> = vec![
        (spec("a", &k, ""), 400, "a guest named \"a\" already exists"),
        (spec("b", &k, r#", "cpus": 2"#), 400, "unknown field `cpus`"),
        (
            spec("b", &k, r#", "vcpus": 0"#),
            400,
            "vcpus 0: between 1 and 32",
        ),
        (
            spec("b", &k, r#", "memory_mib": 1"#),
            400,
            "memory 1 MiB: between 16 MiB",
        ),
        (spec("b", &k, r#", "disk_mib": 0"#), 400, "disk 0 MiB"),
        (
            spec("b", &k, r#", "cpu_limit_pct": 500"#),
            400,
            "cpu limit 500 %",
        ),
        (spec("b", &k, r#", "cpuset": "x"#), 400, "request body"),
        (spec("b", &k, r#", "cpuset": "3-1""#), 400, "cpuset \"3-1\""),
        (spec("B_", &k, ""), 400, "guest name \"B_\""),
        (
            spec("b", std::path::Path::new("/nonexistent/k"), ""),
            400,
            "kernel /nonexistent/k: No such file",
        ),
        (
            spec("b", std::path::Path::new("rel/k"), ""),
            400,
            "give an absolute path",
        ),
        (spec("b", &d.dir, ""), 400, "not a regular file"),
        (
            r#"{"name": "b", "start": false}"#.into(),
            400,
            "give a kernel or an image",
        ),
        (
            r#"{"name": "b", "image": "nope", "start": false}"#.into(),
            400,
            "no image named \"nope\"",
        ),
        ("not json".into(), 400, "request body"),
        (spec("b", &k, r#", "net": true"#), 400, "without a network"),
    ];
    for (body, want, msg) in cases {
        let (st, resp) = d.api("POST", "/guests", &body);
        assert_eq!(st, want, "{body} -> {resp}");
        let e = error_of(&resp);
        assert!(e.contains(msg), "{body}: {e:?} lacks {msg:?}");
    }
    for (m, p, want) in [
        ("GET", "/guests/nope", 404),
        ("PUT", "/guests", 405),
        ("GET", "/nothing", 404),
        ("POST", "/guests/a/pause", 409),
        ("POST", "/guests/a/explode", 404),
        ("POST", "/guests/a/stop", 200),
        ("GET", "/guests/a/usage?since=yesterday", 400),
        ("GET", "/usage/trace?interval=0", 400),
        ("POST", "/snapshots/nope/clone", 400),
    ] {
        let (st, resp) = d.api(m, p, if m == "POST" { "{}" } else { "" });
        assert_eq!(st, want, "{m} {p} -> {resp}");
    }
    // The command line gives one error line for the same mistakes.
    let o = d.run(&[
        "create",
        "c",
        "--kernel",
        k.to_str().unwrap(),
        "--memory",
        "12x",
    ]);
    o.assert_one_error_line("size \"12x\"");
    let o = d.run(&[
        "create",
        "a",
        "--kernel",
        k.to_str().unwrap(),
        "--no-start",
        "--net",
        "none",
    ]);
    o.assert_one_error_line("a guest named \"a\" already exists");
    let o = d.run(&["start", "nope"]);
    o.assert_one_error_line("no guest named \"nope\"");
}

#[test]
fn admission_refuses_past_the_overcommit_and_names_the_numbers() {
    if !root_or_skip("admission") {
        return;
    }
    let d = Daemon::start(
        "admit",
        &[
            "--no-network",
            "--cpu-overcommit",
            "1",
            "--memory-overcommit",
            "0.5",
        ],
    );
    let k = kernel(&d.dir);
    let host: serde_json::Value = serde_json::from_str(&d.api("GET", "/host", "").1).unwrap();
    let cpus = host["cpus"].as_u64().unwrap();
    let mem = host["memory_mib"].as_u64().unwrap();
    let (st, body) = d.api(
        "POST",
        "/guests",
        &spec("big", &k, &format!(r#", "vcpus": {}"#, cpus + 1)),
    );
    assert_eq!(st, 400, "{body}");
    let e = error_of(&body);
    assert!(
        e.contains(&format!("would commit {} vCPUs", cpus + 1))
            && e.contains(&format!(
                "past the host's {cpus} ({cpus} CPUs x cpu_overcommit 1)"
            )),
        "{e}"
    );
    let half = mem / 2;
    let (st, body) = d.api(
        "POST",
        "/guests",
        &spec("m1", &k, &format!(r#", "memory_mib": {}"#, half - 100)),
    );
    assert_eq!(st, 201, "{body}");
    let (st, body) = d.api("POST", "/guests", &spec("m2", &k, r#", "memory_mib": 200"#));
    assert_eq!(st, 400, "{body}");
    let e = error_of(&body);
    assert!(
        e.contains(&format!("past the host's {half} MiB")) && e.contains("memory_overcommit 0.5"),
        "{e}"
    );
    let (st, _) = d.api("POST", "/guests", &spec("m3", &k, r#", "memory_mib": 64"#));
    assert_eq!(st, 201);
    let o = d.ok(&["host"]);
    assert!(o.contains("guests: 2"), "{o}");
}

#[test]
fn a_second_daemon_on_the_same_state_directory_is_refused() {
    if !root_or_skip("second daemon") {
        return;
    }
    let d = Daemon::start("second", &["--no-network"]);
    let mut c = condo();
    c.args(["daemon", "--no-network", "--state-dir"])
        .arg(&d.state)
        .arg("--listen")
        .arg(d.dir.join("other.sock"));
    let o = run(c, Duration::from_secs(30));
    o.assert_one_error_line(&format!(
        "another condo daemon (pid {}) uses state directory {}",
        d.pid(),
        d.state.display()
    ));
    // The first one still answers.
    assert_eq!(d.api("GET", "/", "").0, 200);
}

#[test]
fn disks_and_images_are_copied_and_removed() {
    if !root_or_skip("disks") {
        return;
    }
    let d = Daemon::start("disks", &["--no-network"]);
    let k = kernel(&d.dir);
    let rootfs = d.dir.join("rootfs.img");
    let mut img = vec![0u8; 1 << 20];
    img[..5].copy_from_slice(b"ROOT!");
    std::fs::write(&rootfs, &img).unwrap();
    d.ok(&[
        "image",
        "import",
        "base",
        "--kernel",
        k.to_str().unwrap(),
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--cmdline",
        "quiet",
    ]);
    let ls = d.ok(&["image", "ls"]);
    assert!(ls.contains("base") && ls.contains("quiet"), "{ls}");
    d.ok(&[
        "create",
        "g1",
        "--image",
        "base",
        "--disk",
        "8M",
        "--no-start",
        "--net",
        "none",
    ]);
    d.ok(&[
        "create",
        "g2",
        "--image",
        "base",
        "--no-start",
        "--net",
        "none",
        "--keep-disk",
    ]);
    let g1 = d.guest("g1");
    let id1 = g1["id"].as_i64().unwrap();
    let disk1 = d.state.join(format!("guests/{id1}/disk"));
    let bytes = std::fs::read(&disk1).unwrap();
    assert_eq!(&bytes[..5], b"ROOT!");
    assert_eq!(bytes.len(), 8 << 20, "grown to --disk");
    assert_eq!(g1["spec"]["cmdline"], "quiet");
    // The image is in use.
    let o = d.run(&["image", "rm", "base"]);
    o.assert_one_error_line("image base is used by guest g1");
    d.ok(&["rm", "g1"]);
    assert!(!disk1.exists(), "the disk goes with the guest");
    let id2 = d.guest("g2")["id"].as_i64().unwrap();
    d.ok(&["rm", "g2"]);
    let kept = d.state.join(format!("kept/g2-{id2}.disk"));
    assert!(kept.exists(), "--keep-disk keeps it in kept/");
    d.ok(&["image", "rm", "base"]);
    assert!(!d.state.join("images/base").exists());
    assert_eq!(d.guest_dirs(), Vec::<String>::new());
}

/// 100 requests from four clients at once, creates and deletes over the
/// same names: every answer is a success or a clear refusal, and what the
/// daemon lists is exactly what its database and state directory hold,
/// with no uid given twice.
#[test]
fn concurrent_creates_and_deletes_stay_consistent() {
    if !root_or_skip("concurrent") {
        return;
    }
    let d = Daemon::start("concurrent", &["--no-network", "--cpu-overcommit", "1000"]);
    let k = kernel(&d.dir);
    let statuses = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..4 {
            let (d, k, statuses) = (&d, &k, &statuses);
            s.spawn(move || {
                for i in 0..25 {
                    let name = format!("g{}", (i + t * 3) % 20);
                    let r = if (i + t) % 3 == 2 {
                        d.api("DELETE", &format!("/guests/{name}"), "")
                    } else {
                        d.api("POST", "/guests", &spec(&name, k, ""))
                    };
                    statuses.lock().unwrap().push(r);
                }
            });
        }
    });
    for (st, body) in statuses.into_inner().unwrap() {
        match st {
            201 | 204 => {}
            400 => assert!(error_of(&body).contains("already exists"), "{body}"),
            404 => assert!(error_of(&body).contains("no guest named"), "{body}"),
            // A delete that meets a create of the same name half-way.
            409 => assert!(error_of(&body).contains("is being created"), "{body}"),
            _ => panic!("unexpected answer {st}: {body}"),
        }
    }
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&d.api("GET", "/guests", "").1).unwrap();
    let mut ids: Vec<String> = list.iter().map(|g| g["id"].to_string()).collect();
    ids.sort();
    assert_eq!(ids, d.guest_dirs(), "directories match the database");
    let mut uids: Vec<u64> = list.iter().map(|g| g["uid"].as_u64().unwrap()).collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), list.len(), "a uid given twice");
    assert!(list.iter().all(|g| g["state"] == "stopped"));
    // The daemon restarted finds the same.
    let mut d = d;
    d.restart();
    let again: Vec<serde_json::Value> =
        serde_json::from_str(&d.api("GET", "/guests", "").1).unwrap();
    assert_eq!(again.len(), list.len());
}

/// A state directory on a small filesystem: the create that does not fit
/// gets a 507 that says the disk is full; the database stays intact and
/// answers; after a delete frees room, creates work again.
#[test]
fn a_full_state_directory_is_a_clear_error() {
    if !root_or_skip("disk full") {
        return;
    }
    let dir = tempdir("full");
    let state = dir.join("mnt");
    std::fs::create_dir_all(&state).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&state)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("a_full_state_directory: skipped, cannot mount a tmpfs");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _u = Unmount(state.clone());
    let d = Daemon::start_at("full", Some(&state), &["--no-network"]);
    let k = kernel(&d.dir);
    // Data that takes room (no holes).
    let rootfs = d.dir.join("rootfs.img");
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&rootfs, &data).unwrap();
    let mut made = Vec::new();
    let mut full = None;
    for i in 0..12 {
        let name = format!("f{i}");
        let body = spec(&name, &k, &format!(r#", "rootfs": "{}""#, rootfs.display()));
        let (st, resp) = d.api("POST", "/guests", &body);
        match st {
            201 => made.push(name),
            507 => {
                full = Some(error_of(&resp));
                break;
            }
            _ => panic!("unexpected {st}: {resp}"),
        }
    }
    let e = full.expect("the state directory never filled up");
    assert!(
        e.contains("disk is full") && e.contains("No space left"),
        "{e}"
    );
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&d.api("GET", "/guests", "").1).unwrap();
    let names: Vec<&str> = list.iter().filter_map(|g| g["name"].as_str()).collect();
    assert_eq!(names, made, "the failed create left nothing behind");
    assert_eq!(d.guest_dirs().len(), made.len());
    // Now fill it to the last byte: the database itself cannot write.
    let filler = state.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    use std::io::Write;
    while f.write_all(&[0xa5; 65536]).is_ok() {}
    drop(f);
    let (st, resp) = d.api("POST", "/guests", &spec("nofit", &k, ""));
    assert_eq!(st, 507, "{resp}");
    assert!(error_of(&resp).contains("disk is full"), "{resp}");
    std::fs::remove_file(&filler).unwrap();
    let (st, resp) = d.api("DELETE", &format!("/guests/{}", made[0]), "");
    assert_eq!(st, 204, "{resp}");
    let (st, resp) = d.api("POST", "/guests", &spec("fits", &k, ""));
    assert_eq!(st, 201, "{resp}");
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&d.api("GET", "/guests", "").1).unwrap();
    assert_eq!(list.len(), made.len(), "one deleted, one created");
    drop(d);
}

#[test]
fn the_trace_has_the_planners_header_and_the_client_explains_a_missing_daemon() {
    if !root_or_skip("trace") {
        return;
    }
    let d = Daemon::start("trace", &["--no-network"]);
    let t = d.ok(&["usage", "export", "--interval", "60"]);
    assert_eq!(t, "guest,vcpus,mem_mib,time_s,cpu_pct\n");
    let m = d.api("GET", "/metrics", "");
    assert_eq!(m.0, 200);
    assert!(m.1.contains("condo_host_cpus "), "{}", m.1);
    let mut c = condo();
    c.args(["ls", "--socket", "/nonexistent/condo.sock"]);
    run(c, Duration::from_secs(30))
        .assert_one_error_line("cannot reach the condo daemon at /nonexistent/condo.sock");
}

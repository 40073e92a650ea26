//! `condo run --image IMAGE [-- CMD...]`: a container image run without an
//! engine. The image is a local OCI layout (a directory with `index.json`
//! and `blobs/`) or an OCI archive of one (`podman save --format
//! oci-archive`, `skopeo copy ... oci-archive:`). [`prepare`] turns it into
//! what a VM needs: the root file system unpacked (layers in order, OCI
//! whiteouts applied) and made into an ext4 disk, and the process the image
//! describes (entrypoint and cmd, env, working directory, user); [`run`]
//! boots the VM with the runtime's kernel and agent initramfs and runs
//! that process through the agent, with this terminal or these streams.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::config::RuntimeConfig;
use crate::error::{Error, Logger, Result};
use crate::spec::{Process, Spec};

/// Largest JSON document of an image read (index, manifest, config).
const MAX_JSON: u64 = 4 << 20;

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
struct ImageConfig {
    #[serde(default)]
    config: ImageRunConfig,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ImageRunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// What an image becomes.
pub struct Prepared {
    /// The unpacked root file system (a directory under the work dir).
    pub rootfs: PathBuf,
    /// The process the image (and the command line) asks for.
    pub process: Process,
}

fn bad(image: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Other(format!("image {}: {msg}", image.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(image: &Path, p: &Path) -> Result<T> {
    use std::io::Read;
    let f = std::fs::File::open(p).map_err(|e| bad(image, format!("{}: {e}", p.display())))?;
    let mut buf = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut buf)
        .map_err(Error::path("read", p))?;
    if buf.len() as u64 > MAX_JSON {
        return Err(bad(image, format!("{} is too large", p.display())));
    }
    serde_json::from_slice(&buf).map_err(|e| bad(image, format!("{}: {e}", p.display())))
}

/// The blob of `digest` (`sha256:HEX`), checked to stay inside `layout`.
fn blob(image: &Path, layout: &Path, digest: &str) -> Result<PathBuf> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| bad(image, format!("bad digest {digest:?}")))?;
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric());
    if !ok(alg) || !ok(hex) {
        return Err(bad(image, format!("bad digest {digest:?}")));
    }
    Ok(layout.join("blobs").join(alg).join(hex))
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io(format!("run {what}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Other(format!(
            "{what} failed: {}",
            err.lines().last().unwrap_or("").trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Unpacks one layer into `root`: its whiteouts first (`.wh.NAME` removes
/// NAME, `.wh..wh..opq` empties its directory), then its files, then the
/// whiteout markers themselves (busybox's tar, the test host's, has no
/// `--exclude`).
fn apply_layer(root: &Path, layer: &Path) -> Result<()> {
    let z = compression(layer)?;
    let list = run_tool(Command::new("tar").args(z).arg("-tf").arg(layer), "tar")?;
    let mut markers = Vec::new();
    for entry in list.lines() {
        let entry = entry.trim_start_matches("./");
        let p = Path::new(entry);
        if p.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        }) {
            return Err(Error::Other(format!(
                "layer entry {entry:?} leaves the root"
            )));
        }
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let dir = root.join(p.parent().unwrap_or(Path::new("")));
        if name == ".wh..wh..opq" {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let _ = remove_any(&e.path());
                }
            }
            markers.push(root.join(p));
        } else if let Some(target) = name.strip_prefix(".wh.") {
            let _ = remove_any(&dir.join(target));
            markers.push(root.join(p));
        }
    }
    run_tool(
        Command::new("tar")
            .args(z)
            .arg("-xf")
            .arg(layer)
            .arg("-C")
            .arg(root)
            .arg("--numeric-owner"),
        "tar",
    )?;
    for m in markers {
        let _ = std::fs::remove_file(m);
    }
    Ok(())
}

/// tar's flag for a layer's compression, told by its first bytes (not
/// every tar detects it itself).
fn compression(layer: &Path) -> Result<&'static [&'static str]> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(layer)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(Error::path("read", layer))?;
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => &["-z"],
        [0xfd, b'7', b'z', b'X'] => &["-J"],
        [0x28, 0xb5, 0x2f, 0xfd] => {
            return Err(Error::Unsupported(format!(
                "layer {} is zstd-compressed (not supported yet)",
                layer.display()
            )))
        }
        _ => &[],
    })
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) => Err(e),
    }
}

/// A user name or id from the image (`uid[:gid]`, names looked up in the
/// image's /etc/passwd and /etc/group).
fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32)> {
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(rootfs.join(file)).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| {
                (
                    f.get(2).and_then(|v| v.parse().ok()).unwrap_or(0),
                    f.get(3).and_then(|v| v.parse().ok()).unwrap_or(0),
                )
            })
        })
    };
    let (u, g) = user
        .split_once(':')
        .map_or((user, None), |(u, g)| (u, Some(g)));
    let (uid, mut gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup("etc/passwd", u)
            .ok_or_else(|| Error::Other(format!("user {u:?} not found in the image")))?,
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(v) => v,
            Err(_) => lookup("etc/group", g)
                .map(|(id, _)| id)
                .ok_or_else(|| Error::Other(format!("group {g:?} not found in the image")))?,
        };
    }
    Ok((uid, gid))
}

/// Unpacks `image` into `work` and works out its process; `cmd`, when not
/// empty, replaces the image's cmd (as `podman run IMAGE CMD` does).
pub fn prepare(image: &Path, work: &Path, cmd: &[String]) -> Result<Prepared> {
    let layout = if image.is_dir() {
        image.to_path_buf()
    } else if image.is_file() {
        let l = work.join("layout");
        std::fs::create_dir_all(&l).map_err(Error::path("create", &l))?;
        run_tool(
            Command::new("tar").arg("-xf").arg(image).arg("-C").arg(&l),
            "tar",
        )?;
        l
    } else {
        return Err(bad(image, "not found"));
    };
    let index: Index = read_json(image, &layout.join("index.json"))?;
    let mut desc = index
        .manifests
        .into_iter()
        .next()
        .ok_or_else(|| bad(image, "index.json lists no manifest"))?;
    // A nested index (multi-platform): its first manifest.
    for _ in 0..4 {
        if !desc.media_type.contains("index") {
            break;
        }
        let inner: Index = read_json(image, &blob(image, &layout, &desc.digest)?)?;
        desc = inner
            .manifests
            .into_iter()
            .next()
            .ok_or_else(|| bad(image, "an index lists no manifest"))?;
    }
    let manifest: Manifest = read_json(image, &blob(image, &layout, &desc.digest)?)?;
    let config: ImageConfig = read_json(image, &blob(image, &layout, &manifest.config.digest)?)?;
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(Error::path("create", &rootfs))?;
    for l in &manifest.layers {
        apply_layer(&rootfs, &blob(image, &layout, &l.digest)?)?;
    }
    let c = config.config;
    let mut args = c.entrypoint.unwrap_or_default();
    if cmd.is_empty() {
        args.extend(c.cmd.unwrap_or_default());
    } else {
        args.extend(cmd.iter().cloned());
    }
    if args.is_empty() {
        return Err(bad(image, "no entrypoint or cmd, and none given"));
    }
    let mut env = c.env.unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let (uid, gid) = match c.user.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => resolve_user(&rootfs, u)?,
        None => (0, 0),
    };
    let mut process = Process {
        args,
        env,
        cwd: c
            .working_dir
            .filter(|w| w.starts_with('/'))
            .unwrap_or_else(|| "/".into()),
        ..Process::default()
    };
    process.user.uid = uid;
    process.user.gid = gid;
    process.validate()?;
    Ok(Prepared { rootfs, process })
}

/// Runs `image` in a VM of the runtime's configuration; the process's exit
/// code (1 with an error line when it could not run).
pub fn run(image: &Path, cmd: &[String], config_file: Option<&Path>) -> i32 {
    let logger = Logger {
        file: None,
        format: crate::error::LogFormat::Text,
    };
    let work = std::env::temp_dir().join(format!("condo-image-{}", std::process::id()));
    let result = run_in(image, cmd, config_file, &work, &logger);
    let _ = std::fs::remove_dir_all(&work);
    match result {
        Ok(code) => code,
        Err(e) => {
            logger.error(&e);
            1
        }
    }
}

fn run_in(
    image: &Path,
    cmd: &[String],
    config_file: Option<&Path>,
    work: &Path,
    logger: &Logger,
) -> Result<i32> {
    let config = RuntimeConfig::load(config_file)?;
    std::fs::create_dir_all(work).map_err(Error::path("create", work))?;
    let mut prepared = prepare(image, work, cmd)?;
    let interactive = std::io::stdin().is_terminal();
    prepared.process.terminal = interactive;
    if interactive {
        if let Some((rows, cols)) = crate::console::window_size(0) {
            prepared.process.console_size = Some(crate::spec::ConsoleSize {
                height: rows.into(),
                width: cols.into(),
            });
        }
        prepared.process.env.push("TERM=xterm".into());
    }
    let spec = Spec {
        process: Some(prepared.process.clone()),
        root: Some(crate::spec::Root {
            path: prepared.rootfs.display().to_string(),
            readonly: false,
        }),
        mounts: ["proc", "sysfs"]
            .iter()
            .map(|t| crate::spec::Mount {
                destination: if *t == "proc" { "/proc" } else { "/sys" }.into(),
                kind: Some((*t).into()),
                source: Some((*t).into()),
                options: Vec::new(),
            })
            .chain(std::iter::once(crate::spec::Mount {
                destination: "/dev/pts".into(),
                kind: Some("devpts".into()),
                source: Some("devpts".into()),
                options: vec!["newinstance".into(), "ptmxmode=0666".into()],
            }))
            .collect(),
        ..Spec::default()
    };
    let c = crate::state::Container::new(work, "vm")?;
    std::fs::create_dir_all(&c.dir).map_err(Error::path("create", &c.dir))?;
    let saved = crate::state::Saved {
        id: c.id.clone(),
        bundle: work.to_path_buf(),
        rootfs: prepared.rootfs.clone(),
        pid: std::process::id() as i32,
        pid_start: 0,
        created: crate::time::rfc3339_now(),
        status: crate::state::Status::Creating,
        annotations: Default::default(),
        backend: crate::state::Backend::Vm,
        vmm_pid: None,
        cgroups: Vec::new(),
    };
    c.save(&saved)?;
    let guest = crate::guest::vm::VmGuest::boot(&config, logger, &c, &saved, &spec)?;
    let dup = |fd: i32| -> Result<std::os::fd::OwnedFd> {
        // SAFETY: a borrowed standard descriptor, duplicated at once.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        b.try_clone_to_owned()
            .map_err(Error::io("duplicate a descriptor"))
    };
    let saved_termios = interactive.then(|| {
        // SAFETY: termios is plain data filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: stdin is a terminal; t is valid.
        unsafe { libc::tcgetattr(0, &mut t) };
        t
    });
    let io = if interactive {
        crate::guest::Io::Terminal(dup(0)?)
    } else {
        crate::guest::Io::Pipes {
            stdin: dup(0)?,
            stdout: dup(1)?,
            stderr: dup(2)?,
        }
    };
    use crate::guest::Guest;
    let result = guest.start(&prepared.process, io).and_then(|w| {
        let w2 = w.clone();
        crate::signals::forward_to(move |sig| {
            if sig == libc::SIGWINCH {
                if let Some((r, c)) = crate::console::window_size(0) {
                    let _ = w2.resize(r, c);
                }
            } else {
                let _ = w2.signal(sig, false);
            }
        });
        w.wait()
    });
    if let Some(t) = saved_termios {
        // SAFETY: restores the terminal attributes read above.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &t) };
    }
    let _ = guest.shutdown();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(p: &Path) -> String {
        let out = Command::new("sha256sum")
            .arg(p)
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("digest")
            .to_owned()
    }

    /// An OCI layout with two layers (the second deleting a file of the
    /// first), a config with entrypoint, cmd, env, workdir and user.
    #[test]
    fn a_layout_unpacks_with_whiteouts_and_its_process() {
        let base = std::env::temp_dir().join(format!("condo-oci-image-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let layout = base.join("layout");
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("mkdir");
        let l1 = base.join("l1");
        std::fs::create_dir_all(l1.join("etc")).expect("mkdir");
        std::fs::create_dir_all(l1.join("app")).expect("mkdir");
        std::fs::write(
            l1.join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
        )
        .expect("w");
        std::fs::write(l1.join("app/old"), "old").expect("w");
        let l2 = base.join("l2");
        std::fs::create_dir_all(l2.join("app")).expect("mkdir");
        std::fs::write(l2.join("app/.wh.old"), "").expect("w");
        std::fs::write(l2.join("app/new"), "new").expect("w");
        let mut digests = Vec::new();
        for (i, l) in [&l1, &l2].iter().enumerate() {
            let t = base.join(format!("layer{i}.tar"));
            // The second layer gzipped, as engines save them.
            let flags = if i == 1 { "-czf" } else { "-cf" };
            run_tool(
                Command::new("tar")
                    .arg(flags)
                    .arg(&t)
                    .arg("-C")
                    .arg(l)
                    .arg("."),
                "tar",
            )
            .expect("tar");
            let d = sha(&t);
            std::fs::rename(&t, blobs.join(&d)).expect("mv");
            digests.push(d);
        }
        let config = r#"{"config":{"Entrypoint":["/bin/run"],"Cmd":["--flag"],"Env":["A=1"],"WorkingDir":"/app","User":"app"}}"#;
        std::fs::write(base.join("c"), config).expect("w");
        let cd = sha(&base.join("c"));
        std::fs::rename(base.join("c"), blobs.join(&cd)).expect("mv");
        let manifest = format!(
            r#"{{"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{cd}"}},"layers":[{{"digest":"sha256:{}"}},{{"digest":"sha256:{}"}}]}}"#,
            digests[0], digests[1]
        );
        std::fs::write(base.join("m"), manifest).expect("w");
        let md = sha(&base.join("m"));
        std::fs::rename(base.join("m"), blobs.join(&md)).expect("mv");
        std::fs::write(
            layout.join("index.json"),
            format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{md}"}}]}}"#),
        )
        .expect("w");
        let work = base.join("work");
        let p = prepare(&layout, &work, &[]).expect("prepare");
        assert_eq!(p.process.args, ["/bin/run", "--flag"]);
        assert_eq!(p.process.cwd, "/app");
        assert_eq!((p.process.user.uid, p.process.user.gid), (1000, 1000));
        assert!(p.process.env.contains(&"A=1".to_owned()));
        assert!(p.process.env.iter().any(|e| e.starts_with("PATH=")));
        assert!(
            !p.rootfs.join("app/old").exists(),
            "the whiteout was not applied"
        );
        assert!(!p.rootfs.join("app/.wh.old").exists());
        assert_eq!(
            std::fs::read_to_string(p.rootfs.join("app/new")).expect("new"),
            "new"
        );
        // A command replaces cmd, not the entrypoint.
        let work2 = base.join("work2");
        let p = prepare(&layout, &work2, &["x".into()]).expect("prepare");
        assert_eq!(p.process.args, ["/bin/run", "x"]);
        // Digests cannot leave the layout.
        assert!(blob(&layout, &layout, "sha256:../../etc").is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}

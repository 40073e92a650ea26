//! `condo jail`: runs one VMM the way Firecracker's jailer does. As root it
//! prepares CHROOT_BASE/condo/ID/root holding only what this VM needs (the
//! `--file`s bind-mounted at their own paths, the device nodes KVM, TUN,
//! urandom and null, an empty /run for sockets), moves into new mount, PID,
//! IPC and UTS namespaces (and a network namespace when asked), joins a
//! cgroup with the given limits, pivots into the jail, closes every
//! inherited descriptor, sets rlimits, drops every capability and becomes
//! `--uid`/`--gid`. Then the VMM runs, PID 1 of its namespace; this process
//! waits for it, forwards SIGTERM/SIGINT/SIGHUP, removes the cgroup and
//! exits with its status.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{chown, DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use clap::Args;

#[derive(Args)]
pub struct JailArgs {
    /// The VM's id: names its jail directory and cgroup (letters, digits
    /// and '-', at most 64).
    #[arg(long)]
    id: String,
    /// The unprivileged user the VMM runs as.
    #[arg(long)]
    uid: u32,
    /// The unprivileged group the VMM runs as.
    #[arg(long)]
    gid: u32,
    /// Where jails live: the VMM's root is CHROOT_BASE_DIR/condo/ID/root.
    #[arg(long, default_value = "/srv/jailer")]
    chroot_base_dir: PathBuf,
    /// A host file or directory the VM needs (kernel, initrd, disk image),
    /// bind-mounted at the same path inside the jail. Repeat for more. It
    /// must be readable (disks: writable) by --uid/--gid.
    #[arg(long = "file", value_name = "PATH")]
    files: Vec<PathBuf>,
    /// A host file or directory bind-mounted at another path inside the
    /// jail: JAIL_PATH=HOST_PATH (e.g. /vm/disk=/var/lib/condo/guests/7/disk),
    /// so that every guest sees the same paths. Repeat for more.
    #[arg(long = "file-at", value_name = "JAIL_PATH=HOST_PATH")]
    files_at: Vec<String>,
    /// Hold the VMM's console: its standard input and output become a
    /// pseudo-terminal that this process keeps, serving it on this Unix
    /// socket (mode 0600) to any number of clients, each first sent the
    /// most recent output (64 KiB). The console outlives whoever started
    /// the jail.
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// With --console-socket: also append the console output to this file
    /// (the previous 1 MiB kept as PATH.1).
    #[arg(long, value_name = "PATH", requires = "console_socket")]
    console_log: Option<PathBuf>,
    /// Write the VMM's exit status (a number and a newline) to this file
    /// when it ends, so that a process that is not the jail's parent can
    /// learn how the VM ended.
    #[arg(long, value_name = "PATH")]
    exit_file: Option<PathBuf>,
    /// Join this network namespace (e.g. /var/run/netns/NAME) for TAPs.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// Run in a new, empty network namespace.
    #[arg(long, conflicts_with = "netns")]
    new_netns: bool,
    /// A cgroup limit FILE=VALUE, e.g. cpu.max="50000 100000",
    /// memory.max=536870912 (v2) or cpu.cfs_quota_us=50000 (v1). Repeat.
    #[arg(long = "cgroup", value_name = "FILE=VALUE")]
    cgroups: Vec<String>,
    /// cgroup version: 2 where the unified hierarchy has the controller,
    /// else 1, unless given.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    cgroup_version: Option<u8>,
    /// The cgroup under which ID's cgroup is made.
    #[arg(long, default_value = "condo")]
    parent_cgroup: String,
    /// A resource limit: no-file=N (default 2048) or fsize=BYTES. Repeat.
    #[arg(long = "resource-limit", value_name = "NAME=N")]
    resource_limits: Vec<String>,
    /// The condo command to run inside the jail: `-- run ...`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// What went wrong setting up the jail; one line each.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: {0}")]
    Invalid(String),
    #[error("jail: {what}: {err}")]
    Os { what: String, err: io::Error },
}

fn os(what: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
    let what = what.into();
    move |err| JailError::Os { what, err }
}

fn check(rc: libc::c_int, what: impl Into<String>) -> Result<(), JailError> {
    if rc < 0 {
        Err(os(what)(io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| JailError::Invalid(format!("{} has a NUL byte", p.display())))
}

/// A cgroup limit to apply.
struct CgroupSetting {
    controller: String,
    file: String,
    value: String,
}

fn parse_cgroup(s: &str) -> Result<CgroupSetting, JailError> {
    let bad = || {
        JailError::Invalid(format!(
            "--cgroup {s:?}: expected FILE=VALUE like memory.max=512M"
        ))
    };
    let (file, value) = s.split_once('=').ok_or_else(bad)?;
    let (controller, rest) = file.split_once('.').ok_or_else(bad)?;
    if controller.is_empty()
        || rest.is_empty()
        || !file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
    {
        return Err(bad());
    }
    Ok(CgroupSetting {
        controller: controller.to_owned(),
        file: file.to_owned(),
        value: value.to_owned(),
    })
}

fn parse_rlimit(s: &str) -> Result<(libc::__rlimit_resource_t, u64), JailError> {
    let bad = || {
        JailError::Invalid(format!(
            "--resource-limit {s:?}: expected no-file=N or fsize=BYTES"
        ))
    };
    let (name, v) = s.split_once('=').ok_or_else(bad)?;
    let v: u64 = v.parse().map_err(|_| bad())?;
    match name {
        "no-file" => Ok((libc::RLIMIT_NOFILE, v)),
        "fsize" => Ok((libc::RLIMIT_FSIZE, v)),
        _ => Err(bad()),
    }
}

/// `JAIL_PATH=HOST_PATH` of `--file-at`: the jail path is absolute and
/// has no '='; the host path is the rest.
fn parse_file_at(s: &str) -> Result<(PathBuf, PathBuf), JailError> {
    match s.split_once('=') {
        Some((at, src)) if at.starts_with('/') && !src.is_empty() => {
            Ok((PathBuf::from(at), PathBuf::from(src)))
        }
        _ => Err(JailError::Invalid(format!(
            "--file-at {s:?}: expected JAIL_PATH=HOST_PATH with an absolute JAIL_PATH"
        ))),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Where `path` (absolute) appears under `root`.
fn inside(root: &Path, path: &Path) -> Result<PathBuf, JailError> {
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(JailError::Invalid(format!(
            "--file {}: give an absolute path without '.' or '..'",
            path.display()
        )));
    }
    Ok(root.join(path.strip_prefix("/").unwrap_or(path)))
}

/// The checked plan: everything is validated before anything is changed.
struct Plan {
    root: PathBuf,
    uid: u32,
    gid: u32,
    files: Vec<(PathBuf, PathBuf)>,
    netns: Option<PathBuf>,
    new_netns: bool,
    cgroups: Vec<CgroupDir>,
    cgroup_settings: Vec<(PathBuf, CgroupSetting)>,
    rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    hostname: String,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroups to join, and each setting with its cgroup directory.
type CgroupPlan = (Vec<CgroupDir>, Vec<(PathBuf, CgroupSetting)>);

/// A cgroup the VMM joins.
struct CgroupDir {
    dir: PathBuf,
    /// In the unified (v2) hierarchy, where `controllers` must be enabled
    /// on the way down.
    v2: bool,
    controllers: Vec<String>,
}

fn cgroup_dirs(a: &JailArgs, settings: Vec<CgroupSetting>) -> Result<CgroupPlan, JailError> {
    if !a
        .parent_cgroup
        .split('/')
        .all(|p| !p.is_empty() && p != ".." && p != ".")
    {
        return Err(JailError::Invalid(format!(
            "--parent-cgroup {:?} is not a relative cgroup path",
            a.parent_cgroup
        )));
    }
    let unified = Path::new(CGROUP_ROOT);
    let v2_has = |c: &str| {
        fs::read_to_string(unified.join("cgroup.controllers"))
            .map(|s| s.split_whitespace().any(|x| x == c))
            .unwrap_or(false)
    };
    let mut dirs: Vec<CgroupDir> = Vec::new();
    let mut out = Vec::new();
    for s in settings {
        let v2 = match a.cgroup_version {
            Some(v) => v == 2,
            None => v2_has(&s.controller),
        };
        let base = if v2 {
            if !v2_has(&s.controller) {
                return Err(JailError::Invalid(format!(
                    "cgroup v2 at {CGROUP_ROOT} has no {} controller",
                    s.controller
                )));
            }
            unified.to_path_buf()
        } else {
            let b = unified.join(&s.controller);
            if !b.join("cgroup.procs").exists() {
                return Err(JailError::Invalid(format!(
                    "no cgroup v1 hierarchy for {} at {}",
                    s.controller,
                    b.display()
                )));
            }
            b
        };
        let dir = base.join(&a.parent_cgroup).join(&a.id);
        match dirs.iter_mut().find(|d| d.dir == dir) {
            Some(d) if !d.controllers.contains(&s.controller) => {
                d.controllers.push(s.controller.clone())
            }
            Some(_) => {}
            None => dirs.push(CgroupDir {
                dir: dir.clone(),
                v2,
                controllers: vec![s.controller.clone()],
            }),
        }
        out.push((dir, s));
    }
    Ok((dirs, out))
}

fn plan(a: &JailArgs) -> Result<Plan, JailError> {
    if !valid_id(&a.id) {
        return Err(JailError::Invalid(format!(
            "--id {:?}: use letters, digits and '-' (at most 64)",
            a.id
        )));
    }
    if a.uid == 0 || a.gid == 0 {
        return Err(JailError::Invalid(
            "--uid and --gid must name an unprivileged user and group, not root".into(),
        ));
    }
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::Invalid(
            "needs root: it makes namespaces, mounts and device nodes, then drops to --uid/--gid"
                .into(),
        ));
    }
    let root = a.chroot_base_dir.join("condo").join(&a.id).join("root");
    let mut files = Vec::new();
    for f in &a.files {
        fs::metadata(f).map_err(os(format!("--file {}", f.display())))?;
        files.push((f.clone(), inside(&root, f)?));
    }
    for spec in &a.files_at {
        let (at, src) = parse_file_at(spec)?;
        fs::metadata(&src).map_err(os(format!("--file-at {}", src.display())))?;
        files.push((src, inside(&root, &at)?));
    }
    let settings = a
        .cgroups
        .iter()
        .map(|s| parse_cgroup(s))
        .collect::<Result<Vec<_>, _>>()?;
    let (cgroups, cgroup_settings) = cgroup_dirs(a, settings)?;
    let mut rlimits = vec![(libc::RLIMIT_NOFILE, 2048)];
    for r in &a.resource_limits {
        let (res, v) = parse_rlimit(r)?;
        rlimits.retain(|(x, _)| *x != res);
        rlimits.push((res, v));
    }
    if let Some(n) = &a.netns {
        fs::metadata(n).map_err(os(format!("--netns {}", n.display())))?;
    }
    Ok(Plan {
        root,
        uid: a.uid,
        gid: a.gid,
        files,
        netns: a.netns.clone(),
        new_netns: a.new_netns,
        cgroups,
        cgroup_settings,
        rlimits,
        hostname: a.id.clone(),
    })
}

/// Device nodes of the jail: name, major, minor, mode, owned by the VMM.
const NODES: &[(&str, u32, u32, u32, bool)] = &[
    ("dev/kvm", 10, 232, 0o660, true),
    ("dev/net/tun", 10, 200, 0o660, true),
    ("dev/urandom", 1, 9, 0o666, false),
    ("dev/null", 1, 3, 0o666, false),
];

/// Builds the jail directory (on the host, before any namespace).
fn prepare_root(p: &Plan) -> Result<(), JailError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true).mode(0o755);
    for d in ["dev/net", "run"] {
        let d = p.root.join(d);
        b.create(&d).map_err(os(format!("mkdir {}", d.display())))?;
    }
    // The VMM creates its sockets in /run.
    let run = p.root.join("run");
    chown(&run, Some(p.uid), Some(p.gid)).map_err(os(format!("chown {}", run.display())))?;
    for &(name, major, minor, mode, owned) in NODES {
        let path = p.root.join(name);
        let _ = fs::remove_file(&path);
        let c = cstr(&path)?;
        // SAFETY: a NUL-terminated path; a character device node.
        let rc = unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFCHR | mode,
                libc::makedev(major, minor),
            )
        };
        check(rc, format!("mknod {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(os(format!("chmod {}", path.display())))?;
        if owned {
            chown(&path, Some(p.uid), Some(p.gid))
                .map_err(os(format!("chown {}", path.display())))?;
        }
    }
    // Mount points for the bind-mounted files.
    for (src, dst) in &p.files {
        if let Some(parent) = dst.parent() {
            b.create(parent)
                .map_err(os(format!("mkdir {}", parent.display())))?;
        }
        if src.is_dir() {
            b.create(dst)
                .map_err(os(format!("mkdir {}", dst.display())))?;
        } else if !dst.exists() {
            fs::File::create(dst).map_err(os(format!("create {}", dst.display())))?;
        }
    }
    Ok(())
}

fn setup_cgroups(p: &Plan) -> Result<(), JailError> {
    for c in &p.cgroups {
        if c.v2 {
            let enable: Vec<String> = c.controllers.iter().map(|x| format!("+{x}")).collect();
            let mut at = PathBuf::from(CGROUP_ROOT);
            for part in c
                .dir
                .strip_prefix(CGROUP_ROOT)
                .unwrap_or(&c.dir)
                .components()
            {
                fs::write(at.join("cgroup.subtree_control"), enable.join(" ")).map_err(os(
                    format!("enable {} in {}", c.controllers.join(","), at.display()),
                ))?;
                at.push(part);
                fs::create_dir_all(&at).map_err(os(format!("mkdir {}", at.display())))?;
            }
        } else {
            fs::create_dir_all(&c.dir).map_err(os(format!("mkdir {}", c.dir.display())))?;
            // v1 cpuset: a new cgroup starts with no CPUs or memory nodes.
            if c.controllers.iter().any(|x| x == "cpuset") {
                inherit_cpuset(&c.dir)?;
            }
        }
    }
    for (dir, s) in &p.cgroup_settings {
        let f = dir.join(&s.file);
        fs::write(&f, &s.value).map_err(os(format!("cgroup {}={}", s.file, s.value)))?;
    }
    for c in &p.cgroups {
        fs::write(c.dir.join("cgroup.procs"), "0")
            .map_err(os(format!("join cgroup {}", c.dir.display())))?;
    }
    Ok(())
}

fn inherit_cpuset(dir: &Path) -> Result<(), JailError> {
    let mut chain = Vec::new();
    let mut d = dir.to_path_buf();
    while d.starts_with(Path::new(CGROUP_ROOT).join("cpuset")) {
        chain.push(d.clone());
        if !d.pop() {
            break;
        }
    }
    chain.reverse();
    for w in chain.windows(2) {
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let cur = fs::read_to_string(w[1].join(f)).unwrap_or_default();
            if cur.trim().is_empty() {
                let v = fs::read_to_string(w[0].join(f)).map_err(os(format!("read {f}")))?;
                fs::write(w[1].join(f), v.trim()).map_err(os(format!("write {f}")))?;
            }
        }
    }
    Ok(())
}

fn mount(src: &Path, dst: &Path, flags: libc::c_ulong) -> Result<(), JailError> {
    let (s, d) = (cstr(src)?, cstr(dst)?);
    // SAFETY: NUL-terminated paths; no filesystem type or data.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    check(rc, format!("mount {} on {}", src.display(), dst.display()))
}

/// In the new namespaces: mounts, pivot_root, descriptors, limits, user.
fn enter(p: &Plan) -> Result<(), JailError> {
    // SAFETY: plain system calls with constant or checked arguments.
    unsafe {
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL),
            "PR_SET_PDEATHSIG",
        )?;
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "make / private",
        )?;
    }
    setup_cgroups(p)?;
    mount(&p.root, &p.root, libc::MS_BIND | libc::MS_REC)?;
    for (src, dst) in &p.files {
        mount(src, dst, libc::MS_BIND | libc::MS_REC)?;
    }
    change_root(&p.root)?;
    // SAFETY: a buffer of the given length.
    unsafe {
        check(
            libc::sethostname(p.hostname.as_ptr().cast(), p.hostname.len()),
            "sethostname",
        )?;
        // Every inherited descriptor but stdin, stdout and stderr.
        check(
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) as i32,
            "close inherited descriptors",
        )?;
    }
    for &(res, v) in &p.rlimits {
        let l = libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        };
        // SAFETY: a valid rlimit.
        check(unsafe { libc::setrlimit(res, &l) }, "setrlimit")?;
    }
    drop_privileges(p.uid, p.gid)
}

/// Makes `root` this mount namespace's root: pivot_root, and the old root
/// unmounted. A host running from its initramfs (rootfs cannot be pivoted
/// away from) gets the jail moved over / and chroot instead; with every
/// capability dropped afterwards, neither can be undone.
fn change_root(root: &Path) -> Result<(), JailError> {
    let old = root.join("old_root");
    fs::create_dir_all(&old).map_err(os("mkdir old_root"))?;
    let (root_c, old_c) = (cstr(root)?, cstr(&old)?);
    // SAFETY: NUL-terminated paths.
    unsafe {
        if libc::syscall(libc::SYS_pivot_root, root_c.as_ptr(), old_c.as_ptr()) == 0 {
            check(libc::chdir(c"/".as_ptr()), "chdir /")?;
            check(
                libc::umount2(c"/old_root".as_ptr(), libc::MNT_DETACH),
                "unmount the old root",
            )?;
            return fs::remove_dir("/old_root").map_err(os("rmdir /old_root"));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(os("pivot_root")(err));
        }
        let _ = fs::remove_dir(&old);
        check(libc::chdir(root_c.as_ptr()), "chdir into the jail")?;
        check(
            libc::mount(
                c".".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_MOVE,
                std::ptr::null(),
            ),
            "move the jail over /",
        )?;
        check(libc::chroot(c".".as_ptr()), "chroot")?;
        check(libc::chdir(c"/".as_ptr()), "chdir /")
    }
}

fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: plain system calls; the capability loop ends at the first
    // capability the kernel does not know.
    unsafe {
        let mut cap = 0;
        while libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) == 0 {
            cap += 1;
        }
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
            "clear ambient capabilities",
        )?;
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setresgid(gid, gid, gid), "setresgid")?;
        // Leaving uid 0 clears the permitted and effective capabilities.
        check(libc::setresuid(uid, uid, uid), "setresuid")?;
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "PR_SET_NO_NEW_PRIVS",
        )?;
    }
    Ok(())
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

extern "C" fn exit_now(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) };
}

const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn set_handler(sig: libc::c_int, h: extern "C" fn(libc::c_int)) {
    // SAFETY: an async-signal-safe handler.
    unsafe { libc::signal(sig, h as *const () as libc::sighandler_t) };
}

/// Sets up the jail. Returns in the jailed VMM process (PID 1 of its
/// namespace, unprivileged) with Ok(None), where the caller runs the VMM;
/// in the outer process it returns Ok(Some(status)) once the VMM ended.
pub fn enter_jail(a: &JailArgs) -> Result<Option<u8>, JailError> {
    let p = plan(a)?;
    prepare_root(&p)?;
    let console = match &a.console_socket {
        Some(sock) => Some(
            crate::jail_console::Console::open(sock, a.console_log.as_deref())
                .map_err(os(format!("console {}", sock.display())))?,
        ),
        None => None,
    };
    let netns = match &p.netns {
        Some(n) => Some(fs::File::open(n).map_err(os(format!("open {}", n.display())))?),
        None => None,
    };
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if p.new_netns {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: plain system calls; fork happens while this process has one
    // thread (logging set-up starts none).
    unsafe {
        // The new PID namespace is for the child; the other namespaces are
        // made by the child alone (pivot_root acts on every process of a
        // mount namespace, and this one must keep the host's view).
        check(
            libc::unshare(libc::CLONE_NEWPID),
            "unshare the PID namespace",
        )?;
        let pid = libc::fork();
        check(pid, "fork")?;
        if pid == 0 {
            // PID 1 ignores signals it has no handler for; until the VMM
            // installs its own, they end it as they would any process.
            for s in FORWARDED {
                set_handler(s, exit_now);
            }
            if let Some(c) = &console {
                c.attach_child()
                    .map_err(os("attach the VMM to its console"))?;
            }
            if let Some(f) = &netns {
                use std::os::fd::AsRawFd;
                check(
                    libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET),
                    "join the network namespace",
                )?;
            }
            check(libc::unshare(flags), "unshare namespaces")?;
            enter(&p)?;
            // enter() closed every descriptor above 2: these must not be
            // closed again.
            std::mem::forget(console);
            std::mem::forget(netns);
            return Ok(None);
        }
        drop(netns);
        CHILD.store(pid, Ordering::Relaxed);
        for s in FORWARDED {
            set_handler(s, forward);
        }
        let mut status = 0;
        if let Some(c) = console {
            // Serves the console until the VMM has ended (and reaps it).
            status = c.serve(pid).map_err(os("console"))?;
        } else {
            while libc::waitpid(pid, &mut status, 0) < 0 {
                if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    return Err(os("wait for the VMM")(io::Error::last_os_error()));
                }
            }
        }
        // An exited task leaves its cgroup a moment after it is reaped.
        for c in &p.cgroups {
            for _ in 0..50 {
                if fs::remove_dir(&c.dir).is_ok() || !c.dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status) as u8
        } else {
            128 + libc::WTERMSIG(status) as u8
        };
        if let Some(f) = &a.exit_file {
            write_exit_file(f, code).map_err(os(format!("exit file {}", f.display())))?;
        }
        Ok(Some(code))
    }
}

/// Writes `code` to `path` whole or not at all (a temporary file renamed).
fn write_exit_file(path: &Path, code: u8) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{code}\n"))?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_paths_and_limits_are_checked() {
        assert!(valid_id("vm-1"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"a".repeat(65)));
        let root = Path::new("/j/root");
        assert_eq!(
            inside(root, Path::new("/var/lib/k")).unwrap(),
            PathBuf::from("/j/root/var/lib/k")
        );
        assert!(inside(root, Path::new("rel")).is_err());
        assert!(inside(root, Path::new("/a/../etc")).is_err());
        let c = parse_cgroup("cpu.max=50000 100000").unwrap();
        assert_eq!(
            (c.controller.as_str(), c.value.as_str()),
            ("cpu", "50000 100000")
        );
        assert!(parse_cgroup("memory.max").is_err());
        assert!(parse_cgroup("../x.y=1").is_err());
        assert!(parse_cgroup("nodot=1").is_err());
        assert_eq!(
            parse_rlimit("no-file=64").unwrap(),
            (libc::RLIMIT_NOFILE, 64)
        );
        assert!(parse_rlimit("cores=1").is_err());
        assert!(parse_rlimit("no-file=x").is_err());
        assert_eq!(
            parse_file_at("/vm/disk=/var/lib/d=1").unwrap(),
            (PathBuf::from("/vm/disk"), PathBuf::from("/var/lib/d=1"))
        );
        assert!(parse_file_at("vm/disk=/x").is_err());
        assert!(parse_file_at("/vm/disk=").is_err());
        assert!(parse_file_at("/vm/disk").is_err());
    }
}

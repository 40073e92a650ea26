//! Each runtime command, as runc behaves: the checks it makes, the state
//! changes the OCI runtime specification defines (`creating` -> `created`
//! -> `running` -> `stopped`, `paused` in between), and its error lines.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{
    CreateArgs, DeleteArgs, ExecArgs, KillArgs, ListArgs, OciArgs, OciCommand, PsArgs,
};
use crate::config::RuntimeConfig;
use crate::control::{self, Request};
use crate::error::{Error, Logger, Result};
use crate::spec::{Process, Spec};
use crate::state::{self, Backend, Container, Saved, Status};

/// How long a command waits for a monitor's answer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// What every command needs from the global flags.
pub struct Ctx {
    pub root: PathBuf,
    pub logger: Logger,
    pub systemd_cgroup: bool,
    pub config_file: Option<PathBuf>,
    /// The global flags to pass on to the monitors this process starts.
    pub global_args: Vec<std::ffi::OsString>,
}

impl Ctx {
    pub fn config(&self) -> Result<RuntimeConfig> {
        RuntimeConfig::load(self.config_file.as_deref())
    }
}

/// Runs one command; returns the process's exit status.
pub fn run(args: OciArgs) -> i32 {
    let mut global_args: Vec<std::ffi::OsString> = vec!["oci".into(), "--root".into()];
    global_args.push(args.root.clone().into());
    if let Some(l) = &args.log {
        global_args.push("--log".into());
        global_args.push(l.clone().into());
    }
    global_args.push("--log-format".into());
    global_args.push(match args.log_format {
        crate::error::LogFormat::Json => "json".into(),
        crate::error::LogFormat::Text => "text".into(),
    });
    if args.systemd_cgroup {
        global_args.push("--systemd-cgroup".into());
    }
    if let Some(c) = &args.config {
        global_args.push("--config".into());
        global_args.push(c.clone().into());
    }
    let root = if args.root.is_absolute() {
        args.root.clone()
    } else {
        std::env::current_dir()
            .map(|d| d.join(&args.root))
            .unwrap_or_else(|_| args.root.clone())
    };
    let ctx = Ctx {
        root,
        logger: Logger {
            file: args.log.clone(),
            format: args.log_format,
        },
        systemd_cgroup: args.systemd_cgroup,
        config_file: args.config.clone(),
        global_args,
    };
    let result = match args.command {
        OciCommand::Create(a) => create(&ctx, &a),
        OciCommand::Start(a) => start(&ctx, &a.id),
        OciCommand::Run(a) => run_container(&ctx, &a),
        OciCommand::State(a) => print_state(&ctx, &a.id),
        OciCommand::Kill(a) => kill(&ctx, &a),
        OciCommand::Delete(a) => delete(&ctx, &a),
        OciCommand::Pause(a) => pause(&ctx, &a.id, true),
        OciCommand::Resume(a) => pause(&ctx, &a.id, false),
        OciCommand::Exec(a) => return exec(&ctx, &a).unwrap_or_else(|e| fail(&ctx, &e)),
        OciCommand::Ps(a) => ps(&ctx, &a),
        OciCommand::List(a) => list(&ctx, &a),
        OciCommand::Features => features(),
        OciCommand::Check => return crate::check::run(&ctx),
        OciCommand::Monitor(a) => return crate::monitor::container_monitor(&ctx, &a),
        OciCommand::ExecMonitor(a) => return crate::monitor::exec_monitor(&ctx, &a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => fail(&ctx, &e),
    }
}

fn fail(ctx: &Ctx, e: &Error) -> i32 {
    ctx.logger.error(e);
    1
}

#[allow(clippy::print_stdout)]
fn print_json(v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Other(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// Writes `pid` to `path` atomically, as runc does.
fn write_pid_file(path: &Path, pid: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    std::fs::write(&tmp, pid.to_string()).map_err(Error::path("write pid file", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::path("write pid file", path))
}

/// A pipe whose write end the monitor child inherits as `--ready-fd`.
fn ready_pipe() -> Result<(std::fs::File, i32)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Error::io("make a pipe")(std::io::Error::last_os_error()));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: fds[0] is a new descriptor that this File alone owns.
    let r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    Ok((r, fds[1]))
}

/// Starts `condo oci <sub>` as a monitor in a new session, with the write
/// end of a pipe as `--ready-fd`; waits for it to report. Returns its pid.
fn spawn_monitor(ctx: &Ctx, sub: &[std::ffi::OsString]) -> Result<u32> {
    let exe = std::env::current_exe().map_err(Error::io("find this program"))?;
    let (mut r, w) = ready_pipe()?;
    let mut cmd = Command::new(exe);
    cmd.args(&ctx.global_args)
        .args(sub)
        .arg("--ready-fd")
        .arg(w.to_string())
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // SAFETY: between fork and exec only async-signal-safe calls: setsid,
    // and fcntl clearing close-on-exec of the pipe's write end.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::fcntl(w, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // SAFETY: w is our copy of the write end; the child has its own.
    unsafe {
        libc::close(w);
    }
    let mut child = spawned.map_err(Error::io("start the container's monitor"))?;
    let mut answer = String::new();
    let _ = (&mut r).take(4096).read_to_string(&mut answer);
    let answer = answer.trim();
    if answer == "ok" {
        return Ok(child.id());
    }
    // The monitor failed: it exits at once.
    let _ = child.wait();
    if answer.is_empty() {
        Err(Error::Other(
            "the container's monitor ended before the container was created".into(),
        ))
    } else {
        Err(Error::Other(answer.to_owned()))
    }
}

fn create(ctx: &Ctx, a: &CreateArgs) -> Result<()> {
    let c = Container::new(&ctx.root, &a.id)?;
    let bundle = if a.bundle.is_absolute() {
        a.bundle.clone()
    } else {
        std::env::current_dir()
            .map_err(Error::io("find the working directory"))?
            .join(&a.bundle)
    };
    let spec_bytes = std::fs::read(bundle.join("config.json")).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::SpecNotFound("config.json".into())
        } else {
            Error::path("read", &bundle.join("config.json"))(e)
        }
    })?;
    if spec_bytes.len() as u64 > crate::spec::MAX_CONFIG_BYTES {
        return Err(Error::InvalidSpec("config.json is too large".into()));
    }
    let spec = Spec::parse(&spec_bytes)?;
    let terminal = spec.process().terminal;
    if terminal && a.console_socket.is_none() {
        return Err(Error::TtyWithoutSocket);
    }
    if !terminal && a.console_socket.is_some() {
        return Err(Error::SocketWithoutTty);
    }
    let rootfs = spec.rootfs(&bundle)?;
    std::fs::create_dir_all(&ctx.root).map_err(Error::path("create", &ctx.root))?;
    match std::fs::create_dir(&c.dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Error::Exists),
        Err(e) => return Err(Error::path("create", &c.dir)(e)),
    }
    let result = (|| {
        std::fs::write(c.file("spec.json"), &spec_bytes)
            .map_err(Error::path("write", &c.file("spec.json")))?;
        let backend = match std::env::var("CONDO_OCI_TEST_BACKEND").as_deref() {
            Ok("host") => Backend::Host,
            _ => Backend::Vm,
        };
        c.save(&Saved {
            id: c.id.clone(),
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            pid: 0,
            pid_start: 0,
            created: crate::time::rfc3339_now(),
            status: Status::Creating,
            annotations: spec.annotations.clone(),
            backend,
            vmm_pid: None,
            cgroups: Vec::new(),
        })?;
        let mut sub: Vec<std::ffi::OsString> = vec!["monitor".into()];
        if let Some(s) = &a.console_socket {
            sub.push("--console-socket".into());
            sub.push(absolute(s).into());
        }
        sub.push(a.id.clone().into());
        let pid = spawn_monitor(ctx, &sub)?;
        if let Some(p) = &a.pid_file {
            write_pid_file(&absolute(p), pid)?;
        }
        Ok(())
    })();
    if result.is_err() {
        cleanup(&c);
    }
    result
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

/// The container and its saved state and current status.
fn open(ctx: &Ctx, id: &str) -> Result<(Container, Saved, Status)> {
    let c = Container::open(&ctx.root, id)?;
    let s = c.load()?;
    let st = c.status(&s);
    Ok((c, s, st))
}

fn start(ctx: &Ctx, id: &str) -> Result<()> {
    let (c, _, st) = open(ctx, id)?;
    match st {
        Status::Created => control::call(&c.file("c.sock"), &Request::Start, CONTROL_TIMEOUT),
        Status::Stopped => Err(Error::StartStopped),
        Status::Running => Err(Error::StartRunning),
        other => Err(Error::StartState(other.to_string())),
    }
}

fn print_state(ctx: &Ctx, id: &str) -> Result<()> {
    let (c, s, st) = open(ctx, id)?;
    print_json(&state::oci_state(&c, &s, st))
}

fn kill(ctx: &Ctx, a: &KillArgs) -> Result<()> {
    let sig =
        crate::rlimit::signal(&a.signal).ok_or_else(|| Error::UnknownSignal(a.signal.clone()))?;
    let (c, s, st) = open(ctx, &a.id)?;
    match st {
        Status::Stopped | Status::Creating => {
            if a.all {
                Ok(())
            } else {
                Err(Error::NotRunning)
            }
        }
        _ => {
            let r = control::call(
                &c.file("c.sock"),
                &Request::Kill {
                    signal: sig,
                    all: a.all,
                },
                CONTROL_TIMEOUT,
            );
            match r {
                Err(e) if sig == libc::SIGKILL => {
                    // The monitor does not answer: SIGKILL still ends the
                    // container (the VMM dies with its monitor).
                    ctx.logger.log("warning", &e.to_string());
                    kill_monitor(&s);
                    Ok(())
                }
                other => other,
            }
        }
    }
}

fn kill_monitor(s: &Saved) {
    if state::alive(s.pid, s.pid_start) {
        // SAFETY: kill takes two integers; the pid was checked to be the
        // monitor (its start time matches).
        unsafe {
            libc::kill(s.pid, libc::SIGKILL);
        }
    }
}

/// Waits up to `limit` for the monitor to be gone.
fn wait_gone(s: &Saved, limit: Duration) -> bool {
    let start = Instant::now();
    while state::alive(s.pid, s.pid_start) {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Removes what a container left: its VMM if still there, its cgroups, its
/// directory.
fn cleanup(c: &Container) {
    if let Ok(s) = c.load() {
        if let Some(vmm) = s.vmm_pid {
            // The VMM dies with its monitor (PR_SET_PDEATHSIG); this is for
            // a monitor killed before it could arrange that.
            if state::proc_stat(vmm).is_some_and(|(st, _)| st != 'Z')
                && std::fs::read_link(format!("/proc/{vmm}/cwd")).is_ok_and(|d| d == c.dir)
            {
                // SAFETY: kill takes two integers.
                unsafe {
                    libc::kill(vmm, libc::SIGKILL);
                }
            }
        }
        crate::cgroup::remove(&s.cgroups);
    }
    let _ = std::fs::remove_dir_all(&c.dir);
}

fn delete(ctx: &Ctx, a: &DeleteArgs) -> Result<()> {
    let (c, s, st) = match open(ctx, &a.id) {
        Ok(x) => x,
        Err(Error::NotExist) => {
            // An aborted create can leave a directory without state.
            if let Ok(c) = Container::new(&ctx.root, &a.id) {
                if c.dir.is_dir() && !c.file("state.json").exists() {
                    let _ = std::fs::remove_dir_all(&c.dir);
                }
            }
            return if a.force {
                Ok(())
            } else {
                Err(Error::NotExist)
            };
        }
        Err(e) if a.force => {
            // An unreadable state is removed by force.
            ctx.logger.log("warning", &e.to_string());
            if let Ok(c) = Container::new(&ctx.root, &a.id) {
                let _ = std::fs::remove_dir_all(&c.dir);
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match st {
        Status::Stopped => {}
        Status::Created | Status::Creating => {
            let _ = control::call(
                &c.file("c.sock"),
                &Request::Kill {
                    signal: libc::SIGKILL,
                    all: false,
                },
                Duration::from_secs(5),
            );
            if !wait_gone(&s, Duration::from_secs(10)) {
                kill_monitor(&s);
            }
        }
        _ if a.force => {
            if st == Status::Paused {
                let _ = control::call(&c.file("c.sock"), &Request::Resume, CONTROL_TIMEOUT);
            }
            let _ = control::call(
                &c.file("c.sock"),
                &Request::Kill {
                    signal: libc::SIGKILL,
                    all: true,
                },
                Duration::from_secs(5),
            );
            if !wait_gone(&s, Duration::from_secs(30)) {
                kill_monitor(&s);
            }
        }
        other => {
            return Err(Error::DeleteNotStopped {
                id: a.id.clone(),
                status: other.to_string(),
            })
        }
    }
    // A stopped container's monitor may still be stopping the VM and
    // copying its disk back.
    if !wait_gone(&s, Duration::from_secs(60)) {
        kill_monitor(&s);
        wait_gone(&s, Duration::from_secs(5));
    }
    cleanup(&c);
    Ok(())
}

fn pause(ctx: &Ctx, id: &str, pause: bool) -> Result<()> {
    let (c, _, st) = open(ctx, id)?;
    let req = match (pause, st) {
        (true, Status::Running | Status::Created) => Request::Pause,
        (true, Status::Paused) => return Ok(()),
        (true, _) => return Err(Error::NotRunning),
        (false, Status::Paused) => Request::Resume,
        (false, _) => return Err(Error::NotPaused),
    };
    control::call(&c.file("c.sock"), &req, CONTROL_TIMEOUT)
}

/// The process `exec` runs: the `--process` file, or the command line
/// over the container's own process.
fn exec_process(c: &Container, a: &ExecArgs) -> Result<Process> {
    let mut p = match &a.process {
        Some(f) => {
            return Process::load(f).map(|mut p| {
                if a.tty {
                    p.terminal = true;
                }
                p
            })
        }
        None => {
            let bytes = std::fs::read(c.file("spec.json"))
                .map_err(Error::path("read", &c.file("spec.json")))?;
            Spec::parse(&bytes)?.process().clone()
        }
    };
    if a.command.is_empty() {
        return Err(Error::InvalidSpec("args must not be empty".into()));
    }
    p.args = a.command.clone();
    p.terminal = a.tty;
    if let Some(cwd) = &a.cwd {
        p.cwd = cwd.clone();
    }
    for kv in &a.env {
        let key = kv.split('=').next().unwrap_or_default();
        p.env.retain(|e| e.split('=').next() != Some(key));
        p.env.push(kv.clone());
    }
    if let Some(u) = &a.user {
        let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
        p.user.uid = uid
            .parse()
            .map_err(|_| Error::InvalidSpec(format!("invalid user {u:?}")))?;
        p.user.gid = gid
            .parse()
            .map_err(|_| Error::InvalidSpec(format!("invalid user {u:?}")))?;
    }
    p.validate()?;
    Ok(p)
}

fn exec(ctx: &Ctx, a: &ExecArgs) -> Result<i32> {
    let (c, _, st) = open(ctx, &a.id)?;
    match st {
        Status::Stopped => return Err(Error::ExecStopped),
        Status::Paused => return Err(Error::Paused),
        Status::Creating => return Err(Error::NotRunning),
        _ => {}
    }
    let p = exec_process(&c, a)?;
    if p.terminal && a.console_socket.is_none() {
        return Err(Error::TtyWithoutSocket);
    }
    if !p.terminal && a.console_socket.is_some() {
        return Err(Error::SocketWithoutTty);
    }
    // The process goes to the exec monitor in a file of its own.
    let dir = c.file("execs");
    std::fs::create_dir_all(&dir).map_err(Error::path("create", &dir))?;
    let pfile = dir.join(format!(
        ".process-{}-{}",
        std::process::id(),
        crate::time::rfc3339_now()
    ));
    let text = serde_json::to_vec(&p).map_err(|e| Error::Other(e.to_string()))?;
    std::fs::write(&pfile, text).map_err(Error::path("write", &pfile))?;
    let mut sub: Vec<std::ffi::OsString> = vec!["exec-monitor".into(), "--process".into()];
    sub.push(pfile.clone().into());
    if let Some(s) = &a.console_socket {
        sub.push("--console-socket".into());
        sub.push(absolute(s).into());
    }
    sub.push(a.id.clone().into());
    let pid = match spawn_monitor(ctx, &sub) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = std::fs::remove_file(&pfile);
            return Err(e);
        }
    };
    if let Some(pf) = &a.pid_file {
        write_pid_file(&absolute(pf), pid)?;
    }
    if a.detach {
        return Ok(0);
    }
    // Attached: this process waits for the exec monitor, its child.
    let mut status = 0;
    // SAFETY: waitpid writes the status of our own child into an int.
    let rc = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    if rc < 0 {
        return Err(Error::io("wait for the process")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(crate::guest::host::exit_code(status))
}

#[allow(clippy::print_stdout)]
fn ps(ctx: &Ctx, a: &PsArgs) -> Result<()> {
    let (c, s, st) = open(ctx, &a.id)?;
    let mut pids = Vec::new();
    if st != Status::Stopped {
        pids.push(s.pid);
        if let Ok(rd) = std::fs::read_dir(c.file("execs")) {
            for e in rd.flatten() {
                if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
                    if state::alive(pid, 0) {
                        pids.push(pid);
                    }
                }
            }
        }
    }
    match a.format.as_str() {
        "json" => print_json(&serde_json::json!(pids)),
        "table" => {
            println!("PID");
            for p in pids {
                println!("{p}");
            }
            Ok(())
        }
        f => Err(Error::Other(format!("invalid format option {f:?}"))),
    }
}

#[allow(clippy::print_stdout)]
fn list(ctx: &Ctx, a: &ListArgs) -> Result<()> {
    let mut rows = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&ctx.root) {
        for e in rd.flatten() {
            let Some(id) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Ok((c, s, st)) = open(ctx, &id) {
                rows.push(state::oci_state(&c, &s, st));
            }
        }
    }
    rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    if a.quiet {
        for r in &rows {
            println!("{}", r["id"].as_str().unwrap_or_default());
        }
        return Ok(());
    }
    match a.format.as_str() {
        "json" => print_json(&serde_json::json!(rows)),
        "table" => {
            println!("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER");
            for r in &rows {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t",
                    r["id"].as_str().unwrap_or_default(),
                    r["pid"],
                    r["status"].as_str().unwrap_or_default(),
                    r["bundle"].as_str().unwrap_or_default(),
                    r["created"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        f => Err(Error::Other(format!("invalid format option {f:?}"))),
    }
}

/// runc's `features` document, for what condo honours.
fn features() -> Result<()> {
    print_json(&serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": state::OCI_VERSION,
        "hooks": [],
        "mountOptions": ["ro", "rw", "nosuid", "nodev", "noexec", "bind", "rbind",
                         "private", "rprivate", "mode", "size", "newinstance",
                         "ptmxmode", "gid", "relatime", "strictatime"],
        "linux": {
            "namespaces": [],
            "capabilities": [],
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.github.condo.isolation": "microvm",
            "org.opencontainers.runc.checkpoint.enabled": "false"
        }
    }))
}

/// `run`: create, start, and (unless detached) wait for the container and
/// delete it, with its exit code.
fn run_container(ctx: &Ctx, a: &crate::cli::RunArgs) -> Result<()> {
    create(ctx, &a.create)?;
    start(ctx, &a.create.id)?;
    if a.detach {
        return Ok(());
    }
    let (_, s, _) = open(ctx, &a.create.id)?;
    let mut status = 0;
    // SAFETY: the monitor is our child; waitpid writes its status.
    unsafe {
        libc::waitpid(s.pid, &mut status, 0);
    }
    delete(
        ctx,
        &DeleteArgs {
            force: true,
            id: a.create.id.clone(),
        },
    )?;
    let code = crate::guest::host::exit_code(status);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

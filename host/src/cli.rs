//! The host manager's commands in the `condo` binary: `condo daemon`, and
//! the client commands that talk to it (`create`, `ls`, `start`, `stop`,
//! `restart`, `pause`, `resume`, `snapshot`, `snapshots`, `clone`, `rm`,
//! `console`, `exec`, `top`, `host`, `image`, `usage`, `events`). The
//! binary flattens [`HostCommand`] into its own subcommands and maps an
//! error to one `condo: error: ...` line.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::client::{encode, Client};
use crate::config::DaemonConfig;
use crate::error::{Error, Result};
use crate::manager::{GuestInfo, HostReport};
use crate::model::{
    parse_size_mib, CloneRequest, DeleteRequest, GuestSpec, HugePages, ImageSpec, RestartPolicy,
    SnapshotRequest, StopRequest,
};

/// Where the daemon listens (client side).
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// The daemon's API socket.
    #[arg(long, env = "CONDO_SOCKET", default_value = "/run/condo/condo.sock")]
    pub socket: PathBuf,
}

impl ClientOpts {
    fn client(&self) -> Client {
        Client::new(&self.socket)
    }
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    /// Kernel image (ELF vmlinux or bzImage).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// An imported image (`condo image import`).
    #[arg(long)]
    pub image: Option<String>,
    /// A raw or ext4 root image; the guest's disk is a copy-on-write
    /// clone of it.
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Extra kernel command line (words after ` -- ` go to the guest's
    /// init).
    #[arg(long)]
    pub cmdline: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Guest memory: MiB, or with a unit (512M, 2G).
    #[arg(long, default_value = "128M")]
    pub memory: String,
    /// Size of the writable disk (the root image grown to it, or an empty
    /// disk): MiB, or with a unit.
    #[arg(long)]
    pub disk: Option<String>,
    /// Network: bridge (an interface on the managed bridge) or none
    /// (default: bridge when the daemon has a network).
    #[arg(long, value_parser = ["bridge", "none"])]
    pub net: Option<String>,
    /// CPU limit in % of one host CPU (cgroup cpu.max).
    #[arg(long)]
    pub cpu_limit: Option<u32>,
    /// CPU share, 1 to 10000 (cgroup cpu.weight, default 100).
    #[arg(long)]
    pub cpu_weight: Option<u32>,
    /// Host CPUs the guest may use, e.g. 0-1,3 (cgroup cpuset).
    #[arg(long)]
    pub cpuset: Option<String>,
    /// Memory limit of the guest's VMM (cgroup memory.max; default the
    /// guest's memory plus 64 MiB).
    #[arg(long)]
    pub memory_limit: Option<String>,
    /// Guest RAM on transparent huge pages (default: 4 KiB pages, the
    /// host keeps only what the guest touched).
    #[arg(long)]
    pub huge_pages: bool,
    /// Start the guest whenever the daemon starts.
    #[arg(long)]
    pub autostart: bool,
    /// What to do when the guest ends by itself: no, on-failure, always.
    #[arg(long, default_value = "no")]
    pub restart: RestartPolicy,
    /// Create it stopped.
    #[arg(long)]
    pub no_start: bool,
    /// Keep the disk when the guest is deleted.
    #[arg(long)]
    pub keep_disk: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct NamesArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Seconds to wait for the guest to power off after Ctrl+Alt+Del
    /// before it is killed (0: at once).
    #[arg(long, short)]
    pub timeout: Option<u64>,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Stop a running guest first (at once).
    #[arg(long, short)]
    pub force: bool,
    /// Keep its disk (moved to the state directory's kept/).
    #[arg(long)]
    pub keep_disk: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    pub name: String,
    /// The snapshot's name (default: the guest's).
    #[arg(long = "as")]
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Delete this snapshot.
    #[arg(long)]
    pub rm: Option<String>,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct CloneArgs {
    /// The snapshot.
    pub snapshot: String,
    /// The new guest's name (with --count N: NAME-1 ... NAME-N).
    pub name: String,
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct NameArg {
    pub name: String,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    pub name: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    /// Refresh interval, seconds.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Print one frame as text and exit (for scripts and tests).
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Copy a kernel (with initrd) and/or a root image into the daemon.
    Import {
        name: String,
        #[arg(long)]
        kernel: Option<PathBuf>,
        #[arg(long)]
        initrd: Option<PathBuf>,
        #[arg(long)]
        rootfs: Option<PathBuf>,
        #[arg(long)]
        cmdline: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List images.
    Ls {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete an image.
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsageCommand {
    /// A guest's samples (JSON).
    Show {
        name: String,
        /// Unix seconds, or a time ago: 90s, 10m, 2h, 7d.
        #[arg(long, default_value = "10m")]
        since: String,
        /// raw or minute (default: raw when kept that far back).
        #[arg(long)]
        resolution: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// The utilization trace (CSV guest,vcpus,mem_mib,time_s,cpu_pct) for
    /// the consolidation planner.
    Export {
        /// Interval, seconds.
        #[arg(long, default_value_t = 300)]
        interval: u64,
        #[arg(long, default_value = "7d")]
        since: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Unix seconds, or a time ago (default: new events only).
    #[arg(long)]
    pub since: Option<String>,
    /// Print the past events and exit.
    #[arg(long)]
    pub no_follow: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// The host manager's subcommands.
#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// Run the host daemon: owns every guest of this host (as root).
    Daemon(Box<DaemonConfig>),
    /// Create a guest (and start it).
    Create(Box<CreateArgs>),
    /// List guests: state, vCPUs, memory, CPU %, RSS, IP.
    Ls(ListArgs),
    /// Start guests.
    Start(NamesArgs),
    /// Stop guests: Ctrl+Alt+Del, then killed after the timeout.
    Stop(StopArgs),
    /// Stop and start guests.
    Restart(StopArgs),
    /// Pause guests (their vCPUs stop).
    Pause(NamesArgs),
    /// Resume paused guests.
    Resume(NamesArgs),
    /// Snapshot a guest (memory, devices and disk); it runs on after.
    Snapshot(SnapshotArgs),
    /// List (or delete) snapshots.
    Snapshots(SnapshotsArgs),
    /// New guests restored from a snapshot (memory shared copy-on-write).
    Clone(CloneArgs),
    /// Delete guests.
    Rm(RmArgs),
    /// Attach to a guest's serial console (detach: Ctrl-]).
    Console(NameArg),
    /// Run a command in a guest (through its agent).
    Exec(ExecArgs),
    /// A live view of the guests' and the host's utilization.
    Top(TopArgs),
    /// The host's capacity, commitments and use.
    Host(ListArgs),
    /// Images: import, ls, rm.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Utilization: a guest's history, or the trace for the planner.
    #[command(subcommand)]
    Usage(UsageCommand),
    /// The event stream (JSON lines).
    Events(EventsArgs),
}

fn out() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

fn absolute(p: Option<PathBuf>) -> Result<Option<PathBuf>> {
    p.map(|p| std::path::absolute(&p).map_err(|e| Error::invalid(format!("{}: {e}", p.display()))))
        .transpose()
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1}G", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1}M", b as f64 / (1u64 << 20) as f64)
    }
}

/// Runs a host command; returns the exit status.
pub fn run(cmd: HostCommand) -> Result<u8> {
    match cmd {
        HostCommand::Daemon(cfg) => crate::daemon::run(*cfg).map(|()| 0),
        HostCommand::Create(a) => create(*a),
        HostCommand::Ls(a) => ls(&a),
        HostCommand::Start(a) => each(&a.names, |n| {
            a.client
                .client()
                .call("POST", &format!("/guests/{n}/start"), None)?;
            Ok(format!("{n}: started"))
        }),
        HostCommand::Stop(a) => stop_or_restart(&a, "stop"),
        HostCommand::Restart(a) => stop_or_restart(&a, "restart"),
        HostCommand::Pause(a) => each(&a.names, |n| {
            a.client
                .client()
                .call("POST", &format!("/guests/{n}/pause"), None)?;
            Ok(format!("{n}: paused"))
        }),
        HostCommand::Resume(a) => each(&a.names, |n| {
            a.client
                .client()
                .call("POST", &format!("/guests/{n}/resume"), None)?;
            Ok(format!("{n}: resumed"))
        }),
        HostCommand::Snapshot(a) => {
            let body = SnapshotRequest {
                snapshot: a.snapshot.clone(),
            };
            let r: serde_json::Value =
                a.client
                    .client()
                    .send("POST", &format!("/guests/{}/snapshot", a.name), &body)?;
            let _ = writeln!(
                out(),
                "snapshot {} of {}",
                r["name"].as_str().unwrap_or("?"),
                a.name
            );
            Ok(0)
        }
        HostCommand::Snapshots(a) => {
            let c = a.client.client();
            if let Some(s) = &a.rm {
                c.call("DELETE", &format!("/snapshots/{s}"), None)?;
                return Ok(0);
            }
            let v: Vec<serde_json::Value> = c.get("/snapshots")?;
            let mut o = out();
            let _ = writeln!(
                o,
                "{:<24} {:<24} {:>5} {:>8}",
                "SNAPSHOT", "GUEST", "VCPUS", "MEMORY"
            );
            for s in v {
                let _ = writeln!(
                    o,
                    "{:<24} {:<24} {:>5} {:>7}M",
                    s["name"].as_str().unwrap_or("?"),
                    s["guest"].as_str().unwrap_or("?"),
                    s["spec"]["vcpus"].as_u64().unwrap_or(0),
                    s["spec"]["memory_mib"].as_u64().unwrap_or(0)
                );
            }
            Ok(0)
        }
        HostCommand::Clone(a) => {
            let body = CloneRequest {
                name: a.name.clone(),
                count: a.count,
            };
            let v: Vec<GuestInfo> = a.client.client().send(
                "POST",
                &format!("/snapshots/{}/clone", a.snapshot),
                &body,
            )?;
            let mut o = out();
            for g in v {
                let _ = writeln!(o, "{}: {} {}", g.name, g.state, g.ip.unwrap_or_default());
            }
            Ok(0)
        }
        HostCommand::Rm(a) => each(&a.names, |n| {
            let body = DeleteRequest {
                force: a.force,
                keep_disk: a.keep_disk.then_some(true),
            };
            let b = serde_json::to_string(&body).map_err(|e| Error::Other(e.to_string()))?;
            a.client
                .client()
                .call("DELETE", &format!("/guests/{n}"), Some(&b))?;
            Ok(format!("{n}: deleted"))
        }),
        HostCommand::Console(a) => crate::console::attach(&a.client.socket, &a.name),
        HostCommand::Exec(a) => crate::exec::run(&a.client.socket, &a.name, &a.command),
        HostCommand::Top(a) => crate::top::run(&a.client.client(), a.interval, a.once),
        HostCommand::Host(a) => host(&a),
        HostCommand::Image(c) => image(c),
        HostCommand::Usage(c) => usage(c),
        HostCommand::Events(a) => events(&a),
    }
}

/// Runs `f` for each name; one line per success, every failure reported
/// (the last one is the error).
fn each(names: &[String], f: impl Fn(&str) -> Result<String>) -> Result<u8> {
    let mut last = None;
    for n in names {
        match f(n) {
            Ok(msg) => {
                let _ = writeln!(out(), "{msg}");
            }
            Err(e) => {
                if let Some(prev) = last.replace(e) {
                    let _ = writeln!(std::io::stderr(), "condo: error: {prev}");
                }
            }
        }
    }
    match last {
        Some(e) => Err(e),
        None => Ok(0),
    }
}

fn stop_or_restart(a: &StopArgs, what: &str) -> Result<u8> {
    each(&a.names, |n| {
        let body = StopRequest {
            timeout_s: a.timeout,
        };
        let b = serde_json::to_string(&body).map_err(|e| Error::Other(e.to_string()))?;
        a.client
            .client()
            .call("POST", &format!("/guests/{n}/{what}"), Some(&b))?;
        Ok(format!(
            "{n}: {}",
            if what == "stop" {
                "stopped"
            } else {
                "restarted"
            }
        ))
    })
}

fn create(a: CreateArgs) -> Result<u8> {
    let mut spec = GuestSpec::named(&a.name);
    spec.image = a.image;
    spec.kernel = absolute(a.kernel)?;
    spec.initrd = absolute(a.initrd)?;
    spec.rootfs = absolute(a.rootfs)?;
    spec.cmdline = a.cmdline;
    spec.vcpus = a.cpus;
    spec.memory_mib = parse_size_mib(&a.memory)?;
    spec.disk_mib = a.disk.as_deref().map(parse_size_mib).transpose()?;
    spec.net = a.net.map(|n| n == "bridge");
    spec.cpu_limit_pct = a.cpu_limit;
    spec.cpu_weight = a.cpu_weight;
    spec.cpuset = a.cpuset;
    spec.memory_max_mib = a.memory_limit.as_deref().map(parse_size_mib).transpose()?;
    spec.huge_pages = if a.huge_pages {
        HugePages::Transparent
    } else {
        HugePages::None
    };
    spec.autostart = a.autostart;
    spec.restart = a.restart;
    spec.start = !a.no_start;
    spec.keep_disk = a.keep_disk;
    spec.validate()?;
    let g: GuestInfo = a.client.client().send("POST", "/guests", &spec)?;
    let _ = writeln!(
        out(),
        "{}: {}{}",
        g.name,
        g.state,
        g.ip.map(|i| format!(" {i}")).unwrap_or_default()
    );
    Ok(0)
}

fn ls(a: &ListArgs) -> Result<u8> {
    let body = a.client.client().call("GET", "/guests", None)?;
    if a.json {
        let _ = writeln!(out(), "{body}");
        return Ok(0);
    }
    let v: Vec<GuestInfo> =
        serde_json::from_str(&body).map_err(|e| Error::Other(format!("daemon answer: {e}")))?;
    let mut o = out();
    let _ = writeln!(
        o,
        "{:<24} {:<9} {:>5} {:>8} {:>6} {:>8}  IP",
        "NAME", "STATE", "VCPUS", "MEMORY", "CPU%", "RSS"
    );
    for g in v {
        let (cpu, rss) = match &g.stats {
            Some(s) => (format!("{:.1}", s.cpu_pct), human_bytes(s.rss_bytes)),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            o,
            "{:<24} {:<9} {:>5} {:>7}M {:>6} {:>8}  {}",
            g.name,
            g.state.as_str(),
            g.vcpus,
            g.memory_mib,
            cpu,
            rss,
            g.ip.as_deref().unwrap_or("-")
        );
    }
    Ok(0)
}

fn host(a: &ListArgs) -> Result<u8> {
    let body = a.client.client().call("GET", "/host", None)?;
    if a.json {
        let _ = writeln!(out(), "{body}");
        return Ok(0);
    }
    let h: HostReport =
        serde_json::from_str(&body).map_err(|e| Error::Other(format!("daemon answer: {e}")))?;
    let cpu_cap = f64::from(h.cpus) * h.cpu_overcommit;
    let mem_cap = h.memory_mib as f64 * h.memory_overcommit;
    let mut o = out();
    let _ = writeln!(
        o,
        "{:<10} {:>12} {:>24} {:>14}",
        "", "CAPACITY", "COMMITTED", "USED"
    );
    let _ = writeln!(
        o,
        "{:<10} {:>12} {:>24} {:>14}",
        "cpu",
        format!("{} CPUs", h.cpus),
        format!(
            "{} vCPUs ({:.0}% of {:.0})",
            h.committed_vcpus,
            h.committed_vcpus as f64 / cpu_cap.max(1.0) * 100.0,
            cpu_cap
        ),
        format!("{:.1}%", h.cpu_utilization_pct)
    );
    let _ = writeln!(
        o,
        "{:<10} {:>12} {:>24} {:>14}",
        "memory",
        format!("{} MiB", h.memory_mib),
        format!(
            "{} MiB ({:.0}% of {:.0})",
            h.committed_memory_mib,
            h.committed_memory_mib as f64 / mem_cap.max(1.0) * 100.0,
            mem_cap
        ),
        format!("{} MiB RSS", h.guest_rss_mib)
    );
    let _ = writeln!(
        o,
        "guests: {} ({} running); overcommit: cpu {}, memory {}; host memory available: {} MiB",
        h.guests, h.running, h.cpu_overcommit, h.memory_overcommit, h.memory_available_mib
    );
    Ok(0)
}

fn image(c: ImageCommand) -> Result<u8> {
    match c {
        ImageCommand::Import {
            name,
            kernel,
            initrd,
            rootfs,
            cmdline,
            client,
        } => {
            let spec = ImageSpec {
                name,
                kernel: absolute(kernel)?,
                initrd: absolute(initrd)?,
                rootfs: absolute(rootfs)?,
                cmdline,
            };
            let s: ImageSpec = client.client().send("POST", "/images", &spec)?;
            let _ = writeln!(out(), "image {} imported", s.name);
            Ok(0)
        }
        ImageCommand::Ls { client } => {
            let v: Vec<ImageSpec> = client.client().get("/images")?;
            let mut o = out();
            let _ = writeln!(
                o,
                "{:<24} {:<7} {:<7} {:<7} CMDLINE",
                "IMAGE", "KERNEL", "INITRD", "ROOTFS"
            );
            let yn = |b: bool| if b { "yes" } else { "-" };
            for i in v {
                let _ = writeln!(
                    o,
                    "{:<24} {:<7} {:<7} {:<7} {}",
                    i.name,
                    yn(i.kernel.is_some()),
                    yn(i.initrd.is_some()),
                    yn(i.rootfs.is_some()),
                    i.cmdline.unwrap_or_default()
                );
            }
            Ok(0)
        }
        ImageCommand::Rm { name, client } => {
            client
                .client()
                .call("DELETE", &format!("/images/{name}"), None)?;
            Ok(0)
        }
    }
}

fn usage(c: UsageCommand) -> Result<u8> {
    match c {
        UsageCommand::Show {
            name,
            since,
            resolution,
            client,
        } => {
            let mut path = format!("/guests/{name}/usage?since={}", encode(&since));
            if let Some(r) = resolution {
                path.push_str(&format!("&resolution={}", encode(&r)));
            }
            let b = client.client().call("GET", &path, None)?;
            let _ = writeln!(out(), "{b}");
            Ok(0)
        }
        UsageCommand::Export {
            interval,
            since,
            client,
        } => {
            let b = client.client().call(
                "GET",
                &format!("/usage/trace?interval={interval}&since={}", encode(&since)),
                None,
            )?;
            let _ = out().write_all(b.as_bytes());
            Ok(0)
        }
    }
}

fn events(a: &EventsArgs) -> Result<u8> {
    let since = a.since.clone().unwrap_or_else(|| "0s".into());
    let path = format!("/events?since={}&follow={}", encode(&since), !a.no_follow);
    crate::console::stream(&a.client.socket, &path)
}

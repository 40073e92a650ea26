//! `condo`: the command-line front end of the condo VMM.
//!
//! Parses arguments, sets up logging and the terminal, runs one VM and maps
//! how it ended to an exit status. All VM logic lives in the `vmm` crate.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vmm::{RunOptions, VmConfig, VmExit};

mod jail;
mod jail_console;
mod terminal;

/// Exit status when the guest panicked.
const EXIT_GUEST_PANIC: u8 = 2;
/// Exit status when a vCPU triple-faulted or KVM could not run it.
const EXIT_GUEST_CRASH: u8 = 3;
/// Exit status for VMM errors (bad input, KVM unusable).
const EXIT_VMM_ERROR: u8 = 1;

#[derive(Parser)]
#[command(
    name = "condo",
    version,
    about = "condo: a microVM monitor on Linux KVM"
)]
struct Cli {
    /// Log level: off, error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn", env = "CONDO_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest and run it until it powers off.
    Run(Box<RunArgs>),
    /// Check that /dev/kvm can run a standard guest (exit 0 if it can).
    KvmCheck,
    /// Run `condo run ...` jailed, as Firecracker's jailer does (as root):
    /// `condo jail --id ID --uid U --gid G [--file PATH]... -- run ...`.
    Jail(Box<jail::JailArgs>),
    /// The host manager: `condo daemon` and the commands that talk to it.
    #[command(flatten)]
    Host(host::cli::HostCommand),
}

#[derive(Args)]
struct RunArgs {
    /// Firecracker-format JSON file (boot-source, machine-config).
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "cmdline", "cpus", "memory", "huge_pages", "entropy", "disks", "nets", "vsock", "balloon"])]
    config_file: Option<PathBuf>,
    /// Serve Firecracker's REST API on this Unix socket. Without --kernel
    /// or --config-file, the VM is configured over the API and boots on
    /// InstanceStart.
    #[arg(long, value_name = "PATH", conflicts_with = "no_api")]
    api_sock: Option<PathBuf>,
    /// No API socket (the default without --api-sock; accepted for
    /// Firecracker compatibility).
    #[arg(long)]
    no_api: bool,
    /// Kernel image: ELF vmlinux (PVH) or bzImage.
    #[arg(long, required_unless_present_any = ["config_file", "api_sock"])]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// What backs guest memory (Firecracker's huge_pages): None (4 KiB
    /// pages, the host's transparent huge pages refused), Transparent
    /// (the default) or 2M (hugetlbfs pages from the host's reserved pool,
    /// vm.nr_hugepages).
    #[arg(
        long,
        value_name = "None|Transparent|2M",
        default_value = "Transparent"
    )]
    huge_pages: vmm::HugePages,
    /// A virtio-blk disk: path=FILE[,readonly=on][,id=SERIAL][,root=on].
    /// Repeat for more disks (vda, vdb, ...).
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<String>,
    /// A virtio-net interface on a host TAP device: tap=NAME[,mac=MAC].
    #[arg(long = "net", value_name = "SPEC")]
    nets: Vec<String>,
    /// A virtio-vsock device: cid=N,socket=PATH. Host programs connect to
    /// PATH and write "CONNECT <port>\n"; guest connections to port P
    /// reach PATH_P (Firecracker's hybrid vsock).
    #[arg(long, value_name = "SPEC")]
    vsock: Option<String>,
    /// A virtio-balloon device:
    /// size_mib=N[,deflate_on_oom=on][,stats_s=N][,free_page_reporting=on].
    #[arg(long, value_name = "SPEC")]
    balloon: Option<String>,
    /// Give the guest a virtio-rng entropy device.
    #[arg(long)]
    entropy: bool,
    /// Do not run the KVM exception probe before booting.
    #[arg(long)]
    no_kvm_probe: bool,
    /// seccomp filtering of the VMM's threads: 0 none, 1 system call
    /// numbers, 2 numbers and arguments. A forbidden call stops the VMM
    /// (exit status 148).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    seccomp_level: u8,
    /// Same as --seccomp-level 0 (Firecracker's flag; for debugging only).
    #[arg(long, conflicts_with = "seccomp_level")]
    no_seccomp: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = vmm::logger::init(&cli.log_level) {
        return fail(e);
    }
    match cli.command {
        Command::KvmCheck => kvm_check(),
        Command::Run(args) => run(*args),
        Command::Jail(j) => jailed(&j),
        Command::Host(c) => match host::cli::run(c) {
            Ok(code) => ExitCode::from(code),
            Err(e) => fail(e),
        },
    }
}

/// `condo jail`: checks the inner command, builds the jail, and runs the
/// VMM in it (in the jailed child; the outer process waits for it).
fn jailed(j: &jail::JailArgs) -> ExitCode {
    let inner =
        match Cli::try_parse_from(std::iter::once("condo".to_owned()).chain(j.command.clone())) {
            Ok(Cli {
                command: Command::Run(args),
                ..
            }) => args,
            Ok(_) => return fail("jail: the command to run is `run ...`"),
            Err(e) => {
                let msg = e.render().to_string();
                let first = msg.lines().next().unwrap_or_default();
                return fail(format!("jail: {}", first.trim_start_matches("error: ")));
            }
        };
    match jail::enter_jail(j) {
        Ok(None) => run(*inner),
        Ok(Some(status)) => ExitCode::from(status),
        Err(e) => fail(e),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("condo: error: {msg}");
    ExitCode::from(EXIT_VMM_ERROR)
}

fn kvm_check() -> ExitCode {
    match vmm::check_kvm() {
        Ok(()) => {
            eprintln!("condo: /dev/kvm can run standard guests");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn run(args: RunArgs) -> ExitCode {
    vmm::seccomp::set_level(if args.no_seccomp {
        0
    } else {
        args.seccomp_level
    });
    let config = match (&args.config_file, &args.kernel) {
        (Some(path), _) => VmConfig::from_firecracker_file(path).map(Some),
        (None, Some(_)) => build_config(&args).map(Some),
        (None, None) => Ok(None),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let api = match &args.api_sock {
        Some(path) => match vmm::api::ApiServer::start(path) {
            Ok(s) => Some(s),
            Err(e) => return fail(e),
        },
        None => None,
    };

    let interactive = std::io::stdin().is_terminal();
    // Restores the terminal on every return path below.
    let _raw = if interactive {
        terminal::RawMode::enter()
    } else {
        None
    };
    let opts = RunOptions {
        console_input: interactive,
        skip_probe: args.no_kvm_probe,
    };
    let result = match (&api, config) {
        (Some(api), config) => vmm::api::run(api, config, opts),
        (None, Some(config)) => vmm::run(&config, opts),
        (None, None) => Err(vmm::VmmError::Config(vmm::ConfigError::NoKernel)),
    };
    drop(_raw);
    match result {
        Ok(VmExit::Poweroff) => {
            tracing::info!("guest powered off");
            ExitCode::SUCCESS
        }
        Ok(VmExit::Stopped) => {
            tracing::info!("stopped by SIGTERM");
            ExitCode::SUCCESS
        }
        Ok(VmExit::Reset) => {
            tracing::info!("guest rebooted");
            ExitCode::SUCCESS
        }
        Ok(VmExit::Panic) => {
            eprintln!("condo: guest kernel panicked");
            ExitCode::from(EXIT_GUEST_PANIC)
        }
        Ok(VmExit::TripleFault { vcpu, state }) => {
            eprintln!("condo: guest triple-faulted on vCPU {vcpu} ({state})");
            ExitCode::from(EXIT_GUEST_CRASH)
        }
        Ok(VmExit::VcpuFailed { vcpu, reason }) => {
            eprintln!("condo: vCPU {vcpu} failed: {reason}");
            ExitCode::from(EXIT_GUEST_CRASH)
        }
        Err(e) => fail(e),
    }
}

fn build_config(args: &RunArgs) -> Result<VmConfig, vmm::ConfigError> {
    let vcpus = u8::try_from(args.cpus).map_err(|_| vmm::ConfigError::VcpuCount(args.cpus))?;
    let cfg = VmConfig {
        // clap guarantees --kernel without --config-file.
        kernel: args.kernel.clone().unwrap_or_default(),
        initrd: args.initrd.clone(),
        cmdline: args
            .cmdline
            .clone()
            .unwrap_or_else(|| vmm::DEFAULT_CMDLINE.to_owned()),
        vcpus,
        mem_mib: args.memory,
        entropy: args.entropy,
        disks: args
            .disks
            .iter()
            .enumerate()
            .map(|(i, spec)| vmm::DiskConfig::parse(spec, i))
            .collect::<Result<_, _>>()?,
        nets: args
            .nets
            .iter()
            .enumerate()
            .map(|(i, spec)| vmm::NetConfig::parse(spec, i))
            .collect::<Result<_, _>>()?,
        vsock: args
            .vsock
            .as_deref()
            .map(vmm::VsockConfig::parse)
            .transpose()?,
        balloon: args
            .balloon
            .as_deref()
            .map(vmm::BalloonConfig::parse)
            .transpose()?,
        track_dirty_pages: false,
        huge_pages: args.huge_pages,
    };
    cfg.validate()?;
    Ok(cfg)
}

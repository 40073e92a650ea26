//! The VMM's own command line: `run`, `kvm-check` and `jail`, shared by
//! the full `condo` binary and the lean `condo-vmm` that every VMM process
//! runs as (it carries none of the host manager's, planner's or OCI
//! runtime's code, so each guest's VMM stays small). Here and nowhere else
//! a VM's end becomes an exit status.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vmm::config::{
    BalloonConfig, BootSource, Drive, EntropyConfig, HugePages, MachineConfigUpdate,
    NetworkInterface, VsockConfig,
};
use vmm::rpc::{RequestHandler, VmRequest};
use vmm::{RunOptions, VmConfig, VmExit, Vmm};

use crate::{jail, terminal};

/// Exit status when the guest panicked.
pub const EXIT_GUEST_PANIC: u8 = 2;
/// Exit status when a vCPU triple-faulted or KVM could not run it.
pub const EXIT_GUEST_CRASH: u8 = 3;
/// Exit status for VMM errors (bad input, KVM unusable).
pub const EXIT_VMM_ERROR: u8 = 1;

/// The VMM's own commands.
#[derive(Subcommand)]
pub enum VmmCommand {
    /// Boot a guest and run it until it powers off.
    Run(Box<RunArgs>),
    /// Check that /dev/kvm can run a standard guest (exit 0 if it can).
    KvmCheck,
    /// Run `condo run ...` jailed, as Firecracker's jailer does (as root):
    /// `condo jail --id ID --uid U --gid G [--file PATH]... -- run ...`.
    Jail(Box<jail::JailArgs>),
}

/// The command line of `run`, `kvm-check` and `jail` alone: clap builds
/// every subcommand's arguments before it parses, and a VMM should not
/// carry the host manager's two dozen (in a release build, about 1 MiB
/// more resident in every VMM process: the builders' code and the tree).
#[derive(Parser)]
#[command(
    name = "condo",
    version,
    about = "condo: a microVM monitor on Linux KVM"
)]
pub struct VmmCli {
    /// Log level: off, error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn", env = "CONDO_LOG")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: VmmCommand,
}

/// Whether the command line runs one of the VMM's own commands (its first
/// word after the global options).
pub fn is_vmm_command(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let mut args = args.skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--log-level") => {
                args.next();
            }
            Some(s) if s.starts_with("--log-level=") => {}
            Some(s) => return matches!(s, "run" | "kvm-check" | "jail"),
            None => return false,
        }
    }
    false
}

/// A vCPU count, checked as the machine configuration checks it (read
/// wide, so that 300 is named as out of range, not as a parse error).
fn vcpu_count(s: &str) -> Result<u8, vmm::ConfigError> {
    let n: u64 = s
        .parse()
        .map_err(|_| vmm::ConfigError::VcpuCount(u64::MAX))?;
    vmm::config::check_vcpu_count(n)
}

#[derive(Args)]
pub struct RunArgs {
    /// Firecracker-format JSON file (boot-source, machine-config, drives,
    /// network-interfaces, vsock, balloon, entropy).
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "cmdline", "vcpu_count", "mem_size_mib", "huge_pages", "entropy", "disks", "nets", "vsock", "balloon"])]
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
    #[arg(long, required_unless_present_any = ["config_file", "api_sock", "image"])]
    kernel: Option<PathBuf>,
    /// Run a container image (a local OCI layout or OCI archive) in a VM
    /// with the OCI runtime's kernel and agent (docs/oci.md); a command
    /// after `--` replaces the image's cmd.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["config_file", "api_sock", "kernel"])]
    pub image: Option<PathBuf>,
    #[arg(last = true, value_name = "CMD", requires = "image")]
    pub image_cmd: Vec<String>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long = "cpus", value_name = "N", value_parser = vcpu_count)]
    vcpu_count: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long = "memory", value_name = "MiB")]
    mem_size_mib: Option<u64>,
    /// What backs guest memory (Firecracker's huge_pages): None (4 KiB
    /// pages, the host's transparent huge pages refused), Transparent
    /// (the default) or 2M (hugetlbfs pages from the host's reserved pool,
    /// vm.nr_hugepages).
    #[arg(long, value_name = "None|Transparent|2M")]
    huge_pages: Option<HugePages>,
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

/// A command line clap refused: `--help` and `--version` print as usual;
/// anything else is one error line and exit 1, like every bad input.
pub fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    fail(first_line(&e))
}

/// The first line of a clap error, without clap's `error: ` prefix.
pub fn first_line(e: &clap::Error) -> String {
    let msg = e.render().to_string();
    let first = msg.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_owned()
}

/// `condo jail`: checks the inner command, builds the jail, and runs the
/// VMM in it (in the jailed child; the outer process waits for it).
pub fn jailed(j: &jail::JailArgs) -> ExitCode {
    let inner = match VmmCli::try_parse_from(
        std::iter::once("condo".to_owned()).chain(j.command.clone()),
    ) {
        Ok(VmmCli {
            command: VmmCommand::Run(args),
            ..
        }) => args,
        Ok(_) => return fail("jail: the command to run is `run ...`"),
        Err(e) => return fail(format!("jail: {}", first_line(&e))),
    };
    match jail::enter_jail(j) {
        Ok(None) => run(*inner),
        Ok(Some(status)) => ExitCode::from(status),
        Err(e) => fail(e),
    }
}

pub fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("condo: error: {msg}");
    ExitCode::from(EXIT_VMM_ERROR)
}

pub fn kvm_check() -> ExitCode {
    match vmm::check_kvm() {
        Ok(()) => {
            eprintln!("condo: /dev/kvm can run standard guests");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// The requests that configure the VM the command line describes.
fn flag_requests(a: &RunArgs) -> Result<Vec<VmRequest>, vmm::ConfigError> {
    let mut v = vec![
        VmRequest::PutBootSource(BootSource {
            // clap guarantees --kernel without --config-file or --api-sock.
            kernel_image_path: a.kernel.clone().unwrap_or_default(),
            initrd_path: a.initrd.clone(),
            boot_args: a.cmdline.clone(),
        }),
        VmRequest::PatchMachineConfig(MachineConfigUpdate {
            vcpu_count: a.vcpu_count,
            mem_size_mib: a.mem_size_mib,
            huge_pages: a.huge_pages,
            ..MachineConfigUpdate::default()
        }),
    ];
    for (i, spec) in a.disks.iter().enumerate() {
        v.push(VmRequest::PutDrive(Drive::from_spec(spec, i)?));
    }
    for (i, spec) in a.nets.iter().enumerate() {
        v.push(VmRequest::PutNetworkInterface(NetworkInterface::from_spec(
            spec, i,
        )?));
    }
    if let Some(spec) = &a.vsock {
        v.push(VmRequest::PutVsock(VsockConfig::from_spec(spec)?));
    }
    if let Some(spec) = &a.balloon {
        v.push(VmRequest::PutBalloon(BalloonConfig::from_spec(spec)?));
    }
    if a.entropy {
        v.push(VmRequest::PutEntropy(EntropyConfig::default()));
    }
    Ok(v)
}

/// The requests that configure the VM a config file describes.
fn file_requests(c: VmConfig) -> Vec<VmRequest> {
    let mut v = vec![
        VmRequest::PutBootSource(c.boot_source),
        VmRequest::PutMachineConfig(c.machine_config),
    ];
    v.extend(c.drives.into_iter().map(VmRequest::PutDrive));
    v.extend(
        c.network_interfaces
            .into_iter()
            .map(VmRequest::PutNetworkInterface),
    );
    v.extend(c.vsock.map(VmRequest::PutVsock));
    v.extend(c.balloon.map(VmRequest::PutBalloon));
    v.extend(c.entropy.map(VmRequest::PutEntropy));
    v
}

pub fn run(args: RunArgs) -> ExitCode {
    if args.image.is_some() {
        // `condo run --image` is served by the full condo binary.
        return fail("--image needs the condo binary (condo-vmm runs kernels)");
    }
    vmm::seccomp::set_level(if args.no_seccomp {
        0
    } else {
        args.seccomp_level
    });
    // The VM the command line or config file describes, as requests.
    let requests = match (&args.config_file, &args.kernel) {
        (Some(path), _) => VmConfig::from_file(path).map(|c| Some(file_requests(c))),
        (None, Some(_)) => flag_requests(&args).map(Some),
        (None, None) => Ok(None),
    };
    let requests = match requests {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let interactive = std::io::stdin().is_terminal();
    let mut vmm = Vmm::new(RunOptions {
        console_input: interactive,
        skip_probe: args.no_kvm_probe,
    });
    // Configuration errors come before the API socket exists.
    let boot = requests.is_some();
    for req in requests.into_iter().flatten() {
        if let Err(e) = vmm.handle(req) {
            return fail(e);
        }
    }
    let api = match &args.api_sock {
        Some(path) => {
            let (to_vmm, inbox) = match vmm::rpc::channel() {
                Ok(c) => c,
                Err(e) => return fail(format!("API: {e}")),
            };
            match vmm::api::ApiServer::start(path, to_vmm) {
                Ok(s) => Some((s, inbox)),
                Err(e) => return fail(e),
            }
        }
        None => None,
    };
    if boot {
        if let Err(e) = vmm.handle(VmRequest::InstanceStart) {
            return fail(e);
        }
    }

    // Restores the terminal on every return path below.
    let raw = if interactive {
        terminal::RawMode::enter()
    } else {
        None
    };
    let result = vmm.run(api.as_ref().map(|(_, inbox)| inbox));
    drop(raw);
    drop(api);
    exit_status(result)
}

/// The lean VMM binary beside this one, if it is there.
fn lean_vmm() -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.with_file_name("condo-vmm");
    p.is_file().then_some(p)
}

/// Runs this command line as the lean `condo-vmm` when it is beside this
/// binary (a VMM process then holds none of the full binary's pages);
/// returns if it is not, or cannot be run.
pub fn exec_lean_vmm() {
    use std::os::unix::process::CommandExt;
    let Some(lean) = lean_vmm() else { return };
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let e = std::process::Command::new(&lean)
        .arg0(argv0)
        .args(args)
        .exec();
    tracing::debug!("cannot run {}: {e}", lean.display());
}

/// The lean binary's main: the VMM's own commands only.
pub fn vmm_main() -> ExitCode {
    let cli = match VmmCli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    if let Err(e) = vmm::logger::init(&cli.log_level) {
        return fail(e);
    }
    dispatch(cli.command)
}

/// Runs one of the VMM's commands.
pub fn dispatch(c: VmmCommand) -> ExitCode {
    match c {
        VmmCommand::KvmCheck => kvm_check(),
        VmmCommand::Run(args) => run(*args),
        VmmCommand::Jail(j) => jailed(&j),
    }
}

/// How the VM ended, as the process's exit status.
fn exit_status(result: Result<VmExit, vmm::VmmError>) -> ExitCode {
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
        Ok(VmExit::Migrated) => {
            tracing::info!("the guest moved to another VMM");
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

#[cfg(test)]
mod vmm_cli_tests {
    use super::*;

    #[test]
    fn the_vmm_commands_parse_on_their_own() {
        let v = |a: &[&str]| is_vmm_command(a.iter().map(std::ffi::OsString::from));
        assert!(v(&["condo", "run", "--kernel", "k"]));
        assert!(v(&["condo", "--log-level", "debug", "jail"]));
        assert!(v(&["condo", "--log-level=info", "kvm-check"]));
        assert!(!v(&["condo", "ls"]));
        assert!(!v(&["condo", "--log-level", "run", "ls"]));
        assert!(!v(&["condo", "--help"]));
        assert!(!v(&["condo"]));
    }
}

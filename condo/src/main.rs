//! `condo`: the whole command line. The VMM's own commands (`run`,
//! `kvm-check`, `jail`: [`condo_cli::vmm_cli`]) run as the lean `condo-vmm`
//! when it is installed beside this binary; the rest are the host manager
//! (`host`), the planner (`plan`) and the OCI runtime (`oci`, also reached
//! as `condo-runtime`). All VM logic lives in the `vmm` crate.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use condo_cli::vmm_cli::{self, fail, is_vmm_command, usage_error, VmmCli, VmmCommand};

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
    #[command(flatten)]
    Vmm(VmmCommand),
    /// Simulate VM consolidation on utilization traces and plan migrations
    /// (see docs/plan.md).
    Plan(Box<plan::PlanArgs>),
    /// The OCI runtime (runc's command line; each container in its own
    /// microVM). Also run as `condo-runtime ...` (see docs/oci.md).
    Oci(Box<oci::OciArgs>),
    /// The host manager: `condo daemon` and the commands that talk to it.
    #[command(flatten)]
    Host(host::cli::HostCommand),
}

fn main() -> ExitCode {
    // Under the name condo-runtime, condo is the OCI runtime engines call.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("condo-runtime"))
    {
        use clap::Parser as _;
        let code = oci::run(oci::cli::RuntimeCli::parse().args);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let vmm_command = is_vmm_command(std::env::args_os());
    if vmm_command
        && !std::env::args_os()
            .any(|a| a == "--image" || a.to_string_lossy().starts_with("--image="))
    {
        // A VMM runs as the lean binary when it is installed beside this one.
        vmm_cli::exec_lean_vmm();
    }
    let cli = if vmm_command {
        VmmCli::try_parse().map(|c| Cli {
            log_level: c.log_level,
            command: Command::Vmm(c.command),
        })
    } else {
        Cli::try_parse()
    };
    let cli = match cli {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    if let Err(e) = vmm::logger::init(&cli.log_level) {
        return fail(e);
    }
    match cli.command {
        Command::Vmm(VmmCommand::Run(args)) if args.image.is_some() => {
            let image = args.image.as_deref().unwrap_or(std::path::Path::new(""));
            let code = oci::image::run(image, &args.image_cmd, None);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Command::Vmm(c) => vmm_cli::dispatch(c),
        Command::Oci(a) => ExitCode::from(u8::try_from(oci::run(*a)).unwrap_or(1)),
        Command::Plan(a) => match plan::run(&a) {
            Ok(text) => {
                use std::io::Write;
                let _ = std::io::stdout().lock().write_all(text.as_bytes());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Host(c) => match host::cli::run(c) {
            Ok(code) => ExitCode::from(code),
            Err(e) => fail(e),
        },
    }
}

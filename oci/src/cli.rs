//! runc's command line, as `condo oci ...` (or `condo-runtime ...`) takes
//! it: the global flags podman's conmon and containerd's runc shim put
//! before each command, and the commands they call.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::error::LogFormat;

/// `condo oci`: an OCI runtime that runs each container in its own microVM.
#[derive(Debug, Args)]
pub struct OciArgs {
    /// Where container state lives (runc's --root).
    #[arg(long, global = true, default_value = crate::state::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Also write errors and warnings to this file.
    #[arg(long, global = true, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Format of the --log file.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// cgroupsPath is systemd's slice:prefix:name (the cgroup is then
    /// SLICE/PREFIX-NAME.scope under the cgroupfs).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility (more output in the log).
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for runc compatibility; ignored.
    #[arg(long, global = true, value_name = "PATH", hide = true)]
    pub criu: Option<PathBuf>,
    /// Accepted for runc compatibility; ignored.
    #[arg(long, global = true, value_name = "BOOL", hide = true)]
    pub rootless: Option<String>,
    /// The runtime's configuration file (default /etc/condo/oci.json, or
    /// $CONDO_OCI_CONFIG).
    #[arg(long, global = true, value_name = "FILE", env = "CONDO_OCI_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: OciCommand,
}

/// The runtime's commands (runc's names and flags).
#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// Create a container: boot its VM and hold its process until `start`.
    Create(CreateArgs),
    /// Start the process of a created container.
    Start(IdArg),
    /// Create and start a container, and wait for it (runc run).
    Run(RunArgs),
    /// Print the container's state (OCI State JSON).
    State(IdArg),
    /// Send a signal to the container's process (default SIGTERM).
    Kill(KillArgs),
    /// Delete a stopped container's resources (`--force`: stop it first).
    Delete(DeleteArgs),
    /// Pause every vCPU of the container's VM.
    Pause(IdArg),
    /// Resume a paused container.
    Resume(IdArg),
    /// Run another process in a running container.
    Exec(ExecArgs),
    /// List the host processes of a container.
    Ps(PsArgs),
    /// List containers.
    List(ListArgs),
    /// Print what this runtime supports (runc features JSON).
    Features,
    /// Check that everything the runtime needs is in place.
    Check,
    /// The container's monitor (started by `create`; not for users).
    #[command(hide = true)]
    Monitor(MonitorArgs),
    /// The monitor of one exec'd process (started by `exec`).
    #[command(hide = true)]
    ExecMonitor(ExecMonitorArgs),
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// The container's id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The bundle directory (holds config.json).
    #[arg(long, short = 'b', default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket that receives the terminal's master side (SCM_RIGHTS).
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Write the container's process id here.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Accepted for runc compatibility (extra descriptors are not passed
    /// into a VM).
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// The container's id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Do not wait for the container (create and start only).
    #[arg(long, short = 'd')]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal every process of the container.
    #[arg(long, short = 'a')]
    pub all: bool,
    /// The container's id.
    pub id: String,
    /// Signal name or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kill a running container first (SIGKILL).
    #[arg(long, short = 'f')]
    pub force: bool,
    /// The container's id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// A JSON file with the process (the OCI `process` object).
    #[arg(long, short = 'p', value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Return at once; the process is watched by a child that exits with
    /// its status.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Write the exec monitor's process id here.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// Allocate a terminal.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Unix socket that receives the terminal's master side.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Working directory (without --process).
    #[arg(long)]
    pub cwd: Option<String>,
    /// Environment variable K=V (without --process). Repeat.
    #[arg(long, short = 'e')]
    pub env: Vec<String>,
    /// UID[:GID] (without --process).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Accepted for runc compatibility.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted for runc compatibility.
    #[arg(long, hide = true)]
    pub process_label: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long, hide = true)]
    pub apparmor: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long, hide = true)]
    pub cap: Vec<String>,
    /// The container's id.
    pub id: String,
    /// The command and its arguments (without --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// table or json.
    #[arg(long, short = 'f', default_value = "table")]
    pub format: String,
    /// The container's id.
    pub id: String,
    /// ps options (ignored: the list is of host processes).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// table or json.
    #[arg(long, short = 'f', default_value = "table")]
    pub format: String,
    /// Only the ids.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Descriptor on which the monitor reports that the container is
    /// created ("ok") or why it could not be.
    #[arg(long)]
    pub ready_fd: i32,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ExecMonitorArgs {
    #[arg(long)]
    pub ready_fd: i32,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// The process, as JSON, in this file (removed once read).
    #[arg(long)]
    pub process: PathBuf,
    pub id: String,
}

/// The runtime as a program of its own (`condo-runtime ...`, the name
/// engines are given): the same flags and commands as `condo oci`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "condo-runtime",
    version,
    about = "condo's OCI runtime: runc's command line, each container in its own microVM"
)]
pub struct RuntimeCli {
    #[command(flatten)]
    pub args: OciArgs,
}

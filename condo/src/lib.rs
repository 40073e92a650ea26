//! The `condo` package's shared code: the VMM's own command line
//! ([`vmm_cli`]) and the jail, used by both binaries (`condo`, the full
//! command line, and `condo-vmm`, the lean one every VMM process runs as).

pub mod jail;
mod jail_console;
mod terminal;
pub mod vmm_cli;

//! `condo-vmm`: the lean binary every VMM process runs as (`condo run`,
//! `condo jail`, `condo kvm-check` exec it when it is installed beside
//! `condo`): the VMM's own commands and nothing else, so that a guest's
//! VMM does not carry the host manager's, the planner's or the OCI
//! runtime's code in its resident memory.

fn main() -> std::process::ExitCode {
    condo_cli::vmm_cli::vmm_main()
}

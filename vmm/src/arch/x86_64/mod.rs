//! x86_64 machine setup: memory layout and e820, CPUID, MSRs, registers and
//! GDT, LAPIC LINTs, MP table, ACPI tables and the boot parameters of both
//! boot protocols (Linux 64-bit `boot_params` and PVH `hvm_start_info`).
//!
//! Nothing here runs the guest; the VMM calls these while building a VM.

mod acpi;
mod boot;
mod cpuid;
mod gdt;
mod interrupts;
pub mod layout;
mod mptable;
mod msr;
mod regs;

pub use acpi::{create_acpi_tables, AcpiConfig, MmioDeviceDesc};
pub use boot::{configure_system, initrd_load_addr};
pub use cpuid::{filter_cpuid, missing_features, set_tsc_deadline};
pub use interrupts::set_lint;
pub use layout::{guest_ram_regions, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
pub use mptable::setup_mptable;
pub use msr::setup_msrs;
pub use regs::{setup_fpu, setup_regs, setup_sregs, BootProtocol};

/// Errors from x86_64 machine setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {what} to guest memory: {err}")]
    GuestMemory {
        what: &'static str,
        err: vm_memory::GuestMemoryError,
    },
    #[error("{what}: {err}")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {want} boot MSRs")]
    Msrs { set: usize, want: usize },
    #[error("too many vCPUs ({0}) for the MP table")]
    TooManyCpus(u8),
    #[error("the CPUID table has too many entries")]
    Cpuid,
    #[error("initrd of {0} bytes does not fit below the 32-bit MMIO gap")]
    InitrdTooBig(usize),
    #[error("ACPI tables do not fit below 1 MiB")]
    AcpiTooBig,
}

pub type Result<T> = std::result::Result<T, Error>;

fn mem_err(what: &'static str) -> impl Fn(vm_memory::GuestMemoryError) -> Error {
    move |err| Error::GuestMemory { what, err }
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |err| Error::Kvm { what, err }
}

//! Creates the VM's devices and puts them on the buses.
//!
//! Legacy devices live on the port I/O bus; their interrupts are eventfds
//! registered as KVM irqfds, so raising one never leaves the kernel.

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::legacy::{
    AcpiPmDevice, PvPanic, SerialDevice, ACPI_PM_PORT, COM1_IRQ, COM1_PORT, I8042, I8042_PORT,
    PVPANIC_PORT,
};
use devices::{Bus, BusError, ExitSignal};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Errors creating devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot register irqfd for GSI {gsi}: {err}")]
    Irqfd { gsi: u32, err: kvm_ioctls::Error },
    #[error("cannot place device: {0}")]
    Bus(#[from] BusError),
}

/// The VM's devices.
pub struct DeviceManager {
    /// Port I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// The console UART, for feeding host input.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Guest-requested exits (power off, reset, panic).
    pub exit: Arc<ExitSignal>,
}

impl DeviceManager {
    /// Creates the legacy devices; guest console output goes to `out`.
    pub fn new(vm: &VmFd, out: Box<dyn Write + Send>) -> Result<Self, DeviceError> {
        let exit = Arc::new(ExitSignal::new().map_err(DeviceError::EventFd)?);
        let mut pio = Bus::new();

        let irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&irq, COM1_IRQ)
            .map_err(|err| DeviceError::Irqfd { gsi: COM1_IRQ, err })?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(irq, out)));
        pio.insert(serial.clone(), COM1_PORT, 8)?;
        // Ports 0x60 (data) to 0x64 (command).
        pio.insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            I8042_PORT,
            5,
        )?;
        pio.insert(
            Arc::new(Mutex::new(AcpiPmDevice::new(exit.clone()))),
            ACPI_PM_PORT,
            1,
        )?;
        pio.insert(
            Arc::new(Mutex::new(PvPanic::new(exit.clone()))),
            PVPANIC_PORT,
            1,
        )?;

        Ok(Self {
            pio,
            mmio: Bus::new(),
            serial,
            exit,
        })
    }
}

/// Guest console output to the VMM's stdout, unbuffered so prompts without
/// a newline show at once.
pub struct ConsoleOut;

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

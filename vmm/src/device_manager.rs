//! Creates the VM's devices and puts them on the buses.
//!
//! Legacy devices live on the port I/O bus; their interrupts are eventfds
//! registered as KVM irqfds, so raising one never leaves the kernel. Every
//! virtio device is built from its [`VirtioDeviceState`] (made from the
//! configuration at boot, read from a snapshot or a migration stream on
//! restore), behind a virtio-mmio window whose queue notifications are KVM
//! ioeventfds.

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::legacy::{
    AcpiPmDevice, PvPanic, SerialDevice, SerialState, ACPI_PM_PORT, COM1_IRQ, COM1_PORT, I8042,
    I8042_PORT, KBD_IRQ, PVPANIC_PORT,
};
use devices::persist::Persist;
use devices::sync::lock;
use devices::virtio::mmio::{
    MmioTransport, TransportArgs, TransportState, MMIO_WINDOW, NOTIFY_OFFSET,
};
use devices::virtio::persist::{DeviceHandle, DeviceStateError, VirtioDeviceState};
use devices::GuestMemoryMmap;
use devices::{Bus, BusError, ExitSignal};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::layout::MMIO_DEVICES_START;
use crate::arch::MmioDeviceDesc;

/// First GSI for virtio-mmio devices (ISA IRQs 0-4 are taken).
const VIRTIO_FIRST_IRQ: u32 = 5;
/// Last IOAPIC pin.
const LAST_IRQ: u32 = 23;

/// Errors creating devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot register irqfd for GSI {gsi}: {err}")]
    Irqfd { gsi: u32, err: kvm_ioctls::Error },
    #[error("cannot place device: {0}")]
    Bus(#[from] BusError),
    #[error("too many devices: at most {} virtio devices", LAST_IRQ - VIRTIO_FIRST_IRQ + 1)]
    TooManyDevices,
    #[error("virtio device: {0}")]
    Transport(#[from] devices::virtio::mmio::TransportError),
    #[error("cannot register ioeventfd at {addr:#x}: {err}")]
    Ioeventfd { addr: u64, err: kvm_ioctls::Error },
    #[error(transparent)]
    Device(#[from] DeviceStateError),
    #[error("serial port state: {0}")]
    Serial(std::io::Error),
}

/// The VM's devices.
pub struct DeviceManager {
    /// Port I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// The console UART, for feeding host input.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The keyboard controller (Ctrl+Alt+Del).
    pub i8042: Arc<Mutex<I8042>>,
    /// Guest-requested exits (power off, reset, panic).
    pub exit: Arc<ExitSignal>,
    /// Where each virtio-mmio device sits, for ACPI and the command line.
    pub virtio: Vec<MmioDeviceDesc>,
    /// What the VMM drives of each virtio device, in `virtio` order.
    pub handles: Vec<DeviceHandle>,
    /// The virtio transports, in `virtio` order.
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl DeviceManager {
    /// Creates the legacy devices; the UART as `serial` has it (a
    /// snapshot's) or fresh.
    pub fn new(vm: &VmFd, serial: Option<&SerialState>) -> Result<Self, DeviceError> {
        let exit = Arc::new(ExitSignal::new().map_err(DeviceError::EventFd)?);
        let mut pio = Bus::new();

        let irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&irq, COM1_IRQ)
            .map_err(|err| DeviceError::Irqfd { gsi: COM1_IRQ, err })?;
        let out: Box<dyn Write + Send> = Box::new(ConsoleOut);
        let serial = match serial {
            Some(st) => SerialDevice::restore((irq, out), st),
            None => SerialDevice::new(irq, out),
        }
        .map_err(DeviceError::Serial)?;
        let serial = Arc::new(Mutex::new(serial));
        pio.insert(serial.clone(), COM1_PORT, 8)?;
        let kbd_irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&kbd_irq, KBD_IRQ)
            .map_err(|err| DeviceError::Irqfd { gsi: KBD_IRQ, err })?;
        let i8042 = Arc::new(Mutex::new(I8042::new(exit.clone(), Some(kbd_irq))));
        // Ports 0x60 (data) to 0x64 (command).
        pio.insert(i8042.clone(), I8042_PORT, 5)?;
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
            i8042,
            exit,
            virtio: Vec::new(),
            handles: Vec::new(),
            transports: Vec::new(),
        })
    }

    /// Builds the device `state` describes and puts it behind a virtio-mmio
    /// window with its own interrupt; queue notifications become
    /// ioeventfds, the interrupt an irqfd. With `transport`, the transport
    /// is restored as it was (and its device started if it ran).
    pub fn add_virtio(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        state: &VirtioDeviceState,
        transport: Option<&TransportState>,
    ) -> Result<(), DeviceError> {
        let index = self.virtio.len() as u64;
        let irq = VIRTIO_FIRST_IRQ + index as u32;
        if irq > LAST_IRQ {
            return Err(DeviceError::TooManyDevices);
        }
        let (device, handle) = state.build()?;
        let base = MMIO_DEVICES_START + index * MMIO_WINDOW;
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&irq_evt, irq)
            .map_err(|err| DeviceError::Irqfd { gsi: irq, err })?;
        let args = TransportArgs {
            device,
            mem: mem.clone(),
            irq: irq_evt,
        };
        let transport = match transport {
            Some(st) => MmioTransport::restore(args, st)?,
            None => MmioTransport::new(args.device, args.mem, args.irq)?,
        };
        let addr = base + NOTIFY_OFFSET;
        for (queue, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(addr), queue as u32)
                .map_err(|err| DeviceError::Ioeventfd { addr, err })?;
        }
        tracing::info!(
            device_type = transport.device_type(),
            base = format_args!("{base:#x}"),
            irq,
            "virtio device"
        );
        let transport = Arc::new(Mutex::new(transport));
        self.mmio.insert(transport.clone(), base, MMIO_WINDOW)?;
        self.transports.push(transport);
        self.handles.push(handle);
        self.virtio.push(MmioDeviceDesc {
            base,
            size: MMIO_WINDOW,
            irq,
        });
        Ok(())
    }

    fn each_transport(&self, mut f: impl FnMut(&mut MmioTransport)) {
        for t in &self.transports {
            f(&mut lock(t));
        }
    }

    /// Stops every virtio device with its rings at rest (for a snapshot).
    pub fn quiesce(&self) {
        self.each_transport(|t| t.quiesce());
    }

    /// Starts quiesced virtio devices again.
    pub fn resume(&self) {
        self.each_transport(|t| t.resume());
    }

    /// Lets go of the host resources only one process can hold (TAPs, vsock
    /// listeners): the devices must be quiesced.
    pub fn detach_backends(&self) {
        self.each_transport(|t| t.detach_backend());
    }

    /// Takes them again; the first failure is returned, the rest are still
    /// tried.
    pub fn attach_backends(&self) -> Result<(), devices::virtio::ActivateError> {
        let mut first = None;
        self.each_transport(|t| {
            if let Err(e) = t.attach_backend() {
                first.get_or_insert(e);
            }
        });
        first.map_or(Ok(()), Err)
    }

    /// Has every network device announce its guest's MAC address.
    pub fn announce(&self) {
        self.each_transport(|t| t.announce());
    }

    /// Has the UART raise its pending interrupt again and every running
    /// virtio device look at its rings once: after a restore, when the
    /// vCPUs and interrupt controllers are back.
    pub fn first_look(&self) {
        lock(&self.serial).reraise_pending();
        self.each_transport(|t| t.first_look());
    }

    /// The UART's state.
    pub fn serial_state(&self) -> SerialState {
        lock(&self.serial).save()
    }

    /// Every virtio transport's state, with its device's (devices
    /// quiesced).
    pub fn transport_states(&self) -> Vec<TransportState> {
        let mut v = Vec::new();
        self.each_transport(|t| v.push(t.save()));
        v
    }

    /// `virtio_mmio.device=` arguments announcing every virtio device, for
    /// guests that run without ACPI.
    pub fn virtio_cmdline_args(&self) -> String {
        self.virtio
            .iter()
            .map(|d| format!(" virtio_mmio.device=4K@{:#x}:{}", d.base, d.irq))
            .collect()
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

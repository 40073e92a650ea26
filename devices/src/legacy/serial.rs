//! The COM1 16550A UART (from `vm-superio`), with its interrupt on an eventfd.

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::persist::Persist;

/// COM1's I/O port base.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's ISA IRQ line.
pub const COM1_IRQ: u32 = 4;

/// An eventfd usable as a `vm-superio` interrupt trigger.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The UART as a bus device; output goes to `out`.
pub struct SerialDevice {
    uart: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
    irq: EventFd,
}

/// The UART's registers and receive FIFO, for a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing guest output to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> io::Result<Self> {
        Ok(Self {
            uart: Serial::new(EventFdTrigger(irq.try_clone()?), out),
            irq,
        })
    }

    /// The registers and FIFO.
    fn snapshot(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Puts the registers and FIFO back; output goes to `out`.
    fn restore_state(&mut self, snap: &SerialState, out: Box<dyn Write + Send>) -> io::Result<()> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: snap.baud_divisor_low,
            baud_divisor_high: snap.baud_divisor_high,
            interrupt_enable: snap.interrupt_enable,
            interrupt_identification: snap.interrupt_identification,
            line_control: snap.line_control,
            line_status: snap.line_status,
            modem_control: snap.modem_control,
            modem_status: snap.modem_status,
            scratch: snap.scratch,
            in_buffer: snap.in_buffer.clone(),
        };
        let trigger = EventFdTrigger(self.irq.try_clone()?);
        self.uart = Serial::from_state(&state, trigger, NoEvents, out).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("UART state: {e:?}"))
        })?;
        Ok(())
    }

    /// Raises the interrupt again when the UART has one pending (its IIR
    /// says so). After a restore: the edge the guest's driver waits for
    /// may have been raised in the old process but never reached the
    /// saved interrupt controllers (KVM injects an eventfd's interrupt
    /// asynchronously), and a driver waiting for "transmitter empty" would
    /// then never write again. An extra edge is harmless: the driver reads
    /// IIR and finds nothing, or what is there.
    pub fn reraise_pending(&self) {
        if self.uart.state().interrupt_identification & 1 == 0 {
            if let Err(e) = self.irq.write(1) {
                tracing::warn!("serial: interrupt: {e}");
            }
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes were taken.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.uart.fifo_capacity());
        if n == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("serial input dropped: {e}");
                0
            }
        }
    }
}

impl Persist for SerialDevice {
    type State = SerialState;
    /// The interrupt, and where guest output goes.
    type ConstructorArgs = (EventFd, Box<dyn Write + Send>);
    type Error = io::Error;

    fn save(&self) -> SerialState {
        self.snapshot()
    }

    fn restore((irq, out): Self::ConstructorArgs, st: &SerialState) -> io::Result<Self> {
        let mut dev = Self::new(irq, Box::new(io::sink()))?;
        dev.restore_state(st, out)?;
        Ok(dev)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), &mut *data) {
            *b = self.uart.read(off);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(off, *b) {
                // Output errors (a closed stdout) must not stop the guest.
                tracing::debug!("serial write: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_and_input() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Box::new(sink.clone())).unwrap();
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        // Enable the "received data available" interrupt, then feed input.
        s.write(1, &[1]);
        assert_eq!(s.enqueue_input(b"x"), 1);
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b, [b'x']);
        // Wide accesses are ignored rather than misinterpreted.
        s.write(0, &[1, 2]);
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
    }

    #[test]
    fn input_is_bounded_by_fifo() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq, Box::new(io::sink())).unwrap();
        let cap = s.input_capacity();
        let big = vec![b'a'; cap + 100];
        assert_eq!(s.enqueue_input(&big), cap);
        assert_eq!(s.enqueue_input(b"more"), 0);
    }

    /// A UART saved with "transmitter empty" pending (the guest wrote and
    /// waits for the interrupt) raises it again once restored; one with
    /// nothing pending does not.
    #[test]
    fn a_pending_interrupt_is_raised_again_after_a_restore() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Box::new(io::sink())).unwrap();
        let quiet = s.save();
        // THR-empty interrupt enabled, then a byte written.
        s.write(1, &[2]);
        s.write(0, b"x");
        let pending = s.save();
        assert_eq!(pending.interrupt_identification & 1, 0, "{pending:?}");
        for (st, raised) in [(pending, true), (quiet, false)] {
            let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let r = SerialDevice::restore((irq.try_clone().unwrap(), Box::new(io::sink())), &st)
                .unwrap();
            r.reraise_pending();
            assert_eq!(irq.read().is_ok(), raised, "{st:?}");
        }
    }
}

//! The i8042 keyboard controller with a keyboard behind it, as far as a
//! guest needs: the CPU reset line (`reboot=k` writes 0xfe to the command
//! port), and Ctrl+Alt+Del, which the VMM injects (Firecracker's
//! `SendCtrlAltDel`) as scan codes with keyboard interrupt IRQ 1 so the
//! guest's atkbd driver hands it to init. Every controller and keyboard
//! command Linux's i8042 and atkbd drivers send at probe time gets the
//! answer a real one gives, so probing costs no timeouts.

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// Base port of the range the i8042 occupies (0x60 data .. 0x64 command).
pub const I8042_PORT: u64 = 0x60;
/// The keyboard's interrupt line.
pub const KBD_IRQ: u32 = 1;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

// Status register.
const SR_OUTPUT_FULL: u8 = 0x01;
const SR_SYSTEM: u8 = 0x04;
const SR_LAST_WAS_COMMAND: u8 = 0x08;
const SR_KBD_UNLOCKED: u8 = 0x10;

// Controller configuration byte.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;

// Controller commands (port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

// Keyboard commands (port 0x60) and answers.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SET_RATE: u8 = 0xf3;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;

/// Ctrl, Alt and Delete pressed, in scan code set 2 (the controller does
/// not translate), as Firecracker sends them.
const CTRL_ALT_DEL: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];

const BUF_SIZE: usize = 16;

/// The controller, spanning ports 0x60..=0x64.
pub struct I8042 {
    exit: Arc<ExitSignal>,
    irq: Option<EventFd>,
    status: u8,
    ctr: u8,
    outp: u8,
    /// A controller command waiting for its data byte.
    pending_cmd: Option<u8>,
    /// A keyboard command waiting for its argument.
    pending_kbd: Option<u8>,
    buf: VecDeque<u8>,
}

impl I8042 {
    /// A controller that reports resets to `exit`; keyboard interrupts go
    /// to `irq` (an irqfd for [`KBD_IRQ`]) when given.
    pub fn new(exit: Arc<ExitSignal>, irq: Option<EventFd>) -> Self {
        Self {
            exit,
            irq,
            status: SR_SYSTEM | SR_KBD_UNLOCKED,
            ctr: CTR_KBD_INT | CTR_SYSTEM | CTR_AUX_DISABLED,
            outp: 0x01,
            pending_cmd: None,
            pending_kbd: None,
            buf: VecDeque::with_capacity(BUF_SIZE),
        }
    }

    /// Presses Ctrl+Alt+Del on the keyboard. Fails when the guest has not
    /// read what is already waiting (the buffer would overflow).
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), &'static str> {
        if BUF_SIZE - self.buf.len() < CTRL_ALT_DEL.len() {
            return Err("the keyboard buffer is full");
        }
        self.buf.extend(CTRL_ALT_DEL);
        self.update();
        Ok(())
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.buf.len() < BUF_SIZE {
                self.buf.push_back(b);
            }
        }
        self.update();
    }

    /// Sets "output full" from the buffer and raises the keyboard
    /// interrupt when a byte waits and interrupts are on.
    fn update(&mut self) {
        if self.buf.is_empty() {
            self.status &= !SR_OUTPUT_FULL;
            return;
        }
        self.status |= SR_OUTPUT_FULL;
        if self.ctr & CTR_KBD_INT != 0 && self.ctr & CTR_KBD_DISABLED == 0 {
            if let Some(irq) = &self.irq {
                let _ = irq.write(1);
            }
        }
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SR_LAST_WAS_COMMAND;
        self.pending_cmd = None;
        match cmd {
            CMD_READ_CTR => {
                self.buf.clear();
                self.push(&[self.ctr]);
            }
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUT | CMD_WRITE_AUX_OUT
            | CMD_WRITE_AUX => self.pending_cmd = Some(cmd),
            CMD_READ_OUTP => self.push(&[self.outp]),
            CMD_SELF_TEST => {
                self.buf.clear();
                self.push(&[0x55]);
            }
            CMD_KBD_TEST => self.push(&[0x00]),
            // No mouse: its port test fails, so the guest does not use it.
            CMD_AUX_TEST => self.push(&[0xff]),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => {
                self.ctr &= !CTR_KBD_DISABLED;
                self.update();
            }
            CMD_AUX_DISABLE | CMD_AUX_ENABLE => {}
            CMD_RESET_CPU => self.exit.signal(ExitReason::Reset),
            _ => {}
        }
    }

    fn data(&mut self, b: u8) {
        self.status &= !SR_LAST_WAS_COMMAND;
        if let Some(cmd) = self.pending_cmd.take() {
            match cmd {
                CMD_WRITE_CTR => {
                    self.ctr = b;
                    self.status = (self.status & !SR_SYSTEM) | (b & CTR_SYSTEM);
                    self.update();
                }
                CMD_WRITE_OUTP => {
                    // Bit 0 low pulses the CPU reset line.
                    if b & 1 == 0 {
                        self.exit.signal(ExitReason::Reset);
                    }
                    self.outp = b;
                }
                // Echoed as if the keyboard had sent it.
                CMD_WRITE_KBD_OUT => self.push(&[b]),
                // No mouse: writes to it vanish.
                _ => {}
            }
            return;
        }
        if let Some(kc) = self.pending_kbd.take() {
            // The argument of a keyboard command.
            if kc == KBD_SCANCODE_SET && b == 0 {
                self.push(&[KBD_ACK, 0x02]);
            } else {
                self.push(&[KBD_ACK]);
            }
            return;
        }
        match b {
            KBD_SET_LEDS | KBD_SET_RATE | KBD_SCANCODE_SET => {
                self.pending_kbd = Some(b);
                self.push(&[KBD_ACK]);
            }
            KBD_ECHO => self.push(&[KBD_ECHO]),
            KBD_GET_ID => self.push(&[KBD_ACK, 0xab, 0x83]),
            KBD_RESET => {
                self.buf.clear();
                self.push(&[KBD_ACK, KBD_SELF_TEST_OK]);
            }
            _ => self.push(&[KBD_ACK]),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(b) = data.first_mut() else { return };
        match offset {
            DATA => {
                *b = self.buf.pop_front().unwrap_or(0);
                self.update();
            }
            COMMAND => *b = self.status,
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [b] = data else { return };
        match offset {
            DATA => self.data(*b),
            COMMAND => self.command(*b),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (I8042, Arc<ExitSignal>, EventFd) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        (
            I8042::new(exit.clone(), Some(irq.try_clone().unwrap())),
            exit,
            irq,
        )
    }

    fn read(k: &mut I8042, port: u64) -> u8 {
        let mut b = [0u8];
        k.read(port, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_signals_reset() {
        let (mut k, exit, _) = dev();
        k.write(COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn probe_sequence_gets_real_answers() {
        let (mut k, _, _) = dev();
        k.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut k, COMMAND) & SR_OUTPUT_FULL, SR_OUTPUT_FULL);
        assert_eq!(read(&mut k, DATA), 0x55);
        assert_eq!(read(&mut k, COMMAND) & SR_OUTPUT_FULL, 0);
        k.write(COMMAND, &[CMD_READ_CTR]);
        let ctr = read(&mut k, DATA);
        k.write(COMMAND, &[CMD_WRITE_CTR]);
        k.write(DATA, &[ctr | 0x40]);
        k.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut k, DATA), ctr | 0x40);
        k.write(DATA, &[KBD_GET_ID]);
        assert_eq!(
            [read(&mut k, DATA), read(&mut k, DATA), read(&mut k, DATA)],
            [KBD_ACK, 0xab, 0x83]
        );
        k.write(DATA, &[KBD_SCANCODE_SET]);
        k.write(DATA, &[0]);
        assert_eq!(
            [read(&mut k, DATA), read(&mut k, DATA), read(&mut k, DATA)],
            [KBD_ACK, KBD_ACK, 0x02]
        );
        k.write(COMMAND, &[CMD_AUX_TEST]);
        assert_eq!(read(&mut k, DATA), 0xff);
    }

    #[test]
    fn ctrl_alt_del_is_scan_codes_and_an_interrupt() {
        let (mut k, _, irq) = dev();
        k.send_ctrl_alt_del().unwrap();
        assert!(irq.read().is_ok(), "no keyboard interrupt");
        let got: Vec<u8> = (0..4).map(|_| read(&mut k, DATA)).collect();
        assert_eq!(got, CTRL_ALT_DEL);
        assert_eq!(read(&mut k, COMMAND) & SR_OUTPUT_FULL, 0);
        // A guest that never reads: the buffer fills, then refuses.
        for _ in 0..BUF_SIZE / CTRL_ALT_DEL.len() {
            k.send_ctrl_alt_del().unwrap();
        }
        assert!(k.send_ctrl_alt_del().is_err());
    }

    #[test]
    fn hostile_port_io_is_harmless() {
        let (mut k, _, _) = dev();
        for b in 0..=255u8 {
            for port in 0..5 {
                k.write(port, &[b]);
                k.write(port, &[b, b]);
                let mut big = [0u8; 4];
                k.read(port, &mut big);
                k.read(port, &mut []);
            }
        }
        assert!(k.buf.len() <= BUF_SIZE);
    }
}

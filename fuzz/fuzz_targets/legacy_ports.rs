//! Port I/O to the UART, the i8042, the ACPI PM register and pvpanic.
#![no_main]
use std::sync::Arc;

use devices::legacy::{AcpiPmDevice, PvPanic, SerialDevice, I8042};
use devices::{BusDevice, ExitSignal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (Ok(exit), Ok(irq)) = (ExitSignal::new(), vmm_sys_util::eventfd::EventFd::new(0)) else {
        return;
    };
    let exit = Arc::new(exit);
    let Ok(serial) = SerialDevice::new(irq, Box::new(std::io::sink())) else {
        return;
    };
    let mut devs: Vec<Box<dyn BusDevice>> = vec![
        Box::new(serial),
        Box::new(I8042::new(exit.clone(), None)),
        Box::new(AcpiPmDevice::new(exit.clone())),
        Box::new(PvPanic::new(exit)),
    ];
    // Each access: device, op (read/write, width), offset, value.
    for op in data.chunks_exact(4) {
        let n = devs.len();
        let d = &mut devs[usize::from(op[0]) % n];
        let width = [1usize, 2, 4, 1][usize::from(op[1] >> 1 & 3)];
        let offset = u64::from(op[2] & 7);
        let value = [op[3]; 4];
        if op[1] & 1 == 0 {
            let mut buf = [0u8; 4];
            d.read(offset, &mut buf[..width]);
        } else {
            d.write(offset, &value[..width]);
        }
    }
});

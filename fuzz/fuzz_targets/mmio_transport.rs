//! Register accesses to the virtio-mmio transport (an entropy device behind
//! it): any offset, width and value, in any order, activation included.
#![no_main]
use devices::BusDevice;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mem = common::guest(&[]);
    let Ok(evt) = vmm_sys_util::eventfd::EventFd::new(0) else {
        return;
    };
    let dev = Box::new(devices::virtio::rng::Rng::new());
    let Ok(mut t) = devices::virtio::mmio::MmioTransport::new(dev, mem, evt) else {
        return;
    };
    // Each access: op (read/write, width), 16-bit offset, 32-bit value.
    for op in data.chunks_exact(7) {
        let width = [1usize, 2, 4, 8][usize::from(op[0] >> 1 & 3)];
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]));
        let value = u64::from(u32::from_le_bytes([op[3], op[4], op[5], op[6]]));
        if op[0] & 1 == 0 {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..width]);
        } else {
            t.write(offset, &value.to_le_bytes()[..width]);
        }
    }
});

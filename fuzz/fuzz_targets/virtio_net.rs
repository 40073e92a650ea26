//! virtio-net transmit chains and receive buffers from a hostile driver.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mem = common::guest(data);
    let ev = data.first().is_some_and(|b| b & 1 != 0);
    let (Some(rx), Some(tx)) = (common::queue(&mem, 0, ev), common::queue(&mem, 1, ev)) else {
        return;
    };
    let frame = data
        .get(1..3)
        .map_or(64, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    devices::virtio::net::fuzz_queues(&mem, rx, tx, frame);
});

//! vsock packets from a hostile driver.
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
    devices::virtio::vsock::fuzz_queues(&mem, rx, tx);
});

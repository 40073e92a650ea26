//! Balloon page lists, statistics and free page reports from a hostile
//! driver.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mem = common::guest(data);
    let ev = data.first().is_some_and(|b| b & 1 != 0);
    let queues: Option<Vec<_>> = (0..4).map(|i| common::queue(&mem, i, ev)).collect();
    if let Some(q) = queues {
        devices::virtio::balloon::fuzz_queues(&mem, q);
    }
});

//! Entropy requests from a hostile driver.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mem = common::guest(data);
    let Some(mut q) = common::queue(&mem, 0, data.first().is_some_and(|b| b & 1 != 0)) else {
        return;
    };
    let Ok(evt) = vmm_sys_util::eventfd::EventFd::new(0) else {
        return;
    };
    let irq = devices::virtio::Interrupt::new(evt);
    let mut buf = vec![0u8; devices::virtio::rng::MAX_REQUEST as usize];
    let _ = devices::virtio::rng::process_queue(&mem, &mut q, &irq, &mut buf);
});

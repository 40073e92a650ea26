//! virtio-blk requests from a hostile driver, on a small scratch disk.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static DISK: devices::virtio::block::Disk = {
            let p = std::env::temp_dir().join(format!("condo-fuzz-disk-{}", std::process::id()));
            std::fs::write(&p, vec![0u8; 64 << 10]).expect("scratch disk");
            devices::virtio::block::Disk::open(&p, false, "fuzz").expect("open disk")
        };
    }
    let mem = common::guest(data);
    let Some(mut q) = common::queue(&mem, 0, data.first().is_some_and(|b| b & 1 != 0)) else {
        return;
    };
    let Ok(evt) = vmm_sys_util::eventfd::EventFd::new(0) else {
        return;
    };
    let irq = devices::virtio::Interrupt::new(evt);
    let mut buf = vec![0u8; 1 << 20];
    DISK.with(|disk| {
        let _ = devices::virtio::block::process_queue(&mem, &mut q, &irq, disk, &mut buf);
    });
});

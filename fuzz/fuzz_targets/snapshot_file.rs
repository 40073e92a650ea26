//! A snapshot state file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmm::snapshot::decode(data, "fuzz");
});

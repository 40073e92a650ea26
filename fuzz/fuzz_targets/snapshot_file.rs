//! A snapshot state file: the input as a whole file (header checks), and
//! the input as the body of a well-formed file, so that fuzzing gets past
//! the checksum into the state parser and its checks.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmm::snapshot::decode(data, "fuzz");
    let _ = vmm::snapshot::decode(&vmm::snapshot::frame(data), "fuzz");
});

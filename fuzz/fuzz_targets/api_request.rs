//! An API request as a client sends it: HTTP parsing, then the pre-boot
//! handler (JSON bodies, routes, validation).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = std::io::BufReader::new(data);
    let mut pre = vmm::api::PreBoot::new();
    // Several requests on one connection, as keep-alive allows.
    for _ in 0..4 {
        match vmm::api::http::read_request(&mut r) {
            // `/logger` and `/metrics` open (and create) the file the
            // client names, by design: the fuzzer would litter the
            // working directory, or the root as root, with files.
            Ok(req) if req.path.starts_with("/logger") || req.path.starts_with("/metrics") => {}
            Ok(req) => {
                let _ = pre.handle(&req);
            }
            Err(_) => break,
        }
    }
});

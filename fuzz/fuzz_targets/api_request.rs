//! An API request as a client sends it: HTTP parsing, routing to a typed
//! request (JSON bodies, paths), then the VMM's handler before boot
//! (validation and the configuration rules).
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmm::rpc::{RequestHandler, VmRequest};

fuzz_target!(|data: &[u8]| {
    let mut r = std::io::BufReader::new(data);
    let mut vmm = vmm::Vmm::new(vmm::RunOptions::default());
    // Several requests on one connection, as keep-alive allows.
    for _ in 0..4 {
        let Ok(req) = vmm::api::http::read_request(&mut r) else {
            break;
        };
        match vmm::api::request::route(&req) {
            // Booting or restoring opens the files the client names and
            // KVM, receiving a migration listens on a socket; `/logger` and `/metrics` open (and create) the file the
            // client names, by design: the fuzzer would litter the working
            // directory, or the root as root, with files.
            vmm::api::request::Route::Vm(
                VmRequest::InstanceStart
                | VmRequest::LoadSnapshot(_)
                | VmRequest::PutLogger(_)
                | VmRequest::PutMetrics(_)
                | VmRequest::ReceiveMigration(_),
            ) => {}
            vmm::api::request::Route::Vm(v) => {
                let _ = vmm::api::response::to_http(vmm.handle(v));
            }
            vmm::api::request::Route::Reply(_) => {}
        }
    }
});

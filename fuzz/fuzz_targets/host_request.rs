//! A request to the host daemon as a client sends it: HTTP parsing (with
//! query strings), routing, the body parsed into its resource type and
//! validated (`host::api::check`), and the size, since and cpuset parsers
//! the command line shares.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = std::io::BufReader::new(data);
    for _ in 0..4 {
        match host::http::read_request(&mut r) {
            Ok(req) => {
                let _ = host::api::check(&req);
                for (_, v) in &req.query {
                    let _ = host::model::parse_size_mib(v);
                    let _ = host::model::check_cpuset(v);
                    let _ = host::accounting::parse_since(v, 1_700_000_000_000);
                    let _ = host::config::Subnet::parse(v);
                }
            }
            Err(_) => break,
        }
    }
});

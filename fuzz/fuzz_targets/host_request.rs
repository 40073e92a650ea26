//! A request to the host daemon as a client (or a peer daemon) sends it:
//! HTTP parsing (with query strings and headers), routing, the body parsed
//! into its resource type and validated (`host::api::check`: guests,
//! images, clones, migrations and their slots' usage records), the cluster
//! key check, and the size, since, cpuset, subnet, address range and peer
//! address parsers the command line shares.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = std::io::BufReader::new(data);
    for _ in 0..4 {
        match host::http::read_request(&mut r) {
            Ok(req) => {
                let _ = host::api::check(&req);
                if let Ok(k) = host::peer::PeerKey::parse("fuzz-cluster-key-0123456789") {
                    let _ = k.verify(req.authorization.as_deref());
                }
                for (_, v) in &req.query {
                    let _ = host::model::parse_size_mib(v);
                    let _ = host::model::check_cpuset(v);
                    let _ = host::model::check_mac(v);
                    let _ = host::accounting::parse_since(v, 1_700_000_000_000);
                    let _ = host::peer::PeerAddr::parse(v);
                    let _ = host::peer::PeerKey::parse(v);
                    if let Ok(s) = host::config::Subnet::parse(v) {
                        let _ = s.range(v);
                    }
                    if let Ok(s) = host::config::Subnet::parse("10.9.0.0/24") {
                        let _ = s.range(v);
                    }
                }
            }
            Err(_) => break,
        }
    }
});

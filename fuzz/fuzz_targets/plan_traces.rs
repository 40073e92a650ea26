//! The untrusted inputs of `condo plan`: PlanetLab trace files, condo
//! host-manager exports, Bitbrains CSVs and host inventories. The first
//! byte picks the parser; each must answer with a value or one error.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let p = Path::new("fuzz");
    match which % 4 {
        0 => {
            let _ = plan::trace::planetlab::parse(p, text);
        }
        1 => {
            let _ = plan::trace::condo_csv::parse(p, text, 2500.0);
        }
        2 => {
            let _ = plan::trace::bitbrains::parse(p, text);
        }
        _ => {
            let _ = plan::inventory::parse(p, text);
        }
    }
});

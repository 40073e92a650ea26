//! A working-set record beside a snapshot's memory file: the input as a
//! whole record, and as the runs of a record with a good header, so that
//! fuzzing gets past the header into the runs' checks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmm::snapshot::working_set::{Stamp, WorkingSet};

const STAMP: Stamp = Stamp {
    size: 1 << 27,
    mtime_ns: 1,
    ino: 2,
};

fuzz_target!(|data: &[u8]| {
    let _ = WorkingSet::decode(data, &STAMP);
    let mut framed = WorkingSet::default().encode(&STAMP);
    let runs = (data.len() / 12) as u32;
    framed[36..40].copy_from_slice(&runs.to_le_bytes());
    framed.extend_from_slice(data);
    let _ = WorkingSet::decode(&framed, &STAMP);
});

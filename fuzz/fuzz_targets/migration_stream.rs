//! A live migration stream as a hostile source sends it: the receiving
//! side's framing, hello checks, memory runs and state decoding, into a
//! small guest memory.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};

struct Duplex<'a>(&'a [u8]);

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl vm_memory::ReadVolatile for Duplex<'_> {
    fn read_volatile<B: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        buf: &mut vm_memory::VolatileSlice<B>,
    ) -> Result<usize, vm_memory::volatile_memory::Error> {
        self.0.read_volatile(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut s = Duplex(data);
    let _ = vmm::migration::receive::receive_guest(
        &mut s,
        |cpuid| {
            // Some guests' CPUs are refused, as a host without a feature would.
            if cpuid.len() % 2 == 1 {
                vec!["a feature".to_owned()]
            } else {
                Vec::new()
            }
        },
        |h| {
            // At most 64 MiB, in the layout the hello announces.
            let mut ranges = Vec::new();
            let mut total = 0u64;
            for r in &h.memory {
                total = total.saturating_add(r.size);
                ranges.push((vm_memory::GuestAddress(r.base), r.size as usize));
            }
            if total > 64 << 20 {
                return Err(vmm::migration::MigrationError::Protocol("too big".into()));
            }
            devices::GuestMemoryMmap::from_ranges(&ranges)
                .map_err(|e| vmm::migration::MigrationError::Protocol(e.to_string()))
        },
    );
});

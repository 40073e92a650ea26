//! The destination's side: the guest's memory and state from the stream,
//! then the VM rebuilt from them, run once the source lets go.

use std::io::{Read, Write};
use std::time::Duration;

use kvm_bindings::kvm_cpuid_entry2;

use super::protocol::{
    self, expect, parse, read_header, read_memory, write_json, Hello, Kind, MigrationError, Reason,
};
use super::{Stream, Url};
use crate::builder::Memory;
use crate::snapshot::MicrovmState;
use crate::vm::Vm;

/// Waits for the source on `url` and takes the guest it sends; returns
/// the VM running it.
pub fn receive(url: &str, ahead: crate::builder::Ahead) -> Result<Vm, MigrationError> {
    let url: Url = url.parse()?;
    let mut stream = accept(&url)?;
    // A source that goes quiet for this long is gone.
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let supported = crate::builder::guest_cpuid_of_host()?;
    let (state, mem) = receive_guest(
        &mut stream,
        |cpuid| crate::arch::missing_features(cpuid, &supported),
        |hello| {
            let bytes = hello.machine.mem_size_mib << 20;
            let mem = crate::memory::create(bytes, crate::config::HugePages::default())
                .map_err(crate::VmmError::from)?;
            if crate::snapshot::memory::regions_of(&mem) != hello.memory {
                return Err(protocol_error(
                    "the guest's memory layout is not this VMM's",
                ));
            }
            Ok(mem)
        },
    )?;
    let mut steps = crate::timing::Steps::start("migration");
    let built = Vm::from_state(&state, Memory::Ready(mem), false, false, ahead, &mut steps);
    let vm = match built {
        Ok(vm) => {
            steps.log();
            vm
        }
        Err(e) => {
            let _ = write_json(
                &mut stream,
                Kind::Failed,
                &Reason {
                    reason: e.to_string(),
                },
            );
            return Err(e.into());
        }
    };
    write_json(&mut stream, Kind::Ready, &serde_json::json!({}))?;
    // Until Go, the guest is the source's: without it, it never runs here.
    let (kind, body) = expect(&mut stream, &[Kind::Go])?;
    let go: protocol::Go = parse(kind, &body)?;
    let mut vm = vm;
    if go.resume {
        vm.resume();
    }
    vm.let_go();
    vm.announce();
    // Running is the last word: if it cannot be said, the source may take
    // the guest back, so it must not run here too.
    if let Err(e) = write_json(&mut stream, Kind::Running, &serde_json::json!({}))
        .and_then(|()| stream.flush().map_err(MigrationError::from))
    {
        let _ = vm.pause();
        return Err(e);
    }
    Ok(vm)
}

fn protocol_error(msg: &str) -> MigrationError {
    MigrationError::Protocol(msg.into())
}

/// Listens on `url` and takes one connection.
fn accept(url: &Url) -> Result<Stream, MigrationError> {
    Ok(match url {
        Url::Tcp(addr) => {
            let l = std::net::TcpListener::bind(addr.as_str())?;
            let (s, _) = l.accept()?;
            let _ = s.set_nodelay(true);
            Stream::Tcp(s)
        }
        Url::Unix(p) => {
            let l = devices::bind_unix_listener(p)?;
            let r = l.accept();
            let _ = std::fs::remove_file(p);
            Stream::Unix(r?.0)
        }
    })
}

/// The protocol of the receiving side up to the guest's state: `Hello`
/// checked (version, the CPU features the guest uses against
/// `missing_cpu`, the memory it announces) and answered, memory written
/// into what `alloc` gives, then the state, checked against the hello.
/// Needs no KVM: the fuzz target drives it with arbitrary bytes.
pub fn receive_guest<S: Read + Write + vm_memory::ReadVolatile>(
    stream: &mut S,
    missing_cpu: impl FnOnce(&[kvm_cpuid_entry2]) -> Vec<String>,
    alloc: impl FnOnce(&Hello) -> Result<devices::GuestMemoryMmap, MigrationError>,
) -> Result<(MicrovmState, devices::GuestMemoryMmap), MigrationError> {
    let (kind, body) = expect(stream, &[Kind::Hello])?;
    let hello: Hello = parse(kind, &body)?;
    let refuse = |stream: &mut S, reason: String| {
        let _ = write_json(
            stream,
            Kind::Refuse,
            &Reason {
                reason: reason.clone(),
            },
        );
        MigrationError::Refused(reason)
    };
    if hello.version != protocol::VERSION {
        return Err(refuse(
            stream,
            format!(
                "stream version {} (condo {}); this VMM speaks version {}",
                hello.version,
                hello.condo,
                protocol::VERSION
            ),
        ));
    }
    let missing = missing_cpu(&hello.cpuid);
    if !missing.is_empty() {
        return Err(refuse(
            stream,
            format!(
                "this host's KVM lacks CPU features the guest uses: {}",
                missing.join(", ")
            ),
        ));
    }
    let total = hello
        .memory
        .iter()
        .try_fold(0u64, |a, r| a.checked_add(r.size));
    let m = &hello.machine;
    if total != Some(m.mem_size_mib << 20)
        || !(crate::config::MIN_MEM_MIB..=crate::config::MAX_MEM_MIB).contains(&m.mem_size_mib)
    {
        return Err(refuse(
            stream,
            "the announced memory does not add up".into(),
        ));
    }
    let mem = match alloc(&hello) {
        Ok(m) => m,
        Err(e) => return Err(refuse(stream, e.to_string())),
    };
    write_json(stream, Kind::Accept, &serde_json::json!({}))?;
    loop {
        let h = read_header(stream)?;
        match h.kind {
            Kind::Memory => {
                read_memory(stream, h.len, &mem)?;
            }
            Kind::State => {
                let body = protocol::read_body(stream, h.len)?;
                let state = crate::snapshot::decode(&body, "the migration stream")?;
                if state.machine != hello.machine || state.memory != hello.memory {
                    return Err(protocol_error(
                        "the state is not of the machine the hello announced",
                    ));
                }
                return Ok((state, mem));
            }
            k => {
                return Err(protocol_error(&format!(
                    "{k:?} where memory or the state was expected"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{MachineState, MemoryRegionState};

    /// A stream that reads `input` and records what is written.
    struct Duplex<'a> {
        input: &'a [u8],
        output: Vec<u8>,
    }

    impl Read for Duplex<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl vm_memory::ReadVolatile for Duplex<'_> {
        fn read_volatile<B: vm_memory::bitmap::BitmapSlice>(
            &mut self,
            buf: &mut vm_memory::VolatileSlice<B>,
        ) -> Result<usize, vm_memory::volatile_memory::Error> {
            self.input.read_volatile(buf)
        }
    }

    impl Write for Duplex<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn hello(mem_mib: u64) -> Hello {
        Hello {
            version: protocol::VERSION,
            condo: "test".into(),
            machine: MachineState {
                vcpu_count: 1,
                mem_size_mib: mem_mib,
                track_dirty_pages: false,
                kernel_image_path: "/k".into(),
                initrd_path: None,
                boot_args: None,
                root_drive: None,
            },
            memory: vec![MemoryRegionState {
                base: 0,
                size: mem_mib << 20,
            }],
            cpuid: Vec::new(),
        }
    }

    fn run(input: &[u8], lacks: Vec<String>) -> (Result<(), MigrationError>, Vec<u8>) {
        let mut s = Duplex {
            input,
            output: Vec::new(),
        };
        let r = receive_guest(
            &mut s,
            |_| lacks,
            |h| {
                Ok(devices::GuestMemoryMmap::from_ranges(&[(
                    vm_memory::GuestAddress(0),
                    h.machine.mem_size_mib as usize * (1 << 20),
                )])
                .unwrap())
            },
        )
        .map(drop);
        (r, s.output)
    }

    fn reply_kind(out: &[u8]) -> Kind {
        read_header(&mut &out[..]).unwrap().kind
    }

    #[test]
    fn a_destination_without_the_guests_cpu_features_refuses_up_front() {
        let mut input = Vec::new();
        write_json(&mut input, Kind::Hello, &hello(32)).unwrap();
        let (r, out) = run(&input, vec!["leaf 0x7.0 ebx bit 5".into()]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("lacks CPU features the guest uses: leaf 0x7.0 ebx bit 5"),
            "{e}"
        );
        assert_eq!(reply_kind(&out), Kind::Refuse);
    }

    #[test]
    fn hostile_or_truncated_streams_are_refused() {
        let mut other_version = hello(32);
        other_version.version = 99;
        let mut odd_memory = hello(32);
        odd_memory.memory[0].size = 1;
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                "not a condo migration stream",
            ),
            (Vec::new(), "closed"),
        ];
        for (h, needle) in [
            (other_version, "speaks version"),
            (odd_memory, "does not add up"),
        ] {
            let mut v = Vec::new();
            write_json(&mut v, Kind::Hello, &h).unwrap();
            cases.push((v, needle));
        }
        // Accepted, then the stream ends, or sends pages outside memory,
        // or a state that is not a snapshot state.
        let mut ok = Vec::new();
        write_json(&mut ok, Kind::Hello, &hello(32)).unwrap();
        cases.push((ok.clone(), "closed"));
        let memory = |gpa: u64, page: &[u8]| {
            let mut body = gpa.to_le_bytes().to_vec();
            body.extend_from_slice(&1u32.to_le_bytes());
            body.extend_from_slice(page);
            let mut v = ok.clone();
            protocol::write_frame(&mut v, Kind::Memory, &body).unwrap();
            v
        };
        cases.push((memory(64 << 20, &[1; 4096]), "outside guest memory"));
        let mut cut = memory(0, &[1; 4096]);
        cut.truncate(cut.len() - 4000);
        cases.push((cut, "ends inside a message"));
        let mut bad_state = ok.clone();
        protocol::write_frame(&mut bad_state, Kind::State, b"{}").unwrap();
        cases.push((bad_state, "is not a condo snapshot"));
        let mut go_early = ok;
        protocol::write_frame(&mut go_early, Kind::Go, b"{}").unwrap();
        cases.push((go_early, "Go where memory or the state was expected"));
        for (input, needle) in cases {
            let e = run(&input, Vec::new()).0.unwrap_err().to_string();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }
}

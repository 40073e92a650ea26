//! Real Linux guests booted by condo, checked the way a user would: serial
//! output, what the guest sees (`nproc`, `/proc/meminfo`) and how condo
//! exits. These need a KVM that can boot Linux: `scripts/test.sh` runs them
//! directly on such a host, or inside the nested test host (`testhost/run`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{artifact, condo, proc_number, run, run_retrying_stall, tempdir, Outcome};

/// A boot takes seconds even in the nested test host; a guest still
/// running after this is hung.
const LIMIT: Duration = Duration::from_secs(45);

fn vmlinux() -> PathBuf {
    artifact("CONDO_GUEST_VMLINUX")
}
fn bzimage() -> PathBuf {
    artifact("CONDO_GUEST_BZIMAGE")
}
fn initramfs() -> PathBuf {
    artifact("CONDO_GUEST_INITRAMFS")
}

/// Boots `kernel` with the test initramfs; the guest runs `cmd` and ends as
/// `end` says (poweroff, reboot, panic).
fn boot(kernel: &Path, initrd: &Path, cpus: u32, mem_mib: u64, end: &str, cmd: &str) -> Outcome {
    let make = || {
        let mut c = condo();
        c.args(["run", "--kernel"])
            .arg(kernel)
            .arg("--initrd")
            .arg(initrd)
            .args(["--cpus", &cpus.to_string()])
            .args(["--memory", &mem_mib.to_string()])
            .arg("--cmdline")
            .arg(format!(
                "console=ttyS0 reboot=k panic=1 quiet condo.end={end} -- \"{cmd}\""
            ));
        c
    };
    run_retrying_stall(make, LIMIT)
}

/// `condo run` of the test guest (vmlinux and the test initramfs) with
/// `mem_mib` MiB, kernel options `opts`, running `cmd`; callers add the
/// devices.
fn guest(mem_mib: u64, opts: &str, cmd: &str) -> std::process::Command {
    let mut c = condo();
    c.args(["run", "--memory", &mem_mib.to_string(), "--kernel"])
        .arg(vmlinux())
        .arg("--initrd")
        .arg(initramfs())
        .arg("--cmdline")
        .arg(format!("console=ttyS0 panic=1 quiet {opts} -- \"{cmd}\""));
    c
}

/// The output of the guest command: lines between the ready marker and
/// the exit marker.
fn guest_output(o: &Outcome) -> Vec<String> {
    let lines: Vec<String> = o
        .stdout
        .lines()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect();
    let start = lines
        .iter()
        .position(|l| l == "condo-guest: ready")
        .unwrap_or_else(|| {
            panic!(
                "guest never reached /init\nstdout:\n{}\nstderr:\n{}",
                o.stdout, o.stderr
            )
        });
    let end = lines
        .iter()
        .position(|l| l.starts_with("condo-guest: exit="))
        .unwrap_or_else(|| {
            panic!(
                "guest command did not finish\nstdout:\n{}\nstderr:\n{}",
                o.stdout, o.stderr
            )
        });
    lines[start + 1..end].to_vec()
}

fn assert_clean_exit(o: &Outcome) {
    assert_eq!(
        o.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    assert!(
        o.stdout.contains("condo-guest: exit=0"),
        "stdout:\n{}",
        o.stdout
    );
}

#[test]
fn serial_output_reaches_stdout() {
    let o = boot(
        &vmlinux(),
        &initramfs(),
        1,
        128,
        "poweroff",
        "echo hello from the guest",
    );
    assert_clean_exit(&o);
    assert_eq!(guest_output(&o), ["hello from the guest"]);
}

#[test]
fn nproc_matches_cpus() {
    for cpus in [1, 2, 4] {
        let o = boot(&vmlinux(), &initramfs(), cpus, 256, "poweroff", "nproc");
        assert_clean_exit(&o);
        assert_eq!(guest_output(&o), [cpus.to_string()], "--cpus {cpus}");
    }
}

fn mem_total_kib(o: &Outcome) -> u64 {
    let out = guest_output(o);
    let line = out
        .iter()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap_or_else(|| panic!("no MemTotal in {out:?}"));
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("MemTotal value")
}

/// MemTotal is RAM minus what the kernel reserves for itself: a few MiB.
fn assert_mem_total(mem_mib: u64) {
    let o = boot(
        &vmlinux(),
        &initramfs(),
        2,
        mem_mib,
        "poweroff",
        "grep MemTotal /proc/meminfo",
    );
    assert_clean_exit(&o);
    let total = mem_total_kib(&o);
    let want = mem_mib * 1024;
    assert!(total <= want, "MemTotal {total} KiB > {want} KiB");
    assert!(
        total >= want - want / 10,
        "MemTotal {total} KiB, want about {want} KiB"
    );
}

#[test]
fn mem_total_matches_128_mib() {
    assert_mem_total(128);
}

#[test]
fn mem_total_matches_5_gib() {
    // Crosses the 32-bit MMIO gap: RAM continues above 4 GiB.
    assert_mem_total(5 * 1024);
}

/// Puts the host's huge page pool back as it was.
struct HugePool(String);

impl Drop for HugePool {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/vm/nr_hugepages", &self.0);
    }
}

/// `--huge-pages` (Firecracker's `huge_pages`) decides what backs guest
/// RAM, as the host kernel sees it while the guest fills 64 MiB of page
/// cache: transparent huge pages by default, none with `None`, and with
/// `2M` hugetlbfs pages from the host's pool, all of the guest's RAM taken
/// at start; a pool too small is one clear error line.
#[test]
fn huge_pages_back_guest_memory_as_asked() {
    let cmd = "dd if=/dev/zero of=/fill bs=1M count=64 2>/dev/null; echo filled; sleep 60";
    let filled = |choice: &str, mem_mib: u64| {
        let mut c = guest(mem_mib, "", cmd);
        c.args(["--huge-pages", choice]);
        let vm = LiveVm::spawn(c);
        vm.wait_until("the guest's page cache fill", LIMIT, |v| {
            v.count("filled") > 0
        });
        vm
    };
    let anon_huge_kib = |vm: &LiveVm| {
        proc_number(
            &format!("/proc/{}/smaps_rollup", vm.child.id()),
            "AnonHugePages:",
        )
    };
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[always]") || thp.contains("[madvise]") {
        let vm = filled("Transparent", 256);
        assert!(anon_huge_kib(&vm) >= 2048, "no transparent huge pages");
    }
    let vm = filled("None", 256);
    assert_eq!(anon_huge_kib(&vm), 0, "transparent huge pages despite None");
    drop(vm);

    if !common::is_root() {
        eprintln!("not root: the 2M case needs the host's huge page pool");
        return;
    }
    let pool = "/proc/sys/vm/nr_hugepages";
    let _restore = HugePool(std::fs::read_to_string(pool).expect("huge page pool"));
    let set_pool = |pages: u64| {
        std::fs::write(pool, pages.to_string()).expect("set the huge page pool");
        proc_number("/proc/meminfo", "HugePages_Free:")
    };
    // 128 MiB is 64 pages: a pool of 32 is refused when the VM is built.
    set_pool(32);
    let o = run(
        {
            let mut c = guest(128, "", "true");
            c.args(["--huge-pages", "2M"]);
            c
        },
        LIMIT,
    );
    assert_ne!(o.code, Some(0), "booted on a pool of 32 pages");
    o.assert_one_error_line("vm.nr_hugepages");
    assert_eq!(set_pool(64), 64, "the host cannot give 64 huge pages");
    let vm = filled("2M", 128);
    let meminfo = |k| proc_number("/proc/meminfo", k);
    // Taken (faulted in) or reserved for condo: the guest's whole RAM.
    let held =
        meminfo("HugePages_Total:") - meminfo("HugePages_Free:") + meminfo("HugePages_Rsvd:");
    assert_eq!(held, 64, "huge pages held for a 128 MiB guest");
    assert_eq!(anon_huge_kib(&vm), 0);
}

#[test]
fn smallest_guest_boots() {
    let o = boot(&vmlinux(), &initramfs(), 1, 32, "poweroff", "true");
    assert_clean_exit(&o);
}

#[test]
fn bzimage_boots() {
    let o = boot(
        &bzimage(),
        &initramfs(),
        2,
        128,
        "poweroff",
        "cat /proc/cmdline",
    );
    assert_clean_exit(&o);
    assert!(guest_output(&o)[0].contains("condo.end=poweroff"));
}

#[test]
fn debian_cloud_kernel_boots_to_init() {
    let kernel = artifact("CONDO_CLOUD_KERNEL");
    let initrd = artifact("CONDO_CLOUD_INITRAMFS");
    let o = boot(&kernel, &initrd, 2, 256, "poweroff", "nproc; uname -r");
    assert_clean_exit(&o);
    let out = guest_output(&o);
    assert_eq!(out[0], "2");
    assert!(out[1].ends_with("-cloud-amd64"), "uname -r: {}", out[1]);
}

#[test]
fn reboot_exits_zero() {
    let o = boot(&vmlinux(), &initramfs(), 1, 128, "reboot", "true");
    assert_clean_exit(&o);
}

#[test]
fn kernel_panic_exits_with_its_status() {
    let o = boot(&vmlinux(), &initramfs(), 1, 128, "panic", "true");
    assert_eq!(
        o.code,
        Some(2),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    assert!(o.stdout.contains("Kernel panic"), "stdout:\n{}", o.stdout);
    assert_eq!(o.stderr_lines(), ["condo: guest kernel panicked"]);
}

/// A "kernel" whose first instruction is `ud2` with no IDT: the #UD cannot
/// be delivered, the CPU triple-faults, condo says so and fails.
#[test]
fn triple_fault_exits_with_its_status() {
    let d = tempdir("triple");
    let k = d.join("ud2.elf");
    std::fs::write(&k, tiny_elf(0x100_0000, &[0x0f, 0x0b])).unwrap();
    let mut c = condo();
    c.args(["run", "--kernel"]).arg(&k).args(["--memory", "64"]);
    let o = run(c, LIMIT);
    assert_eq!(o.code, Some(3), "stderr: {}", o.stderr);
    let lines = o.stderr_lines();
    assert_eq!(lines.len(), 1, "stderr: {}", o.stderr);
    assert!(
        lines[0].starts_with("condo: guest triple-faulted on vCPU 0 (rip=0x")
            && lines[0].contains(" cr0=0x"),
        "stderr: {}",
        o.stderr
    );
}

/// An ELF64 executable with one loadable segment holding `code` at `addr`.
fn tiny_elf(addr: u64, code: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    // ELF header (64 bytes)
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&addr.to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // flags
    e.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    e.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    e.extend_from_slice(&1u16.to_le_bytes()); // phnum
    e.extend_from_slice(&64u16.to_le_bytes()); // shentsize
    e.extend_from_slice(&0u16.to_le_bytes()); // shnum
    e.extend_from_slice(&0u16.to_le_bytes()); // shstrndx
                                              // Program header (56 bytes)
    let off = 0x1000u64;
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&off.to_le_bytes());
    e.extend_from_slice(&addr.to_le_bytes()); // vaddr
    e.extend_from_slice(&addr.to_le_bytes()); // paddr
    e.extend_from_slice(&(code.len() as u64).to_le_bytes());
    e.extend_from_slice(&(code.len() as u64).to_le_bytes());
    e.extend_from_slice(&0x1000u64.to_le_bytes());
    e.resize(off as usize, 0);
    e.extend_from_slice(code);
    e
}

#[test]
fn firecracker_config_file_boots() {
    let d = tempdir("config-boot");
    let cfg = d.join("vm.json");
    let json = format!(
        r#"{{
  "boot-source": {{
    "kernel_image_path": "{}",
    "initrd_path": "{}",
    "boot_args": "console=ttyS0 reboot=k panic=1 quiet -- nproc"
  }},
  "machine-config": {{ "vcpu_count": 2, "mem_size_mib": 256, "smt": false }}
}}"#,
        vmlinux().display(),
        initramfs().display()
    );
    std::fs::write(&cfg, json).unwrap();
    let mut c = condo();
    c.args(["run", "--config-file"]).arg(&cfg);
    let o = run(c, LIMIT);
    assert_clean_exit(&o);
    assert_eq!(guest_output(&o), ["2"]);
}

/// A kernel file with the right magic but cut short is refused with one
/// line, after KVM is set up.
#[test]
fn truncated_kernel_is_refused() {
    let d = tempdir("truncated");
    let k = d.join("vmlinux");
    let bytes = std::fs::read(vmlinux()).unwrap();
    std::fs::write(&k, &bytes[..4096]).unwrap();
    let mut c = condo();
    c.args(["run", "--kernel"]).arg(&k);
    run(c, LIMIT).assert_one_error_line("cannot load kernel image");
}

/// `--entropy`: the guest finds the virtio-rng device (through the ACPI
/// DSDT) and reads random bytes from /dev/hwrng.
#[test]
fn entropy_device_feeds_hwrng() {
    let cmd = "cat /sys/class/misc/hw_random/rng_current; head -c 4096 /dev/hwrng | od -An -tx1 | sort -u | wc -l";
    for (kernel, initrd) in [
        (vmlinux(), initramfs()),
        (
            artifact("CONDO_CLOUD_KERNEL"),
            artifact("CONDO_CLOUD_INITRAMFS"),
        ),
    ] {
        let make = || {
            let mut c = condo();
            c.args(["run", "--entropy", "--memory", "256", "--kernel"])
                .arg(&kernel)
                .arg("--initrd")
                .arg(&initrd)
                .arg("--cmdline")
                .arg(format!("console=ttyS0 panic=1 quiet -- \"{cmd}\""));
            c
        };
        let o = run_retrying_stall(make, LIMIT);
        assert_clean_exit(&o);
        let out = guest_output(&o);
        assert!(out[0].starts_with("virtio_rng"), "rng_current: {out:?}");
        // 4096 random bytes make 256 distinct lines of 16 bytes.
        assert_eq!(out[1].trim(), "256", "{out:?}");
    }
}

/// Reads file `path` out of the ext4 image `img` with debugfs.
fn read_from_image(img: &Path, path: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(img)
        .output()
        .expect("run debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Boots with an ext4 root on virtio-blk, writes a file, syncs, powers off:
/// the file is in the image afterwards. A second, read-only disk refuses
/// writes inside the guest.
#[test]
fn ext4_root_on_virtio_blk_keeps_written_data() {
    let d = tempdir("blk");
    let root = d.join("rootfs.ext4");
    std::fs::copy(artifact("CONDO_GUEST_ROOTFS"), &root).unwrap();
    let data = d.join("data.img");
    std::fs::write(&data, vec![0x11u8; 1 << 20]).unwrap();
    let cmd = "echo condo-was-here > /hello; sync; \
               cat /sys/block/vda/serial; echo; cat /sys/block/vdb/ro; \
               dd if=/dev/zero of=/dev/vdb bs=512 count=1 2>/dev/null; echo dd=$?";
    let make = || {
        let mut c = condo();
        c.args(["run", "--memory", "128", "--kernel"])
            .arg(vmlinux())
            .arg("--disk")
            .arg(format!("path={},root=on,id=rootdisk", root.display()))
            .arg("--disk")
            .arg(format!("path={},readonly=on", data.display()))
            .arg("--cmdline")
            .arg(format!(
                "console=ttyS0 panic=1 quiet init=/init -- \"{cmd}\""
            ));
        c
    };
    let o = run_retrying_stall(make, LIMIT);
    assert_clean_exit(&o);
    let out = guest_output(&o);
    assert_eq!(out, ["rootdisk", "1", "dd=1"], "guest output");
    assert_eq!(read_from_image(&root, "/hello").trim(), "condo-was-here");
    let after = std::fs::read(&data).unwrap();
    assert!(after.iter().all(|b| *b == 0x11), "read-only disk changed");
}

/// A disk limited to 1 MiB/s (one-second refill of a 1 MiB bucket): reading
/// 3 MiB takes the guest at least about two seconds; an unlimited second
/// disk reads the same at full speed. The data is intact either way.
#[test]
fn disk_bandwidth_limit_throttles_reads() {
    let d = tempdir("blk-rl");
    let img = d.join("data.img");
    let data: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    std::fs::write(&img, &data).unwrap();
    let want = crc32(&data[..3 << 20]);
    let cmd = "for dev in vda vdb; do a=$(cut -d' ' -f1 /proc/uptime); \
               dd if=/dev/$dev of=/tmp/r bs=64k count=48 iflag=direct 2>/dev/null; \
               b=$(cut -d' ' -f1 /proc/uptime); echo $dev $a $b $(crc32 < /tmp/r); done";
    let make = || {
        let mut c = condo();
        c.args(["run", "--memory", "128", "--kernel"])
            .arg(vmlinux())
            .arg("--initrd")
            .arg(initramfs())
            .arg("--disk")
            .arg(format!(
                "path={},readonly=on,bw_size=1048576,bw_refill_time=1000",
                img.display()
            ))
            .arg("--disk")
            .arg(format!("path={},readonly=on", img.display()))
            .arg("--cmdline")
            .arg(format!("console=ttyS0 panic=1 quiet -- \"{cmd}\""));
        c
    };
    let o = run_retrying_stall(make, LIMIT);
    assert_clean_exit(&o);
    let out = guest_output(&o);
    assert_eq!(out.len(), 2, "{out:?}");
    let secs = |line: &str| -> (f64, String) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "{line}");
        let (a, b): (f64, f64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        (b - a, f[3].to_owned())
    };
    let (limited, sum_limited) = secs(&out[0]);
    let (free, sum_free) = secs(&out[1]);
    assert_eq!(sum_limited, want, "limited read corrupted data");
    assert_eq!(sum_free, want, "unlimited read corrupted data");
    assert!(limited >= 1.5, "3 MiB at 1 MiB/s took only {limited:.2} s");
    assert!(
        free < limited,
        "unlimited {free:.2} s vs limited {limited:.2} s"
    );
}

/// Debian's unmodified cloud kernel finds the disk, entropy, vsock and
/// balloon devices through the ACPI DSDT (virtio_mmio and the drivers as
/// modules from its initramfs).
#[test]
fn cloud_kernel_finds_virtio_devices_through_acpi() {
    let d = tempdir("cloud-blk");
    let data = d.join("data.img");
    std::fs::write(&data, vec![0x22u8; 2 << 20]).unwrap();
    let cmd = "cat /sys/block/vda/size; head -c 8 /dev/vda | od -An -tx1; cat /sys/class/misc/hw_random/rng_current; \
               for d in /sys/bus/virtio/devices/*; do basename $(readlink $d/driver); done | sort | tr '\\n' ' '; echo";
    let make = || {
        let mut c = condo();
        c.args(["run", "--entropy", "--memory", "256", "--kernel"])
            .arg(artifact("CONDO_CLOUD_KERNEL"))
            .arg("--initrd")
            .arg(artifact("CONDO_CLOUD_INITRAMFS"))
            .arg("--disk")
            .arg(format!("path={}", data.display()))
            .arg("--vsock")
            .arg(format!("cid=5,socket={}", d.join("v.sock").display()))
            .args(["--balloon", "size_mib=16,stats_s=1"])
            .arg("--cmdline")
            .arg(format!("console=ttyS0 panic=1 quiet -- \"{cmd}\""));
        c
    };
    let o = run_retrying_stall(make, LIMIT);
    assert_clean_exit(&o);
    let out = guest_output(&o);
    assert_eq!(out[0], "4096", "{out:?}");
    assert_eq!(out[1].trim(), "22 22 22 22 22 22 22 22");
    assert!(out[2].starts_with("virtio_rng"), "{out:?}");
    assert_eq!(
        out[3].trim(),
        "virtio_balloon virtio_blk virtio_rng vmw_vsock_virtio_transport",
        "drivers bound to the virtio devices"
    );
}

/// CRC-32 (IEEE, as zlib and busybox `crc32` compute it), in hex.
fn crc32(data: &[u8]) -> String {
    let mut crc = 0xffff_ffffu32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    format!("{:08x}", !crc)
}

/// Creates TAP `name` with `addr/24`, up (iproute2, or busybox tunctl in
/// the test host).
fn make_tap(name: &str, addr: &str) {
    let sh = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        sh(&["ip", "tuntap", "add", "dev", name, "mode", "tap"]) || sh(&["tunctl", "-t", name]),
        "cannot create TAP {name} (needs root)"
    );
    assert!(sh(&[
        "ip",
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        name
    ]));
    assert!(sh(&["ip", "link", "set", name, "up"]));
}

/// Accepts one connection on `l` within `limit`, then runs `f` on it.
fn serve_once<T: Send + 'static>(
    l: std::net::TcpListener,
    limit: Duration,
    f: impl FnOnce(std::net::TcpStream) -> T + Send + 'static,
) -> std::thread::JoinHandle<Option<T>> {
    std::thread::spawn(move || {
        l.set_nonblocking(true).ok()?;
        let start = std::time::Instant::now();
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).ok()?;
                    s.set_read_timeout(Some(limit)).ok()?;
                    s.set_write_timeout(Some(limit)).ok()?;
                    return Some(f(s));
                }
                Err(_) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => return None,
            }
        }
    })
}

/// Guest and host exchange 1 MiB each way over TCP on a TAP (checksums
/// compared on both ends), after a ping.
#[test]
fn virtio_net_tcp_both_ways_over_tap() {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    // Link-local addresses: the traffic never leaves this machine.
    let host = "169.254.77.1";
    make_tap("condotap0", host);
    const N: usize = 1 << 20;
    let down: Vec<u8> = (0..N as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let down_sum = crc32(&down);
    let cmd = format!(
        "ip addr add 169.254.77.2/24 dev eth0; ip link set eth0 up; \
         ping -c 1 -W 10 {host} >/dev/null && echo ping-ok; \
         dd if=/dev/urandom of=/tmp/up bs=1024 count=1024 2>/dev/null; crc32 < /tmp/up; \
         nc {host} 5000 < /tmp/up; nc {host} 5001 > /tmp/down; crc32 < /tmp/down"
    );
    // A stalled attempt (see run_retrying_stall) is retried with fresh
    // listeners.
    for attempt in 0..3 {
        let up = serve_once(
            TcpListener::bind((host, 5000)).expect("bind 5000"),
            LIMIT,
            |mut s| {
                let mut got = vec![0u8; N];
                s.read_exact(&mut got).map(|()| crc32(&got)).ok()
            },
        );
        let data = down.clone();
        let dl = serve_once(
            TcpListener::bind((host, 5001)).expect("bind 5001"),
            LIMIT,
            move |mut s| s.write_all(&data).is_ok(),
        );
        let mut c = condo();
        c.args(["run", "--memory", "256", "--kernel"])
            .arg(vmlinux())
            .arg("--initrd")
            .arg(initramfs())
            .args(["--net", "tap=condotap0,mac=06:00:ac:10:00:02"])
            .arg("--cmdline")
            .arg(format!("console=ttyS0 panic=1 quiet -- \"{cmd}\""));
        let result = if attempt < 2 {
            common::try_run(c, LIMIT)
        } else {
            Ok(run(c, LIMIT))
        };
        let up_sum = up.join().ok().flatten().flatten();
        let sent = dl.join().ok().flatten();
        let o = match result {
            Ok(o) => o,
            Err(hung) => {
                eprintln!("warning: retrying a stalled run: {hung}");
                continue;
            }
        };
        assert_clean_exit(&o);
        let out = guest_output(&o);
        assert_eq!(sent, Some(true), "host could not send its 1 MiB");
        let up_sum = up_sum.expect("host did not receive 1 MiB");
        assert_eq!(
            out,
            ["ping-ok".to_owned(), up_sum, down_sum],
            "guest output"
        );
        return;
    }
}

/// Echoes everything on one accepted Unix connection.
fn unix_echo_once(l: std::os::unix::net::UnixListener) -> std::thread::JoinHandle<bool> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else {
            return false;
        };
        let _ = s.set_read_timeout(Some(LIMIT));
        let mut buf = vec![0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    })
}

/// Connects to the guest's port through the hybrid vsock socket (retrying
/// until the guest listens), sends `data`, and returns what came back.
fn vsock_host_connect(
    uds: PathBuf,
    port: u32,
    data: Vec<u8>,
) -> std::thread::JoinHandle<Option<Vec<u8>>> {
    use std::io::{BufRead, BufReader, Read, Write};
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while start.elapsed() < LIMIT {
            std::thread::sleep(Duration::from_millis(100));
            let Ok(mut s) = std::os::unix::net::UnixStream::connect(&uds) else {
                continue;
            };
            let _ = s.set_read_timeout(Some(LIMIT));
            if s.write_all(format!("CONNECT {port}\n").as_bytes()).is_err() {
                continue;
            }
            let mut r = BufReader::new(s.try_clone().ok()?);
            let mut line = String::new();
            if r.read_line(&mut line).is_err() || !line.starts_with("OK ") {
                continue; // the guest is not listening yet: condo closed the stream
            }
            let mut w = s.try_clone().ok()?;
            let writer = std::thread::spawn(move || {
                let ok = w.write_all(&data).is_ok();
                let _ = w.shutdown(std::net::Shutdown::Write);
                ok
            });
            let mut back = Vec::new();
            r.read_to_end(&mut back).ok()?;
            return writer.join().ok()?.then_some(back);
        }
        None
    })
}

/// vsock both ways, through Firecracker's hybrid Unix-socket protocol: the
/// host connects to a guest listener and the guest to a host listener;
/// 1 MiB is echoed each way and checked on the side that sent it.
#[test]
fn vsock_echo_both_ways() {
    const N: usize = 1 << 20;
    let dir = tempdir("vsock");
    let uds = dir.join("v.sock");
    let data: Vec<u8> = (0..N as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let cmd = "dd if=/dev/urandom of=/tmp/up bs=1024 count=1024 2>/dev/null; crc32 < /tmp/up; \
               vsock listen 5000 >/dev/null & vsock connect 2 6000 < /tmp/up > /tmp/back; \
               crc32 < /tmp/back; wait; echo done";
    for attempt in 0..3 {
        let host_path = dir.join("v.sock_6000");
        let _ = std::fs::remove_file(&host_path);
        let echo = unix_echo_once(
            std::os::unix::net::UnixListener::bind(&host_path).expect("bind host listener"),
        );
        let to_guest = vsock_host_connect(uds.clone(), 5000, data.clone());
        let mut c = condo();
        c.args(["run", "--memory", "256", "--kernel"])
            .arg(vmlinux())
            .arg("--initrd")
            .arg(initramfs())
            .arg("--vsock")
            .arg(format!("cid=3,socket={}", uds.display()))
            .arg("--cmdline")
            .arg(format!("console=ttyS0 panic=1 quiet -- \"{cmd}\""));
        let result = if attempt < 2 {
            common::try_run(c, LIMIT)
        } else {
            Ok(run(c, LIMIT))
        };
        let o = match result {
            Ok(o) => o,
            Err(hung) => {
                eprintln!("warning: retrying a stalled run: {hung}");
                // Unblock the helper threads before the next attempt.
                let _ = std::os::unix::net::UnixStream::connect(&host_path);
                continue;
            }
        };
        assert_clean_exit(&o);
        let out = guest_output(&o);
        assert_eq!(out.len(), 3, "guest output: {out:?}\n{}", o.stderr);
        assert_eq!(out[0], out[1], "guest to host echo differs");
        assert_eq!(out[2], "done");
        assert!(echo.join().unwrap_or(false), "host echo server failed");
        let back = to_guest
            .join()
            .ok()
            .flatten()
            .expect("host to guest connection failed");
        assert_eq!(back.len(), N, "host to guest echo length");
        assert!(back == data, "host to guest echo differs");
        assert!(!uds.exists(), "condo removes its vsock socket on exit");
        return;
    }
}

/// A condo whose serial output is collected line by line while it runs.
struct LiveVm {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The console output as it came (a guest that moves mid-line ends
    /// the line on its new VMM).
    raw: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl LiveVm {
    fn spawn(mut c: std::process::Command) -> Self {
        use std::io::BufRead;
        let mut child = c
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn condo");
        let out = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let raw = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (l, r) = (lines.clone(), raw.clone());
        std::thread::spawn(move || {
            let mut out = std::io::BufReader::new(out);
            let mut buf = Vec::new();
            while matches!(out.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                r.lock().expect("raw").extend_from_slice(&buf);
                let line = String::from_utf8_lossy(&buf);
                l.lock()
                    .expect("lines")
                    .push(line.trim_end_matches(['\n', '\r']).to_owned());
                buf.clear();
            }
        });
        Self { child, lines, raw }
    }

    fn count(&self, prefix: &str) -> usize {
        self.lines
            .lock()
            .expect("live VM")
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    /// Waits until `f` holds, failing the test after `limit`.
    fn wait_until(&self, what: &str, limit: Duration, f: impl Fn(&Self) -> bool) {
        let start = std::time::Instant::now();
        while !f(self) {
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}; output:\n{}",
                self.lines.lock().expect("live VM").join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn rss_mib(&self) -> u64 {
        proc_number(&format!("/proc/{}/status", self.child.id()), "VmRSS:") >> 10
    }
}

impl Drop for LiveVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_u64(body: &str, key: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get(key)?.as_u64()
}

/// The whole lifecycle through Firecracker's API: configure, start, pause
/// (the guest's ticker stops), resume (it goes on), inflate the balloon
/// (the VMM's RSS drops by about that much), deflate (the guest has its
/// memory back), statistics, and SIGTERM for a clean stop.
#[test]
fn api_lifecycle_pause_resume_and_balloon() {
    use common::api;
    const BALLOON_MIB: u64 = 96;
    let d = tempdir("api-life");
    let sock = d.join("api.sock");
    let mut c = condo();
    c.args(["run", "--api-sock"]).arg(&sock);
    let vm = LiveVm::spawn(c);
    common::wait_for_socket(&sock);
    // The guest fills 128 MiB of page cache (touching host memory), frees
    // it, then ticks.
    let cmd = "dd if=/dev/zero of=/big bs=1M count=128 2>/dev/null; rm /big; echo filled; \
               i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.2; done";
    let boot = serde_json::json!({
        "kernel_image_path": vmlinux(),
        "initrd_path": initramfs(),
        "boot_args": format!("console=ttyS0 panic=1 quiet -- \"{cmd}\""),
    });
    for (path, body) in [
        ("/boot-source", boot.to_string()),
        (
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 256}"#.to_string(),
        ),
        (
            "/balloon",
            r#"{"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#
                .to_string(),
        ),
        (
            "/actions",
            r#"{"action_type": "InstanceStart"}"#.to_string(),
        ),
    ] {
        let (code, resp) = api(&sock, "PUT", path, &body);
        assert_eq!(code, 204, "PUT {path}: {resp}");
    }
    let (_, info) = api(&sock, "GET", "/", "");
    assert!(info.contains(r#""state":"Running""#), "{info}");
    assert_eq!(
        api(&sock, "PUT", "/boot-source", &boot.to_string()).0,
        400,
        "not after start"
    );
    vm.wait_until("the guest to tick", LIMIT, |v| v.count("tick") >= 3);

    // Metrics: a Firecracker JSON line on FlushMetrics, with the guest's
    // serial output counted as port I/O exits.
    let mfile = d.join("metrics.json");
    let mcfg = serde_json::json!({"metrics_path": mfile}).to_string();
    assert_eq!(api(&sock, "PUT", "/metrics", &mcfg).0, 204);
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    assert_eq!(api(&sock, "PUT", "/actions", flush).0, 204);
    let line = std::fs::read_to_string(&mfile).expect("metrics file");
    let m: serde_json::Value =
        serde_json::from_str(line.lines().last().unwrap_or("")).expect("JSON line");
    assert!(m["vcpu"]["exit_io_out"].as_u64().unwrap_or(0) > 0, "{line}");

    // Pause: no ticks for a second; resume: ticks again.
    assert_eq!(api(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
    assert!(api(&sock, "GET", "/", "").1.contains(r#""state":"Paused""#));
    std::thread::sleep(Duration::from_millis(300));
    let paused_at = vm.count("tick");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(vm.count("tick"), paused_at, "the guest ran while paused");
    assert_eq!(api(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#).0, 204);
    vm.wait_until("ticks after resume", LIMIT, |v| {
        v.count("tick") >= paused_at + 3
    });

    // Inflate: the guest hands back BALLOON_MIB, the VMM's RSS drops, and
    // the guest's own statistics show that much less free memory.
    let free = || {
        json_u64(
            &api(&sock, "GET", "/balloon/statistics", "").1,
            "free_memory",
        )
    };
    vm.wait_until("guest statistics", LIMIT, |_| free().is_some());
    let free_before = free().unwrap_or_default();
    let share = (BALLOON_MIB << 20) * 8 / 10;
    let before = vm.rss_mib();
    let (code, resp) = api(
        &sock,
        "PATCH",
        "/balloon",
        &format!(r#"{{"amount_mib": {BALLOON_MIB}}}"#),
    );
    assert_eq!(code, 204, "{resp}");
    let actual = || {
        json_u64(
            &api(&sock, "GET", "/balloon/statistics", "").1,
            "actual_mib",
        )
    };
    vm.wait_until("the balloon to inflate", LIMIT, |_| {
        actual() == Some(BALLOON_MIB)
    });
    let after = vm.rss_mib();
    assert!(
        before.saturating_sub(after) >= BALLOON_MIB * 8 / 10,
        "RSS {before} MiB -> {after} MiB after inflating {BALLOON_MIB} MiB"
    );
    vm.wait_until("guest statistics to show the memory gone", LIMIT, |_| {
        free().is_some_and(|f| f + share <= free_before)
    });
    let free_inflated = free().unwrap_or_default();
    // Deflate: the guest gets its memory back.
    assert_eq!(
        api(&sock, "PATCH", "/balloon", r#"{"amount_mib": 0}"#).0,
        204
    );
    vm.wait_until("the balloon to deflate", LIMIT, |_| actual() == Some(0));
    vm.wait_until("guest statistics to show the memory back", LIMIT, |_| {
        free().is_some_and(|f| f >= free_inflated + share)
    });
    assert_eq!(
        api(&sock, "PATCH", "/balloon", r#"{"amount_mib": 100000}"#).0,
        400
    );
    // Diff snapshots need dirty page tracking, which this VM lacks.
    assert_eq!(api(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
    let diff = serde_json::json!({
        "snapshot_type": "Diff", "snapshot_path": d.join("s"), "mem_file_path": d.join("m"),
    })
    .to_string();
    let (code, resp) = api(&sock, "PUT", "/snapshot/create", &diff);
    assert_eq!(code, 400);
    assert!(resp.contains("track_dirty_pages"), "{resp}");
    assert_eq!(api(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#).0, 204);
    let (code, cfg) = api(&sock, "GET", "/vm/config", "");
    assert_eq!(code, 200);
    assert!(
        cfg.contains(r#""mem_size_mib":256"#) && cfg.contains(r#""deflate_on_oom":true"#),
        "{cfg}"
    );
    let patch =
        r#"{"drive_id": "nope", "rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}"#;
    assert_eq!(
        api(&sock, "PATCH", "/drives/nope", patch).0,
        400,
        "no such drive"
    );

    // SIGTERM: a clean stop, exit 0, socket gone.
    let mut vm = vm;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = vm.child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < LIMIT, "condo ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "API socket left behind");
}

/// The guest command of the snapshot tests: a counter printed every 200 ms.
const TICKER: &str = "i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.2; done";

/// A condo waiting on an API socket in `dir`.
fn api_vm(dir: &Path, name: &str) -> (LiveVm, PathBuf) {
    let sock = dir.join(format!("{name}.sock"));
    let mut c = condo();
    c.args(["run", "--api-sock"]).arg(&sock);
    let vm = LiveVm::spawn(c);
    common::wait_for_socket(&sock);
    (vm, sock)
}

/// A fresh condo (named `name`, in `dir`) that loads snapshot `snap` with
/// memory file `mem` and resumes it.
fn restored_vm(dir: &Path, name: &str, snap: &Path, mem: &Path) -> (LiveVm, PathBuf) {
    let (vm, sock) = api_vm(dir, name);
    let load = serde_json::json!({
        "snapshot_path": snap, "mem_file_path": mem, "resume_vm": true,
    })
    .to_string();
    let (code, resp) = common::api(&sock, "PUT", "/snapshot/load", &load);
    assert_eq!(code, 204, "{resp}");
    (vm, sock)
}

/// Pauses VM `a` (API socket `sock`), snapshots it into `dir`, kills it
/// and restores the snapshot in a fresh process. Returns the restored VM
/// and the last tick `a` printed.
fn snapshot_kill_and_restore(dir: &Path, mut a: LiveVm, sock: &Path) -> (LiveVm, u64) {
    use common::api;
    assert_eq!(api(sock, "PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
    let (snap, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let create = serde_json::json!({"snapshot_path": snap, "mem_file_path": mem}).to_string();
    let (code, resp) = api(sock, "PUT", "/snapshot/create", &create);
    assert_eq!(code, 204, "{resp}");
    let at = last_tick(&a);
    a.child.kill().expect("kill the original");
    a.child.wait().expect("wait");
    (restored_vm(dir, "b", &snap, &mem).0, at)
}

/// The highest tick a VM printed.
fn last_tick(vm: &LiveVm) -> u64 {
    vm.lines
        .lock()
        .expect("lines")
        .iter()
        .filter_map(|l| l.strip_prefix("tick")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// The first tick a VM printed.
fn first_tick(vm: &LiveVm) -> Option<u64> {
    vm.lines
        .lock()
        .expect("lines")
        .iter()
        .find_map(|l| l.strip_prefix("tick")?.parse().ok())
}

/// Snapshot a running guest that counts, restore it twice in fresh condo
/// processes side by side: each clone's counter goes on from where the
/// snapshot was taken. A corrupted snapshot is refused with a clear error.
#[test]
fn snapshot_restores_into_independent_clones() {
    use common::api;
    let d = tempdir("snap");
    let (mut a, sock) = api_vm(&d, "a");
    let boot = serde_json::json!({
        "kernel_image_path": vmlinux(),
        "initrd_path": initramfs(),
        "boot_args": format!("console=ttyS0 panic=1 quiet -- \"{TICKER}\""),
    });
    for (path, body) in [
        ("/boot-source", boot.to_string()),
        (
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 128, "track_dirty_pages": true}"#.to_string(),
        ),
        (
            "/actions",
            r#"{"action_type": "InstanceStart"}"#.to_string(),
        ),
    ] {
        let (code, resp) = api(&sock, "PUT", path, &body);
        assert_eq!(code, 204, "PUT {path}: {resp}");
    }
    a.wait_until("ticks", LIMIT, |v| last_tick(v) >= 5);
    let snap = d.join("vm.snap");
    let mem = d.join("vm.mem");
    let create = serde_json::json!({"snapshot_path": snap, "mem_file_path": mem}).to_string();
    assert_eq!(
        api(&sock, "PUT", "/snapshot/create", &create).0,
        400,
        "only when paused"
    );
    assert_eq!(api(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
    let (code, resp) = api(&sock, "PUT", "/snapshot/create", &create);
    assert_eq!(code, 204, "{resp}");
    let at = last_tick(&a);
    // The original goes on after the snapshot.
    assert_eq!(api(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#).0, 204);
    a.wait_until("the original to go on", LIMIT, |v| last_tick(v) >= at + 3);
    // A diff snapshot (pages dirtied since the full one) over a copy of the
    // full snapshot's memory file.
    assert_eq!(api(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
    let snap2 = d.join("vm2.snap");
    let mem2 = d.join("vm2.mem");
    std::fs::copy(&mem, &mem2).expect("copy memory file");
    let diff = serde_json::json!({
        "snapshot_type": "Diff", "snapshot_path": snap2, "mem_file_path": mem2,
    })
    .to_string();
    let (code, resp) = api(&sock, "PUT", "/snapshot/create", &diff);
    assert_eq!(code, 204, "{resp}");
    let at2 = last_tick(&a);
    assert!(at2 >= at + 3);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(a.child.id() as i32, libc::SIGTERM) };
    let _ = a.child.wait();

    let load = serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true,
    })
    .to_string();
    let (b, sock_b) = api_vm(&d, "b");
    let (c, sock_c) = api_vm(&d, "c");
    for s in [&sock_b, &sock_c] {
        let (code, resp) = api(s, "PUT", "/snapshot/load", &load);
        assert_eq!(code, 204, "{resp}");
        assert!(api(s, "GET", "/", "").1.contains(r#""state":"Running""#));
    }
    for (name, vm) in [("b", &b), ("c", &c)] {
        vm.wait_until("the clone to tick", LIMIT, |v| last_tick(v) >= at + 5);
        let first = first_tick(vm).expect("a tick");
        assert!(
            first > at && first <= at + 2,
            "clone {name} started counting at {first}, snapshot taken at {at}"
        );
    }
    // Pause one clone: the other goes on alone.
    assert_eq!(
        api(&sock_b, "PATCH", "/vm", r#"{"state": "Paused"}"#).0,
        204
    );
    std::thread::sleep(Duration::from_millis(300));
    let b_at = last_tick(&b);
    let c_at = last_tick(&c);
    c.wait_until("clone c alone", LIMIT, |v| last_tick(v) >= c_at + 5);
    assert_eq!(last_tick(&b), b_at, "the paused clone ran");

    // The snapshot's guest tracks dirty pages (diff snapshots): the log is
    // the user's, so its clones record no working set.
    assert!(!vmm::snapshot::working_set::path_for(&mem).exists());

    // The diff snapshot restores where it was taken.
    let (e, _) = restored_vm(&d, "e", &snap2, &mem2);
    e.wait_until("the diff clone to tick", LIMIT, |v| last_tick(v) >= at2 + 3);
    let first = first_tick(&e).expect("a tick");
    assert!(
        first > at2 && first <= at2 + 2,
        "diff clone started counting at {first}, diff snapshot taken at {at2}"
    );
    drop(e);

    // A corrupted snapshot is refused, and the process can still be used.
    let bad = d.join("bad.snap");
    let mut bytes = std::fs::read(&snap).expect("snapshot");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&bad, &bytes).expect("write");
    let (_dvm, sock_d) = api_vm(&d, "d");
    let load_bad = serde_json::json!({"snapshot_path": bad, "mem_file_path": mem}).to_string();
    let (code, resp) = api(&sock_d, "PUT", "/snapshot/load", &load_bad);
    assert_eq!(code, 400);
    assert!(resp.contains("corrupted"), "{resp}");
    assert!(api(&sock_d, "GET", "/", "").1.contains("Not started"));
}

/// Every thread of a running VM, by name, with its seccomp mode ("2" is
/// filtered) and how many filters it carries.
fn thread_seccomp(pid: u32) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let t = t.expect("task").path();
        // A thread may end while it is read (an API connection's).
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(t.join("comm")),
            std::fs::read_to_string(t.join("status")),
        ) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("?")
                .trim()
                .to_owned()
        };
        v.push((
            comm.trim().to_owned(),
            field("Seccomp:"),
            field("Seccomp_filters:"),
        ));
    }
    v.sort();
    v
}

/// With every device and the API, each thread of a running VM (main loop,
/// vCPUs, API, device workers started on activation from a vCPU thread)
/// runs under exactly one seccomp filter, its own; `--no-seccomp` turns
/// them off. (That a filter refuses a call is proved by the unit tests in
/// vmm/src/seccomp.rs, with the same filters.)
#[test]
fn every_thread_runs_under_its_seccomp_filter() {
    use common::api;
    let d = tempdir("seccomp");
    let disk = d.join("data.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk image");
    let cmd = "head -c 16 /dev/hwrng >/dev/null; dd if=/dev/vda of=/dev/null bs=4k count=4 \
               2>/dev/null; echo ready; sleep 600";
    for no_seccomp in [false, true] {
        let sock = d.join("api.sock");
        let mut c = guest(128, "", cmd);
        c.arg("--entropy")
            .arg("--api-sock")
            .arg(&sock)
            .arg("--disk")
            .arg(format!("path={},readonly=on", disk.display()))
            .arg("--vsock")
            .arg(format!("cid=3,socket={}", d.join("v.sock").display()))
            .args(["--balloon", "size_mib=0,stats_s=1"]);
        if no_seccomp {
            c.arg("--no-seccomp");
        }
        let vm = LiveVm::spawn(c);
        vm.wait_until("the guest", LIMIT, |v| v.count("ready") > 0);
        let (status, _) = api(&sock, "GET", "/", "");
        assert_eq!(status, 200);
        let threads = thread_seccomp(vm.child.id());
        let names: Vec<&str> = threads.iter().map(|t| t.0.as_str()).collect();
        // The main thread: condo, or condo-vmm where that is installed.
        assert!(
            names.iter().any(|n| n.starts_with("condo")),
            "no main thread in {names:?}"
        );
        for want in ["vcpu0", "api", "virtio-blk", "virtio-rng", "virtio-vsock"] {
            assert!(names.contains(&want), "no {want} thread in {threads:?}");
        }
        for (name, mode, filters) in &threads {
            if no_seccomp {
                assert_eq!(
                    mode, "0",
                    "{name} is filtered with --no-seccomp: {threads:?}"
                );
            } else {
                assert_eq!(
                    (mode.as_str(), filters.as_str()),
                    ("2", "1"),
                    "thread {name} is not under exactly one filter: {threads:?}"
                );
            }
        }
    }
}

/// A guest boots inside `condo jail` (unprivileged, namespaces, pivoted
/// root holding only the kernel and initramfs, cgroup v2 memory and CPU
/// limits) and powers off cleanly; while it runs, the VMM is checked from
/// the host as the jail test in cli.rs does.
#[test]
fn guest_boots_in_the_jail() {
    assert!(common::is_root(), "the boot tests run as root");
    let d = tempdir("jail-boot");
    let id = format!("boot-{}", std::process::id());
    let secret = d.join("secret");
    std::fs::write(&secret, b"x").unwrap();
    let mut c = condo();
    c.args(["jail", "--id", &id, "--uid", "4242", "--gid", "4242"])
        .arg("--chroot-base-dir")
        .arg(&d)
        .arg("--file")
        .arg(vmlinux())
        .arg("--file")
        .arg(initramfs())
        .args(["--cgroup", &common::jail_cpu_limit()])
        .args(["--cgroup", "memory.max=536870912"])
        .args(["--", "run", "--memory", "128", "--kernel"])
        .arg(vmlinux())
        .arg("--initrd")
        .arg(initramfs())
        .arg("--cmdline")
        .arg("console=ttyS0 panic=1 quiet -- \"echo jailed-ready; read x\"");
    let vm = LiveVm::spawn(c);
    vm.wait_until("the jailed guest", LIMIT, |v| v.count("jailed-ready") > 0);
    let vmm = common::only_child(vm.child.id());
    let mut tops: Vec<String> = [vmlinux(), initramfs()]
        .iter()
        .filter_map(|p| p.components().nth(1))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    tops.extend(["dev".into(), "run".into()]);
    tops.sort();
    tops.dedup();
    let tops: Vec<&str> = tops.iter().map(String::as_str).collect();
    common::assert_jailed(vmm, 4242, &tops, false, &secret, 2048, &id);
    let mem_max = std::fs::read_to_string(format!("/sys/fs/cgroup/condo/{id}/memory.max"))
        .expect("memory cgroup of the jailed VMM");
    assert_eq!(mem_max.trim(), "536870912");
    // SIGTERM to `condo jail` reaches the VMM, which stops the guest.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    let start = std::time::Instant::now();
    let mut vm = vm;
    loop {
        if let Some(st) = vm.child.try_wait().expect("wait") {
            assert!(st.success(), "jailed condo ended with {st}");
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "SIGTERM did not stop the jailed VMM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- Fault tests: a hostile or broken guest, a hostile host. ----

/// Waits for a LiveVm's condo to exit after SIGTERM; its exit status.
fn sigterm_and_wait(vm: &mut LiveVm) -> std::process::ExitStatus {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = vm.child.try_wait().expect("wait") {
            return st;
        }
        assert!(start.elapsed() < LIMIT, "SIGTERM did not stop condo");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A guest whose only CPU spins with interrupts off (a "kernel" that is
/// just `cli; jmp .`) cannot wedge the VMM: the API answers, the VM
/// pauses and resumes, SIGTERM stops it.
#[test]
fn guest_spinning_with_interrupts_off_cannot_wedge_the_vmm() {
    use common::api;
    let d = tempdir("spin");
    let sock = d.join("api.sock");
    let k = d.join("spin.elf");
    std::fs::write(&k, tiny_elf(0x100_0000, &[0xfa, 0xeb, 0xfe])).unwrap();
    let mut c = condo();
    c.args(["run", "--cpus", "1", "--memory", "64", "--kernel"])
        .arg(&k)
        .arg("--api-sock")
        .arg(&sock);
    let mut vm = LiveVm::spawn(c);
    common::wait_for_socket(&sock);
    // Let the vCPU spin a while.
    std::thread::sleep(Duration::from_secs(2));
    assert!(vm.child.try_wait().unwrap().is_none(), "condo ended");
    let (status, body) = api(&sock, "GET", "/", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Running"), "{body}");
    let (status, body) = api(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(status, 204, "pausing a spinning guest: {body}");
    let (status, body) = api(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(status, 204, "{body}");
    assert!(sigterm_and_wait(&mut vm).success());
}

/// A guest flooding its serial console keeps the VMM responsive (API
/// answers) and bounded (RSS does not grow with the output), and goes on
/// afterwards.
#[test]
fn serial_flood_leaves_the_vmm_responsive_and_bounded() {
    use common::api;
    let d = tempdir("flood");
    let sock = d.join("api.sock");
    let cmd = "echo flood-start; yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789 & p=$!; \
               sleep 6; kill $p; wait; echo; echo flood-done";
    let mut c = guest(128, "condo.end=wait", cmd);
    c.args(["--cpus", "1", "--api-sock"]).arg(&sock);
    let mut vm = LiveVm::spawn(c);
    vm.wait_until("the flood", LIMIT, |v| v.count("flood-start") > 0);
    std::thread::sleep(Duration::from_millis(500));
    let rss_start = vm.rss_mib();
    let mut slowest = Duration::ZERO;
    let flood_start = std::time::Instant::now();
    while vm.count("flood-done") == 0 {
        // Bounded: a guest that never ends its flood fails here, not by
        // holding the whole test-host session until its timeout.
        assert!(
            flood_start.elapsed() < 4 * LIMIT,
            "the guest's flood did not end within {:?}",
            4 * LIMIT
        );
        let t = std::time::Instant::now();
        let (status, _) = api(&sock, "GET", "/", "");
        assert_eq!(status, 200);
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
        assert!(vm.count("0123456789") > 0 || vm.count("flood-done") > 0);
    }
    let rss_end = vm.rss_mib();
    let lines = vm.count("0123456789");
    eprintln!(
        "flood: {lines} lines, slowest API answer {slowest:?}, RSS {rss_start} -> {rss_end} MiB"
    );
    assert!(lines > 100, "the guest did not flood ({lines} lines)");
    assert!(
        slowest < Duration::from_secs(5),
        "API answer took {slowest:?} during the flood"
    );
    assert!(
        rss_end < rss_start + 16,
        "RSS grew from {rss_start} to {rss_end} MiB"
    );
    assert!(sigterm_and_wait(&mut vm).success());
}

/// Checks an ext4 image a VMM left behind: the journal replays (`e2fsck
/// -fp`, as the next boot would) and the file system then checks clean
/// (`e2fsck -fn`).
fn assert_image_clean(img: &Path) {
    let fsck = |args: &[&str]| {
        std::process::Command::new("e2fsck")
            .args(args)
            .arg(img)
            .output()
            .expect("e2fsck")
    };
    let preen = fsck(&["-fp"]);
    assert!(
        matches!(preen.status.code(), Some(0 | 1)),
        "e2fsck -fp: {}{}",
        String::from_utf8_lossy(&preen.stdout),
        String::from_utf8_lossy(&preen.stderr)
    );
    let check = fsck(&["-fn"]);
    assert!(
        check.status.success(),
        "e2fsck -fn: {}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// SIGKILL of the VMM while the guest writes files with fsync: the image
/// is consistent (journal replay, then `e2fsck -fn` clean) and every file
/// the guest reported synced is there with its contents.
#[test]
fn sigkill_during_fsync_loses_no_acknowledged_data() {
    let d = tempdir("sigkill");
    let root = d.join("rootfs.ext4");
    std::fs::copy(artifact("CONDO_GUEST_ROOTFS"), &root).unwrap();
    let cmd = "i=0; while true; do i=$((i+1)); \
               dd if=/dev/urandom of=/data$i bs=4k count=16 conv=fsync 2>/dev/null; sync; \
               echo synced $i $(crc32 < /data$i); done";
    let mut c = condo();
    c.args(["run", "--memory", "128", "--kernel"])
        .arg(vmlinux())
        .arg("--disk")
        .arg(format!("path={},root=on", root.display()))
        .arg("--cmdline")
        .arg(format!(
            "console=ttyS0 panic=1 quiet init=/init -- \"{cmd}\""
        ));
    let mut vm = LiveVm::spawn(c);
    vm.wait_until("synced files", LIMIT, |v| v.count("synced ") >= 5);
    vm.child.kill().expect("SIGKILL");
    vm.child.wait().expect("wait");
    let synced: Vec<(String, String)> = vm
        .lines
        .lock()
        .expect("lines")
        .iter()
        .filter_map(|l| {
            let mut w = l.strip_prefix("synced ")?.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect();
    assert!(synced.len() >= 5);
    assert_image_clean(&root);
    for (i, crc) in &synced {
        let out = std::process::Command::new("debugfs")
            .args(["-R", &format!("cat /data{i}")])
            .arg(&root)
            .output()
            .expect("debugfs");
        assert_eq!(out.stdout.len(), 64 << 10, "/data{i} after SIGKILL");
        assert_eq!(&crc32(&out.stdout), crc, "/data{i} contents after SIGKILL");
    }
}

/// The host's disk fills up under a guest write: the guest gets an I/O
/// error, the VMM lives on, the disk still reads, the guest powers off.
#[test]
fn host_disk_full_gives_the_guest_an_io_error() {
    assert!(common::is_root(), "the boot tests run as root");
    let d = tempdir("diskfull");
    let small = d.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let (src, dst) = (
        c"tmpfs",
        std::ffi::CString::new(small.to_str().unwrap()).unwrap(),
    );
    // SAFETY: NUL-terminated strings; a 4 MiB tmpfs for this test only.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            c"size=4m".as_ptr().cast(),
        )
    };
    assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
    struct Unmount(std::ffi::CString);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // SAFETY: unmounting the tmpfs this test mounted.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _unmount = Unmount(dst.clone());
    let img = small.join("data.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let cmd = "dd if=/dev/urandom of=/dev/vda bs=64k count=128 oflag=direct 2>/dev/null; \
               echo dd-status=$?; dd if=/dev/vda of=/dev/null bs=4k count=1 2>/dev/null \
               && echo still-readable";
    let make = || {
        let mut c = guest(128, "", cmd);
        c.arg("--disk").arg(format!("path={}", img.display()));
        c
    };
    let o = run_retrying_stall(make, LIMIT);
    assert_clean_exit(&o);
    let out = guest_output(&o);
    assert!(
        out.iter()
            .any(|l| l.starts_with("dd-status=") && l != "dd-status=0"),
        "the guest's write to a full disk did not fail: {out:?}"
    );
    assert!(out.iter().any(|l| l == "still-readable"), "{out:?}");
}

/// Firecracker's SendCtrlAltDel reaches the guest: the i8042 delivers
/// Ctrl+Alt+Del to its keyboard driver, the kernel signals init, and the
/// test init powers off (exit 0).
#[test]
fn send_ctrl_alt_del_reaches_the_guest() {
    use common::api;
    let d = tempdir("cad");
    let sock = d.join("api.sock");
    let mut c = guest(128, "condo.end=wait", "echo waiting");
    c.arg("--api-sock").arg(&sock);
    let mut vm = LiveVm::spawn(c);
    vm.wait_until("the guest", LIMIT, |v| v.count("waiting") > 0);
    let (status, body) = api(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
    );
    assert_eq!(status, 204, "{body}");
    vm.wait_until("Ctrl+Alt+Del in the guest", LIMIT, |v| {
        v.count("condo-guest: ctrl-alt-del") > 0
    });
    let start = std::time::Instant::now();
    let st = loop {
        if let Some(st) = vm.child.try_wait().expect("wait") {
            break st;
        }
        assert!(start.elapsed() < LIMIT, "the guest did not power off");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success(), "condo ended with {st}");
}

/// A snapshot of a guest that writes to an ext4 root disk and pings over
/// a TAP, restored in a fresh process after the original is killed: the
/// restored guest goes on appending to its file and reaching the network;
/// the disk then holds every line exactly once, in order, and checks clean.
#[test]
fn snapshot_with_disk_and_network_restores_and_goes_on() {
    let host = "169.254.78.1";
    make_tap("condotap1", host);
    let d = tempdir("snap-dev");
    let root = d.join("rootfs.ext4");
    std::fs::copy(artifact("CONDO_GUEST_ROOTFS"), &root).unwrap();
    let cmd = format!(
        "ip addr add 169.254.78.2/24 dev eth0; ip link set eth0 up; i=0; while true; do \
         i=$((i+1)); echo line$i >> /log; sync; echo tick$i; \
         ping -c 1 -W 2 {host} >/dev/null && echo net$i; sleep 0.2; done"
    );
    let sock = d.join("a.sock");
    let mut c = condo();
    c.args(["run", "--memory", "128", "--entropy", "--kernel"])
        .arg(vmlinux())
        .arg("--disk")
        .arg(format!("path={},root=on", root.display()))
        .args(["--net", "tap=condotap1,mac=06:00:ac:10:00:03"])
        .arg("--api-sock")
        .arg(&sock)
        .arg("--cmdline")
        .arg(format!(
            "console=ttyS0 panic=1 quiet init=/init -- \"{cmd}\""
        ));
    let a = LiveVm::spawn(c);
    a.wait_until("ticks with network", LIMIT, |v| {
        last_tick(v) >= 3 && v.count("net") > 0
    });
    let (b, at) = snapshot_kill_and_restore(&d, a, &sock);
    b.wait_until("the restored guest to write and ping", LIMIT, |v| {
        last_tick(v) >= at + 5
            && v.lines
                .lock()
                .expect("lines")
                .iter()
                .any(|l| l.strip_prefix("net").and_then(|n| n.parse::<u64>().ok()) > Some(at))
    });
    let mut b = b;
    assert!(sigterm_and_wait(&mut b).success());
    let last = last_tick(&b);

    assert_image_clean(&root);
    let log = read_from_image(&root, "/log");
    let lines: Vec<&str> = log.lines().collect();
    let want: Vec<String> = (1..=lines.len()).map(|i| format!("line{i}")).collect();
    assert_eq!(lines, want, "the guest's log on disk");
    assert!(
        lines.len() as u64 >= last,
        "{} lines on disk, the guest printed tick{last}",
        lines.len()
    );
}

/// A snapshot taken while a rate limiter holds a disk's requests back,
/// restored in a fresh process: the guest goes on reading. The guest reads
/// faster than the limit (ten 4 KiB requests a second), so at the snapshot
/// a request almost surely waits in the ring with the guest's notifications
/// off, and only the new device's first look at its queue can serve it.
#[test]
fn snapshot_of_a_throttled_disk_restores_and_reads_on() {
    let d = tempdir("snap-rl");
    let img = d.join("data.img");
    std::fs::write(&img, vec![0x5a_u8; 1 << 20]).unwrap();
    let cmd = "i=0; while true; do i=$((i+1)); \
               dd if=/dev/vda of=/dev/null bs=4k count=5 iflag=direct 2>/dev/null \
               && echo tick$i; done";
    let sock = d.join("a.sock");
    let mut c = guest(128, "", cmd);
    c.arg("--disk")
        .arg(format!(
            "path={},readonly=on,ops_size=10,ops_refill_time=1000",
            img.display()
        ))
        .arg("--api-sock")
        .arg(&sock);
    let a = LiveVm::spawn(c);
    a.wait_until("throttled reads", LIMIT, |v| last_tick(v) >= 4);
    let (b, at) = snapshot_kill_and_restore(&d, a, &sock);
    b.wait_until("the restored guest to read on", LIMIT, |v| {
        last_tick(v) >= at + 3
    });
    let mut b = b;
    assert!(sigterm_and_wait(&mut b).success());
    // That first restore recorded the pages its guest wrote first beside
    // the memory file; the next one copies them in before it starts, and
    // reads and counts on from the snapshot all the same.
    use vmm::snapshot::working_set::{path_for, Stamp, WorkingSet};
    let mem = d.join("vm.mem");
    let ws = WorkingSet::decode(
        &std::fs::read(path_for(&mem)).expect("a working-set record"),
        &Stamp::of(&mem).expect("stamp"),
    )
    .expect("a valid record");
    assert!(ws.pages() > 0, "an empty working set");
    let (mut c, _) = restored_vm(&d, "c", &d.join("vm.snap"), &mem);
    c.wait_until("the prefaulted clone to read on", LIMIT, |v| {
        last_tick(v) >= at + 3
    });
    let first = first_tick(&c).expect("a tick");
    assert!(
        first > at && first <= at + 2,
        "the second clone started counting at {first}, snapshot taken at {at}"
    );
    assert!(sigterm_and_wait(&mut c).success());
}

#[path = "boot/migration.rs"]
mod migration;

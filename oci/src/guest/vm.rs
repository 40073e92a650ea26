//! The microVM backend: a container's machine is a condo VM. The monitor
//! sizes it from `linux.resources`, builds its root disk from the rootfs
//! ([`crate::rootfs`]), writes its Firecracker-format configuration and
//! runs the VMM (`condo run --config-file vm.json --api-sock a.sock`) as
//! its child, in its cgroup, dying with it. The guest kernel boots the
//! agent's initramfs; everything else (the container setup, each process)
//! goes through the agent over vsock ([`super::agent`]). Pause and resume
//! are the VMM's API (`PATCH /vm`); stopping asks the agent to power the
//! guest off (its file systems synced), then copies the disk's changes
//! back into the rootfs.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::RuntimeConfig;
use crate::error::{Error, Logger, Result};
use crate::guest::agent::{self, Agent};
use crate::guest::{Guest, Io, Workload};
use crate::spec::{Process, Spec};
use crate::state::{Container, Saved};

/// Memory the VMM and monitor need beside guest RAM, kept out of the
/// guest's share of a memory limit.
const OVERHEAD_MIB: u64 = 32;
/// The smallest guest.
const MIN_GUEST_MIB: u64 = 64;
/// The guest's vsock context id (each VM has its own device).
const GUEST_CID: u64 = 3;

/// vCPUs and MiB of guest memory for a container.
pub fn vm_size(config: &RuntimeConfig, spec: &Spec) -> Result<(u64, u64)> {
    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let vcpus = spec
        .cpu_count()
        .unwrap_or(config.vcpus)
        .clamp(1, host_cpus.max(config.vcpus).min(64));
    let mem = match spec.memory_limit() {
        Some(limit) => {
            let mib = limit >> 20;
            if mib < MIN_GUEST_MIB + OVERHEAD_MIB {
                return Err(Error::Unsupported(format!(
                    "a memory limit of {mib} MiB is too small for a microVM (at least {} MiB)",
                    MIN_GUEST_MIB + OVERHEAD_MIB
                )));
            }
            mib - OVERHEAD_MIB
        }
        None => config.memory_mib,
    };
    Ok((vcpus, mem))
}

/// The VM's configuration in Firecracker's format.
pub fn vm_json(
    config: &RuntimeConfig,
    vcpus: u64,
    mem_mib: u64,
    disk: &Path,
    readonly: bool,
    vsock: &Path,
) -> serde_json::Value {
    serde_json::json!({
        "boot-source": {
            "kernel_image_path": config.kernel,
            "initrd_path": config.initrd,
            "boot_args": config.cmdline,
        },
        "machine-config": {
            "vcpu_count": vcpus,
            "mem_size_mib": mem_mib,
            "huge_pages": config.huge_pages,
        },
        "drives": [{
            "drive_id": "rootfs",
            "path_on_host": disk,
            "is_root_device": false,
            "is_read_only": readonly,
        }],
        "vsock": {"guest_cid": GUEST_CID, "uds_path": vsock},
    })
}

/// A container's VM.
pub struct VmGuest {
    dir: PathBuf,
    rootfs: PathBuf,
    readonly: bool,
    /// The VMM (None for an exec monitor, which does not own it).
    vmm: Mutex<Option<Child>>,
    agent: Agent,
}

impl VmGuest {
    /// Builds the disk, starts the VMM, waits for the agent and sets the
    /// container up.
    pub fn boot(
        config: &RuntimeConfig,
        logger: &Logger,
        c: &Container,
        saved: &Saved,
        spec: &Spec,
    ) -> Result<Self> {
        let (vcpus, mem) = vm_size(config, spec)?;
        for (what, p) in [
            ("guest kernel", &config.kernel),
            ("agent initramfs", &config.initrd),
        ] {
            if !p.is_file() {
                return Err(Error::Config(format!(
                    "{what} {} not found (see `condo oci check`)",
                    p.display()
                )));
            }
        }
        let readonly = spec.root.as_ref().is_some_and(|r| r.readonly);
        let image = crate::rootfs::image_path(&c.dir);
        crate::rootfs::build(&saved.rootfs, &image, &config.image_cache)?;
        crate::trace::mark("root disk ready");
        let vsock = c.file("v.sock");
        let vm = vm_json(config, vcpus, mem, &image, readonly, &vsock);
        let vm_file = c.file("vm.json");
        std::fs::write(&vm_file, vm.to_string()).map_err(Error::path("write", &vm_file))?;
        let log = std::fs::File::create(c.file("vmm.log"))
            .map_err(Error::path("create", &c.file("vmm.log")))?;
        let log2 = log.try_clone().map_err(Error::io("duplicate the log"))?;
        let mut cmd = Command::new(config.vmm()?);
        cmd.arg("run")
            .arg("--config-file")
            .arg(&vm_file)
            .arg("--api-sock")
            .arg(c.file("a.sock"))
            .current_dir(&c.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        crate::signals::unblock_in_child(&mut cmd);
        // SAFETY: prctl between fork and exec is async-signal-safe; the VMM
        // is killed when the monitor's thread that started it ends (the
        // main thread: the monitor's whole life).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(Error::io("start the VMM"))?;
        let pid = child.id() as i32;
        crate::trace::mark("VMM started");
        c.update(|s| s.vmm_pid = Some(pid))?;
        let guest = VmGuest {
            dir: c.dir.clone(),
            rootfs: saved.rootfs.clone(),
            readonly,
            vmm: Mutex::new(Some(child)),
            agent: Agent::new(vsock),
        };
        let deadline = Instant::now() + Duration::from_secs(config.boot_timeout_s);
        let up = guest
            .agent
            .wait_ready(deadline, || guest.vmm_exited())
            .and_then(|()| {
                crate::trace::mark("agent answers");
                let (setup, dropped) = agent::container_setup(spec)?;
                let skipped = guest.agent.setup(&setup)?;
                for d in dropped {
                    logger.log("warning", &format!("mount {d}: left out of the microVM"));
                }
                for d in skipped {
                    logger.log(
                        "warning",
                        &format!("mount {d}: the guest kernel has no such file system; left out"),
                    );
                }
                crate::trace::mark("container set up");
                Ok(())
            });
        if let Err(e) = up {
            guest.kill_vmm();
            return Err(e);
        }
        Ok(guest)
    }

    /// The VM of a running container, for `exec`.
    pub fn attach(_config: &RuntimeConfig, c: &Container) -> Result<Self> {
        Ok(VmGuest {
            dir: c.dir.clone(),
            rootfs: PathBuf::new(),
            readonly: true,
            vmm: Mutex::new(None),
            agent: Agent::new(c.file("v.sock")),
        })
    }

    /// Whether the VMM has exited, and why (its last log line).
    fn vmm_exited(&self) -> Option<String> {
        let mut g = self.vmm.lock().ok()?;
        let child = g.as_mut()?;
        match child.try_wait() {
            Ok(Some(st)) => {
                let log = std::fs::read_to_string(self.dir.join("vmm.log")).unwrap_or_default();
                let last = log
                    .lines()
                    .rev()
                    .find(|l| l.contains("error"))
                    .or_else(|| log.lines().rev().find(|l| !l.trim().is_empty()))
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                Some(format!("the VMM exited ({st}): {last}"))
            }
            _ => None,
        }
    }

    fn kill_vmm(&self) {
        if let Ok(mut g) = self.vmm.lock() {
            if let Some(child) = g.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Waits up to `limit` for the VMM to exit.
    fn wait_vmm(&self, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            let done = self
                .vmm
                .lock()
                .ok()
                .and_then(|mut g| g.as_mut().map(|c| matches!(c.try_wait(), Ok(Some(_)))))
                .unwrap_or(true);
            if done {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `PATCH /vm` on the VMM's API socket.
    fn vm_state(&self, state: &str) -> Result<()> {
        let body = format!("{{\"state\":\"{state}\"}}");
        let (code, answer) = http(&self.dir.join("a.sock"), "PATCH", "/vm", &body)?;
        if code / 100 != 2 {
            return Err(Error::Other(format!(
                "the VMM refused {state}: {code} {}",
                answer.trim()
            )));
        }
        Ok(())
    }
}

impl Guest for VmGuest {
    fn start(&self, p: &Process, io: Io) -> Result<Arc<dyn Workload>> {
        self.agent.exec(p, io)
    }

    fn pause(&self) -> Result<()> {
        self.vm_state("Paused")
    }

    fn resume(&self) -> Result<()> {
        self.vm_state("Resumed")
    }

    fn shutdown(&self) -> Result<()> {
        if self.vmm.lock().map(|g| g.is_none()).unwrap_or(true) {
            return Ok(());
        }
        // A paused VM cannot power itself off.
        let _ = self.vm_state("Resumed");
        let _ = self.agent.shutdown();
        crate::trace::mark("shutdown asked");
        if !self.wait_vmm(Duration::from_secs(10)) {
            // SIGTERM stops the VMM; SIGKILL if even that does not.
            if let Ok(g) = self.vmm.lock() {
                if let Some(c) = g.as_ref() {
                    // SAFETY: kill takes two integers; c is our child.
                    unsafe {
                        libc::kill(c.id() as i32, libc::SIGTERM);
                    }
                }
            }
            if !self.wait_vmm(Duration::from_secs(5)) {
                self.kill_vmm();
            }
        }
        self.kill_vmm();
        crate::trace::mark("VMM exited");
        crate::trace::append_file("vmm", &self.dir.join("vmm.log"));
        if !self.readonly {
            crate::rootfs::copy_back(&crate::rootfs::image_path(&self.dir), &self.rootfs)?;
            crate::trace::mark("disk copied back");
        }
        Ok(())
    }
}

/// One HTTP/1.1 request over a Unix socket: (status, body).
fn http(sock: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .map_err(Error::path("connect to the VMM's API", sock))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(Error::path("write to", sock))?;
    let mut resp = String::new();
    s.take(64 << 10)
        .read_to_string(&mut resp)
        .map_err(Error::path("read from", sock))?;
    let code = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::Other(format!("bad answer from the VMM: {resp:?}")))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_size_the_vm() {
        let config = RuntimeConfig::default();
        let spec = Spec::parse(
            br#"{"process":{"args":["a"],"cwd":"/"},"root":{"path":"r"},
            "linux":{"resources":{"memory":{"limit":536870912}}}}"#,
        )
        .expect("spec");
        assert_eq!(vm_size(&config, &spec).expect("size").1, 512 - OVERHEAD_MIB);
        let small = Spec::parse(
            br#"{"process":{"args":["a"],"cwd":"/"},"root":{"path":"r"},
            "linux":{"resources":{"memory":{"limit":6291456}}}}"#,
        )
        .expect("spec");
        let e = vm_size(&config, &small).unwrap_err().to_string();
        assert!(e.contains("too small for a microVM"), "{e}");
        let none = Spec::parse(br#"{"process":{"args":["a"],"cwd":"/"},"root":{"path":"r"}}"#)
            .expect("spec");
        assert_eq!(vm_size(&config, &none).expect("size"), (1, 256));
    }

    #[test]
    fn the_vm_json_is_what_condo_run_reads() {
        let v = vm_json(
            &RuntimeConfig::default(),
            2,
            200,
            Path::new("/d/rootfs.img"),
            true,
            Path::new("/d/v.sock"),
        );
        assert_eq!(v["machine-config"]["vcpu_count"], 2);
        assert_eq!(v["drives"][0]["is_read_only"], true);
        assert_eq!(v["machine-config"]["huge_pages"], "None");
        assert_eq!(v["vsock"]["uds_path"], "/d/v.sock");
    }
}

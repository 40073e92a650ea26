//! `condo oci check`: says, one line each, whether what the runtime needs
//! is in place (guest kernel, agent initramfs, a KVM that boots Linux,
//! mkfs.ext4 and debugfs for root disks, the state root, the cgroup file
//! system), and exits 0 only when all of it is.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::commands::Ctx;

/// Runs the checks; the exit status.
#[allow(clippy::print_stdout)]
pub fn run(ctx: &Ctx) -> i32 {
    let mut missing = 0;
    let mut line = |ok: bool, what: String| {
        println!("{} {what}", if ok { "ok     " } else { "MISSING" });
        if !ok {
            missing += 1;
        }
    };
    let config = match ctx.config() {
        Ok(c) => {
            let from = ctx
                .config_file
                .clone()
                .unwrap_or_else(|| crate::config::DEFAULT_FILE.into());
            line(
                true,
                format!(
                    "configuration {}{}",
                    from.display(),
                    if from.exists() {
                        ""
                    } else {
                        " (absent: defaults)"
                    }
                ),
            );
            c
        }
        Err(e) => {
            line(false, format!("configuration: {e}"));
            return 1;
        }
    };
    let readable = |p: &Path| std::fs::File::open(p).is_ok();
    line(
        readable(&config.kernel),
        format!("guest kernel {} (\"kernel\")", config.kernel.display()),
    );
    line(
        readable(&config.initrd),
        format!("agent initramfs {} (\"initrd\")", config.initrd.display()),
    );
    match config.vmm() {
        Ok(vmm) => {
            let kvm = Command::new(&vmm)
                .arg("kvm-check")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output();
            match kvm {
                Ok(o) if o.status.success() => {
                    line(true, "/dev/kvm can run standard guests".into())
                }
                Ok(o) => line(
                    false,
                    format!(
                        "a KVM that boots Linux: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                ),
                Err(e) => line(false, format!("VMM {}: {e}", vmm.display())),
            }
        }
        Err(e) => line(false, format!("VMM: {e}")),
    }
    for tool in ["mkfs.ext4", "debugfs"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        line(found, format!("{tool} (e2fsprogs), for root disks"));
    }
    let root_ok = std::fs::create_dir_all(&ctx.root).is_ok() && tempfile_in(&ctx.root);
    line(
        root_ok,
        format!("state root {} writable", ctx.root.display()),
    );
    let cache_ok = std::fs::create_dir_all(&config.image_cache).is_ok();
    line(
        cache_ok,
        format!(
            "image cache {} (\"image_cache\")",
            config.image_cache.display()
        ),
    );
    let cg = Path::new("/sys/fs/cgroup");
    line(
        cg.join("cgroup.controllers").exists() || cg.join("memory").exists(),
        "cgroup file system at /sys/fs/cgroup".into(),
    );
    if missing == 0 {
        println!("condo oci: ready");
        0
    } else {
        println!("condo oci: {missing} missing");
        1
    }
}

fn tempfile_in(dir: &Path) -> bool {
    let p = dir.join(format!(".check-{}", std::process::id()));
    let ok = std::fs::write(&p, b"").is_ok();
    let _ = std::fs::remove_file(&p);
    ok
}

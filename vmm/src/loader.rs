//! Putting the kernel, initrd and command line into guest memory.
//!
//! The kernel format is chosen by its bytes, not its name: an ELF `vmlinux`
//! boots through its PVH entry point when it has one (64-bit entry
//! otherwise); anything carrying the `HdrS` magic boots as a `bzImage`
//! through the Linux 64-bit boot protocol.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use devices::GuestMemoryMmap;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{self, BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::arch::{self, BootProtocol};
use crate::config::MAX_CMDLINE_LEN;

/// Errors loading boot images.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open {what} {path}: {err}")]
    Open {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("cannot read {what} {path}: {err}")]
    Read {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("kernel image {path} is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat { path: PathBuf },
    #[error("cannot load kernel image {path}: {err}")]
    Kernel { path: PathBuf, err: String },
    #[error("initrd {path} is not a cpio archive nor a compressed one")]
    NotInitramfs { path: PathBuf },
    #[error("initrd {path} is empty")]
    EmptyInitrd { path: PathBuf },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below 4 GiB")]
    InitrdTooBig { path: PathBuf, size: u64 },
    #[error("cannot load initrd {path}: {err}")]
    Initrd { path: PathBuf, err: String },
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
}

/// Where the kernel landed and how to enter it.
pub struct LoadedKernel {
    /// Entry point address.
    pub entry: GuestAddress,
    /// Boot protocol to start the vCPUs with.
    pub protocol: BootProtocol,
    /// The bzImage setup header, which seeds `boot_params`.
    pub setup_header: Option<setup_header>,
}

fn open(what: &'static str, path: &Path) -> Result<File, LoadError> {
    File::open(path).map_err(|err| LoadError::Open {
        what,
        path: path.to_owned(),
        err,
    })
}

/// Kernel image formats condo boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF `vmlinux`.
    Elf,
    /// Compressed `bzImage` with the Linux boot protocol header.
    BzImage,
}

/// Opens the kernel image and tells its format from its first bytes, so a
/// wrong path or a wrong file is reported before any KVM work.
pub fn sniff_kernel(path: &Path) -> Result<(File, KernelFormat), LoadError> {
    let mut f = open("kernel image", path)?;
    let read_err = |err| LoadError::Read {
        what: "kernel image",
        path: path.to_owned(),
        err,
    };
    if f.metadata().map_err(read_err)?.is_dir() {
        return Err(read_err(std::io::Error::from_raw_os_error(libc::EISDIR)));
    }
    let mut head = [0u8; 0x206];
    let n = read_up_to(&mut f, &mut head).map_err(read_err)?;
    f.seek(SeekFrom::Start(0)).map_err(read_err)?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        Ok((f, KernelFormat::Elf))
    } else if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok((f, KernelFormat::BzImage))
    } else {
        Err(LoadError::UnknownFormat {
            path: path.to_owned(),
        })
    }
}

/// Opens the initrd and checks it is a non-empty regular file; returns its size.
pub fn check_initrd(path: &Path) -> Result<(File, u64), LoadError> {
    let f = open("initrd", path)?;
    let meta = f.metadata().map_err(|err| LoadError::Read {
        what: "initrd",
        path: path.to_owned(),
        err,
    })?;
    if meta.is_dir() {
        return Err(LoadError::Read {
            what: "initrd",
            path: path.to_owned(),
            err: std::io::Error::from_raw_os_error(libc::EISDIR),
        });
    }
    if meta.len() == 0 {
        return Err(LoadError::EmptyInitrd {
            path: path.to_owned(),
        });
    }
    let mut f = f;
    let mut head = [0u8; 6];
    let n = read_up_to(&mut f, &mut head).map_err(|err| LoadError::Read {
        what: "initrd",
        path: path.to_owned(),
        err,
    })?;
    if !is_initramfs(&head[..n]) {
        return Err(LoadError::NotInitramfs {
            path: path.to_owned(),
        });
    }
    f.seek(SeekFrom::Start(0)).map_err(|err| LoadError::Read {
        what: "initrd",
        path: path.to_owned(),
        err,
    })?;
    Ok((f, meta.len()))
}

/// Whether `head` starts like something the kernel can unpack as an
/// initramfs: a newc/crc cpio archive, or one compressed with a method the
/// kernel knows.
fn is_initramfs(head: &[u8]) -> bool {
    const MAGICS: [&[u8]; 9] = [
        b"070701",                       // cpio newc
        b"070702",                       // cpio crc
        &[0x1f, 0x8b],                   // gzip
        &[0xfd, b'7', b'z', b'X', b'Z'], // xz
        &[0x28, 0xb5, 0x2f, 0xfd],       // zstd
        &[0x02, 0x21, 0x4c, 0x18],       // lz4 legacy
        b"BZh",                          // bzip2
        &[0x5d, 0x00, 0x00],             // lzma
        &[0x89, b'L', b'Z', b'O'],       // lzop
    ];
    MAGICS.iter().any(|m| head.starts_with(m))
}

/// Loads the kernel image at `path`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoadError> {
    let (mut f, format) = sniff_kernel(path)?;
    let kerr = |e: loader::Error| LoadError::Kernel {
        path: path.to_owned(),
        err: e.to_string(),
    };
    let himem = Some(GuestAddress(arch::HIMEM_START));
    match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut f, himem).map_err(kerr)?;
            Ok(match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => LoadedKernel {
                    entry,
                    protocol: BootProtocol::PvhBoot,
                    setup_header: None,
                },
                _ => LoadedKernel {
                    entry: r.kernel_load,
                    protocol: BootProtocol::LinuxBoot,
                    setup_header: None,
                },
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut f, himem).map_err(kerr)?;
            // The 64-bit entry point is 0x200 past the protected-mode code.
            Ok(LoadedKernel {
                entry: GuestAddress(r.kernel_load.0 + 0x200),
                protocol: BootProtocol::LinuxBoot,
                setup_header: r.setup_header,
            })
        }
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Loads the initrd at `path` as high in low memory as it fits.
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path) -> Result<(GuestAddress, usize), LoadError> {
    let (mut f, size) = check_initrd(path)?;
    let too_big = || LoadError::InitrdTooBig {
        path: path.to_owned(),
        size,
    };
    let usize_size = usize::try_from(size).map_err(|_| too_big())?;
    let addr = arch::initrd_load_addr(mem, usize_size).map_err(|_| too_big())?;
    mem.read_exact_volatile_from(addr, &mut f, usize_size)
        .map_err(|e| LoadError::Initrd {
            path: path.to_owned(),
            err: e.to_string(),
        })?;
    Ok((addr, usize_size))
}

/// Writes the command line at its fixed address; returns its length with NUL.
pub fn load_cmdline(mem: &GuestMemoryMmap, text: &str) -> Result<usize, LoadError> {
    let cmdline = Cmdline::try_from(text, MAX_CMDLINE_LEN + 1)
        .map_err(|e| LoadError::Cmdline(e.to_string()))?;
    loader::load_cmdline(mem, GuestAddress(arch::CMDLINE_START), &cmdline)
        .map_err(|e| LoadError::Cmdline(e.to_string()))?;
    Ok(text.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("condo-loader-{}-{name}", std::process::id()));
        File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    #[test]
    fn rejects_garbage_kernels() {
        let m = mem();
        for (name, bytes) in [
            ("empty", &b""[..]),
            ("text", &b"hello, this is not a kernel"[..]),
            ("elfhead", &b"\x7fELF\x02\x01\x01"[..]),
        ] {
            let p = tmp(name, bytes);
            assert!(load_kernel(&m, &p).is_err(), "{name} accepted");
            std::fs::remove_file(p).unwrap();
        }
        let mut fake_bz = vec![0u8; 0x1000];
        fake_bz[0x202..0x206].copy_from_slice(b"HdrS");
        let p = tmp("bz", &fake_bz);
        assert!(load_kernel(&m, &p).is_err());
        std::fs::remove_file(p).unwrap();
        assert!(matches!(
            load_kernel(&m, Path::new("/nonexistent/kernel")),
            Err(LoadError::Open { .. })
        ));
    }

    #[test]
    fn initrd_loaded_and_checked() {
        let m = mem();
        let p = tmp("initrd", b"0707010000");
        let g = tmp("garbage-initrd", b"this is no archive");
        assert!(matches!(
            load_initrd(&m, &g),
            Err(LoadError::NotInitramfs { .. })
        ));
        std::fs::remove_file(g).unwrap();
        let (addr, size) = load_initrd(&m, &p).unwrap();
        assert_eq!(size, 10);
        let mut back = [0u8; 10];
        m.read_slice(&mut back, addr).unwrap();
        assert_eq!(&back, b"0707010000");
        std::fs::remove_file(&p).unwrap();
        let e = tmp("empty-initrd", b"");
        assert!(matches!(
            load_initrd(&m, &e),
            Err(LoadError::EmptyInitrd { .. })
        ));
        std::fs::remove_file(e).unwrap();
    }

    #[test]
    fn cmdline_written_with_nul() {
        let m = mem();
        let n = load_cmdline(&m, "console=ttyS0 -- nproc").unwrap();
        let mut back = vec![0u8; n];
        m.read_slice(&mut back, GuestAddress(arch::CMDLINE_START))
            .unwrap();
        assert_eq!(&back, b"console=ttyS0 -- nproc\0");
    }
}

//! A TAP interface with virtio-net headers (IFF_VNET_HDR), so frames and
//! their offload metadata pass between guest and host unchanged.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// Size of `virtio_net_hdr_v1` (with `num_buffers`), used on both sides.
pub const VNET_HDR_LEN: usize = 12;

const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// Offload flags for TUNSETOFFLOAD.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_UFO: u32 = 0x10;

/// Errors opening a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP interface name {0:?} is empty or longer than 15 bytes")]
    Name(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(std::io::Error),
    #[error("cannot attach to TAP interface {name}: {err}")]
    SetIff { name: String, err: std::io::Error },
    #[error("cannot configure TAP interface {name}: {err}")]
    Configure { name: String, err: std::io::Error },
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: u16,
    _pad: [u8; 22],
}

/// An open TAP queue.
pub struct Tap {
    file: File,
    name: String,
}

fn ioctl_ptr<T>(fd: RawFd, req: libc::c_ulong, arg: *const T) -> std::io::Result<()> {
    // SAFETY: the callers pass a request whose argument is `T`, pointing at a
    // live value of the right size for the duration of the call.
    let r = unsafe { libc::ioctl(fd, req, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Tap {
    /// Opens (or creates) TAP interface `name` in non-blocking mode.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(TapError::Name(name.to_owned()));
        }
        let path = c"/dev/net/tun";
        // SAFETY: opening a NUL-terminated path; the fd is checked below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(TapError::OpenTun(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        ioctl_ptr(fd, TUNSETIFF, &req).map_err(|err| TapError::SetIff {
            name: name.to_owned(),
            err,
        })?;
        let hdr = VNET_HDR_LEN as libc::c_int;
        ioctl_ptr(fd, TUNSETVNETHDRSZ, &hdr).map_err(|err| TapError::Configure {
            name: name.to_owned(),
            err,
        })?;
        Ok(Self {
            file,
            name: name.to_owned(),
        })
    }

    /// Tells the kernel which offloads the guest accepts on receive.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // TUNSETOFFLOAD takes the flags by value.
        // SAFETY: an integer argument, no memory is passed.
        let r =
            unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
        if r < 0 {
            return Err(TapError::Configure {
                name: self.name.clone(),
                err: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads one frame (vnet header first); `WouldBlock` when none waits.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    /// Writes one frame (vnet header first).
    pub fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    /// Writes one frame (vnet header first) gathered from `iov`, whose
    /// pointers must be valid for reads of their lengths.
    pub fn write_iovecs(&self, iov: &[libc::iovec]) -> std::io::Result<usize> {
        let n = libc::c_int::try_from(iov.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // SAFETY: the kernel only reads the `n` iovecs, each of which the
        // caller guarantees points into live memory (guest RAM mappings
        // that outlive this call).
        let r = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), n) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names() {
        assert!(matches!(Tap::open(""), Err(TapError::Name(_))));
        assert!(matches!(
            Tap::open("a-name-that-is-too-long"),
            Err(TapError::Name(_))
        ));
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}

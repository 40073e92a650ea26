//! Terminals: the pseudo-terminal a container with `process.terminal` gets,
//! its master side handed to the engine over `--console-socket` (as runc
//! does: one SCM_RIGHTS message whose bytes name the terminal), window
//! sizes, and raw mode for the side the runtime relays.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::error::{Error, Result};

/// A new pseudo-terminal pair.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    /// The slave's path (`/dev/pts/N`).
    pub name: String,
}

/// Opens a pseudo-terminal of `rows` x `cols` (when non-zero).
pub fn open_pty(rows: u16, cols: u16) -> Result<Pty> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let wsp = if rows > 0 && cols > 0 {
        &ws as *const libc::winsize
    } else {
        std::ptr::null()
    };
    // SAFETY: openpty writes two descriptors into the two ints; the name
    // buffer is not asked for (null), the termios is null and the winsize
    // is a valid struct or null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            wsp,
        )
    };
    if rc < 0 {
        return Err(Error::io("open a pseudo-terminal")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: openpty succeeded: both are fresh descriptors we own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        set_cloexec(fd.as_raw_fd());
    }
    let name = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/dev/pts/?".into());
    Ok(Pty {
        master,
        slave,
        name,
    })
}

/// Marks a descriptor close-on-exec.
pub fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we hold; a failure leaves it as it was.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

/// Sends the terminal's master side to the engine's console socket.
pub fn send_master(socket: &Path, pty: &Pty) -> Result<()> {
    let s =
        UnixStream::connect(socket).map_err(Error::path("connect to console socket", socket))?;
    s.send_with_fd(pty.name.as_bytes(), pty.master.as_raw_fd())
        .map_err(|e| Error::Io {
            what: format!("send the terminal to {}", socket.display()),
            err: std::io::Error::from_raw_os_error(e.errno()),
        })?;
    Ok(())
}

/// Puts a terminal in raw mode: bytes pass through unchanged (the guest's
/// own terminal does the line discipline and echo).
pub fn make_raw(fd: RawFd) -> Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is a terminal we hold, t a valid termios.
    if unsafe { libc::tcgetattr(fd, &mut t) } < 0 {
        return Err(Error::io("read terminal attributes")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: t is a valid termios.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: as above.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } < 0 {
        return Err(Error::io("set raw mode")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes terminal `fd` the controlling terminal of this process (which
/// must lead its own session): resizes then raise SIGWINCH here.
pub fn make_controlling(fd: RawFd) -> Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument; fd is a terminal we hold.
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } < 0 {
        return Err(Error::io("take the terminal")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A terminal's size as (rows, columns).
pub fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into ws.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0).then_some((ws.ws_row, ws.ws_col))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_carries_its_size_and_its_master_crosses_a_socket() {
        let pty = open_pty(40, 120).expect("pty");
        assert_eq!(window_size(pty.slave.as_raw_fd()), Some((40, 120)));
        assert!(pty.name.starts_with("/dev/pts/"), "{}", pty.name);
        let dir = std::env::temp_dir().join(format!("condo-oci-pty-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let sock = dir.join("console.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        send_master(&sock, &pty).expect("send");
        let (c, _) = l.accept().expect("accept");
        let mut buf = [0u8; 64];
        let (n, file) = c.recv_with_fd(&mut buf).expect("recv");
        assert_eq!(&buf[..n], pty.name.as_bytes());
        let file = file.expect("a descriptor");
        assert_eq!(window_size(file.as_raw_fd()), Some((40, 120)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

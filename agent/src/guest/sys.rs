//! The system calls the agent makes that std does not wrap: vsock sockets,
//! poll, ptys, mounts, signals, waiting for children, power-off. Each
//! wrapper turns the C convention into an `io::Result`; every `unsafe`
//! block of the agent outside `spawn.rs`'s pre-exec hook is here.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The result of a call that returns -1 and sets errno on failure.
fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
}

/// A listening AF_VSOCK stream socket on `port`, any CID.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: addr is a valid sockaddr_vm and the length says so.
    cvt(unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    // SAFETY: a plain call on a socket we own.
    cvt(unsafe { libc::listen(sock.as_raw_fd(), 64) })?;
    Ok(sock)
}

/// Accepts one connection on a vsock listener (close-on-exec): the
/// connection and the peer's CID.
pub fn accept_vsock(listener: &OwnedFd) -> io::Result<(OwnedFd, u32)> {
    loop {
        // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
        let mut peer: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: peer and len describe a buffer the size of a vsock
        // address, which accept4 fills; the result is checked.
        let r = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                (&mut peer as *mut libc::sockaddr_vm).cast(),
                &mut len,
                libc::SOCK_CLOEXEC,
            )
        };
        match cvt(r) {
            // SAFETY: accept4 returned a new descriptor nobody else owns.
            Ok(fd) => return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, peer.svm_cid)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Waits for events on `fds` (timeout in ms, -1 for none); EINTR counts as
/// no events.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: the pointer and length describe the caller's slice.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    match cvt(r) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// Sets O_NONBLOCK on a descriptor (its open file description: dups share
/// it).
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller holds; no pointers.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two new descriptors nobody else owns.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// A new pty from the `/dev/ptmx` the agent's root has: (master, slave),
/// both close-on-exec.
pub fn open_pty() -> io::Result<(File, File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/ptmx: {e}")))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, which is valid.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new
    // descriptor for the pty's slave.
    let slave = cvt(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a new descriptor nobody else owns.
    Ok((master, unsafe { File::from_raw_fd(slave) }))
}

/// Sets a terminal's window size (the kernel sends SIGWINCH to its
/// foreground process group when it changes).
pub fn set_winsize(tty: &impl AsRawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid.
    cvt(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) takes no pointers.
    cvt(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// The pid of a child that has ended, without reaping it; `Ok(None)` when
/// the agent has no children at all.
pub fn peek_exited_child() -> io::Result<Option<u32>> {
    loop {
        // SAFETY: siginfo_t is plain data; all-zero is valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: info is a valid siginfo_t for waitid to fill.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        match cvt(r) {
            // SAFETY: waitid filled info for a child state change (WEXITED).
            Ok(_) => return Ok(Some(unsafe { info.si_pid() } as u32)),
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reaps child `pid` if it has ended: its raw wait status.
pub fn reap(pid: u32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: status is a valid int for waitpid to fill.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    (r == pid as libc::pid_t).then_some(status)
}

/// mount(2). `None` for the arguments a call leaves out.
pub fn mount(
    source: Option<&OsStr>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target = cstr(target.as_os_str())?;
    let fstype = fstype.map(|s| cstr(OsStr::new(s))).transpose()?;
    let data = data.map(|s| cstr(OsStr::new(s))).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that
    // outlives the call.
    cvt(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })?;
    Ok(())
}

/// Creates a device node.
pub fn mknod(path: &Path, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let p = cstr(path.as_os_str())?;
    // SAFETY: p is a NUL-terminated path that outlives the call.
    cvt(unsafe { libc::mknod(p.as_ptr(), mode, libc::makedev(major, minor)) })?;
    Ok(())
}

/// Sets the guest's hostname.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

/// Makes the agent the reaper of its orphaned descendants.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })?;
    Ok(())
}

/// Shuts a socket down in both directions, waking a peer and any reader.
pub fn shutdown(sock: &impl AsRawFd) {
    // SAFETY: shutdown(2) takes no pointers; failure (not a socket, not
    // connected) needs no handling.
    unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RDWR) };
}

/// Ends every other process, flushes the filesystems, leaves the root
/// file system clean (remounted read-only: a container's disk then needs
/// no check before its writes are copied back) and powers the machine
/// off. Returns only on failure.
pub fn power_off() -> io::Error {
    // SAFETY: kill(-1) signals every process but this one and init; no
    // memory is involved.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    if let Err(e) = mount(
        None,
        std::path::Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY,
        None,
    ) {
        crate::guest::log!("shutdown: the root stays writable: {e}");
    }
    // SAFETY: reboot(2) with a command constant; it does not return on
    // success.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    io::Error::last_os_error()
}

//! The console a `condo jail` process holds for its VMM (`--console-socket`):
//! the VMM's standard input and output are the slave side of a
//! pseudo-terminal (so the VMM reads its serial input from it, as from a
//! user's terminal), and the jail process keeps the master. It serves the
//! console on a Unix socket to any number of clients (each first gets the
//! last 64 KiB of output, then the live stream; what any client writes is
//! the guest's input), and optionally appends the output to a log file
//! rotated at 1 MiB. The jail process outlives whoever started it, so the
//! console outlives a host daemon that is restarted.
//!
//! Single-threaded: one `poll` over the master, the listening socket and
//! the clients, until the VMM has ended. Clients are never waited for: a
//! client that cannot take output at once loses it (the log keeps it).

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Output kept for clients that attach later.
const RING: usize = 64 << 10;
/// Size at which the console log is rotated.
const LOG_MAX: u64 = 1 << 20;
/// Most clients attached at once.
const MAX_CLIENTS: usize = 16;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The log file and its size so far.
struct Log {
    path: PathBuf,
    file: fs::File,
    size: u64,
}

impl Log {
    fn open(path: &Path) -> io::Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
        })
    }

    fn write(&mut self, data: &[u8]) {
        if self.size + data.len() as u64 > LOG_MAX {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = fs::rename(&self.path, &old);
            if let Ok(l) = Self::open(&self.path) {
                *self = l;
            }
        }
        // A full disk loses log lines, not the console.
        if self.file.write_all(data).is_ok() {
            self.size += data.len() as u64;
        }
    }
}

/// A VMM's console: the pseudo-terminal master and the socket serving it.
pub struct Console {
    master: OwnedFd,
    slave: CString,
    listener: UnixListener,
    socket: PathBuf,
    log: Option<Log>,
}

impl Console {
    /// Opens a pseudo-terminal and listens on `socket` (replacing a stale
    /// socket file there).
    pub fn open(socket: &Path, log: Option<&Path>) -> io::Result<Self> {
        // SAFETY: plain system calls; the returned descriptor is owned below.
        let master = unsafe {
            let fd = cvt(libc::posix_openpt(
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            ))?;
            OwnedFd::from_raw_fd(fd)
        };
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: a valid descriptor and a buffer of the given length.
        unsafe {
            cvt(libc::grantpt(master.as_raw_fd()))?;
            cvt(libc::unlockpt(master.as_raw_fd()))?;
            let rc = libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
        }
        // SAFETY: ptsname_r wrote a NUL-terminated string into `name`.
        let slave = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_owned();
        if let Ok(m) = fs::symlink_metadata(socket) {
            if m.file_type().is_dir() {
                return Err(io::Error::other("is a directory"));
            }
            fs::remove_file(socket)?;
        }
        let listener = UnixListener::bind(socket)?;
        fs::set_permissions(socket, fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let log = log.map(Log::open).transpose()?;
        Ok(Self {
            master,
            slave,
            listener,
            socket: socket.to_path_buf(),
            log,
        })
    }

    /// In the VMM's process: makes the pseudo-terminal its standard input
    /// and output (standard error stays where it was: VMM errors are not
    /// console output).
    pub fn attach_child(&self) -> io::Result<()> {
        // SAFETY: a NUL-terminated path; dup2 onto the standard descriptors.
        unsafe {
            let fd = cvt(libc::open(
                self.slave.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY,
            ))?;
            cvt(libc::dup2(fd, 0))?;
            cvt(libc::dup2(fd, 1))?;
            if fd > 2 {
                libc::close(fd);
            }
        }
        Ok(())
    }

    /// Serves the console until process `pid` (the VMM) has ended; returns
    /// its raw wait status.
    pub fn serve(mut self, pid: libc::pid_t) -> io::Result<libc::c_int> {
        let mut ring: VecDeque<u8> = VecDeque::with_capacity(RING);
        let mut clients: Vec<UnixStream> = Vec::new();
        let mut master_open = true;
        let mut buf = vec![0u8; 16 << 10];
        let mut status = 0;
        loop {
            // SAFETY: a status out-parameter.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            let mut fds = vec![libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if master_open {
                fds.push(libc::pollfd {
                    fd: self.master.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let first_client = fds.len();
            fds.extend(clients.iter().map(|c| libc::pollfd {
                fd: c.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }));
            // The timeout bounds how late the VMM's end is noticed when
            // its console stays open (it never does: it is its stdout).
            // SAFETY: `fds` is a valid array of its length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 500) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[0].revents & libc::POLLIN != 0 {
                self.accept(&ring, &mut clients);
            }
            if master_open && fds[1].revents != 0 {
                // SAFETY: reading into a buffer of its length.
                let got = unsafe {
                    libc::read(self.master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                };
                if got > 0 {
                    let data = &buf[..got as usize];
                    self.output(data, &mut ring, &mut clients);
                } else if got == 0
                    || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted
                {
                    // EIO: every slave descriptor is closed, the VMM is
                    // gone or going.
                    master_open = false;
                }
            }
            // Client input goes to the guest; a closed client is dropped.
            let mut gone = Vec::new();
            for (i, pfd) in fds[first_client..].iter().enumerate() {
                if pfd.revents == 0 {
                    continue;
                }
                match clients[i].read(&mut buf) {
                    Ok(0) => gone.push(i),
                    Ok(k) => {
                        if master_open {
                            let _ = write_all_fd(self.master.as_raw_fd(), &buf[..k]);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => gone.push(i),
                }
            }
            for i in gone.into_iter().rev() {
                clients.remove(i);
            }
            if !master_open {
                // The VMM closed its console: it has ended or is ending.
                loop {
                    // SAFETY: a status out-parameter.
                    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
                    if r == pid {
                        break;
                    }
                    if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                        return Err(io::Error::last_os_error());
                    }
                }
                break;
            }
        }
        let _ = fs::remove_file(&self.socket);
        Ok(status)
    }

    fn accept(&self, ring: &VecDeque<u8>, clients: &mut Vec<UnixStream>) {
        while let Ok((mut c, _)) = self.listener.accept() {
            if clients.len() >= MAX_CLIENTS {
                let _ = c.write_all(b"\r\ncondo: too many console clients\r\n");
                continue;
            }
            let (a, b) = ring.as_slices();
            // The history goes out blocking (with a deadline), the live
            // stream without waiting.
            let _ = c.set_write_timeout(Some(std::time::Duration::from_secs(1)));
            if c.write_all(a).is_err() || c.write_all(b).is_err() {
                continue;
            }
            if c.set_nonblocking(true).is_ok() {
                clients.push(c);
            }
        }
    }

    fn output(&mut self, data: &[u8], ring: &mut VecDeque<u8>, clients: &mut Vec<UnixStream>) {
        if let Some(l) = &mut self.log {
            l.write(data);
        }
        let keep = data.len().min(RING);
        let over = (ring.len() + keep).saturating_sub(RING);
        ring.drain(..over);
        ring.extend(&data[data.len() - keep..]);
        clients.retain_mut(|c| match c.write(data) {
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        });
    }
}

fn write_all_fd(fd: libc::c_int, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: writing from a buffer of its length.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_at_its_limit() {
        let d = std::env::temp_dir().join(format!("condo-console-log-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let p = d.join("console.log");
        let mut l = Log::open(&p).unwrap();
        let chunk = vec![b'x'; 300 << 10];
        for _ in 0..4 {
            l.write(&chunk);
        }
        let cur = fs::metadata(&p).unwrap().len();
        let old = fs::metadata(d.join("console.log.1")).unwrap().len();
        assert!(cur <= LOG_MAX && old <= LOG_MAX, "{cur} {old}");
        assert_eq!(cur + old, 4 * (300 << 10));
        let _ = fs::remove_dir_all(&d);
    }
}

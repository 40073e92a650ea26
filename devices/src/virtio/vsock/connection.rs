//! One vsock stream connection as the muxer tracks it: its host Unix
//! socket, its state (waiting for the host's `CONNECT` line, for the
//! guest's answer, established), the bytes it buffers each way and the
//! spec's credit counters.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::packet::{Header, TYPE_STREAM};
use super::{CONN_BUF, HOST_CID};

/// Where a connection is in its life.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum State {
    /// A host program connected; waiting for its `CONNECT <port>` line.
    AwaitConnectLine(Vec<u8>),
    /// REQUEST sent to the guest; waiting for RESPONSE or RST.
    LocalInit,
    Established,
}

/// A guest connection and the host Unix socket it is joined to.
pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) state: State,
    /// Host-side port.
    pub(super) local_port: u32,
    /// Guest-side port.
    pub(super) peer_port: u32,
    /// The host stream has data (edge-triggered: set until a read blocks).
    pub(super) readable: bool,
    /// In the muxer's ready list.
    pub(super) queued: bool,
    pub(super) host_eof: bool,
    pub(super) peer_buf_alloc: u32,
    pub(super) peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    pub(super) rx_cnt: u32,
    /// Guest bytes written to the host stream.
    pub(super) fwd_cnt: u32,
    pub(super) last_fwd_cnt_sent: u32,
    /// Guest bytes waiting for the host stream to take them.
    pub(super) tx_buf: VecDeque<u8>,
    /// The guest will send no more: shut the stream's write side once
    /// `tx_buf` is flushed.
    pub(super) peer_shut_send: bool,
    /// Both sides are done: remove once `tx_buf` is flushed.
    pub(super) close_when_flushed: bool,
}

impl Conn {
    pub(super) fn new(stream: UnixStream, state: State) -> Self {
        Self {
            stream,
            state,
            local_port: 0,
            peer_port: 0,
            readable: false,
            queued: false,
            host_eof: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            tx_buf: VecDeque::new(),
            peer_shut_send: false,
            close_when_flushed: false,
        }
    }

    /// Bytes the guest has room for.
    pub(super) fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Writes as much of `tx_buf` as the stream takes.
    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if self.peer_shut_send {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

/// A packet of connection `c` to guest `cid`.
pub(super) fn header(cid: u64, c: &Conn, op: u16) -> Header {
    Header {
        src_cid: HOST_CID,
        dst_cid: cid,
        src_port: c.local_port,
        dst_port: c.peer_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: CONN_BUF,
        fwd_cnt: c.fwd_cnt,
    }
}

/// Connects to the Unix socket `path` without blocking: a host listener
/// whose backlog is full refuses (EAGAIN) instead of stalling the device.
pub(super) fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a new socket, owned by the UnixStream below from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: addr is a valid sockaddr_un of the given size.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

//! virtio-vsock with Firecracker's hybrid host side.
//!
//! The guest's AF_VSOCK stream sockets reach host programs through Unix
//! sockets, exactly as with Firecracker, so its tooling works unchanged:
//!
//! - host to guest: a host program connects to the Unix socket `uds_path`
//!   and writes `CONNECT <port>\n`; once the guest accepts on `<port>`, condo
//!   answers `OK <host port>\n` and the stream carries the data;
//! - guest to host: a guest connection to CID 2, port `P` is forwarded to
//!   the Unix socket `<uds_path>_P`, if a host program listens there.
//!
//! Flow control follows the spec's credit scheme: condo sends the guest no
//! more than it has room for, and advertises [`CONN_BUF`] bytes per
//! connection; a guest that overruns that credit has its connection reset.
//! Connections, buffered bytes and queued control packets are all capped, so
//! a guest cannot make the VMM allocate without bound.

mod connection;
mod muxer;
pub mod packet;

#[cfg(feature = "fuzzing")]
pub use self::muxer::fuzz_queues;
use self::muxer::Muxer;

use super::persist::{DeviceStateError, VirtioDeviceState, VsockState};
use crate::persist::Persist;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};

use super::worker::{keep_serving, QueueWorker};
use super::{
    device_type, read_config_bytes, ActivateError, Activation, Interrupt, VirtioDevice, INT_VRING,
    VIRTIO_RING_F_EVENT_IDX,
};

/// The host's context id.
pub const HOST_CID: u64 = 2;
/// Receive buffer space condo advertises per connection: the most guest
/// data it holds for a host program that is slow to read.
pub const CONN_BUF: u32 = 256 << 10;
/// Most simultaneous connections.
pub const MAX_CONNS: usize = 256;
/// Largest payload condo accepts in or puts into one packet.
pub const MAX_PAYLOAD: usize = 64 << 10;
/// Most control packets waiting for receive buffers; beyond, the oldest
/// are dropped (a guest that floods resets without reading its queue).
const MAX_PENDING_CTRL: usize = 4096;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// First port condo gives host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
/// The listening socket's token: the first after the three queues.
const LISTENER: u64 = 3;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock guest CID {0} is reserved (use 3 to {max})", max = u32::MAX - 1)]
    BadCid(u32),
    #[error("vsock socket {path}: {err}")]
    Socket { path: PathBuf, err: std::io::Error },
}

/// The vsock device.
pub struct Vsock {
    cid: u32,
    uds_path: PathBuf,
    /// The host side's listener; None while detached (a migration hands
    /// its path over).
    listener: Option<UnixListener>,
    worker: Option<QueueWorker>,
    /// Restored from a snapshot: the guest's connections are gone and it
    /// must be told (a transport reset event) when the device starts.
    reset_pending: bool,
}

impl Vsock {
    /// A device for guest CID `cid`, listening on the Unix socket
    /// `uds_path` for host connections. A stale socket file (nobody
    /// listening) is replaced; a live one is an error.
    pub fn new(cid: u32, uds_path: &Path) -> Result<Self, VsockError> {
        if !(3..u32::MAX).contains(&cid) {
            return Err(VsockError::BadCid(cid));
        }
        let err = |err| VsockError::Socket {
            path: uds_path.to_owned(),
            err,
        };
        Ok(Self {
            cid,
            uds_path: uds_path.to_owned(),
            listener: Some(listen(uds_path).map_err(err)?),
            worker: None,
            reset_pending: false,
        })
    }
}

/// The host side's listener on `path` (a stale socket file replaced).
fn listen(path: &Path) -> std::io::Result<UnixListener> {
    let listener = crate::bind_unix_listener(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl Persist for Vsock {
    type State = VsockState;
    type ConstructorArgs = ();
    type Error = DeviceStateError;

    fn save(&self) -> VsockState {
        VsockState {
            cid: self.cid,
            uds_path: self.uds_path.clone(),
        }
    }

    /// Listens on the state's socket again.
    fn restore(_: (), s: &VsockState) -> Result<Self, DeviceStateError> {
        Ok(Self::new(s.cid, &s.uds_path)?)
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.worker = None;
        // A detached device's path may be another VMM's socket by now.
        if self.listener.is_some() {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data)
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.worker = None;
        let fail = |e: String| ActivateError::Failed(format!("vsock: {e}"));
        let Activation {
            mem,
            interrupt,
            queues,
            queue_evts,
            ..
        } = a;
        let Ok([rxq, txq, mut evq]) = <[Queue; 3]>::try_from(queues) else {
            return Err(fail("three queues needed".into()));
        };
        let reset = if std::mem::take(&mut self.reset_pending) {
            send_transport_reset(&mem, &mut evq, &interrupt)
        } else {
            None
        };
        let listener = self
            .listener
            .as_ref()
            .ok_or_else(|| fail("the socket is detached".into()))?
            .try_clone()
            .map_err(|e| fail(e.to_string()))?;
        let mut w = Muxer::new(
            u64::from(self.cid),
            self.uds_path.clone(),
            mem,
            interrupt,
            rxq,
            txq,
        );
        if let Some(avail) = reset {
            w.await_reset(evq, avail);
        }
        let listen_fd = listener.as_raw_fd();
        let worker = QueueWorker::spawn_with_epoll(
            "virtio-vsock",
            queue_evts,
            &[listen_fd],
            move |token, events, epoll| {
                let r = match token {
                    t if t == TXQ as u64 => w.process_tx(epoll),
                    t if t == EVQ as u64 => {
                        w.event_notified();
                        Ok(())
                    }
                    t if t == RXQ as u64 => Ok(()),
                    LISTENER => {
                        w.accept(&listener, epoll);
                        Ok(())
                    }
                    t => {
                        w.host_event(t, events);
                        Ok(())
                    }
                };
                keep_serving("virtio-vsock", r.and_then(|()| w.process_rx()))
            },
        )
        .map_err(|e| fail(e.to_string()))?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.worker = None;
        true
    }

    fn state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Vsock(self.save())
    }

    /// Connections do not survive a snapshot: the restored guest is told
    /// when the device starts.
    fn restored(&mut self) {
        self.reset_pending = true;
    }

    fn detach_backend(&mut self) {
        self.worker = None;
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }

    fn attach_backend(&mut self) -> Result<(), ActivateError> {
        if self.listener.is_none() {
            let l = listen(&self.uds_path).map_err(|e| {
                ActivateError::Failed(format!("vsock socket {}: {e}", self.uds_path.display()))
            })?;
            self.listener = Some(l);
        }
        Ok(())
    }
}

/// The event id telling the driver every connection is gone.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Puts a transport reset event in the event queue (the driver keeps a
/// buffer there) and interrupts the guest. Returns the queue's avail index
/// once the event is in, with a notification asked for when the driver
/// adds a buffer beyond it: it gives the event's buffer back, and
/// notifies, once it has handled the event. None if the event could not
/// be delivered.
fn send_transport_reset(mem: &GuestMemoryMmap, evq: &mut Queue, irq: &Interrupt) -> Option<u16> {
    use vm_memory::Bytes;
    let Some(chain) = evq.pop_descriptor_chain(mem) else {
        tracing::warn!("virtio-vsock: no event buffer for the transport reset");
        return None;
    };
    let head = chain.head_index();
    let written = match chain.writable().next() {
        Some(d) if d.len() >= 4 => mem
            .write_obj(EVENT_TRANSPORT_RESET, d.addr())
            .map_or(0, |()| 4),
        _ => 0,
    };
    evq.add_used(mem, head, written).ok()?;
    let avail = evq
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .ok()
        .filter(|_| super::arm_notification(mem, evq).is_ok());
    irq.trigger(INT_VRING);
    avail.map(|a| a.0)
}

#[cfg(test)]
mod tests;

//! The thread that serves a device's queues: waits (epoll) on the queues'
//! notification eventfds and a stop eventfd, and calls the device's handler
//! for the queue that was notified. Stopping joins the thread.

use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use crate::GuestMemoryMmap;
use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateError, Activation, Interrupt};

/// Tokens from here on are free for a device's own file descriptors.
pub const DYNAMIC_TOKEN_BASE: u64 = 1 << 32;

/// Activates a one-queue device: its queue (with event-index suppression as
/// negotiated) is served on thread `name` by `serve`, called on every
/// notification; an error from `serve` (a broken queue) stops the device.
pub fn single_queue_worker(
    name: &'static str,
    a: Activation,
    mut serve: impl FnMut(&GuestMemoryMmap, &mut Queue, &Interrupt) -> Result<(), virtio_queue::Error>
        + Send
        + 'static,
) -> Result<QueueWorker, ActivateError> {
    let Activation {
        mem,
        interrupt,
        mut queues,
        queue_evts,
        ..
    } = a;
    let Some(mut queue) = queues.pop() else {
        return Err(ActivateError::Failed(format!("{name}: no queue")));
    };
    QueueWorker::spawn(name, queue_evts, move |_| {
        keep_serving(name, serve(&mem, &mut queue, &interrupt))
    })
    .map_err(|e| ActivateError::Failed(format!("{name}: {e}")))
}

/// A worker handler's verdict: keep serving after `r`, or (a broken queue)
/// log why and stop the device.
pub fn keep_serving(name: &str, r: Result<(), virtio_queue::Error>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("{name}: {e}; device stopped");
            false
        }
    }
}

/// A running queue worker; stopped and joined on drop.
pub struct QueueWorker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl QueueWorker {
    /// Spawns thread `name` calling `handler(queue_index)` whenever queue
    /// `queue_index` is notified. The handler returns false to stop serving
    /// (a broken queue); the thread then ends.
    pub fn spawn(
        name: &str,
        queue_evts: Vec<EventFd>,
        handler: impl FnMut(usize) -> bool + Send + 'static,
    ) -> std::io::Result<Self> {
        Self::spawn_with_fds(name, queue_evts, &[], handler)
    }

    /// Like [`QueueWorker::spawn`], also watching `fds` (readable, edge
    /// triggered): the handler gets `queue_evts.len() + i` for `fds[i]`.
    pub fn spawn_with_fds(
        name: &str,
        queue_evts: Vec<EventFd>,
        fds: &[std::os::fd::RawFd],
        mut handler: impl FnMut(usize) -> bool + Send + 'static,
    ) -> std::io::Result<Self> {
        Self::spawn_with_epoll(name, queue_evts, fds, move |token, _, _| {
            handler(token as usize)
        })
    }

    /// Like [`QueueWorker::spawn_with_fds`], for devices whose set of file
    /// descriptors changes: the handler also gets the events that fired and
    /// the epoll instance, where it may add its own fds with tokens of at
    /// least [`DYNAMIC_TOKEN_BASE`] (level triggered unless it asks for
    /// edge triggering).
    pub fn spawn_with_epoll(
        name: &str,
        queue_evts: Vec<EventFd>,
        fds: &[std::os::fd::RawFd],
        mut handler: impl FnMut(u64, EventSet, &Epoll) -> bool + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop_rx = stop.try_clone()?;
        let epoll = Epoll::new()?;
        let stop_token = (queue_evts.len() + fds.len()) as u64;
        for (i, evt) in queue_evts.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                evt.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        for (i, fd) in fds.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                *fd,
                EpollEvent::new(
                    EventSet::IN | EventSet::EDGE_TRIGGERED,
                    (queue_evts.len() + i) as u64,
                ),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            stop_rx.as_raw_fd(),
            EpollEvent::new(EventSet::IN, stop_token),
        )?;
        let handle = crate::spawner::spawn(name, 256 << 10, move || {
            let _stop_rx = stop_rx;
            let mut events = vec![EpollEvent::default(); (stop_token as usize + 1).max(64)];
            loop {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!("virtio worker: epoll: {e}");
                        return;
                    }
                };
                for e in &events[..n] {
                    let token = e.data();
                    if token == stop_token {
                        return;
                    }
                    if let Some(evt) = usize::try_from(token).ok().and_then(|q| queue_evts.get(q)) {
                        let _ = evt.read();
                    }
                    if !handler(token, e.event_set(), &epoll) {
                        return;
                    }
                }
            }
        })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.stop.write(1);
            let _ = h.join();
        }
    }
}

impl Drop for QueueWorker {
    fn drop(&mut self) {
        self.stop();
    }
}

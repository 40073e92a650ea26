//! Where device threads come from. A device is activated by a register
//! write on a vCPU thread (or by the VMM thread on resume), but its worker
//! must not run under the vCPU's seccomp filter: threads inherit their
//! creator's filter. So the VMM starts one spawner thread under the device
//! filter, and device threads are created by it. Without a spawner (unit
//! tests, tools) threads are started directly.

use crate::sync::lock;
use std::io;
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Request {
    name: String,
    stack: usize,
    job: Job,
    reply: SyncSender<io::Result<JoinHandle<()>>>,
}

static SPAWNER: OnceLock<Mutex<Sender<Request>>> = OnceLock::new();

/// Starts the spawner thread, which first runs `setup` (installs its
/// filter); device threads started from then on inherit that, and each
/// runs `on_start` first. A second call does nothing.
pub fn start<E>(
    setup: impl FnOnce() -> Result<(), E> + Send + 'static,
    on_start: fn(),
) -> io::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Request>();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("device-spawner".into())
        .stack_size(128 << 10)
        .spawn(move || {
            let r = setup().map_err(io::Error::other);
            let ok = r.is_ok();
            let _ = ready_tx.send(r);
            if !ok {
                return;
            }
            for req in rx {
                let job = req.job;
                let r = std::thread::Builder::new()
                    .name(req.name)
                    .stack_size(req.stack)
                    .spawn(move || {
                        on_start();
                        job()
                    });
                let _ = req.reply.send(r);
            }
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => {
            let _ = SPAWNER.set(Mutex::new(tx));
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other("the device spawner thread ended")),
    }
}

/// Starts device thread `name` (through the spawner when there is one).
pub fn spawn(
    name: &str,
    stack: usize,
    f: impl FnOnce() + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let Some(spawner) = SPAWNER.get() else {
        return std::thread::Builder::new()
            .name(name.to_owned())
            .stack_size(stack)
            .spawn(f);
    };
    let (reply, rx) = mpsc::sync_channel(1);
    lock(spawner)
        .send(Request {
            name: name.to_owned(),
            stack,
            job: Box::new(f),
            reply,
        })
        .map_err(|_| io::Error::other("the device spawner thread is gone"))?;
    rx.recv()
        .unwrap_or_else(|_| Err(io::Error::other("the device spawner thread is gone")))
}

//! The event stream: every lifecycle change of a guest (created, started,
//! stopped, crashed, restarted, adopted, deleted, ...) as one JSON line.
//! The last events are kept for clients that connect later (`GET
//! /events?since=MS`), and every live subscriber gets each new one; a
//! subscriber that does not keep up is dropped rather than waited for.

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Events kept for late readers.
const KEPT: usize = 1000;
/// Events a subscriber may fall behind by before it is dropped.
const BACKLOG: usize = 1024;

/// One event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub t_ms: i64,
    pub guest: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The event hub.
#[derive(Default)]
pub struct Events {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    kept: VecDeque<Event>,
    subscribers: Vec<SyncSender<Event>>,
}

impl Events {
    /// Records and sends an event (and logs it).
    pub fn emit(&self, guest: &str, kind: &str, detail: impl Into<String>) {
        let e = Event {
            t_ms: crate::db::now_ms(),
            guest: guest.to_owned(),
            kind: kind.to_owned(),
            detail: detail.into(),
        };
        tracing::info!(guest = %e.guest, kind = %e.kind, detail = %e.detail, "event");
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if i.kept.len() == KEPT {
            i.kept.pop_front();
        }
        i.kept.push_back(e.clone());
        i.subscribers.retain(|s| match s.try_send(e.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        });
    }

    /// The kept events since `since_ms`, and a receiver of the next ones.
    pub fn subscribe(&self, since_ms: i64) -> (Vec<Event>, Receiver<Event>) {
        let (tx, rx) = sync_channel(BACKLOG);
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let past = i
            .kept
            .iter()
            .filter(|e| e.t_ms >= since_ms)
            .cloned()
            .collect();
        i.subscribers.push(tx);
        (past, rx)
    }

    /// The kept events since `since_ms`.
    pub fn since(&self, since_ms: i64) -> Vec<Event> {
        let i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        i.kept
            .iter()
            .filter(|e| e.t_ms >= since_ms)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_get_new_events_and_slow_ones_are_dropped() {
        let ev = Events::default();
        ev.emit("a", "created", "");
        let (past, rx) = ev.subscribe(0);
        assert_eq!(past.len(), 1);
        ev.emit("a", "started", "pid 7");
        assert_eq!(rx.try_recv().unwrap().kind, "started");
        for _ in 0..BACKLOG + 1 {
            ev.emit("a", "x", "");
        }
        assert_eq!(ev.inner.lock().unwrap().subscribers.len(), 0);
        assert_eq!(ev.since(0).len(), KEPT);
    }
}

//! Counters of what the devices did, aggregated per device kind, with
//! Firecracker's metric names. Each counter keeps a running total (for
//! Prometheus) and what was already reported (Firecracker's JSON lines
//! carry the increase since the last flush).

use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonic counter.
#[derive(Default)]
pub struct Counter {
    total: AtomicU64,
    flushed: AtomicU64,
}

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self {
            total: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        }
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// The running total.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The increase since the last call.
    pub fn take_delta(&self) -> u64 {
        let t = self.total();
        t.wrapping_sub(self.flushed.swap(t, Ordering::Relaxed))
    }
}

/// Declares a group of counters and its list of (name, counter).
macro_rules! group {
    ($(#[$m:meta])* $name:ident { $($field:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Default)]
        pub struct $name { $(pub $field: Counter,)* }
        impl $name {
            /// A group at zero.
            pub const fn new() -> Self { Self { $($field: Counter::new(),)* } }
            /// Every counter with its name.
            pub fn counters(&self) -> Vec<(&'static str, &Counter)> {
                vec![$((stringify!($field), &self.$field),)*]
            }
        }
    };
}

group!(
    /// virtio-blk, all disks.
    BlockMetrics {
        read_count,
        write_count,
        read_bytes,
        write_bytes,
        flush_count,
        discard_count,
        invalid_reqs_count,
        io_errors_count,
        rate_limiter_throttled_events,
    }
);
group!(
    /// virtio-net, all interfaces.
    NetMetrics {
        rx_packets_count,
        rx_bytes_count,
        tx_packets_count,
        tx_bytes_count,
        tx_malformed_frames,
        rx_dropped_frames,
        tap_write_fails,
    }
);
group!(
    /// virtio-vsock.
    VsockMetrics {
        rx_packets_count,
        tx_packets_count,
        conns_added,
        conns_removed,
        tx_malformed_packets,
    }
);
group!(
    /// virtio-balloon.
    BalloonMetrics {
        inflate_count,
        deflate_count,
        reported_pages,
        stats_updates_count,
    }
);
group!(
    /// virtio-rng.
    EntropyMetrics { entropy_bytes, entropy_event_count }
);

/// Every device counter.
pub struct DeviceMetrics {
    pub block: BlockMetrics,
    pub net: NetMetrics,
    pub vsock: VsockMetrics,
    pub balloon: BalloonMetrics,
    pub entropy: EntropyMetrics,
}

/// The process's device counters.
pub static METRICS: DeviceMetrics = DeviceMetrics {
    block: BlockMetrics::new(),
    net: NetMetrics::new(),
    vsock: VsockMetrics::new(),
    balloon: BalloonMetrics::new(),
    entropy: EntropyMetrics::new(),
};

impl DeviceMetrics {
    /// Each group's name (Firecracker's) and counters.
    pub fn groups(&self) -> Vec<(&'static str, Vec<(&'static str, &Counter)>)> {
        vec![
            ("block", self.block.counters()),
            ("net", self.net.counters()),
            ("vsock", self.vsock.counters()),
            ("balloon", self.balloon.counters()),
            ("entropy", self.entropy.counters()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_and_totals() {
        let c = Counter::new();
        c.add(5);
        assert_eq!(c.take_delta(), 5);
        c.inc();
        assert_eq!((c.take_delta(), c.take_delta(), c.total()), (1, 0, 6));
        let g = BlockMetrics::new();
        assert!(g.counters().iter().any(|(n, _)| *n == "read_bytes"));
    }
}

//! Where a boot or a restore spends its time: each step the builder takes,
//! in microseconds, logged as one structured info line that the boot and
//! snapshot benchmarks read (`benches/src/`).
//!
//! The line looks like
//! `INFO VMM steps kind="boot" start_mono_us=123 total_us=4567 steps=kvm:12,vm:340,... beside=kernel_load:900`:
//! `steps` ran one after the other, `beside` on other threads meanwhile;
//! `start_mono_us` is `CLOCK_MONOTONIC` when the timer started, so a
//! benchmark that noted the same clock when it spawned the VMM can tell the
//! process's own start-up from the steps. Taking a step costs one
//! `Instant::now()`; nothing is formatted unless info logging is on.

use std::fmt::Write;
use std::time::Instant;

/// The steps of one boot or restore, timed back to back.
pub struct Steps {
    kind: &'static str,
    start_mono_us: u64,
    last: Instant,
    steps: Vec<(&'static str, u32)>,
    /// Work done on other threads meanwhile, with its own duration.
    beside: Vec<(&'static str, u32)>,
}

/// `CLOCK_MONOTONIC` now, in microseconds.
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which outlives
    // the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000
}

impl Steps {
    /// Starts timing a `kind` ("boot", "restore").
    pub fn start(kind: &'static str) -> Self {
        let now = Instant::now();
        Self {
            kind,
            start_mono_us: monotonic_us(),
            last: now,
            steps: Vec::with_capacity(16),
            beside: Vec::new(),
        }
    }

    /// Ends step `name`: the time since the previous step ended.
    pub fn step(&mut self, name: &'static str) {
        let now = Instant::now();
        self.record(name, now);
    }

    /// Ends step `name` at `at` (a moment another thread noted), when that
    /// is later than the previous step's end.
    pub fn step_at(&mut self, name: &'static str, at: Instant) {
        self.record(name, at.max(self.last));
    }

    /// Notes work `name` that took `us` on another thread while the steps
    /// went on (it is not part of the total).
    pub fn beside(&mut self, name: &'static str, us: u64) {
        self.beside
            .push((name, u32::try_from(us).unwrap_or(u32::MAX)));
    }

    fn record(&mut self, name: &'static str, now: Instant) {
        let us = now.duration_since(self.last).as_micros();
        self.steps
            .push((name, u32::try_from(us).unwrap_or(u32::MAX)));
        self.last = now;
    }

    /// The steps as `name:us,name:us,...`.
    pub fn summary(&self) -> String {
        list(&self.steps)
    }

    /// Microseconds of all steps.
    pub fn total_us(&self) -> u64 {
        self.steps.iter().map(|s| u64::from(s.1)).sum()
    }

    /// Logs the steps as one info line.
    pub fn log(&self) {
        if tracing::enabled!(tracing::Level::INFO) {
            tracing::info!(
                kind = self.kind,
                start_mono_us = self.start_mono_us,
                total_us = self.total_us(),
                steps = %self.summary(),
                beside = %list(&self.beside),
                "VMM steps"
            );
        }
    }
}

/// `name:us,name:us,...`
fn list(items: &[(&'static str, u32)]) -> String {
    let mut s = String::with_capacity(items.len() * 16);
    for (i, (name, us)) in items.iter().enumerate() {
        let _ = write!(s, "{}{name}:{us}", if i == 0 { "" } else { "," });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn steps_add_up_in_order() {
        let before = Instant::now();
        let mut s = Steps::start("boot");
        s.step("a");
        std::thread::sleep(Duration::from_millis(2));
        s.step("b");
        // A moment before the last step ends the next one at once.
        s.step_at("c", before);
        let sum = s.summary();
        let parts: Vec<(&str, u64)> = sum
            .split(',')
            .map(|p| {
                let (n, v) = p.split_once(':').unwrap();
                (n, v.parse().unwrap())
            })
            .collect();
        assert_eq!(
            parts.iter().map(|p| p.0).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert!(parts[1].1 >= 2000, "{sum}");
        assert_eq!(parts[2].1, 0);
        s.beside("d", 7);
        assert_eq!(list(&s.beside), "d:7");
        assert_eq!(parts.iter().map(|p| p.1).sum::<u64>(), s.total_us());
        assert!(s.total_us() <= s.last.duration_since(before).as_micros() as u64);
        assert!(s.start_mono_us > 0 && monotonic_us() >= s.start_mono_us);
    }
}

//! Token-bucket I/O rate limiting for virtio block and net devices.
//!
//! Semantics follow Firecracker's `rate_limiter` module: a [`RateLimiter`]
//! holds an optional bandwidth (bytes) bucket and an optional ops bucket. When
//! a [`RateLimiter::consume`] call is refused, the limiter arms a one-shot
//! timerfd and stays blocked until the device worker sees the fd readable and
//! calls [`RateLimiter::event_handler`].
//!
//! Differences from Firecracker: the budget is always refilled lazily by
//! elapsed time with the fraction of a token carried over, a request larger
//! than the bucket waits for a full bucket, and an over-consumption is
//! recorded as debt so that the bucket only starts refilling once the excess
//! has been paid back in time.

use std::os::fd::{AsRawFd, RawFd};

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

const NS_PER_MS: u128 = 1_000_000;
const NS_PER_SEC: u128 = 1_000_000_000;

/// Shortest timer the limiter arms.
const MIN_TIMER: Duration = Duration::from_millis(1);
/// Longest timer the limiter arms (Firecracker's `REFILL_TIMER_INTERVAL_MS`).
/// A still-empty bucket simply re-arms the timer on the next attempt.
const MAX_TIMER: Duration = Duration::from_millis(100);

/// Errors from [`RateLimiter::event_handler`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The timerfd was signalled while the limiter was not blocked, or has not
    /// expired yet.
    #[error("spurious rate limiter timer event")]
    SpuriousEvent,
    /// A timerfd syscall failed.
    #[error("rate limiter timerfd: {0}")]
    Timer(std::io::Error),
}

/// Outcome of [`TokenBucket::reduce`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BucketReduction {
    /// Not enough tokens; nothing was consumed.
    Failure,
    /// The tokens were consumed.
    Success,
    /// The request was larger than the bucket and was let through with a full
    /// bucket; the value is the excess as a multiple of the bucket size.
    OverConsumption(f64),
}

/// A token bucket of `size` tokens refilled linearly every `refill_time_ms`,
/// plus an initial `one_time_burst` of extra tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    one_time_burst: u64,
    initial_one_time_burst: u64,
    refill_time_ms: u64,
    budget: u64,
    /// Refill reference point. Lies in the future while the bucket is in debt
    /// after an over-consumption.
    last_update: Instant,
}

impl TokenBucket {
    /// A full bucket; `None` (unlimited) when `size` or `refill_time_ms` is 0.
    pub fn new(size: u64, one_time_burst: u64, refill_time_ms: u64) -> Option<Self> {
        if size == 0 || refill_time_ms == 0 {
            return None;
        }
        Some(Self {
            size,
            one_time_burst,
            initial_one_time_burst: one_time_burst,
            refill_time_ms,
            budget: size,
            last_update: Instant::now(),
        })
    }

    /// A bucket from its API configuration; `None` means unlimited.
    pub fn from_config(config: &BucketConfig) -> Option<Self> {
        Self::new(
            config.size,
            config.one_time_burst.unwrap_or(0),
            config.refill_time,
        )
    }

    /// Takes `tokens`, from the one-time burst first and then from the budget.
    pub fn reduce(&mut self, tokens: u64) -> BucketReduction {
        let now = Instant::now();
        self.replenish(now);

        if tokens <= self.one_time_burst {
            self.one_time_burst -= tokens;
            return BucketReduction::Success;
        }
        let rest = tokens - self.one_time_burst;
        if rest <= self.budget {
            self.one_time_burst = 0;
            self.budget -= rest;
            return BucketReduction::Success;
        }
        if rest > self.size && self.budget == self.size {
            // Never fits: let it through once the bucket is full and charge
            // the excess as debt.
            self.one_time_burst = 0;
            let excess = rest - self.budget;
            self.budget = 0;
            let debt = ns_to_duration(self.ns_for_tokens(excess).min(u128::from(u64::MAX)));
            self.last_update = now.checked_add(debt).unwrap_or(now);
            return BucketReduction::OverConsumption(excess as f64 / self.size as f64);
        }
        BucketReduction::Failure
    }

    /// Gives back `tokens` (e.g. for a request that could not be served),
    /// up to the initial burst while it lasts, else up to the bucket size.
    pub fn force_replenish(&mut self, tokens: u64) {
        if self.one_time_burst > 0 {
            self.one_time_burst = self
                .one_time_burst
                .saturating_add(tokens)
                .min(self.initial_one_time_burst);
            return;
        }
        let now = Instant::now();
        let mut tokens = tokens;
        if self.last_update > now {
            // Pay back debt first.
            let debt_ns = duration_to_ns(self.last_update - now);
            let cost = self.ns_for_tokens(tokens);
            if cost < u128::from(debt_ns) {
                self.last_update = self
                    .last_update
                    .checked_sub(ns_to_duration(cost))
                    .unwrap_or(now)
                    .max(now);
                return;
            }
            self.last_update = now;
            tokens = tokens.saturating_sub(self.tokens_in_ns(debt_ns));
        }
        self.budget = self.budget.saturating_add(tokens).min(self.size);
    }

    /// Bucket size in tokens.
    pub fn capacity(&self) -> u64 {
        self.size
    }

    /// Tokens currently in the bucket (as of the last reduction).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Remaining one-time burst tokens.
    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }

    /// Time to refill an empty bucket, in milliseconds.
    pub fn refill_time_ms(&self) -> u64 {
        self.refill_time_ms
    }

    fn refill_ns(&self) -> u128 {
        u128::from(self.refill_time_ms) * NS_PER_MS
    }

    /// Nanoseconds needed to generate `tokens`, rounded up; saturating.
    fn ns_for_tokens(&self, tokens: u64) -> u128 {
        let size = u128::from(self.size);
        let refill = self.refill_ns();
        let tokens = u128::from(tokens);
        // Whole refill periods, then the remainder (< size tokens, so the
        // product below only overflows for absurd refill times).
        let whole = (tokens / size).saturating_mul(refill);
        let part = (tokens % size)
            .checked_mul(refill)
            .map_or(refill, |n| n.div_ceil(size));
        whole.saturating_add(part)
    }

    /// Whole tokens generated in `ns` nanoseconds; saturating.
    fn tokens_in_ns(&self, ns: u64) -> u64 {
        let size = u128::from(self.size);
        let refill = self.refill_ns();
        let ns = u128::from(ns);
        let whole = (ns / refill).saturating_mul(size);
        // (ns % refill) < 2^64 and size < 2^64: the product fits in a u128.
        let part = (ns % refill) * size / refill;
        u64::try_from(whole.saturating_add(part)).unwrap_or(u64::MAX)
    }

    /// Adds the tokens generated since `last_update`, carrying over the
    /// fraction of a token not yet generated.
    fn replenish(&mut self, now: Instant) {
        if self.budget >= self.size {
            self.budget = self.size;
            self.last_update = self.last_update.max(now);
            return;
        }
        let elapsed_ns = duration_to_ns(now.saturating_duration_since(self.last_update));
        if u128::from(elapsed_ns) >= self.refill_ns() {
            self.budget = self.size;
            self.last_update = now;
            return;
        }
        let tokens = self.tokens_in_ns(elapsed_ns);
        if tokens == 0 {
            return;
        }
        let budget = self.budget.saturating_add(tokens);
        if budget >= self.size {
            self.budget = self.size;
            self.last_update = now;
        } else {
            self.budget = budget;
            // ceil(tokens * refill / size) <= elapsed, so this never passes `now`.
            let used = ns_to_duration(self.ns_for_tokens(tokens));
            self.last_update = self.last_update.checked_add(used).unwrap_or(now).min(now);
        }
    }

    /// Time from `now` until `reduce(tokens)` can succeed (assumes the bucket
    /// was just replenished).
    fn time_until_available(&self, tokens: u64, now: Instant) -> Duration {
        let need = tokens.saturating_sub(self.one_time_burst).min(self.size);
        let missing = need.saturating_sub(self.budget);
        if missing == 0 {
            return Duration::ZERO;
        }
        self.last_update
            .checked_add(ns_to_duration(self.ns_for_tokens(missing)))
            .map_or(Duration::MAX, |t| t.saturating_duration_since(now))
    }

    /// Remaining debt after an over-consumption.
    fn debt(&self, now: Instant) -> Duration {
        self.last_update.saturating_duration_since(now)
    }
}

fn duration_to_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn ns_to_duration(ns: u128) -> Duration {
    let secs = u64::try_from(ns / NS_PER_SEC).unwrap_or(u64::MAX);
    let nanos = u32::try_from(ns % NS_PER_SEC).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// Which bucket a consumption is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// Bytes transferred (bandwidth bucket).
    Bytes,
    /// Requests (ops bucket).
    Ops,
}

/// One bucket's configuration, with Firecracker's JSON field names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Bucket size in tokens; 0 means unlimited.
    pub size: u64,
    /// Extra tokens available once, before the bucket is used.
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill an empty bucket; 0 means unlimited.
    pub refill_time: u64,
}

/// A rate limiter's configuration, with Firecracker's JSON field names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes bucket; absent means unlimited.
    #[serde(default)]
    pub bandwidth: Option<BucketConfig>,
    /// Operations bucket; absent means unlimited.
    #[serde(default)]
    pub ops: Option<BucketConfig>,
}

/// A change to one bucket of a running limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketUpdate {
    /// Keep the bucket as it is.
    None,
    /// Remove the bucket (unlimited).
    Disabled,
    /// Replace the bucket with a fresh, full one.
    Update(BucketConfig),
}

/// Bandwidth and ops limiter with a timerfd to wake a blocked device.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    timer_active: bool,
}

impl RateLimiter {
    /// A limiter with the given buckets; `None` (or a zero size or refill
    /// time) leaves that token type unlimited.
    pub fn new(
        bandwidth: Option<BucketConfig>,
        ops: Option<BucketConfig>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            bandwidth: bandwidth.as_ref().and_then(TokenBucket::from_config),
            ops: ops.as_ref().and_then(TokenBucket::from_config),
            timer: TimerFd::new()?,
            timer_active: false,
        })
    }

    /// A limiter from its API configuration.
    pub fn from_config(config: &RateLimiterConfig) -> std::io::Result<Self> {
        Self::new(config.bandwidth, config.ops)
    }

    /// Charges `tokens` of `token_type`. Returns false when throttled: the
    /// limiter is then blocked and its timer armed. A request larger than the
    /// bucket passes once the bucket is full but also blocks the limiter.
    pub fn consume(&mut self, tokens: u64, token_type: TokenType) -> bool {
        if self.timer_active {
            return false;
        }
        let Some(bucket) = self.bucket_mut(token_type) else {
            return true;
        };
        match bucket.reduce(tokens) {
            BucketReduction::Success => true,
            BucketReduction::Failure => {
                let wait = bucket.time_until_available(tokens, Instant::now());
                // If the timer cannot be armed, let the request through rather
                // than stall the device forever.
                !self.arm_timer(wait)
            }
            BucketReduction::OverConsumption(_) => {
                let wait = bucket.debt(Instant::now());
                self.arm_timer(wait);
                true
            }
        }
    }

    /// Gives back `tokens` of `token_type` that were consumed for a request
    /// that could not be served.
    pub fn manual_replenish(&mut self, tokens: u64, token_type: TokenType) {
        if let Some(bucket) = self.bucket_mut(token_type) {
            bucket.force_replenish(tokens);
        }
    }

    /// True while throttled, until [`Self::event_handler`] runs.
    pub fn is_blocked(&self) -> bool {
        self.timer_active
    }

    /// Handles the timerfd becoming readable: clears it and unblocks the
    /// limiter. Never blocks.
    pub fn event_handler(&mut self) -> Result<(), Error> {
        // The timer is one-shot: still armed means it has not expired yet.
        if self.timer.is_armed().map_err(|e| Error::Timer(e.into()))? {
            return Err(Error::SpuriousEvent);
        }
        // Disarming resets the expiration count, so the fd stops being
        // readable without a (possibly blocking) read.
        let cleared = self.timer.clear().map_err(|e| Error::Timer(e.into()));
        let was_active = std::mem::replace(&mut self.timer_active, false);
        cleared?;
        if was_active {
            Ok(())
        } else {
            Err(Error::SpuriousEvent)
        }
    }

    /// Replaces or removes buckets, e.g. for a PATCH API request. Updated
    /// buckets start full. A pending timer still fires normally.
    pub fn update_buckets(&mut self, bandwidth: BucketUpdate, ops: BucketUpdate) {
        fn apply(slot: &mut Option<TokenBucket>, update: BucketUpdate) {
            match update {
                BucketUpdate::None => {}
                BucketUpdate::Disabled => *slot = None,
                BucketUpdate::Update(config) => *slot = TokenBucket::from_config(&config),
            }
        }
        apply(&mut self.bandwidth, bandwidth);
        apply(&mut self.ops, ops);
    }

    /// Applies a `PATCH` of the limiter (Firecracker's semantics): a bucket
    /// given replaces the current one (size or refill time 0: unlimited), a
    /// bucket left out stays as it is.
    pub fn patch(&mut self, config: &RateLimiterConfig) {
        let update = |b: Option<BucketConfig>| b.map_or(BucketUpdate::None, BucketUpdate::Update);
        self.update_buckets(update(config.bandwidth), update(config.ops));
    }

    /// The configuration of the buckets in force now (after any patch).
    pub fn config(&self) -> RateLimiterConfig {
        let of = |b: &TokenBucket| BucketConfig {
            size: b.capacity(),
            one_time_burst: Some(b.one_time_burst()).filter(|&n| n > 0),
            refill_time: b.refill_time_ms(),
        };
        RateLimiterConfig {
            bandwidth: self.bandwidth.as_ref().map(of),
            ops: self.ops.as_ref().map(of),
        }
    }

    /// The bandwidth bucket, if limited.
    pub fn bandwidth(&self) -> Option<&TokenBucket> {
        self.bandwidth.as_ref()
    }

    /// The ops bucket, if limited.
    pub fn ops(&self) -> Option<&TokenBucket> {
        self.ops.as_ref()
    }

    fn bucket_mut(&mut self, token_type: TokenType) -> Option<&mut TokenBucket> {
        match token_type {
            TokenType::Bytes => self.bandwidth.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        }
    }

    /// Arms the one-shot timer (clamped to 1..=100 ms) and blocks the limiter.
    /// Returns false, leaving the limiter unblocked, if the timer failed.
    fn arm_timer(&mut self, wait: Duration) -> bool {
        let wait = wait.clamp(MIN_TIMER, MAX_TIMER);
        match self.timer.reset(wait, None) {
            Ok(()) => {
                self.timer_active = true;
                true
            }
            Err(e) => {
                tracing::error!("cannot arm rate limiter timer: {e}");
                false
            }
        }
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

/// Handles `rl`'s timer becoming readable; the caller then serves the queue
/// (which does nothing while the limiter is still blocked).
pub(crate) fn limiter_timer_event(device: &str, rl: &mut RateLimiter) {
    match rl.event_handler() {
        Ok(()) | Err(Error::SpuriousEvent) => {}
        Err(e) => tracing::warn!("{device}: {e}"),
    }
}

/// Charges one request of `bytes` data bytes to `rl` (no limiter: always
/// admitted). Both token types or neither: if the bytes are refused, the op
/// is given back. False means throttled: the request must wait.
pub(crate) fn admit(rl: Option<&mut RateLimiter>, bytes: u64) -> bool {
    let Some(rl) = rl else {
        return true;
    };
    if !rl.consume(1, TokenType::Ops) {
        return false;
    }
    if bytes > 0 && !rl.consume(bytes, TokenType::Bytes) {
        rl.manual_replenish(1, TokenType::Ops);
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::sleep;

    fn cfg(size: u64, burst: u64, refill_time: u64) -> BucketConfig {
        BucketConfig {
            size,
            one_time_burst: Some(burst),
            refill_time,
        }
    }

    /// Waits for the limiter's timer and handles the event.
    fn wait_timer(rl: &mut RateLimiter) {
        let start = Instant::now();
        while rl.timer.is_armed().expect("is_armed") {
            assert!(start.elapsed() < Duration::from_millis(200));
            sleep(Duration::from_millis(1));
        }
        rl.event_handler().expect("event_handler");
    }

    #[test]
    fn unlimited() {
        assert!(TokenBucket::new(0, 10, 10).is_none());
        assert!(TokenBucket::new(10, 10, 0).is_none());
        let mut rl = RateLimiter::new(None, Some(cfg(0, 0, 100))).expect("limiter");
        assert!(rl.bandwidth().is_none() && rl.ops().is_none());
        for _ in 0..1000 {
            assert!(rl.consume(u64::MAX, TokenType::Bytes));
            assert!(rl.consume(u64::MAX, TokenType::Ops));
        }
        assert!(!rl.is_blocked());
        assert!(!rl.timer.is_armed().expect("is_armed"));
        assert!(matches!(rl.event_handler(), Err(Error::SpuriousEvent)));
        let rl = RateLimiter::from_config(&RateLimiterConfig::default()).expect("limiter");
        assert!(rl.as_raw_fd() >= 0);
    }

    #[test]
    fn burst_then_budget() {
        let mut tb = TokenBucket::new(100, 50, 10_000).expect("bucket");
        assert_eq!(tb.reduce(30), BucketReduction::Success);
        assert_eq!((tb.one_time_burst(), tb.budget()), (20, 100));
        // Spans burst and budget.
        assert_eq!(tb.reduce(50), BucketReduction::Success);
        assert_eq!((tb.one_time_burst(), tb.budget()), (0, 70));
        assert_eq!(tb.reduce(70), BucketReduction::Success);
        assert_eq!(tb.reduce(1), BucketReduction::Failure);
        assert_eq!(tb.budget(), 0);

        // Burst plus a full bucket, still short: over-consumption.
        let mut tb = TokenBucket::new(10, 5, 10_000).expect("bucket");
        assert_eq!(tb.reduce(16), BucketReduction::OverConsumption(0.1));
        assert_eq!((tb.one_time_burst(), tb.budget()), (0, 0));
        assert_eq!((tb.capacity(), tb.refill_time_ms()), (10, 10_000));
    }

    #[test]
    fn refill_over_time() {
        let mut tb = TokenBucket::new(1000, 0, 50).expect("bucket");
        assert_eq!(tb.reduce(1000), BucketReduction::Success);
        assert_eq!(tb.reduce(100), BucketReduction::Failure);
        sleep(Duration::from_millis(15));
        // ~300 tokens regenerated.
        assert_eq!(tb.reduce(200), BucketReduction::Success);
        sleep(Duration::from_millis(60));
        assert_eq!(tb.reduce(0), BucketReduction::Success);
        assert_eq!(tb.budget(), 1000);
        // Never above size.
        assert_eq!(tb.reduce(1001), BucketReduction::OverConsumption(0.001));
    }

    #[test]
    fn fractional_refill_is_carried() {
        // One token every 10 ms; many small polls must not lose time.
        let mut tb = TokenBucket::new(100, 0, 1000).expect("bucket");
        let start = Instant::now();
        assert_eq!(tb.reduce(100), BucketReduction::Success);
        let mut got = 0;
        while start.elapsed() < Duration::from_millis(55) {
            if tb.reduce(1) == BucketReduction::Success {
                got += 1;
            }
        }
        let lower = start.elapsed().as_millis() / 10;
        while tb.reduce(1) == BucketReduction::Success {
            got += 1;
        }
        let upper = start.elapsed().as_millis() / 10;
        assert!(
            (lower..=upper).contains(&got),
            "{lower} <= {got} <= {upper}"
        );
    }

    #[test]
    fn over_consumption() {
        // Larger than the bucket: waits for a full bucket.
        let mut tb = TokenBucket::new(100, 0, 10_000).expect("bucket");
        assert_eq!(tb.reduce(1), BucketReduction::Success);
        assert_eq!(tb.reduce(250), BucketReduction::Failure);
        assert_eq!(tb.budget(), 99);

        // 5 tokens/ms: 150 tokens of debt = 30 ms before anything refills.
        let mut tb = TokenBucket::new(100, 0, 20).expect("bucket");
        let start = Instant::now();
        assert_eq!(tb.reduce(250), BucketReduction::OverConsumption(1.5));
        assert_eq!(tb.budget(), 0);
        assert!(tb.debt(Instant::now()) > Duration::from_millis(20));
        assert_eq!(tb.reduce(1), BucketReduction::Failure);
        sleep(Duration::from_millis(40));
        assert_eq!(tb.reduce(0), BucketReduction::Success);
        let refill_ms = start.elapsed().as_millis().saturating_sub(30);
        let max = u64::try_from(refill_ms * 5 + 5).expect("small").min(100);
        assert!(tb.budget() <= max, "{} > {max}", tb.budget());
        assert!(tb.budget() > 0);

        // Through the limiter: passes but blocks.
        let mut rl = RateLimiter::new(Some(cfg(100, 0, 10)), None).expect("limiter");
        assert!(rl.consume(150, TokenType::Bytes));
        assert!(rl.is_blocked());
        assert!(!rl.consume(1, TokenType::Bytes));
        wait_timer(&mut rl);
        assert!(!rl.is_blocked());
    }

    #[test]
    fn blocked_until_timer() {
        let mut rl =
            RateLimiter::new(Some(cfg(1000, 0, 100)), Some(cfg(10, 0, 100))).expect("limiter");
        assert!(rl.consume(1000, TokenType::Bytes));
        assert!(!rl.is_blocked());
        assert!(!rl.consume(500, TokenType::Bytes));
        assert!(rl.is_blocked());
        assert!(rl.timer.is_armed().expect("is_armed"));
        // Blocked for every token type, even ones with budget left.
        assert!(!rl.consume(1, TokenType::Ops));
        // Not expired yet: spurious, still blocked.
        assert!(matches!(rl.event_handler(), Err(Error::SpuriousEvent)));
        assert!(rl.is_blocked());
        wait_timer(&mut rl);
        assert!(!rl.is_blocked());
        // The timer waited for 500 tokens (50 ms) before firing.
        assert!(rl.consume(500, TokenType::Bytes));
        assert!(rl.consume(1, TokenType::Ops));
        // Handled already: a second event is spurious.
        assert!(matches!(rl.event_handler(), Err(Error::SpuriousEvent)));
    }

    #[test]
    fn manual_replenish() {
        let mut rl =
            RateLimiter::new(Some(cfg(100, 0, 10_000)), Some(cfg(10, 5, 10_000))).expect("limiter");
        assert!(rl.consume(100, TokenType::Bytes));
        rl.manual_replenish(40, TokenType::Bytes);
        assert_eq!(rl.bandwidth().map(TokenBucket::budget), Some(40));
        rl.manual_replenish(u64::MAX, TokenType::Bytes);
        assert_eq!(rl.bandwidth().map(TokenBucket::budget), Some(100));
        // While the burst lasts, tokens go back to it, capped at its start.
        assert!(rl.consume(3, TokenType::Ops));
        rl.manual_replenish(10, TokenType::Ops);
        let ops = rl.ops().expect("ops");
        assert_eq!((ops.one_time_burst(), ops.budget()), (5, 10));

        // Replenishing pays back over-consumption debt first.
        let mut tb = TokenBucket::new(100, 0, 10_000).expect("bucket");
        assert!(matches!(
            tb.reduce(300),
            BucketReduction::OverConsumption(_)
        ));
        tb.force_replenish(150);
        assert_eq!(tb.budget(), 0);
        tb.force_replenish(100);
        assert!((50..=51).contains(&tb.budget()), "{}", tb.budget());
    }

    #[test]
    fn update_buckets() {
        let mut rl = RateLimiter::new(Some(cfg(10, 0, 10_000)), None).expect("limiter");
        assert!(rl.consume(10, TokenType::Bytes));
        rl.update_buckets(BucketUpdate::None, BucketUpdate::Update(cfg(5, 0, 10_000)));
        assert_eq!(rl.bandwidth().map(TokenBucket::budget), Some(0));
        assert_eq!(rl.ops().map(TokenBucket::capacity), Some(5));
        rl.update_buckets(BucketUpdate::Update(cfg(20, 0, 10_000)), BucketUpdate::None);
        assert_eq!(rl.bandwidth().map(TokenBucket::budget), Some(20));
        rl.update_buckets(BucketUpdate::Disabled, BucketUpdate::Update(cfg(0, 0, 1)));
        assert!(rl.bandwidth().is_none() && rl.ops().is_none());
        assert!(rl.consume(u64::MAX, TokenType::Bytes));
    }

    #[test]
    fn huge_values() {
        let mut tb = TokenBucket::new(u64::MAX, u64::MAX, u64::MAX).expect("bucket");
        assert_eq!(tb.reduce(u64::MAX), BucketReduction::Success);
        assert_eq!(tb.reduce(u64::MAX), BucketReduction::Success);
        assert_eq!(tb.reduce(1), BucketReduction::Failure);
        tb.force_replenish(u64::MAX);
        assert_eq!(tb.budget(), u64::MAX);

        let mut tb = TokenBucket::new(1, 0, u64::MAX).expect("bucket");
        assert_eq!(
            tb.reduce(u64::MAX),
            BucketReduction::OverConsumption((u64::MAX - 1) as f64)
        );
        assert_eq!(tb.reduce(1), BucketReduction::Failure);
        tb.force_replenish(u64::MAX);
        assert_eq!(tb.reduce(1), BucketReduction::Success);

        let mut tb = TokenBucket::new(u64::MAX, 0, 1).expect("bucket");
        assert_eq!(tb.reduce(u64::MAX), BucketReduction::Success);
        sleep(Duration::from_millis(2));
        assert_eq!(tb.reduce(u64::MAX), BucketReduction::Success);
        let _ = tb.time_until_available(u64::MAX, Instant::now());
        let _ = tb.ns_for_tokens(u64::MAX);
        let _ = tb.tokens_in_ns(u64::MAX);

        let mut rl = RateLimiter::new(Some(cfg(1, u64::MAX, u64::MAX)), Some(cfg(u64::MAX, 0, 1)))
            .expect("limiter");
        assert!(rl.consume(u64::MAX, TokenType::Bytes));
        assert!(rl.consume(1, TokenType::Bytes));
        assert!(!rl.consume(1, TokenType::Bytes));
        assert!(rl.is_blocked());
    }

    #[test]
    fn serde_firecracker_json() {
        let c: RateLimiterConfig = serde_json::from_str(
            r#"{"bandwidth":{"size":1000,"one_time_burst":0,"refill_time":100}}"#,
        )
        .expect("parse");
        assert_eq!(
            c,
            RateLimiterConfig {
                bandwidth: Some(cfg(1000, 0, 100)),
                ops: None,
            }
        );
        let c: RateLimiterConfig =
            serde_json::from_str(r#"{"ops":{"size":10,"refill_time":1}}"#).expect("parse");
        assert_eq!(c.ops.and_then(|o| o.one_time_burst), None);
        assert_eq!(
            serde_json::from_str::<RateLimiterConfig>("{}").expect("parse"),
            RateLimiterConfig::default()
        );
        assert!(serde_json::from_str::<RateLimiterConfig>(r#"{"bytes":{}}"#).is_err());
        assert!(serde_json::from_str::<RateLimiterConfig>(
            r#"{"ops":{"size":1,"refill_time":1,"burst":2}}"#
        )
        .is_err());
        assert!(serde_json::from_str::<BucketConfig>(r#"{"size":1}"#).is_err());
        let json = serde_json::to_string(&c).expect("serialize");
        assert_eq!(
            serde_json::from_str::<RateLimiterConfig>(&json).expect("parse"),
            c
        );
    }
}

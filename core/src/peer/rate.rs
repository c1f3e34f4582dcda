//! A sliding-window byte-rate meter driven by the caller's clock.

use std::time::Duration;

use crate::time::Instant;

/// Number of buckets the window is cut into: the rate follows changes within a tenth of the window.
const BUCKETS: usize = 10;

/// Bytes per second over the last `window`, computed from the `now` values passed in (never from a
/// clock). The window is cut into [`BUCKETS`] buckets; a bucket older than the window is forgotten, so a
/// peer that stops sending drops to zero one window later.
#[derive(Debug, Clone)]
pub struct RateMeter {
    /// Width of one bucket in nanoseconds (at least 1).
    bucket_nanos: u64,
    /// Bytes per bucket, indexed by `bucket number % BUCKETS`.
    bytes: [u64; BUCKETS],
    /// The bucket number (time / width) each slot currently holds.
    slot_epoch: [u64; BUCKETS],
    /// When the first byte was recorded: before a full window has passed, the rate divides by the time
    /// since then so that a young meter is not under-estimated.
    first: Option<Instant>,
    /// Bytes ever recorded.
    total: u64,
}

impl RateMeter {
    /// A meter over a sliding `window` (at least `BUCKETS` nanoseconds).
    pub fn new(window: Duration) -> RateMeter {
        let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        RateMeter {
            bucket_nanos: (nanos / BUCKETS as u64).max(1),
            bytes: [0; BUCKETS],
            slot_epoch: [u64::MAX; BUCKETS],
            first: None,
            total: 0,
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let nanos = u64::try_from(now.since_origin().as_nanos()).unwrap_or(u64::MAX);
        nanos / self.bucket_nanos
    }

    /// Records `n` bytes transferred at `now`.
    pub fn record(&mut self, now: Instant, n: u64) {
        if self.first.is_none() {
            self.first = Some(now);
        }
        let epoch = self.epoch(now);
        let slot = (epoch % BUCKETS as u64) as usize;
        if self.slot_epoch[slot] != epoch {
            self.slot_epoch[slot] = epoch;
            self.bytes[slot] = 0;
        }
        self.bytes[slot] = self.bytes[slot].saturating_add(n);
        self.total = self.total.saturating_add(n);
    }

    /// Bytes ever recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes per second over the window ending at `now`.
    pub fn rate(&self, now: Instant) -> u64 {
        let Some(first) = self.first else {
            return 0;
        };
        let epoch = self.epoch(now);
        let oldest = epoch.saturating_sub(BUCKETS as u64 - 1);
        let sum: u64 = self
            .bytes
            .iter()
            .zip(self.slot_epoch.iter())
            .filter(|(_, &e)| e != u64::MAX && e >= oldest && e <= epoch)
            .map(|(&b, _)| b)
            .sum();
        let window = self.bucket_nanos.saturating_mul(BUCKETS as u64);
        // Time covered: from the start of the oldest bucket in the window (or from the first byte, if
        // later) to now, and at least one bucket so that one early burst is not divided by ~0.
        let now_nanos = u64::try_from(now.since_origin().as_nanos()).unwrap_or(u64::MAX);
        let first_nanos = u64::try_from(first.since_origin().as_nanos()).unwrap_or(u64::MAX);
        let covered = now_nanos
            .saturating_sub(first_nanos)
            .min(window)
            .max(self.bucket_nanos);
        ((u128::from(sum) * 1_000_000_000) / u128::from(covered)).min(u128::from(u64::MAX)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_is_measured_and_decays_to_zero() {
        let mut m = RateMeter::new(Duration::from_secs(5));
        assert_eq!(m.rate(Instant::ZERO), 0);
        // 100 KB every 100 ms = 1 MB/s for 10 s.
        for i in 0..100u64 {
            m.record(Instant::from_millis(i * 100), 100_000);
        }
        let r = m.rate(Instant::from_millis(9_950));
        assert!((900_000..=1_100_000).contains(&r), "rate {r}");
        assert_eq!(m.total(), 10_000_000);
        // Silence for a whole window: back to zero.
        assert_eq!(m.rate(Instant::from_secs(16)), 0);
    }

    #[test]
    fn young_meter_is_not_underestimated() {
        let mut m = RateMeter::new(Duration::from_secs(5));
        m.record(Instant::from_secs(100), 50_000);
        m.record(Instant::from_millis(100_500), 50_000);
        let r = m.rate(Instant::from_secs(101));
        assert!((90_000..=110_000).contains(&r), "rate {r}");
    }
}

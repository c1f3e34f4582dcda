//! Rate limits: token buckets on the caller's clock and a fair queue of the connections that wait
//! for them.
//!
//! A [`TokenBucket`] earns `rate` tokens (bytes) per second of virtual time, up to a small capacity
//! (a tenth of a second's worth, at least one 16 KiB block), and starts empty, so that over any
//! window of `T` seconds it hands out at most `rate * T` plus one capacity. A take larger than the
//! capacity is allowed once the bucket is full and leaves it in debt, so that a 128 KiB request still
//! passes a 10 KiB/s limit, at the limit's pace.
//!
//! A [`Limiter`] is one direction (download or upload) of a session: a global bucket, one bucket per
//! torrent, and a FIFO of waiting connections. A connection that finds the buckets short joins the
//! back of the queue with the instant the tokens will be there; once the earliest such instant has
//! passed, [`Limiter::take_ready`] hands the waiters out in queue order to try again. A connection
//! that is not waiting cannot take tokens that queued connections of the same buckets wait for, and
//! the small capacity lets the first in line take about one block before the next: bandwidth goes
//! round-robin across peers, a block at a time. Rates change at run time; a change is effective at
//! once for new takes and within one capacity's worth of time for the queue.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::time::Instant;

/// The least capacity of a limited bucket: one 16 KiB block (the request size every client uses).
pub const MIN_CAPACITY: u64 = 16 * 1024;

const NANOS: u128 = 1_000_000_000;

/// Download and upload limits of one scope (the session or a torrent) in payload bytes per second;
/// 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Bytes per second received as piece payload (counted when requested).
    pub download: u64,
    /// Bytes per second sent as piece payload (counted when the block is read for the peer).
    pub upload: u64,
}

/// A token bucket on a virtual clock: `rate` bytes per second, 0 for unlimited.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    /// Whole tokens; negative after a take larger than the capacity.
    tokens: i64,
    /// `rate × nanoseconds` not yet turned into a whole token (below 10⁹).
    frac: u128,
    last: Instant,
}

impl TokenBucket {
    /// An empty bucket earning `rate` bytes per second from `now` (0: unlimited).
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: 0,
            frac: 0,
            last: now,
        }
    }

    /// Bytes per second; 0 is unlimited.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Whether the bucket limits anything.
    pub fn is_limited(&self) -> bool {
        self.rate != 0
    }

    /// The most tokens it holds: a tenth of a second's worth, at least [`MIN_CAPACITY`].
    pub fn capacity(&self) -> u64 {
        (self.rate / 10).max(MIN_CAPACITY)
    }

    fn cap_i64(&self) -> i64 {
        i64::try_from(self.capacity()).unwrap_or(i64::MAX)
    }

    fn refill(&mut self, now: Instant) {
        if now <= self.last {
            return;
        }
        let ns = now.saturating_duration_since(self.last).as_nanos();
        self.last = now;
        if self.rate == 0 {
            return;
        }
        let total = u128::from(self.rate) * ns + self.frac;
        let add = i64::try_from(total / NANOS).unwrap_or(i64::MAX);
        self.frac = total % NANOS;
        self.tokens = self.tokens.saturating_add(add);
        if self.tokens >= self.cap_i64() {
            self.tokens = self.cap_i64();
            self.frac = 0;
        }
    }

    /// The tokens a take of `bytes` needs to find: `bytes`, or a full bucket for a larger take.
    fn needed(&self, bytes: u64) -> i64 {
        i64::try_from(bytes.min(self.capacity())).unwrap_or(i64::MAX)
    }

    /// Whether `bytes` may pass at `now`.
    pub fn can_take(&mut self, now: Instant, bytes: u64) -> bool {
        self.refill(now);
        self.rate == 0 || self.tokens >= self.needed(bytes)
    }

    /// Spends `bytes` (call after [`TokenBucket::can_take`] said yes).
    pub fn take(&mut self, now: Instant, bytes: u64) {
        self.refill(now);
        if self.rate != 0 {
            self.tokens = self
                .tokens
                .saturating_sub(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Whole tokens held now (`u64::MAX` when unlimited, 0 in debt).
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        if self.rate == 0 {
            u64::MAX
        } else {
            u64::try_from(self.tokens).unwrap_or(0)
        }
    }

    /// Gives back `bytes` taken but not used (up to the capacity).
    pub fn refund(&mut self, now: Instant, bytes: u64) {
        self.refill(now);
        if self.rate != 0 {
            let b = i64::try_from(bytes).unwrap_or(i64::MAX);
            self.tokens = self.tokens.saturating_add(b).min(self.cap_i64());
        }
    }

    /// When a take of `bytes` can pass (`now` if it can already, or the bucket is unlimited).
    pub fn ready_at(&mut self, now: Instant, bytes: u64) -> Instant {
        self.refill(now);
        // A caller with a stale clock still gets a deadline after the latest refill.
        let now = now.max(self.last);
        let missing = self.needed(bytes).saturating_sub(self.tokens);
        if self.rate == 0 || missing <= 0 {
            return now;
        }
        let missing = u128::try_from(missing).unwrap_or(0);
        // Nanoseconds until `missing` whole tokens, rounded up.
        let ns = (missing * NANOS).saturating_sub(self.frac);
        let ns = ns.div_ceil(u128::from(self.rate));
        now.saturating_add(Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
    }

    /// Changes the rate from `now` on (tokens earned so far at the old rate are kept, up to the
    /// new capacity; an unlimited bucket restarts empty when limited again).
    pub fn set_rate(&mut self, now: Instant, rate: u64) {
        self.refill(now);
        if self.rate == 0 {
            self.tokens = 0;
            self.frac = 0;
        }
        self.rate = rate;
        self.tokens = self.tokens.min(self.cap_i64());
    }
}

/// One direction of a session's rate limits: a global bucket, one per limited torrent, and the
/// fair queue of waiting connections `K` of torrents `T` (see the module documentation).
#[derive(Debug, Clone)]
pub struct Limiter<T, K> {
    global: TokenBucket,
    torrents: BTreeMap<T, TokenBucket>,
    /// Waiting connections in arrival order, with their torrent and when they may try again.
    queue: VecDeque<(K, T, Instant)>,
    /// Connections handed out by the last [`Limiter::take_ready`]: they may take without queueing.
    woken: BTreeSet<K>,
    /// Woken connections that took something since: they rejoin at the back.
    took: BTreeSet<K>,
    /// Where a woken connection that took nothing rejoins: ahead of those that did, in its old order.
    retry_pos: usize,
}

impl<T: Ord + Copy, K: Ord + Copy> Limiter<T, K> {
    /// No limits.
    pub fn new(now: Instant) -> Limiter<T, K> {
        Limiter {
            global: TokenBucket::new(0, now),
            torrents: BTreeMap::new(),
            queue: VecDeque::new(),
            woken: BTreeSet::new(),
            took: BTreeSet::new(),
            retry_pos: 0,
        }
    }

    /// The global limit (bytes per second, 0: unlimited).
    pub fn global_rate(&self) -> u64 {
        self.global.rate()
    }

    /// A torrent's own limit (0: unlimited).
    pub fn torrent_rate(&self, torrent: T) -> u64 {
        self.torrents.get(&torrent).map_or(0, TokenBucket::rate)
    }

    /// Sets the global limit; waiters get new deadlines.
    pub fn set_global(&mut self, now: Instant, rate: u64) {
        self.global.set_rate(now, rate);
        self.reschedule(now);
    }

    /// Sets a torrent's limit (0 removes it); waiters get new deadlines.
    pub fn set_torrent(&mut self, now: Instant, torrent: T, rate: u64) {
        if rate == 0 {
            self.torrents.remove(&torrent);
        } else {
            self.torrents
                .entry(torrent)
                .or_insert_with(|| TokenBucket::new(0, now))
                .set_rate(now, rate);
        }
        self.reschedule(now);
    }

    /// Forgets a torrent: its bucket and its waiters.
    pub fn remove_torrent(&mut self, torrent: T) {
        self.torrents.remove(&torrent);
        self.queue.retain(|(_, t, _)| *t != torrent);
        self.retry_pos = 0;
    }

    /// Returns `bytes` taken by `try_take` but not used (to both buckets, up to their capacity).
    pub fn refund(&mut self, now: Instant, torrent: T, bytes: u64) {
        self.global.refund(now, bytes);
        if let Some(b) = self.torrents.get_mut(&torrent) {
            b.refund(now, bytes);
        }
    }

    /// The tokens both buckets of `torrent` hold now (`u64::MAX` when nothing limits it): how much a
    /// caller may hope to take right away.
    pub fn available(&mut self, now: Instant, torrent: T) -> u64 {
        let mut a = self.global.available(now);
        if let Some(b) = self.torrents.get_mut(&torrent) {
            a = a.min(b.available(now));
        }
        a
    }

    /// Forgets a connection that closed or no longer wants anything.
    pub fn remove_waiter(&mut self, key: K) {
        if let Some(pos) = self.queue.iter().position(|(k, _, _)| *k == key) {
            self.queue.remove(pos);
            if pos < self.retry_pos {
                self.retry_pos -= 1;
            }
        }
        self.woken.remove(&key);
    }

    /// Whether anything limits `torrent` (a cheap check before calling [`Limiter::try_take`]).
    pub fn is_limited(&self, torrent: T) -> bool {
        self.global.is_limited() || self.torrents.contains_key(&torrent)
    }

    /// Whether `key` waits in the queue.
    pub fn is_waiting(&self, key: K) -> bool {
        self.queue.iter().any(|(k, _, _)| *k == key)
    }

    /// Takes `bytes` for connection `key` of `torrent` if the buckets allow it and no queued
    /// connection of the same buckets is ahead; otherwise queues `key` (once) and returns false.
    pub fn try_take(&mut self, now: Instant, key: K, torrent: T, bytes: u64) -> bool {
        if !self.is_limited(torrent) {
            return true;
        }
        let woken = self.woken.contains(&key);
        let behind = !woken
            && self
                .queue
                .iter()
                .any(|(k, t, _)| *k == key || *t == torrent || self.global.is_limited());
        let global_ok = self.global.can_take(now, bytes);
        let torrent_ok = self
            .torrents
            .get_mut(&torrent)
            .is_none_or(|b| b.can_take(now, bytes));
        if !behind && global_ok && torrent_ok {
            self.global.take(now, bytes);
            if let Some(b) = self.torrents.get_mut(&torrent) {
                b.take(now, bytes);
            }
            if woken {
                self.took.insert(key);
            }
            return true;
        }
        if !self.is_waiting(key) {
            let at = self.ready_at(now, torrent, bytes);
            if woken && !self.took.contains(&key) {
                // It keeps its turn: the round-robin moves only past those that got something.
                let pos = self.retry_pos.min(self.queue.len());
                self.queue.insert(pos, (key, torrent, at));
                self.retry_pos = pos + 1;
            } else {
                self.queue.push_back((key, torrent, at));
            }
        }
        self.woken.remove(&key);
        false
    }

    fn ready_at(&mut self, now: Instant, torrent: T, bytes: u64) -> Instant {
        let g = self.global.ready_at(now, bytes);
        let t = self
            .torrents
            .get_mut(&torrent)
            .map_or(now, |b| b.ready_at(now, bytes));
        g.max(t)
    }

    fn reschedule(&mut self, now: Instant) {
        let mut queue = std::mem::take(&mut self.queue);
        for (_, torrent, at) in &mut queue {
            // A block's worth is what every waiter asks for; anything else is retried anyway.
            *at = self.ready_at(now, *torrent, MIN_CAPACITY);
        }
        self.queue = queue;
    }

    /// The earliest instant a waiter may try again.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.iter().map(|(_, _, at)| *at).min()
    }

    /// Once the earliest deadline has passed: every waiter, in queue order, to try again now (each
    /// one that comes short again rejoins the back of the queue). Empty before that.
    pub fn take_ready(&mut self, now: Instant) -> Vec<K> {
        if self.poll_timeout().is_none_or(|at| at > now) {
            return Vec::new();
        }
        let keys: Vec<K> = self.queue.drain(..).map(|(k, _, _)| k).collect();
        self.woken = keys.iter().copied().collect();
        self.took.clear();
        self.retry_pos = 0;
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(m: u64) -> Instant {
        Instant::from_millis(m)
    }

    /// Drives `peers` connections that always want one 16 KiB block each through `lim` for `secs`
    /// seconds of virtual time, waking exactly at the limiter's deadlines; returns the bytes each got
    /// per second.
    fn run(
        lim: &mut Limiter<u8, u8>,
        peers: &[(u8, u8)],
        from: Instant,
        secs: u64,
        mut change: impl FnMut(&mut Limiter<u8, u8>, Instant),
    ) -> BTreeMap<u8, Vec<u64>> {
        let block = 16 * 1024;
        let mut got: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
        let end = from + Duration::from_secs(secs);
        let mut now = from;
        // Everyone asks at the start; then only when woken (like the engine).
        let mut asking: Vec<u8> = peers.iter().map(|(k, _)| *k).collect();
        while now < end {
            change(lim, now);
            for k in std::mem::take(&mut asking) {
                let torrent = peers
                    .iter()
                    .find(|(p, _)| *p == k)
                    .map(|(_, t)| *t)
                    .unwrap();
                while lim.try_take(now, k, torrent, block) {
                    let sec = (now.saturating_duration_since(from).as_secs()) as usize;
                    let v = got.entry(k).or_default();
                    if v.len() <= sec {
                        v.resize(sec + 1, 0);
                    }
                    v[sec] += block;
                }
            }
            let next = lim.poll_timeout().expect("limited peers always wait");
            now = next.max(now);
            asking = lim.take_ready(now);
            assert!(!asking.is_empty());
        }
        got
    }

    fn total(v: &[u64], secs: std::ops::Range<usize>) -> u64 {
        secs.map(|s| v.get(s).copied().unwrap_or(0)).sum()
    }

    #[test]
    fn a_global_limit_holds_within_ten_percent_over_ten_seconds_and_is_fair() {
        for rate in [20_000, 100_000, 1_000_000, 50 * 1024 * 1024] {
            let mut lim = Limiter::new(Instant::ZERO);
            lim.set_global(Instant::ZERO, rate);
            let peers = [(1, 0), (2, 0), (3, 1)];
            let got = run(&mut lim, &peers, Instant::ZERO, 10, |_, _| {});
            let sum: u64 = got.values().map(|v| total(v, 0..10)).sum();
            let limit = rate * 10;
            assert!(sum <= limit + limit / 10, "{rate}: {sum} > {limit}");
            // Never more than one block plus the capacity above the limit: an upper bound...
            assert!(
                sum <= limit + MIN_CAPACITY.max(rate / 10) + 16 * 1024,
                "{rate}: {sum}"
            );
            // ...and it is used, not starved.
            assert!(sum >= limit - limit / 10, "{rate}: {sum} < {limit}");
            // Fair: every peer within a block and a tenth of its share.
            let share = sum / 3;
            for (k, v) in &got {
                let mine = total(v, 0..10);
                assert!(
                    mine.abs_diff(share) <= share / 10 + 16 * 1024,
                    "{rate}: peer {k} got {mine}, share {share}"
                );
            }
        }
    }

    #[test]
    fn torrent_limits_hold_under_the_global_one() {
        let mut lim = Limiter::new(Instant::ZERO);
        lim.set_global(Instant::ZERO, 3_000_000);
        lim.set_torrent(Instant::ZERO, 7, 500_000);
        let peers = [(1, 7), (2, 7), (3, 8)];
        let got = run(&mut lim, &peers, Instant::ZERO, 10, |_, _| {});
        let t7 = total(&got[&1], 0..10) + total(&got[&2], 0..10);
        let t8 = total(&got[&3], 0..10);
        // Torrent 7 at its own 0.5 MB/s, torrent 8 at what the global 3 MB/s leaves.
        assert!((4_500_000..=5_500_000).contains(&t7), "{t7}");
        assert!((22_500_000..=27_500_000).contains(&t8), "{t8}");
        let both = t7 + t8;
        assert!(both <= 33_000_000, "{both}");
        assert_eq!(lim.torrent_rate(7), 500_000);
        assert_eq!(lim.torrent_rate(8), 0);
    }

    #[test]
    fn a_change_takes_effect_within_one_second() {
        let mut lim = Limiter::new(Instant::ZERO);
        lim.set_global(Instant::ZERO, 2_000_000);
        let peers = [(1, 0), (2, 0)];
        let switch = Instant::from_secs(5);
        let mut done = false;
        let got = run(&mut lim, &peers, Instant::ZERO, 12, |l, now| {
            if !done && now >= switch {
                l.set_global(now, 200_000);
                done = true;
            }
        });
        let per_sec = |s: usize| {
            got.values()
                .map(|v| v.get(s).copied().unwrap_or(0))
                .sum::<u64>()
        };
        // Second 4 ran at the old rate, seconds 6.. at the new one (within 10%).
        assert!(per_sec(4).abs_diff(2_000_000) <= 200_000, "{}", per_sec(4));
        for s in 6..12 {
            assert!(
                per_sec(s) <= 220_000 + 16 * 1024,
                "second {s}: {}",
                per_sec(s)
            );
            assert!(
                per_sec(s) >= 180_000 - 16 * 1024,
                "second {s}: {}",
                per_sec(s)
            );
        }
        // And raising it works as fast.
        let mut lim = Limiter::new(Instant::ZERO);
        lim.set_global(Instant::ZERO, 100_000);
        let mut done = false;
        let got = run(&mut lim, &[(1, 0)], Instant::ZERO, 4, |l, now| {
            if !done && now >= Instant::from_secs(2) {
                l.set_global(now, 1_000_000);
                done = true;
            }
        });
        assert!(got[&1][3].abs_diff(1_000_000) <= 100_000, "{:?}", got[&1]);
    }

    #[test]
    fn unlimited_passes_and_lifting_a_limit_releases_waiters() {
        let mut lim: Limiter<u8, u8> = Limiter::new(Instant::ZERO);
        assert!(lim.try_take(ms(0), 1, 0, u64::MAX));
        assert_eq!(lim.poll_timeout(), None);
        lim.set_global(ms(0), 10_000);
        assert!(!lim.try_take(ms(0), 1, 0, 16 * 1024));
        // 16 KiB at 10 kB/s: 1.6384 s.
        let at = Instant::from_origin(Duration::from_micros(1_638_400));
        assert_eq!(lim.poll_timeout(), Some(at));
        assert!(lim.take_ready(ms(1638)).is_empty());
        lim.set_global(ms(100), 0);
        assert_eq!(lim.poll_timeout(), Some(ms(100)));
        assert_eq!(lim.take_ready(ms(100)), vec![1]);
        assert!(lim.try_take(ms(100), 1, 0, 16 * 1024));
    }

    #[test]
    fn a_waiter_is_not_overtaken_and_can_be_removed() {
        let mut lim: Limiter<u8, u8> = Limiter::new(Instant::ZERO);
        lim.set_global(ms(0), 16 * 1024);
        assert!(!lim.try_take(ms(0), 1, 0, 16 * 1024));
        // At 1 s the tokens are there, but peer 1 waits for them: peer 2 queues behind it.
        assert!(!lim.try_take(ms(1000), 2, 0, 16 * 1024));
        assert_eq!(lim.take_ready(ms(1000)), vec![1, 2]);
        assert!(lim.try_take(ms(1000), 1, 0, 16 * 1024));
        assert!(!lim.try_take(ms(1000), 2, 0, 16 * 1024));
        assert!(lim.is_waiting(2));
        lim.remove_waiter(2);
        assert_eq!(lim.poll_timeout(), None);
        // Another torrent with only its own limit does not wait behind this one's queue.
        lim.set_global(ms(1000), 0);
        lim.set_torrent(ms(1000), 0, 1000);
        lim.set_torrent(ms(1000), 9, 1000);
        assert!(!lim.try_take(ms(1000), 1, 0, 1000));
        assert!(!lim.try_take(ms(1000), 3, 9, 1000));
        assert!(lim.try_take(ms(2000), 4, 5, 1 << 30));
        lim.remove_torrent(0);
        assert!(!lim.is_waiting(1) && lim.is_waiting(3));
    }

    #[test]
    fn a_take_larger_than_the_capacity_passes_at_the_limit_pace() {
        let mut b = TokenBucket::new(10_000, ms(0));
        assert_eq!(b.capacity(), MIN_CAPACITY);
        let mut taken = 0;
        let mut now = ms(0);
        while now < Instant::from_secs(100) {
            if b.can_take(now, 128 * 1024) {
                b.take(now, 128 * 1024);
                taken += 128 * 1024;
            }
            now = b
                .ready_at(now, 128 * 1024)
                .max(now + Duration::from_millis(1));
        }
        // 1 MB over 100 s, plus at most one take ahead.
        assert!(taken <= 1_000_000 + 128 * 1024, "{taken}");
        assert!(taken >= 1_000_000 - 128 * 1024, "{taken}");
    }
}

//! The engine's two bookkeeping structures that keep their own invariants, so that no caller has to
//! remember them:
//!
//! - [`Tracked`]: a map that records which entries were handed out mutably (or inserted, or removed)
//!   since the last look. The engine's upkeep and timer refiling work from that record instead of
//!   scanning every torrent and connection after every input, and cannot miss an entry, because the
//!   only way to change one is through [`Tracked::get_mut`].
//! - [`TimerTable`]: every deadline of the engine under a name ([`TimerKey`]), ordered by instant, so
//!   `poll_timeout` is the first entry and `handle_timeout` takes the due ones off the front.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use foldhash::fast::FixedState;

use crate::time::Instant;

use super::io::{ConnId, TorrentId};

/// A map that remembers which keys were touched (inserted, removed, or borrowed mutably).
/// A flag per entry keeps the record free of duplicates without a lookup per access.
///
/// Lookups go through a hash map, so they cost the same with 1 or 10,000 entries (the engine looks
/// torrents and connections up many times per input); an ordered key set gives iteration in key
/// order, which keeps the engine deterministic.
pub(crate) struct Tracked<K: Ord + Copy + Hash, V> {
    map: HashMap<K, (V, bool), FixedState>,
    order: BTreeSet<K>,
    touched: Vec<K>,
}

impl<K: Ord + Copy + Hash + std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for Tracked<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Ord + Copy + Hash, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked {
            map: HashMap::with_hasher(FixedState::default()),
            order: BTreeSet::new(),
            touched: Vec::new(),
        }
    }
}

impl<K: Ord + Copy + Hash, V> Tracked<K, V> {
    /// The entry, for reading (not recorded).
    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    /// The entry, for changing: recorded as touched.
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let (v, touched) = self.map.get_mut(k)?;
        if !*touched {
            *touched = true;
            self.touched.push(*k);
        }
        Some(v)
    }

    /// Inserts an entry (recorded as touched).
    pub fn insert(&mut self, k: K, v: V) {
        self.order.insert(k);
        if let Some((_, true)) = self.map.insert(k, (v, true)) {
            return;
        }
        self.touched.push(k);
    }

    /// Removes an entry (recorded as touched, so its deadlines are cleared).
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let (v, touched) = self.map.remove(k)?;
        self.order.remove(k);
        if !touched {
            self.touched.push(*k);
        }
        Some(v)
    }

    /// Marks a key as touched (work found for it that waits for the next upkeep).
    pub fn mark(&mut self, k: &K) {
        let _ = self.get_mut(k);
    }

    /// Whether the key is present.
    pub fn contains_key(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.order.iter()
    }

    /// Values in key order, for reading.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Entries in key order, for reading.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.order
            .iter()
            .filter_map(|k| self.map.get(k).map(|(v, _)| (k, v)))
    }

    /// The keys touched since the last take, in key order (removed ones included), and forgets them.
    pub fn take_touched(&mut self) -> Vec<K> {
        let mut keys = std::mem::take(&mut self.touched);
        for k in &keys {
            if let Some((_, touched)) = self.map.get_mut(k) {
                *touched = false;
            }
        }
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The keys touched so far and still recorded (in the order they were touched).
    pub fn touched(&self) -> &[K] {
        &self.touched
    }

    /// Whether a key is recorded as touched (for debug checks).
    #[cfg(any(test, debug_assertions))]
    pub fn is_touched(&self, k: &K) -> bool {
        self.map.get(k).is_some_and(|(_, t)| *t)
    }
}

/// The name of one deadline. Each component files its own: a connection's session, a torrent's
/// choker, announce policy, PEX sender and metadata fetch, and the engine-wide ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum TimerKey {
    /// A peer session's next timeout (request timeouts, snubbing, keep-alives, handshake limit).
    Conn(ConnId),
    /// A torrent's next rechoke (only while it runs and has connections).
    Choke(TorrentId),
    /// A torrent's next announce or retry (while it runs, or until its `stopped` is done).
    Announce(TorrentId),
    /// A torrent's earliest PEX message due (while it runs; never for a private torrent).
    Pex(TorrentId),
    /// A magnet torrent's next metadata request timeout (while it runs).
    MetadataFetch(TorrentId),
    /// UDP tracker retransmissions and HTTP tracker exchange deadlines.
    Trackers,
    /// An address that was backing off may be dialled.
    Dial,
    /// Shutdown gives up waiting for `stopped` announces.
    Shutdown,
    /// Connections waiting for rate-limit tokens may try again (`limits.rs`).
    RateLimits,
    /// The DHT node's next deadline or a torrent's next DHT lookup (`dht.rs`).
    Dht,
    /// A web-seed connection's idle timeout or a web seed's back-off ends (`webseed.rs`).
    WebSeeds,
    /// The uTP socket's next timer or a uTP dial's fall-back to TCP (`utp.rs`).
    Utp,
}

impl TimerKey {
    /// The engine-wide keys.
    pub const GLOBAL: [TimerKey; 7] = [
        TimerKey::Trackers,
        TimerKey::Dial,
        TimerKey::Shutdown,
        TimerKey::RateLimits,
        TimerKey::Dht,
        TimerKey::WebSeeds,
        TimerKey::Utp,
    ];

    /// Where this key is in [`TimerKey::GLOBAL`] (`None` for a connection's or a torrent's key).
    pub fn global_index(self) -> Option<usize> {
        Some(match self {
            TimerKey::Trackers => 0,
            TimerKey::Dial => 1,
            TimerKey::Shutdown => 2,
            TimerKey::RateLimits => 3,
            TimerKey::Dht => 4,
            TimerKey::WebSeeds => 5,
            TimerKey::Utp => 6,
            TimerKey::Conn(_)
            | TimerKey::Choke(_)
            | TimerKey::Announce(_)
            | TimerKey::Pex(_)
            | TimerKey::MetadataFetch(_) => return None,
        })
    }

    /// The torrent-level keys of one torrent.
    pub fn of_torrent(t: TorrentId) -> [TimerKey; 4] {
        [
            TimerKey::Choke(t),
            TimerKey::Announce(t),
            TimerKey::Pex(t),
            TimerKey::MetadataFetch(t),
        ]
    }
}

/// Every deadline, by name and by instant.
///
/// A deadline that moves later (the common case: a connection's keep-alive or request timeout moves
/// with every message) is not refiled at once: its entry in the ordered set stays at the earlier
/// instant until it reaches the front, and only then moves. So most changes cost one hash lookup;
/// the front entry is always exact, and [`TimerTable::due`] answers by the exact deadlines.
#[derive(Debug)]
pub(crate) struct TimerTable {
    /// Filed instants: per key at most one entry, never later than its deadline.
    by_time: BTreeSet<(Instant, TimerKey)>,
    by_key: HashMap<TimerKey, Slot, FixedState>,
    /// The engine-wide deadlines as last set: refiled after every input, mostly unchanged, so they
    /// are compared here before any lookup.
    globals: [Option<Instant>; TimerKey::GLOBAL.len()],
}

/// One key's deadline and where it is filed in `by_time`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The deadline as its component last stated it.
    exact: Option<Instant>,
    /// Its entry in `by_time` (at or before `exact`; stale when it differs).
    filed: Option<Instant>,
}

impl Default for TimerTable {
    fn default() -> Self {
        TimerTable {
            by_time: BTreeSet::new(),
            by_key: HashMap::with_hasher(FixedState::default()),
            globals: [None; TimerKey::GLOBAL.len()],
        }
    }
}

impl TimerTable {
    /// Sets (or with `None`, clears) the deadline named `key`.
    pub fn set(&mut self, key: TimerKey, at: Option<Instant>) {
        match key.global_index() {
            Some(i) => self.set_global(i, at),
            None => self.file(key, at),
        }
    }

    /// Sets the engine-wide deadline `TimerKey::GLOBAL[i]`: after every input, so an unchanged one
    /// costs a comparison and nothing else.
    pub fn set_global(&mut self, i: usize, at: Option<Instant>) {
        if self.globals[i] == at {
            return;
        }
        self.globals[i] = at;
        self.file(TimerKey::GLOBAL[i], at);
    }

    /// Files `key`'s new deadline in both indexes.
    fn file(&mut self, key: TimerKey, at: Option<Instant>) {
        let slot = self.by_key.entry(key).or_insert(Slot {
            exact: None,
            filed: None,
        });
        if slot.exact == at {
            return;
        }
        slot.exact = at;
        match (slot.filed, at) {
            // Earlier than filed (or not filed): file it now.
            (None, Some(at)) => {
                slot.filed = Some(at);
                self.by_time.insert((at, key));
            }
            (Some(filed), Some(at)) if at < filed => {
                slot.filed = Some(at);
                self.by_time.remove(&(filed, key));
                self.by_time.insert((at, key));
            }
            // Later or cleared: the entry stays early, unless it is the front.
            (Some(filed), _) => {
                if self.by_time.first() == Some(&(filed, key)) {
                    self.fix_front();
                }
            }
            (None, None) => {
                self.by_key.remove(&key);
            }
        }
    }

    /// Refiles stale entries at the front until the front one is exact.
    fn fix_front(&mut self) {
        while let Some(&(filed, key)) = self.by_time.first() {
            let Some(slot) = self.by_key.get_mut(&key) else {
                self.by_time.pop_first();
                continue;
            };
            if slot.exact == Some(filed) {
                return;
            }
            self.by_time.pop_first();
            slot.filed = slot.exact;
            match slot.exact {
                Some(at) => {
                    self.by_time.insert((at, key));
                }
                None => {
                    self.by_key.remove(&key);
                }
            }
        }
    }

    /// The deadline named `key`.
    #[cfg(test)]
    pub fn get(&self, key: TimerKey) -> Option<Instant> {
        self.by_key.get(&key).and_then(|s| s.exact)
    }

    /// The earliest deadline (the front entry is always exact).
    pub fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// The keys whose deadline is at or before `now`, earliest first (they stay filed: whoever
    /// handles them refiles them).
    pub fn due(&self, now: Instant) -> Vec<TimerKey> {
        let mut due: Vec<(Instant, TimerKey)> = self
            .by_time
            .iter()
            .take_while(|(t, _)| *t <= now)
            .filter_map(|(_, k)| {
                let exact = self.by_key.get(k)?.exact?;
                (exact <= now).then_some((exact, *k))
            })
            .collect();
        due.sort_unstable();
        due.into_iter().map(|(_, k)| k).collect()
    }

    /// Number of deadlines set.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_key.values().filter(|s| s.exact.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn global_index_matches_the_global_list() {
        for (i, key) in TimerKey::GLOBAL.into_iter().enumerate() {
            assert_eq!(key.global_index(), Some(i), "{key:?}");
        }
        assert_eq!(TimerKey::Conn(ConnId(3)).global_index(), None);
        assert_eq!(TimerKey::Choke(TorrentId(0)).global_index(), None);
    }

    #[test]
    fn a_global_set_by_index_or_by_key_is_the_same_deadline() {
        let t0 = Instant::from_secs(10);
        let mut tt = TimerTable::default();
        tt.set_global(1, Some(t0 + Duration::from_secs(4)));
        assert_eq!(tt.get(TimerKey::Dial), Some(t0 + Duration::from_secs(4)));
        tt.set(TimerKey::Dial, Some(t0 + Duration::from_secs(1)));
        assert_eq!(tt.next(), Some(t0 + Duration::from_secs(1)));
        tt.set_global(1, None);
        assert_eq!(tt.next(), None);
    }

    #[test]
    fn timers_are_ordered_refiled_and_cleared_by_name() {
        let t0 = Instant::from_secs(10);
        let mut tt = TimerTable::default();
        tt.set(TimerKey::Dial, Some(t0 + Duration::from_secs(5)));
        tt.set(TimerKey::Conn(ConnId(1)), Some(t0 + Duration::from_secs(2)));
        tt.set(
            TimerKey::Choke(TorrentId(0)),
            Some(t0 + Duration::from_secs(2)),
        );
        assert_eq!(tt.next(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(
            tt.due(t0 + Duration::from_secs(2)),
            vec![TimerKey::Conn(ConnId(1)), TimerKey::Choke(TorrentId(0))]
        );
        // Refiling moves the entry; nothing stays under the old instant.
        tt.set(TimerKey::Conn(ConnId(1)), Some(t0 + Duration::from_secs(9)));
        assert_eq!(tt.due(t0 + Duration::from_secs(5)).len(), 2);
        tt.set(TimerKey::Choke(TorrentId(0)), None);
        tt.set(TimerKey::Dial, None);
        assert_eq!(tt.next(), Some(t0 + Duration::from_secs(9)));
        assert_eq!(tt.len(), 1);
        assert_eq!(tt.get(TimerKey::Dial), None);
    }

    #[test]
    fn deadlines_moved_later_are_answered_exactly() {
        let t0 = Instant::from_secs(10);
        let at = |s| Some(t0 + Duration::from_secs(s));
        let (a, b, c) = (
            TimerKey::Conn(ConnId(1)),
            TimerKey::Conn(ConnId(2)),
            TimerKey::Dial,
        );
        let mut tt = TimerTable::default();
        tt.set(a, at(1));
        tt.set(b, at(2));
        tt.set(c, at(3));
        // `b` moves later while not at the front, then `a` (the front) moves past it.
        tt.set(b, at(8));
        tt.set(a, at(6));
        assert_eq!(tt.next(), at(3));
        assert_eq!(tt.due(t0 + Duration::from_secs(5)), vec![c]);
        assert_eq!(tt.due(t0 + Duration::from_secs(9)), vec![c, a, b]);
        tt.set(c, None);
        assert_eq!(tt.next(), at(6));
        tt.set(a, None);
        assert_eq!(tt.next(), at(8));
        tt.set(b, at(4));
        assert_eq!(tt.next(), at(4));
        tt.set(b, None);
        assert_eq!(tt.next(), None);
        assert_eq!(tt.len(), 0);
        assert!(tt.by_time.is_empty());
    }

    #[test]
    fn tracked_records_every_mutable_access() {
        let mut m: Tracked<u32, &str> = Tracked::default();
        m.insert(2, "b");
        m.insert(1, "a");
        assert_eq!(m.take_touched(), vec![1, 2]);
        assert_eq!(m.get(&1), Some(&"a"));
        assert!(m.touched().is_empty(), "reading is not touching");
        if let Some(v) = m.get_mut(&2) {
            *v = "c";
        }
        let _ = m.get_mut(&2);
        m.remove(&1);
        assert!(m.get_mut(&7).is_none());
        assert!(m.is_touched(&2));
        assert_eq!(m.take_touched(), vec![1, 2]);
        assert!(!m.is_touched(&2));
        assert_eq!(m.len(), 1);
    }
}

//! The routing table (BEP 5): k-buckets over the 160-bit id space, split only around our own id.
//!
//! Bucket `i` (for `i` below the last) holds the nodes whose ids share exactly `i` leading bits with ours;
//! the last bucket holds everything closer. When the last bucket is full it splits, so the table keeps
//! fine-grained knowledge near our id and coarse knowledge far away, which is what makes lookups take
//! a logarithmic number of steps.
//!
//! Node status follows the BEP's rules: *good* if it answered one of our queries in the last 15 minutes,
//! or has answered us ever and queried us in the last 15 minutes; *bad* after repeated failures to answer;
//! *questionable* otherwise. A full bucket takes a new node only in place of a bad one; when it holds
//! questionable nodes, the caller pings the least recently seen one (see [`Insert::PingFirst`]) and the
//! newcomer waits in the bucket's replacement cache until that ping is answered or fails.

use std::net::SocketAddr;
use std::time::Duration;

use crate::time::Instant;

use super::id::NodeId;
use super::krpc::NodeInfo;

/// Nodes per bucket (BEP 5's k).
pub const K: usize = 8;
/// How long a node stays good without news, and how long a bucket may go unchanged before a refresh.
pub const GOOD_FOR: Duration = Duration::from_secs(15 * 60);
/// Failed queries in a row that make a node bad.
pub const BAD_AFTER_FAILURES: u8 = 2;
/// Replacement candidates kept per bucket.
pub const REPLACEMENTS: usize = K;

/// A node's standing, per BEP 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Recently active.
    Good,
    /// Silent for 15 minutes (or never heard from directly).
    Questionable,
    /// Failed to answer repeatedly.
    Bad,
}

/// One node in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id and address.
    pub info: NodeInfo,
    /// When it last answered one of our queries.
    pub last_response: Option<Instant>,
    /// When it last sent us a query.
    pub last_query: Option<Instant>,
    /// Queries in a row it failed to answer.
    pub failures: u8,
}

impl Entry {
    fn new(info: NodeInfo) -> Entry {
        Entry {
            info,
            last_response: None,
            last_query: None,
            failures: 0,
        }
    }

    /// Its status at `now`.
    pub fn status(&self, now: Instant) -> Status {
        if self.failures >= BAD_AFTER_FAILURES {
            return Status::Bad;
        }
        let recent =
            |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) < GOOD_FOR);
        if recent(self.last_response) || (self.last_response.is_some() && recent(self.last_query)) {
            Status::Good
        } else {
            Status::Questionable
        }
    }

    /// When we last heard from it at all.
    pub fn last_seen(&self) -> Option<Instant> {
        self.last_response.max(self.last_query)
    }
}

/// One k-bucket.
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    /// At most [`K`] nodes.
    pub nodes: Vec<Entry>,
    /// Nodes that answered us while the bucket was full, newest last; at most [`REPLACEMENTS`].
    pub replacements: Vec<Entry>,
    /// When a node in it last answered, joined or left; drives refreshes.
    pub last_changed: Instant,
}

/// What [`RoutingTable::insert`] did with a node that answered us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// It was known; its record was refreshed.
    Updated,
    /// It was added (possibly after splitting or in place of a bad node).
    Added,
    /// The bucket is full but holds this questionable node: ping it; the newcomer waits as a replacement.
    PingFirst(NodeInfo),
    /// The bucket is full of good nodes; the newcomer is kept as a replacement only.
    Full,
    /// Our own id, or an unusable address.
    Rejected,
}

/// The routing table of one node.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    own: NodeId,
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    /// An empty table around `own`.
    pub fn new(own: NodeId, now: Instant) -> RoutingTable {
        RoutingTable {
            own,
            buckets: vec![Bucket {
                last_changed: now,
                ..Bucket::default()
            }],
        }
    }

    /// Our id.
    pub fn own_id(&self) -> NodeId {
        self.own
    }

    /// The buckets, farthest first.
    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// How many nodes the table holds.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    /// Whether the table holds no node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many nodes are good at `now`.
    pub fn good_count(&self, now: Instant) -> usize {
        self.iter()
            .filter(|e| e.status(now) == Status::Good)
            .count()
    }

    /// Every node, bucket by bucket.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.nodes.iter())
    }

    /// The index of the bucket `id` belongs in.
    pub fn bucket_index(&self, id: &NodeId) -> usize {
        self.own.common_prefix_len(id).min(self.buckets.len() - 1)
    }

    /// The entry for `id`, if present.
    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        let b = &self.buckets[self.bucket_index(id)];
        b.nodes.iter().find(|e| e.info.id == *id)
    }

    fn get_mut(&mut self, id: &NodeId) -> Option<&mut Entry> {
        let i = self.bucket_index(id);
        self.buckets[i].nodes.iter_mut().find(|e| e.info.id == *id)
    }

    /// Records that `info` answered one of our queries: refreshes, adds, or says what to do.
    pub fn insert(&mut self, info: NodeInfo, now: Instant) -> Insert {
        self.insert_entry(info, now, true)
    }

    /// Adds a node known only from saved state (status questionable until it answers).
    pub fn insert_unverified(&mut self, info: NodeInfo, now: Instant) -> Insert {
        self.insert_entry(info, now, false)
    }

    fn insert_entry(&mut self, info: NodeInfo, now: Instant, responded: bool) -> Insert {
        if info.id == self.own || info.addr.port() == 0 || info.addr.ip().is_unspecified() {
            return Insert::Rejected;
        }
        if let Some(e) = self.get_mut(&info.id) {
            if responded {
                e.info.addr = info.addr;
                e.last_response = Some(now);
                e.failures = 0;
                let i = self.bucket_index(&info.id);
                self.buckets[i].last_changed = now;
            }
            return Insert::Updated;
        }
        let mut entry = Entry::new(info);
        if responded {
            entry.last_response = Some(now);
        }
        loop {
            let i = self.bucket_index(&info.id);
            let last = self.buckets.len() - 1;
            let bucket = &mut self.buckets[i];
            // One id per address: a node that changed its id replaces its old entry.
            bucket.nodes.retain(|e| e.info.addr != info.addr);
            if bucket.nodes.len() < K {
                bucket.nodes.push(entry);
                bucket.last_changed = now;
                bucket.replacements.retain(|e| e.info.id != info.id);
                return Insert::Added;
            }
            if i == last && last < 159 {
                self.split_last();
                continue;
            }
            if let Some(pos) = bucket
                .nodes
                .iter()
                .position(|e| e.status(now) == Status::Bad)
            {
                bucket.nodes[pos] = entry;
                bucket.last_changed = now;
                return Insert::Added;
            }
            if !responded {
                return Insert::Full;
            }
            add_replacement(bucket, entry);
            let oldest_questionable = bucket
                .nodes
                .iter()
                .filter(|e| e.status(now) == Status::Questionable)
                .min_by_key(|e| e.last_seen())
                .map(|e| e.info);
            return match oldest_questionable {
                Some(q) => Insert::PingFirst(q),
                None => Insert::Full,
            };
        }
    }

    fn split_last(&mut self) {
        let depth = self.buckets.len() - 1;
        let last = &mut self.buckets[depth];
        let own = self.own;
        let (stay, moved): (Vec<Entry>, Vec<Entry>) = last
            .nodes
            .drain(..)
            .partition(|e| own.common_prefix_len(&e.info.id) == depth);
        let (rstay, rmoved): (Vec<Entry>, Vec<Entry>) = last
            .replacements
            .drain(..)
            .partition(|e| own.common_prefix_len(&e.info.id) == depth);
        last.nodes = stay;
        last.replacements = rstay;
        let changed = last.last_changed;
        self.buckets.push(Bucket {
            nodes: moved,
            replacements: rmoved,
            last_changed: changed,
        });
    }

    /// Records a query from a node (it stays good while it keeps talking to us). Unknown nodes are not
    /// added: a query proves nothing about the source address, so the caller pings it first.
    pub fn note_query(&mut self, id: &NodeId, addr: SocketAddr, now: Instant) -> bool {
        match self.get_mut(id) {
            Some(e) if e.info.addr == addr => {
                e.last_query = Some(now);
                true
            }
            _ => false,
        }
    }

    /// Records that `id` at `addr` did not answer a query. A node that turns bad is replaced by the
    /// newest replacement candidate at once, if there is one. Returns whether it was replaced.
    pub fn note_failure(&mut self, id: &NodeId, addr: SocketAddr, now: Instant) -> bool {
        let i = self.bucket_index(id);
        let bucket = &mut self.buckets[i];
        let Some(pos) = bucket
            .nodes
            .iter()
            .position(|e| e.info.id == *id && e.info.addr == addr)
        else {
            bucket.replacements.retain(|e| e.info.id != *id);
            return false;
        };
        let e = &mut bucket.nodes[pos];
        e.failures = e.failures.saturating_add(1);
        if e.status(now) == Status::Bad {
            if let Some(r) = bucket.replacements.pop() {
                bucket.nodes[pos] = r;
                bucket.last_changed = now;
                return true;
            }
        }
        false
    }

    /// Whether a node with this id would be taken now if it answered (room, a bad node to replace, or a
    /// split possible): worth pinging an unknown node that queried us.
    pub fn would_accept(&self, id: &NodeId, now: Instant) -> bool {
        if *id == self.own || self.get(id).is_some() {
            return false;
        }
        let i = self.bucket_index(id);
        let b = &self.buckets[i];
        b.nodes.len() < K
            || (i == self.buckets.len() - 1 && i < 159)
            || b.nodes.iter().any(|e| e.status(now) != Status::Good)
    }

    /// Up to `n` non-bad nodes closest to `target`, closest first; `v6` selects the address family.
    pub fn closest(
        &self,
        target: &NodeId,
        n: usize,
        v6: Option<bool>,
        now: Instant,
    ) -> Vec<NodeInfo> {
        let mut all: Vec<&Entry> = self
            .iter()
            .filter(|e| e.status(now) != Status::Bad)
            .filter(|e| v6.is_none_or(|v6| e.info.addr.is_ipv6() == v6))
            .collect();
        all.sort_by_key(|e| target.distance(&e.info.id));
        all.into_iter().take(n).map(|e| e.info).collect()
    }

    /// Buckets unchanged for [`GOOD_FOR`]: (index, a random-target prefix length for a refresh).
    pub fn stale_buckets(&self, now: Instant) -> Vec<usize> {
        (0..self.buckets.len())
            .filter(|&i| now.saturating_duration_since(self.buckets[i].last_changed) >= GOOD_FOR)
            .collect()
    }

    /// Marks bucket `i` as just refreshed (a refresh lookup was started for it).
    pub fn touch_bucket(&mut self, i: usize, now: Instant) {
        if let Some(b) = self.buckets.get_mut(i) {
            b.last_changed = now;
        }
    }

    /// Questionable nodes worth pinging: per bucket that has replacement candidates waiting, the least
    /// recently seen questionable node.
    pub fn ping_candidates(&self, now: Instant) -> Vec<NodeInfo> {
        self.buckets
            .iter()
            .filter(|b| !b.replacements.is_empty() || b.nodes.len() < K)
            .filter_map(|b| {
                b.nodes
                    .iter()
                    .filter(|e| e.status(now) == Status::Questionable)
                    .min_by_key(|e| e.last_seen())
                    .map(|e| e.info)
            })
            .collect()
    }

    /// Checks the structural invariants (for tests): bucket sizes, every node in its right bucket, no
    /// duplicates, never our own id.
    pub fn check_invariants(&self) -> Result<(), String> {
        let last = self.buckets.len() - 1;
        let mut seen = std::collections::BTreeSet::new();
        for (i, b) in self.buckets.iter().enumerate() {
            if b.nodes.len() > K || b.replacements.len() > REPLACEMENTS {
                return Err(format!("bucket {i} over capacity"));
            }
            for e in &b.nodes {
                let cpl = self.own.common_prefix_len(&e.info.id);
                if cpl == 160 {
                    return Err("own id in table".into());
                }
                if (i < last && cpl != i) || (i == last && cpl < i) {
                    return Err(format!("node with prefix {cpl} in bucket {i}"));
                }
                if !seen.insert(e.info.id) {
                    return Err(format!("duplicate {:?}", e.info.id));
                }
            }
        }
        Ok(())
    }
}

fn add_replacement(bucket: &mut Bucket, entry: Entry) {
    bucket.replacements.retain(|e| e.info.id != entry.info.id);
    if bucket.replacements.len() >= REPLACEMENTS {
        bucket.replacements.remove(0);
    }
    bucket.replacements.push(entry);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{seeded, RngExt};
    use proptest::prelude::*;

    fn node(id: NodeId, n: u32) -> NodeInfo {
        NodeInfo {
            id,
            addr: SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 6881)),
        }
    }

    #[test]
    fn status_follows_the_fifteen_minute_rules() {
        let t0 = Instant::from_secs(100);
        let mut e = Entry::new(node(NodeId([1; 20]), 1));
        assert_eq!(e.status(t0), Status::Questionable, "never answered");
        e.last_query = Some(t0);
        assert_eq!(
            e.status(t0),
            Status::Questionable,
            "queries alone prove nothing"
        );
        e.last_response = Some(t0);
        assert_eq!(e.status(t0 + Duration::from_secs(899)), Status::Good);
        assert_eq!(e.status(t0 + GOOD_FOR), Status::Questionable);
        e.last_query = Some(t0 + Duration::from_secs(1000));
        assert_eq!(
            e.status(t0 + Duration::from_secs(1800)),
            Status::Good,
            "queried us lately"
        );
        e.failures = BAD_AFTER_FAILURES;
        assert_eq!(e.status(t0), Status::Bad);
    }

    #[test]
    fn full_far_bucket_pings_questionable_then_replaces_bad() {
        let mut rng = seeded(1);
        let own = NodeId([0; 20]);
        let mut t = RoutingTable::new(own, Instant::ZERO);
        let now = Instant::from_secs(1);
        // Ids with the top bit set all land in bucket 0 (far half).
        let far = |rng: &mut crate::rng::CoreRng| {
            let mut id = NodeId::random(rng);
            id.0[0] |= 0x80;
            id
        };
        // Fill: the first bucket splits once its content is near, so seed both halves.
        for n in 0..K as u32 {
            assert_eq!(t.insert(node(far(&mut rng), n), now), Insert::Added);
        }
        for n in 0..K as u32 {
            let mut id = NodeId::random(&mut rng);
            id.0[0] &= 0x7f;
            t.insert(node(id, 100 + n), now);
        }
        assert_eq!(t.buckets[0].nodes.len(), K);
        t.check_invariants().expect("invariants");
        let newcomer = node(far(&mut rng), 999);
        assert_eq!(t.insert(newcomer, now), Insert::Full, "all good: no room");
        let later = now + GOOD_FOR + Duration::from_secs(1);
        let newcomer2 = node(far(&mut rng), 998);
        let Insert::PingFirst(victim) = t.insert(newcomer2, later) else {
            panic!("expected a ping request");
        };
        assert!(
            !t.note_failure(&victim.id, victim.addr, later),
            "one failure is not bad yet"
        );
        assert!(
            t.note_failure(&victim.id, victim.addr, later),
            "second failure: replaced"
        );
        assert!(t.get(&victim.id).is_none());
        assert!(t.get(&newcomer2.id).is_some());
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn closest_is_sorted_and_family_filtered() {
        let mut rng = seeded(5);
        let mut t = RoutingTable::new(NodeId::random(&mut rng), Instant::ZERO);
        for n in 0..200 {
            t.insert(node(NodeId::random(&mut rng), n), Instant::ZERO);
        }
        let target = NodeId::random(&mut rng);
        let c = t.closest(&target, K, None, Instant::ZERO);
        assert_eq!(c.len(), K);
        assert!(c
            .windows(2)
            .all(|w| target.distance(&w[0].id) <= target.distance(&w[1].id)));
        assert!(t.closest(&target, K, Some(true), Instant::ZERO).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any sequence of inserts and failures keeps the bucket invariants, and the table ends up
        /// holding every node it was told about as long as its bucket had room.
        #[test]
        fn bucket_invariants(seed in any::<u64>(), ops in proptest::collection::vec((any::<u8>(), any::<bool>(), 0u64..4000), 1..400)) {
            let mut rng = seeded(seed);
            let own = NodeId::random(&mut rng);
            let mut t = RoutingTable::new(own, Instant::ZERO);
            let mut known: Vec<NodeInfo> = Vec::new();
            for (i, (pick, fail, secs)) in ops.into_iter().enumerate() {
                let now = Instant::from_secs(secs);
                if fail && !known.is_empty() {
                    let n = known[usize::from(pick) % known.len()];
                    t.note_failure(&n.id, n.addr, now);
                } else {
                    // Bias some ids close to ours so deep buckets get exercised.
                    let id = if pick % 2 == 0 {
                        own.random_in_bucket(usize::from(pick) % 40, &mut rng)
                    } else {
                        NodeId::random(&mut rng)
                    };
                    let n = node(id, i as u32);
                    let r = t.insert(n, now);
                    prop_assert_ne!(r, Insert::Rejected);
                    known.push(n);
                }
                if let Err(e) = t.check_invariants() {
                    return Err(TestCaseError::fail(e));
                }
            }
            let c = t.closest(&own, 3 * K, None, Instant::from_secs(5000));
            prop_assert!(c.len() <= 3 * K);
            let _ = rng.random::<u8>();
        }
    }
}

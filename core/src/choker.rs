//! The choking algorithm: which peers we upload to.
//!
//! This is the classic algorithm of the original BitTorrent client (BEP 3, "tit-for-tat"):
//! - A few **regular** unchoke slots ([`ChokerConfig::regular_slots`], 4 by default) go to the interested
//!   peers with the best reciprocation: while we are leeching, the peers that upload to us fastest; while
//!   we are seeding (nothing to reciprocate), the peers we upload to fastest, so that our upload goes
//!   where it flows best. Peers are re-ranked every [`ChokerConfig::rechoke_interval`] (10 s), not on
//!   every rate change, so that connections have time to ramp up and choke/unchoke does not flap.
//! - While leeching, **snubbed** peers (the caller's flag: no block from them for 60 s although we asked)
//!   get no regular slot.
//! - One **optimistic** unchoke goes to a random interested peer that holds no regular slot, rotated
//!   every [`ChokerConfig::optimistic_interval`] (30 s). It lets us discover peers that would reciprocate
//!   better than the current ones, and gives newcomers (which have nothing to trade yet) a way in: a peer
//!   connected for less than [`ChokerConfig::new_peer_age`] is [`ChokerConfig::new_peer_weight`] (3) times
//!   as likely to be chosen. Until its period is over, the optimistic peer keeps its slot even if it
//!   would not rank for a regular one, and is not counted against the regular slots.
//!
//! Sans-IO: the caller passes `now`, a snapshot of its peers ([`ChokePeer`]) and an RNG to
//! [`Choker::tick`], which returns the peers that should be unchoked; the caller diffs that with what it
//! has told each peer and sends `choke`/`unchoke`. [`Choker::poll_timeout`] says when to tick next.
//! Ticking early is harmless: the ranking is only redone when due (or after [`Choker::rechoke_soon`]),
//! though peers that vanished from the snapshot are dropped from the result at once.

use std::time::Duration;

use rand::seq::SliceRandom;

use crate::rng::{CoreRng, RngExt};
use crate::time::Instant;

/// Tunables of the choking algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChokerConfig {
    /// Regular unchoke slots, given by reciprocation rate (the optimistic unchoke comes on top).
    pub regular_slots: usize,
    /// How often the regular slots are re-ranked.
    pub rechoke_interval: Duration,
    /// How long one peer keeps the optimistic unchoke.
    pub optimistic_interval: Duration,
    /// Peers connected for less than this count as new for the optimistic unchoke.
    pub new_peer_age: Duration,
    /// How many times as likely a new peer is to get the optimistic unchoke as an old one.
    pub new_peer_weight: u32,
}

impl Default for ChokerConfig {
    /// 4 regular slots re-ranked every 10 s; the optimistic unchoke rotated every 30 s, with peers of
    /// less than 60 s (two rotations) 3 times as likely to get it.
    fn default() -> Self {
        ChokerConfig {
            regular_slots: 4,
            rechoke_interval: Duration::from_secs(10),
            optimistic_interval: Duration::from_secs(30),
            new_peer_age: Duration::from_secs(60),
            new_peer_weight: 3,
        }
    }
}

/// Whether the torrent is downloading (rank by what peers give us) or seeding (rank by what we give).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChokeMode {
    /// We still need pieces: reciprocate the peers that upload to us fastest.
    Leeching,
    /// We have everything we want: favour the peers we upload to fastest.
    Seeding,
}

/// What the choker needs to know about one connected peer, as of the tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChokePeer<K> {
    /// The caller's identifier for the peer.
    pub id: K,
    /// The peer told us it is interested (only interested peers are unchoked).
    pub interested: bool,
    /// Bytes per second the peer uploads to us (recent average).
    pub download_rate: u64,
    /// Bytes per second we upload to the peer (recent average).
    pub upload_rate: u64,
    /// When the connection was established.
    pub connected_at: Instant,
    /// No block from the peer for a while although we asked (the caller's judgement, typically 60 s).
    pub snubbed: bool,
}

/// The choking state machine for one torrent. `K` is the caller's peer identifier.
#[derive(Clone, Debug)]
pub struct Choker<K> {
    config: ChokerConfig,
    /// Peers holding a regular slot, best first.
    regular: Vec<K>,
    /// The peer holding the optimistic slot.
    optimistic: Option<K>,
    /// `regular` plus `optimistic`: the answer of the last tick.
    unchoked: Vec<K>,
    /// When the regular slots are next re-ranked (`None`: at the next tick).
    next_rechoke: Option<Instant>,
    /// When the optimistic slot is next rotated (`None`: at the next re-ranking).
    next_optimistic: Option<Instant>,
}

impl<K: Copy + Eq> Choker<K> {
    /// A choker with nobody unchoked; the first [`Choker::tick`] ranks at once.
    pub fn new(config: ChokerConfig) -> Choker<K> {
        Choker {
            config,
            regular: Vec::new(),
            optimistic: None,
            unchoked: Vec::new(),
            next_rechoke: None,
            next_optimistic: None,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &ChokerConfig {
        &self.config
    }

    /// When [`Choker::tick`] should next be called; `None` before the first tick (call it as soon as
    /// the torrent starts). Always later than the `now` of the last ranking, so a loop that sleeps
    /// until this deadline never spins.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_rechoke, self.next_optimistic) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Makes the next tick re-rank the regular slots (and refill the optimistic one if it is empty)
    /// instead of waiting for the deadline: call when an unchoked peer disconnects or loses interest,
    /// so its slot does not stay empty for up to 10 s. The optimistic rotation keeps its own schedule.
    pub fn rechoke_soon(&mut self) {
        self.next_rechoke = None;
    }

    /// The peers unchoked after the last tick: regular slots first (best first), then the optimistic one.
    pub fn unchoked(&self) -> &[K] {
        &self.unchoked
    }

    /// The peer holding the optimistic unchoke, if any.
    pub fn optimistic(&self) -> Option<K> {
        self.optimistic
    }

    /// Whether `id` is unchoked as of the last tick.
    pub fn is_unchoked(&self, id: K) -> bool {
        self.unchoked.contains(&id)
    }

    /// Runs the algorithm at `now` over the connected `peers` and returns the peers to keep unchoked
    /// (everyone else should be choked). Re-ranks only when due (see [`Choker::poll_timeout`]);
    /// otherwise returns the previous answer minus peers no longer in `peers`.
    pub fn tick(
        &mut self,
        now: Instant,
        peers: &[ChokePeer<K>],
        mode: ChokeMode,
        rng: &mut CoreRng,
    ) -> &[K] {
        let present = |id: K| peers.iter().any(|p| p.id == id);
        // The optimistic rotation's own deadline is due too: `poll_timeout` reports it, so a tick at
        // that deadline must act on it, or the caller's timer would fire again and again.
        let due = reached(self.next_rechoke, now) || reached(self.next_optimistic, now);
        if !due {
            self.regular.retain(|&id| present(id));
            if self.optimistic.is_some_and(|id| !present(id)) {
                self.optimistic = None;
            }
            self.rebuild_unchoked();
            return &self.unchoked;
        }

        let optimistic_ok = self
            .optimistic
            .is_some_and(|id| peers.iter().any(|p| p.id == id && p.interested));
        let rotate = !optimistic_ok || reached(self.next_optimistic, now);
        // A continuing optimistic peer keeps its own slot and does not compete for a regular one.
        let keep = if rotate { None } else { self.optimistic };

        // Regular slots: interested (and, while leeching, not snubbed) peers by rate; random order among
        // equal rates.
        let mut candidates: Vec<&ChokePeer<K>> = peers
            .iter()
            .filter(|p| p.interested && Some(p.id) != keep)
            .filter(|p| mode == ChokeMode::Seeding || !p.snubbed)
            .collect();
        candidates.shuffle(rng);
        candidates.sort_by_key(|p| {
            std::cmp::Reverse(match mode {
                ChokeMode::Leeching => p.download_rate,
                ChokeMode::Seeding => p.upload_rate,
            })
        });
        self.regular = candidates
            .iter()
            .take(self.config.regular_slots)
            .map(|p| p.id)
            .collect();

        if rotate {
            let previous = self.optimistic;
            self.optimistic = self.choose_optimistic(now, peers, previous, rng);
            self.next_optimistic = Some(now + self.config.optimistic_interval);
        }
        self.next_rechoke = Some(now + self.config.rechoke_interval.max(Duration::from_millis(1)));
        self.rebuild_unchoked();
        &self.unchoked
    }

    /// A weighted random choice among interested peers without a regular slot, new peers weighing
    /// more; the previous holder only if nobody else qualifies.
    fn choose_optimistic(
        &self,
        now: Instant,
        peers: &[ChokePeer<K>],
        previous: Option<K>,
        rng: &mut CoreRng,
    ) -> Option<K> {
        let eligible = |p: &&ChokePeer<K>| p.interested && !self.regular.contains(&p.id);
        let mut pool: Vec<&ChokePeer<K>> = peers
            .iter()
            .filter(eligible)
            .filter(|p| Some(p.id) != previous)
            .collect();
        if pool.is_empty() {
            pool = peers.iter().filter(eligible).collect();
        }
        let weight = |p: &ChokePeer<K>| -> u64 {
            if now.saturating_duration_since(p.connected_at) < self.config.new_peer_age {
                u64::from(self.config.new_peer_weight.max(1))
            } else {
                1
            }
        };
        let total: u64 = pool.iter().map(|p| weight(p)).sum();
        if total == 0 {
            return None;
        }
        let mut r = rng.random_range(0..total);
        for p in pool {
            let w = weight(p);
            if r < w {
                return Some(p.id);
            }
            r -= w;
        }
        None
    }

    fn rebuild_unchoked(&mut self) {
        self.unchoked.clear();
        self.unchoked.extend_from_slice(&self.regular);
        if let Some(o) = self.optimistic {
            if !self.unchoked.contains(&o) {
                self.unchoked.push(o);
            }
        }
    }
}

/// Whether a deadline (`None`: not set, i.e. due at once) has come.
fn reached(deadline: Option<Instant>, now: Instant) -> bool {
    match deadline {
        None => true,
        Some(t) => now >= t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::seeded;

    const LONG_AGO: Instant = Instant::ZERO;

    fn peer(id: u32, down: u64, up: u64) -> ChokePeer<u32> {
        ChokePeer {
            id,
            interested: true,
            download_rate: down,
            upload_rate: up,
            connected_at: LONG_AGO,
            snubbed: false,
        }
    }

    fn at(s: u64) -> Instant {
        Instant::from_secs(1000 + s)
    }

    fn sorted(ids: &[u32]) -> Vec<u32> {
        let mut v = ids.to_vec();
        v.sort_unstable();
        v
    }

    /// Peers 0..n with download rate 100 * id (so the top 4 are the highest ids).
    fn swarm(n: u32) -> Vec<ChokePeer<u32>> {
        (0..n).map(|i| peer(i, 100 * u64::from(i), 0)).collect()
    }

    /// Regression (found by the swarm simulation): after `rechoke_soon` shifted the re-rank schedule,
    /// the optimistic deadline came before the next re-rank; a tick at that deadline did nothing and
    /// `poll_timeout` stayed in the past, so the engine's timer spun.
    #[test]
    fn tick_at_the_optimistic_deadline_moves_poll_timeout_forward() {
        let mut c = Choker::new(ChokerConfig::default());
        let peers = swarm(8);
        let mut rng = seeded(3);
        c.tick(at(0), &peers, ChokeMode::Leeching, &mut rng);
        let first = c.optimistic();
        // Regular re-ranks at 10 and 20 s, then an early one at 25 s (an unchoked peer left).
        c.tick(at(10), &peers, ChokeMode::Leeching, &mut rng);
        c.tick(at(20), &peers, ChokeMode::Leeching, &mut rng);
        c.rechoke_soon();
        c.tick(at(25), &peers, ChokeMode::Leeching, &mut rng);
        assert_eq!(
            c.poll_timeout(),
            Some(at(30)),
            "the optimistic rotation is next"
        );
        c.tick(at(30), &peers, ChokeMode::Leeching, &mut rng);
        let next = c.poll_timeout().unwrap();
        assert!(
            next > at(30),
            "poll_timeout {next:?} must move past the tick"
        );
        assert_ne!(c.optimistic(), first, "the optimistic slot rotated at 30 s");
    }

    #[test]
    fn top_four_by_rate_plus_one_optimistic() {
        let mut c = Choker::new(ChokerConfig::default());
        let mut peers = swarm(10);
        peers[3].interested = false;
        let mut rng = seeded(1);
        let out = c
            .tick(at(0), &peers, ChokeMode::Leeching, &mut rng)
            .to_vec();
        assert_eq!(&out[..4], &[9, 8, 7, 6]);
        assert_eq!(out.len(), 5);
        let opt = c.optimistic().unwrap();
        assert!(
            opt < 6 && opt != 3,
            "optimistic {opt} must be an interested peer without a regular slot"
        );
        assert!(c.is_unchoked(opt) && !c.is_unchoked(3));
    }

    #[test]
    fn fewer_peers_than_slots_all_unchoked() {
        let mut c = Choker::new(ChokerConfig::default());
        let peers = swarm(3);
        let out = c
            .tick(at(0), &peers, ChokeMode::Leeching, &mut seeded(2))
            .to_vec();
        assert_eq!(sorted(&out), vec![0, 1, 2]);
        assert_eq!(
            c.optimistic(),
            None,
            "nobody is left for the optimistic slot"
        );
        assert!(c
            .tick(at(10), &[], ChokeMode::Leeching, &mut seeded(2))
            .is_empty());
    }

    #[test]
    fn reevaluated_only_every_ten_seconds() {
        let mut c = Choker::new(ChokerConfig::default());
        let mut rng = seeded(3);
        let mut peers = swarm(10);
        assert_eq!(c.poll_timeout(), None);
        c.tick(at(0), &peers, ChokeMode::Leeching, &mut rng);
        assert_eq!(c.poll_timeout(), Some(at(10)));
        let before = c.unchoked().to_vec();
        // Peer 0 becomes the fastest; nothing changes before the 10 s mark.
        peers[0].download_rate = 10_000;
        assert_eq!(
            c.tick(at(5), &peers, ChokeMode::Leeching, &mut rng),
            &before[..]
        );
        assert_eq!(
            c.tick(at(9), &peers, ChokeMode::Leeching, &mut rng),
            &before[..]
        );
        assert_eq!(c.poll_timeout(), Some(at(10)));
        let after = c
            .tick(at(10), &peers, ChokeMode::Leeching, &mut rng)
            .to_vec();
        assert_eq!(after[0], 0);
        assert_eq!(c.poll_timeout(), Some(at(20)));
    }

    #[test]
    fn vanished_peers_dropped_at_once_and_rechoke_soon_refills() {
        let mut c = Choker::new(ChokerConfig::default());
        let mut rng = seeded(4);
        let peers = swarm(10);
        c.tick(at(0), &peers, ChokeMode::Leeching, &mut rng);
        let without_9: Vec<_> = peers.iter().copied().filter(|p| p.id != 9).collect();
        let out = c
            .tick(at(1), &without_9, ChokeMode::Leeching, &mut rng)
            .to_vec();
        assert!(!out.contains(&9));
        assert_eq!(out.len(), 4, "the slot stays empty until the next ranking");
        c.rechoke_soon();
        assert_eq!(
            c.poll_timeout(),
            Some(at(30)),
            "only the optimistic deadline is left"
        );
        let out = c
            .tick(at(2), &without_9, ChokeMode::Leeching, &mut rng)
            .to_vec();
        assert_eq!(&out[..4], &[8, 7, 6, 5]);
        assert_eq!(out.len(), 5);
    }

    #[test]
    fn optimistic_rotates_every_thirty_seconds() {
        let mut c = Choker::new(ChokerConfig::default());
        let mut rng = seeded(5);
        let peers = swarm(12);
        c.tick(at(0), &peers, ChokeMode::Leeching, &mut rng);
        let first = c.optimistic().unwrap();
        for s in [10, 20, 29] {
            c.tick(at(s), &peers, ChokeMode::Leeching, &mut rng);
            assert_eq!(c.optimistic(), Some(first), "kept at {s} s");
        }
        c.tick(at(30), &peers, ChokeMode::Leeching, &mut rng);
        let second = c.optimistic().unwrap();
        assert_ne!(second, first, "rotated at 30 s");
        assert!(second < 8);
        c.tick(at(60), &peers, ChokeMode::Leeching, &mut rng);
        assert_ne!(c.optimistic(), Some(second));
    }

    #[test]
    fn optimistic_keeps_its_slot_even_if_slow_and_rotates_when_uninterested() {
        let mut c = Choker::new(ChokerConfig::default());
        let mut rng = seeded(6);
        let mut peers = swarm(8);
        c.tick(at(0), &peers, ChokeMode::Leeching, &mut rng);
        let opt = c.optimistic().unwrap();
        // It becomes the fastest peer: at the next ranking it keeps the optimistic slot (not a regular
        // one), and the four regular slots still go to the four best of the others.
        peers[opt as usize].download_rate = 1_000_000;
        let out = c
            .tick(at(10), &peers, ChokeMode::Leeching, &mut rng)
            .to_vec();
        assert_eq!(c.optimistic(), Some(opt));
        assert_eq!(out, vec![7, 6, 5, 4, opt]);
        // Losing interest frees the slot at the next ranking.
        peers[opt as usize].interested = false;
        c.tick(at(20), &peers, ChokeMode::Leeching, &mut rng);
        assert!(c.optimistic().is_some_and(|o| o != opt));
        assert!(!c.is_unchoked(opt));
    }

    #[test]
    fn optimistic_prefers_new_peers() {
        // 4 fast old peers take the regular slots; the pool is 5 old and 5 new peers. With weight 3,
        // P(new) = 15 / 20 = 0.75; with weight 1 it is 0.5.
        let mut peers = swarm(14);
        for p in &mut peers[..5] {
            p.connected_at = at(0); // connected just now: new
        }
        let share_new = |weight: u32| {
            let mut hits = 0;
            let trials = 2_000;
            for seed in 0..trials {
                let mut c = Choker::new(ChokerConfig {
                    new_peer_weight: weight,
                    ..ChokerConfig::default()
                });
                c.tick(at(0), &peers, ChokeMode::Leeching, &mut seeded(seed));
                if c.optimistic().is_some_and(|o| o < 5) {
                    hits += 1;
                }
            }
            f64::from(hits) / trials as f64
        };
        let weighted = share_new(3);
        assert!((0.71..0.79).contains(&weighted), "new share {weighted}");
        let flat = share_new(1);
        assert!((0.46..0.54).contains(&flat), "flat share {flat}");
    }

    #[test]
    fn new_peer_status_expires() {
        let mut peers = swarm(14);
        for p in &mut peers[..5] {
            p.connected_at = at(0);
        }
        let mut hits = 0;
        for seed in 0..1_000 {
            let mut c = Choker::new(ChokerConfig::default());
            // 60 s later nobody is new any more: back to an even chance (5 of 10).
            c.tick(at(60), &peers, ChokeMode::Leeching, &mut seeded(seed));
            if c.optimistic().is_some_and(|o| o < 5) {
                hits += 1;
            }
        }
        assert!((440..560).contains(&hits), "{hits}");
    }

    #[test]
    fn seeding_ranks_by_upload_rate() {
        let mut c = Choker::new(ChokerConfig::default());
        // Download rates say 7..=4, upload rates say 0..=3.
        let peers: Vec<_> = (0..8)
            .map(|i| peer(i, 100 * u64::from(i), 100 * u64::from(8 - i)))
            .collect();
        let out = c
            .tick(at(0), &peers, ChokeMode::Seeding, &mut seeded(7))
            .to_vec();
        assert_eq!(&out[..4], &[0, 1, 2, 3]);
        let mut c = Choker::new(ChokerConfig::default());
        let out = c
            .tick(at(0), &peers, ChokeMode::Leeching, &mut seeded(7))
            .to_vec();
        assert_eq!(&out[..4], &[7, 6, 5, 4]);
    }

    #[test]
    fn snubbed_peers_get_no_regular_slot_while_leeching() {
        let mut peers = swarm(10);
        peers[9].snubbed = true;
        peers[8].snubbed = true;
        let mut c = Choker::new(ChokerConfig::default());
        let out = c
            .tick(at(0), &peers, ChokeMode::Leeching, &mut seeded(8))
            .to_vec();
        assert_eq!(&out[..4], &[7, 6, 5, 4]);
        // Snubbed peers may still win the optimistic slot.
        let optimistic_snubbed = (0..200).any(|seed| {
            let mut c = Choker::new(ChokerConfig::default());
            c.tick(at(0), &peers, ChokeMode::Leeching, &mut seeded(seed));
            c.optimistic().is_some_and(|o| o >= 8)
        });
        assert!(optimistic_snubbed);
        // Seeding ignores the snub flag (they owe us nothing).
        let seeding: Vec<_> = peers
            .iter()
            .map(|p| ChokePeer {
                upload_rate: p.download_rate,
                ..*p
            })
            .collect();
        let mut c = Choker::new(ChokerConfig::default());
        let out = c
            .tick(at(0), &seeding, ChokeMode::Seeding, &mut seeded(8))
            .to_vec();
        assert_eq!(&out[..4], &[9, 8, 7, 6]);
    }

    #[test]
    fn equal_rates_tie_break_is_random_but_deterministic() {
        let peers: Vec<_> = (0..20).map(|i| peer(i, 500, 0)).collect();
        let run = |seed| {
            let mut c = Choker::new(ChokerConfig::default());
            sorted(c.tick(at(0), &peers, ChokeMode::Leeching, &mut seeded(seed)))
        };
        assert_eq!(run(1), run(1));
        let distinct: std::collections::BTreeSet<_> = (0..20).map(run).collect();
        assert!(distinct.len() > 10);
    }

    #[test]
    fn configurable_slots_and_zero_interval_never_spins() {
        let config = ChokerConfig {
            regular_slots: 2,
            rechoke_interval: Duration::ZERO,
            ..ChokerConfig::default()
        };
        let mut c = Choker::new(config);
        let out = c
            .tick(at(0), &swarm(10), ChokeMode::Leeching, &mut seeded(9))
            .to_vec();
        assert_eq!(&out[..2], &[9, 8]);
        assert_eq!(out.len(), 3);
        assert!(c.poll_timeout().unwrap() > at(0));
    }
}

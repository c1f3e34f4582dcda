//! What this node remembers for others: announce tokens and the peers announced to it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sha1::{Digest, Sha1};

use crate::rng::{CoreRng, Rng, RngExt};
use crate::time::Instant;
use crate::types::InfoHash;

/// How often the token secret changes; a token is accepted while its secret is current or previous,
/// that is for 5 to 10 minutes after it was handed out (BEP 5: "up to ten minutes").
pub const TOKEN_ROTATION: Duration = Duration::from_secs(5 * 60);

/// Announce tokens: a truncated SHA-1 over a rotating secret and the querier's IP address, so a token
/// proves the announcer received our `get_peers` reply at that address (no spoofed announces), and
/// costs us no per-querier state.
#[derive(Debug, Clone)]
pub struct Tokens {
    current: [u8; 16],
    previous: [u8; 16],
    rotated_at: Instant,
}

impl Tokens {
    /// Fresh secrets.
    pub fn new(now: Instant, rng: &mut CoreRng) -> Tokens {
        let mut current = [0u8; 16];
        let mut previous = [0u8; 16];
        rng.fill_bytes(&mut current);
        rng.fill_bytes(&mut previous);
        Tokens {
            current,
            previous,
            rotated_at: now,
        }
    }

    fn rotate(&mut self, now: Instant, rng: &mut CoreRng) {
        let elapsed = now.saturating_duration_since(self.rotated_at);
        if elapsed >= TOKEN_ROTATION * 2 {
            // Both secrets are too old: nothing handed out earlier stays valid.
            rng.fill_bytes(&mut self.previous);
            rng.fill_bytes(&mut self.current);
            self.rotated_at = now;
        } else if elapsed >= TOKEN_ROTATION {
            self.previous = self.current;
            rng.fill_bytes(&mut self.current);
            self.rotated_at += TOKEN_ROTATION;
        }
    }

    fn compute(secret: &[u8; 16], ip: IpAddr) -> [u8; 8] {
        let mut h = Sha1::new();
        h.update(secret);
        match ip {
            IpAddr::V4(v4) => h.update(v4.octets()),
            IpAddr::V6(v6) => h.update(v6.octets()),
        }
        let d = h.finalize();
        let mut t = [0u8; 8];
        t.copy_from_slice(&d[..8]);
        t
    }

    /// The token to hand to a querier at `ip`.
    pub fn make(&mut self, ip: IpAddr, now: Instant, rng: &mut CoreRng) -> [u8; 8] {
        self.rotate(now, rng);
        Self::compute(&self.current, ip)
    }

    /// Whether `token` was handed to `ip` in the last 5 to 10 minutes.
    pub fn check(&mut self, token: &[u8], ip: IpAddr, now: Instant, rng: &mut CoreRng) -> bool {
        self.rotate(now, rng);
        token == Self::compute(&self.current, ip) || token == Self::compute(&self.previous, ip)
    }
}

/// Limits of the [`PeerStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Torrents tracked at most.
    pub max_info_hashes: usize,
    /// Peers per torrent at most (the oldest is replaced).
    pub max_peers_per_hash: usize,
    /// Peers over all torrents at most.
    pub max_peers_total: usize,
    /// How long an announce is kept without being renewed.
    pub ttl: Duration,
}

/// The peers announced to us, per torrent, capped in every dimension and expiring.
#[derive(Debug, Clone)]
pub struct PeerStore {
    limits: StoreLimits,
    torrents: BTreeMap<InfoHash, Vec<(SocketAddr, Instant)>>,
    total: usize,
}

/// What [`PeerStore::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The peer is stored (new or renewed).
    Yes,
    /// A cap was reached; nothing changed.
    Full,
}

impl PeerStore {
    /// An empty store.
    pub fn new(limits: StoreLimits) -> PeerStore {
        PeerStore {
            limits,
            torrents: BTreeMap::new(),
            total: 0,
        }
    }

    /// Torrents with at least one peer.
    pub fn info_hashes(&self) -> usize {
        self.torrents.len()
    }

    /// Peers over all torrents.
    pub fn peers(&self) -> usize {
        self.total
    }

    /// Records `peer` for `info_hash`; one entry per IP address and torrent (a new port replaces it).
    pub fn add(&mut self, info_hash: InfoHash, peer: SocketAddr, now: Instant) -> Stored {
        if let Some(list) = self.torrents.get_mut(&info_hash) {
            if let Some(e) = list.iter_mut().find(|(a, _)| a.ip() == peer.ip()) {
                *e = (peer, now);
                return Stored::Yes;
            }
            if list.len() >= self.limits.max_peers_per_hash {
                if let Some(oldest) = list.iter_mut().min_by_key(|(_, t)| *t) {
                    *oldest = (peer, now);
                }
                return Stored::Yes;
            }
            if self.total >= self.limits.max_peers_total {
                return Stored::Full;
            }
            list.push((peer, now));
            self.total += 1;
            return Stored::Yes;
        }
        if self.torrents.len() >= self.limits.max_info_hashes
            || self.total >= self.limits.max_peers_total
            || self.limits.max_peers_per_hash == 0
        {
            return Stored::Full;
        }
        self.torrents.insert(info_hash, vec![(peer, now)]);
        self.total += 1;
        Stored::Yes
    }

    /// Up to `n` peers of the torrent in the family `v6`, chosen at random.
    pub fn get(
        &self,
        info_hash: &InfoHash,
        n: usize,
        v6: bool,
        rng: &mut CoreRng,
    ) -> Vec<SocketAddr> {
        let Some(list) = self.torrents.get(info_hash) else {
            return Vec::new();
        };
        let mut all: Vec<SocketAddr> = list
            .iter()
            .map(|(a, _)| *a)
            .filter(|a| a.is_ipv6() == v6)
            .collect();
        // Partial Fisher-Yates: the first n are a uniform sample.
        let take = n.min(all.len());
        for i in 0..take {
            let j = rng.random_range(i..all.len());
            all.swap(i, j);
        }
        all.truncate(take);
        all
    }

    /// Drops announces older than the TTL.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.limits.ttl;
        let mut removed = 0;
        self.torrents.retain(|_, list| {
            let before = list.len();
            list.retain(|(_, t)| now.saturating_duration_since(*t) < ttl);
            removed += before - list.len();
            !list.is_empty()
        });
        self.total -= removed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::seeded;

    #[test]
    fn tokens_are_bound_to_the_address_and_last_five_to_ten_minutes() {
        let mut rng = seeded(1);
        let t0 = Instant::from_secs(10);
        let mut tokens = Tokens::new(t0, &mut rng);
        let ip: IpAddr = "1.2.3.4".parse().expect("literal");
        let other: IpAddr = "1.2.3.5".parse().expect("literal");
        let tok = tokens.make(ip, t0, &mut rng);
        assert!(tokens.check(&tok, ip, t0, &mut rng));
        assert!(!tokens.check(&tok, other, t0, &mut rng));
        assert!(!tokens.check(&tok[..7], ip, t0, &mut rng));
        assert!(tokens.check(&tok, ip, t0 + Duration::from_secs(9 * 60), &mut rng));
        assert!(!tokens.check(&tok, ip, t0 + Duration::from_secs(10 * 60), &mut rng));
        // A long silence invalidates everything at once.
        let t1 = t0 + Duration::from_secs(3600);
        let tok = tokens.make(ip, t1, &mut rng);
        assert!(!tokens.check(&tok, ip, t1 + Duration::from_secs(3600), &mut rng));
    }

    #[test]
    fn store_caps_and_expiry() {
        let mut rng = seeded(2);
        let mut s = PeerStore::new(StoreLimits {
            max_info_hashes: 2,
            max_peers_per_hash: 3,
            max_peers_total: 5,
            ttl: Duration::from_secs(60),
        });
        let ih = |b| InfoHash([b; 20]);
        let peer = |n: u8| SocketAddr::from(([10, 0, 0, n], 1000));
        let t = Instant::from_secs(1);
        for n in 0..5 {
            assert_eq!(
                s.add(ih(1), peer(n), t + Duration::from_secs(u64::from(n))),
                Stored::Yes
            );
        }
        assert_eq!(s.peers(), 3, "per-hash cap replaces the oldest");
        assert_eq!(s.add(ih(2), peer(1), t), Stored::Yes);
        assert_eq!(s.add(ih(3), peer(1), t), Stored::Full, "info-hash cap");
        assert_eq!(
            s.add(ih(2), SocketAddr::from(([10, 0, 0, 1], 2000)), t),
            Stored::Yes
        );
        assert_eq!(s.peers(), 4, "same IP replaces its entry");
        assert_eq!(s.get(&ih(1), 10, false, &mut rng).len(), 3);
        assert_eq!(s.get(&ih(1), 2, false, &mut rng).len(), 2);
        assert!(s.get(&ih(1), 10, true, &mut rng).is_empty());
        s.expire(Instant::from_secs(63));
        assert_eq!(s.peers(), 2, "announces 60 s old or older are gone");
        s.expire(Instant::from_secs(1000));
        assert_eq!((s.peers(), s.info_hashes()), (0, 0));
    }
}

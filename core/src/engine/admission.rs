//! Admission and peer-conduct policy (issue 18's hostile-peer findings): which connection gives its
//! slot to a newcomer when a torrent or the session is full, when a silent connection is dropped,
//! how soon a dropped peer is redialled, and how a peer's rejected requests are remembered so a peer
//! that rejects everything cannot make us spin.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::time::Instant;

use super::conn::Conn;
use super::io::{ConnId, Event, TorrentId};
use super::table::Tracked;
use super::Engine;

/// How long a connection that moved no data may hold its slot before a newcomer may replace it
/// (at once if it said nothing since its handshake), and how long a silent one is kept while its
/// torrent is at its cap.
pub(crate) const REPLACE_AFTER: Duration = Duration::from_secs(60);

/// Rejects in a row with no block in between after which a peer is asked nothing more until
/// something changes (it unchokes us, allows a piece fast, or the reject memory expires): the peer
/// is snubbed, and a peer that rejects everything gets at most this many requests per window.
pub(crate) const REJECT_SNUB: u32 = 16;

/// How long rejected pieces are kept from a peer that sent nothing else to change our mind: after
/// it, the memory is forgotten and the pieces are asked again. Peers reject whole batches for
/// passing reasons (libtorrent does when its request queue is full, or around a choke), so the
/// memory must end by itself, or a piece only that peer has would never be asked again.
pub(crate) const REJECT_FORGET: Duration = Duration::from_secs(5);

/// The longest the reject memory is kept: it doubles (from [`REJECT_FORGET`]) each time a window
/// ends with no block from the peer, and starts again from the short value once a block arrives.
pub(crate) const REJECT_FORGET_CAP: Duration = Duration::from_secs(60);

/// The first wait before redialling a peer whose connection ended after it moved data; it doubles
/// with each further drop (up to the connect back-off's cap).
pub(crate) const RECONNECT_USEFUL: Duration = Duration::from_secs(2);

/// The same for a peer that moved no data.
pub(crate) const RECONNECT_OTHER: Duration = Duration::from_secs(5);

/// The wait before redialling a peer whose established connection ended for the `drops`-th time
/// (1 for the first): seconds at first (shorter for a `useful` peer), doubling per drop, at most
/// `cap`.
pub(crate) fn reconnect_delay(drops: u32, useful: bool, cap: Duration) -> Duration {
    let base = if useful {
        RECONNECT_USEFUL
    } else {
        RECONNECT_OTHER
    };
    let factor = 1u32 << drops.clamp(1, 13).saturating_sub(1);
    base.saturating_mul(factor).min(cap)
}

/// What a peer did that bears on how we treat it: rejected requests are not repeated for a while,
/// a connection that never said anything may give its slot to a newcomer, a useful peer is
/// redialled sooner.
#[derive(Debug, Default)]
pub(crate) struct Conduct {
    /// The peer sent any message (other than keep-alives) after the handshake.
    pub heard: bool,
    /// Payload moved either way (a block from it, or a block requested by it).
    pub useful: bool,
    /// Pieces with a block this peer rejected in the current window: not asked of it again until
    /// the window ends (bounded by the torrent's piece count).
    pub rejected: BTreeSet<u32>,
    /// Rejects since the peer last sent a block; at [`REJECT_SNUB`] we stop asking for the window.
    pub rejects_in_a_row: u32,
    /// When the current reject window ends (`None`: no rejects remembered).
    pub forget_at: Option<Instant>,
    /// Windows in a row that ended with no block from the peer (each doubles the next one).
    pub fruitless: u32,
}

impl Conduct {
    /// The peer rejected a block of `piece`: remember it, and open a window if none is open.
    pub fn rejected(&mut self, now: Instant, piece: u32) {
        self.rejected.insert(piece);
        self.rejects_in_a_row = self.rejects_in_a_row.saturating_add(1);
        if self.forget_at.is_none() {
            let factor = 1u32 << self.fruitless.min(8);
            self.forget_at =
                Some(now + REJECT_FORGET.saturating_mul(factor).min(REJECT_FORGET_CAP));
        }
    }

    /// A block arrived: the peer serves us, so the next window (if any) is short again.
    pub fn block_received(&mut self) {
        self.useful = true;
        self.rejects_in_a_row = 0;
        self.fruitless = 0;
    }

    /// Something changed (an unchoke, an allowed-fast piece): everything may be asked again.
    pub fn changed(&mut self) {
        self.rejected.clear();
        self.rejects_in_a_row = 0;
        self.forget_at = None;
    }

    /// Ends the reject window if it is due at `now`.
    pub fn expire(&mut self, now: Instant) {
        if self.forget_at.is_some_and(|at| now >= at) {
            if self.rejects_in_a_row > 0 {
                self.fruitless = self.fruitless.saturating_add(1);
            }
            self.changed();
        }
    }

    /// Whether the peer is asked nothing now (too many rejects with no block in this window).
    pub fn snubbed(&self) -> bool {
        self.rejects_in_a_row >= REJECT_SNUB
    }
}

impl Conn {
    /// Whether this connection is the least worth keeping: established, no payload either way, the
    /// peer not interested in us; and either it never said a thing after its handshake, or it has been
    /// connected for `min_age` already. `None` when it may not be replaced; else its rank (lower
    /// is replaced first: silent ones, then the oldest).
    pub fn replaceable(&self, now: Instant, min_age: Duration) -> Option<(bool, Instant)> {
        let at = self.established_at?;
        if self.conduct.useful || self.session.peer_interested() {
            return None;
        }
        let old = now.saturating_duration_since(at) >= min_age;
        (!self.conduct.heard || old).then_some((self.conduct.heard, at))
    }

    /// When the engine must next look at this connection: the session's deadline, or the end of its
    /// reject window.
    pub fn deadline(&self) -> Option<Instant> {
        // `None` once the session is closed: nothing is due on it any more.
        let s = self.session.poll_timeout()?;
        Some(self.conduct.forget_at.map_or(s, |f| s.min(f)))
    }
}

impl Engine {
    /// Reports a peer turned away (an event front ends log at debug level).
    pub(super) fn refused(&mut self, torrent: Option<TorrentId>, addr: SocketAddr, reason: &str) {
        self.events.push_back(Event::PeerRefused {
            torrent,
            addr,
            reason: reason.to_owned(),
        });
    }

    /// Of `ids`, the connection to give up for a newcomer (see [`Conn::replaceable`]): one that said
    /// nothing since its handshake, else the oldest that moved no data in [`REPLACE_AFTER`].
    pub(super) fn least_useful(
        conns: &Tracked<ConnId, Conn>,
        ids: impl Iterator<Item = ConnId>,
        now: Instant,
    ) -> Option<ConnId> {
        ids.filter_map(|id| Some((conns.get(&id)?.replaceable(now, REPLACE_AFTER)?, id)))
            .min()
            .map(|(_, id)| id)
    }

    /// Drops the connections of a torrent at its cap that said nothing at all after their handshake
    /// for [`REPLACE_AFTER`] (a slot held by a silent peer is a slot an honest peer cannot have).
    pub(super) fn drop_silent(&mut self, now: Instant, tid: TorrentId) {
        let Some(t) = self.torrents.get(&tid) else {
            return;
        };
        if t.conns.len() < self.config.max_peers_per_torrent {
            return;
        }
        let silent: Vec<ConnId> = t
            .conns
            .iter()
            .copied()
            .filter(|id| {
                self.conns.get(id).is_some_and(|c| {
                    !c.conduct.heard
                        && c.established_at
                            .is_some_and(|at| now.saturating_duration_since(at) >= REPLACE_AFTER)
                })
            })
            .collect();
        for id in silent {
            self.drop_conn(
                now,
                id,
                "silent since the handshake while the torrent is full",
                true,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_starts_at_seconds_and_doubles_to_the_cap() {
        let cap = Duration::from_secs(1800);
        let other: Vec<u64> = (1..=5)
            .map(|d| reconnect_delay(d, false, cap).as_secs())
            .collect();
        assert_eq!(other, vec![5, 10, 20, 40, 80]);
        let useful: Vec<u64> = (1..=3)
            .map(|d| reconnect_delay(d, true, cap).as_secs())
            .collect();
        assert_eq!(useful, vec![2, 4, 8]);
        assert_eq!(reconnect_delay(u32::MAX, false, cap), cap);
    }

    #[test]
    fn the_reject_window_ends_by_itself_and_grows_while_fruitless() {
        let mut c = Conduct::default();
        let t0 = Instant::from_secs(100);
        c.rejected(t0, 3);
        assert_eq!(c.forget_at, Some(t0 + REJECT_FORGET));
        c.expire(t0 + Duration::from_secs(4));
        assert!(c.rejected.contains(&3));
        c.expire(t0 + REJECT_FORGET);
        assert!(c.rejected.is_empty() && c.forget_at.is_none());
        // The next window is twice as long (no block came in between)...
        let t1 = t0 + Duration::from_secs(10);
        c.rejected(t1, 3);
        assert_eq!(c.forget_at, Some(t1 + REJECT_FORGET * 2));
        // ...and short again once the peer sent a block.
        c.expire(t1 + REJECT_FORGET * 2);
        c.block_received();
        c.rejected(t1 + Duration::from_secs(20), 4);
        assert_eq!(
            c.forget_at,
            Some(t1 + Duration::from_secs(20) + REJECT_FORGET)
        );
        // Never beyond the cap.
        let mut d = Conduct {
            fruitless: 30,
            ..Default::default()
        };
        d.rejected(t0, 1);
        assert_eq!(d.forget_at, Some(t0 + REJECT_FORGET_CAP));
    }
}

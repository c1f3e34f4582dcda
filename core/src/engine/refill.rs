//! The refill: when blocks became requestable again (a peer choked us or rejected, requests timed
//! out, a piece failed, a peer left), every peer of the torrent that could take them is offered
//! them. Its cost follows the peers that can ask for blocks, not all the torrent's connections.
//!
//! Asking a peer for blocks does something only while its session may request
//! (`PeerSession::may_request`: established, interested, unchoked or allowed-fast). That changes
//! only through the connection's own inputs (after which `process_conn` runs) or our interest
//! (`update_interest`), so both keep the torrent's `hungry` set in step, and the refill walks that
//! set. For the connections it skips, `fill_requests` would have done two things besides returning
//! early, and the refill keeps both:
//! - ending a due reject window (`Conduct::expire`): done before the connection's next event
//!   (`catch_up_conduct`) with the refill's time, which gives the same state at every point where
//!   the conduct is read or changed;
//! - holding the torrent back at the memory cap (`held_back`): checked over the skipped
//!   connections only when the cap was reached.
//!
//! The refill also flushed every connection; the skipped ones have nothing to flush (every path
//! that queues bytes for a peer flushes it, or asks for a full refill with `refill_all`), which
//! debug builds assert.

use super::*;

impl Engine {
    /// Keeps the torrent's `hungry` set in step with whether connection `id` may request blocks
    /// (the session reports changes). Marks the torrent only when the set changes.
    pub(super) fn note_hunger(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(tid) = c.torrent else {
            return;
        };
        let Some(may) = c.session.take_may_request_change() else {
            return;
        };
        if let Some(t) = self.torrents.get_mut(&tid) {
            if may {
                t.hungry.insert(id);
            } else {
                t.hungry.remove(&id);
            }
        }
    }

    /// Ends the reject window of connection `id` if the torrent's last refill, which skipped it,
    /// would have ended it then. Called before the connection's conduct changes.
    pub(super) fn catch_up_conduct(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        // No window open: nothing to end (the common case, without a torrent lookup).
        if c.conduct.forget_at.is_none() {
            return;
        }
        let at = c
            .torrent
            .and_then(|tid| self.torrents.get(&tid))
            .and_then(|t| t.refill_at);
        if let Some(at) = at {
            c.conduct.expire(at);
        }
    }

    /// Offers the torrent's requestable blocks to the peers that may ask for them, in connection
    /// order, as a walk over every connection would.
    pub(super) fn refill(&mut self, now: Instant, tid: TorrentId) {
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        t.refill_at = Some(now);
        let all = std::mem::take(&mut t.refill_all);
        let ids: Vec<ConnId> = if all {
            t.conns.iter().copied().collect()
        } else {
            t.hungry.iter().copied().collect()
        };
        #[cfg(debug_assertions)]
        self.check_skipped(tid);
        let cap = self.pending_cap();
        // Where the memory cap was reached: before the first visit (`Some(None)`) or after the
        // visit of a connection (`Some(Some(id))`); skipped connections after it were held back.
        let mut over_from: Option<Option<ConnId>> = (self.pieces.bytes() >= cap).then_some(None);
        for id in ids {
            self.fill_requests(now, id);
            self.flush(id);
            if over_from.is_none() && self.pieces.bytes() >= cap {
                over_from = Some(Some(id));
            }
        }
        if all || self.held_back.contains(&tid) {
            return;
        }
        let Some(from) = over_from else {
            return;
        };
        let Some(t) = self.torrents.get(&tid) else {
            return;
        };
        let skipped: Vec<ConnId> = t
            .conns
            .iter()
            .copied()
            .filter(|id| from.is_none_or(|f| *id > f) && !t.hungry.contains(id))
            .collect();
        for id in skipped {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            c.conduct.expire(now);
            if !c.conduct.snubbed() {
                self.held_back.insert(tid);
                return;
            }
        }
    }

    /// Debug builds: every connection the refill skips may not request and has nothing to flush.
    #[cfg(debug_assertions)]
    fn check_skipped(&self, tid: TorrentId) {
        let Some(t) = self.torrents.get(&tid) else {
            return;
        };
        for id in t.conns.iter().filter(|id| !t.hungry.contains(id)) {
            let Some(c) = self.conns.get(id) else {
                continue;
            };
            debug_assert!(
                !c.session.may_request(),
                "connection {id:?} may request but is not in its torrent's hungry set"
            );
            debug_assert!(
                !(c.connected
                    && !self.mse.holds(*id)
                    && c.unflushed < SEND_WINDOW
                    && c.session.outgoing_len() > 0),
                "connection {id:?} has bytes to flush that only a full refill would send"
            );
        }
    }
}

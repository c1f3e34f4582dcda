//! Rate limits in the engine: a download and an upload [`Limiter`] (global and per-torrent token
//! buckets on the engine's clock, see `crate::ratelimit`). Download tokens are taken when a block is
//! requested (`flow::fill_requests`), upload tokens when a block is read for a peer
//! (`flow::pump_reads`); a connection that finds them short waits in the limiter's queue and is
//! served again, round-robin, from `handle_timeout`.

use crate::ratelimit::{Limiter, RateLimits};

use super::*;

/// The engine's two limiters.
#[derive(Debug, Clone)]
pub(super) struct EngineLimits {
    pub download: Limiter<TorrentId, ConnId>,
    pub upload: Limiter<TorrentId, ConnId>,
}

impl EngineLimits {
    pub fn new(now: Instant) -> EngineLimits {
        EngineLimits {
            download: Limiter::new(now),
            upload: Limiter::new(now),
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.download.poll_timeout(), self.upload.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn forget_conn(&mut self, id: ConnId) {
        self.download.remove_waiter(id);
        self.upload.remove_waiter(id);
    }

    pub fn forget_torrent(&mut self, torrent: TorrentId) {
        self.download.remove_torrent(torrent);
        self.upload.remove_torrent(torrent);
    }
}

impl Engine {
    /// Sets the rate limits (payload bytes per second, 0: unlimited) of the whole session
    /// (`torrent: None`) or of one torrent. Effective at once for new requests and reads; waiting
    /// connections are rescheduled. An unknown torrent is ignored.
    pub fn set_rate_limits(
        &mut self,
        now: Instant,
        torrent: Option<TorrentId>,
        limits: RateLimits,
    ) {
        match torrent {
            None => {
                self.limits.download.set_global(now, limits.download);
                self.limits.upload.set_global(now, limits.upload);
            }
            Some(t) if self.torrents.contains_key(&t) => {
                self.limits.download.set_torrent(now, t, limits.download);
                self.limits.upload.set_torrent(now, t, limits.upload);
            }
            Some(_) => return,
        }
        // Lifting a limit must not wait for the old deadline.
        self.wake_limited(now);
        self.maintain(now);
    }

    /// The rate limits of the session (`None`) or of a torrent.
    pub fn rate_limits(&self, torrent: Option<TorrentId>) -> RateLimits {
        match torrent {
            None => RateLimits {
                download: self.limits.download.global_rate(),
                upload: self.limits.upload.global_rate(),
            },
            Some(t) => RateLimits {
                download: self.limits.download.torrent_rate(t),
                upload: self.limits.upload.torrent_rate(t),
            },
        }
    }

    /// Lets connections whose tokens are due try again, in the limiters' queue order.
    pub(super) fn wake_limited(&mut self, now: Instant) {
        if now > self.last_now {
            self.last_now = now;
        }
        for id in self.limits.download.take_ready(now) {
            self.fill_requests(now, id);
            self.flush(id);
        }
        for id in self.limits.upload.take_ready(now) {
            self.pump_reads(id);
        }
    }
}

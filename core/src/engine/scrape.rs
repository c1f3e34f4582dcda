//! Scrapes (BEP 15 over UDP, BEP 48 over HTTP): the swarm's seeder, leecher and completion counters
//! from each tracker of a torrent, on request of a front end. The conversations run in the
//! tracker glue, next to the announces (same UDP router, same HTTP exchanges and host cache).

use super::{AddError, Engine, Event, TorrentId};
use crate::time::Instant;

impl Engine {
    /// Asks every tracker of `torrent` for its counters. Each tracker's answer (or failure) comes
    /// out as one [`Event::ScrapeResult`]; returns the tracker URLs asked, in tier order (empty
    /// when the torrent has no trackers, in which case no event follows).
    pub fn scrape(&mut self, now: Instant, torrent: TorrentId) -> Result<Vec<String>, AddError> {
        let t = self
            .torrents
            .get(&torrent)
            .ok_or(AddError::UnknownTorrent(torrent))?;
        let info_hash = t.info_hash;
        let mut urls: Vec<String> = Vec::new();
        for status in t.policy.tracker_status(now) {
            if !urls.contains(&status.url) {
                urls.push(status.url);
            }
        }
        for url in &urls {
            self.trackers.scrape(
                now,
                torrent,
                url,
                info_hash,
                &mut self.outputs,
                &mut self.ids,
            );
        }
        self.trackers.pump_router(&mut self.outputs);
        self.push_scrape_events();
        // The tracker glue may have a new deadline (a UDP retransmission).
        self.refile_timers(&[]);
        Ok(urls)
    }

    /// Turns finished scrapes into events.
    pub(super) fn push_scrape_events(&mut self) {
        for (torrent, url, result) in self.trackers.take_scrape_results() {
            self.events.push_back(Event::ScrapeResult {
                torrent,
                url,
                result,
            });
        }
    }
}

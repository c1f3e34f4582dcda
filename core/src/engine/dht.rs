//! The engine's side of the mainline DHT (BEP 5): one [`Dht`] node per engine, on the engine's one
//! UDP socket, that finds peers for every running torrent that is not private, as trackers do.
//!
//! - **Datagrams**: `Engine::handle_datagram` hands KRPC (a bencoded dictionary, first byte `d`) to
//!   the node (see `udp.rs`); what the node sends goes out as `Output::SendDatagram`.
//! - **Bootstrap**: [`DhtSettings::bootstrap`] holds `host:port` pairs. IP literals are used at once;
//!   names go out as `Output::Resolve` and join when resolved. A saved routing table
//!   ([`DhtSettings::saved_state`], from `Engine::save_state`) is used first, so a restart does not
//!   start from nothing and keeps its node id.
//! - **Torrents**: every running, non-private torrent (a magnet link's too: until its metadata says
//!   it is private) gets an `announce` lookup (`get_peers`, then `announce_peer` with our TCP port to
//!   the closest nodes that gave a token) at once, again after [`DhtSettings::reannounce`] when it
//!   found peers (or, seeding, announced somewhere), and with a growing back-off from
//!   [`DhtSettings::retry`] when it found nothing (an empty table, a swarm not announced yet). A private torrent (BEP 27) is never looked
//!   up or announced; a paused or removed one stops.
//! - **Time**: the node's deadlines and the torrents' next lookups are one entry of the engine's timer
//!   table (`TimerKey::Dht`).
//!
//! Peers found go into the torrent's address book like a tracker's.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::dht::{Dht, DhtConfig, DhtEvent, DhtStats, LookupId};
use crate::rng::CoreRng;
use crate::time::Instant;
use crate::types::InfoHash;

use super::io::{Output, ResolveId, TorrentId};
use super::Engine;

/// The public router nodes a client bootstraps from when nothing else is configured.
pub const DEFAULT_BOOTSTRAP: &[(&str, u16)] = &[
    ("router.bittorrent.com", 6881),
    ("dht.transmissionbt.com", 6881),
    ("router.utorrent.com", 6881),
    ("dht.libtorrent.org", 25401),
];

/// Longest wait between two lookups of a torrent that keep finding nothing (at most this, and at
/// most [`DhtSettings::reannounce`]).
const MAX_RETRY: Duration = Duration::from_secs(5 * 60);

/// How the engine runs its DHT node. `EngineConfig::dht` is `None` for no DHT at all.
#[derive(Debug, Clone)]
pub struct DhtSettings {
    /// The node's own tunables and caps.
    pub node: DhtConfig,
    /// Where to start from (`host` is a name or an IP literal). Default: [`DEFAULT_BOOTSTRAP`].
    pub bootstrap: Vec<(String, u16)>,
    /// What `Engine::save_state` returned in an earlier run: the node id and routing table. Not
    /// usable (corrupt, from another version): ignored, a fresh node starts.
    pub saved_state: Option<Vec<u8>>,
    /// Time between two announces of a torrent once one found peers or reached nodes (default 15 min).
    pub reannounce: Duration,
    /// First wait after a lookup that found no peer and announced nowhere; doubled each time, up to
    /// 5 minutes (default 5 s).
    pub retry: Duration,
}

impl Default for DhtSettings {
    fn default() -> Self {
        DhtSettings {
            node: DhtConfig::default(),
            bootstrap: DEFAULT_BOOTSTRAP
                .iter()
                .map(|(h, p)| ((*h).to_string(), *p))
                .collect(),
            saved_state: None,
            reannounce: Duration::from_secs(15 * 60),
            retry: Duration::from_secs(5),
        }
    }
}

/// One torrent as the DHT glue sees it.
#[derive(Debug, Clone)]
struct DhtTorrent {
    info_hash: InfoHash,
    /// It has every wanted piece: announcing is all it needs, peers come to it.
    seeding: bool,
    /// The lookup running for it, if any.
    lookup: Option<LookupId>,
    /// When the next lookup starts (while none runs).
    next: Instant,
    /// Lookups in a row that found nothing and announced nowhere.
    misses: u32,
}

/// The engine's DHT node and its bookkeeping (see the module documentation).
#[derive(Debug)]
pub(super) struct DhtGlue {
    node: Dht,
    settings: DhtSettings,
    /// The TCP port we announce.
    port: u16,
    /// Bootstrap host names being resolved.
    resolves: BTreeSet<ResolveId>,
    torrents: BTreeMap<TorrentId, DhtTorrent>,
    /// `(next, torrent)` of every torrent without a lookup running: a datagram costs the same however
    /// many torrents wait.
    schedule: BTreeSet<(Instant, TorrentId)>,
    lookups: BTreeMap<LookupId, TorrentId>,
    /// Peers found, for the engine to put into address books.
    found: VecDeque<(TorrentId, Vec<SocketAddr>)>,
}

impl DhtGlue {
    /// A node from the saved state (else a fresh one), not yet bootstrapped.
    pub fn new(mut settings: DhtSettings, port: u16, now: Instant, rng: CoreRng) -> DhtGlue {
        let saved = settings.saved_state.take();
        let node = match saved {
            Some(bytes) => match Dht::from_state(settings.node.clone(), &bytes, now, rng.clone()) {
                Ok(node) => node,
                Err(_) => Dht::new(settings.node.clone(), now, rng),
            },
            None => Dht::new(settings.node.clone(), now, rng),
        };
        DhtGlue {
            node,
            settings,
            port,
            resolves: BTreeSet::new(),
            torrents: BTreeMap::new(),
            schedule: BTreeSet::new(),
            lookups: BTreeMap::new(),
            found: VecDeque::new(),
        }
    }

    /// Starts bootstrapping: IP literals at once, names through `Output::Resolve`.
    pub fn start(
        &mut self,
        now: Instant,
        outputs: &mut VecDeque<Output>,
        mut new_id: impl FnMut() -> ResolveId,
    ) {
        let mut addrs = Vec::new();
        for (host, port) in &self.settings.bootstrap {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            match bare.parse::<IpAddr>() {
                Ok(ip) => addrs.push(SocketAddr::new(ip, *port)),
                Err(_) => {
                    let id = new_id();
                    self.resolves.insert(id);
                    outputs.push_back(Output::Resolve {
                        id,
                        host: host.clone(),
                        port: *port,
                    });
                }
            }
        }
        self.node.bootstrap(now, &addrs);
    }

    /// A bootstrap name resolved; `false` if the lookup was not ours.
    pub fn resolved(
        &mut self,
        now: Instant,
        id: ResolveId,
        result: &Result<Vec<SocketAddr>, String>,
    ) -> bool {
        if !self.resolves.remove(&id) {
            return false;
        }
        if let Ok(addrs) = result {
            // One address per name is enough to enter the network; more only adds traffic.
            let v4 = addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first());
            if let Some(a) = v4 {
                self.node.bootstrap(now, &[*a]);
            }
        }
        true
    }

    /// A datagram for the node.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.node.handle_datagram(now, from, data);
    }

    /// The node's timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
    }

    /// Says whether a torrent should use the DHT now (`Some((info-hash, seeding))`) or not (`None`:
    /// paused, removed, private, shutting down).
    pub fn track(&mut self, now: Instant, torrent: TorrentId, eligible: Option<(InfoHash, bool)>) {
        match eligible {
            Some((info_hash, seeding)) => {
                let t = self.torrents.entry(torrent).or_insert_with(|| {
                    self.schedule.insert((now, torrent));
                    DhtTorrent {
                        info_hash,
                        seeding,
                        lookup: None,
                        next: now,
                        misses: 0,
                    }
                });
                t.seeding = seeding;
            }
            None => {
                if let Some(t) = self.torrents.remove(&torrent) {
                    self.schedule.remove(&(t.next, torrent));
                    if let Some(l) = t.lookup {
                        self.lookups.remove(&l);
                    }
                }
            }
        }
    }

    /// Starts an announce lookup for every torrent whose time has come.
    fn start_due(&mut self, now: Instant) {
        while let Some(&(at, tid)) = self.schedule.first() {
            if at > now {
                break;
            }
            self.schedule.pop_first();
            let Some(t) = self.torrents.get_mut(&tid) else {
                continue;
            };
            match self.node.announce(now, t.info_hash, Some(self.port)) {
                Ok(l) => {
                    t.lookup = Some(l);
                    self.lookups.insert(l, tid);
                }
                // The node is busy: try again a little later.
                Err(_) => {
                    t.next = now + self.settings.retry;
                    self.schedule.insert((t.next, tid));
                }
            }
        }
    }

    /// Files the next lookup of a torrent that has none running.
    fn reschedule(&mut self, tid: TorrentId, next: Instant) {
        if let Some(t) = self.torrents.get_mut(&tid) {
            self.schedule.remove(&(t.next, tid));
            t.next = next;
            if t.lookup.is_none() {
                self.schedule.insert((next, tid));
            }
        }
    }

    /// Starts the lookups that are due, and moves the node's datagrams and events out.
    pub fn poll(&mut self, now: Instant, outputs: &mut VecDeque<Output>) {
        // A lookup that cannot start (an empty table) finishes at once; a bootstrap makes lookups due
        // again: a few rounds settle both within this input.
        for _ in 0..4 {
            self.start_due(now);
            let mut any = false;
            while let Some(ev) = self.node.poll_event() {
                any = true;
                self.on_event(now, ev);
            }
            if !any {
                break;
            }
        }
        while let Some((to, data)) = self.node.poll_transmit() {
            outputs.push_back(Output::SendDatagram {
                to,
                data: data.into(),
            });
        }
    }

    fn on_event(&mut self, now: Instant, ev: DhtEvent) {
        match ev {
            DhtEvent::Peers { lookup, peers, .. } => {
                if let Some(&tid) = self.lookups.get(&lookup) {
                    self.found.push_back((tid, peers));
                }
            }
            DhtEvent::LookupDone(s) => {
                let Some(tid) = self.lookups.remove(&s.lookup) else {
                    return;
                };
                let Some(t) = self.torrents.get_mut(&tid) else {
                    return;
                };
                t.lookup = None;
                let next = if s.peers_found > 0 || (t.seeding && s.announced > 0) {
                    t.misses = 0;
                    now + self.settings.reannounce
                } else {
                    let wait = self
                        .settings
                        .retry
                        .saturating_mul(1 << t.misses.min(16))
                        .min(MAX_RETRY)
                        .min(self.settings.reannounce);
                    t.misses += 1;
                    now + wait
                };
                self.reschedule(tid, next);
            }
            DhtEvent::Bootstrapped { .. } => {
                // The table has nodes now: torrents that found nothing so far look again at once.
                let waiting: Vec<TorrentId> = self
                    .torrents
                    .iter()
                    .filter(|(_, t)| t.lookup.is_none() && t.misses > 0)
                    .map(|(id, _)| *id)
                    .collect();
                for tid in waiting {
                    self.reschedule(tid, now);
                }
            }
        }
    }

    /// Peers found since the last call.
    pub fn take_found(&mut self) -> Option<(TorrentId, Vec<SocketAddr>)> {
        self.found.pop_front()
    }

    /// The node's next deadline, or the next torrent lookup, whichever is first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let lookups = self.schedule.first().map(|(at, _)| *at);
        match (self.node.poll_timeout(), lookups) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The node's counters.
    pub fn stats(&self, now: Instant) -> DhtStats {
        self.node.stats(now)
    }

    /// The node id and routing table as bytes.
    pub fn save_state(&self) -> Vec<u8> {
        self.node.save_state()
    }
}

impl Engine {
    /// The DHT's share of the upkeep: the touched torrents start or stop using it, due lookups start,
    /// datagrams go out, and the peers found go into address books.
    pub(super) fn drive_dht(&mut self, now: Instant, work: &[TorrentId]) {
        let Some(glue) = self.dht.as_mut() else {
            return;
        };
        let closing = self.shutdown_deadline.is_some();
        for &tid in work {
            let eligible = self
                .torrents
                .get(&tid)
                .filter(|t| t.is_running() && !t.private && !closing)
                .map(|t| (t.info_hash, t.is_complete()));
            glue.track(now, tid, eligible);
        }
        glue.poll(now, &mut self.outputs);
        while let Some((tid, peers)) = glue.take_found() {
            if let Some(t) = self.torrents.get_mut(&tid) {
                for p in peers {
                    self.dial_dirty |= t.book.add(now, p);
                }
            }
        }
    }

    /// Starts the node's bootstrap (from `Engine::new`) and files its first deadline.
    pub(super) fn start_dht(&mut self, now: Instant) {
        let Some(glue) = self.dht.as_mut() else {
            return;
        };
        let trackers = &mut self.trackers;
        glue.start(now, &mut self.outputs, || trackers.new_resolve_id());
        glue.poll(now, &mut self.outputs);
        self.refile_timers(&[]);
    }

    /// The DHT node's counters (nodes in the table, queries, drops), or `None` when the engine runs
    /// without a DHT.
    pub fn dht_stats(&self, now: Instant) -> Option<DhtStats> {
        self.dht.as_ref().map(|d| d.stats(now))
    }

    /// What the engine wants kept for the next run (today: the DHT node id and routing table), as
    /// opaque bytes; give them back in `DhtSettings::saved_state`. `None` without a DHT.
    pub fn save_state(&self) -> Option<Vec<u8>> {
        self.dht.as_ref().map(DhtGlue::save_state)
    }
}

//! The engine: many torrents, their peers and trackers, behind one sans-IO input/output contract.
//!
//! Inputs are method calls that carry `now` (bytes read, connections opened or closed, datagrams,
//! finished jobs, resolved names, timer expiries, user commands); outputs are drained with
//! [`Engine::poll_output`] (see [`Output`]), events with [`Engine::poll_event`], and the next deadline
//! with [`Engine::poll_timeout`]. The contract's types live in [`io`].
//!
//! # How a driver runs it
//! After every input, drain `poll_output` until `None` and perform each output (connect, send, close,
//! datagram, resolve, job); drain `poll_event` for the front end; arm one timer at `poll_timeout` and
//! call `handle_timeout` when it fires. Report every `Send`'s bytes with `handle_flushed` once the
//! socket took them: the engine keeps at most [`conn::SEND_WINDOW`] unflushed bytes per connection and
//! paces disk reads for a peer by what is still on its way to it.
//!
//! # Determinism
//! All state that decides outputs is kept in `BTreeMap`s and `Vec`s and every random choice draws from
//! the one [`CoreRng`] seeded in [`Engine::new`], so the same inputs give the same outputs.

pub mod io;

mod admission;
mod conn;
mod dht;
mod ext;
mod flow;
mod limits;
mod mse;
mod pieces;
mod refill;
mod scrape;
mod table;
mod torrent;
mod trackers;
mod udp;
mod utp;
mod webseed;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use crate::bitfield::Bitfield;
use crate::choker::{ChokeMode, ChokePeer, Choker, ChokerConfig};
use crate::metainfo::{Layout, Metainfo};
use crate::peer::{self, BlockRequest, Geometry, PeerSession, SessionConfig};
use crate::picker::{BlockReceived, PeerKey, PeerPieces, Picker, PickerConfig};
use crate::rng::{seeded, CoreRng, RngExt};
use crate::time::Instant;
use crate::tracker::announce::{AnnounceConfig, AnnouncePolicy, Progress};
use crate::tracker::udp_client::{UdpConfig, UdpTrackerRouter};
use crate::types::{InfoHash, PeerId};

use conn::{Classified, Conn, ConnIds, READ_AHEAD, SEND_WINDOW};
use pieces::PieceStore;
use table::{TimerKey, TimerTable, Tracked};
use torrent::{
    insert_capped, Known, Meta, PieceStage, RunState, Torrent, MAX_BANNED, MAX_FAILED_KEEP,
    MAX_STRIKES, MAX_STRIKE_ENTRIES,
};
use trackers::TrackerGlue;

pub use dht::{DhtSettings, DEFAULT_BOOTSTRAP};
pub use ext::AddMagnet;
pub use io::*;
pub use udp::{classify as classify_datagram, DatagramKind};
pub use utp::{Transport, SYN_FALLBACK};
pub use webseed::{WebSeedConfig, WebSeedStats};

/// The pending-piece cap is never below this many pieces of the torrent with the longest pieces: one
/// being assembled while the previous one is verified and written.
const MIN_PENDING_PIECES: u64 = 2;

/// Tunables of an [`Engine`]. [`EngineConfig::default`] gives the values named on each field.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The TCP port we accept peers on (announced to trackers and peers). Default 6881.
    pub listen_port: u16,
    /// Most peer connections in total (default 200).
    pub max_connections: usize,
    /// Most peer connections per torrent (default 60).
    pub max_peers_per_torrent: usize,
    /// Most outgoing connections still dialling at once (default 25).
    pub max_half_open: usize,
    /// Most incoming connections from one IP address (default 8), so that one host cannot take every
    /// slot.
    pub max_incoming_per_ip: usize,
    /// Per-connection protocol tunables.
    pub session: SessionConfig,
    /// Regular unchoke slots per torrent (default 4; the optimistic unchoke comes on top).
    pub unchoke_slots: usize,
    /// Our peer id; `None` generates a BEP 20 one from the engine's seed.
    pub peer_id: Option<PeerId>,
    /// Cap on the bytes of pieces being assembled, hashed and written, across all torrents (default
    /// 16 MiB, raised to 2 pieces of the torrent with the longest pieces): no new piece is started past
    /// it, pieces already started are finished. This is most of a download's memory; 16 MiB keeps a
    /// loopback download at full speed (measured with `cargo bench --bench throughput`: 48 MiB was no
    /// faster and took ~30 MiB more peak memory).
    pub max_pending_piece_bytes: u64,
    /// Piece picking policy.
    pub picker: PickerConfig,
    /// Announce policy (per torrent).
    pub announce: AnnounceConfig,
    /// UDP tracker client.
    pub udp: UdpConfig,
    /// How long a resolved host name is reused (default 15 min).
    pub dns_ttl: Duration,
    /// How long `shutdown` waits for `stopped` announces before giving up (default 5 s).
    pub shutdown_timeout: Duration,
    /// The mainline DHT (`dht.rs`); `None` (the default) runs without one.
    pub dht: Option<DhtSettings>,
    /// Web seeds (BEP 19).
    pub webseed: WebSeedConfig,
    /// Protocol encryption (MSE/PE) for peer connections both ways (default `prefer`; see
    /// `engine/mse.rs`).
    pub encryption: crate::mse::Policy,
    /// Which transports peer connections use (default `both`; see `engine/utp.rs`).
    pub transport: Transport,
    /// The uTP socket's tunables (1,400-byte payloads, LEDBAT, buffers, caps).
    pub utp: crate::utp::UtpConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            listen_port: 6881,
            max_connections: 200,
            max_peers_per_torrent: 60,
            max_half_open: 25,
            max_incoming_per_ip: 8,
            session: SessionConfig::default(),
            unchoke_slots: 4,
            peer_id: None,
            max_pending_piece_bytes: 16 * 1024 * 1024,
            picker: PickerConfig::default(),
            announce: AnnounceConfig::default(),
            udp: UdpConfig::default(),
            dns_ttl: Duration::from_secs(15 * 60),
            shutdown_timeout: Duration::from_secs(5),
            dht: None,
            webseed: WebSeedConfig::default(),
            encryption: crate::mse::Policy::default(),
            transport: Transport::default(),
            utp: crate::utp::UtpConfig::default(),
        }
    }
}

/// A torrent to add.
#[derive(Debug, Clone)]
pub struct AddTorrent {
    /// The parsed `.torrent` (or metadata fetched for a magnet link plus its trackers).
    pub metainfo: Metainfo,
    /// Pieces already verified on disk (from a resume check); `None`: nothing.
    pub have: Option<Bitfield>,
    /// One flag per file; `None`: every file.
    pub wanted_files: Option<Vec<bool>>,
    /// Add it paused (no connections, no announces until `resume`).
    pub paused: bool,
    /// Peer addresses to try besides what trackers return (e.g. `--peer` on the command line).
    pub peers: Vec<SocketAddr>,
}

/// Why a command about a torrent was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    /// A torrent with this info-hash is already in the engine.
    #[error("torrent {0} is already added")]
    Duplicate(InfoHash),
    /// The file selection does not have one flag per file.
    #[error("file selection has {got} entries but the torrent has {files} files")]
    SelectionLength {
        /// Entries given.
        got: usize,
        /// Files in the torrent.
        files: usize,
    },
    /// The have-set does not have one bit per piece.
    #[error("have-set covers {got} pieces but the torrent has {pieces}")]
    HaveLength {
        /// Bits given.
        got: u32,
        /// Pieces in the torrent.
        pieces: u32,
    },
    /// The torrent's geometry is unusable.
    #[error("unusable torrent geometry: {0}")]
    Geometry(String),
    /// No torrent with this id.
    #[error("no torrent with id {0:?}")]
    UnknownTorrent(TorrentId),
    /// The torrent's metadata (its file list) is not known yet: it is still being fetched for a
    /// magnet link.
    #[error("torrent {0:?} has no metadata yet (still fetching it for a magnet link)")]
    MetadataPending(TorrentId),
    /// The command needs the torrent stopped (paused) and it is running.
    #[error("torrent {0:?} is running (pause it first)")]
    Running(TorrentId),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// What a job handed out is for.
#[derive(Debug, Clone, Copy)]
enum JobInfo {
    /// A [`Job::VerifyWrite`] of a piece in [`PieceStage::Verifying`].
    Verify { torrent: TorrentId, piece: u32 },
    Read {
        torrent: TorrentId,
        conn: ConnId,
        block: BlockRequest,
    },
}

impl JobInfo {
    fn torrent(&self) -> TorrentId {
        match self {
            JobInfo::Verify { torrent, .. } | JobInfo::Read { torrent, .. } => *torrent,
        }
    }
}

/// The sans-IO BitTorrent engine. See the [module documentation](self).
pub struct Engine {
    config: EngineConfig,
    rng: CoreRng,
    peer_id: PeerId,
    /// Torrents; the ones touched since the last upkeep are the ones it looks at.
    torrents: Tracked<TorrentId, Torrent>,
    /// Peer connections; the ones touched during an input get their deadline refiled after it.
    conns: Tracked<ConnId, Conn>,
    /// Remote address (and torrent, once known) of every peer connection, to never open two
    /// connections to the same address for the same torrent.
    addrs: BTreeMap<(SocketAddr, Option<TorrentId>), ConnId>,
    jobs: BTreeMap<JobId, JobInfo>,
    /// Every deadline by name (see [`TimerKey`]), refiled at the end of every input for what the
    /// input touched: `poll_timeout` is its first entry, `handle_timeout` takes the due ones.
    timers: TimerTable,
    /// The longest piece of any torrent whose metadata is known (for [`Engine::pending_cap`]).
    longest_piece: u64,
    trackers: TrackerGlue,
    outputs: VecDeque<Output>,
    events: VecDeque<Event>,
    next_torrent: u32,
    /// Mints every connection id and knows each open one's kind.
    ids: ConnIds,
    next_job: u64,
    /// Pieces held in memory, across torrents, and their bytes.
    pieces: PieceStore,
    /// Torrents that left pieces unstarted because the memory cap was reached: they get their
    /// requests refilled once the bytes held are under the cap again.
    held_back: BTreeSet<TorrentId>,
    /// When shutdown gives up waiting, once `shutdown` was called.
    shutdown_deadline: Option<Instant>,
    shut_down: bool,
    /// The latest `now` any input carried (the engine has no clock of its own).
    last_now: Instant,
    /// Something changed that may allow new dials (addresses, free slots).
    dial_dirty: bool,
    /// When an address that is backing off becomes diallable (and slots allow).
    dial_due: Option<Instant>,
    /// Host-name lookups for magnet `x.pe` peer hints: the torrent they are for.
    peer_resolves: BTreeMap<ResolveId, TorrentId>,
    /// Download and upload rate limits (`limits.rs`).
    limits: limits::EngineLimits,
    /// The DHT node, if the engine runs one (`dht.rs`).
    dht: Option<dht::DhtGlue>,
    /// Web seeds and their connections (`webseed.rs`).
    webseeds: webseed::WebSeeds,
    /// Protocol encryption: the policy and each connection's byte layer (`mse.rs`).
    mse: mse::MseConns,
    /// The uTP socket and the peer connections on it (`utp.rs`).
    utp: utp::UtpGlue,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("peer_id", &self.peer_id)
            .field("torrents", &self.torrents.len())
            .field("connections", &self.conns.len())
            .field("jobs", &self.jobs.len())
            .field("pending_bytes", &self.pieces.bytes())
            .field("shut_down", &self.shut_down)
            .finish()
    }
}

impl Engine {
    /// An engine with no torrents. `seed` seeds every random choice (peer id, piece order, tracker
    /// order, transaction ids); `now` is the caller's clock at start.
    pub fn new(config: EngineConfig, seed: u64, now: Instant) -> Engine {
        let mut rng = seeded(seed);
        let peer_id = config.peer_id.unwrap_or_else(|| PeerId::generate(&mut rng));
        let router = UdpTrackerRouter::new(config.udp.clone(), seeded(rng.random()));
        let key = rng.random();
        let dht = config.dht.clone().map(|settings| {
            dht::DhtGlue::new(settings, config.listen_port, now, seeded(rng.random()))
        });
        let webseeds = webseed::WebSeeds::new(config.webseed.clone());
        let config_encryption = config.encryption;
        // Its own stream (not a draw from `rng`), so turning uTP on changes no other random choice.
        let utp = utp::UtpGlue::new(
            config.transport,
            config.utp.clone(),
            seeded(seed ^ 0x7574_705f_736f_636b),
        );
        let mut engine = Engine {
            webseeds,
            trackers: TrackerGlue::new(router, key, config.dns_ttl),
            config,
            rng,
            peer_id,
            torrents: Tracked::default(),
            conns: Tracked::default(),
            addrs: BTreeMap::new(),
            jobs: BTreeMap::new(),
            timers: TimerTable::default(),
            longest_piece: 0,
            outputs: VecDeque::new(),
            events: VecDeque::new(),
            next_torrent: 0,
            ids: ConnIds::default(),
            next_job: 0,
            pieces: PieceStore::default(),
            held_back: BTreeSet::new(),
            shutdown_deadline: None,
            shut_down: false,
            last_now: now,
            dial_dirty: false,
            dial_due: None,
            peer_resolves: BTreeMap::new(),
            limits: limits::EngineLimits::new(now),
            dht,
            mse: mse::MseConns::new(config_encryption),
            utp,
        };
        engine.start_dht(now);
        engine
    }

    /// Our peer id for this session.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    // ===== user commands =========================================================================

    /// Adds a torrent; it starts at once unless `add.paused`.
    pub fn add_torrent(&mut self, now: Instant, add: AddTorrent) -> Result<TorrentId, AddError> {
        if self.shutdown_deadline.is_some() {
            return Err(AddError::ShuttingDown);
        }
        let info_hash = add.metainfo.info_hash();
        if self.torrents.values().any(|t| t.info_hash == info_hash) {
            return Err(AddError::Duplicate(info_hash));
        }
        let info = add.metainfo.info.clone();
        let layout = info.layout();
        let files = layout.files().len();
        let pieces = layout.piece_count();
        let wanted_files = match add.wanted_files {
            Some(w) if w.len() != files => {
                return Err(AddError::SelectionLength {
                    got: w.len(),
                    files,
                })
            }
            Some(w) => w,
            None => vec![true; files],
        };
        if let Some(have) = &add.have {
            if have.len() != pieces {
                return Err(AddError::HaveLength {
                    got: have.len(),
                    pieces,
                });
            }
        }
        let geometry = Geometry::new(layout.piece_length(), layout.total_length())
            .map_err(|e| AddError::Geometry(e.to_string()))?;
        let mut picker = Picker::new(
            pieces,
            layout.piece_length(),
            layout.total_length(),
            self.config.picker,
        )
        .map_err(|e| AddError::Geometry(e.to_string()))?;
        if let Some(have) = &add.have {
            for p in have.iter_ones() {
                picker.piece_verified(p);
            }
        }
        picker.set_wanted(&Torrent::wanted_pieces(layout, &wanted_files));
        let policy = AnnouncePolicy::new(
            info_hash,
            self.peer_id,
            self.config.listen_port,
            self.trackers.key,
            &add.metainfo.trackers,
            self.config.announce.clone(),
            &mut self.rng,
        );
        let choker = Choker::new(ChokerConfig {
            regular_slots: self.config.unchoke_slots,
            ..ChokerConfig::default()
        });
        let id = TorrentId(self.next_torrent);
        self.next_torrent = self.next_torrent.wrapping_add(1);
        let complete = picker.is_complete();
        let meta = Meta::Known(Box::new(Known {
            info,
            geometry,
            picker,
        }));
        let mut t = Torrent::new(
            info_hash,
            meta,
            add.metainfo.trackers.clone(),
            policy,
            choker,
            self.config.session.rate_window,
            add.paused,
        );
        t.wanted_files = wanted_files;
        t.complete_reported = complete;
        for addr in add.peers {
            t.book.add(now, addr);
        }
        if complete {
            t.policy.set_completed(now);
        }
        if !add.paused {
            t.policy.start(now);
        }
        self.torrents.insert(id, t);
        self.webseeds_add(id, &add.metainfo.url_list);
        self.update_longest_piece();
        self.dial_dirty = true;
        self.events.push_back(Event::TorrentAdded(id));
        self.maintain(now);
        Ok(id)
    }

    /// Adds a peer address to a torrent's address book and dials it when a slot is free.
    pub fn add_peer(&mut self, now: Instant, torrent: TorrentId, addr: SocketAddr) {
        if let Some(t) = self.torrents.get_mut(&torrent) {
            self.dial_dirty |= t.book.add(now, addr);
        }
        self.maintain(now);
    }

    /// Pauses a torrent: `stopped` to its trackers, every peer closed. Verified pieces stay.
    pub fn pause(&mut self, now: Instant, torrent: TorrentId) {
        let Some(t) = self.torrents.get_mut(&torrent) else {
            return;
        };
        if t.run != RunState::Running {
            return;
        }
        t.run = RunState::Paused;
        t.policy.stop(now);
        self.close_torrent_conns(now, torrent, "torrent paused");
        self.events.push_back(Event::TorrentPaused(torrent));
        self.maintain(now);
    }

    /// Resumes a paused torrent (or retries one stopped by an error).
    pub fn resume(&mut self, now: Instant, torrent: TorrentId) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        let Some(t) = self.torrents.get_mut(&torrent) else {
            return;
        };
        if t.run == RunState::Running {
            return;
        }
        t.run = RunState::Running;
        t.downloaded = 0;
        t.uploaded = 0;
        t.policy.start(now);
        if t.is_complete() {
            t.policy.set_completed(now);
        }
        t.choke_dirty = true;
        for e in t.book.entries.values_mut() {
            if !e.banned {
                e.next_try = now;
                e.failures = 0;
            }
        }
        self.dial_dirty = true;
        self.events.push_back(Event::TorrentResumed(torrent));
        self.maintain(now);
    }

    /// Removes a torrent: `stopped` to its trackers (finished in the background), peers closed, its id
    /// forgotten. Jobs still running for it are ignored when they finish. Deleting data is the
    /// driver's business.
    pub fn remove(&mut self, now: Instant, torrent: TorrentId) {
        if !self.torrents.contains_key(&torrent) {
            return;
        }
        self.close_torrent_conns(now, torrent, "torrent removed");
        self.limits.forget_torrent(torrent);
        if let Some(mut t) = self.torrents.remove(&torrent) {
            t.policy.stop(now);
            self.pieces.remove_torrent(torrent);
            self.held_back.remove(&torrent);
            self.trackers.retire(torrent, t.policy);
        }
        self.update_longest_piece();
        self.jobs.retain(|_, j| match j {
            JobInfo::Verify { torrent: t, .. } | JobInfo::Read { torrent: t, .. } => *t != torrent,
        });
        self.events.push_back(Event::TorrentRemoved(torrent));
        self.maintain(now);
    }

    /// Changes which files are downloaded. Takes effect at once: requests for pieces no longer
    /// wanted are cancelled, interest is re-evaluated, new pieces are requested.
    pub fn set_wanted_files(
        &mut self,
        now: Instant,
        torrent: TorrentId,
        wanted: Vec<bool>,
    ) -> Result<(), AddError> {
        let Some(t) = self.torrents.get_mut(&torrent) else {
            return Err(AddError::UnknownTorrent(torrent));
        };
        let Meta::Known(known) = &mut t.meta else {
            return Err(AddError::MetadataPending(torrent));
        };
        let (layout, picker) = (known.info.layout(), &mut known.picker);
        let files = layout.files().len();
        if wanted.len() != files {
            return Err(AddError::SelectionLength {
                got: wanted.len(),
                files,
            });
        }
        let bits = Torrent::wanted_pieces(layout, &wanted);
        t.wanted_files = wanted;
        picker.set_wanted(&bits);
        let stale = picker.requests_for_unwanted();
        for (key, block) in stale {
            picker.request_cancelled(key, block);
            if let Some(c) = t.keys.get(&key).and_then(|id| self.conns.get_mut(id)) {
                c.session.cancel(now, block);
            }
        }
        self.sync_pieces(torrent);
        if let Some(t) = self.torrents.get_mut(&torrent) {
            if !t.is_complete() {
                t.complete_reported = false;
            }
        }
        self.check_complete(now, torrent);
        self.refresh_torrent_peers(now, torrent);
        self.maintain(now);
        Ok(())
    }

    /// Stops everything: `stopped` to every tracker, every connection closed. `is_shut_down` turns
    /// true once the announces are answered or after [`EngineConfig::shutdown_timeout`].
    pub fn shutdown(&mut self, now: Instant) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(now + self.config.shutdown_timeout);
        let ids: Vec<TorrentId> = self.torrents.keys().copied().collect();
        for id in ids {
            if let Some(t) = self.torrents.get_mut(&id) {
                t.policy.stop(now);
            }
            self.close_torrent_conns(now, id, "shutting down");
        }
        let rest: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in rest {
            self.drop_conn(now, id, "shutting down", true);
        }
        self.maintain(now);
    }

    /// Whether `shutdown` has finished; the driver may exit.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    // ===== network ===============================================================================

    /// A peer connected to our listening socket. Returns the connection's id, or `None` to refuse it
    /// (the per-IP cap, shutting down, already connected to that address, or the session at its cap
    /// with no connection to give up for it; see `admission.rs`).
    pub fn handle_incoming(&mut self, now: Instant, remote: SocketAddr) -> Option<ConnId> {
        if self.utp_refuses_tcp() {
            self.refused(None, remote, "TCP is off (--transport utp)");
            return None;
        }
        self.accept_peer(now, remote)
    }

    /// A peer connected to us over any transport: the admission checks of `handle_incoming`.
    fn accept_peer(&mut self, now: Instant, remote: SocketAddr) -> Option<ConnId> {
        let from_ip = self
            .conns
            .values()
            .filter(|c| !c.outgoing && c.addr.ip() == remote.ip())
            .count();
        if from_ip >= self.config.max_incoming_per_ip {
            self.refused(None, remote, "too many connections from this address");
            return None;
        }
        if self.shutdown_deadline.is_some()
            || self
                .addrs
                .range((remote, None)..)
                .next()
                .is_some_and(|((a, _), _)| *a == remote)
        {
            return None;
        }
        if self.torrents.values().any(|t| t.banned.contains(&remote)) {
            return None;
        }
        if self.conns.len() >= self.config.max_connections {
            // Full: the newcomer takes the slot of the least useful connection, if any.
            let Some(victim) = Self::least_useful(&self.conns, self.conns.keys().copied(), now)
            else {
                self.refused(None, remote, "the session is at its connection cap");
                return None;
            };
            self.drop_conn(
                now,
                victim,
                "replaced by a new peer (no data either way)",
                true,
            );
        }
        let id = self.ids.mint_peer();
        let session = PeerSession::incoming(self.session_config(), self.peer_id, now);
        self.conns.insert(
            id,
            Conn {
                addr: remote,
                torrent: None,
                session,
                outgoing: false,
                connected: true,
                key: PeerKey(id.0 as u32),
                established_at: None,
                peer_id: None,
                read_queue: VecDeque::new(),
                reading_bytes: 0,
                unflushed: 0,
                ext: Default::default(),
                conduct: Default::default(),
            },
        );
        self.addrs.insert((remote, None), id);
        self.mse_accepted(id);
        self.refile_timers(&[]);
        Some(id)
    }

    /// An outgoing connection (peer or HTTP tracker) is up.
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId) {
        let conn = match self.ids.classify(conn) {
            None => return,
            Some(Classified::HttpTracker(h)) => {
                self.trackers.http_connected(h, &mut self.outputs);
                self.after_trackers(now);
                return;
            }
            Some(Classified::WebSeed(w)) => return self.webseed_connected(now, w),
            Some(Classified::Peer(id)) => id,
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.connected = true;
            self.dial_dirty = true;
        }
        self.mse_connected(now, conn);
        self.flush(conn);
        self.maintain(now);
    }

    /// An outgoing connection could not be opened.
    pub fn handle_connect_failed(&mut self, now: Instant, conn: ConnId, reason: &str) {
        let conn = match self.ids.classify(conn) {
            None => return,
            Some(Classified::HttpTracker(h)) => {
                self.trackers.http_failed(h, reason, &mut self.ids);
                self.after_trackers(now);
                return;
            }
            Some(Classified::WebSeed(w)) => return self.webseed_connect_failed(now, w, reason),
            Some(Classified::Peer(id)) => id,
        };
        self.drop_conn(now, conn, reason, false);
        self.maintain(now);
    }

    /// Bytes arrived on a connection.
    pub fn handle_read(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        let conn = match self.ids.classify(conn) {
            None => return,
            Some(Classified::HttpTracker(h)) => {
                self.trackers
                    .http_read(now, h, data, &mut self.outputs, &mut self.ids);
                self.after_trackers(now);
                return;
            }
            Some(Classified::WebSeed(w)) => {
                return self.webseed_read(now, w, bytes::Bytes::copy_from_slice(data))
            }
            Some(Classified::Peer(id)) => id,
        };
        if self.mse.has_layer(conn) {
            self.handle_read_owned(now, conn, bytes::BytesMut::from(data));
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.session.handle_read(now, data);
        self.process_conn(now, conn);
        self.maintain(now);
    }

    /// Bytes arrived on a connection, in a buffer the engine may keep: a peer connection's decoder takes
    /// it over without copying (piece payloads stay slices of it until they are written). Otherwise the
    /// same as [`Engine::handle_read`].
    pub fn handle_read_owned(&mut self, now: Instant, conn: ConnId, data: bytes::BytesMut) {
        match self.ids.classify(conn) {
            Some(Classified::Peer(_)) => {}
            Some(Classified::WebSeed(w)) => return self.webseed_read(now, w, data.freeze()),
            _ => return self.handle_read(now, conn, &data),
        }
        let (data, rest) = match self.mse_read(now, conn, data) {
            mse::ReadOutcome::Payload(d, rest) => (d, rest),
            mse::ReadOutcome::Nothing => {
                self.flush(conn);
                self.maintain(now);
                return;
            }
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.session.handle_read_owned(now, data);
        if let Some(rest) = rest {
            c.session.handle_read_owned(now, rest);
        }
        self.process_conn(now, conn);
        self.maintain(now);
    }

    /// The remote end closed the connection, or the socket failed. Report nothing back.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        let conn = match self.ids.classify(conn) {
            None => return,
            Some(Classified::HttpTracker(h)) => {
                self.trackers
                    .http_closed(now, h, &mut self.outputs, &mut self.ids);
                self.after_trackers(now);
                return;
            }
            Some(Classified::WebSeed(w)) => return self.webseed_closed(now, w),
            Some(Classified::Peer(id)) => id,
        };
        self.drop_conn(now, conn, "connection closed by peer", false);
        self.maintain(now);
    }

    /// The socket took `bytes` of what was sent on `conn`.
    pub fn handle_flushed(&mut self, now: Instant, conn: ConnId, bytes: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.unflushed = c.unflushed.saturating_sub(bytes);
        self.flush(conn);
        self.pump_reads(conn);
        self.maintain(now);
    }

    /// A datagram arrived on the engine's UDP socket.
    /// KRPC goes to the DHT node, uTP to the uTP socket, the rest to the UDP trackers (`udp.rs`).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        match udp::classify(data) {
            DatagramKind::Krpc => {
                if let Some(d) = self.dht.as_mut() {
                    d.handle_datagram(now, from, data);
                }
                self.maintain(now);
                return;
            }
            DatagramKind::Utp => {
                self.utp_datagram(now, from, data);
                self.utp_events(now);
                self.maintain(now);
                return;
            }
            DatagramKind::Tracker => self.trackers.router.handle_datagram(now, from, data),
        }
        self.after_trackers(now);
    }

    /// A host-name lookup finished.
    pub fn handle_resolved(
        &mut self,
        now: Instant,
        id: ResolveId,
        result: Result<Vec<SocketAddr>, String>,
    ) {
        if self
            .dht
            .as_mut()
            .is_some_and(|d| d.resolved(now, id, &result))
        {
            self.maintain(now);
            return;
        }
        let result = match self.webseed_resolved(now, id, result) {
            Ok(()) => return,
            Err(result) => result,
        };
        if let Some(tid) = self.peer_resolves.remove(&id) {
            self.peer_hint_resolved(now, tid, result);
            self.maintain(now);
            return;
        }
        self.trackers
            .resolved(now, id, result, &mut self.outputs, &mut self.ids);
        self.after_trackers(now);
    }

    // ===== work ==================================================================================

    /// The driver's storage of `torrent` failed outside any job: a background flush (`fdatasync`)
    /// reported an error, so pieces written before it may not be on the disk. The torrent stops
    /// with the failure's message, as after a failed write; other torrents go on. A restart's check
    /// finds what the disk really holds (records claim only pieces a successful flush covered).
    pub fn handle_storage_failed(
        &mut self,
        now: Instant,
        torrent: TorrentId,
        failure: StorageFailure,
    ) {
        self.torrent_error(now, torrent, failure.message);
        self.maintain(now);
    }

    /// A job finished.
    pub fn handle_job_done(&mut self, now: Instant, id: JobId, result: JobResult) {
        let Some(info) = self.jobs.remove(&id) else {
            return;
        };
        if let JobResult::Failed(f) = &result {
            let torrent = info.torrent();
            match info {
                JobInfo::Read { conn, block, .. } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.reading_bytes = c.reading_bytes.saturating_sub(block.length as usize);
                    }
                }
                JobInfo::Verify { torrent, piece } => self.write_failed(torrent, piece),
            }
            self.torrent_error(now, torrent, f.message.clone());
            self.maintain(now);
            return;
        }
        match (info, result) {
            (JobInfo::Verify { torrent, piece }, JobResult::Written) => {
                self.piece_written(now, torrent, piece)
            }
            (JobInfo::Verify { torrent, piece }, JobResult::Mismatch) => {
                self.piece_mismatch(now, torrent, piece)
            }
            (
                JobInfo::Read {
                    torrent,
                    conn,
                    block,
                },
                JobResult::Read(data),
            ) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.reading_bytes = c.reading_bytes.saturating_sub(block.length as usize);
                    if c.session.send_block(now, block, data) {
                        if let Some(t) = self.torrents.get_mut(&torrent) {
                            t.uploaded += u64::from(block.length);
                            t.up_rate.record(now, u64::from(block.length));
                        }
                    }
                    self.flush(conn);
                    self.pump_reads(conn);
                }
            }
            (info, result) => {
                // A result of the wrong kind is a driver bug; treat it as a disk failure.
                let torrent = info.torrent();
                let kind = match result {
                    JobResult::Written => "written",
                    JobResult::Mismatch => "mismatch",
                    JobResult::Read(_) => "read",
                    JobResult::Failed(_) => "failure",
                };
                self.torrent_error(
                    now,
                    torrent,
                    format!("job {id:?} got a {kind} result for {info:?}"),
                );
            }
        }
        self.maintain(now);
    }

    // ===== time ==================================================================================

    /// The timer fired (or any time at or after `poll_timeout`).
    pub fn handle_timeout(&mut self, now: Instant) {
        let due = self.timers.due(now);
        for key in &due {
            if let TimerKey::Conn(id) = *key {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.session.handle_timeout(now);
                }
                self.process_conn(now, id);
            }
        }
        self.trackers
            .handle_timeout(now, &mut self.outputs, &mut self.ids);
        for key in &due {
            match *key {
                TimerKey::MetadataFetch(tid) => self.ext_handle_timeout(now, tid),
                TimerKey::Choke(tid) => {
                    if let Some(t) = self.torrents.get_mut(&tid) {
                        t.choke_dirty = true;
                    }
                }
                // Touching the torrent is enough: its upkeep sends what is due.
                TimerKey::Announce(tid) | TimerKey::Pex(tid) => {
                    let _ = self.torrents.get_mut(&tid);
                }
                TimerKey::RateLimits => self.wake_limited(now),
                TimerKey::Dht => {
                    if let Some(d) = self.dht.as_mut() {
                        d.handle_timeout(now);
                    }
                }
                TimerKey::WebSeeds => self.webseed_timeout(now),
                TimerKey::Utp => self.utp_timeout(now),
                TimerKey::Conn(_) | TimerKey::Trackers | TimerKey::Dial | TimerKey::Shutdown => {}
            }
        }
        self.after_trackers(now);
    }

    /// When to call `handle_timeout` next (`None`: only on other inputs): the earliest entry of the
    /// timer table, which every input leaves up to date.
    pub fn poll_timeout(&self) -> Option<Instant> {
        debug_assert!(
            self.conns.touched().is_empty(),
            "an input did not end with the upkeep (connection deadlines not refiled)"
        );
        debug_assert_eq!(
            self.timers.next(),
            self.poll_timeout_scan(),
            "the timer table disagrees with the components' deadlines"
        );
        self.timers.next()
    }

    /// `poll_timeout` computed by asking every component (debug builds check the table with it).
    #[cfg(debug_assertions)]
    fn poll_timeout_scan(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for c in self.conns.values() {
            consider(c.deadline());
        }
        for id in self.torrents.keys() {
            for key in TimerKey::of_torrent(*id) {
                consider(self.torrent_deadline(key));
            }
        }
        for at in self.global_deadlines() {
            consider(at);
        }
        next
    }

    #[cfg(not(debug_assertions))]
    fn poll_timeout_scan(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// A torrent-level deadline as its component states it now.
    fn torrent_deadline(&self, key: TimerKey) -> Option<Instant> {
        let (TimerKey::Choke(tid)
        | TimerKey::Announce(tid)
        | TimerKey::Pex(tid)
        | TimerKey::MetadataFetch(tid)) = key
        else {
            return None;
        };
        let t = self.torrents.get(&tid)?;
        match key {
            TimerKey::Choke(_) if t.is_running() && !t.conns.is_empty() => t.choker.poll_timeout(),
            TimerKey::Announce(_) if t.is_running() || !t.policy.is_stopped() => {
                t.policy.poll_timeout()
            }
            TimerKey::Pex(_) if t.is_running() && !t.private => t.pex_next,
            TimerKey::MetadataFetch(_) if t.is_running() => t.meta.fetch()?.fetcher.poll_timeout(),
            _ => None,
        }
    }

    /// The engine-wide deadlines as they stand now, in [`TimerKey::GLOBAL`]'s order (one call asks
    /// each component once: this runs after every input).
    fn global_deadlines(&self) -> [Option<Instant>; TimerKey::GLOBAL.len()] {
        [
            self.trackers.poll_timeout(),
            self.dial_due.filter(|_| self.shutdown_deadline.is_none()),
            self.shutdown_deadline.filter(|_| !self.shut_down),
            self.limits.poll_timeout(),
            self.dht.as_ref().and_then(dht::DhtGlue::poll_timeout),
            self.webseeds.poll_timeout(),
            self.utp.poll_timeout(),
        ]
    }

    /// Files the deadlines of everything the input touched (and the engine-wide ones): the end of
    /// every input, so the table never lags behind a component.
    pub(super) fn refile_timers(&mut self, torrents: &[TorrentId]) {
        for id in self.conns.take_touched() {
            let at = self.conns.get(&id).and_then(Conn::deadline);
            self.timers.set(TimerKey::Conn(id), at);
        }
        for tid in torrents {
            for key in TimerKey::of_torrent(*tid) {
                let at = self.torrent_deadline(key);
                self.timers.set(key, at);
            }
        }
        for (i, at) in self.global_deadlines().into_iter().enumerate() {
            self.timers.set_global(i, at);
        }
    }

    // ===== outputs ===============================================================================

    /// The next thing the driver must do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next event for front ends.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A snapshot of every torrent, in id order.
    pub fn stats(&self, now: Instant) -> Vec<TorrentStats> {
        self.torrents
            .keys()
            .filter_map(|id| self.torrent_stats(now, *id))
            .collect()
    }

    /// A snapshot of one torrent.
    pub fn torrent_stats(&self, now: Instant, torrent: TorrentId) -> Option<TorrentStats> {
        let t = self.torrents.get(&torrent)?;
        let files = t.file_stats();
        let wanted_bytes: u64 = files.iter().filter(|f| f.wanted).map(|f| f.length).sum();
        let have_bytes: u64 = files.iter().filter(|f| f.wanted).map(|f| f.have).sum();
        let mut peer_list = Vec::new();
        let mut seeds = 0;
        let pieces = t.meta.picker().map(Picker::num_pieces);
        for id in &t.conns {
            let Some(c) = self.conns.get(id) else {
                continue;
            };
            if !c.session.is_established() {
                continue;
            }
            let s = &c.session;
            let (count, seed) = match (s.peer_pieces(), pieces) {
                (PeerPieces::All, _) => (pieces.unwrap_or(0), true),
                (PeerPieces::Bitfield(b), Some(n)) => (b.count_ones(), b.count_ones() == n),
                (PeerPieces::Bitfield(_), None) => (0, false),
            };
            if seed {
                seeds += 1;
            }
            peer_list.push(PeerStats {
                addr: c.addr,
                peer_id: c.peer_id,
                client: s.peer_extensions().client.clone(),
                outgoing: c.outgoing,
                download_rate: s.download_rate(now),
                upload_rate: s.upload_rate(now),
                downloaded: s.downloaded(),
                uploaded: s.uploaded(),
                pieces: count,
                am_choking: s.am_choking(),
                am_interested: s.am_interested(),
                peer_choking: s.peer_choking(),
                peer_interested: s.peer_interested(),
                requests: s.outstanding_requests().count() as u32,
                snubbed: s.is_snubbed(),
            });
        }
        let download_rate = t.down_rate.rate(now);
        let left = wanted_bytes.saturating_sub(have_bytes);
        let eta = if left > 0 && download_rate > 0 && t.is_running() {
            Some(Duration::from_secs(left.div_ceil(download_rate)))
        } else {
            None
        };
        let state = match &t.run {
            RunState::Paused => TorrentState::Paused,
            RunState::Error(m) => TorrentState::Error(m.clone()),
            RunState::Running if matches!(t.meta, Meta::Fetching(_)) => {
                TorrentState::FetchingMetadata
            }
            RunState::Running if t.is_complete() => TorrentState::Seeding,
            RunState::Running => TorrentState::Downloading,
        };
        Some(TorrentStats {
            id: torrent,
            name: t.name.clone(),
            info_hash: t.info_hash,
            state,
            total_bytes: t.layout().map_or(0, Layout::total_length),
            wanted_bytes,
            have_bytes,
            downloaded: t.downloaded,
            uploaded: t.uploaded,
            download_rate,
            upload_rate: t.up_rate.rate(now),
            peers: peer_list.len() as u32,
            seeds,
            eta,
            have: t
                .meta
                .picker()
                .map_or_else(|| Bitfield::new(0), |p| p.have().clone()),
            in_flight: t.meta.picker().map_or_else(Vec::new, |p| {
                let mut v: Vec<u32> = p.partial_pieces().collect();
                v.sort_unstable();
                v
            }),
            availability: t.meta.picker().map_or_else(Vec::new, |p| {
                (0..p.have().len())
                    .map(|i| u16::try_from(p.availability(i)).unwrap_or(u16::MAX))
                    .collect()
            }),
            peer_list,
            trackers: t.policy.tracker_status(now),
            web_seeds: self.webseeds.stats(torrent, now),
            files,
        })
    }

    // ===== internals: connections ================================================================

    fn session_config(&self) -> SessionConfig {
        let mut c = self.config.session.clone();
        if c.listen_port.is_none() {
            c.listen_port = Some(self.config.listen_port);
        }
        c.advertise_encryption = self.mse.policy().advertises();
        c
    }

    /// Recomputes [`Engine::longest_piece`] (after a torrent was added or removed, or learned its
    /// metadata).
    fn update_longest_piece(&mut self) {
        self.longest_piece = self
            .torrents
            .values()
            .filter_map(|t| t.meta.info())
            .map(|info| u64::from(info.layout().piece_length()))
            .max()
            .unwrap_or(0);
    }

    fn new_job(&mut self, info: JobInfo, job: Job) {
        let id = JobId(self.next_job);
        self.next_job += 1;
        self.jobs.insert(id, info);
        self.outputs.push_back(Output::Job { id, job });
    }

    /// Outgoing connections still dialling.
    fn half_open(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.outgoing && !c.connected)
            .count()
    }

    /// When `maintain` could next dial an address of `t` that is backing off (only if slots allow;
    /// addresses blocked by caps are dialled when a connection ends, which is an input).
    fn next_connect_time(&self, t: &Torrent, now: Instant) -> Option<Instant> {
        if !t.is_running()
            || self.conns.len() >= self.config.max_connections
            || t.conns.len() >= self.config.max_peers_per_torrent
        {
            return None;
        }
        t.book.next_try(now)
    }
}

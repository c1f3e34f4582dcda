//! Web seeds (BEP 19) inside the engine: each `url-list` entry of a torrent is a seed that has every
//! piece, reached over HTTP(S) connections of their own kind ([`WebSeedConn`] ids).
//!
//! - **Seeds**: a torrent's `url-list`, or a magnet link's `ws=` (used once the metadata is known).
//! - **Picking**: a web-seed connection is a picker peer with every piece that does not count in the
//!   availability. It takes a piece the way a peer would (rarest first, so pieces no connected peer has
//!   come first; free blocks of started pieces before new ones), then the adjacent pieces after it
//!   while they are untouched, up to [`WebSeedConfig::run_bytes`]: one ranged `GET` per file the run
//!   touches (`webseed::plan`'s mapping), sent one after another on a keep-alive connection.
//! - **Data**: body bytes are cut into the picker's blocks (slices of the read buffers where a block
//!   lies in one, copied otherwise) and go through the same path as a peer's blocks: assembled,
//!   hashed and written by `Job::VerifyWrite`. A piece a web seed alone sent that fails its hash
//!   disables that seed for the session, as does a ban of its address; nothing unverified is written.
//! - **Answers**: `404`/`410` drop the seed for that file; `5xx`/`429` back off for `Retry-After` (or
//!   [`super::super::webseed::DEFAULT_BACKOFF`]); redirects are followed up to
//!   [`WebSeedConfig::max_redirects`] per request, to any host (archive.org sends every file to
//!   another one): a host name is resolved once through `Output::Resolve` and shared, the target
//!   host gets at most [`WebSeedConfig::max_conns_per_seed`] connections, `https` never goes down
//!   to `http`, and later ranges of a redirected file go to its new URL directly (a failure there
//!   forgets it); a server that ignores `Range`, or answers with other
//!   bytes than those asked, is disabled; connection failures and stalls longer than
//!   [`WebSeedConfig::idle_timeout`] back off exponentially. Claimed blocks go back to the picker
//!   whenever a connection ends.
//! - **Memory**: runs count in the engine's pending-piece cap like peers' pieces; past it no run
//!   starts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::bitfield::Bitfield;
use crate::metainfo::Layout;
use crate::peer::BlockRequest;
use crate::peer::RateMeter;
use crate::picker::{PeerKey, PeerPieces, BLOCK_SIZE};
use crate::time::Instant;
use crate::tracker::http::TrackerUrl;
use crate::webseed::http::{ClientEvent, HttpError, RangeClient};
use crate::webseed::{file_url, FileRange, Verdict};

use super::conn::WebSeedConn;
use super::io::{ConnId, Event, Output, ResolveId, TorrentId};
use super::torrent::{Known, Meta};
use super::Engine;

/// Tunables of web seeds.
#[derive(Debug, Clone)]
pub struct WebSeedConfig {
    /// Connections per web seed (default 4).
    pub max_conns_per_seed: usize,
    /// Most bytes of adjacent pieces one connection fetches per run (default 4 MiB).
    pub run_bytes: u64,
    /// A connection that receives nothing for this long fails (default 30 s).
    pub idle_timeout: Duration,
    /// Redirects followed per request (default 5).
    pub max_redirects: u8,
    /// First back-off after a failed connection or exchange; it doubles per failure, up to 5 min
    /// (default 5 s).
    pub retry: Duration,
}

impl Default for WebSeedConfig {
    fn default() -> Self {
        WebSeedConfig {
            max_conns_per_seed: 4,
            run_bytes: crate::webseed::DEFAULT_RUN_BYTES,
            idle_timeout: Duration::from_secs(30),
            max_redirects: 5,
            retry: Duration::from_secs(5),
        }
    }
}

/// What [`Engine::ws_claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// A run was claimed and planned.
    Run,
    /// Nothing this seed can serve is free.
    Nothing,
    /// The pending-piece cap is reached: wait for pieces to leave memory.
    NoMemory,
}

/// Connections in a row that may close before answering before the seed backs off.
const MAX_QUIET_CLOSES: u8 = 2;

/// Shortest back-off, even for `Retry-After: 0`.
const MIN_BACKOFF: Duration = Duration::from_secs(1);

/// Addresses of a redirect target's name kept to try in turn.
const MAX_HOST_ADDRS: usize = 8;

/// Longest back-off after repeated failures.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// A snapshot of one web seed of a torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSeedStats {
    /// The `url-list` entry.
    pub url: String,
    /// Open connections.
    pub connections: u32,
    /// Payload bytes received from it this session.
    pub downloaded: u64,
    /// Bytes per second received from it (over the session's rate window).
    pub download_rate: u64,
    /// `None` while usable; else why not (backing off, disabled).
    pub status: Option<String>,
    /// The last thing that went wrong with it (kept after it recovers), if anything did.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SeedState {
    Ready,
    Backoff(Instant),
    Disabled(String),
}

#[derive(Debug)]
struct Seed {
    url: String,
    base: Option<TrackerUrl>,
    addr: Option<SocketAddr>,
    resolving: bool,
    state: SeedState,
    failures: u32,
    /// Pieces it can serve (`None`: all; narrowed by files it answered 404 for).
    mask: Option<Bitfield>,
    missing: BTreeSet<usize>,
    /// Where files were redirected to (archive.org sends every file to another host): later ranges
    /// of a file go there directly instead of through a redirect each.
    redirected: BTreeMap<usize, TrackerUrl>,
    /// Every address its data came from (to recognise it among a failed piece's senders).
    addrs: BTreeSet<SocketAddr>,
    conns: BTreeSet<ConnId>,
    downloaded: u64,
    rate: RateMeter,
    last_error: Option<String>,
}

/// One HTTP request of a run: bytes `range` of file `file` (at torrent offset `at`), or, for a
/// padding file, zeros.
#[derive(Debug, Clone)]
struct Part {
    file: usize,
    range: Range<u64>,
    file_length: u64,
    at: u64,
    url: Option<TrackerUrl>,
}

#[derive(Debug)]
struct WsConn {
    torrent: TorrentId,
    seed: usize,
    key: PeerKey,
    addr: SocketAddr,
    /// The server it talks to (`None` until dialled); a part whose URL is elsewhere needs a new
    /// connection.
    endpoint: Option<Endpoint>,
    /// Whether the driver was asked to connect (`false` while the endpoint's name resolves).
    dialed: bool,
    connected: bool,
    client: RangeClient,
    parts: VecDeque<Part>,
    current: Option<Part>,
    redirects: u8,
    /// Connections in a row closed before answering (retried on a new connection up to
    /// [`MAX_QUIET_CLOSES`] times).
    quiet_closes: u8,
    /// Torrent offset of the next body byte, and the block being assembled there.
    pos: u64,
    pending: BytesMut,
}

/// A server of web-seed connections: host (name or address, as in the URL), port, and TLS.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    host: String,
    port: u16,
    tls: bool,
}

impl Endpoint {
    fn of(url: &TrackerUrl) -> Endpoint {
        Endpoint {
            host: url.host().to_owned(),
            port: url.port(),
            tls: url.tls(),
        }
    }
}

/// A redirect target's host name: its addresses once resolved, and the one in use (the next is
/// tried when it refuses connections, e.g. an IPv6 address on a network without IPv6).
#[derive(Debug, Default)]
struct HostAddr {
    addrs: Vec<SocketAddr>,
    current: usize,
    resolving: bool,
}

impl HostAddr {
    fn addr(&self) -> Option<SocketAddr> {
        self.addrs.get(self.current).copied()
    }
}

/// The engine's web seeds: per torrent, and per connection.
#[derive(Debug, Default)]
pub(super) struct WebSeeds {
    pub config: WebSeedConfig,
    seeds: BTreeMap<TorrentId, Vec<Seed>>,
    conns: BTreeMap<ConnId, WsConn>,
    resolves: BTreeMap<ResolveId, (TorrentId, usize)>,
    /// Host names that redirects led to (resolved once, shared by every seed and torrent).
    hosts: BTreeMap<(String, u16), HostAddr>,
    host_resolves: BTreeMap<ResolveId, (String, u16)>,
}

impl WebSeeds {
    /// No web seeds yet.
    pub fn new(config: WebSeedConfig) -> WebSeeds {
        WebSeeds {
            config,
            ..Default::default()
        }
    }

    /// The earliest deadline: a connection's idle timeout or a back-off's end.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(|c| c.client.poll_timeout());
        let seeds = self.seeds.values().flatten().filter_map(|s| match s.state {
            SeedState::Backoff(at) => Some(at),
            _ => None,
        });
        conns.chain(seeds).min()
    }

    /// Seed `idx` of torrent `tid`, if both still exist.
    fn seed_mut(&mut self, tid: TorrentId, idx: usize) -> Option<&mut Seed> {
        self.seeds.get_mut(&tid)?.get_mut(idx)
    }

    fn seed_of_addr(&self, tid: TorrentId, addr: SocketAddr) -> Option<usize> {
        self.seeds
            .get(&tid)?
            .iter()
            .position(|s| s.addrs.contains(&addr))
    }

    /// Whether `addr` is where one of the torrent's web seeds sent data from.
    pub fn is_seed_addr(&self, tid: TorrentId, addr: SocketAddr) -> bool {
        self.seed_of_addr(tid, addr).is_some()
    }

    /// The torrent's web seed URLs (its `url-list`, or a magnet link's `ws=`).
    pub fn urls(&self, tid: TorrentId) -> Vec<String> {
        self.seeds
            .get(&tid)
            .map(|l| l.iter().map(|s| s.url.clone()).collect())
            .unwrap_or_default()
    }

    /// A snapshot of the torrent's web seeds.
    pub fn stats(&self, tid: TorrentId, now: Instant) -> Vec<WebSeedStats> {
        let Some(seeds) = self.seeds.get(&tid) else {
            return Vec::new();
        };
        seeds
            .iter()
            .map(|s| WebSeedStats {
                url: s.url.clone(),
                connections: s.conns.len() as u32,
                downloaded: s.downloaded,
                download_rate: s.rate.rate(now),
                last_error: s.last_error.clone(),
                status: match &s.state {
                    SeedState::Ready => None,
                    SeedState::Backoff(at) => Some(format!(
                        "retrying in {}s ({})",
                        at.saturating_duration_since(now).as_secs(),
                        s.last_error.as_deref().unwrap_or("busy")
                    )),
                    SeedState::Disabled(why) => Some(format!("disabled: {why}")),
                },
            })
            .collect()
    }
}

/// The block of the torrent holding byte `pos`: (request, torrent offset of its first byte).
fn block_at(layout: &Layout, pos: u64) -> Option<(BlockRequest, u64)> {
    let pl = u64::from(layout.piece_length());
    let piece = u32::try_from(pos / pl).ok()?;
    let size = layout.piece_len(piece)?;
    let in_piece = pos - u64::from(piece) * pl;
    let offset = (in_piece / u64::from(BLOCK_SIZE)) as u32 * BLOCK_SIZE;
    let length = (size - offset).min(BLOCK_SIZE);
    Some((
        BlockRequest {
            piece,
            offset,
            length,
        },
        layout.piece_offset(piece) + u64::from(offset),
    ))
}

impl Engine {
    /// A torrent was added with `url-list` entries: they become its web seeds.
    pub(super) fn webseeds_add(&mut self, tid: TorrentId, urls: &[String]) {
        let mut list = Vec::new();
        for url in urls {
            if list.iter().any(|s: &Seed| s.url == *url) {
                continue;
            }
            let base = TrackerUrl::parse(url);
            let state = match &base {
                Ok(_) => SeedState::Ready,
                Err(e) => SeedState::Disabled(e.to_string()),
            };
            let addr = base.as_ref().ok().and_then(|b| {
                b.host()
                    .parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, b.port()))
            });
            list.push(Seed {
                url: url.clone(),
                base: base.ok(),
                addr,
                resolving: false,
                state,
                failures: 0,
                mask: None,
                missing: BTreeSet::new(),
                redirected: BTreeMap::new(),
                addrs: BTreeSet::new(),
                conns: BTreeSet::new(),
                downloaded: 0,
                rate: RateMeter::new(self.config.session.rate_window),
                last_error: None,
            });
        }
        if !list.is_empty() {
            self.webseeds.seeds.insert(tid, list);
        }
    }

    /// The upkeep of the touched torrents' web seeds: close what must stop, give idle connections
    /// a run, open connections for more runs.
    pub(super) fn drive_webseeds(&mut self, now: Instant, work: &[TorrentId]) {
        for &tid in work {
            if !self.webseeds.seeds.contains_key(&tid) {
                continue;
            }
            let gone = !self.torrents.contains_key(&tid);
            let active = !gone
                && self.shutdown_deadline.is_none()
                && self.torrents.get(&tid).is_some_and(|t| {
                    t.is_running() && t.meta.picker().is_some() && !t.is_complete()
                });
            if !active {
                let ids: Vec<ConnId> = self
                    .webseeds
                    .conns
                    .iter()
                    .filter(|(_, c)| c.torrent == tid)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.ws_close(now, id, None);
                }
                if gone {
                    self.webseeds.seeds.remove(&tid);
                    self.webseeds.resolves.retain(|_, (t, _)| *t != tid);
                }
                continue;
            }
            let count = self.webseeds.seeds.get(&tid).map_or(0, Vec::len);
            for idx in 0..count {
                self.drive_seed(now, tid, idx);
            }
        }
    }

    fn drive_seed(&mut self, now: Instant, tid: TorrentId, idx: usize) {
        let max = self.webseeds.config.max_conns_per_seed;
        let Some(seed) = self
            .webseeds
            .seeds
            .get_mut(&tid)
            .and_then(|l| l.get_mut(idx))
        else {
            return;
        };
        if let SeedState::Backoff(at) = seed.state {
            if at > now {
                return;
            }
            seed.state = SeedState::Ready;
        }
        if seed.state != SeedState::Ready {
            return;
        }
        let Some(base) = seed.base.clone() else {
            return;
        };
        let Some(addr) = seed.addr else {
            if !seed.resolving {
                seed.resolving = true;
                let id = self.trackers.new_resolve_id();
                self.webseeds.resolves.insert(id, (tid, idx));
                self.outputs.push_back(Output::Resolve {
                    id,
                    host: base.host().to_owned(),
                    port: base.port(),
                });
            }
            return;
        };
        // Idle connections first.
        let idle: Vec<ConnId> = seed
            .conns
            .iter()
            .copied()
            .filter(|id| {
                self.webseeds
                    .conns
                    .get(id)
                    .is_some_and(|c| c.connected && c.current.is_none() && c.parts.is_empty())
            })
            .collect();
        for id in idle {
            self.ws_send_next(now, id);
        }
        loop {
            let n = self
                .webseeds
                .seeds
                .get(&tid)
                .and_then(|l| l.get(idx))
                .map_or(usize::MAX, |s| s.conns.len());
            if n >= max {
                return;
            }
            let conn = self.ids.mint_web_seed();
            let id = conn.id();
            let key = PeerKey(id.0 as u32);
            let mut client = RangeClient::new(self.webseeds.config.idle_timeout);
            client.arm(now);
            self.webseeds.conns.insert(
                id,
                WsConn {
                    torrent: tid,
                    seed: idx,
                    key,
                    addr,
                    endpoint: None,
                    dialed: false,
                    connected: false,
                    client,
                    parts: VecDeque::new(),
                    current: None,
                    redirects: 0,
                    quiet_closes: 0,
                    pos: 0,
                    pending: BytesMut::new(),
                },
            );
            if self.ws_claim(now, id) != Claim::Run {
                self.webseeds.conns.remove(&id);
                self.ids.release(id);
                return;
            }
            if let Some(s) = self.webseeds.seed_mut(tid, idx) {
                s.conns.insert(id);
            }
            if !self.ws_dial(now, id) {
                // The run's server has its connections already.
                self.ws_close(now, id, None);
                return;
            }
        }
    }

    /// Connects `id` to the server of its next request (a redirect may have moved a file to
    /// another host), resolving a host name first; `false` if that server already has
    /// [`WebSeedConfig::max_conns_per_seed`] connections (the caller closes `id`).
    fn ws_dial(&mut self, _now: Instant, id: ConnId) -> bool {
        let max = self.webseeds.config.max_conns_per_seed;
        let Some(c) = self.webseeds.conns.get(&id) else {
            return false;
        };
        let Some(seed) = self
            .webseeds
            .seeds
            .get(&c.torrent)
            .and_then(|l| l.get(c.seed))
        else {
            return false;
        };
        let Some(url) = c
            .parts
            .iter()
            .find_map(|p| p.url.clone())
            .or_else(|| seed.base.clone())
        else {
            return false;
        };
        let end = Endpoint::of(&url);
        let same = self
            .webseeds
            .conns
            .iter()
            .filter(|(other, o)| **other != id && o.endpoint.as_ref() == Some(&end))
            .count();
        if same >= max {
            return false;
        }
        let base_addr = seed
            .base
            .as_ref()
            .filter(|b| b.host() == end.host && b.port() == end.port)
            .and(seed.addr);
        let known = match end.host.parse::<IpAddr>() {
            Ok(ip) => Some(SocketAddr::new(ip, end.port)),
            Err(_) => base_addr.or_else(|| {
                self.webseeds
                    .hosts
                    .get(&(end.host.clone(), end.port))
                    .and_then(HostAddr::addr)
            }),
        };
        let key = (end.host.clone(), end.port);
        let Some(c) = self.webseeds.conns.get_mut(&id) else {
            return false;
        };
        c.endpoint = Some(end.clone());
        match known {
            Some(addr) => {
                c.addr = addr;
                c.dialed = true;
                self.outputs.push_back(Output::Connect {
                    conn: id,
                    addr,
                    tls: end.tls.then(|| end.host.clone()),
                });
            }
            None => {
                // Parked until the name resolves (its idle timeout bounds the wait).
                c.dialed = false;
                let h = self.webseeds.hosts.entry(key.clone()).or_default();
                if !h.resolving {
                    h.resolving = true;
                    let rid = self.trackers.new_resolve_id();
                    self.webseeds.host_resolves.insert(rid, key);
                    self.outputs.push_back(Output::Resolve {
                        id: rid,
                        host: end.host,
                        port: end.port,
                    });
                }
            }
        }
        true
    }

    /// Claims a run of blocks for connection `id` and plans its requests; `false` if there is
    /// nothing to fetch (or no memory for it).
    fn ws_claim(&mut self, _now: Instant, id: ConnId) -> Claim {
        if self.pieces.bytes() >= self.pending_cap() {
            // Woken by `wake_held_back` once memory is freed.
            if let Some(c) = self.webseeds.conns.get(&id) {
                self.held_back.insert(c.torrent);
            }
            return Claim::NoMemory;
        }
        let run_bytes = self.webseeds.config.run_bytes;
        let Some(c) = self.webseeds.conns.get(&id) else {
            return Claim::Nothing;
        };
        let (tid, idx, key) = (c.torrent, c.seed, c.key);
        let Some(seed) = self.webseeds.seeds.get(&tid).and_then(|l| l.get(idx)) else {
            return Claim::Nothing;
        };
        let Some(t) = self.torrents.get_mut(&tid) else {
            return Claim::Nothing;
        };
        let Meta::Known(known) = &mut t.meta else {
            return Claim::Nothing;
        };
        let Known { info, picker, .. } = &mut **known;
        // No endgame duplicates: a web seed's connections would only race each other (and a
        // peer's blocks) for the same bytes.
        if picker.in_endgame() {
            return Claim::Nothing;
        }
        let pieces = match &seed.mask {
            None => PeerPieces::All,
            Some(m) => PeerPieces::Bitfield(m),
        };
        let first = picker.pick(key, pieces, 1, &mut self.rng);
        let Some(b0) = first.first().copied() else {
            return Claim::Nothing;
        };
        let mut blocks = first;
        let n = picker.block_count(b0.piece) as usize;
        if !picker.in_endgame() {
            blocks.extend(picker.pick_allowed_fast(key, pieces, &[b0.piece], n, &mut self.rng));
        }
        let mut bytes = u64::from(picker.piece_size(b0.piece));
        let mut q = b0.piece + 1;
        while q < picker.num_pieces() && bytes + u64::from(picker.piece_size(q)) <= run_bytes {
            let n = picker.block_count(q) as usize;
            if picker.in_endgame() {
                break;
            }
            let more = picker.pick_allowed_fast(key, pieces, &[q], n, &mut self.rng);
            let whole = more.len() == n && more.first().is_some_and(|b| b.offset == 0);
            if more.is_empty() {
                break;
            }
            bytes += u64::from(picker.piece_size(q));
            blocks.extend(more);
            if !whole {
                break;
            }
            q += 1;
        }
        blocks.sort_unstable_by_key(|b| (b.piece, b.offset));
        blocks.dedup();
        // Memory: the pieces enter the pending count as a peer's would.
        for b in &blocks {
            self.pieces.start(tid, b.piece, picker.piece_size(b.piece));
        }
        // Contiguous stretches of the torrent, then the file ranges of each.
        let layout = info.layout();
        let multi = info.is_multi_file();
        let name = info.name().to_owned();
        let base = seed.url.clone();
        let mut stretches: Vec<Range<u64>> = Vec::new();
        for b in &blocks {
            let start = layout.piece_offset(b.piece) + u64::from(b.offset);
            let end = start + u64::from(b.length);
            match stretches.last_mut() {
                Some(s) if s.end == start => s.end = end,
                _ => stretches.push(start..end),
            }
        }
        let mut parts = VecDeque::new();
        for s in &stretches {
            let Some(slices) = layout.byte_ranges(s.start, s.end - s.start) else {
                continue;
            };
            let mut at = s.start;
            for slice in slices {
                let Some(file) = layout.files().get(slice.file_index) else {
                    continue;
                };
                let url = if file.padding {
                    None
                } else {
                    match seed.redirected.get(&slice.file_index) {
                        Some(moved) => Some(moved.clone()),
                        None => TrackerUrl::parse(&file_url(&base, &name, multi, file)).ok(),
                    }
                };
                parts.push_back(Part {
                    file: slice.file_index,
                    range: slice.offset..slice.offset + slice.length,
                    file_length: file.length,
                    at,
                    url,
                });
                at += slice.length;
            }
        }
        let Some(c) = self.webseeds.conns.get_mut(&id) else {
            return Claim::Nothing;
        };
        c.parts = parts;
        c.redirects = 0;
        if c.parts.is_empty() {
            Claim::Nothing
        } else {
            Claim::Run
        }
    }

    /// Sends the connection's next request (padding parts are zeros, delivered at once); at the
    /// end of its run, claims the next run or closes.
    fn ws_send_next(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(c) = self.webseeds.conns.get_mut(&id) else {
                return;
            };
            let Some(part) = c.parts.pop_front() else {
                c.current = None;
                match self.ws_next_run_after(now, id) {
                    Claim::Run => continue,
                    // Kept open, idle: the seed's upkeep gives it a run once memory is freed.
                    Claim::NoMemory => return,
                    Claim::Nothing => return self.ws_close(now, id, None),
                }
            };
            if c.pos != part.at {
                c.pos = part.at;
                c.pending.clear();
            }
            let Some(url) = part.url.clone() else {
                let zeros = Bytes::from(vec![0u8; (part.range.end - part.range.start) as usize]);
                c.current = Some(part);
                self.ws_data(now, id, zeros);
                if let Some(c) = self.webseeds.conns.get_mut(&id) {
                    c.current = None;
                }
                continue;
            };
            if c.endpoint.as_ref() != Some(&Endpoint::of(&url)) {
                // This file lives on another server (a redirect moved it).
                c.parts.push_front(part);
                return self.ws_reconnect(now, id);
            }
            let asked = FileRange {
                file_index: part.file,
                range: part.range.clone(),
                buf_offset: 0,
            };
            let bytes = c.client.start(now, &url, asked, part.file_length);
            c.current = Some(part);
            self.outputs.push_back(Output::Send {
                conn: id,
                data: bytes,
            });
            return;
        }
    }

    /// A run ended on a reusable connection: the next one, if there is one.
    fn ws_next_run_after(&mut self, now: Instant, id: ConnId) -> Claim {
        let Some(c) = self.webseeds.conns.get(&id) else {
            return Claim::Nothing;
        };
        if !c.client.is_reusable() {
            return Claim::Nothing;
        }
        let (tid, idx) = (c.torrent, c.seed);
        let usable = self
            .webseeds
            .seeds
            .get(&tid)
            .and_then(|l| l.get(idx))
            .is_some_and(|s| s.state == SeedState::Ready)
            && self
                .torrents
                .get(&tid)
                .is_some_and(|t| t.is_running() && !t.is_complete())
            && self.shutdown_deadline.is_none();
        if usable {
            self.ws_claim(now, id)
        } else {
            Claim::Nothing
        }
    }

    /// Body bytes of the current request: cut into blocks and handed to the piece assembly.
    fn ws_data(&mut self, now: Instant, id: ConnId, mut data: Bytes) {
        let Some(c) = self.webseeds.conns.get_mut(&id) else {
            return;
        };
        let tid = c.torrent;
        let Some(layout) = self.torrents.get(&tid).and_then(|t| t.layout()) else {
            return;
        };
        let mut blocks = Vec::new();
        while !data.is_empty() {
            let Some((block, start)) = block_at(layout, c.pos) else {
                break;
            };
            let need = (start + u64::from(block.length) - c.pos) as usize;
            if c.pending.is_empty() && c.pos == start && data.len() >= need {
                blocks.push((block, data.split_to(need)));
                c.pos += need as u64;
                continue;
            }
            let take = need.min(data.len());
            c.pending.extend_from_slice(&data[..take]);
            let _ = data.split_to(take);
            c.pos += take as u64;
            if take == need {
                blocks.push((block, c.pending.split().freeze()));
            }
        }
        c.quiet_closes = 0;
        let (key, addr, idx) = (c.key, c.addr, c.seed);
        let mut got = 0u64;
        for (block, bytes) in blocks {
            got += bytes.len() as u64;
            self.accept_block(now, tid, key, addr, block, bytes);
        }
        if let Some(s) = self.webseeds.seed_mut(tid, idx) {
            s.downloaded += got;
            s.rate.record(now, got);
            s.addrs.insert(addr);
            s.failures = 0;
        }
    }

    /// Events of a connection's HTTP client.
    fn ws_events(&mut self, now: Instant, id: ConnId, events: Vec<ClientEvent>) {
        for e in events {
            if !self.webseeds.conns.contains_key(&id) {
                return;
            }
            match e {
                ClientEvent::Data(bytes) => self.ws_data(now, id, bytes),
                ClientEvent::Done { keep_alive } => {
                    if let Some(c) = self.webseeds.conns.get_mut(&id) {
                        c.current = None;
                        c.redirects = 0;
                        if keep_alive {
                            self.ws_send_next(now, id);
                        } else if c.parts.is_empty() {
                            self.ws_close(now, id, None);
                        } else {
                            self.ws_reconnect(now, id);
                        }
                    }
                }
                ClientEvent::Answer(Verdict::Redirect(location)) => {
                    self.ws_redirect(now, id, &location)
                }
                ClientEvent::Answer(Verdict::FileMissing) => self.ws_file_missing(now, id),
                ClientEvent::Answer(Verdict::Backoff(wait)) => {
                    self.ws_seed_backoff(now, id, wait, "server busy".to_owned())
                }
                ClientEvent::Answer(Verdict::Data { .. }) => {}
                ClientEvent::Failed(HttpError::Refused(e)) => {
                    self.ws_disable(now, id, e.to_string())
                }
                ClientEvent::Failed(HttpError::ClosedBeforeAnswer)
                    if self
                        .webseeds
                        .conns
                        .get(&id)
                        .is_some_and(|c| c.quiet_closes < MAX_QUIET_CLOSES) =>
                {
                    if let Some(c) = self.webseeds.conns.get_mut(&id) {
                        c.quiet_closes += 1;
                    }
                    self.ws_reconnect(now, id);
                }
                ClientEvent::Failed(e) => self.ws_failed(now, id, e.to_string()),
            }
        }
    }

    /// Moves a connection's remaining run to a new connection, to the server of its next request:
    /// after `Connection: close`, a redirect, or when the next file lives elsewhere.
    fn ws_reconnect(&mut self, now: Instant, id: ConnId) {
        let Some(mut c) = self.webseeds.conns.remove(&id) else {
            return;
        };
        self.ids.release(id);
        if c.dialed {
            self.outputs.push_back(Output::Close { conn: id });
        }
        if let Some(part) = c.current.take() {
            c.parts.push_front(part);
        }
        let conn = self.ids.mint_web_seed();
        let new = conn.id();
        c.connected = false;
        c.dialed = false;
        c.endpoint = None;
        c.client = RangeClient::new(self.webseeds.config.idle_timeout);
        c.client.arm(now);
        if let Some(s) = self
            .webseeds
            .seeds
            .get_mut(&c.torrent)
            .and_then(|l| l.get_mut(c.seed))
        {
            s.conns.remove(&id);
            s.conns.insert(new);
        }
        self.webseeds.conns.insert(new, c);
        if !self.ws_dial(now, new) {
            // The target server has its connections: the run goes back to the picker.
            self.ws_close(now, new, None);
        }
    }

    /// A `3xx` for the current request: it goes to `location` (on this server or another one,
    /// never from `https` down to `http`), and later ranges of the same file go there directly.
    fn ws_redirect(&mut self, now: Instant, id: ConnId, location: &str) {
        let max = self.webseeds.config.max_redirects;
        let Some(c) = self.webseeds.conns.get_mut(&id) else {
            return;
        };
        c.redirects += 1;
        if c.redirects > max {
            return self.ws_disable(now, id, format!("more than {max} redirects"));
        }
        let Some(part) = c.current.as_mut() else {
            return;
        };
        let Some(url) = part.url.as_ref() else {
            return;
        };
        let next = match url.join(location) {
            Ok(n) => n,
            Err(e) => return self.ws_disable(now, id, format!("redirect to {location:?}: {e}")),
        };
        let old = part.url.replace(next.clone());
        let (file, tid, idx) = (part.file, c.torrent, c.seed);
        // Requests of the same file already planned (on this connection or the seed's others) go
        // to the new place too, instead of through the same redirect again.
        for o in self.webseeds.conns.values_mut() {
            if o.torrent == tid && o.seed == idx {
                for p in o
                    .parts
                    .iter_mut()
                    .filter(|p| p.file == file && p.url == old)
                {
                    p.url = Some(next.clone());
                }
            }
        }
        if let Some((_, s)) = self.seed_mut(id) {
            s.redirected.insert(file, next);
        }
        self.ws_reconnect(now, id);
    }

    /// `404`/`410`: the seed lacks the current file; it is not asked for that file again. A 404
    /// from where an earlier redirect sent the file (not this request's) only forgets that
    /// redirect: the file is asked at its own URL again at once.
    fn ws_file_missing(&mut self, now: Instant, id: ConnId) {
        let Some(c) = self.webseeds.conns.get(&id) else {
            return;
        };
        let (tid, idx) = (c.torrent, c.seed);
        let file = c.current.as_ref().map(|p| p.file);
        let stale = c.redirects == 0
            && file.is_some_and(|f| {
                self.webseeds
                    .seeds
                    .get(&tid)
                    .and_then(|l| l.get(idx))
                    .and_then(|s| s.redirected.get(&f))
                    .is_some_and(|u| c.current.as_ref().and_then(|p| p.url.as_ref()) == Some(u))
            });
        if let (true, Some(f)) = (stale, file) {
            let own = self.ws_own_url(tid, idx, f);
            if let Some(s) = self.webseeds.seed_mut(tid, idx) {
                s.redirected.remove(&f);
            }
            if let Some(part) = self
                .webseeds
                .conns
                .get_mut(&id)
                .and_then(|c| c.current.as_mut())
            {
                part.url = own;
            }
            return self.ws_reconnect(now, id);
        }
        let layout = self.torrents.get(&tid).and_then(|t| t.layout()).cloned();
        if let (Some(file), Some(layout), Some(s)) =
            (file, layout, self.webseeds.seed_mut(tid, idx))
        {
            s.missing.insert(file);
            let mask = s
                .mask
                .get_or_insert_with(|| Bitfield::full(layout.piece_count()));
            if let Some(range) = layout.file_pieces(file) {
                for p in range {
                    mask.clear(p);
                }
            }
            let path = layout
                .files()
                .get(file)
                .map(|f| f.display_path())
                .unwrap_or_default();
            s.last_error = Some(format!("404 for {path}"));
            self.events.push_back(Event::WebSeedError {
                torrent: tid,
                url: s.url.clone(),
                message: format!("server does not have {path}; not asked for it again"),
            });
        }
        self.ws_close(now, id, None);
    }

    /// File `file`'s URL at seed `idx` of `tid`, before any redirect.
    fn ws_own_url(&self, tid: TorrentId, idx: usize, file: usize) -> Option<TrackerUrl> {
        let seed = self.webseeds.seeds.get(&tid)?.get(idx)?;
        let Meta::Known(known) = &self.torrents.get(&tid)?.meta else {
            return None;
        };
        let info = &known.info;
        let entry = info.layout().files().get(file)?;
        TrackerUrl::parse(&file_url(
            &seed.url,
            info.name(),
            info.is_multi_file(),
            entry,
        ))
        .ok()
    }

    fn seed_mut(&mut self, id: ConnId) -> Option<(TorrentId, &mut Seed)> {
        let c = self.webseeds.conns.get(&id)?;
        let tid = c.torrent;
        let seed = self.webseeds.seeds.get_mut(&tid)?.get_mut(c.seed)?;
        Some((tid, seed))
    }

    /// The server said "later": the whole seed waits.
    fn ws_seed_backoff(&mut self, now: Instant, id: ConnId, wait: Duration, why: String) {
        let Some((tid, s)) = self.seed_mut(id) else {
            return;
        };
        s.state = SeedState::Backoff(now + wait.max(MIN_BACKOFF));
        s.last_error = Some(why.clone());
        let url = s.url.clone();
        let ids: Vec<ConnId> = s.conns.iter().copied().collect();
        self.events.push_back(Event::WebSeedError {
            torrent: tid,
            url,
            message: format!("{why}; retrying in {}s", wait.as_secs()),
        });
        for other in ids {
            self.ws_close(now, other, None);
        }
    }

    /// A connection or exchange failed: the seed backs off, longer after each failure in a row.
    fn ws_failed(&mut self, now: Instant, id: ConnId, why: String) {
        let retry = self.webseeds.config.retry;
        let end = self
            .webseeds
            .conns
            .get(&id)
            .and_then(|c| c.endpoint.clone());
        let Some((_, s)) = self.seed_mut(id) else {
            return;
        };
        // Files redirected to a failing server are asked at their own URL again after the wait.
        if let Some(end) = end {
            s.redirected.retain(|_, u| Endpoint::of(u) != end);
        }
        s.failures = s.failures.saturating_add(1);
        let wait = retry
            .saturating_mul(1u32 << (s.failures - 1).min(10))
            .min(MAX_RETRY);
        self.ws_seed_backoff(now, id, wait, why);
    }

    /// The seed sent something unusable: it is not used again this session.
    fn ws_disable(&mut self, now: Instant, id: ConnId, why: String) {
        if let Some(c) = self.webseeds.conns.get(&id) {
            let (tid, idx) = (c.torrent, c.seed);
            self.webseed_disable(now, tid, idx, why);
        }
    }

    /// Disables seed `idx` of `tid` and closes its connections.
    fn webseed_disable(&mut self, now: Instant, tid: TorrentId, idx: usize, why: String) {
        let Some(s) = self.webseeds.seed_mut(tid, idx) else {
            return;
        };
        if matches!(s.state, SeedState::Disabled(_)) {
            return;
        }
        s.state = SeedState::Disabled(why.clone());
        s.last_error = Some(why.clone());
        self.events.push_back(Event::WebSeedError {
            torrent: tid,
            url: s.url.clone(),
            message: format!("disabled: {why}"),
        });
        let ids: Vec<ConnId> = s.conns.iter().copied().collect();
        for id in ids {
            self.ws_close(now, id, None);
        }
    }

    /// A piece that only a web seed at `addr` sent failed its hash, or `addr` was banned: that
    /// seed is disabled. Returns whether `addr` was a web seed's.
    pub(super) fn webseed_bad_data(
        &mut self,
        now: Instant,
        tid: TorrentId,
        addr: SocketAddr,
        why: &str,
    ) -> bool {
        let Some(idx) = self.webseeds.seed_of_addr(tid, addr) else {
            return false;
        };
        self.webseed_disable(now, tid, idx, why.to_owned());
        true
    }

    /// Closes a web-seed connection (telling the driver unless `reason` says it is gone already)
    /// and gives its claimed blocks back to the picker.
    fn ws_close(&mut self, now: Instant, id: ConnId, closed_by_remote: Option<()>) {
        let Some(c) = self.webseeds.conns.remove(&id) else {
            return;
        };
        self.ids.release(id);
        if closed_by_remote.is_none() && c.dialed {
            self.outputs.push_back(Output::Close { conn: id });
        }
        self.ws_forget(now, id, &c);
    }

    fn ws_forget(&mut self, _now: Instant, id: ConnId, c: &WsConn) {
        if let Some(s) = self
            .webseeds
            .seeds
            .get_mut(&c.torrent)
            .and_then(|l| l.get_mut(c.seed))
        {
            s.conns.remove(&id);
        }
        let mut released = 0;
        if let Some(t) = self.torrents.get_mut(&c.torrent) {
            if let Some(p) = t.meta.picker_mut() {
                released = p.release_peer(c.key);
            }
            if released > 0 {
                t.refill = true;
            }
        }
        if released > 0 {
            self.sync_pieces(c.torrent);
        }
        // The torrent's upkeep looks at its seeds again (a back-off ends, another run starts).
        self.torrents.mark(&c.torrent);
    }

    // ----- inputs (dispatched from the engine's handlers by connection kind) -----------------------

    pub(super) fn webseed_connected(&mut self, now: Instant, conn: WebSeedConn) {
        let id = conn.id();
        if let Some(c) = self.webseeds.conns.get_mut(&id) {
            c.connected = true;
            c.client.arm(now);
        }
        self.ws_send_next(now, id);
        self.maintain(now);
    }

    pub(super) fn webseed_connect_failed(&mut self, now: Instant, conn: WebSeedConn, reason: &str) {
        let id = conn.id();
        // A redirect target's next address is tried at once; after the last one, the name is
        // looked up again next time.
        let end = self
            .webseeds
            .conns
            .get(&id)
            .and_then(|c| c.endpoint.as_ref())
            .map(|e| (e.host.clone(), e.port));
        if let Some(key) = end {
            if let Some(h) = self.webseeds.hosts.get_mut(&key) {
                h.current += 1;
                if h.addr().is_some() {
                    if let Some(c) = self.webseeds.conns.get_mut(&id) {
                        // The driver has forgotten this connection already.
                        c.dialed = false;
                    }
                    self.ws_reconnect(now, id);
                    self.maintain(now);
                    return;
                }
                self.webseeds.hosts.remove(&key);
            }
        }
        let url = self
            .seed_mut(id)
            .map(|(_, s)| s.url.clone())
            .unwrap_or_default();
        self.ws_failed(now, id, format!("cannot connect to {url}: {reason}"));
        self.ws_close(now, id, Some(()));
        self.maintain(now);
    }

    pub(super) fn webseed_read(&mut self, now: Instant, conn: WebSeedConn, data: Bytes) {
        let id = conn.id();
        let mut events = Vec::new();
        if let Some(c) = self.webseeds.conns.get_mut(&id) {
            c.client.handle_data(now, data, &mut events);
        }
        self.ws_events(now, id, events);
        self.maintain(now);
    }

    pub(super) fn webseed_closed(&mut self, now: Instant, conn: WebSeedConn) {
        let id = conn.id();
        let mut events = Vec::new();
        if let Some(c) = self.webseeds.conns.get_mut(&id) {
            c.client.handle_eof(&mut events);
        }
        self.ws_events(now, id, events);
        // Still open after the events: the server closed an idle keep-alive connection.
        if let Some(c) = self.webseeds.conns.get(&id) {
            if c.current.is_some() || !c.parts.is_empty() {
                self.ws_reconnect(now, id);
            } else {
                self.ws_close(now, id, Some(()));
            }
        }
        self.maintain(now);
    }

    pub(super) fn webseed_resolved(
        &mut self,
        now: Instant,
        id: ResolveId,
        result: Result<Vec<SocketAddr>, String>,
    ) -> Result<(), Result<Vec<SocketAddr>, String>> {
        if let Some(key) = self.webseeds.host_resolves.remove(&id) {
            self.ws_host_resolved(now, key, result);
            self.maintain(now);
            return Ok(());
        }
        let Some((tid, idx)) = self.webseeds.resolves.remove(&id) else {
            return Err(result);
        };
        if let Some(s) = self
            .webseeds
            .seeds
            .get_mut(&tid)
            .and_then(|l| l.get_mut(idx))
        {
            s.resolving = false;
            match result.as_ref().ok().and_then(|a| a.first().copied()) {
                Some(addr) => s.addr = Some(addr),
                None => {
                    let why = match result {
                        Err(e) => format!("cannot resolve: {e}"),
                        Ok(_) => "host has no address".to_owned(),
                    };
                    s.failures = s.failures.saturating_add(1);
                    s.state = SeedState::Backoff(
                        now + MAX_RETRY.min(self.webseeds.config.retry * s.failures),
                    );
                    s.last_error = Some(why);
                }
            }
        }
        self.torrents.mark(&tid);
        self.maintain(now);
        Ok(())
    }

    /// A redirect target's name resolved: the connections waiting for it connect, or fail.
    fn ws_host_resolved(
        &mut self,
        now: Instant,
        key: (String, u16),
        result: Result<Vec<SocketAddr>, String>,
    ) {
        let entry = self.webseeds.hosts.entry(key.clone()).or_default();
        entry.resolving = false;
        entry.addrs = result
            .as_ref()
            .map(|a| a.iter().take(MAX_HOST_ADDRS).copied().collect())
            .unwrap_or_default();
        entry.current = 0;
        let addr = entry.addr();
        let waiting: Vec<ConnId> = self
            .webseeds
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.dialed
                    && c.endpoint
                        .as_ref()
                        .is_some_and(|e| e.host == key.0 && e.port == key.1)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            match addr {
                Some(addr) => {
                    let Some(c) = self.webseeds.conns.get_mut(&id) else {
                        continue;
                    };
                    let tls = c
                        .endpoint
                        .as_ref()
                        .and_then(|e| e.tls.then(|| e.host.clone()));
                    c.addr = addr;
                    c.dialed = true;
                    c.client.arm(now);
                    self.outputs.push_back(Output::Connect {
                        conn: id,
                        addr,
                        tls,
                    });
                }
                None => {
                    let why = match &result {
                        Err(e) => format!("cannot resolve {}: {e}", key.0),
                        Ok(_) => format!("{} has no address", key.0),
                    };
                    self.ws_failed(now, id, why);
                    self.ws_close(now, id, None);
                }
            }
        }
    }

    /// Idle timeouts of connections and ends of back-offs.
    pub(super) fn webseed_timeout(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self
            .webseeds
            .conns
            .iter()
            .filter(|(_, c)| c.client.poll_timeout().is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let mut events = Vec::new();
            if let Some(c) = self.webseeds.conns.get_mut(&id) {
                c.client.handle_timeout(now, &mut events);
            }
            self.ws_events(now, id, events);
        }
        let due: Vec<TorrentId> = self
            .webseeds
            .seeds
            .iter()
            .filter(|(_, l)| {
                l.iter()
                    .any(|s| matches!(s.state, SeedState::Backoff(at) if at <= now))
            })
            .map(|(t, _)| *t)
            .collect();
        for tid in due {
            if let Some(l) = self.webseeds.seeds.get_mut(&tid) {
                for s in l.iter_mut() {
                    if matches!(s.state, SeedState::Backoff(at) if at <= now) {
                        s.state = SeedState::Ready;
                    }
                }
            }
            self.torrents.mark(&tid);
        }
    }
}

#[cfg(test)]
mod tests;

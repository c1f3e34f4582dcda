//! One DHT node as a sans-IO state machine: datagrams, time and randomness in; datagrams, events and
//! deadlines out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::bencode::{self, OwnedValue, Value};
use crate::rng::{CoreRng, RngExt};
use crate::time::Instant;
use crate::types::InfoHash;

use super::id::NodeId;
use super::krpc::{
    self, decode_nodes, encode_nodes, error_code, Body, Message, NodeInfo, Query, QueryKind,
    Response, Want, MAX_DATAGRAM,
};
use super::store::{PeerStore, StoreLimits, Tokens};
use super::table::{Insert, RoutingTable, K};

/// How often housekeeping runs (store expiry, bucket refresh, pings of questionable nodes).
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);
/// The client version we send in `v`: "HB" and version 0.1.
pub const VERSION: [u8; 4] = *b"HB\x00\x01";
/// Candidates a lookup remembers at most (the closest are kept).
const MAX_LOOKUP_CANDIDATES: usize = 8 * K;
/// Distinct peers one lookup reports at most.
const MAX_LOOKUP_PEERS: usize = 1024;

/// Tunables and caps of a [`Dht`] node. The defaults suit a client on the public DHT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtConfig {
    /// BEP 43: send `ro=1`, answer no queries, stay out of others' routing tables.
    pub read_only: bool,
    /// Our external address, if known: the node id is then made per BEP 42 (unless it is a local one).
    pub external_ip: Option<IpAddr>,
    /// Only add nodes whose id is valid for their address under BEP 42 (local addresses exempt).
    pub enforce_bep42: bool,
    /// How long to wait for an answer before counting a query as failed.
    pub query_timeout: Duration,
    /// Queries one lookup keeps in flight at once (Kademlia's alpha).
    pub alpha: usize,
    /// Queries in flight at once over everything this node does.
    pub max_outstanding: usize,
    /// Of those, pings of unknown nodes that queried us (so a flood of spoofed queries cannot starve
    /// lookups).
    pub max_candidate_pings: usize,
    /// Lookups running at once.
    pub max_lookups: usize,
    /// Limits of the announced-peer store.
    pub store: StoreLimits,
    /// Peers in one `get_peers` reply at most.
    pub max_values_per_response: usize,
    /// Replies (responses and errors) to one IP address per second at most.
    pub max_responses_per_ip_per_sec: u32,
    /// Replies per second at most, over all addresses.
    pub max_responses_per_sec: u32,
    /// Addresses the per-IP limiter tracks at once; a new address beyond that is refused for the rest
    /// of the second.
    pub rate_limiter_entries: usize,
    /// Datagrams waiting in [`Dht::poll_transmit`] at most; replies beyond it are dropped.
    pub max_transmit_queue: usize,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            read_only: false,
            external_ip: None,
            enforce_bep42: false,
            query_timeout: Duration::from_secs(2),
            alpha: 3,
            max_outstanding: 256,
            max_candidate_pings: 32,
            max_lookups: 64,
            store: StoreLimits {
                max_info_hashes: 4096,
                max_peers_per_hash: 128,
                max_peers_total: 32_768,
                ttl: Duration::from_secs(30 * 60),
            },
            max_values_per_response: 50,
            max_responses_per_ip_per_sec: 20,
            max_responses_per_sec: 2_000,
            rate_limiter_entries: 4096,
            max_transmit_queue: 1024,
        }
    }
}

/// Identifies a lookup started by [`Dht::get_peers`], [`Dht::announce`] or [`Dht::find_node`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// What a lookup looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    /// `find_node` for a target id.
    FindNode,
    /// `get_peers` for a torrent.
    GetPeers,
    /// `get_peers`, then `announce_peer` to the closest nodes that gave a token.
    Announce,
}

/// Why a lookup could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// [`DhtConfig::max_lookups`] are running.
    #[error("too many lookups running")]
    TooManyLookups,
}

/// What the node reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhtEvent {
    /// A lookup found peers for a torrent (each peer is reported once per lookup).
    Peers {
        /// The lookup.
        lookup: LookupId,
        /// The torrent.
        info_hash: InfoHash,
        /// Newly found peers.
        peers: Vec<SocketAddr>,
    },
    /// A lookup finished.
    LookupDone(LookupSummary),
    /// The first bootstrap lookup finished; the table now holds `nodes` nodes.
    Bootstrapped {
        /// Nodes in the routing table.
        nodes: usize,
    },
}

/// How a finished lookup went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupSummary {
    /// The lookup.
    pub lookup: LookupId,
    /// What it looked for.
    pub kind: LookupKind,
    /// The target id (the info-hash for peer lookups).
    pub target: NodeId,
    /// Queries it sent.
    pub queries: u32,
    /// Queries sent when the first peer arrived, if any did.
    pub queries_to_first_peer: Option<u32>,
    /// Distinct peers found.
    pub peers_found: usize,
    /// Nodes that answered.
    pub responded: usize,
    /// `announce_peer` queries sent at the end.
    pub announced: usize,
    /// The k closest nodes that answered, closest first.
    pub closest: Vec<NodeInfo>,
    /// When it started.
    pub started: Instant,
    /// When it finished.
    pub finished: Instant,
}

/// Counters and sizes, for a status line and for tests of the caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DhtStats {
    /// Nodes in the routing table.
    pub nodes: usize,
    /// Of which good.
    pub good_nodes: usize,
    /// Queries in flight.
    pub outstanding: usize,
    /// Lookups running.
    pub lookups: usize,
    /// Torrents in the peer store.
    pub stored_info_hashes: usize,
    /// Peers in the peer store.
    pub stored_peers: usize,
    /// Addresses in the rate limiter.
    pub rate_limiter_entries: usize,
    /// Datagrams waiting to be sent.
    pub transmit_queue: usize,
    /// Datagrams received.
    pub received: u64,
    /// Datagrams that were not valid KRPC.
    pub malformed: u64,
    /// Responses and errors that matched no query of ours from that address (late, or spoofed).
    pub unmatched: u64,
    /// Queries not answered because of a rate limit.
    pub rate_limited: u64,
    /// Queries we sent.
    pub queries_sent: u64,
    /// Responses we sent.
    pub responses_sent: u64,
    /// Errors we sent.
    pub errors_sent: u64,
    /// Datagrams dropped because the transmit queue was full.
    pub transmit_dropped: u64,
    /// Announces we refused (bad token, or a store cap).
    pub announces_refused: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Lookup(u64),
    /// A questionable table node whose fate decides a replacement.
    Ping,
    /// An unknown node that queried us, to be added if it answers.
    CandidatePing,
    Announce,
}

#[derive(Debug, Clone)]
struct Pending {
    addr: SocketAddr,
    expect: Option<NodeId>,
    deadline: Instant,
    purpose: Purpose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CandState {
    Fresh,
    Asked,
    Answered(Option<Vec<u8>>),
    Failed,
}

#[derive(Debug, Clone)]
struct Candidate {
    id: Option<NodeId>,
    addr: SocketAddr,
    state: CandState,
}

#[derive(Debug, Clone)]
struct Lookup {
    kind: LookupKind,
    target: NodeId,
    /// `None`: implied port.
    port: Option<u16>,
    user: bool,
    bootstrap: bool,
    cands: Vec<Candidate>,
    inflight: usize,
    queries: u32,
    queries_to_first_peer: Option<u32>,
    peers: BTreeSet<SocketAddr>,
    started: Instant,
}

impl Lookup {
    fn sort(&mut self) {
        let target = self.target;
        self.cands
            .sort_by_key(|c| (c.id.is_none(), c.id.map(|id| target.distance(&id))));
        if self.cands.len() > MAX_LOOKUP_CANDIDATES {
            let mut i = 0;
            self.cands.retain(|c| {
                i += 1;
                i <= MAX_LOOKUP_CANDIDATES || c.state == CandState::Asked
            });
        }
    }

    /// Indices of the k closest candidates that have not failed.
    fn window(&self) -> impl Iterator<Item = usize> + '_ {
        self.cands
            .iter()
            .enumerate()
            .filter(|(_, c)| c.state != CandState::Failed)
            .take(K)
            .map(|(i, _)| i)
    }

    fn add(&mut self, id: Option<NodeId>, addr: SocketAddr, own: NodeId) {
        if id == Some(own) || addr.port() == 0 {
            return;
        }
        if self
            .cands
            .iter()
            .any(|c| c.addr == addr || (id.is_some() && c.id == id))
        {
            return;
        }
        self.cands.push(Candidate {
            id,
            addr,
            state: CandState::Fresh,
        });
    }
}

/// Per-address and global reply limits over one-second windows, in bounded memory.
#[derive(Debug, Clone, Default)]
struct RateLimiter {
    second: u64,
    global: u32,
    per_ip: BTreeMap<IpAddr, (u64, u32)>,
    purged_in: Option<u64>,
}

impl RateLimiter {
    fn allow(&mut self, ip: IpAddr, now: Instant, cfg: &DhtConfig) -> bool {
        let sec = now.since_origin().as_secs();
        if sec != self.second {
            self.second = sec;
            self.global = 0;
        }
        if self.global >= cfg.max_responses_per_sec {
            return false;
        }
        if !self.per_ip.contains_key(&ip) && self.per_ip.len() >= cfg.rate_limiter_entries {
            if self.purged_in == Some(sec) {
                return false;
            }
            self.purged_in = Some(sec);
            self.per_ip.retain(|_, (s, _)| *s == sec);
            if self.per_ip.len() >= cfg.rate_limiter_entries {
                return false;
            }
        }
        let e = self.per_ip.entry(ip).or_insert((sec, 0));
        if e.0 != sec {
            *e = (sec, 0);
        }
        if e.1 >= cfg.max_responses_per_ip_per_sec {
            return false;
        }
        e.1 += 1;
        self.global += 1;
        true
    }
}

/// A mainline DHT node (BEP 5, with BEP 32, 42 and 43 where they apply), sans-IO.
///
/// Feed it every datagram that arrives on the UDP socket ([`Dht::handle_datagram`]) and the time when
/// [`Dht::poll_timeout`] says ([`Dht::handle_timeout`]); send what [`Dht::poll_transmit`] yields and
/// act on [`Dht::poll_event`]. Start lookups with [`Dht::get_peers`], [`Dht::announce`] and
/// [`Dht::find_node`]; give it addresses to start from with [`Dht::bootstrap`].
#[derive(Debug)]
pub struct Dht {
    config: DhtConfig,
    id: NodeId,
    rng: CoreRng,
    table: RoutingTable,
    bootstrap_addrs: Vec<SocketAddr>,
    bootstrapped: bool,
    bootstrap_lookup: Option<u64>,
    last_bootstrap: Option<Instant>,
    outstanding: BTreeMap<u32, Pending>,
    deadlines: BTreeSet<(Instant, u32)>,
    pinging: BTreeSet<NodeId>,
    candidate_pings: usize,
    lookups: BTreeMap<u64, Lookup>,
    next_lookup: u64,
    store: PeerStore,
    tokens: Tokens,
    limiter: RateLimiter,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<DhtEvent>,
    next_maintenance: Instant,
    stats: DhtStats,
}

/// Why saved state could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not bencode, or not a dictionary.
    #[error("saved DHT state is not a bencoded dictionary")]
    NotBencode,
    /// No 20-byte `id`.
    #[error("saved DHT state has no valid node id")]
    BadId,
}

impl Dht {
    /// A new node with a fresh id (per BEP 42 when `config.external_ip` is a public address).
    pub fn new(config: DhtConfig, now: Instant, mut rng: CoreRng) -> Dht {
        let id = match config.external_ip {
            Some(ip) => NodeId::secure(ip, &mut rng),
            None => NodeId::random(&mut rng),
        };
        Dht::with_id(config, id, now, rng)
    }

    /// A new node with the given id (tests, or an id kept across restarts).
    pub fn with_id(config: DhtConfig, id: NodeId, now: Instant, mut rng: CoreRng) -> Dht {
        let tokens = Tokens::new(now, &mut rng);
        Dht {
            store: PeerStore::new(config.store),
            config,
            id,
            rng,
            table: RoutingTable::new(id, now),
            bootstrap_addrs: Vec::new(),
            bootstrapped: false,
            bootstrap_lookup: None,
            last_bootstrap: None,
            outstanding: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            pinging: BTreeSet::new(),
            candidate_pings: 0,
            lookups: BTreeMap::new(),
            next_lookup: 0,
            tokens,
            limiter: RateLimiter::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_maintenance: now + MAINTENANCE_INTERVAL,
            stats: DhtStats::default(),
        }
    }

    /// A node restored from [`Dht::save_state`]: the same id, and the saved nodes in the table (as
    /// questionable until they answer). Call [`Dht::bootstrap`] afterwards to start talking.
    pub fn from_state(
        config: DhtConfig,
        saved: &[u8],
        now: Instant,
        rng: CoreRng,
    ) -> Result<Dht, StateError> {
        let v = bencode::decode(saved).map_err(|_| StateError::NotBencode)?;
        if v.as_dict().is_none() {
            return Err(StateError::NotBencode);
        }
        let id = v
            .get(b"id")
            .and_then(Value::as_bytes)
            .and_then(|b| <[u8; 20]>::try_from(b).ok())
            .ok_or(StateError::BadId)?;
        let mut dht = Dht::with_id(config, NodeId(id), now, rng);
        for (key, v6) in [(&b"nodes"[..], false), (&b"nodes6"[..], true)] {
            if let Some(b) = v.get(key).and_then(Value::as_bytes) {
                for n in decode_nodes(b, v6) {
                    dht.table.insert_unverified(n, now);
                }
            }
        }
        Ok(dht)
    }

    /// The node id and routing table as bytes, for the driver to write to disk.
    pub fn save_state(&self) -> Vec<u8> {
        let nodes: Vec<NodeInfo> = self.table.iter().map(|e| e.info).collect();
        OwnedValue::dict()
            .with("id", self.id.0.to_vec())
            .with("nodes", encode_nodes(&nodes, false))
            .with("nodes6", encode_nodes(&nodes, true))
            .encode()
    }

    /// Our node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The routing table (read-only).
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// Counters and sizes (`now` decides which nodes are still good).
    pub fn stats(&self, now: Instant) -> DhtStats {
        DhtStats {
            nodes: self.table.len(),
            good_nodes: self.table.good_count(now),
            outstanding: self.outstanding.len(),
            lookups: self.lookups.len(),
            stored_info_hashes: self.store.info_hashes(),
            stored_peers: self.store.peers(),
            rate_limiter_entries: self.limiter.per_ip.len(),
            transmit_queue: self.transmits.len(),
            ..self.stats
        }
    }

    /// Remembers where to start from when the table is empty (and again whenever it runs low) and
    /// starts a bootstrap lookup for our own id through them and whatever the table already holds.
    pub fn bootstrap(&mut self, now: Instant, addrs: &[SocketAddr]) {
        for a in addrs {
            if !self.bootstrap_addrs.contains(a) {
                self.bootstrap_addrs.push(*a);
            }
        }
        self.start_bootstrap(now);
    }

    fn start_bootstrap(&mut self, now: Instant) {
        if self
            .bootstrap_lookup
            .is_some_and(|l| self.lookups.contains_key(&l))
        {
            return;
        }
        self.last_bootstrap = Some(now);
        let seeds_extra: Vec<SocketAddr> = self.bootstrap_addrs.clone();
        if let Ok(l) = self.start_lookup(
            now,
            LookupKind::FindNode,
            self.id,
            None,
            false,
            &seeds_extra,
        ) {
            self.bootstrap_lookup = Some(l.0);
            if let Some(lk) = self.lookups.get_mut(&l.0) {
                lk.bootstrap = true;
            }
            self.step(now, l.0);
        }
    }

    /// Starts a `get_peers` lookup for a torrent; peers arrive as [`DhtEvent::Peers`].
    pub fn get_peers(
        &mut self,
        now: Instant,
        info_hash: InfoHash,
    ) -> Result<LookupId, LookupError> {
        let l = self.start_lookup(now, LookupKind::GetPeers, info_hash.into(), None, true, &[])?;
        self.local_peers(l.0, info_hash);
        self.step(now, l.0);
        Ok(l)
    }

    /// Like [`Dht::get_peers`], then announces us as a peer on `port` (or, with `None`, on the port our
    /// datagrams come from: `implied_port`) to the closest nodes.
    pub fn announce(
        &mut self,
        now: Instant,
        info_hash: InfoHash,
        port: Option<u16>,
    ) -> Result<LookupId, LookupError> {
        let l = self.start_lookup(now, LookupKind::Announce, info_hash.into(), port, true, &[])?;
        self.local_peers(l.0, info_hash);
        self.step(now, l.0);
        Ok(l)
    }

    /// Reports the peers our own store holds for the torrent (others announced them to us: in a small
    /// network we are one of the closest nodes ourselves) as the lookup's first [`DhtEvent::Peers`].
    /// They count in `peers_found` but not in `queries_to_first_peer`, which counts queries.
    fn local_peers(&mut self, l: u64, info_hash: InfoHash) {
        let mut found = self
            .store
            .get(&info_hash, MAX_LOOKUP_PEERS, false, &mut self.rng);
        found.extend(
            self.store
                .get(&info_hash, MAX_LOOKUP_PEERS, true, &mut self.rng),
        );
        let Some(lk) = self.lookups.get_mut(&l) else {
            return;
        };
        found.retain(|p| lk.peers.insert(*p));
        if !found.is_empty() {
            self.events.push_back(DhtEvent::Peers {
                lookup: LookupId(l),
                info_hash,
                peers: found,
            });
        }
    }

    /// Starts a `find_node` lookup; the closest nodes are in its [`DhtEvent::LookupDone`].
    pub fn find_node(&mut self, now: Instant, target: NodeId) -> Result<LookupId, LookupError> {
        let l = self.start_lookup(now, LookupKind::FindNode, target, None, true, &[])?;
        self.step(now, l.0);
        Ok(l)
    }

    fn start_lookup(
        &mut self,
        now: Instant,
        kind: LookupKind,
        target: NodeId,
        port: Option<u16>,
        user: bool,
        extra: &[SocketAddr],
    ) -> Result<LookupId, LookupError> {
        if self.lookups.len() >= self.config.max_lookups {
            return Err(LookupError::TooManyLookups);
        }
        let n = self.next_lookup;
        self.next_lookup += 1;
        let mut lookup = Lookup {
            kind,
            target,
            port,
            user,
            bootstrap: false,
            cands: Vec::new(),
            inflight: 0,
            queries: 0,
            queries_to_first_peer: None,
            peers: BTreeSet::new(),
            started: now,
        };
        for n in self.table.closest(&target, 2 * K, None, now) {
            lookup.add(Some(n.id), n.addr, self.id);
        }
        if lookup.cands.is_empty() || !extra.is_empty() {
            let addrs = if extra.is_empty() {
                &self.bootstrap_addrs[..]
            } else {
                extra
            };
            for a in addrs {
                lookup.add(None, *a, self.id);
            }
        }
        lookup.sort();
        self.lookups.insert(n, lookup);
        Ok(LookupId(n))
    }

    /// Sends what a lookup may send now, and finishes it when the k closest answered.
    fn step(&mut self, now: Instant, l: u64) {
        loop {
            let Some(lk) = self.lookups.get(&l) else {
                return;
            };
            if lk.inflight >= self.config.alpha.max(1)
                || self.outstanding.len() >= self.config.max_outstanding
            {
                break;
            }
            let Some(i) = lk.window().find(|&i| lk.cands[i].state == CandState::Fresh) else {
                break;
            };
            let (id, addr) = (lk.cands[i].id, lk.cands[i].addr);
            let kind = match lk.kind {
                LookupKind::FindNode => QueryKind::FindNode { target: lk.target },
                LookupKind::GetPeers | LookupKind::Announce => QueryKind::GetPeers {
                    info_hash: InfoHash(lk.target.0),
                },
            };
            self.send_query(now, addr, id, kind, Purpose::Lookup(l));
            if let Some(lk) = self.lookups.get_mut(&l) {
                lk.cands[i].state = CandState::Asked;
                lk.inflight += 1;
                lk.queries += 1;
            }
        }
        let Some(lk) = self.lookups.get(&l) else {
            return;
        };
        let window: Vec<usize> = lk.window().collect();
        let all_answered = window.len() >= K
            && window
                .iter()
                .all(|&i| matches!(lk.cands[i].state, CandState::Answered(_)));
        let stalled = lk.inflight == 0
            && !window
                .iter()
                .any(|&i| lk.cands[i].state == CandState::Fresh);
        if all_answered || stalled {
            self.finish(now, l);
        }
    }

    fn finish(&mut self, now: Instant, l: u64) {
        let Some(lk) = self.lookups.remove(&l) else {
            return;
        };
        let answered: Vec<&Candidate> = lk
            .cands
            .iter()
            .filter(|c| matches!(c.state, CandState::Answered(_)) && c.id.is_some())
            .collect();
        let mut announced = 0;
        if lk.kind == LookupKind::Announce {
            let targets: Vec<(NodeId, SocketAddr, Vec<u8>)> = answered
                .iter()
                .filter_map(|c| match (&c.state, c.id) {
                    (CandState::Answered(Some(t)), Some(id)) => Some((id, c.addr, t.clone())),
                    _ => None,
                })
                .take(K)
                .collect();
            for (id, addr, token) in targets {
                if self.outstanding.len() >= self.config.max_outstanding {
                    break;
                }
                let kind = QueryKind::AnnouncePeer {
                    info_hash: InfoHash(lk.target.0),
                    port: lk.port.unwrap_or(0),
                    implied_port: lk.port.is_none(),
                    token,
                };
                self.send_query(now, addr, Some(id), kind, Purpose::Announce);
                announced += 1;
            }
        }
        let closest: Vec<NodeInfo> = answered
            .iter()
            .take(K)
            .filter_map(|c| c.id.map(|id| NodeInfo { id, addr: c.addr }))
            .collect();
        if lk.bootstrap && self.bootstrap_lookup == Some(l) {
            self.bootstrap_lookup = None;
            if !self.bootstrapped && !self.table.is_empty() {
                self.bootstrapped = true;
                self.events.push_back(DhtEvent::Bootstrapped {
                    nodes: self.table.len(),
                });
            }
        }
        if lk.user {
            self.events.push_back(DhtEvent::LookupDone(LookupSummary {
                lookup: LookupId(l),
                kind: lk.kind,
                target: lk.target,
                queries: lk.queries,
                queries_to_first_peer: lk.queries_to_first_peer,
                peers_found: lk.peers.len(),
                responded: lk
                    .cands
                    .iter()
                    .filter(|c| matches!(c.state, CandState::Answered(_)))
                    .count(),
                announced,
                closest,
                started: lk.started,
                finished: now,
            }));
        }
    }

    fn send_query(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        expect: Option<NodeId>,
        kind: QueryKind,
        purpose: Purpose,
    ) {
        let mut tid: u32 = self.rng.random();
        while self.outstanding.contains_key(&tid) {
            tid = self.rng.random();
        }
        let want = Want {
            v4: addr.is_ipv4(),
            v6: addr.is_ipv6(),
        };
        let msg = Message {
            tid: tid.to_be_bytes().to_vec(),
            version: Some(VERSION.to_vec()),
            read_only: self.config.read_only,
            ip: None,
            body: Body::Query(Query {
                id: self.id,
                kind,
                want,
            }),
        };
        let deadline = now + self.config.query_timeout;
        self.outstanding.insert(
            tid,
            Pending {
                addr,
                expect,
                deadline,
                purpose,
            },
        );
        self.deadlines.insert((deadline, tid));
        self.stats.queries_sent += 1;
        // Queries are bounded by max_outstanding, so they always get a place in the queue.
        self.transmits.push_back((addr, msg.encode()));
    }

    fn reply(&mut self, to: SocketAddr, msg: &Message) {
        if self.transmits.len() >= self.config.max_transmit_queue {
            self.stats.transmit_dropped += 1;
            return;
        }
        match msg.body {
            Body::Error { .. } => self.stats.errors_sent += 1,
            _ => self.stats.responses_sent += 1,
        }
        self.transmits.push_back((to, msg.encode()));
    }

    /// Takes in one datagram that arrived from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.stats.received += 1;
        if from.port() == 0 || bytes.len() > MAX_DATAGRAM {
            self.stats.malformed += 1;
            return;
        }
        let msg = match krpc::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed += 1;
                if let (true, Some(tid), false) = (e.is_query, e.tid, self.config.read_only) {
                    if self.limiter.allow(from.ip(), now, &self.config) {
                        self.reply(
                            from,
                            &error_msg(tid, error_code::PROTOCOL, "malformed query"),
                        );
                    } else {
                        self.stats.rate_limited += 1;
                    }
                }
                return;
            }
        };
        match msg.body {
            Body::Query(ref q) => {
                let q = q.clone();
                self.handle_query(now, from, &msg, q);
            }
            Body::Response(r) => self.handle_response(now, from, &msg.tid, Some(r)),
            Body::Error { .. } => self.handle_response(now, from, &msg.tid, None),
        }
    }

    fn take_pending(&mut self, from: SocketAddr, tid: &[u8]) -> Option<Pending> {
        let key = u32::from_be_bytes(<[u8; 4]>::try_from(tid).ok()?);
        // Only the address we asked may answer: anything else is late or spoofed.
        if self.outstanding.get(&key)?.addr != from {
            return None;
        }
        let p = self.outstanding.remove(&key)?;
        self.deadlines.remove(&(p.deadline, key));
        Some(p)
    }

    fn handle_response(&mut self, now: Instant, from: SocketAddr, tid: &[u8], r: Option<Response>) {
        let Some(p) = self.take_pending(from, tid) else {
            self.stats.unmatched += 1;
            return;
        };
        let Some(r) = r else {
            // An error answer: the node is alive but refused; count it as a failure for the lookup only.
            self.query_failed(now, p, false);
            return;
        };
        match p.purpose {
            Purpose::Ping => {
                if let Some(id) = p.expect {
                    self.pinging.remove(&id);
                }
            }
            Purpose::CandidatePing => self.candidate_pings = self.candidate_pings.saturating_sub(1),
            Purpose::Lookup(_) | Purpose::Announce => {}
        }
        if r.id != self.id && (!self.config.enforce_bep42 || r.id.is_secure_for(from.ip())) {
            let info = NodeInfo {
                id: r.id,
                addr: from,
            };
            if let Insert::PingFirst(q) = self.table.insert(info, now) {
                self.ping_node(now, q);
            }
        }
        if let Purpose::Lookup(l) = p.purpose {
            self.lookup_response(now, l, from, r);
        }
    }

    fn ping_node(&mut self, now: Instant, n: NodeInfo) {
        if self.pinging.contains(&n.id) || self.outstanding.len() >= self.config.max_outstanding {
            return;
        }
        self.pinging.insert(n.id);
        self.send_query(now, n.addr, Some(n.id), QueryKind::Ping, Purpose::Ping);
    }

    fn lookup_response(&mut self, now: Instant, l: u64, from: SocketAddr, r: Response) {
        let own = self.id;
        let Some(lk) = self.lookups.get_mut(&l) else {
            return;
        };
        if let Some(c) = lk.cands.iter_mut().find(|c| c.addr == from) {
            if c.state == CandState::Asked {
                lk.inflight = lk.inflight.saturating_sub(1);
            }
            c.id = Some(r.id);
            c.state = CandState::Answered(r.token.clone());
        }
        for n in r.nodes.iter().chain(r.nodes6.iter()) {
            lk.add(Some(n.id), n.addr, own);
        }
        // The responder may have been a bootstrap address whose id we just learned, and the list may
        // now hold a duplicate of it under its id.
        let mut seen = BTreeSet::new();
        lk.cands.retain(|c| c.id.is_none() || seen.insert(c.id));
        lk.sort();
        let mut fresh = Vec::new();
        if lk.kind != LookupKind::FindNode {
            for v in &r.values {
                if lk.peers.len() >= MAX_LOOKUP_PEERS {
                    break;
                }
                if lk.peers.insert(*v) {
                    fresh.push(*v);
                }
            }
            if !fresh.is_empty() && lk.queries_to_first_peer.is_none() {
                lk.queries_to_first_peer = Some(lk.queries);
            }
        }
        if !fresh.is_empty() && lk.user {
            self.events.push_back(DhtEvent::Peers {
                lookup: LookupId(l),
                info_hash: InfoHash(lk.target.0),
                peers: fresh,
            });
        }
        self.step(now, l);
    }

    fn query_failed(&mut self, now: Instant, p: Pending, timed_out: bool) {
        if let Some(id) = p.expect {
            if timed_out {
                self.table.note_failure(&id, p.addr, now);
            }
        }
        match p.purpose {
            Purpose::Ping => {
                if let Some(id) = p.expect {
                    self.pinging.remove(&id);
                }
            }
            Purpose::CandidatePing => self.candidate_pings = self.candidate_pings.saturating_sub(1),
            Purpose::Announce => {}
            Purpose::Lookup(l) => {
                if let Some(lk) = self.lookups.get_mut(&l) {
                    if let Some(c) = lk.cands.iter_mut().find(|c| c.addr == p.addr) {
                        if c.state == CandState::Asked {
                            lk.inflight = lk.inflight.saturating_sub(1);
                        }
                        c.state = CandState::Failed;
                    }
                    self.step(now, l);
                }
            }
        }
    }

    fn handle_query(&mut self, now: Instant, from: SocketAddr, msg: &Message, q: Query) {
        if self.config.read_only {
            // BEP 43: a read-only node answers nothing.
            return;
        }
        if q.id == self.id {
            return;
        }
        if !self.limiter.allow(from.ip(), now, &self.config) {
            self.stats.rate_limited += 1;
            return;
        }
        if !msg.read_only
            && !self.table.note_query(&q.id, from, now)
            && self.table.would_accept(&q.id, now)
            && self.candidate_pings < self.config.max_candidate_pings
            && self.outstanding.len() < self.config.max_outstanding
            && !self.outstanding.values().any(|p| p.addr == from)
            && (!self.config.enforce_bep42 || q.id.is_secure_for(from.ip()))
        {
            self.candidate_pings += 1;
            self.send_query(
                now,
                from,
                Some(q.id),
                QueryKind::Ping,
                Purpose::CandidatePing,
            );
        }
        let tid = msg.tid.clone();
        let want = if q.want.v4 || q.want.v6 {
            q.want
        } else {
            Want {
                v4: from.is_ipv4(),
                v6: from.is_ipv6(),
            }
        };
        let mut r = Response {
            id: self.id,
            ..Response::default()
        };
        match q.kind {
            QueryKind::Ping => {}
            QueryKind::FindNode { target } => self.fill_nodes(&mut r, &target, want, now),
            QueryKind::GetPeers { info_hash } => {
                r.token = Some(self.tokens.make(from.ip(), now, &mut self.rng).to_vec());
                r.values = self.store.get(
                    &info_hash,
                    self.config.max_values_per_response,
                    from.is_ipv6(),
                    &mut self.rng,
                );
                self.fill_nodes(&mut r, &info_hash.into(), want, now);
            }
            QueryKind::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            } => {
                let port = if implied_port { from.port() } else { port };
                if !self.tokens.check(&token, from.ip(), now, &mut self.rng) {
                    self.stats.announces_refused += 1;
                    self.reply(from, &error_msg(tid, error_code::PROTOCOL, "bad token"));
                    return;
                }
                if port == 0 {
                    self.stats.announces_refused += 1;
                    self.reply(from, &error_msg(tid, error_code::PROTOCOL, "bad port"));
                    return;
                }
                let peer = SocketAddr::new(from.ip(), port);
                if self.store.add(info_hash, peer, now) != super::store::Stored::Yes {
                    self.stats.announces_refused += 1;
                    self.reply(from, &error_msg(tid, error_code::SERVER, "store full"));
                    return;
                }
            }
            QueryKind::Unknown(_) => {
                self.reply(
                    from,
                    &error_msg(tid, error_code::METHOD_UNKNOWN, "method unknown"),
                );
                return;
            }
        }
        let reply = Message {
            tid,
            version: Some(VERSION.to_vec()),
            read_only: false,
            ip: Some(from),
            body: Body::Response(r),
        };
        self.reply(from, &reply);
    }

    fn fill_nodes(&self, r: &mut Response, target: &NodeId, want: Want, now: Instant) {
        if want.v4 {
            r.nodes = self.table.closest(target, K, Some(false), now);
        }
        if want.v6 {
            r.nodes6 = self.table.closest(target, K, Some(true), now);
        }
    }

    /// The next datagram to send, as (destination, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<DhtEvent> {
        self.events.pop_front()
    }

    /// When [`Dht::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let q = self.deadlines.first().map(|(t, _)| *t);
        Some(q.map_or(self.next_maintenance, |q| q.min(self.next_maintenance)))
    }

    /// Expires queries whose time is up and runs housekeeping when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, tid)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(p) = self.outstanding.remove(&tid) {
                self.query_failed(now, p, true);
            }
        }
        if now >= self.next_maintenance {
            self.next_maintenance = now + MAINTENANCE_INTERVAL;
            self.maintain(now);
        }
    }

    fn maintain(&mut self, now: Instant) {
        self.store.expire(now);
        // Re-bootstrap when the table runs low, at most once a minute.
        if self.table.len() < K
            && self
                .last_bootstrap
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60))
            && (!self.bootstrap_addrs.is_empty() || !self.table.is_empty())
        {
            self.start_bootstrap(now);
        }
        // Refresh buckets nobody touched for 15 minutes (a couple per round, to spread the traffic).
        for i in self.table.stale_buckets(now).into_iter().take(2) {
            if self.lookups.len() >= self.config.max_lookups / 2 {
                break;
            }
            self.table.touch_bucket(i, now);
            let target = self.id.random_in_bucket(i, &mut self.rng);
            if let Ok(l) = self.start_lookup(now, LookupKind::FindNode, target, None, false, &[]) {
                self.step(now, l.0);
            }
        }
        // Ping questionable nodes where someone waits to take their place.
        for n in self.table.ping_candidates(now).into_iter().take(4) {
            self.ping_node(now, n);
        }
    }
}

fn error_msg(tid: Vec<u8>, code: i64, text: &str) -> Message {
    Message {
        tid,
        version: Some(VERSION.to_vec()),
        read_only: false,
        ip: None,
        body: Body::Error {
            code,
            message: text.to_string(),
        },
    }
}

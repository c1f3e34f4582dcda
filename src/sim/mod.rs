//! A deterministic swarm simulator: many sans-IO [`Engine`]s joined by in-memory links on a virtual
//! clock, with a simulated tracker, a simulated disk and seeded chaos.
//!
//! # Model
//! - **Nodes.** Each node is one [`Engine`] with its own seed, listening at its own loopback address
//!   (`127.0.0.1 + index`, the engine's `listen_port`). It can stop listening and leave the swarm
//!   ([`Sim::leave`]).
//! - **Links.** A connection has two directions, each a FIFO with a latency and a bandwidth
//!   ([`LinkSpec`]; per direction, configurable per node pair or per sending node). A `Send` of `n`
//!   bytes at time `t` leaves the sender's queue at `max(t, queue busy until) + n / bandwidth` (that is
//!   when the sender gets `handle_flushed`) and arrives one latency later. `Close` sends a FIN behind
//!   the data already queued. A connect takes one latency to reach the listener (which accepts it with
//!   `handle_incoming` or refuses it) and one more for the answer (`handle_connected` or
//!   `handle_connect_failed`); an address nobody listens at is refused.
//! - **Tracker.** One [`tracker::Tracker`] answers HTTP announces on a simulated TCP connection (the
//!   engine's real HTTP exchange talks to it) and BEP 15 datagrams. Host names are resolved from a table
//!   ([`Sim::add_host`]); [`TRACKER_HOST`] names the tracker.
//! - **Disk.** Jobs run inside the simulator after [`SimConfig::job_latency`] (twice that for a
//!   `VerifyWrite`, which hashes and then writes): `VerifyWrite` is SHA-1 of the blocks (or a cheaper
//!   stand-in for benchmarks, [`HashMode`]) compared with the expected hash, then stores the piece in the node's
//!   in-memory store keyed by info-hash and piece, `Read` slices it (seeders start with the whole
//!   content). A node can be made to corrupt what it reads ([`Sim::set_corrupt_reads`]).
//! - **Time.** Virtual: the simulator jumps to the earliest of the pending deliveries and the engines'
//!   `poll_timeout`s. Nothing sleeps and no clock is read.
//! - **Chaos.** With [`SimConfig::drop_links`], a randomly chosen established peer connection is cut at
//!   random intervals (both ends get `handle_closed`, bytes in flight are lost).
//!
//! # Determinism
//! Every choice the simulator makes draws from one RNG seeded by [`SimConfig::seed`]; simultaneous
//! events run in the order they were scheduled; all tables are `BTreeMap`s. The same configuration,
//! seeds and inputs give the same run, which [`Sim::fingerprint`] summarises.

pub mod fixture;
pub mod tap;
pub mod tracker;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;

use hyperblow_core::engine::{
    AddError, AddMagnet, AddTorrent, ConnId, Engine, EngineConfig, Event, Job, JobId, JobResult,
    Output, ResolveId, TorrentId,
};
use hyperblow_core::metainfo::Metainfo;
use hyperblow_core::rng::{seeded, CoreRng, RngExt};
use hyperblow_core::testkit::{Hosts, MemDisk, OriginPiece, OriginUse};
use hyperblow_core::time::Instant;
use hyperblow_core::InfoHash;

use tap::{Tap, TapMessage, TapRecord};

/// The lossy one-way datagram link of [`SimConfig::datagram_link`] (the uTP module's own simulated
/// link, reused).
pub use hyperblow_core::utp::sim::{
    Link as UdpLink, LinkConfig as UdpLinkConfig, LinkStats as UdpLinkStats,
};
use tracker::Tracker;

/// The host name the tracker answers to (resolved by the simulator's table).
pub const TRACKER_HOST: &str = "tracker.sim";
/// The tracker's HTTP port.
pub const TRACKER_HTTP_PORT: u16 = 8080;
/// The tracker's UDP port.
pub const TRACKER_UDP_PORT: u16 = 8081;

/// The tracker's IP address (outside the range nodes use).
pub fn tracker_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 255, 0, 1))
}

/// The announce URL of the simulated HTTP tracker.
pub fn http_tracker_url() -> String {
    format!("http://{TRACKER_HOST}:{TRACKER_HTTP_PORT}/announce")
}

/// The announce URL of the simulated UDP tracker.
pub fn udp_tracker_url() -> String {
    format!("udp://{TRACKER_HOST}:{TRACKER_UDP_PORT}")
}

/// Index of a node in the simulation.
pub type NodeId = usize;

/// One direction of a link: latency and bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    /// One-way delay.
    pub latency: Duration,
    /// Bytes per second; 0 means unlimited.
    pub bandwidth: u64,
}

impl LinkSpec {
    /// A link of `latency_ms` milliseconds and `kib_per_s` KiB/s.
    pub fn new(latency_ms: u64, kib_per_s: u64) -> LinkSpec {
        LinkSpec {
            latency: Duration::from_millis(latency_ms),
            bandwidth: kib_per_s * 1024,
        }
    }

    /// How long `bytes` take to leave the queue.
    fn transmit(&self, bytes: usize) -> Duration {
        if self.bandwidth == 0 {
            return Duration::ZERO;
        }
        let nanos = (bytes as u128 * 1_000_000_000).div_ceil(u128::from(self.bandwidth));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// How `VerifyWrite` jobs hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashMode {
    /// Real SHA-1 of the blocks (what tests use).
    Sha1,
    /// Benchmark stand-in: if the blocks equal the original content of that piece (a memory compare,
    /// much cheaper than SHA-1), answer the piece's hash from the metainfo; otherwise SHA-1 them.
    /// The engine sees the same answers as with [`HashMode::Sha1`], at a fraction of the CPU.
    CompareWithOrigin,
}

/// The swarm benchmarks' run (`benches/swarm.rs`, `benches/engine_cost.rs`): one seeder and `leechers`
/// leechers of `torrent` on 20 ms, 4 MiB/s links with [`HashMode::CompareWithOrigin`] and shared
/// verified pieces, run until every leecher completed. Returns the virtual time it took and the
/// simulator. Panics if the swarm does not complete within six virtual hours.
pub fn bench_swarm(torrent: &fixture::TestTorrent, leechers: usize) -> (Duration, Sim) {
    let config = SimConfig {
        default_link: LinkSpec::new(20, 4 * 1024),
        hash_mode: HashMode::CompareWithOrigin,
        share_verified_pieces: true,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(config);
    sim.register(&torrent.metainfo, torrent.content.clone());
    let s = sim.add_node(EngineConfig::default(), 1);
    sim.add_torrent(s, Sim::plain_add(&torrent.metainfo), true)
        .expect("seeder adds");
    let mut ls: Vec<(NodeId, TorrentId)> = Vec::new();
    for i in 0..leechers {
        let n = sim.add_node(EngineConfig::default(), 2 + i as u64);
        let t = sim
            .add_torrent(n, Sim::plain_add(&torrent.metainfo), false)
            .expect("leecher adds");
        ls.push((n, t));
    }
    let start = sim.now();
    let limit = start + Duration::from_secs(6 * 3600);
    let done = sim
        .run_until(limit, |s| {
            ls.iter().all(|(n, t)| s.completed_at(*n, *t).is_some())
        })
        .expect("simulation runs");
    assert!(done, "swarm did not complete");
    (sim.now().saturating_duration_since(start), sim)
}

/// Random connection cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropLinks {
    /// Mean time between two cuts (each gap is drawn uniformly from 0.5x to 1.5x of it).
    pub mean_interval: Duration,
    /// Stop cutting after this instant.
    pub until: Instant,
}

/// Configuration of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of the simulator's own RNG (tracker shuffles, link cuts).
    pub seed: u64,
    /// Virtual time at the start.
    pub start: Instant,
    /// Links between nodes, unless overridden.
    pub default_link: LinkSpec,
    /// Links between a node and the tracker (both directions).
    pub tracker_link: LinkSpec,
    /// Time from a job's issue to its result.
    pub job_latency: Duration,
    /// Time a host-name lookup takes.
    pub resolve_latency: Duration,
    /// How hash jobs are computed.
    pub hash_mode: HashMode,
    /// Store verified pieces that equal the original content as references to it instead of copies
    /// (for big benchmark swarms; the comparison is done at write time).
    pub share_verified_pieces: bool,
    /// Decode and record the peer-wire messages on every peer link ([`Sim::tap_log`]), stamped with
    /// the time the sender queued them.
    pub tap: bool,
    /// Random connection cuts, if any.
    pub drop_links: Option<DropLinks>,
    /// The tracker's announce interval, seconds.
    pub tracker_interval: u32,
    /// How datagrams between nodes travel (uTP): each ordered pair of nodes gets its own
    /// [`UdpLink`] (latency, jitter, random loss, duplication, a bottleneck rate with a drop-tail
    /// queue), seeded from the simulator's RNG. `None`: such datagrams are dropped.
    pub datagram_link: Option<UdpLinkConfig>,
}

impl Default for SimConfig {
    /// Seed 1, 20 ms / 1 MiB/s links, a 5 ms tracker link, 1 ms jobs, real SHA-1, no tap, no chaos.
    fn default() -> Self {
        SimConfig {
            seed: 1,
            start: Instant::from_secs(1),
            default_link: LinkSpec::new(20, 1024),
            tracker_link: LinkSpec::new(5, 0),
            job_latency: Duration::from_millis(1),
            resolve_latency: Duration::from_millis(1),
            hash_mode: HashMode::Sha1,
            share_verified_pieces: false,
            tap: false,
            drop_links: None,
            tracker_interval: 120,
            datagram_link: None,
        }
    }
}

/// The engine broke the driver contract in a way that would hang or corrupt a real driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// `poll_timeout` stayed at or before `now` after `handle_timeout(now)`, again and again: a real
    /// event loop would spin.
    #[error("node {node}: poll_timeout stays at {deadline:?} <= now {now:?} after handle_timeout (busy loop)")]
    Spin {
        /// The node.
        node: NodeId,
        /// The deadline it keeps returning.
        deadline: Instant,
        /// The current time.
        now: Instant,
    },
    /// The simulation ran more steps than allowed without reaching its goal or limit.
    #[error("gave up after {0} steps")]
    TooManySteps(u64),
}

/// Counters of one simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// Scheduled events processed.
    pub events: u64,
    /// Engine timers fired.
    pub timers: u64,
    /// Payload bytes (all TCP bytes) delivered between nodes.
    pub bytes_delivered: u64,
    /// Connections cut by chaos.
    pub links_cut: u64,
    /// Jobs run.
    pub jobs: u64,
}

/// The original content of a torrent, known to the simulator.
#[derive(Debug, Clone)]
struct Origin {
    metainfo: Metainfo,
    content: Bytes,
}

impl Origin {
    fn piece(&self, piece: u32) -> Option<Bytes> {
        let layout = self.metainfo.info.layout();
        let len = layout.piece_len(piece)? as usize;
        let start = usize::try_from(layout.piece_offset(piece)).ok()?;
        (start + len <= self.content.len()).then(|| self.content.slice(start..start + len))
    }
}

/// Whether a node takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    Running,
    /// `shutdown` called; driven until the engine says it is done.
    Leaving,
    /// Gone: no more timers.
    Gone,
}

struct Node {
    engine: Engine,
    addr: SocketAddr,
    state: NodeState,
    listening: bool,
    torrents: BTreeMap<TorrentId, InfoHash>,
    /// Verified pieces by info-hash; a seeder's, and with `share_verified_pieces` those equal to
    /// the original, are slices of the registered content (no copy).
    disk: MemDisk<InfoHash>,
    events: Vec<(Instant, Event)>,
    completed: BTreeMap<TorrentId, Instant>,
    /// The deadline currently registered in `Sim::timers`.
    timer: Option<Instant>,
    next_port: u16,
    uplink: Option<LinkSpec>,
    /// Consecutive timer firings at the same instant that left the deadline in the past.
    spins: u32,
}

/// One end of a simulated TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Node(NodeId, ConnId),
    /// The acceptor side before the listener accepted.
    Pending(NodeId),
    Tracker,
}

struct Dir {
    spec: LinkSpec,
    busy: Instant,
    tap: Option<Tap>,
}

struct SimConn {
    /// 0: the dialer, 1: the acceptor.
    ends: [End; 2],
    /// Whether each end is still open (not closed by its owner nor told it was closed).
    open: [bool; 2],
    /// `dirs[i]`: bytes from end `i` to end `1 - i`.
    dirs: [Dir; 2],
    established: bool,
    /// Bytes a client sent to the HTTP tracker so far (tracker connections only).
    http_buf: Vec<u8>,
}

enum Ev {
    Syn {
        conn: u64,
    },
    Connected {
        conn: u64,
    },
    ConnectFailed {
        node: NodeId,
        id: ConnId,
    },
    Deliver {
        conn: u64,
        dir: usize,
        data: Bytes,
    },
    Flushed {
        conn: u64,
        dir: usize,
        bytes: usize,
    },
    Fin {
        conn: u64,
        dir: usize,
    },
    JobDone {
        node: NodeId,
        id: JobId,
        result: JobResult,
    },
    Resolved {
        node: NodeId,
        id: ResolveId,
        result: Result<Vec<SocketAddr>, String>,
    },
    Datagram {
        node: NodeId,
        from: SocketAddr,
        data: Bytes,
    },
    TrackerDatagram {
        from: SocketAddr,
        node: NodeId,
        data: Bytes,
    },
    /// Datagrams on the link from `from` to `to` may be due.
    UdpArrival {
        from: NodeId,
        to: NodeId,
    },
    Chaos,
}

/// One direction of the datagram path between two nodes, and the arrival event it has queued.
struct UdpPath {
    link: UdpLink,
    wake: Option<Instant>,
}

/// The simulation. See the [module documentation](self).
pub struct Sim {
    config: SimConfig,
    now: Instant,
    rng: CoreRng,
    nodes: Vec<Node>,
    origins: BTreeMap<InfoHash, Origin>,
    tracker: Tracker,
    hosts: Hosts,
    links: BTreeMap<(NodeId, NodeId), LinkSpec>,
    udp: BTreeMap<(NodeId, NodeId), UdpPath>,
    conns: BTreeMap<u64, SimConn>,
    ends: BTreeMap<(NodeId, ConnId), u64>,
    next_conn: u64,
    queue: BTreeMap<(Instant, u64), Ev>,
    next_seq: u64,
    timers: BTreeSet<(Instant, NodeId)>,
    taps: Vec<TapRecord>,
    counters: SimCounters,
    fingerprint: u64,
    /// Safety net against runaway runs.
    pub max_steps: u64,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .field("conns", &self.conns.len())
            .field("queued", &self.queue.len())
            .field("counters", &self.counters)
            .finish()
    }
}

/// FNV-1a step, for the run fingerprint.
fn fnv(h: u64, x: u64) -> u64 {
    let mut h = h;
    for b in x.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Sim {
    /// An empty simulation with the tracker's host name known.
    pub fn new(config: SimConfig) -> Sim {
        let mut hosts = Hosts::new();
        hosts.insert(TRACKER_HOST, tracker_ip());
        let mut sim = Sim {
            now: config.start,
            rng: seeded(config.seed),
            tracker: Tracker::new(config.tracker_interval),
            config,
            nodes: Vec::new(),
            origins: BTreeMap::new(),
            hosts,
            links: BTreeMap::new(),
            udp: BTreeMap::new(),
            conns: BTreeMap::new(),
            ends: BTreeMap::new(),
            next_conn: 0,
            queue: BTreeMap::new(),
            next_seq: 0,
            timers: BTreeSet::new(),
            taps: Vec::new(),
            counters: SimCounters::default(),
            fingerprint: 0xcbf2_9ce4_8422_2325,
            max_steps: 200_000_000,
        };
        if let Some(d) = sim.config.drop_links {
            let gap = sim.chaos_gap(d.mean_interval);
            sim.schedule(sim.now + gap, Ev::Chaos);
        }
        sim
    }

    // ===== setup =================================================================================

    /// Adds a node running an engine with `config` and `seed`; it listens at
    /// `127.0.0.1 + index : config.listen_port`. Its encryption policy is forced to `disable`: the
    /// simulator's taps decode plain peer wire bytes (MSE between engines is tested in
    /// `core/src/engine/tests/mse.rs` and against real clients in `tests/interop_mse.rs`).
    pub fn add_node(&mut self, mut config: EngineConfig, seed: u64) -> NodeId {
        config.encryption = hyperblow_core::mse::Policy::Disable;
        let id = self.nodes.len();
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 1)) + id as u32);
        let addr = SocketAddr::new(IpAddr::V4(ip), config.listen_port);
        let engine = Engine::new(config, seed, self.now);
        self.nodes.push(Node {
            engine,
            addr,
            state: NodeState::Running,
            listening: true,
            torrents: BTreeMap::new(),
            disk: MemDisk::new(),
            events: Vec::new(),
            completed: BTreeMap::new(),
            timer: None,
            next_port: 49152,
            uplink: None,
            spins: 0,
        });
        self.drain(id);
        id
    }

    /// Makes the original content of a torrent known (needed before any node adds it).
    pub fn register(&mut self, metainfo: &Metainfo, content: Bytes) {
        self.origins.insert(
            metainfo.info_hash(),
            Origin {
                metainfo: metainfo.clone(),
                content,
            },
        );
    }

    /// Adds a torrent to a node. A `seed` node starts with the whole registered content on its disk
    /// and tells the engine it has every piece (`add.have` is overwritten).
    pub fn add_torrent(
        &mut self,
        node: NodeId,
        mut add: AddTorrent,
        seed: bool,
    ) -> Result<TorrentId, AddError> {
        let ih = add.metainfo.info_hash();
        let pieces = add.metainfo.info.layout().piece_count();
        if seed {
            add.have = Some(hyperblow_core::bitfield::Bitfield::full(pieces));
            let origin = self.origins.get(&ih);
            let n = &mut self.nodes[node];
            for p in 0..pieces {
                if let Some(data) = origin.and_then(|o| o.piece(p)) {
                    n.disk.put(ih, p, data);
                }
            }
        }
        let now = self.now;
        let id = self.nodes[node].engine.add_torrent(now, add)?;
        self.nodes[node].torrents.insert(id, ih);
        self.drain(node);
        Ok(id)
    }

    /// Adds a torrent from a magnet link to a node (it starts with nothing; the metadata comes from
    /// peers). The link's info-hash should be [`Sim::register`]ed for the byte-exact checks.
    pub fn add_magnet(&mut self, node: NodeId, add: AddMagnet) -> Result<TorrentId, AddError> {
        let ih = add.link.info_hash;
        let now = self.now;
        let id = self.nodes[node].engine.add_magnet(now, add)?;
        self.nodes[node].torrents.insert(id, ih);
        self.drain(node);
        Ok(id)
    }

    /// An `AddTorrent` for `metainfo` with every file, running, no extra peers.
    pub fn plain_add(metainfo: &Metainfo) -> AddTorrent {
        AddTorrent {
            metainfo: metainfo.clone(),
            have: None,
            wanted_files: None,
            paused: false,
            peers: Vec::new(),
        }
    }

    /// Sets the link used for bytes sent from `from` to `to` (one direction).
    pub fn set_link(&mut self, from: NodeId, to: NodeId, spec: LinkSpec) {
        self.links.insert((from, to), spec);
    }

    /// Sets the link used for every byte `node` sends to other nodes (unless a pair is set).
    pub fn set_uplink(&mut self, node: NodeId, spec: LinkSpec) {
        self.nodes[node].uplink = Some(spec);
    }

    /// Makes every block `node` reads for peers corrupt (bytes flipped) or honest again.
    pub fn set_corrupt_reads(&mut self, node: NodeId, corrupt: bool) {
        self.nodes[node].disk.corrupt_reads = corrupt;
    }

    /// Adds a host name to the resolver's table.
    pub fn add_host(&mut self, host: &str, ip: IpAddr) {
        self.hosts.insert(host, ip);
    }

    /// Gives a node a peer address for one of its torrents (like `--peer`).
    pub fn add_peer(&mut self, node: NodeId, torrent: TorrentId, addr: SocketAddr) {
        let now = self.now;
        self.nodes[node].engine.add_peer(now, torrent, addr);
        self.drain(node);
    }

    /// The node stops listening and shuts its engine down (its connections are closed and its
    /// trackers told `stopped`); once the engine is shut down it gets no more timers.
    pub fn leave(&mut self, node: NodeId) {
        let now = self.now;
        let n = &mut self.nodes[node];
        n.listening = false;
        n.state = NodeState::Leaving;
        n.engine.shutdown(now);
        self.drain(node);
    }

    /// Runs `f` on a node's engine at the current time (a user command), then performs its outputs.
    pub fn with_engine<R>(&mut self, node: NodeId, f: impl FnOnce(&mut Engine, Instant) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.nodes[node].engine, now);
        self.drain(node);
        r
    }

    // ===== inspection ============================================================================

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// How many nodes there are.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// A node's engine.
    pub fn engine(&self, node: NodeId) -> &Engine {
        &self.nodes[node].engine
    }

    /// A node's listening address.
    pub fn addr(&self, node: NodeId) -> SocketAddr {
        self.nodes[node].addr
    }

    /// The node listening at `addr`, if any node has that address.
    pub fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    /// The node whose IP is `ip` (incoming connections come from an ephemeral port of it).
    pub fn node_by_ip(&self, ip: IpAddr) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.addr.ip() == ip)
    }

    /// Every event a node's engine emitted, with when.
    pub fn events(&self, node: NodeId) -> &[(Instant, Event)] {
        &self.nodes[node].events
    }

    /// When a node's torrent emitted `TorrentCompleted` (the first time), if it did.
    pub fn completed_at(&self, node: NodeId, torrent: TorrentId) -> Option<Instant> {
        self.nodes[node].completed.get(&torrent).copied()
    }

    /// Whether the node has left and its engine shut down.
    pub fn is_gone(&self, node: NodeId) -> bool {
        self.nodes[node].state == NodeState::Gone
    }

    /// The tracker.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Messages seen on peer links (with [`SimConfig::tap`]).
    pub fn tap_log(&self) -> &[TapRecord] {
        &self.taps
    }

    /// Counters so far.
    pub fn counters(&self) -> SimCounters {
        self.counters
    }

    /// A digest of everything that happened so far (every event's time, kind and size, every engine
    /// event): equal runs give equal fingerprints.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Bytes written by a node's VerifyWrite jobs.
    pub fn bytes_written(&self, node: NodeId) -> u64 {
        self.nodes[node].disk.written
    }

    /// Pieces of a torrent on a node's disk.
    pub fn stored_pieces(&self, node: NodeId, info_hash: InfoHash) -> Vec<u32> {
        self.nodes[node]
            .disk
            .pieces_of(info_hash)
            .map(|(p, _)| p)
            .collect()
    }

    /// A piece as stored on a node's disk.
    pub fn stored_piece(&self, node: NodeId, info_hash: InfoHash, piece: u32) -> Option<Bytes> {
        self.nodes[node].disk.get(info_hash, piece).cloned()
    }

    /// The original content of a registered torrent.
    pub fn original(&self, info_hash: InfoHash) -> Option<&Bytes> {
        self.origins.get(&info_hash).map(|o| &o.content)
    }

    /// The bytes of file `file` of a torrent as a node has them on disk, or `None` if a piece that
    /// holds part of it is missing.
    pub fn file_content(&self, node: NodeId, info_hash: InfoHash, file: usize) -> Option<Vec<u8>> {
        let origin = self.origins.get(&info_hash)?;
        let layout = origin.metainfo.info.layout();
        let entry = layout.files().get(file)?;
        let pl = u64::from(layout.piece_length());
        let mut out = Vec::with_capacity(usize::try_from(entry.length).ok()?);
        let mut pos = entry.offset;
        let end = entry.offset + entry.length;
        while pos < end {
            let piece = u32::try_from(pos / pl).ok()?;
            let data = self.stored_piece(node, info_hash, piece)?;
            let in_piece = usize::try_from(pos % pl).ok()?;
            let take =
                usize::try_from((end - pos).min(data.len() as u64 - in_piece as u64)).ok()?;
            out.extend_from_slice(data.get(in_piece..in_piece + take)?);
            pos += take as u64;
        }
        Some(out)
    }

    /// Compares every file a node wanted (`wanted`: one flag per file, `None` for all) with the
    /// original, byte for byte. `Err` names the first file that differs or is incomplete.
    pub fn check_files(
        &self,
        node: NodeId,
        info_hash: InfoHash,
        wanted: Option<&[bool]>,
    ) -> Result<(), String> {
        let origin = self
            .origins
            .get(&info_hash)
            .ok_or_else(|| format!("torrent {info_hash} is not registered"))?;
        let layout = origin.metainfo.info.layout();
        for (i, f) in layout.files().iter().enumerate() {
            if wanted.is_some_and(|w| !w.get(i).copied().unwrap_or(false)) {
                continue;
            }
            let start = usize::try_from(f.offset).map_err(|e| e.to_string())?;
            let len = usize::try_from(f.length).map_err(|e| e.to_string())?;
            let expect = origin
                .content
                .get(start..start + len)
                .ok_or_else(|| format!("file {i} lies outside the content"))?;
            match self.file_content(node, info_hash, i) {
                None => {
                    return Err(format!(
                        "node {node}: file {} is incomplete",
                        f.display_path()
                    ))
                }
                Some(got) if got != expect => {
                    let at = got.iter().zip(expect).position(|(a, b)| a != b);
                    return Err(format!(
                        "node {node}: file {} differs from the original (first difference at byte {at:?}, lengths {} vs {})",
                        f.display_path(),
                        got.len(),
                        expect.len()
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    // ===== running ===============================================================================

    /// Runs until `done` returns true (checked before every step) or virtual time would pass
    /// `limit`, or nothing is left to do. Returns whether `done` became true.
    pub fn run_until(
        &mut self,
        limit: Instant,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Result<bool, SimError> {
        let mut steps = 0u64;
        loop {
            if done(self) {
                return Ok(true);
            }
            steps += 1;
            if steps > self.max_steps {
                return Err(SimError::TooManySteps(steps));
            }
            let next_ev = self.queue.keys().next().map(|(t, _)| *t);
            let next_timer = self.timers.iter().next().map(|(t, _)| *t);
            let (t, is_event) = match (next_ev, next_timer) {
                (None, None) => return Ok(false),
                (Some(e), None) => (e, true),
                (None, Some(t)) => (t, false),
                (Some(e), Some(t)) => {
                    if e <= t {
                        (e, true)
                    } else {
                        (t, false)
                    }
                }
            };
            if t > limit {
                if limit > self.now {
                    self.now = limit;
                }
                return Ok(false);
            }
            if t > self.now {
                self.now = t;
            }
            if is_event {
                if let Some((_, ev)) = self.queue.pop_first() {
                    self.counters.events += 1;
                    self.apply(ev);
                }
            } else {
                self.fire_timer()?;
            }
        }
    }

    /// Runs for `d` of virtual time (or until nothing is left to do).
    pub fn run_for(&mut self, d: Duration) -> Result<(), SimError> {
        let limit = self.now + d;
        self.run_until(limit, |_| false)?;
        if self.now < limit {
            self.now = limit;
        }
        Ok(())
    }

    fn fire_timer(&mut self) -> Result<(), SimError> {
        let Some((deadline, node)) = self.timers.pop_first() else {
            return Ok(());
        };
        let now = self.now;
        self.nodes[node].timer = None;
        self.counters.timers += 1;
        self.fingerprint = fnv(
            fnv(self.fingerprint, now.since_origin().as_nanos() as u64),
            node as u64 | 1 << 40,
        );
        self.nodes[node].engine.handle_timeout(now);
        self.drain(node);
        let n = &mut self.nodes[node];
        if n.timer.is_some_and(|t| t <= now) {
            n.spins += 1;
            if n.spins > 100 {
                return Err(SimError::Spin {
                    node,
                    deadline: n.timer.unwrap_or(deadline),
                    now,
                });
            }
        } else {
            n.spins = 0;
        }
        Ok(())
    }

    /// Offers a datagram from `from` to `to` to their [`UdpLink`] (made on first use), when
    /// [`SimConfig::datagram_link`] is set and the receiver has not left.
    fn send_udp(&mut self, from: NodeId, to: NodeId, data: &[u8]) {
        let Some(cfg) = self.config.datagram_link.clone() else {
            return;
        };
        if self.nodes[to].state == NodeState::Gone {
            return;
        }
        let now = self.now;
        if !self.udp.contains_key(&(from, to)) {
            let seed = self.rng.random();
            self.udp.insert(
                (from, to),
                UdpPath {
                    link: UdpLink::new(cfg, seed),
                    wake: None,
                },
            );
        }
        if let Some(path) = self.udp.get_mut(&(from, to)) {
            path.link.send(now, data);
        }
        self.wake_udp(from, to);
    }

    /// Queues an arrival event for the link's next datagram unless one is queued at or before it.
    fn wake_udp(&mut self, from: NodeId, to: NodeId) {
        let Some(path) = self.udp.get_mut(&(from, to)) else {
            return;
        };
        let Some(at) = path.link.next_arrival() else {
            return;
        };
        if path.wake.is_some_and(|w| w <= at) {
            return;
        }
        path.wake = Some(at);
        self.schedule(at, Ev::UdpArrival { from, to });
    }

    /// Hands the datagrams due on the link from `from` to `to` to the receiver's engine.
    fn deliver_udp(&mut self, from: NodeId, to: NodeId) {
        let now = self.now;
        let mut due: Vec<Vec<u8>> = Vec::new();
        if let Some(path) = self.udp.get_mut(&(from, to)) {
            if path.wake.is_some_and(|w| w <= now) {
                path.wake = None;
            }
            path.link.deliver(now, |d| due.push(d.to_vec()));
        }
        if !due.is_empty() && self.nodes[to].state != NodeState::Gone {
            let src = self.nodes[from].addr;
            for d in &due {
                self.fingerprint = fnv(
                    fnv(self.fingerprint, now.since_origin().as_nanos() as u64),
                    8,
                );
                self.nodes[to].engine.handle_datagram(now, src, d);
            }
            self.drain(to);
        }
        self.wake_udp(from, to);
    }

    /// What the datagram links between nodes did, summed over every pair.
    pub fn udp_stats(&self) -> UdpLinkStats {
        let mut sum = UdpLinkStats::default();
        for path in self.udp.values() {
            let s = path.link.stats;
            sum.sent += s.sent;
            sum.lost += s.lost;
            sum.queue_drops += s.queue_drops;
            sum.duplicated += s.duplicated;
            sum.delivered += s.delivered;
            sum.queue_delay_ns += s.queue_delay_ns;
            sum.max_queue_delay = sum.max_queue_delay.max(s.max_queue_delay);
        }
        sum
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.insert((at, seq), ev);
    }

    fn chaos_gap(&mut self, mean: Duration) -> Duration {
        let ms = mean.as_millis().max(2) as u64;
        Duration::from_millis(self.rng.random_range(ms / 2..=ms + ms / 2))
    }

    /// The link for bytes from `from` to `to`.
    fn link(&self, from: NodeId, to: NodeId) -> LinkSpec {
        if let Some(l) = self.links.get(&(from, to)) {
            return *l;
        }
        self.nodes[from].uplink.unwrap_or(self.config.default_link)
    }

    /// Performs a node's outputs, records its events and refreshes its timer.
    fn drain(&mut self, node: NodeId) {
        while let Some(o) = self.nodes[node].engine.poll_output() {
            self.perform(node, o);
        }
        let now = self.now;
        while let Some(e) = self.nodes[node].engine.poll_event() {
            let n = &mut self.nodes[node];
            if let Event::TorrentCompleted(t) = &e {
                n.completed.entry(*t).or_insert(now);
            }
            self.fingerprint = fnv(self.fingerprint, event_tag(&e));
            n.events.push((now, e));
        }
        let n = &mut self.nodes[node];
        if n.state == NodeState::Leaving && n.engine.is_shut_down() {
            n.state = NodeState::Gone;
        }
        let next = if n.state == NodeState::Gone {
            None
        } else {
            n.engine.poll_timeout()
        };
        if next != n.timer {
            if let Some(old) = n.timer {
                self.timers.remove(&(old, node));
            }
            if let Some(t) = next {
                self.timers.insert((t, node));
            }
            self.nodes[node].timer = next;
        }
    }

    fn perform(&mut self, node: NodeId, o: Output) {
        let now = self.now;
        match o {
            Output::Connect {
                conn,
                addr,
                tls: None,
            } => self.connect(node, conn, addr),
            // The simulator speaks no TLS: an https:// tracker cannot be reached here.
            Output::Connect {
                conn, tls: Some(_), ..
            } => {
                let at = now + self.config.default_link.latency * 2;
                self.schedule(at, Ev::ConnectFailed { node, id: conn });
            }
            Output::Send { conn, data } => {
                let Some(&c) = self.ends.get(&(node, conn)) else {
                    return;
                };
                self.send(c, node, data);
            }
            Output::Close { conn } => {
                let Some(c) = self.ends.remove(&(node, conn)) else {
                    return;
                };
                let Some(sc) = self.conns.get_mut(&c) else {
                    return;
                };
                let side = usize::from(sc.ends[0] != End::Node(node, conn));
                sc.open[side] = false;
                if let (true, End::Node(to, _)) = (sc.dirs[side].tap.is_some(), sc.ends[1 - side]) {
                    self.taps.push(TapRecord {
                        at: now,
                        from: node,
                        to,
                        conn: c,
                        message: TapMessage::Closed,
                    });
                }
                if sc.established || side == 0 {
                    // The FIN follows the data already queued; a dialer closing before the SYN was
                    // answered is noticed by the listener when it accepts.
                    let d = &sc.dirs[side];
                    let at = d.busy.max(now) + d.spec.latency;
                    self.schedule(at, Ev::Fin { conn: c, dir: side });
                }
                self.forget_if_closed(c);
            }
            Output::SendDatagram { to, data } => {
                if to == SocketAddr::new(tracker_ip(), TRACKER_UDP_PORT) {
                    let from = self.nodes[node].addr;
                    let at = now + self.config.tracker_link.latency;
                    self.schedule(at, Ev::TrackerDatagram { from, node, data });
                } else if let Some(peer) = self.node_at(to) {
                    self.send_udp(node, peer, &data);
                }
            }
            Output::Resolve { id, host, port } => {
                let result = self.hosts.resolve(&host, port);
                let at = now + self.config.resolve_latency;
                self.schedule(at, Ev::Resolved { node, id, result });
            }
            Output::Job { id, job } => {
                self.counters.jobs += 1;
                // A verify-and-write does two jobs' work (hash, then write).
                let latency = match job {
                    Job::VerifyWrite { .. } => self.config.job_latency * 2,
                    Job::Read { .. } => self.config.job_latency,
                };
                let result = self.run_job(node, job);
                let at = now + latency;
                self.schedule(at, Ev::JobDone { node, id, result });
            }
        }
    }

    fn connect(&mut self, node: NodeId, id: ConnId, addr: SocketAddr) {
        let now = self.now;
        let c = self.next_conn;
        self.next_conn += 1;
        let (acceptor, there, back) = if addr == SocketAddr::new(tracker_ip(), TRACKER_HTTP_PORT) {
            (
                End::Tracker,
                self.config.tracker_link,
                self.config.tracker_link,
            )
        } else if let Some(j) = self.node_at(addr) {
            (End::Pending(j), self.link(node, j), self.link(j, node))
        } else {
            let at = now + self.config.default_link.latency * 2;
            self.schedule(at, Ev::ConnectFailed { node, id });
            return;
        };
        let tap = self.config.tap && acceptor != End::Tracker;
        self.conns.insert(
            c,
            SimConn {
                ends: [End::Node(node, id), acceptor],
                open: [true, true],
                dirs: [
                    Dir {
                        spec: there,
                        busy: now,
                        tap: tap.then(Tap::new),
                    },
                    Dir {
                        spec: back,
                        busy: now,
                        tap: tap.then(Tap::new),
                    },
                ],
                established: false,
                http_buf: Vec::new(),
            },
        );
        self.ends.insert((node, id), c);
        self.schedule(now + there.latency, Ev::Syn { conn: c });
    }

    /// Queues bytes from `node`'s end of connection `c`.
    fn send(&mut self, c: u64, node: NodeId, data: Bytes) {
        let now = self.now;
        let Some(sc) = self.conns.get_mut(&c) else {
            return;
        };
        let side = match sc.ends[0] {
            End::Node(n, _) if n == node => 0,
            _ => 1,
        };
        if !sc.open[side] {
            return;
        }
        if let (Some(tap), End::Node(from, _), End::Node(to, _)) =
            (sc.dirs[side].tap.as_mut(), sc.ends[side], sc.ends[1 - side])
        {
            tap.feed(now, c, from, to, &data, &mut self.taps);
        }
        let d = &mut sc.dirs[side];
        let done = d.busy.max(now) + d.spec.transmit(data.len());
        d.busy = done;
        let arrive = done + d.spec.latency;
        let bytes = data.len();
        self.schedule(
            done,
            Ev::Flushed {
                conn: c,
                dir: side,
                bytes,
            },
        );
        self.schedule(
            arrive,
            Ev::Deliver {
                conn: c,
                dir: side,
                data,
            },
        );
    }

    /// Drops a connection once neither end is open.
    fn forget_if_closed(&mut self, c: u64) {
        let Some(sc) = self.conns.get(&c) else {
            return;
        };
        if sc.open.iter().any(|o| *o) {
            return;
        }
        for e in sc.ends {
            if let End::Node(n, id) = e {
                if self.ends.get(&(n, id)) == Some(&c) {
                    self.ends.remove(&(n, id));
                }
            }
        }
        self.conns.remove(&c);
    }

    fn apply(&mut self, ev: Ev) {
        let now = self.now;
        let ts = now.since_origin().as_nanos() as u64;
        match ev {
            Ev::Syn { conn } => {
                self.fingerprint = fnv(fnv(self.fingerprint, ts), 1);
                let Some(sc) = self.conns.get(&conn) else {
                    return;
                };
                let End::Node(dialer, _) = sc.ends[0] else {
                    return;
                };
                let dialer_open = sc.open[0];
                let back = sc.dirs[1].spec.latency;
                match sc.ends[1] {
                    End::Tracker => {
                        if let Some(sc) = self.conns.get_mut(&conn) {
                            sc.established = true;
                        }
                        if dialer_open {
                            self.schedule(now + back, Ev::Connected { conn });
                        } else if let Some(sc) = self.conns.get_mut(&conn) {
                            sc.open[1] = false;
                            self.forget_if_closed(conn);
                        }
                    }
                    End::Pending(j) => {
                        let remote = self.ephemeral(dialer);
                        let accepted = if dialer_open
                            && self.nodes[j].listening
                            && self.nodes[j].state == NodeState::Running
                        {
                            self.nodes[j].engine.handle_incoming(now, remote)
                        } else {
                            None
                        };
                        match accepted {
                            Some(jid) => {
                                if let Some(sc) = self.conns.get_mut(&conn) {
                                    sc.ends[1] = End::Node(j, jid);
                                    sc.established = true;
                                }
                                self.ends.insert((j, jid), conn);
                                self.schedule(now + back, Ev::Connected { conn });
                                self.drain(j);
                            }
                            None => {
                                if let Some(sc) = self.conns.get_mut(&conn) {
                                    sc.open[1] = false;
                                    if let End::Node(n, id) = sc.ends[0] {
                                        if sc.open[0] {
                                            self.schedule(
                                                now + back,
                                                Ev::ConnectFailed { node: n, id },
                                            );
                                        }
                                    }
                                }
                                self.forget_if_closed(conn);
                            }
                        }
                    }
                    End::Node(..) => {}
                }
            }
            Ev::Connected { conn } => {
                self.fingerprint = fnv(fnv(self.fingerprint, ts), 2);
                let Some(sc) = self.conns.get(&conn) else {
                    return;
                };
                if let (End::Node(n, id), true) = (sc.ends[0], sc.open[0]) {
                    self.nodes[n].engine.handle_connected(now, id);
                    self.drain(n);
                }
            }
            Ev::ConnectFailed { node, id } => {
                self.fingerprint = fnv(fnv(self.fingerprint, ts), 3);
                if let Some(c) = self.ends.remove(&(node, id)) {
                    if let Some(sc) = self.conns.get_mut(&c) {
                        sc.open = [false, false];
                    }
                    self.forget_if_closed(c);
                }
                self.nodes[node]
                    .engine
                    .handle_connect_failed(now, id, "connection refused");
                self.drain(node);
            }
            Ev::Deliver { conn, dir, data } => {
                self.fingerprint = fnv(fnv(self.fingerprint, ts), 4 | (data.len() as u64) << 8);
                self.deliver(conn, dir, data);
            }
            Ev::Flushed { conn, dir, bytes } => {
                let Some(sc) = self.conns.get(&conn) else {
                    return;
                };
                if let (End::Node(n, id), true) = (sc.ends[dir], sc.open[dir]) {
                    self.nodes[n].engine.handle_flushed(now, id, bytes);
                    self.drain(n);
                }
            }
            Ev::Fin { conn, dir } => {
                self.fingerprint = fnv(fnv(self.fingerprint, ts), 5);
                let to = 1 - dir;
                let Some(sc) = self.conns.get_mut(&conn) else {
                    return;
                };
                if !sc.open[to] {
                    return;
                }
                sc.open[to] = false;
                let end = sc.ends[to];
                if let (true, End::Node(n, _), End::Node(peer, _)) =
                    (sc.dirs[to].tap.is_some(), end, sc.ends[dir])
                {
                    self.taps.push(TapRecord {
                        at: now,
                        from: n,
                        to: peer,
                        conn,
                        message: TapMessage::Closed,
                    });
                }
                if let End::Node(n, id) = end {
                    self.ends.remove(&(n, id));
                    self.nodes[n].engine.handle_closed(now, id);
                    self.drain(n);
                }
                self.forget_if_closed(conn);
            }
            Ev::JobDone { node, id, result } => {
                self.fingerprint = fnv(fnv(self.fingerprint, ts), 6 | (id.0 << 8));
                self.nodes[node].engine.handle_job_done(now, id, result);
                self.drain(node);
            }
            Ev::Resolved { node, id, result } => {
                self.nodes[node].engine.handle_resolved(now, id, result);
                self.drain(node);
            }
            Ev::Datagram { node, from, data } => {
                self.fingerprint = fnv(fnv(self.fingerprint, ts), 7);
                self.nodes[node].engine.handle_datagram(now, from, &data);
                self.drain(node);
            }
            Ev::TrackerDatagram { from, node, data } => {
                if let Some(reply) = self.tracker.udp_datagram(now, &mut self.rng, from, &data) {
                    let at = now + self.config.tracker_link.latency;
                    let from = SocketAddr::new(tracker_ip(), TRACKER_UDP_PORT);
                    self.schedule(
                        at,
                        Ev::Datagram {
                            node,
                            from,
                            data: reply.into(),
                        },
                    );
                }
            }
            Ev::UdpArrival { from, to } => self.deliver_udp(from, to),
            Ev::Chaos => {
                self.chaos();
                if let Some(d) = self.config.drop_links {
                    let gap = self.chaos_gap(d.mean_interval);
                    if now + gap <= d.until {
                        self.schedule(now + gap, Ev::Chaos);
                    }
                }
            }
        }
    }

    fn ephemeral(&mut self, node: NodeId) -> SocketAddr {
        let n = &mut self.nodes[node];
        let port = n.next_port;
        n.next_port = if n.next_port == u16::MAX {
            49152
        } else {
            n.next_port + 1
        };
        SocketAddr::new(n.addr.ip(), port)
    }

    fn deliver(&mut self, conn: u64, dir: usize, data: Bytes) {
        let now = self.now;
        let to = 1 - dir;
        let Some(sc) = self.conns.get_mut(&conn) else {
            return;
        };
        if !sc.open[to] {
            return;
        }
        match sc.ends[to] {
            End::Node(n, id) => {
                self.counters.bytes_delivered += data.len() as u64;
                self.nodes[n].engine.handle_read(now, id, &data);
                self.drain(n);
            }
            End::Tracker => {
                sc.http_buf.extend_from_slice(&data);
                let End::Node(client, _) = sc.ends[0] else {
                    return;
                };
                let source = self.nodes[client].addr.ip();
                let buf = std::mem::take(&mut sc.http_buf);
                match self.tracker.http_request(now, &mut self.rng, source, &buf) {
                    None => {
                        if let Some(sc) = self.conns.get_mut(&conn) {
                            sc.http_buf = buf;
                        }
                    }
                    Some(reply) => {
                        // Answer, then close our side (HTTP/1.1 with `Connection: close`).
                        let Some(sc) = self.conns.get_mut(&conn) else {
                            return;
                        };
                        let d = &mut sc.dirs[1];
                        let done = d.busy.max(now) + d.spec.transmit(reply.len());
                        d.busy = done;
                        let arrive = done + d.spec.latency;
                        sc.open[1] = false;
                        self.schedule(
                            arrive,
                            Ev::Deliver {
                                conn,
                                dir: 1,
                                data: reply.into(),
                            },
                        );
                        self.schedule(arrive, Ev::Fin { conn, dir: 1 });
                    }
                }
            }
            End::Pending(_) => {}
        }
    }

    /// Cuts one established peer connection chosen at random: both ends are told it closed, bytes in
    /// flight are lost.
    fn chaos(&mut self) {
        let now = self.now;
        let candidates: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.established
                    && c.open == [true, true]
                    && matches!(c.ends, [End::Node(..), End::Node(..)])
            })
            .map(|(id, _)| *id)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let pick = candidates[self.rng.random_range(0..candidates.len())];
        self.counters.links_cut += 1;
        self.fingerprint = fnv(self.fingerprint, 8 | pick << 8);
        let Some(sc) = self.conns.remove(&pick) else {
            return;
        };
        for e in sc.ends {
            if let End::Node(n, id) = e {
                self.ends.remove(&(n, id));
                self.nodes[n].engine.handle_closed(now, id);
                self.drain(n);
            }
        }
    }

    /// Performs a job on the node's disk (the shared [`MemDisk`]); a `VerifyWrite` of a
    /// registered torrent also gets the original piece, for [`HashMode::CompareWithOrigin`] and
    /// [`SimConfig::share_verified_pieces`].
    fn run_job(&mut self, node: NodeId, job: Job) -> JobResult {
        let (Job::VerifyWrite { torrent, piece, .. } | Job::Read { torrent, piece, .. }) = &job;
        let key = self.nodes[node].torrents.get(torrent).copied();
        let use_origin = OriginUse {
            trust_equal: self.config.hash_mode == HashMode::CompareWithOrigin,
            share: self.config.share_verified_pieces,
        };
        let origin = match (&job, key) {
            (Job::VerifyWrite { .. }, Some(ih)) if use_origin != OriginUse::default() => {
                self.origins.get(&ih).and_then(|o| {
                    Some(OriginPiece {
                        data: o.piece(*piece)?,
                        hash: o.metainfo.info.piece_hash(*piece)?,
                    })
                })
            }
            _ => None,
        };
        self.nodes[node].disk.run(key, &job, origin, use_origin)
    }
}

/// A number standing for an event, for the fingerprint.
fn event_tag(e: &Event) -> u64 {
    match e {
        Event::TorrentAdded(t) => 100 + u64::from(t.0),
        Event::PieceVerified { piece, .. } => 1 << 32 | u64::from(*piece),
        Event::PieceFailed { piece, .. } => 2 << 32 | u64::from(*piece),
        Event::TorrentCompleted(_) => 3 << 32,
        Event::TorrentPaused(_) => 4 << 32,
        Event::TorrentResumed(_) => 5 << 32,
        Event::TorrentRemoved(_) => 6 << 32,
        Event::TorrentError { .. } => 7 << 32,
        Event::TrackerError { .. } => 8 << 32,
        Event::TrackerReply { peers, .. } => 9 << 32 | *peers as u64,
        Event::PeerConnected { addr, .. } => 10 << 32 | u64::from(addr.port()),
        Event::PeerDisconnected { addr, .. } => 11 << 32 | u64::from(addr.port()),
        Event::PeerBanned { addr, .. } => 12 << 32 | u64::from(addr.port()),
        Event::MetadataReceived { torrent, .. } => 13 << 32 | u64::from(torrent.0),
        Event::ScrapeResult { url, .. } => 14 << 32 | url.len() as u64,
        Event::PeerRefused { addr, .. } => 15 << 32 | u64::from(addr.port()),
        Event::WebSeedError { url, .. } => 16 << 32 | url.len() as u64,
        Event::PeerConnectFailed { addr, .. } => 17 << 32 | u64::from(addr.port()),
    }
}

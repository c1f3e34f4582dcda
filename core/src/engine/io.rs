//! The engine's input/output contract: the identifiers, work orders, results, events and statistics
//! that pass between the sans-IO [`Engine`](super::Engine) and whatever runs it (a tokio or async-std
//! driver, or a deterministic simulation).
//!
//! A driver needs no protocol knowledge: it opens the connections it is told to open, moves bytes,
//! runs jobs (hashing, file reads and writes) on worker threads, resolves host names, fires the one
//! timer the engine asks for, and hands every result back with the current time.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::bitfield::Bitfield;
use crate::tracker::announce::TrackerStatus;
use crate::tracker::ScrapeStats;
use crate::types::{InfoHash, PeerId};

/// Identifies a torrent within one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TorrentId(pub u32);

/// Identifies a TCP connection (to a peer or to an HTTP tracker) within one engine. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Identifies a job (hash, read, write) the engine handed out. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// Identifies a host-name lookup the engine asked for. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResolveId(pub u64);

/// Something the driver must do. Drain with `Engine::poll_output` until `None`, after every input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Open a TCP connection to `addr`; report `Engine::handle_connected` or
    /// `Engine::handle_connect_failed` for `conn`.
    Connect {
        /// The connection's id from now on.
        conn: ConnId,
        /// Where to connect.
        addr: SocketAddr,
        /// `Some(host)`: this connection needs TLS (an `https://` tracker). The driver runs the handshake
        /// with `host` as the server name the certificate must match, reports `handle_connected` only
        /// after it, and carries plaintext both ways from then on; a handshake or certificate failure is
        /// a `handle_connect_failed` with the reason (never a fallback to plain TCP). `None`: plain TCP.
        tls: Option<String>,
    },
    /// Write `data` to the connection, after everything sent on it before. Report the bytes written
    /// with `Engine::handle_flushed` so the engine can pace disk reads for slow readers.
    Send {
        /// The connection.
        conn: ConnId,
        /// The bytes (piece payloads are zero-copy slices of what was read from disk).
        data: Bytes,
    },
    /// Close the connection (after writing what was already sent on it). Report nothing back.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Send one UDP datagram (to a UDP tracker) from the engine's one UDP socket.
    SendDatagram {
        /// Destination.
        to: SocketAddr,
        /// The datagram.
        data: Bytes,
    },
    /// Look up a host name (of a tracker or a peer hint) off the event loop; report
    /// `Engine::handle_resolved`.
    Resolve {
        /// The lookup's id.
        id: ResolveId,
        /// The host name.
        host: String,
        /// The port to put in the resulting addresses.
        port: u16,
    },
    /// Run a job on a worker thread; report `Engine::handle_job_done`.
    Job {
        /// The job's id.
        id: JobId,
        /// What to do.
        job: Job,
    },
}

/// Work that must not run on the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Check a downloaded piece and, if it is right, store it: SHA-1 the concatenation of `blocks`
    /// (one whole piece); if that equals `expected`, write the blocks to the torrent's files (the
    /// piece starts at byte `piece * piece_length` of the torrent) and report [`JobResult::Written`],
    /// otherwise write nothing and report [`JobResult::Mismatch`].
    ///
    /// Hash and write in one go, on one worker thread, while the blocks are still in that core's
    /// cache: done as two jobs with a trip through the event loop between them, the write reads the
    /// piece from memory again, which measured as the costliest step of a download. Writes of one
    /// torrent must not overlap, and none may start after the torrent's storage was removed; hashing
    /// may run in parallel.
    VerifyWrite {
        /// The torrent.
        torrent: TorrentId,
        /// The piece.
        piece: u32,
        /// The piece's bytes, in order.
        blocks: Vec<Bytes>,
        /// The piece's SHA-1 from the metainfo.
        expected: [u8; 20],
    },
    /// Read a block for a peer and report [`JobResult::Read`].
    Read {
        /// The torrent.
        torrent: TorrentId,
        /// The piece.
        piece: u32,
        /// Offset within the piece.
        offset: u32,
        /// Length of the block.
        length: u32,
    },
}

/// The outcome of a [`Job`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    /// A [`Job::VerifyWrite`]'s piece matched its hash and is on disk.
    Written,
    /// A [`Job::VerifyWrite`]'s piece did not match its hash; nothing was written.
    Mismatch,
    /// The bytes of a [`Job::Read`].
    Read(Bytes),
    /// The job failed; the torrent is stopped with this message (verified pieces stay verified).
    Failed(StorageFailure),
}

/// Why a disk job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFailure {
    /// What kind of failure, so the engine and front ends can react (e.g. "disk full").
    pub kind: StorageFailureKind,
    /// One line naming the file and the error.
    pub message: String,
}

/// Classes of disk failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageFailureKind {
    /// No space left (or quota exceeded).
    NoSpace,
    /// Permission denied or read-only file system.
    PermissionDenied,
    /// A file that should hold verified data is gone.
    NotFound,
    /// Anything else.
    Other,
}

/// What a front end is told about. Drain with `Engine::poll_event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A torrent was added.
    TorrentAdded(TorrentId),
    /// A torrent added from a magnet link has its metadata (checked against the info-hash): it is an
    /// ordinary torrent from now on. The driver creates its storage now, from
    /// `Engine::torrent_info(torrent)` (which also gives the raw bytes to save as a `.torrent`,
    /// with `Engine::torrent_metainfo`); no job for the torrent is issued before this event.
    MetadataReceived {
        /// The torrent.
        torrent: TorrentId,
        /// Its info-hash.
        info_hash: InfoHash,
    },
    /// A piece passed its hash check and is on disk.
    PieceVerified {
        /// The torrent.
        torrent: TorrentId,
        /// The piece.
        piece: u32,
    },
    /// A piece failed its hash check and will be fetched again.
    PieceFailed {
        /// The torrent.
        torrent: TorrentId,
        /// The piece.
        piece: u32,
    },
    /// Every wanted piece is verified and written.
    TorrentCompleted(TorrentId),
    /// The torrent was paused.
    TorrentPaused(TorrentId),
    /// The torrent was resumed.
    TorrentResumed(TorrentId),
    /// The torrent was removed; after this its id is unknown.
    TorrentRemoved(TorrentId),
    /// The torrent stopped on an error (e.g. a disk failure); verified pieces stay verified.
    TorrentError {
        /// The torrent.
        torrent: TorrentId,
        /// What went wrong.
        message: String,
    },
    /// A tracker answered with an error, or could not be reached.
    TrackerError {
        /// The torrent.
        torrent: TorrentId,
        /// The tracker's URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A tracker answered with peers.
    TrackerReply {
        /// The torrent.
        torrent: TorrentId,
        /// The tracker's URL.
        url: String,
        /// How many peers it returned.
        peers: usize,
    },
    /// A scrape started with `Engine::scrape` finished at one tracker.
    ScrapeResult {
        /// The torrent.
        torrent: TorrentId,
        /// The tracker's URL (as in the torrent).
        url: String,
        /// The tracker's counters for the torrent, or why there are none.
        result: Result<ScrapeStats, String>,
    },
    /// A peer completed the handshake.
    PeerConnected {
        /// The torrent.
        torrent: TorrentId,
        /// The peer's address.
        addr: SocketAddr,
    },
    /// A peer connection ended.
    PeerDisconnected {
        /// The torrent.
        torrent: TorrentId,
        /// The peer's address.
        addr: SocketAddr,
        /// Why, in one line.
        reason: String,
    },
    /// A connection we dialled to a peer ended before its handshake completed (refused, timed
    /// out, closed, or the handshake or its encryption failed); the address is tried again after
    /// its back-off. Front ends log it at debug level, so that a peer given by hand that cannot be
    /// reached says why.
    PeerConnectFailed {
        /// The torrent.
        torrent: TorrentId,
        /// The peer's address.
        addr: SocketAddr,
        /// Why, in one line.
        reason: String,
    },
    /// A peer was turned away (a connection cap, the per-address cap, a full torrent with no
    /// connection to give up for it). Front ends log it at debug level: without it a refused honest
    /// peer leaves no trace.
    PeerRefused {
        /// The torrent it asked for, when its handshake named one we run.
        torrent: Option<TorrentId>,
        /// The peer's address.
        addr: SocketAddr,
        /// Why, in one line.
        reason: String,
    },
    /// A web seed failed, backs off, lacks a file, or was disabled (e.g. it sent data that failed
    /// the hash check, or ignores `Range`).
    WebSeedError {
        /// The torrent.
        torrent: TorrentId,
        /// The web seed's `url-list` entry.
        url: String,
        /// What happened, in one line.
        message: String,
    },
    /// A peer was banned for this session (e.g. repeatedly sent data that failed the hash check).
    PeerBanned {
        /// The torrent.
        torrent: TorrentId,
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// The life-cycle state of a torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorrentState {
    /// Added from a magnet link: fetching the metadata (the info dictionary) from peers. No files,
    /// no pieces yet; see [`Event::MetadataReceived`].
    FetchingMetadata,
    /// Fetching pieces.
    Downloading,
    /// Every wanted piece is verified; serving others.
    Seeding,
    /// Stopped by the user; no connections.
    Paused,
    /// Stopped by an error (see the message).
    Error(String),
}

/// A snapshot of one peer connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The peer's id, once the handshake is done.
    pub peer_id: Option<PeerId>,
    /// The client name from the BEP 10 handshake, if sent.
    pub client: Option<String>,
    /// Whether we opened the connection.
    pub outgoing: bool,
    /// Payload download rate from this peer, bytes per second.
    pub download_rate: u64,
    /// Payload upload rate to this peer, bytes per second.
    pub upload_rate: u64,
    /// Payload bytes downloaded from this peer.
    pub downloaded: u64,
    /// Payload bytes uploaded to this peer.
    pub uploaded: u64,
    /// Pieces the peer has.
    pub pieces: u32,
    /// We are choking the peer.
    pub am_choking: bool,
    /// We are interested in the peer.
    pub am_interested: bool,
    /// The peer is choking us.
    pub peer_choking: bool,
    /// The peer is interested in us.
    pub peer_interested: bool,
    /// Our requests outstanding at this peer.
    pub requests: u32,
    /// The peer is snubbed (sent nothing for a while).
    pub snubbed: bool,
}

/// A snapshot of one file of a torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStats {
    /// Path relative to the download directory, joined with `/`.
    pub path: String,
    /// Length in bytes.
    pub length: u64,
    /// Whether the user selected it.
    pub wanted: bool,
    /// Bytes of it covered by verified pieces.
    pub have: u64,
}

/// A snapshot of one torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorrentStats {
    /// The torrent's id.
    pub id: TorrentId,
    /// Its name.
    pub name: String,
    /// Its info-hash.
    pub info_hash: InfoHash,
    /// Its state.
    pub state: TorrentState,
    /// Total size of all files.
    pub total_bytes: u64,
    /// Bytes of the selected files.
    pub wanted_bytes: u64,
    /// Verified bytes of the selected files.
    pub have_bytes: u64,
    /// Payload bytes downloaded this session.
    pub downloaded: u64,
    /// Payload bytes uploaded this session.
    pub uploaded: u64,
    /// Download rate, bytes per second.
    pub download_rate: u64,
    /// Upload rate, bytes per second.
    pub upload_rate: u64,
    /// Connected peers.
    pub peers: u32,
    /// Connected peers that have every piece.
    pub seeds: u32,
    /// Estimated time to completion at the current rate, if downloading at a non-zero rate.
    pub eta: Option<Duration>,
    /// Verified pieces (all pieces, selected or not).
    pub have: Bitfield,
    /// Pieces being fetched now (a block requested or received, not yet verified), ascending.
    pub in_flight: Vec<u32>,
    /// How many connected peers have each piece (seeds included, saturating at `u16::MAX`); empty
    /// until the metadata is known. For a front end's piece map.
    pub availability: Vec<u16>,
    /// Per peer.
    pub peer_list: Vec<PeerStats>,
    /// Per tracker.
    pub trackers: Vec<TrackerStatus>,
    /// Per web seed (BEP 19 `url-list`).
    pub web_seeds: Vec<super::WebSeedStats>,
    /// Per file.
    pub files: Vec<FileStats>,
}

impl TorrentStats {
    /// Progress over the selected files, 0.0 to 1.0.
    pub fn progress(&self) -> f64 {
        if self.wanted_bytes == 0 {
            1.0
        } else {
            self.have_bytes as f64 / self.wanted_bytes as f64
        }
    }
}

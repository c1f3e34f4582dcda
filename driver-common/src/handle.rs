//! The session handle: how front ends (the CLI, a TUI, tests) talk to a running session, from any
//! thread, whichever runtime runs it.

use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::Stream;
use hyperblow_core::engine::{AddError, EngineConfig, Event, TorrentId, TorrentStats};
use hyperblow_core::magnet::MagnetLink;
use hyperblow_core::metainfo::Metainfo;
use hyperblow_core::ratelimit::RateLimits;
use hyperblow_core::tracker::ScrapeStats;
use hyperblow_core::{InfoHash, PeerId};
use hyperblow_storage::{StorageConfig, StorageError, StorageErrorKind};

use crate::block::block_on;

/// How a session is set up. [`SessionConfig::default`] listens on a free port on every address of
/// both families.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// TCP port to accept peers on; 0 picks a free one (see [`SessionHandle::listen_addr`]).
    pub listen_port: u16,
    /// Address to bind the TCP listener and the UDP socket to. The default `::` listens on every
    /// address of both families (one dual-stack socket each, IPv4 peers on the same port; `0.0.0.0`
    /// if the host has no IPv6); `0.0.0.0` is IPv4 only; tests use 127.0.0.1 or ::1.
    pub bind_addr: IpAddr,
    /// The engine's tunables. Its `listen_port` is replaced by the port actually bound.
    pub engine: EngineConfig,
    /// Where resume files go: `<dir>/<info-hash hex>.resume`. `None`: next to the data, in
    /// `<output dir>/.hyperblow/<info-hash hex>.resume`.
    pub resume_dir: Option<PathBuf>,
    /// Disk and hash worker threads; 0 means one per CPU plus one (for a thread waiting on a write).
    pub worker_threads: usize,
    /// Seed for the engine's randomness (peer id, piece order); `None` draws one from the OS.
    pub seed: Option<u64>,
    /// How long an outgoing TCP connection may take to open (default 10 s).
    pub connect_timeout: Duration,
    /// Least time between two resume-file saves of one torrent while it downloads (default 1 s).
    pub resume_interval: Duration,
    /// Per-torrent storage tunables.
    pub storage: StorageConfig,
    /// Session-wide download and upload limits from the start (default unlimited); change them later
    /// with [`SessionHandle::set_rate_limits`].
    pub rate_limits: RateLimits,
    /// A PEM bundle of the CA certificates trusted for `https://` trackers, replacing the system's
    /// roots. `None`: the bundle named by `SSL_CERT_FILE` if set, else the system's store (see
    /// [`crate::tls`]).
    pub tls_roots: Option<PathBuf>,
    /// Where the engine's state between runs is kept (the DHT's node id and routing table): read at
    /// start, written at shutdown. `None`: nothing is kept.
    pub state_file: Option<PathBuf>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            listen_port: 0,
            bind_addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            engine: EngineConfig::default(),
            resume_dir: None,
            worker_threads: 0,
            seed: None,
            connect_timeout: Duration::from_secs(10),
            resume_interval: Duration::from_secs(1),
            storage: StorageConfig::default(),
            rate_limits: RateLimits::default(),
            tls_roots: None,
            state_file: None,
        }
    }
}

/// A torrent to add to a session. Build with [`AddTorrentRequest::new`] and the setters.
#[derive(Debug, Clone)]
pub struct AddTorrentRequest {
    /// The parsed `.torrent`.
    pub metainfo: Metainfo,
    /// The download directory (the torrent's files go under it, as the torrent names them).
    pub output_dir: PathBuf,
    /// One flag per file (in the torrent's file order); `None`: every file.
    pub wanted_files: Option<Vec<bool>>,
    /// Peers to connect to besides those trackers return (e.g. `--peer`).
    pub peers: Vec<SocketAddr>,
    /// Add it paused (checked, but no connections until [`SessionHandle::resume`]).
    pub paused: bool,
    /// Ignore the resume file and hash every piece on disk (a front end's "force re-check").
    pub force_check: bool,
}

impl AddTorrentRequest {
    /// Downloads (or seeds) every file of `metainfo` into `output_dir`, running at once.
    pub fn new(metainfo: Metainfo, output_dir: impl Into<PathBuf>) -> Self {
        AddTorrentRequest {
            metainfo,
            output_dir: output_dir.into(),
            wanted_files: None,
            peers: Vec::new(),
            paused: false,
            force_check: false,
        }
    }

    /// Only the files whose flag is `true` (one flag per file).
    pub fn wanted_files(mut self, wanted: Vec<bool>) -> Self {
        self.wanted_files = Some(wanted);
        self
    }

    /// Also connect to these peers.
    pub fn peers(mut self, peers: Vec<SocketAddr>) -> Self {
        self.peers = peers;
        self
    }

    /// Add it paused.
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// Hash every piece already on disk even if a resume file vouches for them (remove the torrent
    /// without deleting data, then add it again with this, to re-check it).
    pub fn force_check(mut self, force: bool) -> Self {
        self.force_check = force;
        self
    }
}

/// A torrent to add from a magnet link. Build with [`AddMagnetRequest::new`] and the setters.
///
/// The metadata (file list) is fetched from peers first: from the link's `x.pe` hints, its `tr`
/// trackers and [`AddMagnetRequest::peers`]. When it arrives the session sets the storage up under
/// `output_dir`, accounting for files already there (resume file or full check, like
/// [`SessionHandle::add_torrent`]), and says so with [`SessionEvent::MagnetReady`].
#[derive(Debug, Clone)]
pub struct AddMagnetRequest {
    /// The parsed link (info-hash, name, trackers, peer hints, `so=` selection).
    pub link: MagnetLink,
    /// The download directory (the torrent's files go under it, as the metadata names them).
    pub output_dir: PathBuf,
    /// One flag per file, applied when the file list is known (it overrides the link's `so=`).
    /// `None`: the link's `so=`, or every file. A wrong length stops the torrent with an error then.
    pub wanted_files: Option<Vec<bool>>,
    /// Peers to connect to besides the link's hints and what trackers return (e.g. `--peer`).
    pub peers: Vec<SocketAddr>,
    /// Add it paused (no connections, so no metadata, until [`SessionHandle::resume`]).
    pub paused: bool,
}

impl AddMagnetRequest {
    /// Fetches the metadata, then every file (or the link's `so=` selection) into `output_dir`.
    pub fn new(link: MagnetLink, output_dir: impl Into<PathBuf>) -> Self {
        AddMagnetRequest {
            link,
            output_dir: output_dir.into(),
            wanted_files: None,
            peers: Vec::new(),
            paused: false,
        }
    }

    /// Only the files whose flag is `true` (one flag per file of the metadata to come).
    pub fn wanted_files(mut self, wanted: Vec<bool>) -> Self {
        self.wanted_files = Some(wanted);
        self
    }

    /// Also connect to these peers.
    pub fn peers(mut self, peers: Vec<SocketAddr>) -> Self {
        self.peers = peers;
        self
    }

    /// Add it paused.
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }
}

/// What [`SessionHandle::add_magnet`] did: the torrent exists and is fetching its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddedMagnet {
    /// The torrent's id in this session.
    pub id: TorrentId,
    /// Its info-hash (from the link).
    pub info_hash: InfoHash,
}

/// What [`SessionHandle::add_torrent`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedTorrent {
    /// The torrent's id in this session.
    pub id: TorrentId,
    /// Its info-hash.
    pub info_hash: InfoHash,
    /// How the pieces already on disk were found.
    pub start: StartKind,
    /// Pieces already verified on disk.
    pub have_pieces: u32,
    /// Pieces in the torrent.
    pub total_pieces: u32,
    /// Pieces whose data was read and hashed when the torrent was added: none after a clean exit,
    /// only those written after the last checkpoint after a crash, all of them without a resume file.
    pub rehashed_pieces: u32,
}

/// How a torrent's existing data was accounted for when it was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// No file of the torrent existed: starting from nothing.
    Fresh,
    /// A trustworthy resume file gave the verified pieces without reading the data.
    Resumed,
    /// Files existed but no usable resume file: every piece was re-hashed.
    Checked,
}

/// Something a front end may want to show. Engine events are passed through as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// An event of the engine (pieces, peers, trackers, torrent life cycle).
    Engine(Event),
    /// Existing data of a torrent being added is being checked: `checked` of `total` pieces done.
    Checking {
        /// The torrent (it has no id until the check is done).
        info_hash: InfoHash,
        /// Pieces checked so far.
        checked: u32,
        /// Pieces in the torrent.
        total: u32,
    },
    /// A disk operation failed (the engine also stops the torrent with a `TorrentError`).
    StorageError {
        /// The torrent.
        torrent: TorrentId,
        /// What kind of failure.
        kind: StorageErrorKind,
        /// One line naming the file and the error.
        message: String,
    },
    /// A torrent added from a magnet link got its metadata and its storage is set up: existing files
    /// were accounted for (`start`, `have_pieces`) and downloading goes on (unless it was paused).
    /// Comes after `Engine(Event::MetadataReceived { .. })`.
    MagnetReady(AddedTorrent),
    /// The session finished shutting down; no more events follow.
    ShutDown,
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The TCP listener could not be bound.
    #[error("cannot listen for peers on TCP {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The UDP socket (for UDP trackers) could not be bound.
    #[error("cannot bind the UDP tracker socket on {addr}: {source}")]
    Udp {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The disk and hash worker threads could not be started.
    #[error("cannot start the disk worker threads: {0}")]
    Workers(std::io::Error),
    /// The runtime could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The session has shut down (or its event loop is gone).
    #[error("the session has shut down")]
    Closed,
    /// The engine refused the command (duplicate torrent, bad selection, unknown id, shutting down).
    #[error(transparent)]
    Engine(#[from] AddError),
    /// The torrent's storage could not be set up or checked, or its data could not be deleted.
    #[error("storage of torrent {info_hash}: {source}")]
    Storage {
        /// The torrent.
        info_hash: InfoHash,
        /// The disk error (names the path).
        source: StorageError,
    },
    /// Deleting a removed torrent's data failed (the torrent is removed all the same).
    #[error("deleting {}: {source}", path.display())]
    Delete {
        /// The file that could not be deleted.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A blocking wait ran out of time (the command itself may still complete).
    #[error("no answer from the session within {0:?}")]
    TimedOut(Duration),
}

type Reply<T> = oneshot::Sender<Result<T, SessionError>>;

/// One tracker's answer to a scrape: its URL and its counters for the torrent, or why there are none.
pub type ScrapeAnswer = (String, Result<ScrapeStats, String>);

/// A command from a handle to the event loop.
#[derive(Debug)]
pub(crate) enum Command {
    Add(Box<AddTorrentRequest>, Reply<AddedTorrent>),
    AddMagnet(Box<AddMagnetRequest>, Reply<AddedMagnet>),
    TorrentFile(TorrentId, Reply<Option<Vec<u8>>>),
    Pause(TorrentId, Reply<()>),
    Resume(TorrentId, Reply<()>),
    Remove(TorrentId, bool, Reply<()>),
    SetFiles(TorrentId, Vec<bool>, Reply<()>),
    AddPeer(TorrentId, SocketAddr, Reply<()>),
    SetRateLimits(Option<TorrentId>, RateLimits, Reply<()>),
    Stats(Reply<Vec<TorrentStats>>),
    DhtStats(Reply<Option<hyperblow_core::dht::DhtStats>>),
    Scrape(TorrentId, Reply<Vec<ScrapeAnswer>>),
    Subscribe(mpsc::Sender<SessionEvent>),
    Shutdown(Reply<()>),
}

/// The answer to a command, not yet arrived: `.await` it in async code, or [`Pending::wait`] for it
/// from a plain thread.
#[derive(Debug)]
#[must_use = "a command's result says whether it worked"]
pub struct Pending<T> {
    rx: Option<oneshot::Receiver<Result<T, SessionError>>>,
}

impl<T> Pending<T> {
    /// Blocks the calling thread until the answer arrives. Do not call it from an async task.
    pub fn wait(mut self) -> Result<T, SessionError> {
        match &mut self.rx {
            None => Err(SessionError::Closed),
            Some(rx) => block_on(rx, None).map_or(Err(SessionError::Closed), flatten),
        }
    }

    /// Like [`Pending::wait`], giving up after `timeout` with [`SessionError::TimedOut`].
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<T, SessionError> {
        match &mut self.rx {
            None => Err(SessionError::Closed),
            Some(rx) => {
                block_on(rx, Some(timeout)).map_or(Err(SessionError::TimedOut(timeout)), flatten)
            }
        }
    }
}

fn flatten<T>(r: Result<Result<T, SessionError>, oneshot::Canceled>) -> Result<T, SessionError> {
    r.unwrap_or(Err(SessionError::Closed))
}

impl<T> Future for Pending<T> {
    type Output = Result<T, SessionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.rx {
            None => Poll::Ready(Err(SessionError::Closed)),
            Some(rx) => Pin::new(rx).poll(cx).map(flatten),
        }
    }
}

/// Events of a session, for one subscriber ([`SessionHandle::events`]). A `Stream` for async code, with
/// blocking and polling receives for plain threads. It ends after [`SessionEvent::ShutDown`].
///
/// Each subscriber has a buffer of [`EVENT_BUFFER`] events; a subscriber that falls that far behind
/// misses the newest events until it catches up (the session never waits for a front end).
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<SessionEvent>,
}

/// How many events a subscriber may leave unread before newer ones are dropped for it.
pub const EVENT_BUFFER: usize = 16 * 1024;

/// Why [`EventStream::recv_timeout`] or [`EventStream::try_recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// No event yet.
    #[error("no event yet")]
    Empty,
    /// The session has ended; no more events will come.
    #[error("the session has ended")]
    Closed,
}

impl EventStream {
    /// The next event (async); `None` once the session has ended.
    pub async fn recv(&mut self) -> Option<SessionEvent> {
        futures::StreamExt::next(&mut self.rx).await
    }

    /// The next event, blocking the calling thread; `None` once the session has ended.
    pub fn recv_blocking(&mut self) -> Option<SessionEvent> {
        block_on(&mut futures::StreamExt::next(&mut self.rx), None).flatten()
    }

    /// The next event, waiting at most `timeout` (for a display loop that also redraws on a tick).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<SessionEvent, RecvError> {
        match block_on(&mut futures::StreamExt::next(&mut self.rx), Some(timeout)) {
            Some(Some(e)) => Ok(e),
            Some(None) => Err(RecvError::Closed),
            None => Err(RecvError::Empty),
        }
    }

    /// The next event if one is waiting, without blocking.
    pub fn try_recv(&mut self) -> Result<SessionEvent, RecvError> {
        match self.rx.try_recv() {
            Ok(e) => Ok(e),
            Err(mpsc::TryRecvError::Closed) => Err(RecvError::Closed),
            Err(mpsc::TryRecvError::Empty) => Err(RecvError::Empty),
        }
    }
}

impl Stream for EventStream {
    type Item = SessionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SessionEvent>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

/// A handle to a running session: cheap to clone, usable from any thread and any runtime.
///
/// Commands return a [`Pending`] answer (await it, or `.wait()` for it). Dropping every handle shuts the
/// session down as [`SessionHandle::shutdown`] would.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    tx: mpsc::UnboundedSender<Command>,
    listen_addr: SocketAddr,
    peer_id: PeerId,
}

impl SessionHandle {
    pub(crate) fn new(
        tx: mpsc::UnboundedSender<Command>,
        listen_addr: SocketAddr,
        peer_id: PeerId,
    ) -> SessionHandle {
        SessionHandle {
            inner: Arc::new(HandleInner {
                tx,
                listen_addr,
                peer_id,
            }),
        }
    }

    fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Pending<T> {
        let (reply, rx) = oneshot::channel();
        match self.inner.tx.unbounded_send(make(reply)) {
            Ok(()) => Pending { rx: Some(rx) },
            Err(_) => Pending { rx: None },
        }
    }

    /// The address peers can reach us on (the port actually bound, also announced to trackers).
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen_addr
    }

    /// Our peer id for this session.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// Adds a torrent. Its storage is set up under `request.output_dir`; existing data is accounted for
    /// first (a trustworthy resume file, or else a full re-hash with [`SessionEvent::Checking`] progress
    /// if any file exists), so the answer can take a while for large existing downloads.
    pub fn add_torrent(&self, request: AddTorrentRequest) -> Pending<AddedTorrent> {
        self.ask(|r| Command::Add(Box::new(request), r))
    }

    /// Adds a torrent from a magnet link. The answer comes at once (the torrent is fetching its
    /// metadata); [`SessionEvent::MagnetReady`] follows when the metadata is in and the storage is set
    /// up, after checking any files already in `request.output_dir` (with [`SessionEvent::Checking`]
    /// progress). Refused if a torrent with the same info-hash is in the session.
    pub fn add_magnet(&self, request: AddMagnetRequest) -> Pending<AddedMagnet> {
        self.ask(|r| Command::AddMagnet(Box::new(request), r))
    }

    /// The torrent as a `.torrent` file (its info dictionary, byte for byte, and its trackers), e.g. to
    /// save the metadata a magnet link fetched. `None` while the metadata is still being fetched.
    pub fn torrent_file(&self, torrent: TorrentId) -> Pending<Option<Vec<u8>>> {
        self.ask(|r| Command::TorrentFile(torrent, r))
    }

    /// Pauses a torrent (peers closed, `stopped` announced; verified pieces stay).
    pub fn pause(&self, torrent: TorrentId) -> Pending<()> {
        self.ask(|r| Command::Pause(torrent, r))
    }

    /// Resumes a paused torrent (or retries one stopped by an error).
    pub fn resume(&self, torrent: TorrentId) -> Pending<()> {
        self.ask(|r| Command::Resume(torrent, r))
    }

    /// Removes a torrent; with `delete_data`, also deletes its files and resume file.
    pub fn remove(&self, torrent: TorrentId, delete_data: bool) -> Pending<()> {
        self.ask(|r| Command::Remove(torrent, delete_data, r))
    }

    /// Changes which files of a torrent are downloaded (one flag per file).
    pub fn set_wanted_files(&self, torrent: TorrentId, wanted: Vec<bool>) -> Pending<()> {
        self.ask(|r| Command::SetFiles(torrent, wanted, r))
    }

    /// Adds a peer address to try for a torrent.
    pub fn add_peer(&self, torrent: TorrentId, addr: SocketAddr) -> Pending<()> {
        self.ask(|r| Command::AddPeer(torrent, addr, r))
    }

    /// Sets the download and upload limits (payload bytes per second, 0: unlimited) of the whole
    /// session (`torrent: None`) or of one torrent; effective at once.
    pub fn set_rate_limits(&self, torrent: Option<TorrentId>, limits: RateLimits) -> Pending<()> {
        self.ask(|r| Command::SetRateLimits(torrent, limits, r))
    }

    /// A fresh snapshot of every torrent (progress, rates, peers, trackers, files), in id order.
    pub fn stats(&self) -> Pending<Vec<TorrentStats>> {
        self.ask(Command::Stats)
    }

    /// The DHT node's counters (nodes in its routing table, queries, drops); `None` when the session
    /// runs without a DHT (`EngineConfig::dht`).
    pub fn dht_stats(&self) -> Pending<Option<hyperblow_core::dht::DhtStats>> {
        self.ask(Command::DhtStats)
    }

    /// Scrapes every tracker of a torrent: seeders, leechers and completed downloads per tracker URL,
    /// in the order the answers came. Resolves when every tracker has answered or failed (an empty
    /// list if the torrent has no tracker); each answer is also an `Event::ScrapeResult`. A tracker
    /// that never answers is retried for a long time: prefer [`Pending::wait_timeout`].
    pub fn scrape(&self, torrent: TorrentId) -> Pending<Vec<ScrapeAnswer>> {
        self.ask(|r| Command::Scrape(torrent, r))
    }

    /// Subscribes to the session's events from now on (subscribe before adding torrents to see all of
    /// their events). Each call makes an independent stream.
    pub fn events(&self) -> EventStream {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        // If the session is gone the stream just ends at once.
        let _ = self.inner.tx.unbounded_send(Command::Subscribe(tx));
        EventStream { rx }
    }

    /// Shuts the session down: `stopped` to trackers (bounded by the engine's shutdown timeout), every
    /// connection closed, pending disk writes finished, files flushed and resume files saved. Resolves
    /// when all that is done; later commands fail with [`SessionError::Closed`]. Calling it again (or
    /// after the session ended) is harmless.
    pub fn shutdown(&self) -> Pending<()> {
        let pending = self.ask(Command::Shutdown);
        if pending.rx.is_none() {
            // Already gone: that is what the caller wanted.
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Ok(()));
            return Pending { rx: Some(rx) };
        }
        pending
    }

    /// Whether the session's event loop has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.tx.is_closed()
    }
}

//! The event loop: owns the [`Engine`], turns everything that happens (socket bytes, closes, flushes,
//! datagrams, resolutions, job results, user commands, the timer) into engine inputs carrying `now`, and
//! performs every engine output. Written once, generic over the [`Runtime`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant as StdInstant};

use bytes::{Bytes, BytesMut};
use futures::channel::{mpsc, oneshot};
use futures::future::{AbortHandle, Abortable};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hyperblow_core::bitfield::Bitfield;
use hyperblow_core::engine::{
    AddError, AddMagnet, AddTorrent, ConnId, Engine, Event, JobId, JobResult, Output, ResolveId,
    TorrentId, TorrentState,
};
use hyperblow_core::{InfoHash, Instant};
use hyperblow_storage::{Storage, StorageConfig, StorageError, WorkerPool};

use crate::disk::{self, Disk, Prepared};
use crate::handle::{
    AddMagnetRequest, AddTorrentRequest, AddedMagnet, AddedTorrent, Command, ScrapeAnswer,
    SessionConfig, SessionError, SessionEvent, SessionHandle, StartError, StartKind,
};
use crate::runtime::Runtime;
use crate::tasks::{self, WriterCmd};

/// Least time between two `handle_timeout` calls when the engine keeps asking for a deadline that has
/// already passed: the loop never spins, whatever the engine says.
const MIN_TIMER_GAP: Duration = Duration::from_millis(1);

/// Most messages [`Session::take_ready`] takes before the loop performs the engine's outputs.
const READY_BATCH: usize = 16;

/// Extra time on top of the engine's shutdown timeout for pending disk writes to land.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A connection task (dial, reader, writer) run inside the event loop's own task (see [`LocalTasks`]).
pub(crate) type LocalTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Hands a connection task to the event loop, which polls it with its own (see [`LocalTasks`]).
pub(crate) type Spawner = mpsc::UnboundedSender<LocalTask>;

/// The connection tasks, polled by the event loop itself instead of being spawned on the runtime.
///
/// A socket read then reaches the engine, and the requests it answers reach the socket, on the
/// loop's thread without waking another thread: spawned, every read cost a wake-up of a runtime
/// thread, a hand-over to the loop's thread and a wake-up of a writer (measured: about 35,000
/// context switches and 0.5 CPU-s per GiB downloaded, a quarter of the leecher's CPU). The hashing
/// and disk writes stay on the worker pool; the loop's thread does the socket system calls, which
/// it waited for anyway.
struct LocalTasks {
    set: FuturesUnordered<LocalTask>,
    /// Tasks spawned by tasks (a dial starts its writer once connected).
    rx: mpsc::UnboundedReceiver<LocalTask>,
}

impl LocalTasks {
    /// Polls every task that was woken (and those spawned meanwhile) until none can go on.
    fn poll(&mut self, cx: &mut std::task::Context<'_>) {
        loop {
            while let Poll::Ready(Some(())) = self.set.poll_next_unpin(cx) {}
            let mut more = false;
            while let Poll::Ready(Some(t)) = self.rx.poll_next_unpin(cx) {
                self.set.push(t);
                more = true;
            }
            if !more {
                return;
            }
        }
    }
}

/// Most time the loop keeps polling its connection tasks after shutting down, for the writers to
/// flush what the engine sent last (a peer that reads nothing cannot hold the shutdown longer).
const LOCAL_DRAIN: Duration = Duration::from_secs(1);

/// Messages from the network tasks. The channel is bounded: a reader waits when the loop is behind.
pub(crate) enum Net<R: Runtime> {
    /// An outgoing connection is up (sent before any `Read` of it).
    Connected(ConnId),
    /// An outgoing connection could not be opened.
    ConnectFailed(ConnId, String),
    /// Bytes arrived (an owned buffer: the engine keeps piece payloads as slices of it).
    Read(ConnId, BytesMut),
    /// The remote end closed, or reading failed.
    Closed(ConnId),
    /// A peer connected to our listener.
    Incoming(R::Reader, R::Writer, SocketAddr),
    /// A UDP datagram arrived.
    Datagram(SocketAddr, Bytes),
}

/// Messages from writers, resolvers and worker threads (each bounded by what the engine handed out).
pub(crate) enum Ctl {
    /// A writer wrote these bytes.
    Flushed(ConnId, usize),
    /// A write failed; the connection is dead.
    WriteFailed(ConnId, String),
    /// A host-name lookup finished.
    Resolved(ResolveId, Result<Vec<SocketAddr>, String>),
    /// A job finished.
    JobDone {
        id: JobId,
        torrent: TorrentId,
        write: bool,
        result: JobResult,
        error: Option<StorageError>,
        /// It ran from the torrent's write queue (its end lets the next queued write start).
        queued: bool,
    },
    /// A `VerifyWrite` piece matched but another write of its torrent was running: queue it.
    WriteLater {
        id: JobId,
        torrent: TorrentId,
        piece: u32,
        blocks: Vec<bytes::Bytes>,
    },
    /// A torrent's storage is set up (or failed to be).
    Prepared(
        Box<AddTorrentRequest>,
        Result<Prepared, StorageError>,
        oneshot::Sender<Result<AddedTorrent, SessionError>>,
    ),
    /// Checking progress, to pass on to subscribers.
    Event(SessionEvent),
    /// A resume save finished.
    ResumeSaved(TorrentId, Result<(), StorageError>),
    /// A writeback flush failed (see `Disk::writeback`): the torrent stops, as after a failed write.
    FlushFailed(TorrentId, StorageError),
    /// The files of a magnet torrent that got its metadata were checked.
    MagnetChecked(
        TorrentId,
        Result<(Option<Bitfield>, StartKind, u32), StorageError>,
    ),
}

/// The running session's state, driven by [`Session::run`].
struct Session<R: Runtime> {
    rt: R,
    engine: Engine,
    /// Real time at which the engine's `Instant::ZERO` lies.
    origin: StdInstant,
    config: SessionConfig,
    conns: HashMap<ConnId, ConnEntry>,
    net_tx: mpsc::Sender<Net<R>>,
    ctl_tx: mpsc::UnboundedSender<Ctl>,
    /// The UDP send queue, bounded (see [`crate::udp`]: full means the datagram is dropped).
    udp_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    pool: Arc<WorkerPool>,
    disks: BTreeMap<TorrentId, Disk>,
    /// Info-hashes whose storage is being prepared.
    adding: HashSet<InfoHash>,
    /// Torrents added from magnet links whose storage is not set up yet (metadata being fetched, or
    /// existing files being checked). They move to `disks` once set up.
    magnets: BTreeMap<TorrentId, Magnet>,
    subscribers: Vec<mpsc::Sender<SessionEvent>>,
    /// The acceptor and UDP tasks, stopped at the end.
    background: Vec<AbortHandle>,
    writes_in_flight: usize,
    /// Block reads the engine asked for during the current drain, issued together at its end.
    reads: Vec<disk::BlockRead>,
    /// Small pieces (under [`hyperblow_storage::DIRECT_MIN_PIECE`]) to verify and write, gathered
    /// during the current drain and handed to the pool in batches at its end (see
    /// [`Session::issue_small_writes`]).
    small_writes: Vec<disk::SmallWrite>,
    /// Bytes the engine sent during the current drain, per connection, in order.
    sends: Vec<(ConnId, Vec<Bytes>)>,
    /// Reused buffers for those reads.
    read_pool: disk::ReadPool,
    /// The connection tasks, polled by the loop itself.
    local: LocalTasks,
    /// Adds to `local`.
    spawner: Spawner,
    last_timeout_call: Option<StdInstant>,
    shutdown: Option<Shutdown>,
    /// Scrapes asked through the handle, waiting for their trackers' answers.
    scrapes: Vec<ScrapeWait>,
    /// TLS settings for connections the engine wants wrapped (`https://` trackers).
    tls: Arc<crate::tls::TlsClient>,
}

/// One [`Command::Scrape`] being answered tracker by tracker.
struct ScrapeWait {
    torrent: TorrentId,
    /// Tracker URLs that have not answered yet.
    waiting: Vec<String>,
    got: Vec<ScrapeAnswer>,
    reply: oneshot::Sender<Result<Vec<ScrapeAnswer>, SessionError>>,
}

/// A torrent added from a magnet link, until its storage is set up.
struct Magnet {
    info_hash: InfoHash,
    output_dir: PathBuf,
    /// Set up, its existing files being checked (the engine holds the torrent paused meanwhile).
    checking: Option<Arc<Storage>>,
    /// Whether the user wants it paused once the check is done (pause/resume during the check).
    want_paused: bool,
}

/// The loop's handles on one connection's tasks.
struct ConnEntry {
    writer: mpsc::UnboundedSender<WriterCmd>,
    reader: AbortHandle,
}

/// A shutdown in progress.
struct Shutdown {
    /// Give up waiting for the engine and the disk after this.
    deadline: StdInstant,
    waiters: Vec<oneshot::Sender<Result<(), SessionError>>>,
}

/// The event loop of a session, returned by [`prepare_session`]: run it on the runtime (spawn it, or
/// `block_on` it on a dedicated thread). It finishes when the session has shut down.
#[must_use = "the session does nothing until its task runs"]
pub struct SessionTask(Pin<Box<dyn Future<Output = ()> + Send + 'static>>);

impl std::fmt::Debug for SessionTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionTask")
    }
}

impl Future for SessionTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

/// A seed from the OS (std's per-process random hash keys) mixed with the clock: the engine's RNG
/// seed when the caller gives none, and for front ends that run a core state machine of their own.
pub fn os_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Binds the sockets, builds the engine and returns the handle plus the event loop to run. The TCP
/// listener is bound first so the engine announces the port actually bound. Call it inside the
/// runtime's context (tokio registers the sockets with the current reactor).
pub fn prepare_session<R: Runtime>(
    rt: R,
    mut config: SessionConfig,
) -> Result<(SessionHandle, SessionTask), StartError> {
    let (std_listener, std_udp) = crate::bind::tcp_and_udp(config.bind_addr, config.listen_port)
        .map_err(|e| match e {
            crate::bind::PairError::Tcp(addr, source) => StartError::Listen { addr, source },
            crate::bind::PairError::Udp(addr, source) => StartError::Udp { addr, source },
        })?;
    let tcp_addr = SocketAddr::new(config.bind_addr, config.listen_port);
    let listen_err = |source| StartError::Listen {
        addr: tcp_addr,
        source,
    };
    let listen_addr = std_listener.local_addr().map_err(listen_err)?;
    let listener = rt.tcp_listener(std_listener).map_err(listen_err)?;
    let udp_err = |source| StartError::Udp {
        addr: listen_addr,
        source,
    };
    let udp_local = std_udp.local_addr().map_err(udp_err)?;
    let udp = rt.udp_socket(std_udp).map_err(udp_err)?;
    // What the engine kept from the last run (its DHT node id and routing table), if asked for.
    if let (Some(path), Some(dht)) = (&config.state_file, config.engine.dht.as_mut()) {
        if dht.saved_state.is_none() {
            dht.saved_state = std::fs::read(path).ok();
        }
    }
    // One per CPU, plus one: a piece write (direct I/O) blocks its worker until the device took the
    // bytes, and the hashing of the next piece should not wait for that.
    let threads = match config.worker_threads {
        0 => hyperblow_storage::default_threads() + 1,
        n => n,
    };
    let pool = WorkerPool::new(threads).map_err(StartError::Workers)?;

    config.engine.listen_port = listen_addr.port();
    let origin = StdInstant::now();
    let mut engine = Engine::new(
        config.engine.clone(),
        config.seed.unwrap_or_else(os_seed),
        Instant::ZERO,
    );
    engine.set_rate_limits(Instant::ZERO, None, config.rate_limits);
    let (cmd_tx, cmd_rx) = mpsc::unbounded();
    let (ctl_tx, ctl_rx) = mpsc::unbounded();
    let (net_tx, net_rx) = mpsc::channel(64);
    let (udp_tx, udp_rx) = mpsc::channel(crate::udp::SEND_QUEUE);
    let handle = SessionHandle::new(cmd_tx, listen_addr, engine.peer_id());

    let udp = Arc::new(udp);
    let mut background = Vec::new();
    let mut spawn_bg = |task: Pin<Box<dyn Future<Output = ()> + Send>>| {
        let (abort, reg) = AbortHandle::new_pair();
        rt.spawn(Abortable::new(task, reg).map(|_| ()));
        background.push(abort);
    };
    spawn_bg(Box::pin(tasks::accept_task(
        rt.clone(),
        listener,
        net_tx.clone(),
    )));
    let batching = crate::udp::batching(&*udp);
    spawn_bg(Box::pin(crate::udp::udp_recv_task(
        rt.clone(),
        Arc::clone(&udp),
        batching.clone(),
        net_tx.clone(),
    )));
    spawn_bg(Box::pin(crate::udp::udp_send_task::<R>(
        udp, batching, udp_local, udp_rx,
    )));

    let config_tls_roots = config.tls_roots.clone();
    let (spawner, local_rx) = mpsc::unbounded();
    let session = Session {
        rt,
        engine,
        origin,
        config,
        conns: HashMap::new(),
        net_tx,
        ctl_tx,
        udp_tx,
        pool: Arc::new(pool),
        disks: BTreeMap::new(),
        adding: HashSet::new(),
        magnets: BTreeMap::new(),
        subscribers: Vec::new(),
        scrapes: Vec::new(),
        background,
        writes_in_flight: 0,
        reads: Vec::new(),
        small_writes: Vec::new(),
        sends: Vec::new(),
        read_pool: disk::ReadPool::default(),
        local: LocalTasks {
            set: FuturesUnordered::new(),
            rx: local_rx,
        },
        spawner,
        last_timeout_call: None,
        shutdown: None,
        tls: Arc::new(crate::tls::TlsClient::new(
            crate::tls::TlsRoots::from_setting(config_tls_roots.as_deref()),
        )),
    };
    let task = SessionTask(Box::pin(session.run(cmd_rx, ctl_rx, net_rx)));
    Ok((handle, task))
}

/// Starts a session on `rt` with its event loop spawned there as a task.
pub fn spawn_session<R: Runtime>(
    rt: R,
    config: SessionConfig,
) -> Result<SessionHandle, StartError> {
    let (handle, task) = prepare_session(rt.clone(), config)?;
    rt.spawn(task);
    Ok(handle)
}

/// What woke the loop.
enum Wake<R: Runtime> {
    Command(Option<Command>),
    Ctl(Ctl),
    Net(Net<R>),
    Timer,
}

impl<R: Runtime> Session<R> {
    /// The engine's clock: real time since `origin`.
    fn now(&self) -> Instant {
        Instant::from_origin(self.origin.elapsed())
    }

    /// The real time of an engine instant (`None` if too far out to represent).
    fn real(&self, t: Instant) -> Option<StdInstant> {
        self.origin.checked_add(t.since_origin())
    }

    async fn run(
        mut self,
        mut cmd_rx: mpsc::UnboundedReceiver<Command>,
        mut ctl_rx: mpsc::UnboundedReceiver<Ctl>,
        mut net_rx: mpsc::Receiver<Net<R>>,
    ) {
        type Timer = Pin<Box<dyn Future<Output = ()> + Send>>;
        let mut timer: Option<(StdInstant, Timer)> = None;
        let mut commands_open = true;
        loop {
            self.drain();
            if self.shutdown.is_some() && self.finish_shutdown_if_done().await {
                self.drain_local().await;
                return;
            }
            // One timer, re-armed only when the deadline changes.
            match self.next_deadline() {
                Some(at) if timer.as_ref().is_some_and(|(t, _)| *t == at) => {}
                Some(at) => timer = Some((at, Box::pin(self.rt.sleep_until(at)))),
                None => timer = None,
            }
            let local = &mut self.local;
            let wake = poll_fn(|cx| {
                // Connection tasks first: what they read is then taken below in this same pass.
                local.poll(cx);
                if commands_open {
                    if let Poll::Ready(c) = cmd_rx.poll_next_unpin(cx) {
                        return Poll::Ready(Wake::Command(c));
                    }
                }
                if let Poll::Ready(Some(m)) = ctl_rx.poll_next_unpin(cx) {
                    return Poll::Ready(Wake::Ctl(m));
                }
                if let Poll::Ready(Some(m)) = net_rx.poll_next_unpin(cx) {
                    return Poll::Ready(Wake::Net(m));
                }
                if let Some((_, t)) = &mut timer {
                    if t.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Timer);
                    }
                }
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Command(Some(c)) => self.command(c),
                Wake::Command(None) => {
                    // Every handle is gone: nobody can stop us later, so stop now.
                    commands_open = false;
                    self.begin_shutdown(None);
                }
                Wake::Ctl(m) => self.ctl(m),
                Wake::Net(m) => self.net(m),
                Wake::Timer => timer = None,
            }
            self.take_ready(&mut ctl_rx, &mut net_rx);
            self.timers();
        }
    }

    /// Polls the connection tasks after the shutdown until they are done (writers flush what the
    /// engine sent last, then close; readers were aborted), for at most [`LOCAL_DRAIN`].
    async fn drain_local(&mut self) {
        let local = &mut self.local;
        let done = poll_fn(|cx| {
            local.poll(cx);
            if local.set.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let limit = self.rt.sleep_until(StdInstant::now() + LOCAL_DRAIN);
        futures::future::select(std::pin::pin!(done), std::pin::pin!(limit)).await;
    }

    /// Runs a connection task inside the loop's task (see [`LocalTasks`]).
    fn spawn_local(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.local.set.push(Box::pin(task));
    }

    /// Feeds the engine the job answers and socket bytes that are already waiting (at most
    /// [`READY_BATCH`] messages) before the outputs are performed: the sends of several reads then
    /// go to each writer as one batch, and the loop goes back to sleep (a context switch) once per
    /// batch instead of once per message.
    fn take_ready(
        &mut self,
        ctl_rx: &mut mpsc::UnboundedReceiver<Ctl>,
        net_rx: &mut mpsc::Receiver<Net<R>>,
    ) {
        for _ in 0..READY_BATCH {
            if let Ok(m) = ctl_rx.try_recv() {
                self.ctl(m);
            } else if let Ok(m) = net_rx.try_recv() {
                self.net(m);
            } else {
                return;
            }
        }
    }

    /// The earliest of: the engine's deadline (never sooner than [`MIN_TIMER_GAP`] after the last
    /// `handle_timeout`), the next resume save, the shutdown deadline.
    fn next_deadline(&self) -> Option<StdInstant> {
        let mut next = self.engine.poll_timeout().and_then(|t| self.real(t));
        if let (Some(n), Some(last)) = (next, self.last_timeout_call) {
            next = Some(n.max(last + MIN_TIMER_GAP));
        }
        let mut consider = |t: StdInstant| next = Some(next.map_or(t, |n| n.min(t)));
        for d in self.disks.values() {
            if d.dirty && !d.saving {
                consider(
                    d.last_save
                        .map_or(self.origin, |t| t + self.config.resume_interval),
                );
            }
        }
        if let Some(s) = &self.shutdown {
            consider(s.deadline);
        }
        next
    }

    /// Fires what is due: the engine's timer and resume saves.
    fn timers(&mut self) {
        let real_now = StdInstant::now();
        let due = self
            .engine
            .poll_timeout()
            .and_then(|t| self.real(t))
            .is_some_and(|t| t <= real_now);
        let gap_ok = self
            .last_timeout_call
            .is_none_or(|last| real_now >= last + MIN_TIMER_GAP);
        if due && gap_ok {
            self.last_timeout_call = Some(real_now);
            let now = self.now();
            self.engine.handle_timeout(now);
        }
        self.save_resumes(real_now);
    }

    /// Performs every pending engine output and passes its events on.
    fn drain(&mut self) {
        loop {
            while let Some(out) = self.engine.poll_output() {
                self.output(out);
            }
            let Some(ev) = self.engine.poll_event() else {
                break;
            };
            if let Event::MetadataReceived { torrent, .. } = &ev {
                let torrent = *torrent;
                self.broadcast(SessionEvent::Engine(ev));
                self.metadata_received(torrent);
                continue;
            }
            if let Event::ScrapeResult {
                torrent,
                url,
                result,
            } = &ev
            {
                self.scrape_answered(*torrent, url, result);
            }
            if let Event::TorrentCompleted(id) = &ev {
                if let Some(d) = self.disks.get_mut(id) {
                    // Make the resume file valid right away: save (after a flush) without waiting.
                    d.dirty = true;
                    d.last_save = None;
                }
            }
            self.broadcast(SessionEvent::Engine(ev));
        }
        self.flush_sends();
        self.issue_reads();
        self.issue_small_writes();
    }

    /// Hands the small pieces gathered during a drain to the pool, up to [`disk::SMALL_BATCH_BYTES`]
    /// of one torrent per job: one wake-up of a worker, one pass over the torrent's write gate and one
    /// answer burst per batch instead of per piece (with 16 KiB pieces the per-piece hand-offs, each
    /// waking a thread, cost more CPU than the hashing).
    fn issue_small_writes(&mut self) {
        if self.small_writes.is_empty() {
            return;
        }
        let mut all = std::mem::take(&mut self.small_writes);
        // Stable: the pieces of one torrent keep their order.
        all.sort_by_key(|w| w.torrent);
        let mut batch: Vec<disk::SmallWrite> = Vec::new();
        let mut bytes = 0usize;
        let mut rest = all.into_iter().peekable();
        while let Some(w) = rest.next() {
            bytes += w.blocks.iter().map(Bytes::len).sum::<usize>();
            let torrent = w.torrent;
            batch.push(w);
            let next_other = rest.peek().is_none_or(|n| n.torrent != torrent);
            if next_other || bytes >= disk::SMALL_BATCH_BYTES {
                self.run_small_batch(torrent, std::mem::take(&mut batch));
                bytes = 0;
            }
        }
    }

    /// Verifies and writes one batch of small pieces of `torrent` on a worker (see
    /// [`disk::verify_and_write_batch`]); each piece is answered with its own [`Ctl::JobDone`].
    fn run_small_batch(&self, torrent: TorrentId, batch: Vec<disk::SmallWrite>) {
        let Some(d) = self.disks.get(&torrent) else {
            for w in batch {
                self.job_done_later(w.id, torrent, disk::storage_gone(), false);
            }
            return;
        };
        let (storage, gate) = (Arc::clone(&d.storage), Arc::clone(&d.gate));
        let ctl = self.ctl_tx.clone();
        self.pool.execute(move || {
            for (id, result, error) in disk::verify_and_write_batch(&storage, &gate, batch) {
                let _ = ctl.unbounded_send(Ctl::JobDone {
                    id,
                    torrent,
                    write: true,
                    result,
                    error,
                    queued: false,
                });
            }
        });
    }

    /// Hands each connection's gathered sends to its writer, one message per connection.
    fn flush_sends(&mut self) {
        for (conn, data) in self.sends.drain(..) {
            if let Some(c) = self.conns.get(&conn) {
                // A failure means the writer already ended; its report is on the way.
                let _ = c.writer.unbounded_send(WriterCmd::Batch(data));
            }
        }
    }

    /// Issues the block reads collected during a drain: runs of adjacent blocks of one piece become
    /// one read of up to [`disk::READ_RUN_MAX`] bytes on one worker (one system call and one wake-up
    /// instead of one per 16 KiB block), split into the blocks without copying.
    fn issue_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.reads);
        for run in disk::adjacent_runs(reads) {
            let torrent = run.first().map_or(TorrentId(0), |r| r.torrent);
            let storage = self.disks.get(&torrent).map(|d| Arc::clone(&d.storage));
            let ctl = self.ctl_tx.clone();
            let pool = self.read_pool.clone();
            self.pool.execute(move || {
                for (id, result, error) in disk::read_run(storage.as_deref(), &pool, &run) {
                    let _ = ctl.unbounded_send(Ctl::JobDone {
                        id,
                        torrent,
                        write: false,
                        result,
                        error,
                        queued: false,
                    });
                }
            });
        }
    }

    /// Files one tracker's scrape answer with the handle command waiting for it.
    fn scrape_answered(
        &mut self,
        torrent: TorrentId,
        url: &str,
        result: &Result<hyperblow_core::tracker::ScrapeStats, String>,
    ) {
        let Some(i) = self
            .scrapes
            .iter()
            .position(|w| w.torrent == torrent && w.waiting.iter().any(|u| u == url))
        else {
            return;
        };
        let w = &mut self.scrapes[i];
        w.waiting.retain(|u| u != url);
        w.got.push((url.to_owned(), result.clone()));
        if w.waiting.is_empty() {
            let w = self.scrapes.swap_remove(i);
            let _ = w.reply.send(Ok(w.got));
        }
    }

    fn broadcast(&mut self, ev: SessionEvent) {
        self.subscribers
            .retain_mut(|s| match s.try_send(ev.clone()) {
                Ok(()) => true,
                // A full buffer drops this event for that subscriber only; a gone one is forgotten.
                Err(e) => !e.is_disconnected(),
            });
    }

    fn output(&mut self, out: Output) {
        match out {
            Output::Connect { conn, addr, tls } => {
                let (writer, writer_rx) = mpsc::unbounded();
                let (reader, reg) = AbortHandle::new_pair();
                self.conns.insert(conn, ConnEntry { writer, reader });
                let task = tasks::connect_task(
                    self.rt.clone(),
                    self.spawner.clone(),
                    conn,
                    addr,
                    tls.map(|host| (host, Arc::clone(&self.tls))),
                    self.config.connect_timeout,
                    writer_rx,
                    self.net_tx.clone(),
                    self.ctl_tx.clone(),
                );
                self.spawn_local(Abortable::new(task, reg).map(|_| ()));
            }
            Output::Send { conn, data } => {
                // Gathered per connection and handed over at the end of the drain.
                match self.sends.iter_mut().find(|(c, _)| *c == conn) {
                    Some((_, v)) => v.push(data),
                    None => self.sends.push((conn, vec![data])),
                }
            }
            Output::Close { conn } => {
                self.flush_sends();
                if let Some(c) = self.conns.remove(&conn) {
                    let _ = c.writer.unbounded_send(WriterCmd::Close);
                    c.reader.abort();
                }
            }
            Output::SendDatagram { to, data } => {
                // A full queue drops the datagram (see `crate::udp`).
                let _ = self.udp_tx.try_send((to, data));
            }
            Output::Resolve { id, host, port } => {
                let lookup = self.rt.resolve(host.clone(), port);
                let ctl = self.ctl_tx.clone();
                self.rt.spawn(async move {
                    let result = lookup.await.map_err(|e| format!("resolving {host}: {e}"));
                    let _ = ctl.unbounded_send(Ctl::Resolved(id, result));
                });
            }
            Output::Job { id, job } => {
                use hyperblow_core::engine::Job;
                if let Job::Read {
                    torrent,
                    piece,
                    offset,
                    length,
                } = job
                {
                    self.reads.push(disk::BlockRead {
                        id,
                        torrent,
                        piece,
                        offset,
                        length,
                    });
                    return;
                }
                let Job::VerifyWrite {
                    torrent,
                    piece,
                    blocks,
                    expected,
                } = job
                else {
                    return;
                };
                self.writes_in_flight += 1;
                let len: usize = blocks.iter().map(Bytes::len).sum();
                if len < hyperblow_storage::DIRECT_MIN_PIECE as usize {
                    self.small_writes.push(disk::SmallWrite {
                        id,
                        torrent,
                        piece,
                        blocks,
                        expected,
                    });
                    return;
                }
                let Some(d) = self.disks.get(&torrent) else {
                    self.job_done_later(id, torrent, disk::storage_gone(), false);
                    return;
                };
                let (storage, gate) = (Arc::clone(&d.storage), Arc::clone(&d.gate));
                let ctl = self.ctl_tx.clone();
                self.pool.execute(move || {
                    let msg = match disk::verify_and_write(&storage, &gate, piece, blocks, expected)
                    {
                        disk::Verified::Done(result, error) => Ctl::JobDone {
                            id,
                            torrent,
                            write: true,
                            result,
                            error,
                            queued: false,
                        },
                        disk::Verified::Busy(blocks) => Ctl::WriteLater {
                            id,
                            torrent,
                            piece,
                            blocks,
                        },
                    };
                    let _ = ctl.unbounded_send(msg);
                });
            }
        }
    }

    /// Answers a write job with a failure through the channel (the engine may be being drained).
    fn job_done_later(
        &self,
        id: JobId,
        torrent: TorrentId,
        failure: hyperblow_core::engine::StorageFailure,
        queued: bool,
    ) {
        let _ = self.ctl_tx.unbounded_send(Ctl::JobDone {
            id,
            torrent,
            write: true,
            result: JobResult::Failed(failure),
            error: None,
            queued,
        });
    }

    /// Writes a verified piece from a torrent's write queue on the pool; its result comes back as
    /// [`Ctl::JobDone`] with `queued` set.
    fn run_write(&self, torrent: TorrentId, w: disk::QueuedWrite) {
        let Some(d) = self.disks.get(&torrent) else {
            self.job_done_later(w.id, torrent, disk::storage_gone(), true);
            return;
        };
        let (storage, gate) = (Arc::clone(&d.storage), Arc::clone(&d.gate));
        let ctl = self.ctl_tx.clone();
        self.pool.execute(move || {
            let (result, error) = disk::write_piece(&storage, &gate, w.piece, &w.blocks);
            let _ = ctl.unbounded_send(Ctl::JobDone {
                id: w.id,
                torrent,
                write: true,
                result,
                error,
                queued: true,
            });
        });
    }

    fn net(&mut self, m: Net<R>) {
        let now = self.now();
        match m {
            Net::Connected(conn) => {
                if self.conns.contains_key(&conn) {
                    self.engine.handle_connected(now, conn);
                }
            }
            Net::ConnectFailed(conn, reason) => {
                if self.conns.remove(&conn).is_some() {
                    self.engine.handle_connect_failed(now, conn, &reason);
                }
            }
            Net::Read(conn, data) => {
                if self.conns.contains_key(&conn) {
                    self.engine.handle_read_owned(now, conn, data);
                }
            }
            Net::Closed(conn) => self.closed(conn),
            Net::Incoming(reader, writer, remote) => {
                let Some(conn) = self.engine.handle_incoming(now, remote) else {
                    return; // refused: dropping the halves closes the socket
                };
                let (wtx, wrx) = mpsc::unbounded();
                let (abort, reg) = AbortHandle::new_pair();
                self.conns.insert(
                    conn,
                    ConnEntry {
                        writer: wtx,
                        reader: abort,
                    },
                );
                let write = tasks::writer_task(conn, writer, wrx, self.ctl_tx.clone());
                self.spawn_local(write);
                let read = tasks::reader_task::<R>(conn, reader, self.net_tx.clone());
                self.spawn_local(Abortable::new(read, reg).map(|_| ()));
            }
            Net::Datagram(from, data) => self.engine.handle_datagram(now, from, &data),
        }
    }

    /// A connection ended on its own (not closed by the engine).
    fn closed(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            c.reader.abort();
            let now = self.now();
            self.engine.handle_closed(now, conn);
        }
    }

    fn ctl(&mut self, m: Ctl) {
        let now = self.now();
        match m {
            Ctl::Flushed(conn, n) => {
                if self.conns.contains_key(&conn) {
                    self.engine.handle_flushed(now, conn, n);
                }
            }
            Ctl::WriteFailed(conn, _reason) => self.closed(conn),
            Ctl::Resolved(id, result) => self.engine.handle_resolved(now, id, result),
            Ctl::JobDone {
                id,
                torrent,
                write,
                result,
                error,
                queued,
            } => {
                if write {
                    self.writes_in_flight = self.writes_in_flight.saturating_sub(1);
                    let mut next = None;
                    let ctl = &self.ctl_tx;
                    if let Some(d) = self.disks.get_mut(&torrent) {
                        if result == JobResult::Written {
                            d.dirty = true;
                            d.written_since_save = d.written_since_save.saturating_add(1);
                            let ctl = ctl.clone();
                            d.writeback(move |e| {
                                let _ = ctl.unbounded_send(Ctl::FlushFailed(torrent, e));
                            });
                        }
                        if queued {
                            next = d.write_queue.pop_front();
                            d.writing = next.is_some();
                        }
                    }
                    if let Some(w) = next {
                        self.run_write(torrent, w);
                    }
                }
                if let Some(e) = error {
                    self.broadcast(SessionEvent::StorageError {
                        torrent,
                        kind: e.kind,
                        message: e.to_string(),
                    });
                }
                self.engine.handle_job_done(now, id, result);
            }
            Ctl::WriteLater {
                id,
                torrent,
                piece,
                blocks,
            } => {
                let w = disk::QueuedWrite { id, piece, blocks };
                match self.disks.get_mut(&torrent) {
                    Some(d) if d.writing => d.write_queue.push_back(w),
                    Some(d) => {
                        d.writing = true;
                        self.run_write(torrent, w);
                    }
                    None => self.job_done_later(id, torrent, disk::storage_gone(), true),
                }
            }
            Ctl::Prepared(req, result, reply) => self.add_prepared(*req, result, reply),
            Ctl::MagnetChecked(id, result) => self.magnet_checked(id, result),
            Ctl::Event(ev) => self.broadcast(ev),
            Ctl::FlushFailed(torrent, e) => {
                self.broadcast(SessionEvent::StorageError {
                    torrent,
                    kind: e.kind,
                    message: format!("flushing to disk: {e}"),
                });
                self.engine
                    .handle_storage_failed(now, torrent, disk::failure(&e));
            }
            Ctl::ResumeSaved(torrent, result) => {
                if let Some(d) = self.disks.get_mut(&torrent) {
                    d.saving = false;
                }
                if let Err(e) = result {
                    self.broadcast(SessionEvent::StorageError {
                        torrent,
                        kind: e.kind,
                        message: format!("saving resume data: {e}"),
                    });
                }
            }
        }
    }

    fn command(&mut self, c: Command) {
        let now = self.now();
        match c {
            Command::Add(req, reply) => self.add(req, reply),
            Command::AddMagnet(req, reply) => {
                let r = self.add_magnet(*req);
                let _ = reply.send(r);
            }
            Command::TorrentFile(id, reply) => {
                let r = self
                    .known(id)
                    .map(|()| self.engine.torrent_metainfo(id).map(|m| m.to_bytes()));
                let _ = reply.send(r);
            }
            Command::Pause(id, reply) => {
                let r = self.known(id).map(|()| match self.magnets.get_mut(&id) {
                    Some(m) if m.checking.is_some() => m.want_paused = true,
                    _ => self.engine.pause(now, id),
                });
                let _ = reply.send(r);
            }
            Command::Resume(id, reply) => {
                let r = self.known(id).map(|()| match self.magnets.get_mut(&id) {
                    // Resumed by the check's end, not before: it could fetch what is on disk.
                    Some(m) if m.checking.is_some() => m.want_paused = false,
                    _ => self.engine.resume(now, id),
                });
                let _ = reply.send(r);
            }
            Command::SetRateLimits(torrent, limits, reply) => {
                let r = match torrent {
                    Some(id) => self.known(id),
                    None => Ok(()),
                }
                .map(|()| self.engine.set_rate_limits(now, torrent, limits));
                let _ = reply.send(r);
            }
            Command::AddPeer(id, addr, reply) => {
                let r = self.known(id).map(|()| self.engine.add_peer(now, id, addr));
                let _ = reply.send(r);
            }
            Command::SetFiles(id, wanted, reply) => {
                let r = match self.engine.set_wanted_files(now, id, wanted.clone()) {
                    Ok(()) => {
                        if let Some(d) = self.disks.get(&id) {
                            d.storage.set_wanted(&wanted);
                        }
                        if let Some(s) = self.magnets.get(&id).and_then(|m| m.checking.as_ref()) {
                            s.set_wanted(&wanted);
                        }
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(r);
            }
            Command::Remove(id, delete, reply) => self.remove(id, delete, reply),
            Command::Stats(reply) => {
                let _ = reply.send(Ok(self.engine.stats(now)));
            }
            Command::DhtStats(reply) => {
                let _ = reply.send(Ok(self.engine.dht_stats(now)));
            }
            Command::Scrape(id, reply) => match self.engine.scrape(now, id) {
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
                Ok(urls) if urls.is_empty() => {
                    let _ = reply.send(Ok(Vec::new()));
                }
                Ok(urls) => self.scrapes.push(ScrapeWait {
                    torrent: id,
                    waiting: urls,
                    got: Vec::new(),
                    reply,
                }),
            },
            Command::Subscribe(tx) => self.subscribers.push(tx),
            Command::Shutdown(reply) => self.begin_shutdown(Some(reply)),
        }
    }

    fn known(&self, id: TorrentId) -> Result<(), SessionError> {
        if self.disks.contains_key(&id) || self.magnets.contains_key(&id) {
            Ok(())
        } else {
            Err(AddError::UnknownTorrent(id).into())
        }
    }

    /// Starts setting up a torrent's storage on the pool; [`Ctl::Prepared`] finishes the job.
    fn add(
        &mut self,
        req: Box<AddTorrentRequest>,
        reply: oneshot::Sender<Result<AddedTorrent, SessionError>>,
    ) {
        if self.shutdown.is_some() {
            let _ = reply.send(Err(AddError::ShuttingDown.into()));
            return;
        }
        let info_hash = req.metainfo.info_hash();
        if self.has_info_hash(&info_hash) {
            let _ = reply.send(Err(AddError::Duplicate(info_hash).into()));
            return;
        }
        self.adding.insert(info_hash);
        let resume = self.resume_path(&req, &info_hash);
        let storage_config: StorageConfig = self.config.storage.clone();
        let ctl = self.ctl_tx.clone();
        self.pool.execute(move || {
            let total = req.metainfo.info.layout().piece_count();
            let step = (total / 100).max(1);
            let progress = |checked: u32, total: u32| {
                if checked.is_multiple_of(step) || checked == total {
                    let _ = ctl.unbounded_send(Ctl::Event(SessionEvent::Checking {
                        info_hash,
                        checked,
                        total,
                    }));
                }
            };
            let result = disk::prepare(&req, storage_config, &resume, progress);
            let _ = ctl.unbounded_send(Ctl::Prepared(req, result, reply));
        });
    }

    /// Whether a torrent with this info-hash is in the session or being added.
    fn has_info_hash(&self, info_hash: &InfoHash) -> bool {
        self.adding.contains(info_hash)
            || self.disks.values().any(|d| d.info_hash == *info_hash)
            || self.magnets.values().any(|m| m.info_hash == *info_hash)
    }

    /// Adds a magnet torrent to the engine; its storage waits for the metadata.
    fn add_magnet(&mut self, req: AddMagnetRequest) -> Result<AddedMagnet, SessionError> {
        let info_hash = req.link.info_hash;
        if self.shutdown.is_some() {
            return Err(AddError::ShuttingDown.into());
        }
        if self.has_info_hash(&info_hash) {
            return Err(AddError::Duplicate(info_hash).into());
        }
        let now = self.now();
        let want_paused = req.paused;
        let id = self.engine.add_magnet(
            now,
            AddMagnet {
                link: req.link,
                wanted_files: req.wanted_files,
                paused: req.paused,
                peers: req.peers,
            },
        )?;
        self.magnets.insert(
            id,
            Magnet {
                info_hash,
                output_dir: req.output_dir,
                checking: None,
                want_paused,
            },
        );
        Ok(AddedMagnet { id, info_hash })
    }

    /// A magnet torrent's metadata arrived: set its storage up with the engine's selection. With no
    /// file (and no resume file) on disk that is immediate; otherwise the engine holds the torrent
    /// paused while the files are checked on the pool, and [`Ctl::MagnetChecked`] goes on.
    fn metadata_received(&mut self, id: TorrentId) {
        let now = self.now();
        let Some(m) = self.magnets.get_mut(&id) else {
            return;
        };
        let (Some(info), Some(stats)) = (
            self.engine.torrent_info(id).cloned(),
            self.engine.torrent_stats(now, id),
        ) else {
            return;
        };
        let info_hash = m.info_hash;
        let resume_path =
            disk::resume_file(self.config.resume_dir.as_deref(), &m.output_dir, &info_hash);
        let storage = match Storage::new(
            &m.output_dir,
            info.layout().clone(),
            self.config.storage.clone(),
        ) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                self.magnets.remove(&id);
                self.engine.pause(now, id);
                self.broadcast(SessionEvent::StorageError {
                    torrent: id,
                    kind: e.kind,
                    message: format!("setting up the storage: {e}"),
                });
                return;
            }
        };
        let wanted: Vec<bool> = stats.files.iter().map(|f| f.wanted).collect();
        storage.set_wanted(&wanted);
        let total_pieces = info.layout().piece_count();
        if !disk::anything_on_disk(&storage, &resume_path) {
            // Nothing to check: no write can be asked for before this returns.
            self.magnets.remove(&id);
            if matches!(stats.state, TorrentState::Seeding) {
                // Nothing to download (only empty files): create them.
                let s = Arc::clone(&storage);
                let ctl = self.ctl_tx.clone();
                self.pool.execute(move || {
                    if let Err(e) = s.create_empty_files() {
                        let _ = ctl.unbounded_send(Ctl::Event(SessionEvent::StorageError {
                            torrent: id,
                            kind: e.kind,
                            message: e.to_string(),
                        }));
                    }
                });
            }
            self.disks
                .insert(id, Disk::new(storage, info_hash, resume_path));
            self.broadcast(SessionEvent::MagnetReady(AddedTorrent {
                id,
                info_hash,
                start: StartKind::Fresh,
                have_pieces: 0,
                total_pieces,
                rehashed_pieces: 0,
            }));
            return;
        }
        // A torrent the engine stopped (e.g. a selection of the wrong length) stays stopped.
        m.want_paused = matches!(stats.state, TorrentState::Paused | TorrentState::Error(_));
        m.checking = Some(Arc::clone(&storage));
        self.engine.pause(now, id);
        let ctl = self.ctl_tx.clone();
        self.pool.execute(move || {
            let step = (total_pieces / 100).max(1);
            let progress = |checked: u32, total: u32| {
                if checked.is_multiple_of(step) || checked == total {
                    let _ = ctl.unbounded_send(Ctl::Event(SessionEvent::Checking {
                        info_hash,
                        checked,
                        total,
                    }));
                }
            };
            let result = disk::account(&storage, &info, &resume_path, false, progress);
            let _ = ctl.unbounded_send(Ctl::MagnetChecked(id, result));
        });
    }

    /// The check of a magnet torrent's existing files finished: hand the pieces found to the engine
    /// and let it go on (unless the user paused it meanwhile).
    fn magnet_checked(
        &mut self,
        id: TorrentId,
        result: Result<(Option<Bitfield>, StartKind, u32), StorageError>,
    ) {
        // Removed meanwhile: nothing to do.
        let Some(m) = self.magnets.remove(&id) else {
            return;
        };
        let Some(storage) = m.checking else {
            return;
        };
        let now = self.now();
        let resume_path = disk::resume_file(
            self.config.resume_dir.as_deref(),
            &m.output_dir,
            &m.info_hash,
        );
        let total_pieces = storage.layout().piece_count();
        self.disks
            .insert(id, Disk::new(storage, m.info_hash, resume_path));
        match result {
            Ok((have, start, rehashed_pieces)) => {
                let have_pieces = match &have {
                    Some(h) => self.engine.set_have(now, id, h).unwrap_or(0),
                    None => 0,
                };
                self.broadcast(SessionEvent::MagnetReady(AddedTorrent {
                    id,
                    info_hash: m.info_hash,
                    start,
                    have_pieces,
                    total_pieces,
                    rehashed_pieces,
                }));
                if !m.want_paused {
                    self.engine.resume(now, id);
                }
            }
            Err(e) => {
                // Left paused: resuming would download over files that could not be read.
                self.broadcast(SessionEvent::StorageError {
                    torrent: id,
                    kind: e.kind,
                    message: format!("checking existing files: {e}"),
                });
            }
        }
    }

    fn resume_path(&self, req: &AddTorrentRequest, info_hash: &InfoHash) -> PathBuf {
        disk::resume_file(
            self.config.resume_dir.as_deref(),
            &req.output_dir,
            info_hash,
        )
    }

    fn add_prepared(
        &mut self,
        req: AddTorrentRequest,
        result: Result<Prepared, StorageError>,
        reply: oneshot::Sender<Result<AddedTorrent, SessionError>>,
    ) {
        let info_hash = req.metainfo.info_hash();
        self.adding.remove(&info_hash);
        let prepared = match result {
            Ok(p) => p,
            Err(source) => {
                let _ = reply.send(Err(SessionError::Storage { info_hash, source }));
                return;
            }
        };
        let resume_path = self.resume_path(&req, &info_hash);
        let total_pieces = req.metainfo.info.layout().piece_count();
        let have_pieces = prepared.have.as_ref().map_or(0, |h| h.count_ones());
        let add = AddTorrent {
            metainfo: req.metainfo,
            have: prepared.have,
            wanted_files: req.wanted_files,
            paused: req.paused,
            peers: req.peers,
        };
        let now = self.now();
        let r = match self.engine.add_torrent(now, add) {
            Ok(id) => {
                self.disks
                    .insert(id, Disk::new(prepared.storage, info_hash, resume_path));
                Ok(AddedTorrent {
                    id,
                    info_hash,
                    start: prepared.start,
                    have_pieces,
                    total_pieces,
                    rehashed_pieces: prepared.rehashed,
                })
            }
            Err(e) => Err(e.into()),
        };
        let _ = reply.send(r);
    }

    fn remove(
        &mut self,
        id: TorrentId,
        delete: bool,
        reply: oneshot::Sender<Result<(), SessionError>>,
    ) {
        let now = self.now();
        let have = self.engine.torrent_stats(now, id).map(|s| s.have);
        let Some(mut d) = self.disks.remove(&id) else {
            let Some(m) = self.magnets.remove(&id) else {
                let _ = reply.send(Err(AddError::UnknownTorrent(id).into()));
                return;
            };
            // No storage yet, or one being checked: only existing data can be deleted.
            self.engine.remove(now, id);
            match m.checking.filter(|_| delete) {
                Some(storage) => {
                    let resume = disk::resume_file(
                        self.config.resume_dir.as_deref(),
                        &m.output_dir,
                        &m.info_hash,
                    );
                    self.pool.execute(move || {
                        let r = disk::delete_data(&storage, &resume)
                            .map_err(|(path, source)| SessionError::Delete { path, source });
                        let _ = reply.send(r);
                    });
                }
                None => {
                    let _ = reply.send(Ok(()));
                }
            }
            return;
        };
        self.engine.remove(now, id);
        // Writes still queued for it now fail ("storage gone"), which also settles the count of writes
        // in flight.
        for w in std::mem::take(&mut d.write_queue) {
            self.job_done_later(w.id, id, disk::storage_gone(), true);
        }
        self.pool.execute(move || {
            // Waits for a write in progress; none starts after this.
            *d.gate.lock().unwrap_or_else(PoisonError::into_inner) = true;
            let r = if delete {
                disk::delete_data(&d.storage, &d.resume_path)
                    .map_err(|(path, source)| SessionError::Delete { path, source })
            } else {
                // Keep what was verified for a later re-add.
                match have {
                    Some(have) => disk::save(&d.storage, &d.resume_path, &d.info_hash, &have, true)
                        .map_err(|source| SessionError::Storage {
                            info_hash: d.info_hash,
                            source,
                        }),
                    None => Ok(()),
                }
            };
            let _ = reply.send(r);
        });
    }

    /// Saves the resume file of every torrent that wrote pieces and whose interval has passed.
    fn save_resumes(&mut self, real_now: StdInstant) {
        let now = self.now();
        let interval = self.config.resume_interval;
        let Session {
            disks,
            engine,
            pool,
            ctl_tx,
            ..
        } = self;
        for (id, d) in disks.iter_mut() {
            let share = (d.storage.layout().piece_count() / disk::CHECKPOINT_SHARE).max(1);
            let recent = d.last_save.is_some_and(|t| real_now < t + interval);
            if !d.dirty || d.saving || (recent && d.written_since_save < share) {
                continue;
            }
            let Some(have) = engine.torrent_stats(now, *id).map(|s| s.have) else {
                continue;
            };
            d.dirty = false;
            d.written_since_save = 0;
            d.saving = true;
            d.last_save = Some(real_now);
            // `disk::save` flushes first: the checkpoint is trusted after a crash or power loss (see
            // `Storage::load_resume_checkpoint`), so every piece it records must be durable. Writes
            // go on while it is saved, so it is saved as a checkpoint, never as a clean record: a
            // piece written between taking `have` and reading the files' times would be in those
            // times but not in `have`, and lost on a restart after `kill -9` (issue 18).
            let clean = false;
            let (storage, path, hash, id) = (
                Arc::clone(&d.storage),
                d.resume_path.clone(),
                d.info_hash,
                *id,
            );
            let ctl = ctl_tx.clone();
            disk::run_beside_pool(pool, move || {
                let r = disk::save(&storage, &path, &hash, &have, clean);
                let _ = ctl.unbounded_send(Ctl::ResumeSaved(id, r));
            });
        }
    }

    fn begin_shutdown(&mut self, reply: Option<oneshot::Sender<Result<(), SessionError>>>) {
        if self.shutdown.is_none() {
            let now = self.now();
            self.engine.shutdown(now);
            self.shutdown = Some(Shutdown {
                deadline: StdInstant::now() + self.config.engine.shutdown_timeout + SHUTDOWN_GRACE,
                waiters: Vec::new(),
            });
        }
        if let (Some(s), Some(r)) = (&mut self.shutdown, reply) {
            s.waiters.push(r);
        }
    }

    /// Once the engine is shut down and no disk write is pending (or the deadline passed): flushes every
    /// torrent's files, saves the resume files, stops every task and answers the waiters.
    async fn finish_shutdown_if_done(&mut self) -> bool {
        let Some(s) = &self.shutdown else {
            return false;
        };
        // A periodic resume save still running on the pool would finish after the final one below
        // and put back its older record of verified pieces (with the files' final sizes and times,
        // so it would be trusted): wait for it too.
        let done = self.engine.is_shut_down()
            && self.writes_in_flight == 0
            && !self.disks.values().any(|d| d.saving);
        if !done && StdInstant::now() < s.deadline {
            return false;
        }
        let now = self.now();
        let targets: Vec<(TorrentId, Arc<Storage>, PathBuf, InfoHash, Option<_>)> = self
            .disks
            .iter()
            .map(|(id, d)| {
                (
                    *id,
                    Arc::clone(&d.storage),
                    d.resume_path.clone(),
                    d.info_hash,
                    self.engine.torrent_stats(now, *id).map(|t| t.have),
                )
            })
            .collect();
        let state = self.config.state_file.clone().zip(self.engine.save_state());
        let job = self.pool.submit(move || {
            let mut errors = Vec::new();
            if let Some((path, bytes)) = state {
                // Best effort: a state that cannot be saved costs the next run a fresh bootstrap.
                let _ = disk::write_atomically(&path, &bytes);
            }
            for (id, storage, path, hash, have) in targets {
                let r = match have {
                    // Clean only if every write is done: past the deadline one may still run.
                    Some(have) => disk::save(&storage, &path, &hash, &have, done),
                    None => storage.flush(),
                };
                if let Err(e) = r {
                    errors.push((id, e));
                }
            }
            errors
        });
        if let Ok(errors) = job.await {
            for (torrent, e) in errors {
                self.broadcast(SessionEvent::StorageError {
                    torrent,
                    kind: e.kind,
                    message: format!("at shutdown: {e}"),
                });
            }
        }
        for (_, c) in self.conns.drain() {
            let _ = c.writer.unbounded_send(WriterCmd::Close);
            c.reader.abort();
        }
        for b in self.background.drain(..) {
            b.abort();
        }
        self.broadcast(SessionEvent::ShutDown);
        self.subscribers.clear();
        if let Some(s) = self.shutdown.take() {
            for w in s.waiters {
                let _ = w.send(Ok(()));
            }
        }
        true
    }
}

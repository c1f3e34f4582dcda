//! # hyperblow-driver
//!
//! Everything the tokio and async-std drivers share, written once: the event loop that owns the
//! sans-IO [`Engine`](hyperblow_core::engine::Engine), the per-connection reader and writer tasks, the
//! acceptor, the one UDP socket (bound to the TCP listener's port number; the engine tells UDP
//! trackers and the DHT apart), the one timer, the disk and hash jobs on a
//! [`WorkerPool`](hyperblow_storage::WorkerPool), per-torrent [`Storage`](hyperblow_storage::Storage)
//! with resume files, and the [`SessionHandle`] front ends talk to.
//!
//! A runtime only implements the small [`Runtime`] trait (spawn, TCP connect/listen/accept, UDP, a
//! sleep, name resolution); byte streams are `futures-io` `AsyncRead`/`AsyncWrite`. The
//! `hyperblow-tokio` and `hyperblow-async-std` crates do that and expose `start(config)`.
//!
//! ## How the loop runs the engine
//! - Time: one `std::time::Instant` is taken at start; the engine's `Instant` is the time elapsed
//!   since then. The engine never reads a clock.
//! - After every input the loop drains `poll_output` (connect, send, close, datagram, resolve, job) and
//!   `poll_event` (to subscribers), then arms a single timer at `poll_timeout`, re-armed whenever that
//!   changes. A deadline already in the past fires `handle_timeout` at most once per millisecond, so a
//!   confused deadline can never make the loop spin.
//! - Backpressure: socket reads reach the loop through a bounded channel (a reader waits while the loop
//!   is behind). A connection's writer queue is an unbounded channel, but it never holds more than the
//!   engine's per-connection send window: the engine stops emitting `Send` until the writer reports
//!   bytes written (`handle_flushed`).
//! - Disk: hash, write and read jobs run on the worker pool. After pieces are written the torrent's
//!   resume file is saved at most once per [`SessionConfig::resume_interval`]; at completion and at
//!   shutdown the files are flushed (`fsync`) before the save, so a restart trusts the resume file and
//!   skips the re-check.
//! - Throughput (measured with `cargo bench --bench throughput`): socket reads go into large recycled
//!   buffers the engine takes over without copying; a torrent's pieces are written one at a time,
//!   each with one `pwritev`, and a piece whose hash matches is written by the same job right after
//!   hashing (while it is in the CPU cache), the engine's write job then being answered at once;
//!   adjacent block reads for peers become one `pread` into pooled buffers; each writer gets one batch
//!   of sends per drain.
//!
//! ## Magnet links
//! [`SessionHandle::add_magnet`] adds a torrent that knows only its info-hash; the engine fetches the
//! metadata from peers (`x.pe`, trackers, PEX). On `Event::MetadataReceived` the loop builds the
//! storage from the engine's info and file selection. If the download directory holds none of the
//! files (and no resume file) that is immediate; otherwise the engine holds the torrent paused (its
//! connections close and are re-dialled after) while the files are checked on the pool (resume file,
//! else a full re-hash), hands it the pieces found (`Engine::set_have`) and resumes it.
//! [`SessionEvent::MagnetReady`] reports how. [`SessionHandle::torrent_file`] gives the fetched
//! metadata as a `.torrent`.
//!
//! ## Using the handle
//! ```no_run
//! use std::time::Duration;
//! use hyperblow_core::metainfo::Metainfo;
//! use hyperblow_driver::{AddTorrentRequest, RecvError, SessionEvent, SessionHandle};
//! use hyperblow_driver::engine::{Event, TorrentState};
//!
//! /// Downloads one torrent into `out`, printing progress, from a plain (non-async) thread.
//! /// `session` comes from `hyperblow_tokio::start(SessionConfig::default())?` or
//! /// `hyperblow_async_std::start(..)?`: the handle is the same type for both runtimes.
//! fn download(session: &SessionHandle, torrent: &[u8], out: &str) -> Result<(), Box<dyn std::error::Error>> {
//!     let metainfo = Metainfo::from_bytes(torrent)?;
//!     let mut events = session.events(); // subscribe first, to see every event of the torrent
//!     let added = session.add_torrent(AddTorrentRequest::new(metainfo, out)).wait()?;
//!     println!("{} of {} pieces already on disk", added.have_pieces, added.total_pieces);
//!     loop {
//!         match events.recv_timeout(Duration::from_millis(500)) {
//!             Ok(SessionEvent::Engine(Event::TorrentCompleted(id))) if id == added.id => break,
//!             Ok(SessionEvent::Checking { checked, total, .. }) => println!("checking {checked}/{total}"),
//!             Ok(_) | Err(RecvError::Empty) => {}
//!             Err(RecvError::Closed) => return Err("session ended".into()),
//!         }
//!         for t in session.stats().wait()? {
//!             if let TorrentState::Error(e) = &t.state {
//!                 return Err(e.clone().into());
//!             }
//!             println!("{} {:.1}% {} B/s", t.name, t.progress() * 100.0, t.download_rate);
//!         }
//!     }
//!     session.shutdown().wait()?; // flushes files and saves resume data
//!     Ok(())
//! }
//! ```
//! In async code, `.await` the same [`Pending`] answers instead of calling `.wait()`, and use the
//! [`EventStream`] as a `futures::Stream` (or [`EventStream::recv`]).

mod bind;
mod block;
mod disk;
mod handle;
mod runtime;
mod session;
mod tasks;
pub mod tls;
mod udp;

pub use handle::{
    AddMagnetRequest, AddTorrentRequest, AddedMagnet, AddedTorrent, EventStream, Pending,
    RecvError, ScrapeAnswer, SessionConfig, SessionError, SessionEvent, SessionHandle, StartError,
    StartKind, EVENT_BUFFER,
};
pub use runtime::Runtime;
pub use session::{os_seed, prepare_session, spawn_session, SessionTask};

/// The engine types the handle's API uses (ids, stats, events, configuration), re-exported so front
/// ends need not name `hyperblow_core::engine` themselves.
pub mod engine {
    pub use hyperblow_core::dht::DhtStats;
    pub use hyperblow_core::engine::{
        AddError, DhtSettings, EngineConfig, Event, FileStats, PeerStats, TorrentId, TorrentState,
        TorrentStats, Transport, DEFAULT_BOOTSTRAP,
    };
}

pub use hyperblow_core::ratelimit::RateLimits;
pub use hyperblow_storage::{StorageConfig, StorageErrorKind};

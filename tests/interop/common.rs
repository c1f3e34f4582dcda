//! Shared by the real-software suites (`tests/interop.rs`, `tests/interop_tracker_loss.rs`): a
//! Hyperblow session on either runtime driven through its library API ([`SessionHandle`]), the
//! macro that runs a scenario on both runtimes, and payload/torrent fixtures made with `mktorrent`.
//!
//! Included with `#[path = "interop/common.rs"] mod common;`: files under `tests/interop/` are not
//! test binaries of their own.

#![allow(dead_code)] // each binary uses a different part

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyperblow_core::metainfo::Metainfo;
use hyperblow_driver::engine::{Event, TorrentId, TorrentState, TorrentStats};
use hyperblow_driver::SessionHandle;
use hyperblow_driver::{AddTorrentRequest, AddedTorrent, EventStream, SessionConfig, SessionEvent};
use hyperblow_tests::interop::process::logs_of;
use hyperblow_tests::interop::{
    free_port, mktorrent, require_libtorrent, require_tool, wait_for, write_payload, ChildGuard,
    HarnessError, LtConfig, LtPeer, LtRole, LtSource, TorrentFile,
};

/// Transfer scenarios shared by several interop binaries.
#[path = "scenario.rs"]
pub mod scenario;

/// The bound on every wait for a transfer, a tracker reply or a peer.
pub const WAIT: Duration = Duration::from_secs(45);

/// The hard run-time bound of every real program a scenario starts.
pub const PROGRAM_BOUND: Duration = Duration::from_secs(120);

/// Which async runtime runs the Hyperblow session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rt {
    /// `hyperblow_tokio::start`.
    Tokio,
    /// `hyperblow_async_std::start`.
    AsyncStd,
}

impl Rt {
    /// A short name for logs and timings.
    pub fn name(self) -> &'static str {
        match self {
            Rt::Tokio => "tokio",
            Rt::AsyncStd => "async-std",
        }
    }
}

/// Defines one `#[test]` per runtime for each scenario `fn name(rt: Rt)`: `on_tokio::name` and
/// `on_async_std::name`. Include the module with `#[macro_use]`.
macro_rules! on_both_runtimes {
    ($($scenario:ident),+ $(,)?) => {
        mod on_tokio {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(super::common::Rt::Tokio)
                }
            )+
        }
        mod on_async_std {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(super::common::Rt::AsyncStd)
                }
            )+
        }
    };
}

/// Whether opentracker, mktorrent and libtorrent are installed. `false` only when skipping is
/// allowed (`HYPERBLOW_SKIP_INTEROP=1` outside CI); otherwise a missing one panics with the install
/// command.
pub fn tools_present() -> bool {
    require_tool("opentracker").is_some()
        && require_tool("mktorrent").is_some()
        && require_libtorrent().is_some()
}

/// A Hyperblow session bound to 127.0.0.1 on a free port, with every event it emits recorded.
/// Dropping it shuts the session down.
#[derive(Debug)]
pub struct Hb {
    /// The handle, as front ends use it.
    pub session: SessionHandle,
    /// The runtime it runs on.
    pub rt: Rt,
    events: Mutex<(EventStream, Vec<SessionEvent>)>,
}

impl Hb {
    /// Starts a session on `rt`; `tweak` may change the config (engine tunables).
    pub fn start(rt: Rt, tweak: impl FnOnce(&mut SessionConfig)) -> Hb {
        let mut config = SessionConfig {
            bind_addr: "127.0.0.1".parse().expect("an IPv4 literal"),
            listen_port: 0,
            worker_threads: 2,
            ..SessionConfig::default()
        };
        tweak(&mut config);
        let session = match rt {
            Rt::Tokio => hyperblow_tokio::start(config),
            Rt::AsyncStd => hyperblow_async_std::start(config),
        }
        .unwrap_or_else(|e| panic!("start a Hyperblow session on {}: {e}", rt.name()));
        // Subscribe before anything is added, so that no event of a torrent is missed.
        let events = session.events();
        Hb {
            session,
            rt,
            events: Mutex::new((events, Vec::new())),
        }
    }

    /// `127.0.0.1:port` where it accepts peers.
    pub fn addr(&self) -> SocketAddr {
        self.session.listen_addr()
    }

    /// Adds a torrent (bounded wait).
    pub fn add(&self, request: AddTorrentRequest) -> AddedTorrent {
        self.session
            .add_torrent(request)
            .wait_timeout(WAIT)
            .unwrap_or_else(|e| panic!("[{}] add_torrent: {e}", self.rt.name()))
    }

    /// A stats snapshot of one torrent.
    pub fn stats(&self, id: TorrentId) -> TorrentStats {
        self.session
            .stats()
            .wait_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("[{}] stats: {e}", self.rt.name()))
            .into_iter()
            .find(|t| t.id == id)
            .unwrap_or_else(|| panic!("[{}] no torrent {id:?} in the stats", self.rt.name()))
    }

    /// Every event so far (drains the stream into the record first).
    pub fn events(&self) -> Vec<SessionEvent> {
        let mut guard = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let (stream, log) = &mut *guard;
        while let Ok(e) = stream.try_recv() {
            log.push(e);
        }
        log.clone()
    }

    /// The engine events so far.
    pub fn engine_events(&self) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                SessionEvent::Engine(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// Waits until an engine event matches `want` (events before the call count too), failing
    /// after `timeout` or when one of `watched` exits; the failure quotes Hyperblow's stats, its last
    /// events and the programs' logs. A `TorrentError` fails at once. Blocks on the event stream,
    /// so the return comes as soon as the event does (timings are not rounded to a poll period).
    pub fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        watched: &[&ChildGuard],
        mut want: impl FnMut(&Event) -> bool,
    ) -> Event {
        let what = format!("[{}] {what}", self.rt.name());
        let start = Instant::now();
        let mut seen = 0;
        loop {
            let events = self.engine_events();
            for e in events.iter().skip(seen) {
                if let Event::TorrentError { message, .. } = e {
                    panic!("{what}: torrent error: {message}\n{}", self.diagnostics());
                }
                if want(e) {
                    return e.clone();
                }
            }
            seen = events.len();
            for p in watched {
                if let Some(status) = p.try_status() {
                    panic!(
                        "{what}: {} exited ({status})\n{}\n{}",
                        p.name(),
                        logs_of(watched),
                        self.diagnostics()
                    );
                }
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}\n{}",
                    logs_of(watched),
                    self.diagnostics()
                );
            }
            // Block until the next event (or a short tick, to look at the programs again).
            let mut guard = self.events.lock().unwrap_or_else(|e| e.into_inner());
            let (stream, log) = &mut *guard;
            if let Ok(e) = stream.recv_timeout(left.min(Duration::from_millis(100))) {
                log.push(e);
            }
        }
    }

    /// Waits for `TorrentCompleted(id)`; returns the time waited.
    pub fn wait_complete(
        &self,
        id: TorrentId,
        timeout: Duration,
        watched: &[&ChildGuard],
    ) -> Duration {
        let t = Instant::now();
        self.wait_event(
            "download to complete",
            timeout,
            watched,
            |e| matches!(e, Event::TorrentCompleted(c) if *c == id),
        );
        t.elapsed()
    }

    /// Waits until the stats of `id` satisfy `want`; returns them.
    pub fn wait_stats(
        &self,
        id: TorrentId,
        what: &str,
        timeout: Duration,
        watched: &[&ChildGuard],
        mut want: impl FnMut(&TorrentStats) -> bool,
    ) -> TorrentStats {
        let what = format!("[{}] {what}", self.rt.name());
        wait_for(&what, timeout, watched, || {
            let s = self.stats(id);
            if let TorrentState::Error(e) = &s.state {
                return Err(HarnessError::Tool {
                    what: what.clone(),
                    detail: format!("torrent error: {e}"),
                });
            }
            Ok(want(&s).then_some(s))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()))
    }

    /// Stats of every torrent and the last events, for failure messages.
    pub fn diagnostics(&self) -> String {
        let stats = self
            .session
            .stats()
            .wait_timeout(Duration::from_secs(5))
            .map(|s| format!("{s:#?}"))
            .unwrap_or_else(|e| format!("(no stats: {e})"));
        let events = self.events();
        let from = events.len().saturating_sub(40);
        format!(
            "--- Hyperblow ({}) stats ---\n{stats}\n--- last {} of {} events ---\n{:#?}",
            self.rt.name(),
            events.len() - from,
            events.len(),
            &events[from..]
        )
    }
}

impl Drop for Hb {
    fn drop(&mut self) {
        let _ = self
            .session
            .shutdown()
            .wait_timeout(Duration::from_secs(15));
    }
}

/// Calls `poll` every 200 ms until it returns `Some`, for at most `timeout`, failing early when one
/// of `watched` exits (the harness's [`wait_for`], for polls that cannot fail).
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    watched: &[&ChildGuard],
    mut poll: impl FnMut() -> Option<T>,
) -> T {
    wait_for(what, timeout, watched, || {
        let got = poll();
        if got.is_none() {
            std::thread::sleep(Duration::from_millis(150));
        }
        Ok(got)
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Parses a `.torrent` file.
pub fn load_meta(path: &Path) -> Metainfo {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Metainfo::from_bytes(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Asserts that the file at `path` holds exactly `expected`.
pub fn assert_same(path: &Path, expected: &[u8], who: &str) {
    let got = fs::read(path).unwrap_or_else(|e| panic!("{who}: read {}: {e}", path.display()));
    assert_eq!(
        got.len(),
        expected.len(),
        "{who}: {} has the wrong length",
        path.display()
    );
    if let Some(at) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{who}: {} differs from the original at byte {at}",
            path.display()
        );
    }
}

/// A single-file torrent made by `mktorrent`: `<dir>/seed/<name>` holds the data.
#[derive(Debug)]
pub struct SingleFile {
    /// Holds `seed/`, the `.torrent`, the leechers' directories and the programs' logs.
    pub dir: tempfile::TempDir,
    /// The `.torrent` and its info-hash.
    pub torrent: TorrentFile,
    /// The parsed `.torrent`.
    pub meta: Metainfo,
    /// The file's name (the torrent's name).
    pub name: String,
    /// The content.
    pub data: Vec<u8>,
}

impl SingleFile {
    /// `len` bytes of [`hyperblow_tests::interop::payload`]`(len, seed)`, in pieces of
    /// `2^piece_log2` bytes, announcing to each of `announce` (one tier each).
    pub fn new(name: &str, len: usize, seed: u64, piece_log2: u8, announce: &[&str]) -> SingleFile {
        let dir = tempfile::Builder::new()
            .prefix("hb-interop-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("seed").join(name);
        let data = write_payload(&path, len, seed).expect("write the payload");
        let torrent = mktorrent(
            &path,
            announce,
            piece_log2,
            &dir.path().join(format!("{name}.torrent")),
        )
        .expect("mktorrent");
        let meta = load_meta(&torrent.path);
        SingleFile {
            dir,
            torrent,
            meta,
            name: name.to_string(),
            data,
        }
    }

    /// The seeder's data directory.
    pub fn seed_dir(&self) -> PathBuf {
        self.dir.path().join("seed")
    }

    /// A fresh directory under the fixture for a leecher.
    pub fn leech_dir(&self, who: &str) -> PathBuf {
        let d = self.dir.path().join(who);
        fs::create_dir_all(&d).expect("create a leecher dir");
        d
    }
}

/// Starts a libtorrent seeder of `torrent` from `save_path`, with extra script arguments applied by
/// `tweak`, and waits until it is seeding (and, when `announced`, until a tracker answered it).
/// `None` when libtorrent is missing and skipping is allowed.
pub fn lt_seeder(
    name: &str,
    torrent: &Path,
    save_path: &Path,
    log_dir: &Path,
    announced: bool,
    tweak: impl FnOnce(&mut LtConfig),
) -> Option<LtPeer> {
    let mut cfg = LtConfig::new(
        name,
        LtRole::Seed,
        LtSource::Torrent(torrent.to_path_buf()),
        save_path,
        free_port().expect("a free port"),
        PROGRAM_BOUND,
    );
    tweak(&mut cfg);
    let seeder = LtPeer::spawn(&cfg, log_dir).expect("spawn the libtorrent seeder")?;
    seeder
        .wait_seeding(WAIT)
        .expect("the libtorrent seeder checks its data");
    if announced {
        seeder
            .wait_tracker_reply(WAIT)
            .expect("the libtorrent seeder announced to the tracker");
    }
    Some(seeder)
}

/// Starts a libtorrent leecher of `torrent` into `save_path` that finds peers through the tracker.
pub fn lt_leecher(name: &str, torrent: &Path, save_path: &Path, log_dir: &Path) -> LtPeer {
    let cfg = LtConfig::new(
        name,
        LtRole::Leech,
        LtSource::Torrent(torrent.to_path_buf()),
        save_path,
        free_port().expect("a free port"),
        PROGRAM_BOUND,
    );
    LtPeer::spawn(&cfg, log_dir)
        .expect("spawn the libtorrent leecher")
        .expect("libtorrent is present (checked before)")
}

/// User plus system CPU time of this whole process (fields 14 and 15 of `/proc/self/stat`).
pub fn process_cpu_time() -> Duration {
    let stat = fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')' are
    // plain numbers, the 12th and 13th of them are utime and stime in clock ticks.
    let rest = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .expect("a /proc/self/stat line");
    let fields: Vec<u64> = rest
        .split(' ')
        .map(|f| f.trim().parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    // USER_HZ is 100 on every Linux configuration we run on (sysconf(_SC_CLK_TCK)).
    Duration::from_millis(ticks * 10)
}

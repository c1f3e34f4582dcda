//! The part `download`, `seed` and `demo` share: start a session on the chosen runtime, add one
//! torrent (showing the check of existing data), show progress until the goal is met, then shut down
//! cleanly (trackers told `stopped`, files flushed, resume state saved) and report what happened.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hyperblow_core::magnet::{FileSelection, MagnetLink};
use hyperblow_core::metainfo::Metainfo;
use hyperblow_core::mse::{ParsePolicyError, Policy};
use hyperblow_driver::engine::{Event, TorrentId, TorrentState, TorrentStats, Transport};
use hyperblow_driver::{
    AddMagnetRequest, AddTorrentRequest, AddedTorrent, EventStream, RecvError, SessionConfig,
    SessionError, SessionEvent, SessionHandle, StartError, StartKind,
};

use crate::error::CliError;
use crate::progress::{Display, Mode};
use crate::signals::StopFlag;

/// The async runtime that runs the network session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// tokio (multi-threaded).
    Tokio,
    /// async-std.
    AsyncStd,
}

impl RuntimeKind {
    /// The name shown to users.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Tokio => "tokio",
            RuntimeKind::AsyncStd => "async-std",
        }
    }

    /// Starts a session on this runtime.
    pub fn start(self, config: SessionConfig) -> Result<SessionHandle, CliError> {
        self.try_start(config)
            .map_err(|e| CliError::Internal(format!("cannot start the session: {e}")))
    }

    fn try_start(self, config: SessionConfig) -> Result<SessionHandle, StartError> {
        match self {
            RuntimeKind::Tokio => hyperblow_tokio::start(config),
            RuntimeKind::AsyncStd => hyperblow_async_std::start(config),
        }
    }
}

/// Network options of `download` and `seed`.
#[derive(Debug, Clone, Args)]
pub struct NetArgs {
    /// Which async runtime runs the session.
    #[arg(long, value_enum, default_value = "tokio")]
    pub runtime: RuntimeKind,
    /// TCP port to accept peers on, and UDP port of the trackers and the DHT (the same number; 0:
    /// any free port). Default: with the DHT on, the port of the last run (kept in the state
    /// directory, so that the DHT knows us again; another one if it is taken), else any free port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Local address to listen and send from. The default `::` listens on every address of both
    /// IPv4 and IPv6 (same port); `0.0.0.0` is IPv4 only.
    #[arg(long, value_name = "ADDR", default_value_t = IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
    pub bind: IpAddr,
    /// A peer to connect to besides those the trackers give (HOST:PORT); repeat for more.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,
    /// Most peers to be connected to at once for the torrent.
    #[arg(long, value_name = "N")]
    pub max_peers: Option<usize>,
    /// Session-wide download limit: bytes per second, or with a unit (500KiB, 20MiB, 1.5MB); 0 is
    /// unlimited.
    #[arg(long, value_name = "RATE", default_value = "0", value_parser = crate::units::parse_rate)]
    pub max_download_rate: u64,
    /// Session-wide upload limit, same units as --max-download-rate; 0 is unlimited.
    #[arg(long, value_name = "RATE", default_value = "0", value_parser = crate::units::parse_rate)]
    pub max_upload_rate: u64,
    /// Do not use the DHT (trackerless magnet links then find peers only through `x.pe` and
    /// `--peer`). Private torrents never use it anyway.
    #[arg(long)]
    pub no_dht: bool,
    /// A DHT node to start from instead of the public routers (HOST:PORT); repeat for more.
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub dht_bootstrap: Vec<(String, u16)>,
    /// The state directory (default `$XDG_DATA_HOME/hyperblow`, else `~/.local/share/hyperblow`):
    /// the DHT's node id and routing table and the last port (`dht.state`, `port`), and for `tui`
    /// the session's torrents and its log.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Protocol encryption (MSE/PE) with peers: `prefer` dials encrypted handshakes but keeps the
    /// payload plain when the peer allows it, accepts both kinds and falls back to plain for peers
    /// without encryption; `require` talks only RC4-encrypted streams, both ways; `disable` never
    /// encrypts and refuses encrypted peers.
    #[arg(long, value_name = "POLICY", default_value = "prefer", value_parser = parse_encryption)]
    pub encryption: Policy,
    /// Transports for peer connections: `both` accepts TCP and uTP (BEP 29) and dials uTP to peers
    /// known to speak it (PEX flag 0x04, or one that connected to us over uTP) and TCP to the rest,
    /// trying TCP when a uTP dial is unanswered after 3 s; `utp` dials and accepts only uTP; `tcp`
    /// only TCP.
    #[arg(long, value_name = "TRANSPORT", default_value = "both", value_parser = parse_transport)]
    pub transport: Transport,
}

/// `HOST:PORT` (`[v6]:PORT` for an IPv6 literal) into its parts.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, got {s:?}"))?;
    let port: u16 = port.parse().map_err(|_| format!("bad port in {s:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!(
            "expected HOST:PORT with a non-zero port, got {s:?}"
        ));
    }
    Ok((host.to_owned(), port))
}

/// The state file of the DHT and the saved port, inside the state directory.
const DHT_STATE_FILE: &str = "dht.state";
const PORT_FILE: &str = "port";

impl NetArgs {
    /// Resolves the `--peer` addresses.
    pub fn peer_addrs(&self) -> Result<Vec<SocketAddr>, CliError> {
        let mut out = Vec::new();
        for p in &self.peers {
            let addrs = p
                .to_socket_addrs()
                .map_err(|e| CliError::Input(format!("--peer {p}: {e}")))?;
            out.extend(addrs.take(1));
        }
        Ok(out)
    }

    /// The state directory these options name (`--state-dir`, else the default; `None` if there is
    /// no home directory).
    pub fn state_dir(&self) -> Option<PathBuf> {
        self.state_dir
            .clone()
            .or_else(crate::tui::state::default_dir)
    }

    /// The session configuration these options ask for.
    pub fn session_config(&self) -> SessionConfig {
        let mut config = SessionConfig {
            listen_port: self.port.unwrap_or(0),
            bind_addr: self.bind,
            ..SessionConfig::default()
        };
        if !self.no_dht {
            let mut dht = hyperblow_driver::engine::DhtSettings::default();
            if !self.dht_bootstrap.is_empty() {
                dht.bootstrap = self.dht_bootstrap.clone();
            }
            config.engine.dht = Some(dht);
            if let Some(dir) = self.state_dir() {
                config.state_file = Some(dir.join(DHT_STATE_FILE));
                if self.port.is_none() {
                    let saved = std::fs::read_to_string(dir.join(PORT_FILE)).ok();
                    config.listen_port = saved.and_then(|p| p.trim().parse().ok()).unwrap_or(0);
                }
            }
        }
        if let Some(n) = self.max_peers {
            config.engine.max_peers_per_torrent = n.max(1);
        }
        config.engine.encryption = self.encryption;
        config.engine.transport = self.transport;
        config.rate_limits = hyperblow_driver::RateLimits {
            download: self.max_download_rate,
            upload: self.max_upload_rate,
        };
        config
    }

    /// Starts the session `config` describes (from [`NetArgs::session_config`]). A port remembered
    /// from the last run that is taken now is replaced by a free one, and the user told (`note`);
    /// with the DHT on, the port bound is remembered for the next run.
    pub fn start(
        &self,
        config: SessionConfig,
        note: &dyn Fn(&str),
    ) -> Result<SessionHandle, CliError> {
        let saved_port =
            (self.port.is_none() && config.listen_port != 0).then_some(config.listen_port);
        let state_dir = config
            .state_file
            .as_ref()
            .and_then(|f| f.parent().map(Path::to_path_buf));
        let handle = match (self.runtime.try_start(config.clone()), saved_port) {
            (Ok(h), _) => h,
            (Err(StartError::Listen { .. } | StartError::Udp { .. }), Some(port)) => {
                let h = self.runtime.start(SessionConfig {
                    listen_port: 0,
                    ..config
                })?;
                note(&format!(
                    "the port of the last run ({port}) is taken: listening on {} instead (the DHT \
                     will take a little longer to know us)",
                    h.listen_addr().port()
                ));
                h
            }
            (Err(e), _) => {
                return Err(CliError::Internal(format!("cannot start the session: {e}")))
            }
        };
        if let Some(dir) = state_dir {
            // Best effort: without it the next run picks another port.
            let _ = std::fs::create_dir_all(&dir).and_then(|()| {
                std::fs::write(dir.join(PORT_FILE), handle.listen_addr().port().to_string())
            });
        }
        Ok(handle)
    }
}

/// `--encryption prefer|require|disable`.
fn parse_encryption(s: &str) -> Result<Policy, ParsePolicyError> {
    s.parse()
}

/// `--transport utp|tcp|both`.
fn parse_transport(s: &str) -> Result<Transport, String> {
    s.parse()
}

/// When seeding ends (besides Ctrl-C).
#[derive(Debug, Clone, Copy, Default)]
pub struct SeedGoal {
    /// Stop once uploaded / wanted bytes reaches this.
    pub ratio: Option<f64>,
    /// Stop after seeding this long.
    pub time: Option<Duration>,
}

/// What to do with the torrent.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// Download the wanted files, then stop.
    Complete,
    /// Download what is missing, then seed until the goal (or Ctrl-C).
    Seed(SeedGoal),
}

/// What to add: a parsed `.torrent`, or a magnet link whose metadata comes from peers.
#[derive(Debug, Clone)]
pub enum Source {
    /// A `.torrent` file's content.
    Torrent(Metainfo),
    /// A magnet link.
    Magnet(MagnetLink),
}

impl Source {
    /// The name to show: the torrent's, or the link's `dn` (else its info-hash).
    pub fn label(&self) -> String {
        match self {
            Source::Torrent(meta) => meta.info.name().to_owned(),
            Source::Magnet(link) => link
                .display_name
                .clone()
                .unwrap_or_else(|| link.info_hash.to_hex()),
        }
    }
}

/// `--only` / `--exclude` as given, for a magnet link: resolved once its file list is known.
#[derive(Debug, Clone, Default)]
pub struct FileFilter {
    /// `--only LIST`.
    pub only: Option<String>,
    /// `--exclude LIST`.
    pub exclude: Option<String>,
}

/// One transfer to run.
#[derive(Debug)]
pub struct Plan {
    /// The torrent.
    pub source: Source,
    /// Where its files are (or go).
    pub output_dir: PathBuf,
    /// Which files of a `.torrent`; `None`: all.
    pub wanted: Option<Vec<bool>>,
    /// Which files of a magnet link's torrent (its `so=` applies when this is empty).
    pub filter: FileFilter,
    /// Write the torrent's metadata there as a `.torrent` (for a magnet link: once fetched).
    pub save_torrent: Option<PathBuf>,
    /// Network options.
    pub net: NetArgs,
    /// When to stop.
    pub goal: Goal,
    /// Give up after this long without a peer or without progress while downloading.
    pub timeout: Option<Duration>,
    /// The data must already be complete (`seed`): refuse otherwise.
    pub must_be_complete: bool,
    /// How to show progress.
    pub mode: Mode,
    /// Label for the display (defaults to the torrent name).
    pub label: Option<String>,
}

/// What a finished transfer did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Pieces verified on disk when the torrent was added.
    pub have_at_start: u32,
    /// Pieces in the torrent.
    pub total_pieces: u32,
    /// The last stats snapshot.
    pub stats: Option<TorrentStats>,
    /// Wall time from start to the end of the shutdown.
    pub elapsed: Duration,
    /// Time from the torrent being added to completion, if it completed.
    pub download_time: Option<Duration>,
}

/// Parses `90`, `90s`, `1500ms`, `5m`, `2h`, `1d` into a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 30s, 5m, 2h)"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m, h or d)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e10).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A session error while adding, as the CLI classifies it.
fn add_error(e: SessionError) -> CliError {
    match e {
        SessionError::Storage { source, .. } => CliError::Disk(source.to_string()),
        SessionError::Engine(e) => CliError::Input(e.to_string()),
        other => CliError::Internal(other.to_string()),
    }
}

/// The directory, inside the output directory, where the session keeps its state (resume files; see
/// `hyperblow_storage::resume_path`).
pub const STATE_DIR: &str = ".hyperblow";

/// With `--timeout`, how long the shutdown may wait for trackers to acknowledge `stopped` (instead of
/// the engine's default 5 s), so that the command ends close to the time the user gave.
pub const TIMEOUT_SHUTDOWN: Duration = Duration::from_secs(1);

/// Checks, before any network work, that the output directory and the state directory in it (when it
/// exists already; otherwise it is created inside the output directory) accept new files: a
/// read-only mount would otherwise only show once peers sent data, and no resume state could be
/// saved. The error (exit 4) names the directory.
pub fn check_writable(output: &Path) -> Result<(), CliError> {
    let state = output.join(STATE_DIR);
    let dirs: Vec<&Path> = if state.is_dir() {
        vec![output, &state]
    } else {
        vec![output]
    };
    for dir in dirs {
        let probe = tempfile::Builder::new()
            .prefix(".hyperblow-write-check")
            .tempfile_in(dir)
            .and_then(|mut f| {
                f.write_all(b"x")?;
                f.as_file().sync_all()
            });
        if let Err(e) = probe {
            return Err(CliError::Disk(format!(
                "{}: the directory is not writable ({e})",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// What the command saw of the swarm, from the session's events: enough to say why a `--timeout`
/// ran out (no peers at all, peers that could not be reached, peers that were no use, or peers that
/// were all banned).
#[derive(Debug, Default, Clone)]
pub struct SwarmSeen {
    /// Peer addresses offered: `--peer` ones plus every tracker reply's count.
    pub offered: usize,
    /// Peers that completed a handshake with us.
    pub connected: BTreeSet<SocketAddr>,
    /// Peers banned (bad data).
    pub banned: BTreeSet<SocketAddr>,
    /// The torrent's storage is set up (for a magnet link: the metadata arrived), so there is resume
    /// state to save at the end.
    pub has_storage: bool,
}

impl SwarmSeen {
    /// Counts what `ev` says about torrent `id` (`None`: any torrent, while the command's one
    /// torrent is being added and has no id yet).
    pub fn observe(&mut self, ev: &SessionEvent, id: impl Into<Option<TorrentId>>) {
        let id = id.into();
        let ours = |t: &TorrentId| id.is_none_or(|id| id == *t);
        match ev {
            SessionEvent::Engine(Event::TrackerReply { torrent, peers, .. }) if ours(torrent) => {
                self.offered += peers;
            }
            SessionEvent::Engine(Event::PeerConnected { torrent, addr }) if ours(torrent) => {
                self.connected.insert(*addr);
            }
            SessionEvent::Engine(Event::PeerBanned { torrent, addr, .. }) if ours(torrent) => {
                self.banned.insert(*addr);
            }
            _ => {}
        }
    }

    /// Why nothing happened for `limit`, with `connected_now` peers connected at the end.
    pub fn reason(&self, connected_now: u32, limit: Duration) -> String {
        let limit = crate::progress::duration(limit);
        let unbanned = self.connected.difference(&self.banned).count();
        if !self.banned.is_empty() && unbanned == 0 && connected_now == 0 {
            format!(
                "all {} peers that connected were banned (they sent data that failed the hash check); \
                 no progress in {limit}",
                self.banned.len()
            )
        } else if self.connected.is_empty() && self.offered == 0 {
            format!("no peers found in {limit}")
        } else if self.connected.is_empty() {
            format!(
                "{} peers found, but none could be connected in {limit}",
                self.offered
            )
        } else {
            format!(
                "peers found but none useful: no progress in {limit} ({} peers offered, {} connected, \
                 {connected_now} connected now, {} banned)",
                self.offered,
                self.connected.len(),
                self.banned.len()
            )
        }
    }
}

/// Runs `plan` to its end. Ctrl-C gives [`CliError::Interrupted`] after a clean shutdown.
pub fn run(plan: Plan, stop: &StopFlag) -> Result<Outcome, CliError> {
    let started = Instant::now();
    let peers = plan.net.peer_addrs()?;
    let mut config = plan.net.session_config();
    if plan.timeout.is_some() {
        config.engine.shutdown_timeout = config.engine.shutdown_timeout.min(TIMEOUT_SHUTDOWN);
    }
    let label = plan.label.clone().unwrap_or_else(|| plan.source.label());
    let mut display = Display::new(plan.mode, &label);
    let session = plan.net.start(config, &|m| display.note(m))?;
    let mut events = session.events();
    let mut seen = SwarmSeen {
        offered: peers.len(),
        ..SwarmSeen::default()
    };
    let result = drive(
        &session,
        &plan,
        peers,
        stop,
        &mut display,
        &mut events,
        &mut seen,
    );
    display.finish();
    // Always end cleanly: `stopped` to trackers, files flushed, resume data saved. Whether the save
    // worked is told by the session's storage errors during the shutdown.
    let mut save_error = match session.shutdown().wait_timeout(Duration::from_secs(20)) {
        Ok(()) => None,
        Err(e) => Some(format!("the session did not shut down: {e}")),
    };
    if let Some(e) = shutdown_storage_error(&mut events) {
        save_error.get_or_insert(e);
    }
    match (result, save_error) {
        (Err(CliError::NoPeers(msg)), _) if !seen.has_storage => Err(CliError::NoPeers(msg)),
        (Err(CliError::NoPeers(msg)), None) => {
            Err(CliError::NoPeers(format!("{msg} (resume state saved)")))
        }
        (Err(CliError::NoPeers(msg)), Some(e)) => Err(CliError::NoPeers(format!(
            "{msg} (resume state NOT saved: {e})"
        ))),
        (Ok(_), Some(e)) => Err(CliError::Disk(format!(
            "saving the resume state at shutdown failed: {e}"
        ))),
        (Ok(mut o), None) => {
            o.elapsed = started.elapsed();
            Ok(o)
        }
        (Err(e), _) => Err(e),
    }
}

/// Nodes in the session's DHT routing table, if it runs a DHT (and answers in time).
fn dht_nodes(session: &SessionHandle) -> Option<usize> {
    session
        .dht_stats()
        .wait_timeout(Duration::from_secs(10))
        .ok()
        .flatten()
        .map(|s| s.nodes)
}

/// Reads the session's last events (it closes the stream after its shutdown) and returns the first
/// storage error, such as a resume file that could not be written.
fn shutdown_storage_error(events: &mut EventStream) -> Option<String> {
    let until = Instant::now() + Duration::from_secs(5);
    let mut first = None;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(SessionEvent::StorageError { message, .. }) => {
                first.get_or_insert(message);
            }
            Ok(SessionEvent::ShutDown) | Err(_) => break,
            Ok(_) => {}
        }
    }
    first
}

fn drive(
    session: &SessionHandle,
    plan: &Plan,
    peers: Vec<SocketAddr>,
    stop: &StopFlag,
    display: &mut Display,
    events: &mut EventStream,
    seen: &mut SwarmSeen,
) -> Result<Outcome, CliError> {
    let added = match &plan.source {
        Source::Torrent(meta) => {
            add_torrent(session, plan, meta, peers, stop, display, events, seen)?
        }
        Source::Magnet(link) => {
            add_magnet(session, plan, link, peers, stop, display, events, seen)?
        }
    };
    seen.has_storage = true;
    let id = added.id;
    match added.start {
        StartKind::Resumed | StartKind::Checked => display.note(&format!(
            "{} of {} pieces already on disk ({})",
            added.have_pieces,
            added.total_pieces,
            if added.start == StartKind::Resumed {
                "from the resume file"
            } else {
                "checked"
            }
        )),
        StartKind::Fresh => {}
    }
    if plan.must_be_complete && added.have_pieces < added.total_pieces {
        return Err(CliError::Input(format!(
            "{}: the data does not match the torrent: only {} of {} pieces verified",
            plan.output_dir.join(plan.source.label()).display(),
            added.have_pieces,
            added.total_pieces
        )));
    }

    let added_at = Instant::now();
    let mut outcome = Outcome {
        have_at_start: added.have_pieces,
        total_pieces: added.total_pieces,
        stats: None,
        elapsed: Duration::ZERO,
        download_time: None,
    };
    let tick = display.mode().tick();
    let mut next_tick = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_have = u64::MAX;
    let mut last_down = 0u64;
    let mut disk_error: Option<String> = None;
    let mut seeding_since: Option<Instant> = None;
    loop {
        if stop.is_set() {
            return Err(CliError::Interrupted);
        }
        let wait = next_tick.saturating_duration_since(Instant::now());
        match events.recv_timeout(wait.min(Duration::from_millis(100))) {
            Ok(ev) => {
                display.event(&ev);
                seen.observe(&ev, id);
                match &ev {
                    SessionEvent::StorageError {
                        torrent, message, ..
                    } if *torrent == id => {
                        disk_error.get_or_insert_with(|| message.clone());
                    }
                    SessionEvent::Engine(Event::TorrentError { torrent, message })
                        if *torrent == id =>
                    {
                        return Err(CliError::Disk(
                            disk_error.clone().unwrap_or_else(|| message.clone()),
                        ));
                    }
                    SessionEvent::Engine(Event::TorrentCompleted(t)) if *t == id => {
                        // Look at the stats right away rather than at the next tick.
                        next_tick = Instant::now();
                    }
                    _ => {}
                }
                continue;
            }
            Err(RecvError::Empty) => {}
            Err(RecvError::Closed) => {
                return Err(CliError::Internal("the session ended unexpectedly".into()))
            }
        }
        if Instant::now() < next_tick {
            continue;
        }
        next_tick = Instant::now() + tick;
        let stats = session
            .stats()
            .wait_timeout(Duration::from_secs(10))
            .map_err(|e| CliError::Internal(format!("stats: {e}")))?;
        let Some(st) = stats.into_iter().find(|s| s.id == id) else {
            return Err(CliError::Internal("the torrent disappeared".into()));
        };
        display.set_dht_nodes(dht_nodes(session));
        display.update(&st);
        if let TorrentState::Error(m) = &st.state {
            return Err(CliError::Disk(disk_error.unwrap_or_else(|| m.clone())));
        }
        let now = Instant::now();
        if st.have_bytes != last_have || st.downloaded != last_down {
            last_have = st.have_bytes;
            last_down = st.downloaded;
            last_progress = now;
        }
        let complete = st.state == TorrentState::Seeding || st.have_bytes >= st.wanted_bytes;
        if complete {
            if outcome.download_time.is_none() {
                outcome.download_time = Some(added_at.elapsed());
            }
            match plan.goal {
                Goal::Complete => {
                    outcome.stats = Some(st);
                    return Ok(outcome);
                }
                Goal::Seed(goal) => {
                    let since = *seeding_since.get_or_insert(now);
                    let ratio_met = goal
                        .ratio
                        .is_some_and(|r| st.uploaded as f64 >= r * st.wanted_bytes.max(1) as f64);
                    let time_met = goal.time.is_some_and(|t| now.duration_since(since) >= t);
                    outcome.stats = Some(st);
                    if ratio_met || time_met {
                        return Ok(outcome);
                    }
                }
            }
        } else if let Some(limit) = plan.timeout {
            if now.duration_since(last_progress) >= limit {
                // `run` adds whether the resume state could be saved.
                return Err(CliError::NoPeers(format!(
                    "{}; {} of {} bytes downloaded",
                    seen.reason(st.peers, limit),
                    st.have_bytes,
                    st.wanted_bytes
                )));
            }
        }
    }
}

/// Adds a `.torrent`, showing the check of existing data meanwhile.
#[allow(clippy::too_many_arguments)]
fn add_torrent(
    session: &SessionHandle,
    plan: &Plan,
    meta: &Metainfo,
    peers: Vec<SocketAddr>,
    stop: &StopFlag,
    display: &mut Display,
    events: &mut EventStream,
    seen: &mut SwarmSeen,
) -> Result<AddedTorrent, CliError> {
    let mut request = AddTorrentRequest::new(meta.clone(), plan.output_dir.clone()).peers(peers);
    if let Some(w) = &plan.wanted {
        request = request.wanted_files(w.clone());
    }
    // Adding checks existing data, which can take long: wait for it off this thread and show the
    // check's progress meanwhile.
    let (tx, rx) = mpsc::channel();
    let adder = session.clone();
    std::thread::spawn(move || {
        let _ = tx.send(adder.add_torrent(request).wait());
    });
    let added: AddedTorrent = loop {
        if stop.is_set() {
            return Err(CliError::Interrupted);
        }
        match rx.try_recv() {
            Ok(r) => break r.map_err(add_error)?,
            Err(mpsc::TryRecvError::Disconnected) => {
                return Err(CliError::Internal("the session ended while adding".into()))
            }
            Err(mpsc::TryRecvError::Empty) => {}
        }
        match events.recv_timeout(Duration::from_millis(50)) {
            Ok(SessionEvent::Checking { checked, total, .. }) => display.checking(checked, total),
            Ok(ev) => {
                // The session runs this one torrent: its peers may connect before `added` is back.
                seen.observe(&ev, None);
                display.event(&ev);
            }
            Err(RecvError::Empty) => {}
            Err(RecvError::Closed) => {
                return Err(CliError::Internal("the session ended while adding".into()))
            }
        }
    };
    display.json(&serde_json::json!({
        "event": "added",
        "torrent": added.id.0,
        "info_hash": added.info_hash.to_hex(),
        "start": format!("{:?}", added.start).to_lowercase(),
        "have_pieces": added.have_pieces,
        "total_pieces": added.total_pieces,
        "rehashed_pieces": added.rehashed_pieces,
        "listen": session.listen_addr().to_string(),
        "runtime": plan.net.runtime.name(),
    }));
    if let Some(path) = &plan.save_torrent {
        save_torrent(session, added.id, path)?;
    }
    Ok(added)
}

/// Writes the torrent's metadata as a `.torrent` file.
fn save_torrent(
    session: &SessionHandle,
    id: TorrentId,
    path: &std::path::Path,
) -> Result<(), CliError> {
    let bytes = session
        .torrent_file(id)
        .wait_timeout(Duration::from_secs(10))
        .map_err(|e| CliError::Internal(format!("reading the metadata: {e}")))?
        .ok_or_else(|| CliError::Internal("the metadata is not known yet".into()))?;
    std::fs::write(path, bytes).map_err(|e| CliError::disk(path, e))
}

/// Adds a magnet link and waits, showing progress, until its metadata is in and its storage is set
/// up (existing files checked). `--only` goes into the link as its `so=` (exact from the first
/// request); `--exclude` is applied as soon as the file list is known, and both are checked against
/// it then.
#[allow(clippy::too_many_arguments)]
fn add_magnet(
    session: &SessionHandle,
    plan: &Plan,
    link: &MagnetLink,
    peers: Vec<SocketAddr>,
    stop: &StopFlag,
    display: &mut Display,
    events: &mut EventStream,
    seen: &mut SwarmSeen,
) -> Result<AddedTorrent, CliError> {
    let mut link = link.clone();
    if let Some(only) = &plan.filter.only {
        let sel = FileSelection::parse(only)
            .map_err(|e| CliError::Input(format!("--only {only}: {e}")))?;
        link.select_only = Some(sel);
    }
    if let Some(exclude) = &plan.filter.exclude {
        FileSelection::parse(exclude)
            .map_err(|e| CliError::Input(format!("--exclude {exclude}: {e}")))?;
    }
    let request = AddMagnetRequest::new(link, plan.output_dir.clone()).peers(peers);
    let added = session
        .add_magnet(request)
        .wait_timeout(Duration::from_secs(10))
        .map_err(add_error)?;
    let id = added.id;
    display.json(&serde_json::json!({
        "event": "added",
        "torrent": id.0,
        "info_hash": added.info_hash.to_hex(),
        "magnet": true,
        "listen": session.listen_addr().to_string(),
        "runtime": plan.net.runtime.name(),
    }));
    display.note(&format!(
        "{}: fetching metadata (the file list) from peers...",
        plan.source.label()
    ));
    let started = Instant::now();
    let tick = display.mode().tick();
    let mut next_tick = Instant::now();
    let mut last_peer = Instant::now();
    let mut metadata_at: Option<Duration> = None;
    loop {
        if stop.is_set() {
            return Err(CliError::Interrupted);
        }
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(ev) => {
                seen.observe(&ev, id);
                match &ev {
                    SessionEvent::Engine(Event::MetadataReceived { torrent, .. })
                        if *torrent == id =>
                    {
                        let took = started.elapsed();
                        metadata_at = Some(took);
                        metadata_received(session, plan, id, took, display)?;
                    }
                    SessionEvent::Checking { checked, total, .. } => {
                        display.checking(*checked, *total)
                    }
                    SessionEvent::MagnetReady(ready) if ready.id == id => {
                        display.event(&ev);
                        return Ok(ready.clone());
                    }
                    SessionEvent::Engine(Event::TorrentError { torrent, message })
                        if *torrent == id =>
                    {
                        return Err(CliError::Input(message.clone()));
                    }
                    SessionEvent::StorageError {
                        torrent, message, ..
                    } if *torrent == id => return Err(CliError::Disk(message.clone())),
                    _ => {}
                }
                display.event(&ev);
                continue;
            }
            Err(RecvError::Empty) => {}
            Err(RecvError::Closed) => {
                return Err(CliError::Internal("the session ended unexpectedly".into()))
            }
        }
        if Instant::now() < next_tick || metadata_at.is_some() {
            continue;
        }
        next_tick = Instant::now() + tick;
        let stats = session
            .stats()
            .wait_timeout(Duration::from_secs(10))
            .map_err(|e| CliError::Internal(format!("stats: {e}")))?;
        let peers = stats.iter().find(|s| s.id == id).map_or(0, |s| s.peers);
        display.set_dht_nodes(dht_nodes(session));
        display.fetching_metadata(peers);
        if peers > 0 {
            last_peer = Instant::now();
        }
        if let Some(limit) = plan.timeout {
            if last_peer.elapsed() >= limit || started.elapsed() >= limit.saturating_mul(4) {
                return Err(CliError::NoPeers(format!(
                    "no metadata after {}: {}",
                    crate::progress::duration(started.elapsed()),
                    if peers > 0 {
                        format!("{peers} peers connected, none sent it")
                    } else {
                        seen.reason(0, limit)
                    }
                )));
            }
        }
    }
}

/// The metadata of a magnet torrent arrived: apply `--only`/`--exclude` (checked against the file
/// list), save it if asked, and say what it is.
fn metadata_received(
    session: &SessionHandle,
    plan: &Plan,
    id: TorrentId,
    took: Duration,
    display: &mut Display,
) -> Result<(), CliError> {
    let bytes = session
        .torrent_file(id)
        .wait_timeout(Duration::from_secs(10))
        .map_err(|e| CliError::Internal(format!("reading the metadata: {e}")))?
        .ok_or_else(|| CliError::Internal("the metadata vanished".into()))?;
    let meta = Metainfo::from_bytes(&bytes)
        .map_err(|e| CliError::Internal(format!("the fetched metadata does not parse: {e}")))?;
    let wanted = crate::download::selection(
        &meta,
        plan.filter.only.as_deref(),
        plan.filter.exclude.as_deref(),
    )?;
    if let Some(w) = wanted {
        session
            .set_wanted_files(id, w)
            .wait_timeout(Duration::from_secs(10))
            .map_err(add_error)?;
    }
    if let Some(path) = &plan.save_torrent {
        std::fs::write(path, &bytes).map_err(|e| CliError::disk(path, e))?;
    }
    let layout = meta.info.layout();
    display.note(&format!(
        "metadata received in {:.2}s: {}, {} files, {}",
        took.as_secs_f64(),
        meta.info.name(),
        layout.files().len(),
        crate::units::bytes(layout.total_length())
    ));
    display.json(&serde_json::json!({
        "event": "metadata",
        "torrent": id.0,
        "name": meta.info.name(),
        "files": layout.files().len(),
        "total_bytes": layout.total_length(),
        "seconds": took.as_secs_f64(),
        "saved_to": plan.save_torrent.as_ref().map(|p| p.display().to_string()),
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("").is_err());
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 6881))
    }

    /// Finding 5 of the hostile-peer review: the `--timeout` message said "no peers found" when peers
    /// had been found and were banned or were no use.
    #[test]
    fn timeout_reason_says_what_happened() {
        let id = TorrentId(1);
        let limit = Duration::from_secs(60);
        let mut seen = SwarmSeen::default();
        assert!(seen.reason(0, limit).starts_with("no peers found"));

        let reply = |peers| {
            SessionEvent::Engine(Event::TrackerReply {
                torrent: id,
                url: "udp://t".into(),
                peers,
            })
        };
        seen.observe(&reply(3), id);
        seen.observe(&reply(4), TorrentId(2)); // another torrent: not counted
        let r = seen.reason(0, limit);
        assert!(
            r.starts_with("3 peers found, but none could be connected"),
            "{r}"
        );

        for n in [1, 2] {
            seen.observe(
                &SessionEvent::Engine(Event::PeerConnected {
                    torrent: id,
                    addr: addr(n),
                }),
                id,
            );
        }
        let r = seen.reason(2, limit);
        assert!(r.starts_with("peers found but none useful"), "{r}");
        assert!(
            r.contains("3 peers offered, 2 connected, 2 connected now, 0 banned"),
            "{r}"
        );

        let ban = |n| {
            SessionEvent::Engine(Event::PeerBanned {
                torrent: id,
                addr: addr(n),
                reason: "bad data".into(),
            })
        };
        seen.observe(&ban(1), id);
        let r = seen.reason(1, limit);
        assert!(
            r.starts_with("peers found but none useful"),
            "one is not banned: {r}"
        );
        seen.observe(&ban(2), id);
        let r = seen.reason(0, limit);
        assert!(
            r.starts_with("all 2 peers that connected were banned"),
            "{r}"
        );
    }

    #[test]
    fn a_writable_directory_passes_the_check_and_keeps_no_probe() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(STATE_DIR)).unwrap();
        check_writable(dir.path()).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the state directory: {left:?}");
        let missing = dir.path().join("not-there");
        let e = check_writable(&missing).unwrap_err();
        assert_eq!(e.exit_code(), 4);
        assert!(e.to_string().contains("not-there"), "{e}");
    }
}

//! What `download`, `seed` and `demo` show while they run: a live progress bar on a terminal, one
//! plain line per second otherwise, newline-delimited JSON with `--json`, or nothing with `--quiet`.
//! Logs (`tracing`, filtered by `RUST_LOG`) go to stderr through the bar so they never mix into it.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hyperblow_driver::engine::{Event, TorrentState, TorrentStats};
use hyperblow_driver::SessionEvent;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::units;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A live bar on stderr (a terminal).
    Bar,
    /// One line of text per second on stderr (not a terminal).
    Plain,
    /// Newline-delimited JSON on stdout.
    Json,
    /// Nothing but errors.
    Quiet,
}

impl Mode {
    /// Picks the mode from the flags and whether stderr is a terminal.
    pub fn choose(json: bool, quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Plain
        }
    }

    /// How often the display is refreshed from `stats()`.
    pub fn tick(self) -> Duration {
        match self {
            Mode::Bar => Duration::from_millis(250),
            Mode::Plain | Mode::Json | Mode::Quiet => Duration::from_secs(1),
        }
    }
}

/// The bar logs must go around, if one is showing.
fn active_bar() -> &'static Mutex<Option<ProgressBar>> {
    static BAR: OnceLock<Mutex<Option<ProgressBar>>> = OnceLock::new();
    BAR.get_or_init(|| Mutex::new(None))
}

/// Writes `text` to stderr without tearing the progress bar.
pub fn stderr_line(text: &str) {
    // Names and messages from torrents, peers and trackers end up here: no control characters.
    let text = &crate::safe::lines(text);
    let bar = active_bar().lock().ok().and_then(|b| b.clone());
    match bar {
        Some(bar) => bar.suspend(|| {
            let _ = writeln!(std::io::stderr(), "{text}");
        }),
        None => {
            let _ = writeln!(std::io::stderr(), "{text}");
        }
    }
}

/// A `tracing` writer that buffers one log record and prints it through [`stderr_line`].
#[derive(Debug, Default)]
pub struct LogWriter(Vec<u8>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let text = String::from_utf8_lossy(&self.0);
            stderr_line(text.trim_end_matches('\n'));
        }
    }
}

/// Sets up logging: `RUST_LOG` filters (default `warn`), records go to stderr around the bar.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter::default)
        .with_target(false)
        // Plain text: every line is escaped on its way out (see `stderr_line`).
        .with_ansi(false)
        .try_init();
}

/// The display of one running torrent.
#[derive(Debug)]
pub struct Display {
    mode: Mode,
    bar: Option<ProgressBar>,
    last_plain: Option<Instant>,
    started: Instant,
    label: String,
    /// Nodes in the DHT's routing table (`None`: no DHT), shown after the progress.
    dht_nodes: Option<usize>,
}

impl Display {
    /// A display for a torrent called `label`.
    pub fn new(mode: Mode, label: &str) -> Display {
        let label: &str = &crate::safe::escape(label);
        let bar = (mode == Mode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(8));
            // The whole line is ours ([`bar_line`]), laid out for the terminal's width at every refresh.
            let style = ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            if let Ok(mut slot) = active_bar().lock() {
                *slot = Some(bar.clone());
            }
            bar
        });
        Display {
            mode,
            bar,
            last_plain: None,
            started: Instant::now(),
            label: label.to_owned(),
            dht_nodes: None,
        }
    }

    /// The mode in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A line for the user (not in JSON or quiet mode).
    pub fn note(&self, text: &str) {
        if matches!(self.mode, Mode::Bar | Mode::Plain) {
            stderr_line(text);
        }
    }

    /// Prints one JSON object as a line on stdout (JSON mode only).
    pub fn json(&self, value: &Value) {
        if self.mode == Mode::Json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", crate::safe::json(value));
            let _ = out.flush();
        }
    }

    /// Records how many nodes the DHT's routing table holds (`None`: the session has no DHT).
    pub fn set_dht_nodes(&mut self, nodes: Option<usize>) {
        self.dht_nodes = nodes;
    }

    /// `  dht N` when the session runs a DHT, else nothing.
    fn dht_suffix(&self) -> String {
        self.dht_nodes
            .map_or_else(String::new, |n| format!("  dht {n}"))
    }

    /// While a magnet link's metadata is being fetched: the peers connected so far.
    pub fn fetching_metadata(&mut self, peers: u32) {
        let dht = self.dht_suffix();
        match self.mode {
            Mode::Bar => {
                self.draw(0.0, &format!("fetching metadata...  peers {peers}{dht}"));
            }
            Mode::Plain => {
                if self.plain_due() {
                    stderr_line(&format!(
                        "{}: fetching metadata... peers {peers}{dht}",
                        self.label
                    ));
                }
            }
            Mode::Json => self.json(&json!({
                "event": "fetching_metadata",
                "peers": peers,
                "dht_nodes": self.dht_nodes,
                "elapsed_secs": self.started.elapsed().as_secs_f64(),
            })),
            Mode::Quiet => {}
        }
    }

    /// Progress of the check of existing data.
    pub fn checking(&mut self, checked: u32, total: u32) {
        match self.mode {
            Mode::Bar => {
                let fraction = f64::from(checked) / f64::from(total.max(1));
                self.draw(
                    fraction,
                    &format!("checking existing data: {checked}/{total} pieces"),
                );
            }
            Mode::Plain => {
                if self.plain_due() || checked == total {
                    stderr_line(&format!(
                        "{}: checking existing data: {checked}/{total} pieces",
                        self.label
                    ));
                }
            }
            Mode::Json => self.json(&json!({
                "event": "checking", "checked": checked, "total": total
            })),
            Mode::Quiet => {}
        }
    }

    /// Redraws the bar: `fraction` done, `msg` after it, fitted to the terminal's current width.
    fn draw(&self, fraction: f64, msg: &str) {
        if let Some(bar) = &self.bar {
            let (_, cols) = console::Term::stderr().size();
            bar.set_message(bar_line(&self.label, fraction, msg, usize::from(cols)));
        }
    }

    fn plain_due(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last_plain
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return false;
        }
        self.last_plain = Some(now);
        true
    }

    /// Refreshes the display from a stats snapshot.
    pub fn update(&mut self, st: &TorrentStats) {
        match self.mode {
            Mode::Bar => {
                let line = summary_line(st) + &self.dht_suffix();
                self.draw(st.progress(), &line);
            }
            Mode::Plain => {
                if self.plain_due() {
                    stderr_line(&format!(
                        "{}: {:.1}% {}{}",
                        self.label,
                        st.progress() * 100.0,
                        summary_line(st),
                        self.dht_suffix()
                    ));
                }
            }
            Mode::Json => {
                let mut v = progress_json(st, self.started.elapsed());
                if let (Some(n), Some(obj)) = (self.dht_nodes, v.as_object_mut()) {
                    obj.insert("dht_nodes".into(), json!(n));
                }
                self.json(&v);
            }
            Mode::Quiet => {}
        }
    }

    /// Shows (JSON) or logs one session event.
    pub fn event(&self, ev: &SessionEvent) {
        if let Some(v) = event_json(ev) {
            self.json(&v);
        }
        match ev {
            SessionEvent::Engine(Event::TrackerError { url, message, .. }) => {
                tracing::warn!("tracker {url}: {message}")
            }
            SessionEvent::Engine(Event::TrackerReply { url, peers, .. }) => {
                tracing::debug!("tracker {url}: {peers} peers")
            }
            SessionEvent::Engine(Event::PeerConnected { addr, .. }) => {
                tracing::debug!("peer {addr} connected")
            }
            SessionEvent::Engine(Event::PeerDisconnected { addr, reason, .. }) => {
                tracing::debug!("peer {addr} disconnected: {reason}")
            }
            SessionEvent::Engine(Event::PeerBanned { addr, reason, .. }) => {
                tracing::warn!("peer {addr} banned: {reason}")
            }
            SessionEvent::Engine(Event::PeerRefused { addr, reason, .. }) => {
                tracing::debug!("peer {addr} refused: {reason}")
            }
            SessionEvent::Engine(Event::PeerConnectFailed { addr, reason, .. }) => {
                tracing::debug!("connecting to peer {addr} failed: {reason}")
            }
            SessionEvent::Engine(Event::WebSeedError { url, message, .. }) => {
                tracing::warn!("web seed {url}: {message}")
            }
            SessionEvent::Engine(Event::PieceFailed { piece, .. }) => {
                tracing::info!("piece {piece} failed its hash check; fetching it again")
            }
            // The command ends with this error as its one-line message; the log only adds detail.
            SessionEvent::StorageError { message, .. } => tracing::debug!("disk: {message}"),
            _ => {}
        }
    }

    /// Removes the bar (before the final summary is printed).
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            if let Ok(mut slot) = active_bar().lock() {
                *slot = None;
            }
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One bar line, `label [=====>    ]  42% msg`, no wider than `width - 1` columns (a line that fills
/// the last column makes some terminals wrap, and a wrapped line repeats at every refresh): the label
/// gets at most a quarter of the width, the bar 10 to 30 columns, and `msg` what is left, cut with an
/// ellipsis; on a very narrow terminal the bar goes first, then the label.
pub fn bar_line(label: &str, fraction: f64, msg: &str, width: usize) -> String {
    use console::{measure_text_width, truncate_str};
    let width = width.saturating_sub(1);
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let pct = format!("{:>3}%", (fraction * 100.0).floor() as u32);
    // console's truncate_str underflows when the width is under the ellipsis' own width.
    let cut = |text: &str, w: usize| -> String {
        if w == 0 {
            String::new()
        } else {
            truncate_str(text, w, "…").into_owned()
        }
    };
    let label = cut(label, (width / 4).max(8));
    let label_w = measure_text_width(&label);
    // "label " + "[" bar "] " + pct + " " + msg
    let fixed = label_w + 1 + 3 + pct.len() + 1;
    let msg_w = measure_text_width(msg);
    let bar_w = width.saturating_sub(fixed + msg_w).clamp(10, 30);
    let mut line = if fixed + bar_w <= width {
        let filled = ((bar_w as f64) * fraction).round() as usize;
        let mut bar = "=".repeat(filled.min(bar_w));
        if filled < bar_w {
            bar.push('>');
            bar.push_str(&" ".repeat(bar_w - filled - 1));
        }
        format!("{label} [{bar}] {pct} ")
    } else if label_w + 1 + pct.len() < width {
        format!("{label} {pct} ")
    } else {
        format!("{pct} ")
    };
    let room = width.saturating_sub(measure_text_width(&line));
    line.push_str(&cut(msg, room));
    cut(line.trim_end(), width)
}

/// `12.0 MiB / 40.0 MiB  down 3.1 MiB/s  up 0 B/s  peers 3 (1 seeds)  ETA 9s`.
pub fn summary_line(st: &TorrentStats) -> String {
    let eta = match (&st.state, st.eta) {
        (TorrentState::Seeding, _) => "seeding".to_owned(),
        (_, Some(d)) => format!("ETA {}", duration(d)),
        (_, None) => "ETA -".to_owned(),
    };
    // Web seeds show only when the torrent has some: `web 1/2` (usable of listed).
    let web = if st.web_seeds.is_empty() {
        String::new()
    } else {
        let usable = st.web_seeds.iter().filter(|w| w.status.is_none()).count();
        format!("  web {usable}/{}", st.web_seeds.len())
    };
    format!(
        "{} / {}  down {}/s  up {}/s  peers {} ({} seeds){web}  {eta}",
        units::bytes(st.have_bytes),
        units::bytes(st.wanted_bytes),
        units::bytes(st.download_rate),
        units::bytes(st.upload_rate),
        st.peers,
        st.seeds
    )
}

/// A duration as `1h02m03s`, `4m05s` or `6s`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn state_name(state: &TorrentState) -> String {
    match state {
        TorrentState::Downloading => "downloading".into(),
        TorrentState::Seeding => "seeding".into(),
        TorrentState::Paused => "paused".into(),
        TorrentState::FetchingMetadata => "fetching metadata".into(),
        TorrentState::Error(m) => format!("error: {m}"),
        #[allow(unreachable_patterns)]
        _ => format!("{state:?}").to_lowercase(),
    }
}

/// The periodic progress object of `--json`.
pub fn progress_json(st: &TorrentStats, elapsed: Duration) -> Value {
    json!({
        "event": "progress",
        "torrent": st.id.0,
        "state": state_name(&st.state),
        "have_bytes": st.have_bytes,
        "wanted_bytes": st.wanted_bytes,
        "total_bytes": st.total_bytes,
        "percent": (st.progress() * 1000.0).round() / 10.0,
        "downloaded": st.downloaded,
        "uploaded": st.uploaded,
        "download_rate": st.download_rate,
        "upload_rate": st.upload_rate,
        "peers": st.peers,
        "seeds": st.seeds,
        "eta_secs": st.eta.map(|d| d.as_secs()),
        "elapsed_secs": elapsed.as_secs_f64(),
        "web_seeds": st.web_seeds.iter().map(|w| json!({
            "url": w.url,
            "connections": w.connections,
            "downloaded": w.downloaded,
            "download_rate": w.download_rate,
            "status": w.status,
            "last_error": w.last_error,
        })).collect::<Vec<_>>(),
    })
}

/// A session event as a JSON object (`None` for events a script has no use for).
pub fn event_json(ev: &SessionEvent) -> Option<Value> {
    Some(match ev {
        SessionEvent::Checking { checked, total, .. } => {
            json!({"event": "checking", "checked": checked, "total": total})
        }
        SessionEvent::StorageError { message, kind, .. } => {
            json!({"event": "storage_error", "kind": format!("{kind:?}"), "message": message})
        }
        SessionEvent::ShutDown => json!({"event": "shut_down"}),
        SessionEvent::MagnetReady(a) => json!({
            "event": "storage_ready",
            "torrent": a.id.0,
            "start": format!("{:?}", a.start).to_lowercase(),
            "have_pieces": a.have_pieces,
            "total_pieces": a.total_pieces,
        }),
        SessionEvent::Engine(e) => match e {
            Event::TorrentAdded(t) => json!({"event": "torrent_added", "torrent": t.0}),
            Event::PieceVerified { torrent, piece } => {
                json!({"event": "piece_verified", "torrent": torrent.0, "piece": piece})
            }
            Event::PieceFailed { torrent, piece } => {
                json!({"event": "piece_failed", "torrent": torrent.0, "piece": piece})
            }
            Event::TorrentCompleted(t) => json!({"event": "torrent_completed", "torrent": t.0}),
            Event::TorrentPaused(t) => json!({"event": "torrent_paused", "torrent": t.0}),
            Event::TorrentResumed(t) => json!({"event": "torrent_resumed", "torrent": t.0}),
            Event::TorrentRemoved(t) => json!({"event": "torrent_removed", "torrent": t.0}),
            Event::TorrentError { torrent, message } => {
                json!({"event": "torrent_error", "torrent": torrent.0, "message": message})
            }
            Event::TrackerError {
                torrent,
                url,
                message,
            } => {
                json!({"event": "tracker_error", "torrent": torrent.0, "url": url, "message": message})
            }
            Event::TrackerReply {
                torrent,
                url,
                peers,
            } => {
                json!({"event": "tracker_reply", "torrent": torrent.0, "url": url, "peers": peers})
            }
            Event::ScrapeResult {
                torrent,
                url,
                result,
            } => match result {
                Ok(s) => json!({"event": "scrape", "torrent": torrent.0, "url": url,
                    "seeders": s.seeders, "leechers": s.leechers, "completed": s.completed}),
                Err(m) => {
                    json!({"event": "scrape", "torrent": torrent.0, "url": url, "error": m})
                }
            },
            Event::PeerConnected { torrent, addr } => {
                json!({"event": "peer_connected", "torrent": torrent.0, "addr": addr.to_string()})
            }
            Event::PeerDisconnected {
                torrent,
                addr,
                reason,
            } => json!({"event": "peer_disconnected", "torrent": torrent.0,
                "addr": addr.to_string(), "reason": reason}),
            Event::PeerBanned {
                torrent,
                addr,
                reason,
            } => json!({"event": "peer_banned", "torrent": torrent.0,
                "addr": addr.to_string(), "reason": reason}),
            Event::PeerRefused {
                torrent,
                addr,
                reason,
            } => json!({"event": "peer_refused", "torrent": torrent.map(|t| t.0),
                "addr": addr.to_string(), "reason": reason}),
            Event::PeerConnectFailed {
                torrent,
                addr,
                reason,
            } => json!({"event": "peer_connect_failed", "torrent": torrent.0,
                "addr": addr.to_string(), "reason": reason}),
            Event::WebSeedError {
                torrent,
                url,
                message,
            } => json!({"event": "web_seed_error", "torrent": torrent.0,
                "url": url, "message": message}),
            #[allow(unreachable_patterns)]
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_line_fits_every_terminal_width() {
        let msg = "123.4 MiB / 1000.0 GiB  down 123.4 MiB/s  up 12.3 MiB/s  peers 50 (12 seeds)  ETA 1h02m03s";
        let label = "a-rather-long-torrent-name-that-people-really-use-2026.iso";
        for width in 0..300 {
            for fraction in [0.0, 0.42, 1.0] {
                let line = bar_line(label, fraction, msg, width);
                assert!(
                    console::measure_text_width(&line) < width.max(1),
                    "{width}: {line:?}"
                );
            }
        }
        // Wide enough: everything shows, the bar 30 columns.
        let line = bar_line("x", 0.5, "msg", 120);
        assert_eq!(
            line,
            format!("x [{}>{}]  50% msg", "=".repeat(15), " ".repeat(14))
        );
        // 120 columns with a long name: the message is cut, never wrapped.
        let line = bar_line(label, 0.42, msg, 120);
        assert!(line.contains(" 42% "), "{line}");
        assert_eq!(console::measure_text_width(&line), 119, "{line}");
        assert!(line.ends_with('…'), "{line}");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_secs(6)), "6s");
        assert_eq!(duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(duration(Duration::from_secs(3723)), "1h02m03s");
    }

    #[test]
    fn piece_events_are_json() {
        use hyperblow_driver::engine::TorrentId;
        let v = event_json(&SessionEvent::Engine(Event::PieceVerified {
            torrent: TorrentId(1),
            piece: 7,
        }))
        .expect("json");
        assert_eq!(v["event"], "piece_verified");
        assert_eq!(v["piece"], 7);
    }
}

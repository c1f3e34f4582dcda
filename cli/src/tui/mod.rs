//! `hyperblow tui`: the full-screen terminal UI on a session that remembers its torrents.
//!
//! As in the original design there are two sides: the UI runs on the main thread (this module's
//! loop: keys, drawing) and the engine runs on the chosen runtime; they talk only through the
//! `SessionHandle` (commands in, stats snapshots and events out), behind the [`model::Session`]
//! trait so that the UI can be driven by a deterministic fake in tests.
//!
//! - [`app`]: the UI state and what each key does (pure);
//! - [`view`]: drawing (only the rows on screen);
//! - [`tree`]: the Files tab's tree;
//! - [`live`]: the real session, the download queue and the state directory ([`state`]).

pub mod app;
pub mod live;
pub mod model;
pub mod state;
pub mod tree;
pub mod view;

use std::path::PathBuf;
use std::time::{Duration, Instant as StdInstant};

use clap::Args;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyEventKind};

use crate::error::CliError;
use crate::signals::StopFlag;
use crate::transfer::NetArgs;
use app::App;
use live::Live;
use model::Session;
use view::{Context, Theme};

/// Arguments of `hyperblow tui`.
#[derive(Debug, Args)]
pub struct TuiArgs {
    /// .torrent files or magnet links to add (besides the torrents the session remembers).
    #[arg(value_name = "TORRENT | MAGNET")]
    pub sources: Vec<String>,
    /// Where newly added torrents are saved (the torrents already in the session keep theirs).
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
    /// Most torrents downloading at once; the others wait in a queue (seeding takes no slot).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_active: usize,
    /// Add the torrents named on the command line paused.
    #[arg(long)]
    pub paused: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Sets up logging into `<state dir>/hyperblow.log` (the terminal belongs to the UI).
fn init_file_logging(dir: &std::path::Path) {
    use tracing_subscriber::EnvFilter;
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("hyperblow.log"))
    else {
        return;
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .try_init();
}

/// Runs `hyperblow tui` until the user quits (or SIGTERM).
pub fn run(args: &TuiArgs, stop: &StopFlag) -> Result<(), CliError> {
    let state_dir = match args.net.state_dir() {
        Some(d) => d,
        None => state::default_dir().ok_or_else(|| {
            CliError::Input(
                "no state directory: set XDG_DATA_HOME or HOME, or pass --state-dir".into(),
            )
        })?,
    };
    let store = state::StateDir::open(&state_dir).map_err(|e| CliError::disk(&state_dir, e))?;
    init_file_logging(&state_dir);
    std::fs::create_dir_all(&args.output).map_err(|e| CliError::disk(&args.output, e))?;
    let output = std::path::absolute(&args.output).map_err(|e| CliError::disk(&args.output, e))?;
    let peers = args.net.peer_addrs()?;
    let origin = StdInstant::now();
    let mut config = args.net.session_config();
    // The TUI's state directory holds the DHT's state too.
    if config.engine.dht.is_some() {
        config.state_file = Some(state_dir.join("dht.state"));
    }
    let handle = args.net.start(config, &|m| tracing::warn!("{m}"))?;
    let mut live = Live::new(handle, origin, store, output, args.max_active);
    live.peers = peers;
    live.session_limits = hyperblow_driver::RateLimits {
        download: args.net.max_download_rate,
        upload: args.net.max_upload_rate,
    };
    live.restore();
    for s in &args.sources {
        if crate::download::is_magnet(s) {
            live.add_magnet(s, args.paused);
        } else {
            live.add_file(std::path::Path::new(s), args.paused);
        }
    }
    let theme = Theme::from_env();
    let result = ui_loop(&mut live, theme, args.max_active, stop);
    let shut = live.shutdown(Duration::from_secs(30));
    result?;
    shut.map_err(|e| CliError::Internal(format!("shutting the session down: {e}")))
}

fn ui_loop(
    live: &mut Live,
    theme: Theme,
    max_active: usize,
    stop: &StopFlag,
) -> Result<(), CliError> {
    let mut terminal = ratatui::try_init()
        .map_err(|e| CliError::Internal(format!("cannot set the terminal up: {e}")))?;
    let mut app = App::default();
    let result = (|| -> std::io::Result<()> {
        let mut last_sample = StdInstant::now();
        let mut redraw = true;
        loop {
            if live.refresh() {
                redraw = true;
            }
            for m in live.take_messages() {
                tracing::info!("{m}");
                if m.starts_with("state:") {
                    app.alert = Some(m);
                } else {
                    app.message = Some(m);
                }
                redraw = true;
            }
            let sample = last_sample.elapsed() >= Duration::from_secs(1);
            if sample {
                last_sample = StdInstant::now();
            }
            if redraw || sample {
                app.sync(live.items(), sample);
                let cx = Context {
                    now: live.now(),
                    theme,
                    max_active,
                    limits: live.rate_limits(),
                };
                let items = live.items();
                terminal.draw(|f| view::draw(f, &mut app, items, &cx))?;
                redraw = false;
            }
            if app.quit || stop.is_set() {
                return Ok(());
            }
            let wait = if live.busy() {
                Duration::from_millis(50)
            } else {
                Duration::from_secs(1).saturating_sub(last_sample.elapsed())
            };
            if event::poll(wait.max(Duration::from_millis(10)))? {
                match event::read()? {
                    TermEvent::Key(k) if k.kind != KeyEventKind::Release => {
                        for c in app.key(k, live.items()) {
                            live.command(c);
                        }
                        redraw = true;
                    }
                    TermEvent::Resize(..) => redraw = true,
                    _ => {}
                }
            }
        }
    })();
    ratatui::restore();
    drop(terminal);
    result.map_err(|e| CliError::Internal(format!("terminal: {e}")))
}

#[cfg(test)]
mod tests;

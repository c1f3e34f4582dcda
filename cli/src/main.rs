//! The `hyperblow` command line: inspect, create, download and seed BitTorrent v1 torrents.
//!
//! Every command reports failure as one line on stderr (`hyperblow: error: ...`) and a documented,
//! non-zero exit code, so that scripts can trust it; nothing a user types or a file contains makes it
//! panic or print a backtrace.

mod create;
mod demo;
mod dht;
mod download;
mod error;
mod info;
mod progress;
mod safe;
mod scrape;
mod seed;
mod signals;
mod transfer;
mod tui;
mod units;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use error::EXIT_CODES;

/// A fast BitTorrent client with a sans-IO core.
///
/// Start with `hyperblow demo`: it seeds and downloads a small torrent on this machine, offline.
/// Logs go to stderr, filtered by RUST_LOG (default `warn`; e.g. RUST_LOG=debug).
#[derive(Debug, Parser)]
#[command(name = "hyperblow", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download a torrent's files (all or some), then stop or keep seeding.
    #[command(after_help = EXIT_CODES)]
    Download(download::DownloadArgs),
    /// Verify existing data against a torrent and seed it until Ctrl-C.
    #[command(after_help = EXIT_CODES)]
    Seed(seed::SeedArgs),
    /// Ask a torrent's trackers how many seeders and leechers it has.
    #[command(after_help = EXIT_CODES)]
    Scrape(scrape::ScrapeArgs),
    /// Show what a .torrent file or a magnet link describes.
    #[command(after_help = EXIT_CODES)]
    Info(info::InfoArgs),
    /// Make a .torrent from a file or a directory.
    #[command(after_help = EXIT_CODES)]
    Create(create::CreateArgs),
    /// Offline first run: seed a generated torrent with tokio and download it with async-std over
    /// 127.0.0.1, then check the copy byte for byte.
    #[command(after_help = EXIT_CODES)]
    Demo(demo::DemoArgs),
    /// The DHT on its own: `dht peers <info-hash | magnet>` prints who has a torrent.
    #[command(after_help = EXIT_CODES)]
    Dht(dht::DhtArgs),
    /// Full-screen terminal UI on a session that remembers its torrents (keys: press ?).
    #[command(after_help = EXIT_CODES)]
    Tui(tui::TuiArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Tui(_)) {
        // The TUI logs to a file in its state directory: the terminal is its screen.
        progress::init_logging();
    }
    let result = match cli.command {
        Command::Info(args) => info::run(&args),
        Command::Create(args) => create::run(&args),
        Command::Scrape(args) => scrape::run(&args),
        Command::Download(args) => download::run(&args, &signals::install()),
        Command::Seed(args) => seed::run(&args, &signals::install()),
        Command::Demo(args) => demo::run(&args, &signals::install()),
        Command::Tui(args) => tui::run(&args, &signals::install()),
        Command::Dht(args) => dht::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            progress::stderr_line(&format!("hyperblow: error: {err}"));
            ExitCode::from(err.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

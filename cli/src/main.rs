//! The `hyperblow` command line: inspect, create, download and seed BitTorrent v1 torrents.
//!
//! Every command reports failure as one line on stderr (`hyperblow: error: ...`) and a documented,
//! non-zero exit code, so that scripts can trust it; nothing a user types or a file contains makes it
//! panic or print a backtrace.

mod create;
mod error;
mod info;
mod units;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  an unexpected internal failure
  2  bad command-line usage
  3  bad input: a malformed .torrent or magnet link, or an unreadable input path
  4  disk error: output could not be written";

/// A fast BitTorrent client with a sans-IO core.
#[derive(Debug, Parser)]
#[command(name = "hyperblow", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what a .torrent file or a magnet link describes.
    #[command(after_help = EXIT_CODES)]
    Info(info::InfoArgs),
    /// Make a .torrent from a file or a directory.
    #[command(after_help = EXIT_CODES)]
    Create(create::CreateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => info::run(&args),
        Command::Create(args) => create::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hyperblow: error: {err}");
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

//! The CLI's error type: one line of text and an exit code per kind of failure.

use std::fmt;
use std::path::Path;

/// The exit-code table printed by `--help`; [`CliError::exit_code`] follows it.
pub const EXIT_CODES: &str = "\
Exit codes:
    0  success (download complete; seeding ended by --ratio or --seed-time)
    1  an unexpected internal failure (e.g. the network session could not start)
    2  bad command-line usage
    3  bad input: a malformed .torrent or magnet link, an unreadable input path, or seed data that
       does not match the torrent
    4  disk error: output could not be written (e.g. no space left; the message names the file)
    5  no peers, or no progress (for a magnet link: no metadata), before --timeout ran out
  130  interrupted by Ctrl-C or SIGTERM (trackers told `stopped`, files flushed, resume state saved)";

/// A failure that ends a command, with the class that picks its exit code.
#[derive(Debug)]
pub enum CliError {
    /// Something that should not happen: the session could not start or ended early (exit 1).
    Internal(String),
    /// Bad input: a malformed torrent or magnet link, or an input path that cannot be read (exit 3).
    Input(String),
    /// Output could not be written (exit 4).
    Disk(String),
    /// No peer, or no progress, for longer than `--timeout` (exit 5).
    NoPeers(String),
    /// Stopped by SIGINT or SIGTERM after a clean shutdown (exit 130).
    Interrupted,
}

impl CliError {
    /// The process exit code documented in `--help`.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Internal(_) => 1,
            CliError::Input(_) => 3,
            CliError::Disk(_) => 4,
            CliError::NoPeers(_) => 5,
            CliError::Interrupted => 130,
        }
    }

    /// An input error about `path`.
    pub fn input(path: &Path, what: impl fmt::Display) -> CliError {
        CliError::Input(format!("{}: {what}", path.display()))
    }

    /// A disk error about `path`.
    pub fn disk(path: &Path, what: impl fmt::Display) -> CliError {
        CliError::Disk(format!("{}: {what}", path.display()))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Internal(msg)
            | CliError::Input(msg)
            | CliError::Disk(msg)
            | CliError::NoPeers(msg) => f.write_str(msg),
            CliError::Interrupted => f.write_str("interrupted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exit_code_is_in_the_help_table() {
        let all = [
            CliError::Internal(String::new()),
            CliError::Input(String::new()),
            CliError::Disk(String::new()),
            CliError::NoPeers(String::new()),
            CliError::Interrupted,
        ];
        for e in all {
            let code = format!("{:>5}  ", e.exit_code());
            assert!(
                EXIT_CODES.contains(&code),
                "{code:?} missing from the table"
            );
        }
    }
}

//! The CLI's error type: one line of text and an exit code per kind of failure.

use std::fmt;
use std::path::Path;

/// A failure that ends a command, with the class that picks its exit code.
#[derive(Debug)]
pub enum CliError {
    /// Bad input: a malformed torrent or magnet link, or an input path that cannot be read (exit 3).
    Input(String),
    /// Output could not be written (exit 4).
    Disk(String),
}

impl CliError {
    /// The process exit code documented in `--help`.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Input(_) => 3,
            CliError::Disk(_) => 4,
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
            CliError::Input(msg) | CliError::Disk(msg) => f.write_str(msg),
        }
    }
}

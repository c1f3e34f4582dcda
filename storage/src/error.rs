//! The one error type of this crate: which path, which operation, and a kind the caller can act on.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// What a caller can do about a failed disk operation, decided from the underlying `io::Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageErrorKind {
    /// The disk or the user's quota is full, or the file hit a size limit (`ENOSPC`, `EDQUOT`, `EFBIG`,
    /// a write that made no progress). Free space or pick another directory, then retry.
    NoSpace,
    /// Not allowed: permissions, or a read-only file system (`EACCES`, `EPERM`, `EROFS`).
    PermissionDenied,
    /// The file (or part of it) is not on disk: it vanished, was never written, or is shorter than the
    /// torrent says. For a read this means "we do not have that data".
    NotFound,
    /// A path that would leave the storage root (a bad component, or a directory that resolves outside
    /// it through a symbolic link). Nothing was touched.
    UnsafePath,
    /// The caller asked for something the layout does not have (a piece or block out of range, block
    /// lengths that do not add up to the piece). A programming error in the caller, not a disk problem.
    InvalidRequest,
    /// Anything else (I/O error, a directory where a file should be, ...).
    Other,
}

impl fmt::Display for StorageErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageErrorKind::NoSpace => "no space left",
            StorageErrorKind::PermissionDenied => "permission denied",
            StorageErrorKind::NotFound => "not found",
            StorageErrorKind::UnsafePath => "unsafe path",
            StorageErrorKind::InvalidRequest => "invalid request",
            StorageErrorKind::Other => "I/O error",
        })
    }
}

/// The operation that failed, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageOp {
    /// Creating a directory.
    CreateDir,
    /// Opening (or creating) a file.
    Open,
    /// Setting a file's length (sparse preallocation).
    SetLen,
    /// Writing piece data.
    Write,
    /// Reading piece data.
    Read,
    /// `fsync` of a file or directory.
    Sync,
    /// Reading a file's metadata.
    Stat,
    /// Renaming (the atomic step of saving resume data).
    Rename,
    /// Checking where a path leads.
    Resolve,
}

impl fmt::Display for StorageOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageOp::CreateDir => "creating directory",
            StorageOp::Open => "opening",
            StorageOp::SetLen => "setting the length of",
            StorageOp::Write => "writing",
            StorageOp::Read => "reading",
            StorageOp::Sync => "syncing",
            StorageOp::Stat => "reading metadata of",
            StorageOp::Rename => "renaming into",
            StorageOp::Resolve => "resolving",
        })
    }
}

/// A failed disk operation: the path, what was being done, a [`StorageErrorKind`], and the OS error.
#[derive(Debug, Error)]
#[error("{op} {}: {kind}: {source}", path.display())]
pub struct StorageError {
    /// The file or directory concerned (for a request error, the file the request mapped to, or root).
    pub path: PathBuf,
    /// What was being done.
    pub op: StorageOp,
    /// What the caller can do about it.
    pub kind: StorageErrorKind,
    /// The underlying error (synthesized for checks done here, such as an unsafe path).
    #[source]
    pub source: io::Error,
}

impl StorageError {
    /// Wraps an `io::Error`, classifying it.
    pub(crate) fn io(op: StorageOp, path: &Path, source: io::Error) -> StorageError {
        StorageError {
            path: path.to_path_buf(),
            op,
            kind: classify(&source),
            source,
        }
    }

    /// An error found by this crate itself rather than by the OS.
    pub(crate) fn new(
        op: StorageOp,
        path: &Path,
        kind: StorageErrorKind,
        message: impl Into<String>,
    ) -> StorageError {
        StorageError {
            path: path.to_path_buf(),
            op,
            kind,
            source: io::Error::other(message.into()),
        }
    }

    /// Shorthand for `self.kind == StorageErrorKind::NoSpace`.
    pub fn is_no_space(&self) -> bool {
        self.kind == StorageErrorKind::NoSpace
    }
}

/// Maps an OS error to what the caller can do about it.
pub(crate) fn classify(error: &io::Error) -> StorageErrorKind {
    use io::ErrorKind as K;
    match error.kind() {
        K::StorageFull | K::QuotaExceeded | K::FileTooLarge | K::WriteZero => {
            StorageErrorKind::NoSpace
        }
        K::PermissionDenied | K::ReadOnlyFilesystem => StorageErrorKind::PermissionDenied,
        K::NotFound | K::UnexpectedEof => StorageErrorKind::NotFound,
        _ => StorageErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_os_errors() {
        // Linux errno values: ENOSPC 28, EDQUOT 122, EFBIG 27, EROFS 30, EACCES 13, ENOENT 2, EISDIR 21.
        for (errno, kind) in [
            (28, StorageErrorKind::NoSpace),
            (122, StorageErrorKind::NoSpace),
            (27, StorageErrorKind::NoSpace),
            (30, StorageErrorKind::PermissionDenied),
            (13, StorageErrorKind::PermissionDenied),
            (2, StorageErrorKind::NotFound),
            (21, StorageErrorKind::Other),
        ] {
            assert_eq!(
                classify(&io::Error::from_raw_os_error(errno)),
                kind,
                "errno {errno}"
            );
        }
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::WriteZero)),
            StorageErrorKind::NoSpace
        );
    }

    #[test]
    fn message_names_path_and_operation() {
        let e = StorageError::io(
            StorageOp::Write,
            Path::new("/data/x.bin"),
            io::Error::from_raw_os_error(28),
        );
        let text = e.to_string();
        assert!(text.contains("writing /data/x.bin"), "{text}");
        assert!(text.contains("no space left"), "{text}");
        assert!(e.is_no_space());
    }
}

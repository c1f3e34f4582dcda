//! `.torrent` files (BEP 3 metainfo, v1): parsing, validation, the piece <-> file map, and a sans-IO
//! builder.
//!
//! - [`Metainfo::from_bytes`] parses a whole `.torrent`; [`Info::from_bytes`] parses a bare `info`
//!   dictionary (what BEP 9 fetches from peers for a magnet link).
//! - The info-hash is the SHA-1 of the exact bytes of the `info` value as they appear in the input,
//!   and those bytes are kept ([`Info::raw`]) to be served to peers as metadata.
//! - [`Layout`] maps pieces and blocks to file ranges and files to pieces.
//! - [`TorrentBuilder`] makes a `.torrent` from a file list and streamed content, without touching the
//!   file system itself.

mod builder;
mod files;
mod torrent;

pub use builder::{auto_piece_length, BuiltTorrent, PieceHasher, TorrentBuilder, CREATED_BY};
pub use files::{check_component, FileEntry, FileSlice, FileSlices, Layout};
pub use torrent::{Info, Metainfo};

use crate::bencode::DecodeError;
use crate::types::InfoHash;

/// Why a `.torrent` (or an `info` dictionary, or a torrent to build) was rejected. Field names are
/// written as paths like `info.files[3].length`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetainfoError {
    /// The bytes are not valid bencode.
    #[error("{0}")]
    Bencode(#[from] DecodeError),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(String),
    /// A field has the wrong bencode type.
    #[error("field `{field}` at byte offset {offset} should be a {expected}, found a {found}")]
    WrongType {
        /// Which field.
        field: String,
        /// Where its value starts.
        offset: usize,
        /// What it should have been.
        expected: &'static str,
        /// What it was.
        found: &'static str,
    },
    /// A string field that must be text is not valid UTF-8.
    #[error("field `{0}` is not valid UTF-8")]
    NotUtf8(String),
    /// `piece length` is zero, negative or does not fit in 32 bits.
    #[error("invalid piece length {0}")]
    InvalidPieceLength(i64),
    /// A file length is negative.
    #[error("field `{field}` has negative length {value}")]
    NegativeLength {
        /// Which field.
        field: String,
        /// The value found.
        value: i64,
    },
    /// `pieces` is not a whole number of 20-byte SHA-1 hashes.
    #[error("`info.pieces` is {0} bytes long, not a multiple of 20")]
    PiecesNotMultipleOf20(usize),
    /// The number of hashes does not match the content length.
    #[error("`info.pieces` holds {found} hashes but the content needs {expected}")]
    PieceCountMismatch {
        /// `ceil(total length / piece length)`.
        expected: u64,
        /// `pieces.len() / 20`.
        found: u64,
    },
    /// More pieces than a `u32` piece index can address.
    #[error("{0} pieces is more than a 32-bit piece index can address")]
    TooManyPieces(u64),
    /// The file lengths add up to more than `u64::MAX`.
    #[error("total length of the files overflows 64 bits")]
    TotalLengthOverflow,
    /// The torrent holds no bytes at all.
    #[error("torrent content is empty (total length 0)")]
    EmptyTorrent,
    /// A multi-file torrent with an empty `files` list (or a builder given no files).
    #[error("torrent has no files")]
    NoFiles,
    /// Both `length` and `files`, or neither.
    #[error("`info` must have exactly one of `length` (single file) and `files` (multi-file)")]
    AmbiguousMode,
    /// A v2-only torrent (BEP 52 without v1 `pieces`).
    #[error("v2-only torrents (BEP 52) are not supported")]
    V2Only,
    /// A path or name that could escape the download directory or is otherwise unusable.
    #[error("unsafe path `{path}` in `{field}`: {reason}")]
    UnsafePath {
        /// Which field.
        field: String,
        /// The path as found (lossily decoded, joined with `/`).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two files with the same path, or a file whose path is a directory of another file.
    #[error("path `{0}` is used by more than one file (or is both a file and a directory)")]
    PathConflict(String),
    /// BEP 9 metadata whose SHA-1 is not the info-hash it was fetched for.
    #[error("metadata hashes to {actual}, expected {expected}")]
    InfoHashMismatch {
        /// The info-hash the metadata was requested for.
        expected: InfoHash,
        /// What the received bytes hash to.
        actual: InfoHash,
    },
    /// A builder received more content than the declared file lengths.
    #[error("builder received more content than the {expected} bytes declared")]
    TooMuchData {
        /// The declared total.
        expected: u64,
    },
    /// A builder was finished before all the declared content arrived.
    #[error("builder received {got} bytes of content but {expected} were declared")]
    NotEnoughData {
        /// The declared total.
        expected: u64,
        /// What was fed.
        got: u64,
    },
}

//! Everything Hyperblow does on disk, shared by the tokio and async-std drivers.
//!
//! This crate is plain blocking `std` code (Linux/Unix: positioned I/O through
//! [`std::os::unix::fs::FileExt`]). The drivers run it on worker threads, for which [`WorkerPool`] is a
//! small runtime-agnostic thread pool whose results can be awaited from any executor.
//!
//! # What is on disk
//! - [`Storage`] keeps one torrent's files under a root directory, laid out as the torrent says
//!   (`root/<name>` for a single file, `root/<name>/<dirs...>/<file>` for several). Every path is joined
//!   component by component and refused if it could leave the root (a bad component, or a directory that
//!   resolves outside the root through a symbolic link).
//! - Files are created lazily, on the first write that touches them, and immediately given their final
//!   length with `set_len` (sparse: nothing is zero-filled, so the disk fills as data arrives). A file
//!   already there with another length is resized to the torrent's length at that point.
//! - Verified pieces are written with [`Storage::write_piece`] directly from the received `Bytes` blocks
//!   (no copy), split across file boundaries; blocks are read back with [`Storage::read_block`].
//!
//! # File selection
//! Each file is wanted or skipped ([`Storage::set_wanted`], changeable at any time). Skipped files are not
//! created, **except** when a piece that a wanted file needs also covers part of a skipped file (pieces
//! ignore file boundaries): then that part is written into the skipped file, which is created sparse at
//! its full length. This keeps the rule simple, keeps those bytes available for seeding and for a later
//! change of selection, and costs only the disk blocks actually written. A piece that covers no wanted
//! file at all is not written ([`PieceWrite::NotWanted`]).
//!
//! BEP 47 padding files are never written nor created; reading them gives zeros. Zero-length files are
//! created (empty) when they are wanted, so a finished download is byte-exact.
//!
//! # Resume and checking
//! [`Storage::save_resume`] writes a small bencoded file (atomically: temporary file, `fsync`, rename)
//! holding the have-bitfield and each file's size and modification time; [`Storage::load_resume`] trusts
//! it only if all of these still match. [`Storage::save_checkpoint`] saves one while pieces are still
//! being written: [`Storage::load_resume_checkpoint`] takes it as a floor, never as the whole. Otherwise [`check_pieces`] (or [`Storage::verify_piece`] piece by
//! piece, e.g. spread over a [`WorkerPool`]) re-hashes what is on disk without creating anything.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use hyperblow_core::metainfo::Layout;
//! use hyperblow_storage::{hash_piece, PieceWrite, Storage, StorageConfig, WorkerPool};
//!
//! let dir = tempfile::tempdir()?;
//! let layout = Layout::new(vec![(vec!["hello.txt".to_string()], 11, false)], 8)?;
//! let storage = Arc::new(Storage::new(dir.path(), layout, StorageConfig::default())?);
//! let pool = WorkerPool::new(2)?;
//!
//! // A driver hashes and writes a received piece off its event loop, then awaits the handle.
//! let blocks = vec![Bytes::from_static(b"hell"), Bytes::from_static(b"o wo")];
//! let s = Arc::clone(&storage);
//! let job = pool.submit(move || {
//!     let digest = hash_piece(&blocks);
//!     s.write_piece(0, &blocks).map(|w| (w, digest))
//! });
//! let (written, _digest) = job.wait()??; // `job.await` in async code
//! assert_eq!(written, PieceWrite::Stored);
//! assert_eq!(&storage.read_block(0, 4, 4)?[..], b"o wo");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache;
mod check;
mod durable;
mod error;
mod resume;
mod storage;
mod workers;

pub use check::{check_pieces, hash_piece};
pub use error::{StorageError, StorageErrorKind, StorageOp};
pub use resume::{resume_path, MAX_RESUME_FILE_LEN};
pub use storage::{
    PieceWrite, Storage, StorageConfig, Verify, DEFAULT_MAX_OPEN_FILES, DIRECT_MIN_PIECE, STAGE_MAX,
};
pub use workers::{block_on, default_threads, JobCanceled, JobHandle, WorkerPool};

//! Hashing pieces: the SHA-1 of received blocks, and re-checking what is on disk.

use std::iter;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use hyperblow_core::bitfield::Bitfield;
use hyperblow_core::metainfo::FileSlice;
use sha1::{Digest, Sha1};

use crate::error::{StorageError, StorageErrorKind};
use crate::storage::Storage;

/// How much of a piece is read at once when verifying (keeps memory flat whatever the piece length).
const CHUNK: u64 = 256 * 1024;

/// The SHA-1 of the concatenation of `blocks` (a piece as it arrived), without joining them.
///
/// The `sha1` crate picks the x86 SHA-NI instructions at run time when the CPU has them.
pub fn hash_piece<B: AsRef<[u8]>>(blocks: &[B]) -> [u8; 20] {
    let mut hasher = Sha1::new();
    for b in blocks {
        hasher.update(b.as_ref());
    }
    hasher.finalize().into()
}

impl Storage {
    /// Whether piece `index` holds no data: every byte zero, or its files missing. Files are sparse
    /// and a piece is written whole once verified, so after a crash the pieces outside the last
    /// checkpoint that need a hash check are exactly the ones that are not blank. Stops at the first
    /// non-zero byte.
    pub fn piece_is_blank(&self, index: u32) -> Result<bool, StorageError> {
        let slices = self.layout().piece_ranges(index).ok_or_else(|| {
            StorageError::new(
                crate::error::StorageOp::Read,
                self.root(),
                StorageErrorKind::InvalidRequest,
                format!("piece {index} is out of range"),
            )
        })?;
        let mut buf = vec![0u8; CHUNK.min(u64::from(self.layout().piece_length())) as usize];
        for s in slices {
            let mut done = 0;
            while done < s.length {
                let n = (s.length - done).min(buf.len() as u64);
                let chunk = FileSlice {
                    file_index: s.file_index,
                    offset: s.offset + done,
                    length: n,
                };
                let Some(dest) = buf.get_mut(..n as usize) else {
                    return Ok(false);
                };
                match self.read_slices(iter::once(chunk), dest) {
                    Ok(()) if dest.iter().any(|&b| b != 0) => return Ok(false),
                    Ok(()) => {}
                    Err(e) if e.kind == StorageErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                done += n;
            }
        }
        Ok(true)
    }

    /// Reads piece `index` from disk and compares its SHA-1 with `expected`.
    ///
    /// `Ok(false)` if the data differs or is not (all) on disk (a missing or short file); `Err` for other
    /// failures (permissions, I/O errors) and for an index out of range. Creates nothing, and reads in
    /// chunks so memory does not grow with the piece length.
    pub fn verify_piece(&self, index: u32, expected: &[u8; 20]) -> Result<bool, StorageError> {
        let slices = self.layout().piece_ranges(index).ok_or_else(|| {
            StorageError::new(
                crate::error::StorageOp::Read,
                self.root(),
                StorageErrorKind::InvalidRequest,
                format!("piece {index} is out of range"),
            )
        })?;
        let mut hasher = Sha1::new();
        let mut buf = vec![0u8; CHUNK.min(u64::from(self.layout().piece_length())) as usize];
        for s in slices {
            let mut done = 0;
            while done < s.length {
                let n = (s.length - done).min(buf.len() as u64);
                let chunk = FileSlice {
                    file_index: s.file_index,
                    offset: s.offset + done,
                    length: n,
                };
                let Some(dest) = buf.get_mut(..n as usize) else {
                    return Ok(false);
                };
                match self.read_slices(iter::once(chunk), dest) {
                    Ok(()) => hasher.update(&*dest),
                    Err(e) if e.kind == StorageErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(e),
                }
                done += n;
            }
        }
        let got: [u8; 20] = hasher.finalize().into();
        Ok(&got == expected)
    }
}

/// Re-checks every piece on disk: the [`Bitfield`] of the pieces whose data matches `piece_hash(index)`.
///
/// Runs on `threads` scoped threads (at least 1) and calls `progress(checked, total)` after each piece
/// (from whichever thread checked it). Missing files just make their pieces absent; nothing is created.
/// The first error that is not "missing data" (e.g. permission denied) stops the check and is returned.
/// A piece with no expected hash (`None`) counts as absent.
pub fn check_pieces(
    storage: &Storage,
    piece_hash: impl Fn(u32) -> Option<[u8; 20]> + Sync,
    threads: usize,
    progress: impl Fn(u32, u32) + Sync,
) -> Result<Bitfield, StorageError> {
    let total = storage.layout().piece_count();
    let next = AtomicU32::new(0);
    let checked = AtomicU32::new(0);
    let stop = AtomicBool::new(false);
    let have = Mutex::new(Bitfield::new(total));
    let error = Mutex::new(None);
    let worker = || {
        while !stop.load(Ordering::Relaxed) {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= total {
                break;
            }
            let ok = match piece_hash(index) {
                Some(expected) => storage.verify_piece(index, &expected),
                None => Ok(false),
            };
            match ok {
                Ok(true) => {
                    have.lock().unwrap_or_else(|e| e.into_inner()).set(index);
                }
                Ok(false) => {}
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                    break;
                }
            }
            let done = checked.fetch_add(1, Ordering::Relaxed) + 1;
            progress(done, total);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads.max(1) {
            scope.spawn(worker);
        }
        worker();
    });
    if let Some(e) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(have.into_inner().unwrap_or_else(|e| e.into_inner()))
}

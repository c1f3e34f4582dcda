//! Resume data: which pieces were verified, and the state of the files when that was written down.
//!
//! The file is a bencoded dictionary:
//! `version` (1), `info-hash` (20 bytes), `pieces` (piece count), `have` (the bitfield in wire form) and
//! `files`, a list with one dictionary per file of the torrent: `size`, `mtime`, `mtime-ns` for a file
//! that existed, or an empty dictionary for one that did not; and `sha1`, the SHA-1 of the canonical
//! encoding of the dictionary without `sha1`, so that a damaged file is never half-trusted. A file
//! saved while no write could run (shutdown, removal) also has `clean` (1); only such a file is
//! trusted as it is ([`Storage::load_resume`]), and only when every one of these still matches, so a
//! file changed, truncated, replaced or deleted in between forces a full check instead of a wrong
//! claim to have pieces. A checkpoint saved while pieces are being written has no `clean` key: its
//! bitfield is older than the file times it records (see [`Storage::save_checkpoint`]), so it is only
//! ever a starting point ([`Storage::load_resume_checkpoint`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hyperblow_core::bencode::{self, OwnedValue};
use hyperblow_core::bitfield::Bitfield;
use hyperblow_core::InfoHash;

use crate::check::hash_piece;
use crate::error::{StorageError, StorageErrorKind, StorageOp};
use crate::storage::Storage;

/// Resume files longer than this are not read (a real one is a few bytes per piece and per file).
pub const MAX_RESUME_FILE_LEN: u64 = 64 * 1024 * 1024;

/// The format version written in `version`.
const VERSION: i64 = 1;

/// The key of the SHA-1 of the canonical encoding of all the other keys.
const CHECKSUM_KEY: &str = "sha1";

/// The key set (to 1) in a resume file saved while no write could run.
const CLEAN_KEY: &str = "clean";

/// The suggested place for a torrent's resume file: `<root>/.hyperblow/<info-hash hex>.resume`.
pub fn resume_path(root: &Path, info_hash: &InfoHash) -> PathBuf {
    root.join(".hyperblow")
        .join(format!("{}.resume", info_hash.to_hex()))
}

/// A file's state as far as resume is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileState {
    Missing,
    Present {
        size: u64,
        mtime: i64,
        mtime_ns: i64,
    },
}

impl FileState {
    fn to_value(self) -> OwnedValue {
        match self {
            FileState::Missing => OwnedValue::dict(),
            FileState::Present {
                size,
                mtime,
                mtime_ns,
            } => OwnedValue::dict()
                .with("size", i64::try_from(size).unwrap_or(i64::MAX))
                .with("mtime", mtime)
                .with("mtime-ns", mtime_ns),
        }
    }

    fn from_value(v: &bencode::Value<'_>) -> Option<FileState> {
        let dict = v.as_dict()?;
        if dict.is_empty() {
            return Some(FileState::Missing);
        }
        Some(FileState::Present {
            size: u64::try_from(v.get(b"size")?.as_int()?).ok()?,
            mtime: v.get(b"mtime")?.as_int()?,
            mtime_ns: v.get(b"mtime-ns")?.as_int()?,
        })
    }
}

impl Storage {
    /// The current on-disk state of every file.
    fn file_states(&self) -> Result<Vec<FileState>, StorageError> {
        (0..self.layout().files().len())
            .map(|i| {
                let path = self.file_path(i).unwrap_or(self.root());
                match fs::metadata(path) {
                    Ok(m) => Ok(FileState::Present {
                        size: m.len(),
                        mtime: m.mtime(),
                        mtime_ns: m.mtime_nsec(),
                    }),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FileState::Missing),
                    Err(e) => Err(StorageError::io(StorageOp::Stat, path, e)),
                }
            })
            .collect()
    }

    /// Writes resume data for the verified pieces `have` to `path`, atomically (a temporary file in the
    /// same directory, `fsync`, rename, `fsync` of the directory), marked clean: [`Storage::load_resume`]
    /// trusts it as long as the files keep the sizes and modification times read here. Creates the
    /// directory if needed.
    ///
    /// Only for a record taken while no write of the torrent runs or can start before the files'
    /// times are read here (shutdown, removal): a piece written after `have` was taken but before
    /// that read would be in the recorded times but not in `have`, and be lost on load. While
    /// pieces are being written, use [`Storage::save_checkpoint`].
    ///
    /// It runs [`Storage::flush`] first and records only the pieces of `have` that are durable
    /// ([`Storage::durable_pieces`]), so the record survives `kill -9` and a power loss without
    /// claiming a piece the disk may not hold. Call it from one place at a time: concurrent saves to
    /// one path are serialized, and the last to finish wins.
    pub fn save_resume(
        &self,
        path: &Path,
        info_hash: &InfoHash,
        have: &Bitfield,
    ) -> Result<(), StorageError> {
        self.write_resume(path, info_hash, have, true)
    }

    /// Like [`Storage::save_resume`], for a record of `have` taken while pieces may still be written
    /// (a periodic crash checkpoint). It is never trusted as it is: [`Storage::load_resume`] refuses
    /// it, and [`Storage::load_resume_checkpoint`] returns it as the pieces known to be there, the
    /// others to be found by hashing those that hold data.
    pub fn save_checkpoint(
        &self,
        path: &Path,
        info_hash: &InfoHash,
        have: &Bitfield,
    ) -> Result<(), StorageError> {
        self.write_resume(path, info_hash, have, false)
    }

    fn write_resume(
        &self,
        path: &Path,
        info_hash: &InfoHash,
        have: &Bitfield,
        clean: bool,
    ) -> Result<(), StorageError> {
        let pieces = self.layout().piece_count();
        if have.len() != pieces {
            return Err(StorageError::new(
                StorageOp::Write,
                path,
                StorageErrorKind::InvalidRequest,
                format!("bitfield has {} pieces, the torrent {pieces}", have.len()),
            ));
        }
        let Some(name) = path.file_name() else {
            return Err(StorageError::new(
                StorageOp::Write,
                path,
                StorageErrorKind::InvalidRequest,
                "resume path has no file name",
            ));
        };
        let _guard = self.resume_lock.lock().unwrap_or_else(|e| e.into_inner());
        // Only durable pieces are claimed: a flush (cheap when the writeback kept up) makes the
        // pieces written so far durable, and any piece of `have` it did not cover (written after
        // it began, or lost to a failed sync) stays out of the record.
        self.flush()?;
        let durable = self.durable_pieces();
        let mut have = have.clone();
        for i in 0..pieces {
            if have.get(i) && !durable.get(i) {
                have.clear(i);
            }
        }
        let files = self
            .file_states()?
            .into_iter()
            .map(FileState::to_value)
            .collect::<Vec<_>>();
        let body = OwnedValue::dict()
            .with("version", VERSION)
            .with("info-hash", &info_hash.as_bytes()[..])
            .with("pieces", i64::from(pieces))
            .with("have", have.as_bytes())
            .with("files", files);
        let body = if clean {
            body.with(CLEAN_KEY, 1i64)
        } else {
            body
        };
        let checksum = hash_piece(&[body.encode()]);
        let encoded = body.with(CHECKSUM_KEY, &checksum[..]).encode();

        let dir = path.parent().unwrap_or(Path::new("."));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        fs::create_dir_all(dir).map_err(|e| StorageError::io(StorageOp::CreateDir, dir, e))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| StorageError::io(StorageOp::Open, &tmp, e))?;
            f.write_all(&encoded)
                .map_err(|e| StorageError::io(StorageOp::Write, &tmp, e))?;
            f.sync_all()
                .map_err(|e| StorageError::io(StorageOp::Sync, &tmp, e))?;
            drop(f);
            fs::rename(&tmp, path).map_err(|e| StorageError::io(StorageOp::Rename, path, e))
        })();
        if result.is_err() {
            // Best effort: do not leave a half-written temporary behind; the old resume file is intact.
            let _ = fs::remove_file(&tmp);
            return result;
        }
        // Make the rename itself durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::io(StorageOp::Sync, dir, e))
    }

    /// Reads the resume file at `path` and returns its have-bitfield if it is trustworthy: saved clean
    /// (by [`Storage::save_resume`], not [`Storage::save_checkpoint`]), same info-hash, same piece and
    /// file counts, and every file's size and modification time exactly as recorded. `None`
    /// otherwise, including for a missing, truncated or corrupt file (never panics).
    pub fn load_resume(&self, path: &Path, info_hash: &InfoHash) -> Option<Bitfield> {
        let (have, recorded, clean) = self.read_resume(path, info_hash)?;
        if !clean {
            return None;
        }
        let current = self.file_states().ok()?;
        (recorded == current).then_some(have)
    }

    /// The resume file at `path` (clean or a checkpoint) as a crash checkpoint: like
    /// [`Storage::load_resume`], but a file's modification time may have moved on, as it does when
    /// pieces were written after the checkpoint and the process was killed before the next one (or
    /// not: a write in the same clock tick as the save, or between taking `have` and the save, leaves
    /// the times as recorded). Every file recorded must still have its
    /// recorded size (files are created at full length, so a truncated or replaced-by-another-size
    /// file fails); a file recorded missing may exist now. The pieces recorded were durable when the
    /// checkpoint was written (the files are flushed first); pieces written after it are not in the
    /// bitfield, so the caller checks the pieces outside it that hold data (see
    /// `Storage::piece_is_blank`).
    pub fn load_resume_checkpoint(&self, path: &Path, info_hash: &InfoHash) -> Option<Bitfield> {
        let (have, recorded, _) = self.read_resume(path, info_hash)?;
        let current = self.file_states().ok()?;
        let sizes_match = recorded.len() == current.len()
            && recorded.iter().zip(&current).all(|(r, c)| match (r, c) {
                (FileState::Missing, _) => true,
                (FileState::Present { size: a, .. }, FileState::Present { size: b, .. }) => a == b,
                (FileState::Present { .. }, FileState::Missing) => false,
            });
        sizes_match.then_some(have)
    }

    /// The have-bitfield, file states and clean mark of a well-formed resume file for this torrent.
    fn read_resume(
        &self,
        path: &Path,
        info_hash: &InfoHash,
    ) -> Option<(Bitfield, Vec<FileState>, bool)> {
        let file = File::open(path).ok()?;
        let mut raw = Vec::new();
        file.take(MAX_RESUME_FILE_LEN + 1)
            .read_to_end(&mut raw)
            .ok()?;
        if raw.len() as u64 > MAX_RESUME_FILE_LEN {
            return None;
        }
        let top = bencode::decode(&raw).ok()?;
        // Catch bit rot and torn writes that still decode: the checksum covers every other key.
        let mut body = top.to_owned_value();
        let OwnedValue::Dict(map) = &mut body else {
            return None;
        };
        let stored = map.remove(CHECKSUM_KEY.as_bytes())?;
        if stored != OwnedValue::Bytes(hash_piece(&[body.encode()]).to_vec()) {
            return None;
        }
        if top.get(b"version")?.as_int()? != VERSION
            || top.get(b"info-hash")?.as_bytes()? != info_hash.as_bytes()
        {
            return None;
        }
        let pieces = self.layout().piece_count();
        if top.get(b"pieces")?.as_int()? != i64::from(pieces) {
            return None;
        }
        let have = Bitfield::from_wire(top.get(b"have")?.as_bytes()?, pieces).ok()?;
        let recorded = top
            .get(b"files")?
            .as_list()?
            .iter()
            .map(FileState::from_value)
            .collect::<Option<Vec<_>>>()?;
        let clean = top.get(CLEAN_KEY.as_bytes()).and_then(|v| v.as_int()) == Some(1);
        Some((have, recorded, clean))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggested_path() {
        let h = InfoHash([0xab; 20]);
        assert_eq!(
            resume_path(Path::new("/dl"), &h),
            PathBuf::from(format!("/dl/.hyperblow/{}.resume", "ab".repeat(20)))
        );
    }
}

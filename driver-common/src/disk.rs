//! Disk work run on the worker pool: setting a torrent's storage up (resume file or full check), the
//! engine's hash/write/read jobs, resume saves, and deleting a removed torrent's data.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant as StdInstant;

use hyperblow_core::bitfield::Bitfield;
use hyperblow_core::engine::{Job, JobResult, StorageFailure, StorageFailureKind};
use hyperblow_core::metainfo::Info;
use hyperblow_core::InfoHash;
use hyperblow_storage::{
    check_pieces, default_threads, hash_piece, resume_path, Storage, StorageConfig, StorageError,
    StorageErrorKind,
};

use crate::handle::{AddTorrentRequest, StartKind};

/// One torrent's disk state as the event loop keeps it.
#[derive(Debug)]
pub(crate) struct Disk {
    pub storage: Arc<Storage>,
    pub info_hash: InfoHash,
    pub resume_path: PathBuf,
    /// Pieces were written since the last resume save.
    pub dirty: bool,
    /// A resume save is running on the pool.
    pub saving: bool,
    /// Flush the files before the next save (the torrent completed).
    pub flush_next: bool,
    /// When the last save started.
    pub last_save: Option<StdInstant>,
}

impl Disk {
    /// A torrent's disk state right after its storage was set up.
    pub fn new(storage: Arc<Storage>, info_hash: InfoHash, resume_path: PathBuf) -> Disk {
        Disk {
            storage,
            info_hash,
            resume_path,
            dirty: false,
            saving: false,
            flush_next: false,
            last_save: None,
        }
    }
}

/// Where a torrent's resume file lives.
pub(crate) fn resume_file(dir: Option<&Path>, output_dir: &Path, info_hash: &InfoHash) -> PathBuf {
    match dir {
        Some(d) => d.join(format!("{}.resume", info_hash.to_hex())),
        None => resume_path(output_dir, info_hash),
    }
}

/// A torrent's storage, ready to be added to the engine.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub storage: Arc<Storage>,
    pub have: Option<Bitfield>,
    pub start: StartKind,
}

/// Sets up the storage of `req` and finds which pieces are already on disk (see [`account`]).
pub(crate) fn prepare(
    req: &AddTorrentRequest,
    config: StorageConfig,
    resume: &Path,
    progress: impl Fn(u32, u32) + Sync,
) -> Result<Prepared, StorageError> {
    let info = &req.metainfo.info;
    let storage = Arc::new(Storage::new(
        &req.output_dir,
        info.layout().clone(),
        config,
    )?);
    if let Some(w) = &req.wanted_files {
        storage.set_wanted(w);
    }
    let (have, start) = account(&storage, info, resume, progress)?;
    Ok(Prepared {
        storage,
        have,
        start,
    })
}

/// Whether any file of `storage` exists, or a resume file at `resume`: then [`account`] has work.
pub(crate) fn anything_on_disk(storage: &Storage, resume: &Path) -> bool {
    resume.exists()
        || (0..storage.layout().files().len())
            .any(|i| storage.file_path(i).is_some_and(Path::exists))
}

/// Finds which pieces of `info` are already in `storage`: from a trustworthy resume file, else by
/// re-hashing everything if any file exists (reporting `progress(checked, total)`). Creates the
/// wanted zero-length files when nothing is left to download.
pub(crate) fn account(
    storage: &Storage,
    info: &Info,
    resume: &Path,
    progress: impl Fn(u32, u32) + Sync,
) -> Result<(Option<Bitfield>, StartKind), StorageError> {
    let files = storage.layout().files().len();
    let info_hash = info.info_hash();
    let any_file = (0..files).any(|i| storage.file_path(i).is_some_and(Path::exists));
    let (have, start) = if let Some(have) = storage.load_resume(resume, &info_hash) {
        (Some(have), StartKind::Resumed)
    } else if any_file {
        let have = check_pieces(storage, |i| info.piece_hash(i), default_threads(), progress)?;
        (Some(have), StartKind::Checked)
    } else {
        (None, StartKind::Fresh)
    };
    // Nothing left to download: the zero-length files would otherwise never be created.
    let wanted = storage.wanted_pieces();
    let complete = wanted
        .iter()
        .enumerate()
        .all(|(i, w)| !*w || have.as_ref().is_some_and(|h| h.get(i as u32)));
    if complete {
        storage.create_empty_files()?;
    }
    Ok((have, start))
}

/// Runs one engine job. `storage` is `None` if the torrent is gone (only hashing works then).
/// Returns the engine's result, plus the storage error behind a failure.
pub(crate) fn run_job(storage: Option<&Storage>, job: Job) -> (JobResult, Option<StorageError>) {
    let outcome = match job {
        Job::Hash { blocks, .. } => return (JobResult::Hashed(hash_piece(&blocks)), None),
        // `NotWanted` (the selection changed while the piece was on its way) is reported as written:
        // the engine has no other answer for it, and a later read of it fails as "not found".
        Job::Write { piece, blocks, .. } => {
            storage.map(|s| s.write_piece(piece, &blocks).map(|_| JobResult::Written))
        }
        Job::Read {
            piece,
            offset,
            length,
            ..
        } => storage.map(|s| s.read_block(piece, offset, length).map(JobResult::Read)),
    };
    match outcome {
        Some(Ok(r)) => (r, None),
        Some(Err(e)) => (JobResult::Failed(failure(&e)), Some(e)),
        None => (
            JobResult::Failed(StorageFailure {
                kind: StorageFailureKind::Other,
                message: "the torrent's storage is gone (removed)".into(),
            }),
            None,
        ),
    }
}

/// The engine's view of a storage error.
pub(crate) fn failure(e: &StorageError) -> StorageFailure {
    StorageFailure {
        kind: match e.kind {
            StorageErrorKind::NoSpace => StorageFailureKind::NoSpace,
            StorageErrorKind::PermissionDenied => StorageFailureKind::PermissionDenied,
            StorageErrorKind::NotFound => StorageFailureKind::NotFound,
            _ => StorageFailureKind::Other,
        },
        message: e.to_string(),
    }
}

/// Flushes (if asked) and saves the resume file.
pub(crate) fn save(
    storage: &Storage,
    path: &Path,
    info_hash: &InfoHash,
    have: &Bitfield,
    flush: bool,
) -> Result<(), StorageError> {
    if flush {
        storage.flush()?;
    }
    storage.save_resume(path, info_hash, have)
}

/// Deletes a removed torrent's files, the directories they leave empty (never the download
/// directory itself) and its resume file. Missing files are fine.
pub(crate) fn delete_data(storage: &Storage, resume: &Path) -> Result<(), (PathBuf, io::Error)> {
    storage.close_files();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for i in 0..storage.layout().files().len() {
        let Some(path) = storage.file_path(i) else {
            continue;
        };
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err((path.to_path_buf(), e)),
        }
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == storage.root() || !d.starts_with(storage.root()) {
                break;
            }
            dirs.push(d.to_path_buf());
            dir = d.parent();
        }
    }
    // Deepest first; a directory still holding other files simply stays.
    dirs.sort_by(|a, b| {
        let depth = |p: &PathBuf| p.components().count();
        depth(b).cmp(&depth(a)).then_with(|| a.cmp(b))
    });
    dirs.dedup();
    for d in dirs {
        let _ = fs::remove_dir(&d);
    }
    match fs::remove_file(resume) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err((resume.to_path_buf(), e)),
    }
}

#[cfg(test)]
mod tests {
    use hyperblow_core::metainfo::Layout;

    use super::*;

    #[test]
    fn delete_removes_files_empty_dirs_and_resume_but_not_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(
            vec![
                (vec!["t".into(), "a".into(), "x".into()], 3, false),
                (vec!["t".into(), "b".into()], 0, false),
            ],
            16384,
        )
        .unwrap();
        let storage = Storage::new(dir.path(), layout, StorageConfig::default()).unwrap();
        storage.create_empty_files().unwrap();
        let written = storage
            .write_piece(0, &[bytes::Bytes::from_static(b"abc")])
            .unwrap();
        assert_eq!(written, hyperblow_storage::PieceWrite::Stored);
        let resume = dir.path().join("r.resume");
        fs::write(&resume, b"x").unwrap();
        fs::write(dir.path().join("other"), b"keep").unwrap();
        delete_data(&storage, &resume).unwrap();
        assert!(!dir.path().join("t").exists());
        assert!(!resume.exists());
        assert!(dir.path().join("other").exists());
        // Deleting again (nothing left) is fine.
        delete_data(&storage, &resume).unwrap();
    }

    #[test]
    fn failed_jobs_name_the_problem() {
        let (r, e) = run_job(
            None,
            Job::Read {
                torrent: hyperblow_core::engine::TorrentId(0),
                piece: 0,
                offset: 0,
                length: 1,
            },
        );
        assert!(e.is_none());
        assert!(matches!(r, JobResult::Failed(f) if f.message.contains("removed")));
        let (r, _) = run_job(
            None,
            Job::Hash {
                torrent: hyperblow_core::engine::TorrentId(0),
                piece: 0,
                blocks: vec![bytes::Bytes::from_static(b"abc")],
            },
        );
        assert_eq!(r, JobResult::Hashed(hash_piece(&[b"abc"])));
    }
}

//! Disk work run on the worker pool: setting a torrent's storage up (resume file or full check), the
//! engine's hash/write/read jobs, resume saves, and deleting a removed torrent's data.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant as StdInstant;

use bytes::Bytes;
use hyperblow_core::bitfield::Bitfield;
use hyperblow_core::engine::{
    Job, JobId, JobResult, StorageFailure, StorageFailureKind, TorrentId,
};
use hyperblow_core::metainfo::Info;
use hyperblow_core::InfoHash;
use hyperblow_storage::{
    check_pieces, default_threads, hash_piece, resume_path, Storage, StorageConfig, StorageError,
    StorageErrorKind, Verify, WorkerPool,
};

use crate::handle::{AddTorrentRequest, StartKind};

/// A resume checkpoint is written once this share of a torrent's pieces (1/20) was written since the
/// last one, besides the time interval: a restart after `kill -9` then hashes at most about that
/// share (the pieces written after the last checkpoint).
pub(crate) const CHECKPOINT_SHARE: u32 = 20;

/// Once this many bytes were written since a torrent's last flush, a flush starts on a worker (see
/// [`Disk::writeback`]): writeback keeps up with the download, so the flush of a checkpoint or of
/// the end of a download finds little left, and checkpoints can claim the pieces. (A flush, not
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`, which would start writeback without waiting: `rustix`
/// 1.1 has no safe wrapper for it, and the workspace forbids `unsafe`.)
pub(crate) const WRITEBACK_EVERY: u64 = 32 * 1024 * 1024;

/// One torrent's disk state as the event loop keeps it.
#[derive(Debug)]
pub(crate) struct Disk {
    pub storage: Arc<Storage>,
    pub info_hash: InfoHash,
    pub resume_path: PathBuf,
    /// Pieces were written since the last resume save.
    pub dirty: bool,
    /// How many: a checkpoint is due once they reach [`CHECKPOINT_SHARE`] of the torrent, however
    /// soon after the last one, so that a restart after a crash hashes little.
    pub written_since_save: u32,
    /// A resume save is running (on a thread of its own, see [`run_beside_pool`]).
    pub saving: bool,
    /// When the last save started.
    pub last_save: Option<StdInstant>,
    /// A queued write of this torrent is running on the pool (see [`verify_and_write`]).
    pub writing: bool,
    /// Verified pieces whose write found another write of the torrent running: a torrent's pieces
    /// are written one at a time, because concurrent `pwrite`s to one file only contend for the
    /// file's lock in the kernel (which spins, burning the CPU another worker could hash with).
    pub write_queue: VecDeque<QueuedWrite>,
    /// Held by whoever writes to the torrent's files; `true` once the torrent is removed (no write
    /// may start after that).
    pub gate: Arc<Mutex<bool>>,
    /// A writeback flush (see [`Disk::writeback`]) is running on its thread.
    pub syncing: Arc<AtomicBool>,
}

/// A verified piece waiting for its torrent's running write to finish.
#[derive(Debug)]
pub(crate) struct QueuedWrite {
    /// The engine's `VerifyWrite` job.
    pub id: JobId,
    /// The piece.
    pub piece: u32,
    /// Its bytes, already checked against the expected hash.
    pub blocks: Vec<Bytes>,
}

impl Disk {
    /// A torrent's disk state right after its storage was set up.
    pub fn new(storage: Arc<Storage>, info_hash: InfoHash, resume_path: PathBuf) -> Disk {
        Disk {
            storage,
            info_hash,
            resume_path,
            dirty: false,
            written_since_save: 0,
            saving: false,
            last_save: None,
            writing: false,
            write_queue: VecDeque::new(),
            gate: Arc::default(),
            syncing: Arc::default(),
        }
    }

    /// Starts a flush on a thread of its own when [`WRITEBACK_EVERY`] bytes were written since the
    /// last one began and none is running: it writes back what is in the page cache, and (with
    /// direct writes, whose data is on the device already) commits the file system's journal and
    /// the device's cache. Not on the worker pool: a flush mostly waits for the disk, and a worker
    /// waiting there is one fewer hashing (measured with 16 KiB pieces, on 2 cores: the download
    /// slowed by a fifth). A failure goes to `failed`, on the flush's thread: the kernel reports a
    /// failed writeback once, so a later flush would not see it again.
    pub fn writeback(&self, failed: impl FnOnce(StorageError) + Send + 'static) {
        if self.storage.unsynced_bytes() < WRITEBACK_EVERY
            || self.syncing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (storage, syncing) = (Arc::clone(&self.storage), Arc::clone(&self.syncing));
        let flag = Arc::clone(&syncing);
        let spawned = std::thread::Builder::new()
            .name("hyperblow-sync".into())
            .spawn(move || {
                let result = storage.flush();
                syncing.store(false, Ordering::Release);
                if let Err(e) = result {
                    failed(e);
                }
            });
        if spawned.is_err() {
            // No thread to be had: the next resume save flushes instead.
            flag.store(false, Ordering::Release);
        }
    }
}

/// Runs `job`, which mostly waits for the disk (a resume save flushes first), on a thread of its
/// own rather than on the worker pool, whose threads (one per core) hash; on the pool only if no
/// thread can be had.
pub(crate) fn run_beside_pool(pool: &WorkerPool, job: impl FnOnce() + Send + 'static) {
    let job = Arc::new(Mutex::new(Some(job)));
    let mine = Arc::clone(&job);
    let spawned = std::thread::Builder::new()
        .name("hyperblow-save".into())
        .spawn(move || {
            let job = mine.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(job) = job {
                job();
            }
        });
    if spawned.is_err() {
        let job = job.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(job) = job {
            pool.execute(job);
        }
    }
}

/// What [`verify_and_write`] did.
#[derive(Debug)]
pub(crate) enum Verified {
    /// The job is answered: written, mismatch, or the write failed (with the storage error).
    Done(JobResult, Option<StorageError>),
    /// The piece matched but another write of the torrent holds the gate: it waits in the
    /// torrent's write queue (see [`write_piece`]).
    Busy(Vec<Bytes>),
}

/// Runs a [`Job::VerifyWrite`] on a worker: hashes the piece and, when it matches `expected`, writes
/// it at once, while its bytes are still in the CPU cache (written later, the copy reads them from
/// memory again, which measured as the costliest step of a download). A piece the storage stages
/// (see [`Storage::verify_and_write`]) waits for the torrent's write gate; any other is handed back
/// when another write of the torrent is running.
pub(crate) fn verify_and_write(
    storage: &Storage,
    gate: &Mutex<bool>,
    piece: u32,
    blocks: Vec<Bytes>,
    expected: [u8; 20],
) -> Verified {
    if storage.stages(piece) {
        // Hashed and staged in one pass; the write then waits for the gate rather than going back
        // through the loop to the write queue (which measured as most pieces' path, copying each
        // one from memory again on another wake-up of a worker).
        let admit = || {
            let removed = gate.lock().unwrap_or_else(PoisonError::into_inner);
            (!*removed).then_some(removed)
        };
        return match storage.verify_and_write(piece, &blocks, &expected, admit) {
            Ok(Verify::Mismatch) => Verified::Done(JobResult::Mismatch, None),
            Ok(Verify::Refused) => Verified::Done(JobResult::Failed(storage_gone()), None),
            r => write_result(r),
        };
    }
    if hash_piece(&blocks) != expected {
        return Verified::Done(JobResult::Mismatch, None);
    }
    let Ok(removed) = gate.try_lock() else {
        return Verified::Busy(blocks);
    };
    if *removed {
        return Verified::Done(JobResult::Failed(storage_gone()), None);
    }
    write_result(storage.write_piece(piece, &blocks))
}

/// Most piece bytes in one batch of small pieces (see [`verify_and_write_batch`]).
pub(crate) const SMALL_BATCH_BYTES: usize = 256 * 1024;

/// A small piece's `VerifyWrite` job, waiting to be batched with others of its torrent.
#[derive(Debug)]
pub(crate) struct SmallWrite {
    /// The engine's job.
    pub id: JobId,
    /// Its torrent.
    pub torrent: TorrentId,
    /// The piece.
    pub piece: u32,
    /// Its bytes.
    pub blocks: Vec<Bytes>,
    /// The hash from the metainfo.
    pub expected: [u8; 20],
}

/// Runs a batch of small pieces' `VerifyWrite` jobs of one torrent on one worker: hashes each piece,
/// then writes the ones that matched, in order, under one hold of the torrent's write gate (nothing is
/// written once the torrent is removed). Returns each job's answer.
pub(crate) fn verify_and_write_batch(
    storage: &Storage,
    gate: &Mutex<bool>,
    batch: Vec<SmallWrite>,
) -> Vec<(JobId, JobResult, Option<StorageError>)> {
    let mut answers = Vec::with_capacity(batch.len());
    let mut matched = Vec::with_capacity(batch.len());
    for w in batch {
        if hash_piece(&w.blocks) == w.expected {
            matched.push(w);
        } else {
            answers.push((w.id, JobResult::Mismatch, None));
        }
    }
    if matched.is_empty() {
        return answers;
    }
    // Runs of adjacent pieces are written with one write each (see `Storage::write_pieces`).
    matched.sort_by_key(|w| w.piece);
    let removed = gate.lock().unwrap_or_else(PoisonError::into_inner);
    let mut rest = &matched[..];
    while let Some(head) = rest.first() {
        let run = rest
            .iter()
            .zip(head.piece..)
            .take_while(|(w, want)| w.piece == *want)
            .count()
            .max(1);
        let (this, after) = rest.split_at(run.min(rest.len()));
        rest = after;
        if *removed {
            answers.extend(
                this.iter()
                    .map(|w| (w.id, JobResult::Failed(storage_gone()), None)),
            );
            continue;
        }
        let pieces: Vec<&[Bytes]> = this.iter().map(|w| &w.blocks[..]).collect();
        match storage.write_pieces(head.piece, &pieces) {
            Ok(()) => answers.extend(this.iter().map(|w| (w.id, JobResult::Written, None))),
            Err(e) => {
                let f = failure(&e);
                let mut error = Some(e);
                answers.extend(
                    this.iter()
                        .map(|w| (w.id, JobResult::Failed(f.clone()), error.take())),
                );
            }
        }
    }
    answers
}

/// Writes a verified piece that waited in the write queue: waits for the gate, and writes nothing
/// once the torrent is removed.
pub(crate) fn write_piece(
    storage: &Storage,
    gate: &Mutex<bool>,
    piece: u32,
    blocks: &[Bytes],
) -> (JobResult, Option<StorageError>) {
    let removed = gate.lock().unwrap_or_else(PoisonError::into_inner);
    if *removed {
        return (JobResult::Failed(storage_gone()), None);
    }
    match write_result(storage.write_piece(piece, blocks)) {
        Verified::Done(r, e) => (r, e),
        Verified::Busy(_) => (JobResult::Failed(storage_gone()), None),
    }
}

/// `NotWanted` (the selection changed while the piece was on its way) is reported as written: the
/// engine has no other answer for it, and a later read of it fails as "not found".
fn write_result<T>(r: Result<T, StorageError>) -> Verified {
    match r {
        Ok(_) => Verified::Done(JobResult::Written, None),
        Err(e) => Verified::Done(JobResult::Failed(failure(&e)), Some(e)),
    }
}

/// The failure of a job whose torrent was removed.
pub(crate) fn storage_gone() -> StorageFailure {
    StorageFailure {
        kind: StorageFailureKind::Other,
        message: "the torrent's storage is gone (removed)".into(),
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
    /// Pieces whose data was read and hashed to find `have`.
    pub rehashed: u32,
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
    let (have, start, rehashed) = account(&storage, info, resume, req.force_check, progress)?;
    Ok(Prepared {
        storage,
        have,
        start,
        rehashed,
    })
}

/// Whether any file of `storage` exists, or a resume file at `resume`: then [`account`] has work.
pub(crate) fn anything_on_disk(storage: &Storage, resume: &Path) -> bool {
    resume.exists()
        || (0..storage.layout().files().len())
            .any(|i| storage.file_path(i).is_some_and(Path::exists))
}

/// Finds which pieces of `info` are already in `storage`: from a trustworthy resume file; else from
/// a crash checkpoint (a resume file whose files kept their sizes but were written to since), plus
/// a hash check of just the pieces outside it that hold data (those written after it); else by
/// re-hashing everything if any file exists (reporting `progress(checked, total)`). `force_check`
/// skips both records and hashes everything. Creates the wanted zero-length files when nothing is
/// left to download. Also returns how many pieces were hashed.
pub(crate) fn account(
    storage: &Storage,
    info: &Info,
    resume: &Path,
    force_check: bool,
    progress: impl Fn(u32, u32) + Sync,
) -> Result<(Option<Bitfield>, StartKind, u32), StorageError> {
    let files = storage.layout().files().len();
    let info_hash = info.info_hash();
    let any_file = (0..files).any(|i| storage.file_path(i).is_some_and(Path::exists));
    let resumed = (!force_check)
        .then(|| storage.load_resume(resume, &info_hash))
        .flatten();
    let checkpoint = || {
        (!force_check)
            .then(|| storage.load_resume_checkpoint(resume, &info_hash))
            .flatten()
    };
    // A record claims only pieces that were durable when it was saved; pieces found by hashing may
    // sit in the page cache only (written before a `kill -9`), so the next flush must cover them
    // before a record claims them.
    let (have, start, rehashed) = if let Some(have) = resumed {
        storage.trust_durable(&have);
        (Some(have), StartKind::Resumed, 0)
    } else if let Some(mut have) = checkpoint() {
        storage.trust_durable(&have);
        let hashed = std::sync::atomic::AtomicU32::new(0);
        let zeros = ZeroHashes::default();
        let written = check_pieces(
            storage,
            |i| {
                if have.get(i) {
                    return None;
                }
                let expected = info.piece_hash(i)?;
                // A blank piece was not written since the checkpoint, unless its data is all zeros.
                if storage.piece_is_blank(i).unwrap_or(false)
                    && storage
                        .layout()
                        .piece_len(i)
                        .is_none_or(|len| zeros.hash(len) != expected)
                {
                    return None;
                }
                hashed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(expected)
            },
            default_threads(),
            progress,
        )?;
        for i in 0..written.len() {
            if written.get(i) {
                have.set(i);
                storage.found_unsynced(i);
            }
        }
        (Some(have), StartKind::Resumed, hashed.into_inner())
    } else if any_file {
        let have = check_pieces(storage, |i| info.piece_hash(i), default_threads(), progress)?;
        for i in 0..have.len() {
            if have.get(i) {
                storage.found_unsynced(i);
            }
        }
        (
            Some(have),
            StartKind::Checked,
            storage.layout().piece_count(),
        )
    } else {
        (None, StartKind::Fresh, 0)
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
    Ok((have, start, rehashed))
}

/// The SHA-1 of an all-zero piece, by length (a torrent has at most two piece lengths), computed
/// once each: a piece of zeros reads as blank, yet may have been verified and written.
#[derive(Debug, Default)]
struct ZeroHashes(Mutex<Vec<(u32, [u8; 20])>>);

impl ZeroHashes {
    fn hash(&self, len: u32) -> [u8; 20] {
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, h)) = known.iter().find(|(l, _)| *l == len) {
            return *h;
        }
        let h = hash_piece(&[vec![0u8; len as usize]]);
        known.push((len, h));
        h
    }
}

/// Runs one engine job to the end on the calling thread, without the write gate (the caller
/// orders writes). `storage` is `None` if the torrent is gone (a mismatch is still found then).
/// Returns the engine's result, plus the storage error behind a failure.
pub(crate) fn run_job(storage: Option<&Storage>, job: Job) -> (JobResult, Option<StorageError>) {
    let outcome = match job {
        Job::VerifyWrite {
            piece,
            blocks,
            expected,
            ..
        } => {
            if hash_piece(&blocks) != expected {
                return (JobResult::Mismatch, None);
            }
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
        None => (JobResult::Failed(storage_gone()), None),
    }
}

/// Most bytes read at once for a run of adjacent blocks (16 blocks of 16 KiB).
pub(crate) const READ_RUN_MAX: u32 = 256 * 1024;

/// One block read the engine asked for ([`Job::Read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockRead {
    pub id: JobId,
    pub torrent: hyperblow_core::engine::TorrentId,
    pub piece: u32,
    pub offset: u32,
    pub length: u32,
}

/// Groups reads, in the order given, into runs of blocks that follow each other in one piece of one
/// torrent, each at most [`READ_RUN_MAX`] bytes long (a single block may be longer).
pub(crate) fn adjacent_runs(reads: Vec<BlockRead>) -> Vec<Vec<BlockRead>> {
    let mut runs: Vec<Vec<BlockRead>> = Vec::new();
    let mut len = 0u32;
    for r in reads {
        if let Some(last) = runs.last_mut().and_then(|run| run.last().copied()) {
            let follows = last.torrent == r.torrent
                && last.piece == r.piece
                && last.offset.checked_add(last.length) == Some(r.offset);
            if follows && len.saturating_add(r.length) <= READ_RUN_MAX {
                len += r.length;
                if let Some(run) = runs.last_mut() {
                    run.push(r);
                }
                continue;
            }
        }
        len = r.length;
        runs.push(vec![r]);
    }
    runs
}

/// Reads a run of adjacent blocks with one read and hands each block its slice (no copy). A failure
/// fails every block of the run; the storage error goes with the first only (it is reported once).
pub(crate) fn read_run(
    storage: Option<&Storage>,
    pool: &ReadPool,
    run: &[BlockRead],
) -> Vec<(JobId, JobResult, Option<StorageError>)> {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return Vec::new();
    };
    let total = (last.offset - first.offset) + last.length;
    let outcome = storage.map(|s| {
        let mut buf = pool.take(total as usize);
        s.read_block_into(first.piece, first.offset, buf.as_mut())
            .map(|()| Bytes::from_owner(buf))
    });
    let mut out = Vec::with_capacity(run.len());
    match outcome {
        Some(Ok(data)) => {
            for r in run {
                let at = (r.offset - first.offset) as usize;
                let result = match data.get(at..at + r.length as usize) {
                    Some(_) => JobResult::Read(data.slice(at..at + r.length as usize)),
                    // Cannot happen: the storage returned exactly `total` bytes.
                    None => JobResult::Failed(StorageFailure {
                        kind: StorageFailureKind::Other,
                        message: format!("short read of piece {}", r.piece),
                    }),
                };
                out.push((r.id, result, None));
            }
        }
        Some(Err(e)) => {
            let f = failure(&e);
            let mut error = Some(e);
            for r in run {
                out.push((r.id, JobResult::Failed(f.clone()), error.take()));
            }
        }
        None => {
            for r in run {
                let (result, error) = run_job(
                    None,
                    Job::Read {
                        torrent: r.torrent,
                        piece: r.piece,
                        offset: r.offset,
                        length: r.length,
                    },
                );
                out.push((r.id, result, error));
            }
        }
    }
    out
}

/// Buffers for runs of block reads, handed out for a read and given back when the last block sliced from
/// it has been sent: reusing warm memory spares the allocator and the page faults of fresh memory,
/// which otherwise cost a seeder more CPU than the reads themselves.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReadPool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Most free buffers a [`ReadPool`] keeps (4 MiB); more are freed.
const READ_POOL_KEEP: usize = 16;

impl ReadPool {
    /// A buffer of exactly `len` bytes (zero-filled or holding an earlier read). Buffers are all
    /// [`READ_RUN_MAX`] long; a read of less than a quarter of that gets one of its own, which is not
    /// kept (a single block must not pin a large buffer while it waits to be sent).
    pub(crate) fn take(&self, len: usize) -> PooledBuf {
        let size = READ_RUN_MAX as usize;
        if len < size / 4 || len > size {
            return PooledBuf {
                buf: vec![0u8; len],
                len,
                pool: None,
            };
        }
        let reused = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        PooledBuf {
            buf: reused.unwrap_or_else(|| vec![0u8; size]),
            len,
            pool: Some(Arc::clone(&self.free)),
        }
    }
}

/// A buffer from a [`ReadPool`]; it goes back to the pool when dropped (as the owner of a `Bytes`,
/// when the last slice of it is dropped).
#[derive(Debug)]
pub(crate) struct PooledBuf {
    buf: Vec<u8>,
    len: usize,
    /// Where it goes back to (`None`: not kept).
    pool: Option<Arc<Mutex<Vec<Vec<u8>>>>>,
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

impl AsMut<[u8]> for PooledBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.buf.get_mut(..self.len).unwrap_or_default()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let Some(pool) = &self.pool else {
            return;
        };
        let mut free = pool.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < READ_POOL_KEEP {
            free.push(std::mem::take(&mut self.buf));
        }
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

/// Saves the resume file (the save flushes first, and records only the pieces of `have` that are
/// durable): `clean` when no write of the torrent can run any more (shutdown, removal; trusted as it
/// is on the next start), else as a crash checkpoint (pieces may be written between taking `have`
/// and reading the files' times, so the next start hashes the pieces outside it that hold data; see
/// [`Storage::save_checkpoint`]).
pub(crate) fn save(
    storage: &Storage,
    path: &Path,
    info_hash: &InfoHash,
    have: &Bitfield,
    clean: bool,
) -> Result<(), StorageError> {
    if clean {
        storage.save_resume(path, info_hash, have)
    } else {
        storage.save_checkpoint(path, info_hash, have)
    }
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

/// Writes a small file whole or not at all: a temporary file next to it, then a rename. Creates the
/// directory if needed.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        use std::io::Write;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use hyperblow_core::metainfo::Layout;

    use super::*;

    /// A single-file torrent of `data` in pieces of `piece_len`, and an empty storage for it in a
    /// temporary directory (kept alive by the returned guard).
    fn single_file_storage(
        data: &[u8],
        piece_len: u32,
    ) -> (
        hyperblow_core::metainfo::Metainfo,
        tempfile::TempDir,
        Storage,
    ) {
        let mut hasher =
            hyperblow_core::metainfo::TorrentBuilder::single_file("x", data.len() as u64)
                .piece_length(piece_len)
                .start()
                .unwrap();
        hasher.update(data).unwrap();
        let meta = hyperblow_core::metainfo::Metainfo::from_bytes(&hasher.finish().unwrap().bytes)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(
            dir.path(),
            meta.info.layout().clone(),
            StorageConfig::default(),
        )
        .unwrap();
        (meta, dir, storage)
    }

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

    fn read(id: u64, piece: u32, offset: u32, length: u32) -> BlockRead {
        BlockRead {
            id: JobId(id),
            torrent: hyperblow_core::engine::TorrentId(0),
            piece,
            offset,
            length,
        }
    }

    #[test]
    fn force_check_hashes_the_data_instead_of_trusting_the_resume_file() {
        let (meta, dir, storage) = single_file_storage(b"abc", 16384);
        let written = storage
            .write_piece(0, &[bytes::Bytes::from_static(b"abc")])
            .unwrap();
        assert_eq!(written, hyperblow_storage::PieceWrite::Stored);
        // A valid resume file that vouches for nothing.
        let resume = dir.path().join("x.resume");
        save(
            &storage,
            &resume,
            &meta.info_hash(),
            &Bitfield::new(1),
            true,
        )
        .unwrap();
        let (have, start, _) = account(&storage, &meta.info, &resume, false, |_, _| {}).unwrap();
        assert_eq!(
            (have.map(|h| h.count_ones()), start),
            (Some(0), StartKind::Resumed)
        );
        let (have, start, _) = account(&storage, &meta.info, &resume, true, |_, _| {}).unwrap();
        assert_eq!(
            (have.map(|h| h.count_ones()), start),
            (Some(1), StartKind::Checked)
        );
    }

    /// Issue 18: a periodic checkpoint takes the verified pieces, then (on a worker, while other
    /// workers go on writing) reads the files' times. A piece written in between was in those times
    /// but not in the record; trusted as a clean record, the restart after `kill -9` lost it. Saved as
    /// a checkpoint, the restart hashes it. A verified piece of zeros reads as blank and is found too.
    #[test]
    fn a_piece_written_while_a_checkpoint_is_taken_is_found_after_a_crash() {
        const PIECE: usize = 16384;
        let mut data: Vec<u8> = (0..4 * PIECE).map(|i| (i % 251) as u8 + 1).collect();
        data[2 * PIECE..3 * PIECE].fill(0);
        let (meta, dir, storage) = single_file_storage(&data, PIECE as u32);
        let piece = |i: usize| [Bytes::copy_from_slice(&data[i * PIECE..(i + 1) * PIECE])];
        assert_eq!(
            storage.write_piece(0, &piece(0)).unwrap(),
            hyperblow_storage::PieceWrite::Stored
        );
        let mut have = Bitfield::new(4);
        have.set(0);
        // Written after `have` was taken, before the save reads the files' times.
        for i in [1, 2] {
            assert_eq!(
                storage.write_piece(i as u32, &piece(i)).unwrap(),
                hyperblow_storage::PieceWrite::Stored
            );
        }
        let resume = dir.path().join("x.resume");
        save(&storage, &resume, &meta.info_hash(), &have, false).unwrap();
        // Killed here; the restart.
        let again = Storage::new(
            dir.path(),
            meta.info.layout().clone(),
            StorageConfig::default(),
        )
        .unwrap();
        let (found, start, rehashed) =
            account(&again, &meta.info, &resume, false, |_, _| {}).unwrap();
        let found = found.unwrap();
        assert_eq!(start, StartKind::Resumed);
        assert_eq!(
            (0..4).map(|i| found.get(i)).collect::<Vec<_>>(),
            vec![true, true, true, false]
        );
        // Piece 1, and piece 2 (zeros, so blank, but its hash is that of zeros); not blank piece 3.
        assert_eq!(rehashed, 2);
        // Saved clean (no write running), the same record is trusted as it is.
        save(&again, &resume, &meta.info_hash(), &found, true).unwrap();
        let (found, start, rehashed) =
            account(&again, &meta.info, &resume, false, |_, _| {}).unwrap();
        assert_eq!(found.map(|h| h.count_ones()), Some(3));
        assert_eq!((start, rehashed), (StartKind::Resumed, 0));
    }

    #[test]
    fn adjacent_blocks_of_a_piece_make_one_run_up_to_the_cap() {
        let k = 16 * 1024;
        let mut reads: Vec<BlockRead> = (0..20).map(|i| read(i, 3, i as u32 * k, k)).collect();
        reads.push(read(20, 4, 0, k)); // another piece
        reads.push(read(21, 4, 2 * k, k)); // a gap
        reads.push(read(22, 4, 3 * k, k));
        let mut other = read(23, 4, 4 * k, k);
        other.torrent = hyperblow_core::engine::TorrentId(1); // another torrent
        reads.push(other);
        let lens: Vec<Vec<u64>> = adjacent_runs(reads)
            .iter()
            .map(|r| r.iter().map(|b| b.id.0).collect())
            .collect();
        assert_eq!(
            lens,
            vec![
                (0..16).collect::<Vec<u64>>(),
                (16..20).collect(),
                vec![20],
                vec![21, 22],
                vec![23],
            ]
        );
    }

    #[test]
    fn a_run_is_read_once_and_split_into_its_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(
            vec![
                (vec!["t".into(), "a".into()], 10, false),
                (vec!["t".into(), "b".into()], 30, false),
            ],
            20,
        )
        .unwrap();
        let storage = Storage::new(dir.path(), layout, StorageConfig::default()).unwrap();
        let data: Vec<u8> = (0..40u8).collect();
        for p in 0..2u32 {
            let piece = bytes::Bytes::copy_from_slice(&data[p as usize * 20..][..20]);
            let _ = storage.write_piece(p, &[piece]).unwrap();
        }
        // Piece 1 is bytes 20..40; blocks at 2..7, 7..8 and 8..20 of it.
        let run = [read(1, 1, 2, 5), read(2, 1, 7, 1), read(3, 1, 8, 12)];
        let pool = ReadPool::default();
        let got = read_run(Some(&storage), &pool, &run);
        let want: Vec<(JobId, JobResult)> = vec![
            (
                JobId(1),
                JobResult::Read(bytes::Bytes::copy_from_slice(&data[22..27])),
            ),
            (
                JobId(2),
                JobResult::Read(bytes::Bytes::copy_from_slice(&data[27..28])),
            ),
            (
                JobId(3),
                JobResult::Read(bytes::Bytes::copy_from_slice(&data[28..40])),
            ),
        ];
        assert_eq!(
            got.into_iter().map(|(i, r, _)| (i, r)).collect::<Vec<_>>(),
            want
        );
        // Past the end of the piece: every block fails, the error is reported once.
        let bad = [read(4, 1, 15, 5), read(5, 1, 20, 5)];
        let got = read_run(Some(&storage), &pool, &bad);
        assert!(got
            .iter()
            .all(|(_, r, _)| matches!(r, JobResult::Failed(_))));
        assert_eq!(got.iter().filter(|(_, _, e)| e.is_some()).count(), 1);
        // Without storage (torrent removed) every block fails.
        let got = read_run(None, &pool, &run);
        assert_eq!(got.len(), 3);
        assert!(got
            .iter()
            .all(|(_, r, _)| matches!(r, JobResult::Failed(_))));
    }

    #[test]
    fn a_matching_piece_is_written_with_its_hash_unless_a_write_is_running() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(vec![(vec!["f".into()], 8, false)], 4).unwrap();
        let storage = Storage::new(dir.path(), layout, StorageConfig::default()).unwrap();
        let gate = Mutex::new(false);
        let good = vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")];
        let expected = hash_piece(&good);
        // A mismatch writes nothing.
        let v = verify_and_write(&storage, &gate, 0, good.clone(), [0; 20]);
        assert!(matches!(v, Verified::Done(JobResult::Mismatch, None)));
        assert!(!dir.path().join("f").exists());
        // Another write holds the gate: handed back for the write queue.
        {
            let _held = gate.lock().unwrap();
            let v = verify_and_write(&storage, &gate, 0, good.clone(), expected);
            assert!(matches!(v, Verified::Busy(ref b) if *b == good));
        }
        // Free: written at once.
        let v = verify_and_write(&storage, &gate, 0, good.clone(), expected);
        assert!(matches!(v, Verified::Done(JobResult::Written, None)));
        assert_eq!(&fs::read(dir.path().join("f")).unwrap()[..4], b"abcd");
        // Removed: never written, by either path.
        *gate.lock().unwrap() = true;
        let more = vec![Bytes::from_static(b"efgh")];
        let v = verify_and_write(&storage, &gate, 1, more.clone(), hash_piece(&more));
        assert!(matches!(v, Verified::Done(JobResult::Failed(_), None)));
        let (r, _) = write_piece(&storage, &gate, 1, &more);
        assert!(matches!(r, JobResult::Failed(f) if f.message.contains("removed")));
        assert_eq!(&fs::read(dir.path().join("f")).unwrap()[4..], &[0; 4]);
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
        // A mismatch is found without storage; a match then has nowhere to go.
        let blocks = vec![bytes::Bytes::from_static(b"abc")];
        let job = |expected| Job::VerifyWrite {
            torrent: hyperblow_core::engine::TorrentId(0),
            piece: 0,
            blocks: blocks.clone(),
            expected,
        };
        assert_eq!(run_job(None, job([0; 20])).0, JobResult::Mismatch);
        let (r, _) = run_job(None, job(hash_piece(&blocks)));
        assert!(matches!(r, JobResult::Failed(f) if f.message.contains("removed")));
    }
}

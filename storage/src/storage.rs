//! [`Storage`]: one torrent's files under a root directory, with positioned piece writes and block reads.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::{Bytes, BytesMut};
use hyperblow_core::metainfo::{check_component, FileSlice, Layout};
use sha1::{Digest, Sha1};

use crate::cache::HandleCache;
use crate::durable::{Durability, SyncLayer};
use crate::error::{StorageError, StorageErrorKind, StorageOp};

/// The default bound on open file handles per torrent.
pub const DEFAULT_MAX_OPEN_FILES: usize = 64;

/// Tunables of a [`Storage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// At most this many files of the torrent are open at once (least recently used are closed first;
    /// a write with [`StorageConfig::direct_writes`] holds one more, for the file it writes).
    pub max_open_files: usize,
    /// Write pieces of at least [`DIRECT_MIN_PIECE`] bytes with `O_DIRECT` (their 4 KiB-aligned parts),
    /// bypassing the page cache. A buffered write of a large piece asks the kernel for large page-cache
    /// folios, and on a machine whose memory is full of cache it gets them by reclaiming and compacting
    /// (copying other pages) in the writer's own time: measured here, 0.7 to 1.8 system CPU-seconds per
    /// GiB written instead of about 0.1 with direct writes, and the cause of the slow runs of a download.
    /// A file system that refuses `O_DIRECT` switches the storage back to buffered writes by itself.
    pub direct_writes: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            direct_writes: true,
        }
    }
}

/// Pieces at least this long are written with `O_DIRECT` when [`StorageConfig::direct_writes`] is on;
/// shorter ones go through the page cache (one synchronous device write per small piece would cost more
/// than the small folios a buffered write of them needs).
pub const DIRECT_MIN_PIECE: u32 = 256 * 1024;

/// Alignment of a direct write's memory, file offset and length: a multiple of every logical block size
/// in use, so no `statx` query is needed.
const DIRECT_ALIGN: usize = 4096;

/// The most bytes one direct write carries: the size of each worker thread's aligned bounce buffer.
const DIRECT_CHUNK: usize = 1024 * 1024;

/// Largest piece that [`Storage::verify_and_write`] stages in a worker's buffer (each worker keeps
/// one buffer as long as the longest piece staged); longer pieces are hashed, then copied through
/// the bounce buffer.
pub const STAGE_MAX: u32 = 4 * 1024 * 1024;

/// What [`Storage::verify_and_write`] did with a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a piece that was not stored must not be announced as had"]
pub enum Verify {
    /// Its hash is not the expected one; nothing was written.
    Mismatch,
    /// It matched, but the caller's `admit` refused the write (the torrent is gone).
    Refused,
    /// It matched and was handled as [`Storage::write_piece`] says.
    Written(PieceWrite),
}

/// What [`Storage::write_piece`] did with a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a piece that was not stored must not be announced as had"]
pub enum PieceWrite {
    /// The piece's bytes are on disk (every part except BEP 47 padding).
    Stored,
    /// The piece touches no wanted file, so nothing was written (the file selection changed while it was
    /// being downloaded). Do not count it as had.
    NotWanted,
}

/// One torrent's data on disk: a root directory, the torrent's [`Layout`] and which files are wanted.
///
/// All methods take `&self` and block; share it with `Arc` and call it from worker threads. See the
/// crate docs for the rules (lazy sparse files, skipped files, padding).
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    layout: Layout,
    /// Full path of each file (root joined with its components).
    paths: Vec<PathBuf>,
    wanted: RwLock<Vec<bool>>,
    /// Whether the wanted zero-length files have been created since the last selection change.
    empties_done: AtomicBool,
    cache: HandleCache,
    /// Direct (`O_DIRECT`) writes: still on (not refused by the file system), and the write-only handle
    /// of the file written last.
    direct: DirectWrites,
    /// Serializes resume saves (they share a temporary file name).
    pub(crate) resume_lock: Mutex<()>,
    /// Which written pieces a completed sync covers (the only ones a resume record may claim).
    pub(crate) durability: Durability,
    /// Directories whose entries changed (a file created or resized in them, or a directory
    /// created): synced by the next [`Storage::flush`], so a power loss cannot lose a file whose
    /// data was synced.
    new_dirs: Mutex<Vec<PathBuf>>,
}

/// Joins `components` under `root`, refusing anything that is not a plain name.
fn safe_join(root: &Path, components: &[String]) -> Result<PathBuf, StorageError> {
    let mut path = root.to_path_buf();
    if components.is_empty() {
        return Err(StorageError::new(
            StorageOp::Resolve,
            root,
            StorageErrorKind::UnsafePath,
            "file with an empty path",
        ));
    }
    for c in components {
        let plain = check_component(c).is_ok() && {
            let mut parts = Path::new(c).components();
            matches!(parts.next(), Some(Component::Normal(_))) && parts.next().is_none()
        };
        if !plain {
            return Err(StorageError::new(
                StorageOp::Resolve,
                &path.join(c.replace('\0', "\\0")),
                StorageErrorKind::UnsafePath,
                format!("path component {c:?} would leave the download directory"),
            ));
        }
        path.push(c);
    }
    Ok(path)
}

impl Storage {
    /// Describes a torrent stored under `root`, every file wanted. Checks every path but touches no
    /// file: nothing is created until the first write.
    pub fn new(
        root: impl Into<PathBuf>,
        layout: Layout,
        config: StorageConfig,
    ) -> Result<Storage, StorageError> {
        let root = root.into();
        let paths = layout
            .files()
            .iter()
            .map(|f| safe_join(&root, &f.path))
            .collect::<Result<Vec<_>, _>>()?;
        let wanted = vec![true; layout.files().len()];
        Ok(Storage {
            root,
            paths,
            wanted: RwLock::new(wanted),
            empties_done: AtomicBool::new(false),
            cache: HandleCache::new(config.max_open_files),
            direct: DirectWrites {
                enabled: AtomicBool::new(config.direct_writes),
                handle: Mutex::new(None),
            },
            resume_lock: Mutex::new(()),
            durability: Durability::new(layout.piece_count()),
            new_dirs: Mutex::new(Vec::new()),
            layout,
        })
    }

    /// The download directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The torrent's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The full path of file `index`, or `None` if out of range.
    pub fn file_path(&self, index: usize) -> Option<&Path> {
        self.paths.get(index).map(PathBuf::as_path)
    }

    /// Which files are wanted, one flag per file.
    pub fn wanted(&self) -> Vec<bool> {
        self.wanted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the file selection (one flag per file; missing entries mean "not wanted"). Takes effect
    /// for the next writes; files already on disk are left alone.
    pub fn set_wanted(&self, wanted: &[bool]) {
        let mut w = self.wanted.write().unwrap_or_else(PoisonError::into_inner);
        for (i, slot) in w.iter_mut().enumerate() {
            *slot = wanted.get(i).copied().unwrap_or(false);
        }
        self.empties_done.store(false, Ordering::Release);
    }

    /// Which pieces the wanted files need (see [`Layout::pieces_for_files`]).
    pub fn wanted_pieces(&self) -> Vec<bool> {
        let w = self.wanted.read().unwrap_or_else(PoisonError::into_inner);
        self.layout.pieces_for_files(&w)
    }

    /// The most file handles this storage keeps open.
    pub fn max_open_files(&self) -> usize {
        self.cache.capacity()
    }

    /// How many file handles are open right now (never more than [`Storage::max_open_files`]).
    pub fn open_files(&self) -> usize {
        self.cache.open_count()
    }

    /// The most file handles that were open at once so far.
    pub fn peak_open_files(&self) -> usize {
        self.cache.peak()
    }

    fn path_of(&self, index: usize) -> &Path {
        self.paths.get(index).map_or(self.root.as_path(), |p| p)
    }

    /// Creates the directories above file `index` and checks that they resolve inside the root.
    fn make_parent(&self, index: usize) -> Result<(), StorageError> {
        let path = self.path_of(index);
        let parent = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent)
            .map_err(|e| StorageError::io(StorageOp::CreateDir, parent, e))?;
        let real_root = self
            .root
            .canonicalize()
            .map_err(|e| StorageError::io(StorageOp::Resolve, &self.root, e))?;
        let real_parent = parent
            .canonicalize()
            .map_err(|e| StorageError::io(StorageOp::Resolve, parent, e))?;
        if !real_parent.starts_with(&real_root) {
            return Err(StorageError::new(
                StorageOp::Resolve,
                path,
                StorageErrorKind::UnsafePath,
                format!(
                    "directory resolves to {} outside the download directory {}",
                    real_parent.display(),
                    real_root.display()
                ),
            ));
        }
        if let Ok(meta) = fs::symlink_metadata(path) {
            if meta.file_type().is_symlink() {
                return Err(StorageError::new(
                    StorageOp::Resolve,
                    path,
                    StorageErrorKind::UnsafePath,
                    "refusing to write through a symbolic link",
                ));
            }
        }
        Ok(())
    }

    /// Opens file `index` for writing, creating it (and its directories) and giving it its final length
    /// sparsely if needed.
    fn open_for_write(&self, index: usize) -> Result<File, StorageError> {
        let path = self.path_of(index);
        let length = self.layout.files().get(index).map_or(0, |f| f.length);
        self.make_parent(index)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StorageError::io(StorageOp::Open, path, e))?;
        let current = file
            .metadata()
            .map_err(|e| StorageError::io(StorageOp::Stat, path, e))?
            .len();
        if current != length {
            file.set_len(length)
                .map_err(|e| StorageError::io(StorageOp::SetLen, path, e))?;
            // Created or resized: its directory entry, and those of the directories above it up
            // to the root (`make_parent` may have created them), must reach the disk too.
            let mut dirs = self.new_dirs.lock().unwrap_or_else(PoisonError::into_inner);
            let mut dir = path.parent();
            while let Some(d) = dir {
                if !d.starts_with(&self.root) {
                    break;
                }
                if !dirs.iter().any(|x| x == d) {
                    dirs.push(d.to_path_buf());
                }
                if d == self.root {
                    break;
                }
                dir = d.parent();
            }
        }
        Ok(file)
    }

    /// Opens file `index` read-only, never creating it.
    fn open_for_read(&self, index: usize) -> Result<File, StorageError> {
        let path = self.path_of(index);
        File::open(path).map_err(|e| StorageError::io(StorageOp::Open, path, e))
    }

    fn invalid(&self, message: String) -> StorageError {
        StorageError::new(
            StorageOp::Resolve,
            &self.root,
            StorageErrorKind::InvalidRequest,
            message,
        )
    }

    /// Creates the wanted zero-length files (and their directories), so that a finished download is
    /// byte-exact. Done by the first write after construction or a selection change; call it yourself
    /// when there is nothing to download (everything already verified).
    pub fn create_empty_files(&self) -> Result<(), StorageError> {
        let wanted = self.wanted();
        for (i, f) in self.layout.files().iter().enumerate() {
            if f.length == 0 && !f.padding && wanted.get(i).copied().unwrap_or(false) {
                drop(self.cache.acquire(i, true, |_| self.open_for_write(i))?);
            }
        }
        self.empties_done.store(true, Ordering::Release);
        Ok(())
    }

    /// Writes a verified piece given as blocks whose concatenation is the whole piece, straight from the
    /// blocks into the files it spans (no copy).
    ///
    /// Parts in BEP 47 padding files are not written. Parts in skipped files are written (creating the
    /// file sparsely) when the piece also covers a wanted file; a piece that covers no wanted file is not
    /// written at all and [`PieceWrite::NotWanted`] is returned. A failed write leaves other pieces as
    /// they were and the storage usable; the piece itself may be partly written and must be written again.
    pub fn write_piece(&self, index: u32, blocks: &[Bytes]) -> Result<PieceWrite, StorageError> {
        self.write_blocks(index, blocks)
    }

    /// Writes the verified pieces `first`, `first + 1`, ... (each given as its blocks) as
    /// [`Storage::write_piece`] would one by one, but adjacent bytes in one go: one positioned write
    /// per file they span (with `O_DIRECT` once the run reaches [`DIRECT_MIN_PIECE`]) instead of one
    /// per piece. For small pieces (16 KiB: 65,536 per GiB) the system calls and page-cache work per
    /// write are what a download spends most of its system time on. A piece that covers no wanted
    /// file is not written (the others are, one by one). Returns once all are written; on an error
    /// some of them may be written, and all must be written again.
    pub fn write_pieces<B: AsRef<[u8]>>(
        &self,
        first: u32,
        pieces: &[&[B]],
    ) -> Result<(), StorageError> {
        let count = u32::try_from(pieces.len())
            .map_err(|_| self.invalid("too many pieces in one write".into()))?;
        if count <= 1 || !self.all_wanted(first, count) {
            for (i, blocks) in (first..).zip(pieces) {
                let _ = self.write_blocks(i, blocks)?;
            }
            return Ok(());
        }
        let flat: Vec<&[u8]> = pieces
            .iter()
            .flat_map(|blocks| blocks.iter().map(AsRef::as_ref))
            .collect();
        let _ = self.write_span(first, count, &flat)?;
        Ok(())
    }

    /// Whether each of the `count` pieces from `first` covers a wanted file.
    fn all_wanted(&self, first: u32, count: u32) -> bool {
        let wanted = self.wanted.read().unwrap_or_else(PoisonError::into_inner);
        (first..first.saturating_add(count)).all(|i| {
            self.layout
                .piece_ranges(i)
                .is_some_and(|mut r| r.any(|s| wanted.get(s.file_index).copied().unwrap_or(false)))
        })
    }

    /// [`Storage::write_piece`] from any kind of buffers (a staged piece is one plain slice).
    fn write_blocks<B: AsRef<[u8]>>(
        &self,
        index: u32,
        blocks: &[B],
    ) -> Result<PieceWrite, StorageError> {
        self.write_span(index, 1, blocks)
    }

    /// Writes the `count` pieces from `first`, given as the blocks of all of them in order. With
    /// more than one piece the caller has checked that each covers a wanted file.
    fn write_span<B: AsRef<[u8]>>(
        &self,
        first: u32,
        count: u32,
        blocks: &[B],
    ) -> Result<PieceWrite, StorageError> {
        let index = first;
        let last = first.saturating_add(count.max(1) - 1);
        let span_len: u64 = (first..=last)
            .map(|i| self.layout.piece_len(i).map(u64::from))
            .sum::<Option<u64>>()
            .ok_or_else(|| self.invalid(format!("piece {last} is out of range")))?;
        let given: u64 = blocks.iter().map(|b| b.as_ref().len() as u64).sum();
        if given != span_len {
            return Err(self.invalid(format!(
                "pieces {first}..={last} are {span_len} bytes but {given} bytes were given"
            )));
        }
        let slices: Vec<FileSlice> = self
            .layout
            .byte_ranges(self.layout.piece_offset(first), span_len)
            .ok_or_else(|| self.invalid(format!("piece {index} is out of range")))?
            .collect();
        let files = self.layout.files();
        if count <= 1 {
            let wanted = self.wanted.read().unwrap_or_else(PoisonError::into_inner);
            let any_wanted = slices
                .iter()
                .any(|s| wanted.get(s.file_index).copied().unwrap_or(false));
            if !any_wanted {
                return Ok(PieceWrite::NotWanted);
            }
        }
        if !self.empties_done.load(Ordering::Acquire) {
            self.create_empty_files()?;
        }
        let mut cursor = BlockCursor::new(blocks);
        let direct = span_len >= u64::from(DIRECT_MIN_PIECE);
        for s in slices {
            let padding = files.get(s.file_index).is_some_and(|f| f.padding);
            if padding {
                cursor.skip(s.length);
                continue;
            }
            let path = self.path_of(s.file_index);
            let lease = self
                .cache
                .acquire(s.file_index, true, |_| self.open_for_write(s.file_index))?;
            let mut offset = s.offset;
            let mut left = s.length;
            if direct {
                let done = self.write_direct(s.file_index, &mut cursor, offset, left)?;
                offset += done;
                left -= done;
            }
            while left > 0 {
                // Up to MAX_IOV blocks per system call: one large write lets the kernel use large
                // page-cache folios, which costs about half the CPU of the same bytes in 16 KiB writes.
                let mut iov: Vec<&[u8]> = Vec::new();
                let mut run = 0u64;
                while iov.len() < MAX_IOV && run < left {
                    let chunk = cursor.take(left - run);
                    if chunk.is_empty() {
                        break;
                    }
                    run += chunk.len() as u64;
                    iov.push(chunk);
                }
                if iov.is_empty() {
                    // Cannot happen: the block lengths add up to the piece length, checked above.
                    return Err(self.invalid(format!("piece {index}: blocks ran out")));
                }
                write_all_vectored_at(lease.file(), &mut iov, offset)
                    .map_err(|e| StorageError::io(StorageOp::Write, path, e))?;
                offset += run;
                left -= run;
            }
            lease.mark_written();
        }
        for i in first..=last {
            self.durability
                .wrote(i, self.layout.piece_len(i).map_or(0, u64::from));
        }
        Ok(PieceWrite::Stored)
    }

    /// Writes the longest 4 KiB-aligned prefix of `len` bytes at `offset` of file `index` from `cursor`
    /// with `O_DIRECT`, through this thread's aligned bounce buffer; returns how many bytes it wrote
    /// (0 when direct writes are off, the offset is unaligned, or the file system refused them, which
    /// turns them off for this storage). The caller writes the rest through the page cache.
    fn write_direct(
        &self,
        index: usize,
        cursor: &mut BlockCursor<'_, impl AsRef<[u8]>>,
        offset: u64,
        len: u64,
    ) -> Result<u64, StorageError> {
        let align = DIRECT_ALIGN as u64;
        let aligned = len - len % align;
        if !self.direct.enabled.load(Ordering::Relaxed)
            || !offset.is_multiple_of(align)
            || aligned == 0
        {
            return Ok(0);
        }
        let path = self.path_of(index);
        let Some(file) = self.direct_handle(index) else {
            return Ok(0);
        };
        let mut done = 0u64;
        // A run that is already aligned in memory (a piece staged by [`Storage::verify_and_write`])
        // is written as it is, without the bounce buffer.
        let run = cursor.take(aligned);
        if run.len() as u64 == aligned && (run.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) {
            match write_all_at_direct(&file, run, offset) {
                Ok(()) => return Ok(aligned),
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    self.direct_refused();
                    cursor.unread(run.len());
                    return Ok(0);
                }
                Err(e) => return Err(StorageError::io(StorageOp::Write, path, e)),
            }
        }
        cursor.unread(run.len());
        DIRECT_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            while done < aligned {
                let n = usize::try_from(aligned - done)
                    .unwrap_or(DIRECT_CHUNK)
                    .min(DIRECT_CHUNK);
                let chunk = aligned_slice(&mut buf, n);
                let mut filled = 0;
                while filled < n {
                    let run = cursor.take((n - filled) as u64);
                    if run.is_empty() {
                        return Err(self.invalid("blocks ran out in a direct write".into()));
                    }
                    if let Some(dest) = chunk.get_mut(filled..filled + run.len()) {
                        dest.copy_from_slice(run);
                    }
                    filled += run.len();
                }
                match write_all_at_direct(&file, chunk, offset + done) {
                    Ok(()) => done += n as u64,
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                        // Refused (alignment or file system): these bytes and everything after go
                        // through the page cache. The bytes taken from the cursor are put back.
                        self.direct_refused();
                        cursor.unread(n);
                        return Ok(done);
                    }
                    Err(e) => return Err(StorageError::io(StorageOp::Write, path, e)),
                }
            }
            Ok(done)
        })
    }

    /// The file system refused a direct write: every later write goes through the page cache.
    fn direct_refused(&self) {
        self.direct.enabled.store(false, Ordering::Relaxed);
        *self
            .direct
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Whether [`Storage::verify_and_write`] stages piece `index` (hashes and copies it in one pass):
    /// pieces written directly (see [`StorageConfig::direct_writes`]) of at most [`STAGE_MAX`] bytes.
    pub fn stages(&self, index: u32) -> bool {
        self.direct.enabled.load(Ordering::Relaxed)
            && self
                .layout
                .piece_len(index)
                .is_some_and(|len| (DIRECT_MIN_PIECE..=STAGE_MAX).contains(&len))
    }

    /// Hashes a received piece and, when it matches `expected` and `admit` lets it (returning a guard,
    /// held during the write; `None` refuses: the torrent is gone), writes it as
    /// [`Storage::write_piece`] does. A piece that [`Storage::stages`] is copied block by block into
    /// this thread's aligned staging buffer right after each block is hashed, while the block is still
    /// in the CPU cache, and written from there with `O_DIRECT`: the piece's bytes are read from
    /// memory once, instead of once to hash and again (by then evicted) to copy into the bounce
    /// buffer. Nothing is written before the hash matched.
    pub fn verify_and_write<B: AsRef<[u8]>, G>(
        &self,
        index: u32,
        blocks: &[B],
        expected: &[u8; 20],
        admit: impl FnOnce() -> Option<G>,
    ) -> Result<Verify, StorageError> {
        let len = self
            .layout
            .piece_len(index)
            .ok_or_else(|| self.invalid(format!("piece {index} is out of range")))?;
        let given: usize = blocks.iter().map(|b| b.as_ref().len()).sum();
        if !self.stages(index) || given != len as usize {
            if crate::check::hash_piece(blocks) != *expected {
                return Ok(Verify::Mismatch);
            }
            let Some(_guard) = admit() else {
                return Ok(Verify::Refused);
            };
            return self.write_blocks(index, blocks).map(Verify::Written);
        }
        STAGE_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            let staged = staging_slice(&mut buf, len as usize);
            let mut hasher = Sha1::new();
            let mut at = 0;
            for b in blocks {
                let b = b.as_ref();
                hasher.update(b);
                if let Some(dest) = staged.get_mut(at..at + b.len()) {
                    dest.copy_from_slice(b);
                }
                at += b.len();
            }
            if <[u8; 20]>::from(hasher.finalize()) != *expected {
                return Ok(Verify::Mismatch);
            }
            let Some(_guard) = admit() else {
                return Ok(Verify::Refused);
            };
            self.write_blocks(index, &[&*staged]).map(Verify::Written)
        })
    }

    /// The `O_DIRECT` write handle of file `index` (kept for the next piece), or `None` when the file
    /// system refuses the flag (direct writes are then off for this storage). The file exists: the
    /// caller holds a write lease of it.
    fn direct_handle(&self, index: usize) -> Option<Arc<File>> {
        let mut slot = self
            .direct
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((i, f)) = slot.as_ref() {
            if *i == index {
                return Some(Arc::clone(f));
            }
        }
        let flags = rustix::fs::OFlags::DIRECT.bits();
        match OpenOptions::new()
            .write(true)
            .custom_flags(flags as i32)
            .open(self.path_of(index))
        {
            Ok(f) => {
                let f = Arc::new(f);
                *slot = Some((index, Arc::clone(&f)));
                Some(f)
            }
            Err(_) => {
                self.direct.enabled.store(false, Ordering::Relaxed);
                *slot = None;
                None
            }
        }
    }

    /// Reads `length` bytes at `begin` inside piece `index` (a peer's `request`), across file boundaries.
    /// Padding reads as zeros. A file that is missing or too short gives
    /// [`StorageErrorKind::NotFound`]; nothing is ever created by a read.
    pub fn read_block(&self, index: u32, begin: u32, length: u32) -> Result<Bytes, StorageError> {
        let slices = self
            .layout
            .block_ranges(index, begin, length)
            .ok_or_else(|| {
                self.invalid(format!(
                    "block at {begin} of length {length} is not inside piece {index}"
                ))
            })?;
        let mut buf = BytesMut::zeroed(length as usize);
        self.read_slices(slices, &mut buf)?;
        Ok(buf.freeze())
    }

    /// Like [`Storage::read_block`], into the caller's buffer (its length is the block length), so a
    /// caller can reuse its buffers instead of allocating one per read.
    pub fn read_block_into(
        &self,
        index: u32,
        begin: u32,
        buf: &mut [u8],
    ) -> Result<(), StorageError> {
        let length = u32::try_from(buf.len())
            .map_err(|_| self.invalid(format!("a read of {} bytes is too long", buf.len())))?;
        let slices = self
            .layout
            .block_ranges(index, begin, length)
            .ok_or_else(|| {
                self.invalid(format!(
                    "block at {begin} of length {length} is not inside piece {index}"
                ))
            })?;
        self.read_slices(slices, buf)
    }

    /// Reads a whole piece into one buffer (for hashing or serving).
    pub fn read_piece(&self, index: u32) -> Result<Bytes, StorageError> {
        let len = self
            .layout
            .piece_len(index)
            .ok_or_else(|| self.invalid(format!("piece {index} is out of range")))?;
        self.read_block(index, 0, len)
    }

    /// Fills `buf` (exactly as long as the slices) from the files.
    pub(crate) fn read_slices(
        &self,
        slices: impl Iterator<Item = FileSlice>,
        buf: &mut [u8],
    ) -> Result<(), StorageError> {
        let files = self.layout.files();
        let mut at = 0usize;
        for s in slices {
            let len = usize::try_from(s.length).unwrap_or(usize::MAX);
            let end = at.saturating_add(len).min(buf.len());
            let Some(dest) = buf.get_mut(at..end) else {
                return Err(self.invalid("read buffer shorter than the range".into()));
            };
            at = end;
            if files.get(s.file_index).is_some_and(|f| f.padding) {
                dest.fill(0);
                continue;
            }
            let path = self.path_of(s.file_index);
            let lease = self
                .cache
                .acquire(s.file_index, false, |_| self.open_for_read(s.file_index))?;
            lease
                .file()
                .read_exact_at(dest, s.offset)
                .map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        StorageError::new(
                            StorageOp::Read,
                            path,
                            StorageErrorKind::NotFound,
                            format!(
                                "file is shorter than the {} bytes at offset {} the torrent places in it",
                                s.length, s.offset
                            ),
                        )
                    } else {
                        StorageError::io(StorageOp::Read, path, e)
                    }
                })?;
        }
        Ok(())
    }

    /// Makes every piece written so far durable: `fdatasync`s every file written since the last
    /// flush (including ones whose handle was closed since) and the directories whose entries
    /// changed, then counts the pieces whose writes returned before it began as durable (see
    /// [`Storage::durable_pieces`]). Flushes of one storage run one at a time. Files that failed to
    /// sync stay marked; after a failed sync no piece that was not durable yet, and none written
    /// later, is counted durable in this session (see `Durability::flush` for why), so records
    /// claim only what was durable before it and a restart hashes the rest.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.durability.flush(&FileSync(self))
    }

    /// The pieces a completed [`Storage::flush`] covers, or that a trusted record vouched for (see
    /// [`Storage::trust_durable`]): the only ones a resume record claims.
    pub fn durable_pieces(&self) -> hyperblow_core::bitfield::Bitfield {
        self.durability.durable()
    }

    /// Bytes of pieces written since the last flush began: what the next flush has to make durable.
    pub fn unsynced_bytes(&self) -> u64 {
        self.durability.pending_bytes()
    }

    /// Counts `pieces` as durable without a sync: they come from a resume record, which was saved
    /// after a flush.
    pub fn trust_durable(&self, pieces: &hyperblow_core::bitfield::Bitfield) {
        self.durability.trust(pieces);
    }

    /// Records piece `index` as found on disk but not known durable (a hash check after a crash
    /// found it, possibly in the page cache only): the next flush syncs its files before a record
    /// claims it.
    pub fn found_unsynced(&self, index: u32) {
        if let Some(ranges) = self.layout.piece_ranges(index) {
            for s in ranges {
                self.cache.mark_dirty(s.file_index);
            }
        }
        self.durability.wrote(index, 0);
    }

    /// `fdatasync`s every dirty file and new directory entry (see [`Storage::flush`]).
    fn sync_dirty_files(&self) -> Result<(), StorageError> {
        let (open, closed) = self.cache.take_dirty();
        let mut first_error = None;
        for (i, handle) in &open {
            if let Err(e) = handle.sync_data().or_else(cannot_sync) {
                self.cache.mark_dirty(*i);
                first_error.get_or_insert(StorageError::io(StorageOp::Sync, self.path_of(*i), e));
            }
        }
        self.cache.return_synced(open);
        for i in closed {
            let path = self.path_of(i);
            let result = File::open(path).and_then(|f| f.sync_data().or_else(cannot_sync));
            match result {
                Ok(()) => {}
                // The user deleted it: nothing left to sync.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.cache.mark_dirty(i);
                    first_error.get_or_insert(StorageError::io(StorageOp::Sync, path, e));
                }
            }
        }
        let dirs =
            std::mem::take(&mut *self.new_dirs.lock().unwrap_or_else(PoisonError::into_inner));
        for (n, d) in dirs.iter().enumerate() {
            if let Err(e) = File::open(d).and_then(|f| f.sync_all()) {
                // Keep this one and the rest for the next flush.
                let mut keep = self.new_dirs.lock().unwrap_or_else(PoisonError::into_inner);
                keep.extend(dirs.get(n..).unwrap_or_default().iter().cloned());
                first_error.get_or_insert(StorageError::io(StorageOp::Sync, d, e));
                break;
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Closes every file handle not in use right now (dirty files stay remembered for [`Storage::flush`]).
    pub fn close_files(&self) {
        self.cache.close_idle();
        *self
            .direct
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// A sync that failed because the file system cannot sync at all counts as done: `EINVAL` (a file
/// system without `fsync`, such as an ISO 9660 image or squashfs, seeded from) and `EROFS` (mounted
/// read-only). Neither holds data of ours waiting in the page cache: they accept no writes.
fn cannot_sync(e: io::Error) -> io::Result<()> {
    match e.kind() {
        io::ErrorKind::InvalidInput | io::ErrorKind::ReadOnlyFilesystem => Ok(()),
        _ => Err(e),
    }
}

/// [`Storage`]'s files as the [`SyncLayer`] of its [`Durability`].
struct FileSync<'a>(&'a Storage);

impl SyncLayer for FileSync<'_> {
    type Error = StorageError;

    fn sync_dirty(&self) -> Result<(), StorageError> {
        self.0.sync_dirty_files()
    }
}

/// The state of direct writes of one [`Storage`].
#[derive(Debug)]
struct DirectWrites {
    enabled: AtomicBool,
    handle: Mutex<Option<(usize, Arc<File>)>>,
}

thread_local! {
    /// Each writing thread's bounce buffer for direct writes (one [`DIRECT_CHUNK`] plus alignment slack,
    /// allocated on first use).
    static DIRECT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

thread_local! {
    /// Each verifying thread's staging buffer (see [`Storage::verify_and_write`]): the longest staged
    /// piece so far plus alignment slack, allocated on first use.
    static STAGE_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The first `n` bytes of `buf` that start on a [`DIRECT_ALIGN`] boundary, growing `buf` as needed.
fn staging_slice(buf: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if buf.len() < n + DIRECT_ALIGN {
        buf.resize(n + DIRECT_ALIGN, 0);
    }
    let skip = (DIRECT_ALIGN - buf.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
    buf.get_mut(skip..skip + n).unwrap_or_default()
}

/// The first `n` bytes (at most [`DIRECT_CHUNK`]) of `buf` that start on a [`DIRECT_ALIGN`] boundary,
/// growing `buf` on first use.
fn aligned_slice(buf: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if buf.len() < DIRECT_CHUNK + DIRECT_ALIGN {
        buf.resize(DIRECT_CHUNK + DIRECT_ALIGN, 0);
    }
    let skip = (DIRECT_ALIGN - buf.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
    let n = n.min(DIRECT_CHUNK);
    buf.get_mut(skip..skip + n).unwrap_or_default()
}

/// Writes all of `buf` at `offset` with positioned writes, resuming after short writes (which a direct
/// write only makes at aligned boundaries, if ever).
fn write_all_at_direct(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write_at(buf, offset) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                buf = buf.get(n..).unwrap_or_default();
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Walks a list of blocks as one byte stream.
/// Most buffers handed to one `pwritev` (well under every system's `IOV_MAX`; 64 blocks of 16 KiB make a
/// 1 MiB write).
const MAX_IOV: usize = 64;

/// Writes every buffer of `bufs`, in order, at `offset` with positioned vectored writes, resuming after
/// short writes. Empties `bufs` as it goes.
fn write_all_vectored_at(file: &File, bufs: &mut Vec<&[u8]>, mut offset: u64) -> io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let slices: Vec<io::IoSlice<'_>> = bufs
            .get(first..)
            .unwrap_or_default()
            .iter()
            .map(|b| io::IoSlice::new(b))
            .collect();
        let mut n = match rustix::io::pwritev(file, &slices, offset) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        offset += n as u64;
        while n > 0 {
            let Some(b) = bufs.get_mut(first) else {
                break;
            };
            if n >= b.len() {
                n -= b.len();
                first += 1;
            } else {
                *b = b.get(n..).unwrap_or_default();
                n = 0;
            }
        }
        while bufs.get(first).is_some_and(|b| b.is_empty()) {
            first += 1;
        }
    }
    bufs.clear();
    Ok(())
}

struct BlockCursor<'a, B> {
    blocks: &'a [B],
    block: usize,
    offset: usize,
}

impl<'a, B: AsRef<[u8]>> BlockCursor<'a, B> {
    fn new(blocks: &'a [B]) -> Self {
        BlockCursor {
            blocks,
            block: 0,
            offset: 0,
        }
    }

    /// The next run of at most `max` bytes inside one block (empty at the end).
    fn take(&mut self, max: u64) -> &'a [u8] {
        while let Some(b) = self.blocks.get(self.block) {
            let rest = b.as_ref().get(self.offset..).unwrap_or_default();
            if rest.is_empty() {
                self.block += 1;
                self.offset = 0;
                continue;
            }
            let n = rest.len().min(usize::try_from(max).unwrap_or(usize::MAX));
            self.offset += n;
            return rest.get(..n).unwrap_or_default();
        }
        &[]
    }

    /// Steps back `n` bytes (that the last takes returned), so they are taken again.
    fn unread(&mut self, mut n: usize) {
        while n > 0 {
            if self.offset == 0 {
                if self.block == 0 {
                    return;
                }
                self.block -= 1;
                self.offset = self.blocks.get(self.block).map_or(0, |b| b.as_ref().len());
                continue;
            }
            let back = n.min(self.offset);
            self.offset -= back;
            n -= back;
        }
    }

    /// Skips `n` bytes.
    fn skip(&mut self, mut n: u64) {
        while n > 0 {
            let len = self.take(n).len() as u64;
            if len == 0 {
                return;
            }
            n -= len;
        }
    }
}

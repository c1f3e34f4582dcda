//! `hyperblow create`: make a .torrent from a file or a directory.
//!
//! The core's builder is sans-IO; this module walks the file system, hands the builder the file list,
//! reads the content in the builder's order and hashes its pieces on every core (batches of whole
//! pieces: while the worker threads hash one batch, this thread reads the next), handing the
//! hashes to the builder in piece order, so the bytes are those of a one-core run.

use std::fs::File;
use std::io::Read;

use sha1::{Digest, Sha1};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use hyperblow_core::metainfo::{BuiltTorrent, PieceHasher, TorrentBuilder};

use crate::error::CliError;
use crate::units;

/// Arguments of `hyperblow create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The file or directory to share.
    pub path: PathBuf,
    /// Where to write the .torrent.
    #[arg(short, long)]
    pub output: PathBuf,
    /// A tracker URL; repeat for more. Each `--tracker` is its own tier; separate URLs with commas to put
    /// several in one tier.
    #[arg(short, long = "tracker", value_name = "URL")]
    pub trackers: Vec<String>,
    /// Piece length in bytes (a power of two from 16 KiB is usual); chosen automatically if absent.
    #[arg(long, value_name = "BYTES")]
    pub piece_length: Option<u32>,
    /// A web seed URL (BEP 19 `url-list`); repeat for more. For a directory it names the folder that
    /// holds the torrent's top directory; for a file, the file itself (or, ending in `/`, its folder).
    #[arg(long = "web-seed", value_name = "URL")]
    pub web_seeds: Vec<String>,
    /// Mark the torrent private (BEP 27): peers only from its trackers.
    #[arg(long)]
    pub private: bool,
    /// A free-text comment.
    #[arg(long)]
    pub comment: Option<String>,
    /// Leave out the creation date, so the same input always makes the same bytes.
    #[arg(long)]
    pub no_date: bool,
}

/// Runs `hyperblow create`.
pub fn run(args: &CreateArgs) -> Result<(), CliError> {
    let (built, total) = build(args)?;
    std::fs::write(&args.output, &built.bytes).map_err(|e| CliError::disk(&args.output, e))?;
    eprintln!(
        "created {} ({}, info-hash {})",
        crate::safe::escape(&args.output.display().to_string()),
        units::bytes(total),
        built.info_hash
    );
    Ok(())
}

/// Hashes `args.path` into a torrent (not written anywhere); returns it and the content's size.
pub fn build(args: &CreateArgs) -> Result<(BuiltTorrent, u64), CliError> {
    let root = &args.path;
    let meta = std::fs::metadata(root).map_err(|e| CliError::input(root, e))?;
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CliError::input(root, "has no usable file name"))?
        .to_owned();

    let mut builder = if meta.is_dir() {
        let mut files = Vec::new();
        walk(root, &mut Vec::new(), &mut files)?;
        if files.is_empty() {
            return Err(CliError::input(root, "directory holds no files"));
        }
        TorrentBuilder::multi_file(name, files)
    } else {
        TorrentBuilder::single_file(name, meta.len())
    };
    if let Some(len) = args.piece_length {
        builder = builder.piece_length(len);
    }
    let tiers: Vec<Vec<String>> = args
        .trackers
        .iter()
        .map(|t| t.split(',').map(|u| u.trim().to_owned()).collect())
        .collect();
    builder = builder
        .trackers(tiers)
        .url_list(args.web_seeds.clone())
        .private(args.private);
    if let Some(comment) = &args.comment {
        builder = builder.comment(comment);
    }
    if !args.no_date {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        builder = builder.creation_date(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
    }

    let mut hasher = builder.start().map_err(|e| CliError::input(root, e))?;
    let paths: Vec<PathBuf> = hasher
        .layout()
        .files()
        .iter()
        .map(|f| {
            if meta.is_dir() {
                // The first component is the torrent name, i.e. `root` itself.
                f.path.iter().skip(1).fold(root.clone(), |p, c| p.join(c))
            } else {
                root.clone()
            }
        })
        .collect();
    let total = hasher.layout().total_length();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    hash_parallel(&mut hasher, &paths, threads, BATCH_BYTES)?;
    let built = hasher.finish().map_err(|e| {
        CliError::input(root, format!("{e} (did a file change while it was read?)"))
    })?;
    Ok((built, total))
}

/// The content of the torrent's files back to back, read in order.
struct Content<'a> {
    paths: &'a [PathBuf],
    next: usize,
    file: Option<(File, &'a Path)>,
}

impl Content<'_> {
    /// Fills `buf` as far as the content goes; returns how many bytes (less than `buf.len()` only
    /// at the end).
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, CliError> {
        let mut got = 0;
        while got < buf.len() {
            let (file, path) = match &mut self.file {
                Some(f) => f,
                None => {
                    let Some(path) = self.paths.get(self.next) else {
                        break;
                    };
                    self.next += 1;
                    let file = File::open(path).map_err(|e| CliError::input(path, e))?;
                    self.file.insert((file, path))
                }
            };
            let n = file
                .read(&mut buf[got..])
                .map_err(|e| CliError::input(path, e))?;
            if n == 0 {
                self.file = None;
            }
            got += n;
        }
        Ok(got)
    }
}

/// Bytes read per batch at most (whole pieces; at least one piece).
const BATCH_BYTES: usize = 32 << 20;

/// Reads the files at `paths` (the layout's order) and feeds `hasher` every piece's SHA-1, hashed
/// on `threads` threads, about `batch_bytes` at a time.
fn hash_parallel(
    hasher: &mut PieceHasher,
    paths: &[PathBuf],
    threads: usize,
    batch_bytes: usize,
) -> Result<(), CliError> {
    let piece = hasher.layout().piece_length() as usize;
    let total = hasher.layout().total_length();
    let batch = (batch_bytes / piece).max(1) * piece;
    let mut content = Content {
        paths,
        next: 0,
        file: None,
    };
    let mut read = 0u64;
    let mut current = vec![0u8; batch];
    let mut next = vec![0u8; batch];
    let mut len = content.fill(&mut current)?;
    let grown = |root: &Path| {
        CliError::input(
            root,
            "a file grew while it was read (more content than when the torrent was laid out)",
        )
    };
    let root = paths.first().map_or(Path::new("."), PathBuf::as_path);
    while len > 0 {
        read += len as u64;
        if read > total {
            return Err(grown(root));
        }
        let data = &current[..len];
        let (hashes, next_len) = std::thread::scope(|scope| {
            let per = data.len().div_ceil(piece).div_ceil(threads).max(1) * piece;
            let workers: Vec<_> = data
                .chunks(per)
                .map(|part| {
                    scope.spawn(move || {
                        part.chunks(piece)
                            .map(|p| (p.len() as u64, <[u8; 20]>::from(Sha1::digest(p))))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            // Meanwhile: the next batch.
            let next_len = if len == batch {
                content.fill(&mut next)
            } else {
                Ok(0)
            };
            let hashes: Vec<(u64, [u8; 20])> = workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect();
            (hashes, next_len)
        });
        for (n, h) in hashes {
            hasher
                .push_piece_hash(n, h)
                .map_err(|e| CliError::input(root, e))?;
        }
        std::mem::swap(&mut current, &mut next);
        len = next_len?;
    }
    Ok(())
}

/// Collects regular files below `dir` as (path components relative to the torrent root, length).
/// Symbolic links to files are followed; links to directories are not, so a loop cannot trap the walk.
fn walk(
    dir: &Path,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, u64)>,
) -> Result<(), CliError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CliError::input(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| CliError::input(dir, e))?;
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| CliError::input(&path, "file name is not valid UTF-8"))?;
        let link_type = entry.file_type().map_err(|e| CliError::input(&path, e))?;
        let meta = std::fs::metadata(&path).map_err(|e| CliError::input(&path, e))?;
        prefix.push(name);
        if meta.is_dir() && !link_type.is_symlink() {
            walk(&path, prefix, out)?;
        } else if meta.is_file() {
            out.push((prefix.clone(), meta.len()));
        }
        prefix.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parallel hashing gives the bytes of a one-thread streamed hash, for any thread count, with
    /// pieces straddling files, an empty file and a short last piece, and batches from one piece
    /// to more than the whole content.
    #[test]
    fn every_thread_count_makes_the_same_torrent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let files: [(&str, usize); 4] = [
            ("a.bin", 1_000_003),
            ("sub/empty", 0),
            ("sub/b.bin", 3_333_333),
            ("z.txt", 17),
        ];
        let mut x = 12345u32;
        for (name, len) in files {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            std::fs::write(root.join(name), data).unwrap();
        }
        let args = CreateArgs {
            path: root.clone(),
            output: dir.path().join("out.torrent"),
            trackers: vec!["http://127.0.0.1:1/announce".into()],
            web_seeds: Vec::new(),
            piece_length: Some(16 * 1024),
            private: false,
            comment: None,
            no_date: true,
        };
        let (built, total) = build(&args).unwrap();
        assert_eq!(total, 4_333_353);
        // The reference: the builder's own streaming hash on this thread.
        let start = || {
            let mut files = Vec::new();
            walk(&root, &mut Vec::new(), &mut files).unwrap();
            TorrentBuilder::multi_file("t", files)
                .piece_length(16 * 1024)
                .trackers(vec![vec!["http://127.0.0.1:1/announce".into()]])
                .start()
                .unwrap()
        };
        let mut reference = start();
        let paths: Vec<PathBuf> = reference
            .layout()
            .files()
            .iter()
            .map(|f| f.path.iter().skip(1).fold(root.clone(), |p, c| p.join(c)))
            .collect();
        for p in &paths {
            reference.update(&std::fs::read(p).unwrap()).unwrap();
        }
        let reference = reference.finish().unwrap();
        assert_eq!(built, reference);
        for threads in [1, 2, 3, 8] {
            for batch in [BATCH_BYTES, 1 << 20, 3 * 16 * 1024, 1] {
                let mut h = start();
                hash_parallel(&mut h, &paths, threads, batch).unwrap();
                assert_eq!(h.finish().unwrap(), reference, "{threads} threads, {batch}");
            }
        }
    }
}

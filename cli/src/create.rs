//! `hyperblow create`: make a .torrent from a file or a directory.
//!
//! The core's builder is sans-IO; this module walks the file system, hands the builder the file list,
//! and streams the content to it in the builder's order.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use hyperblow_core::metainfo::{BuiltTorrent, TorrentBuilder};

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
        args.output.display(),
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
    let mut buf = vec![0u8; 1 << 20];
    for path in &paths {
        let mut file = File::open(path).map_err(|e| CliError::input(path, e))?;
        loop {
            let n = file.read(&mut buf).map_err(|e| CliError::input(path, e))?;
            if n == 0 {
                break;
            }
            hasher
                .update(&buf[..n])
                .map_err(|e| CliError::input(path, e))?;
        }
    }
    let built = hasher.finish().map_err(|e| {
        CliError::input(root, format!("{e} (did a file change while it was read?)"))
    })?;
    Ok((built, total))
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

//! Payloads and `.torrent` files for interop tests, the torrents made by `mktorrent` so that they do
//! not depend on our own encoder.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hyperblow_core::metainfo::Metainfo;
use hyperblow_core::types::InfoHash;

use super::process::{run_checked, HarnessError, Result};

/// Deterministic pseudo-random payloads: the shared [`crate::fixture::content`].
pub use crate::fixture::content as payload;

/// Writes [`payload`]`(len, seed)` to `path` (creating parent directories) and returns the bytes.
pub fn write_payload(path: &Path, len: usize, seed: u64) -> Result<Vec<u8>> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(HarnessError::io(format!("create {}", parent.display())))?;
    }
    let data = payload(len, seed);
    fs::write(path, &data).map_err(HarnessError::io(format!("write {}", path.display())))?;
    Ok(data)
}

/// A `.torrent` file on disk and its info-hash.
#[derive(Debug, Clone)]
pub struct TorrentFile {
    /// Where the `.torrent` is.
    pub path: PathBuf,
    /// Its info-hash, computed by hyperblow-core from the file's exact `info` bytes.
    pub info_hash: InfoHash,
}

impl TorrentFile {
    /// Reads `path` and computes its info-hash.
    pub fn load(path: &Path) -> Result<TorrentFile> {
        let bytes = fs::read(path).map_err(HarnessError::io(format!("read {}", path.display())))?;
        let meta = Metainfo::from_bytes(&bytes).map_err(|e| HarnessError::Tool {
            what: format!("parse {}", path.display()),
            detail: e.to_string(),
        })?;
        Ok(TorrentFile {
            path: path.to_path_buf(),
            info_hash: meta.info.info_hash(),
        })
    }

    /// The torrent's magnet link with its trackers (`xt`, `tr`).
    pub fn magnet(&self, trackers: &[&str]) -> String {
        let mut m = format!("magnet:?xt=urn:btih:{}", self.info_hash.to_hex());
        for t in trackers {
            m.push_str("&tr=");
            m.push_str(&hyperblow_core::tracker::http::percent_encode(t.as_bytes()));
        }
        m
    }
}

/// Runs `mktorrent` on `content` (a file or a directory) with one announce URL per tier, pieces of
/// `2^piece_log2` bytes and no creation date, writing `out`.
pub fn mktorrent(
    content: &Path,
    announce: &[&str],
    piece_log2: u8,
    out: &Path,
) -> Result<TorrentFile> {
    let mut cmd = Command::new("mktorrent");
    for a in announce {
        cmd.arg("-a").arg(a);
    }
    cmd.arg("-l")
        .arg(piece_log2.to_string())
        .arg("-d")
        .arg("-o")
        .arg(out)
        .arg(content);
    run_checked(&mut cmd, Duration::from_secs(30))?;
    TorrentFile::load(out)
}

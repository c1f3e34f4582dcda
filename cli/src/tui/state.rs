//! The TUI's persistent session: one record per torrent in a state directory, so that reopening
//! the TUI brings every torrent back where it was.
//!
//! Layout of the directory (`$XDG_DATA_HOME/hyperblow`, else `~/.local/share/hyperblow`, or
//! `--state-dir`):
//! - `torrents/<info-hash hex>.json`: output directory, file selection, paused flag, the order the
//!   torrent was added in, and its magnet link while its metadata is not known yet;
//! - `torrents/<info-hash hex>.torrent`: its metainfo (for a magnet link, saved once fetched).
//!
//! Resume data (which pieces are verified) is not here: storage keeps it where it always does
//! (`<output dir>/.hyperblow/<hex>.resume`) and is the one owner of that format. Every file is
//! written atomically (a temporary file, `fsync`, then a rename over the old one), so a crash leaves
//! the old or the new record, never half of one; a record that does not parse is reported and
//! skipped, and the others load.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use hyperblow_core::magnet::MagnetLink;
use hyperblow_core::metainfo::Metainfo;
use hyperblow_core::InfoHash;
use serde::{Deserialize, Serialize};

/// The saved settings of one torrent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Where its files are.
    pub output_dir: PathBuf,
    /// One flag per file; `None`: every file.
    #[serde(default)]
    pub wanted: Option<Vec<bool>>,
    /// Paused by the user.
    #[serde(default)]
    pub paused: bool,
    /// Order of addition (smaller first), which is also the order of the download queue.
    #[serde(default)]
    pub order: u64,
    /// The magnet link it was added from (kept until the metadata is saved).
    #[serde(default)]
    pub magnet: Option<String>,
}

/// What a torrent is, as loaded from the state directory.
#[derive(Debug, Clone)]
pub enum Saved {
    /// A `.torrent` (given, or fetched for a magnet link).
    Torrent(Box<Metainfo>),
    /// A magnet link whose metadata was not fetched yet.
    Magnet(Box<MagnetLink>),
}

/// One torrent loaded from the state directory.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its info-hash (from the file name, checked against the content).
    pub info_hash: InfoHash,
    /// What to add.
    pub source: Saved,
    /// Its settings.
    pub record: Record,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// The default state directory: `$XDG_DATA_HOME/hyperblow`, else `$HOME/.local/share/hyperblow`.
pub fn default_dir() -> Option<PathBuf> {
    let non_empty = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    non_empty("XDG_DATA_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| non_empty("HOME").map(|h| h.join(".local").join("share")))
        .map(|d| d.join("hyperblow"))
}

impl StateDir {
    /// Opens (creating it if needed) the state directory at `root`.
    pub fn open(root: &Path) -> std::io::Result<StateDir> {
        fs::create_dir_all(root.join("torrents"))?;
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, info_hash: &InfoHash, ext: &str) -> PathBuf {
        self.root
            .join("torrents")
            .join(format!("{}.{ext}", info_hash.to_hex()))
    }

    /// Saves a torrent's settings.
    pub fn save_record(&self, info_hash: &InfoHash, record: &Record) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        write_atomic(&self.path(info_hash, "json"), &json)
    }

    /// Saves a torrent's metainfo (the bytes of a `.torrent`).
    pub fn save_torrent(&self, info_hash: &InfoHash, bytes: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.path(info_hash, "torrent"), bytes)
    }

    /// Forgets a torrent (its records; never its data).
    pub fn forget(&self, info_hash: &InfoHash) -> std::io::Result<()> {
        for ext in ["json", "torrent"] {
            match fs::remove_file(self.path(info_hash, ext)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Every saved torrent in the order they were added, and one message per record that could
    /// not be loaded (the others load all the same).
    pub fn load(&self) -> (Vec<Loaded>, Vec<String>) {
        let mut loaded = Vec::new();
        let mut problems = Vec::new();
        let dir = self.root.join("torrents");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => return (loaded, vec![format!("{}: {e}", dir.display())]),
        };
        let mut names: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        for path in names {
            match self.load_one(&path) {
                Ok(l) => loaded.push(l),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        loaded.sort_by_key(|l| l.record.order);
        (loaded, problems)
    }

    fn load_one(&self, json_path: &Path) -> Result<Loaded, String> {
        let stem = json_path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or("not a state file name")?;
        let info_hash = InfoHash::from_hex(stem).ok_or("not named after an info-hash")?;
        let bytes = fs::read(json_path).map_err(|e| e.to_string())?;
        let record: Record =
            serde_json::from_slice(&bytes).map_err(|e| format!("corrupt record: {e}"))?;
        let torrent_path = self.path(&info_hash, "torrent");
        let source = match fs::read(&torrent_path) {
            Ok(b) => {
                let meta = Metainfo::from_bytes(&b)
                    .map_err(|e| format!("corrupt {}: {e}", torrent_path.display()))?;
                if meta.info_hash() != info_hash {
                    return Err(format!(
                        "{} is another torrent ({})",
                        torrent_path.display(),
                        meta.info_hash()
                    ));
                }
                Saved::Torrent(Box::new(meta))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let link = record
                    .magnet
                    .as_deref()
                    .ok_or("neither a .torrent nor a magnet link saved")?;
                let link = MagnetLink::parse(link).map_err(|e| format!("bad magnet link: {e}"))?;
                if link.info_hash != info_hash {
                    return Err("the saved magnet link is another torrent".into());
                }
                Saved::Magnet(Box::new(link))
            }
            Err(e) => return Err(format!("{}: {e}", torrent_path.display())),
        };
        Ok(Loaded {
            info_hash,
            source,
            record,
        })
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, flushed to disk, renamed over
/// `path`, and the directory flushed so that the rename survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperblow_tests::fixture::Fixture;

    fn meta(name: &str) -> Metainfo {
        Fixture::multi(name, 16384, &[("a", 20000), ("b", 100)]).metainfo
    }

    #[test]
    fn records_round_trip_in_order_and_a_corrupt_one_is_reported() {
        let tmp = tempfile::tempdir().expect("tmp");
        let st = StateDir::open(tmp.path()).expect("open");
        let (m1, m2, m3) = (meta("one"), meta("two"), meta("three"));
        for (i, m) in [&m2, &m1, &m3].into_iter().enumerate() {
            st.save_torrent(&m.info_hash(), &m.to_bytes())
                .expect("save");
            let rec = Record {
                output_dir: tmp.path().join("out"),
                wanted: Some(vec![true, i == 0]),
                paused: i == 1,
                order: i as u64,
                magnet: None,
            };
            st.save_record(&m.info_hash(), &rec).expect("save");
        }
        // A truncated record: reported, the others load.
        let bad = tmp
            .path()
            .join("torrents")
            .join(format!("{}.json", m3.info_hash().to_hex()));
        let full = fs::read(&bad).expect("read");
        fs::write(&bad, &full[..full.len() / 2]).expect("truncate");
        let (loaded, problems) = st.load();
        let names: Vec<_> = loaded
            .iter()
            .map(|l| match &l.source {
                Saved::Torrent(m) => m.info.name().to_owned(),
                Saved::Magnet(_) => String::new(),
            })
            .collect();
        assert_eq!(names, ["two", "one"]);
        assert_eq!(loaded[0].record.wanted, Some(vec![true, true]));
        assert!(loaded[1].record.paused);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("corrupt record"), "{problems:?}");
        // Forgetting removes both files; no temporary file is left behind.
        st.forget(&m1.info_hash()).expect("forget");
        assert_eq!(st.load().0.len(), 1);
        let leftovers: Vec<_> = fs::read_dir(tmp.path().join("torrents"))
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_magnet_without_metadata_loads_as_a_magnet() {
        let tmp = tempfile::tempdir().expect("tmp");
        let st = StateDir::open(tmp.path()).expect("open");
        let ih = meta("m").info_hash();
        let link = format!("magnet:?xt=urn:btih:{}&dn=m", ih.to_hex());
        let rec = Record {
            output_dir: tmp.path().to_path_buf(),
            wanted: None,
            paused: false,
            order: 0,
            magnet: Some(link),
        };
        st.save_record(&ih, &rec).expect("save");
        let (loaded, problems) = st.load();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(matches!(loaded[0].source, Saved::Magnet(_)));
        // A .torrent of another torrent under this name is refused.
        st.save_torrent(&ih, &meta("other").to_bytes())
            .expect("save");
        let (loaded, problems) = st.load();
        assert!(loaded.is_empty());
        assert!(problems[0].contains("another torrent"), "{problems:?}");
    }
}

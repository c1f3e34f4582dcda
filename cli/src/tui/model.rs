//! What the UI shows and what it asks for: the torrents as a front end sees them ([`Item`]), the
//! commands it sends ([`Command`]), and the [`Session`] trait that stands between the UI and the
//! engine. The real session ([`super::live::Live`]) talks to a `SessionHandle`; tests use a
//! deterministic fake.

use std::path::PathBuf;

use hyperblow_core::metainfo::Metainfo;
use hyperblow_core::InfoHash;
use hyperblow_driver::engine::{TorrentState, TorrentStats};
use hyperblow_driver::{RateLimits, StartKind};

/// What a torrent is doing, as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Its existing data is being checked (`checked` of `total` pieces).
    Checking {
        /// Pieces checked so far.
        checked: u32,
        /// Pieces in the torrent.
        total: u32,
    },
    /// Added from a magnet link: fetching the file list from peers.
    Metadata,
    /// Fetching pieces.
    Downloading,
    /// Complete; serving others.
    Seeding,
    /// Paused by the user.
    Paused,
    /// Waiting for a download slot (see `--max-active`).
    Queued,
    /// Stopped by an error.
    Error(String),
}

impl Status {
    /// The short name shown in the list.
    pub fn label(&self) -> &'static str {
        match self {
            Status::Checking { .. } => "Checking",
            Status::Metadata => "Metadata",
            Status::Downloading => "Download",
            Status::Seeding => "Seeding",
            Status::Paused => "Paused",
            Status::Queued => "Queued",
            Status::Error(_) => "Error",
        }
    }

    /// The status an engine state maps to (when not queued and not checking).
    pub fn from_state(state: &TorrentState) -> Status {
        match state {
            TorrentState::FetchingMetadata => Status::Metadata,
            TorrentState::Downloading => Status::Downloading,
            TorrentState::Seeding => Status::Seeding,
            TorrentState::Paused => Status::Paused,
            TorrentState::Error(e) => Status::Error(e.clone()),
        }
    }
}

/// What the Details tab shows besides the stats: facts from the metainfo.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Details {
    /// Bytes per piece.
    pub piece_length: u32,
    /// Pieces in the torrent.
    pub pieces: u32,
    /// `created by`.
    pub creator: Option<String>,
    /// `comment`.
    pub comment: Option<String>,
    /// The BEP 27 private flag.
    pub private: bool,
}

impl Details {
    /// The details of a parsed `.torrent`.
    pub fn of(meta: &Metainfo) -> Details {
        Details {
            piece_length: meta.info.layout().piece_length(),
            pieces: meta.info.layout().piece_count(),
            creator: meta.created_by.clone(),
            comment: meta.comment.clone(),
            private: meta.info.is_private(),
        }
    }
}

/// One torrent of the session, as the UI sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Its info-hash: its identity across re-checks and restarts.
    pub info_hash: InfoHash,
    /// Its name (unescaped: the view escapes it).
    pub name: String,
    /// Where its files are.
    pub output_dir: PathBuf,
    /// What it is doing.
    pub status: Status,
    /// The engine's last snapshot of it (none while it is being checked before being added).
    pub stats: Option<TorrentStats>,
    /// Facts from its metainfo, once known.
    pub details: Option<Details>,
    /// How its existing data was accounted for when it was added (resume data, a check, none).
    pub start: Option<StartKind>,
    /// Its own rate limits (bytes per second, 0: none besides the session's).
    pub limits: RateLimits,
}

impl Item {
    /// Progress over the wanted files, 0.0 to 1.0.
    pub fn progress(&self) -> f64 {
        match (&self.status, &self.stats) {
            (Status::Checking { checked, total }, _) if *total > 0 => {
                f64::from(*checked) / f64::from(*total)
            }
            (_, Some(s)) => s.progress(),
            _ => 0.0,
        }
    }

    /// Total size, 0 while unknown.
    pub fn size(&self) -> u64 {
        self.stats.as_ref().map_or(0, |s| s.total_bytes)
    }

    /// Download rate in bytes per second.
    pub fn down(&self) -> u64 {
        self.stats.as_ref().map_or(0, |s| s.download_rate)
    }

    /// Upload rate in bytes per second.
    pub fn up(&self) -> u64 {
        self.stats.as_ref().map_or(0, |s| s.upload_rate)
    }

    /// Uploaded over downloaded-or-wanted bytes.
    pub fn ratio(&self) -> f64 {
        self.stats.as_ref().map_or(0.0, |s| {
            let base = s.downloaded.max(s.have_bytes);
            if base == 0 {
                0.0
            } else {
                s.uploaded as f64 / base as f64
            }
        })
    }
}

/// What the UI asks the session to do. Torrents are named by info-hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Add a `.torrent` file.
    AddFile(PathBuf),
    /// Add a magnet link.
    AddMagnet(String),
    /// Pause a torrent (it leaves the download queue).
    Pause(InfoHash),
    /// Resume a paused torrent (it joins the queue if the download slots are taken).
    Resume(InfoHash),
    /// Remove a torrent, and with `delete_data` its files.
    Remove {
        /// The torrent.
        info_hash: InfoHash,
        /// Also delete its downloaded files.
        delete_data: bool,
    },
    /// Forget what is verified and hash every piece on disk again.
    Recheck(InfoHash),
    /// Change which files are downloaded (one flag per file).
    SetWanted(InfoHash, Vec<bool>),
    /// Set one direction's rate limit of the whole session (`torrent: None`) or of one torrent;
    /// the other direction keeps its limit.
    SetRateLimit {
        /// The torrent, or `None` for the session.
        torrent: Option<InfoHash>,
        /// Which direction.
        direction: Direction,
        /// Bytes per second, 0: unlimited.
        rate: u64,
    },
}

/// A transfer direction, for rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Downloading (payload received).
    Down,
    /// Uploading (payload sent).
    Up,
}

impl Direction {
    /// The limits with this direction's rate replaced by `rate`.
    pub fn apply(self, limits: RateLimits, rate: u64) -> RateLimits {
        match self {
            Direction::Down => RateLimits {
                download: rate,
                ..limits
            },
            Direction::Up => RateLimits {
                upload: rate,
                ..limits
            },
        }
    }

    /// `download` or `upload`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Down => "download",
            Direction::Up => "upload",
        }
    }
}

/// The session as the UI sees it: torrents out, commands in. Nothing here blocks for long: a
/// command that takes time (adding a large existing download) finishes in the background and its
/// outcome shows up in a later [`Session::refresh`].
pub trait Session {
    /// Takes in what happened since the last call (events, answers, fresh stats). Returns whether
    /// anything the UI shows may have changed.
    fn refresh(&mut self) -> bool;
    /// The torrents, in the order they were added.
    fn items(&self) -> &[Item];
    /// Starts a command.
    fn command(&mut self, command: Command);
    /// Messages for the status line (outcomes of commands, problems found), oldest first.
    fn take_messages(&mut self) -> Vec<String>;
    /// The session-wide rate limits now in force (bytes per second, 0: unlimited).
    fn rate_limits(&self) -> RateLimits;
}

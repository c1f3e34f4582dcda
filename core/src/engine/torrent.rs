//! The state of one torrent inside the engine: its pieces (picker, blocks being assembled), its peers
//! (connections, address book, strikes and bans), its choker and its announce policy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::bitfield::Bitfield;
use crate::choker::Choker;
use crate::ext::metadata::MetadataServer;
use crate::metainfo::{Info, Layout};
use crate::peer::{Geometry, RateMeter};
use crate::picker::{PeerKey, Picker};
use crate::time::Instant;
use crate::tracker::announce::AnnouncePolicy;
use crate::types::{InfoHash, PeerId};

use super::ext::MagnetFetch;
use super::io::{ConnId, FileStats};
#[cfg(doc)]
use super::pieces::PieceStore;

/// The most addresses remembered per torrent; beyond it a new one replaces the address that failed
/// most often (if any failed), else it is dropped.
pub(crate) const MAX_BOOK: usize = 2000;

/// The first back-off after a failed connect; it doubles per failure.
const CONNECT_BACKOFF: Duration = Duration::from_secs(15);

/// The longest back-off between connect attempts.
const CONNECT_BACKOFF_CAP: Duration = Duration::from_secs(30 * 60);

/// Strikes (pieces that failed their hash check with a block from the peer) that get a peer banned.
pub(crate) const MAX_STRIKES: u32 = 2;

/// Most addresses with strikes remembered per torrent. A peer reaches them only by sending bad
/// pieces, one per strike, so this is far more than an honest swarm ever needs; when full, the entry
/// with the lowest address is dropped (its peer starts again from no strikes).
pub(crate) const MAX_STRIKE_ENTRIES: usize = 4096;

/// Most banned addresses (and, separately, banned peer ids) remembered per torrent. When full, the
/// lowest one is forgotten: that peer may be dialled again and is banned again after
/// [`MAX_STRIKES`] more bad pieces. 4096 bans cost about 100 KiB per torrent at most.
pub(crate) const MAX_BANNED: usize = 4096;

/// Inserts into a capped set, first dropping its lowest entry when it is full (see the caps above).
pub(crate) fn insert_capped<K: Ord + Clone>(set: &mut BTreeSet<K>, k: K, cap: usize) -> bool {
    if set.contains(&k) {
        return false;
    }
    if set.len() >= cap {
        set.pop_first();
    }
    set.insert(k)
}

/// Most bytes of failed pieces kept per torrent to find, once the piece passes, which peer's block
/// was wrong. 8 MiB holds a few failed pieces of even large-piece torrents; beyond it every sender is
/// struck at once, as when one peer sent the whole piece.
pub(crate) const MAX_FAILED_KEEP: usize = 8 * 1024 * 1024;

/// What the user asked of a torrent, and whether an error stopped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunState {
    /// Connecting, trading, announcing.
    Running,
    /// Stopped by the user.
    Paused,
    /// Stopped by a disk failure.
    Error(String),
}

/// One address the torrent knows of.
#[derive(Debug, Clone)]
pub(crate) struct BookEntry {
    /// Not before this instant.
    pub next_try: Instant,
    /// Consecutive failed connects.
    pub failures: u32,
    /// Established connections that ended (each doubles the wait before the next dial).
    pub drops: u32,
    /// A connection to this address exists.
    pub connected: bool,
    /// Never connect again (banned, or it was ourselves).
    pub banned: bool,
}

/// The peers a torrent may connect to: bounded, de-duplicated, with back-off.
#[derive(Debug, Default)]
pub(crate) struct AddressBook {
    pub entries: BTreeMap<SocketAddr, BookEntry>,
}

impl AddressBook {
    /// Adds `addr` (if new and there is room); returns whether it was added.
    pub fn add(&mut self, now: Instant, addr: SocketAddr) -> bool {
        if self.entries.contains_key(&addr)
            || addr.port() == 0
            || addr.ip().is_unspecified()
            || addr.ip().is_multicast()
        {
            return false;
        }
        if self.entries.len() >= MAX_BOOK {
            // Full: a fresh address is worth more than one that keeps failing.
            let worst = self
                .entries
                .iter()
                .filter(|(_, e)| !e.connected && !e.banned && e.failures > 0)
                .max_by_key(|(_, e)| e.failures)
                .map(|(a, _)| *a);
            match worst {
                Some(a) => self.entries.remove(&a),
                None => return false,
            };
        }
        self.entries.insert(
            addr,
            BookEntry {
                next_try: now,
                failures: 0,
                drops: 0,
                connected: false,
                banned: false,
            },
        );
        true
    }

    /// The first address that may be dialled at `now` and passes `usable`.
    pub fn candidate(
        &self,
        now: Instant,
        mut usable: impl FnMut(&SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.connected && !e.banned && e.next_try <= now)
            .map(|(a, _)| *a)
            .find(|a| usable(a))
    }

    /// The earliest future instant some address becomes diallable.
    pub fn next_try(&self, now: Instant) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| !e.connected && !e.banned && e.next_try > now)
            .map(|e| e.next_try)
            .min()
    }

    /// A connect to `addr` failed: back off exponentially.
    pub fn failed(&mut self, now: Instant, addr: &SocketAddr) {
        if let Some(e) = self.entries.get_mut(addr) {
            e.connected = false;
            e.failures = e.failures.saturating_add(1);
            let factor = 1u32 << e.failures.min(12).saturating_sub(1);
            e.next_try = now
                + CONNECT_BACKOFF
                    .saturating_mul(factor)
                    .min(CONNECT_BACKOFF_CAP);
        }
    }

    /// An established connection to `addr` ended: it may be tried again soon, sooner if it was
    /// `useful` (moved data), and later with each further drop (`admission::reconnect_delay`).
    pub fn disconnected(&mut self, now: Instant, addr: &SocketAddr, useful: bool) {
        if let Some(e) = self.entries.get_mut(addr) {
            e.connected = false;
            e.failures = 0;
            e.drops = e.drops.saturating_add(1);
            e.next_try =
                now + super::admission::reconnect_delay(e.drops, useful, CONNECT_BACKOFF_CAP);
        }
    }

    /// Never dial `addr` again.
    pub fn ban(&mut self, addr: &SocketAddr) {
        if let Some(e) = self.entries.get_mut(addr) {
            e.banned = true;
            e.connected = false;
        }
    }
}

/// Where a piece with all its blocks stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PieceStage {
    /// Blocks are arriving.
    Assembling,
    /// Every block is here and a [`Job::VerifyWrite`](super::Job::VerifyWrite) is out: its answer
    /// settles the piece (written: verified; mismatch: fetched again; failed: missing again).
    Verifying,
}

/// What a torrent knows of its content: either it is still fetching its metadata (a magnet link) or
/// it knows its info dictionary, and with it the piece geometry and the picker, all at once.
#[derive(Debug)]
pub(crate) enum Meta {
    /// Added from a magnet link; the info dictionary is being fetched from peers.
    Fetching(Box<MagnetFetch>),
    /// The info dictionary is known (from the start, or once a magnet link's fetch completed).
    Known(Box<Known>),
}

/// The parts of a torrent that exist only once its info dictionary is known.
#[derive(Debug)]
pub(crate) struct Known {
    /// The `info` dictionary.
    pub info: Info,
    /// The piece geometry, for peer sessions.
    pub geometry: Geometry,
    /// Pieces: had, wanted, requested.
    pub picker: Picker,
}

impl Meta {
    /// The info dictionary, once known.
    pub fn info(&self) -> Option<&Info> {
        match self {
            Meta::Known(k) => Some(&k.info),
            Meta::Fetching(_) => None,
        }
    }

    /// The piece geometry, once known.
    pub fn geometry(&self) -> Option<Geometry> {
        match self {
            Meta::Known(k) => Some(k.geometry),
            Meta::Fetching(_) => None,
        }
    }

    /// The picker, once the metadata is known.
    pub fn picker(&self) -> Option<&Picker> {
        match self {
            Meta::Known(k) => Some(&k.picker),
            Meta::Fetching(_) => None,
        }
    }

    /// The picker, for changing, once the metadata is known.
    pub fn picker_mut(&mut self) -> Option<&mut Picker> {
        match self {
            Meta::Known(k) => Some(&mut k.picker),
            Meta::Fetching(_) => None,
        }
    }

    /// The metadata fetch, while the metadata is not known.
    pub fn fetch(&self) -> Option<&MagnetFetch> {
        match self {
            Meta::Fetching(m) => Some(m.as_ref()),
            Meta::Known(_) => None,
        }
    }

    /// The metadata fetch, for changing, while the metadata is not known.
    pub fn fetch_mut(&mut self) -> Option<&mut MagnetFetch> {
        match self {
            Meta::Fetching(m) => Some(m.as_mut()),
            Meta::Known(_) => None,
        }
    }
}

/// A piece being assembled, hashed or written.
#[derive(Debug)]
pub(crate) struct PieceBuf {
    /// Its size in bytes (what it counts against the pending-bytes cap; see [`PieceStore`]).
    pub size: u32,
    /// Blocks by offset: the data and who sent it.
    pub blocks: BTreeMap<u32, (Bytes, SocketAddr)>,
    /// Where it stands.
    pub stage: PieceStage,
}

/// One torrent. A torrent added from a magnet link starts in [`Meta::Fetching`] and becomes
/// [`Meta::Known`] when the metadata arrives; one added from a `.torrent` is `Known` from the start.
pub(crate) struct Torrent {
    /// The info-hash (known from the start, also for a magnet link).
    pub info_hash: InfoHash,
    /// The name to show: the info dictionary's, else the magnet link's `dn`, else the info-hash.
    pub name: String,
    /// The metadata fetch, or the info dictionary with its geometry and picker.
    pub meta: Meta,
    /// Which files the user selected (empty until the metadata is known).
    pub wanted_files: Vec<bool>,
    /// Tracker tiers (for saving a `.torrent` of a magnet link).
    pub trackers: Vec<Vec<String>>,
    /// Private torrent (BEP 27): no PEX. Unknown (false) until a magnet link's metadata arrived.
    pub private: bool,
    /// Answers `ut_metadata` requests (rejects them while we have no metadata).
    pub metadata: MetadataServer,
    /// The set of connected peers changed: PEX senders should look again.
    pub pex_dirty: bool,
    /// The earliest `pex_due` of the torrent's connections as of the last look (connections
    /// gone or deadlines dropped since may leave it early, never late).
    pub pex_next: Option<Instant>,
    /// Running, paused or stopped by an error.
    pub run: RunState,
    /// Whether `TorrentCompleted` was emitted for the current selection.
    pub complete_reported: bool,
    /// Trackers.
    pub policy: AnnouncePolicy,
    /// Who we upload to.
    pub choker: Choker<ConnId>,
    /// Connections (dialling, handshaking or established).
    pub conns: BTreeSet<ConnId>,
    /// Picker keys to connections.
    pub keys: BTreeMap<PeerKey, ConnId>,
    /// Addresses to dial.
    pub book: AddressBook,
    /// Blocks of pieces that failed their check, kept to find the liar once the piece passes.
    pub failed_blocks: BTreeMap<u32, Vec<(u32, Bytes, SocketAddr)>>,
    /// Bytes in `failed_blocks`.
    pub failed_bytes: usize,
    /// Strikes per address.
    pub strikes: BTreeMap<SocketAddr, u32>,
    /// Banned addresses.
    pub banned: BTreeSet<SocketAddr>,
    /// Banned peer ids.
    pub banned_ids: BTreeSet<PeerId>,
    /// Payload downloaded since the last start (for announces).
    pub downloaded: u64,
    /// Payload uploaded since the last start (for announces).
    pub uploaded: u64,
    /// Download rate of the whole torrent.
    pub down_rate: RateMeter,
    /// Upload rate of the whole torrent.
    pub up_rate: RateMeter,
    /// The choker must be run at the next opportunity.
    pub choke_dirty: bool,
    /// Blocks became requestable again: offer them to every peer at the next opportunity.
    pub refill: bool,
    /// The next refill visits every connection, not only `hungry` ones (set where sessions got
    /// bytes to send that only the refill flushes: a changed file selection).
    pub refill_all: bool,
    /// Connections whose session may ask for blocks now (`PeerSession::may_request`): the only
    /// ones a refill asks for requests (see `refill.rs`).
    pub hungry: BTreeSet<ConnId>,
    /// When the last refill ran: a reject window it would have ended on a connection it skipped is
    /// ended before that connection's next event (see `refill.rs`).
    pub refill_at: Option<Instant>,
}

impl Torrent {
    /// A torrent with no peers and nothing downloaded yet: `meta` is the metadata (`add_torrent`) or
    /// its fetch (`add_magnet`); it is named by the info dictionary, else by its info-hash.
    pub fn new(
        info_hash: InfoHash,
        meta: Meta,
        trackers: Vec<Vec<String>>,
        policy: AnnouncePolicy,
        choker: Choker<ConnId>,
        rate_window: Duration,
        paused: bool,
    ) -> Torrent {
        let private = meta.info().is_some_and(Info::is_private);
        // The info dictionary's name; a magnet link's `dn` replaces the info-hash until it is known.
        let name = meta
            .info()
            .map_or_else(|| info_hash.to_hex(), |i| i.name().to_owned());
        let metadata = MetadataServer::new(meta.info().map(|i| i.raw().clone()));
        Torrent {
            info_hash,
            name,
            meta,
            wanted_files: Vec::new(),
            trackers,
            private,
            metadata,
            pex_dirty: false,
            pex_next: None,
            run: if paused {
                RunState::Paused
            } else {
                RunState::Running
            },
            complete_reported: false,
            policy,
            choker,
            conns: Default::default(),
            keys: Default::default(),
            book: Default::default(),
            failed_blocks: Default::default(),
            failed_bytes: 0,
            strikes: Default::default(),
            banned: Default::default(),
            banned_ids: Default::default(),
            downloaded: 0,
            uploaded: 0,
            down_rate: RateMeter::new(rate_window),
            up_rate: RateMeter::new(rate_window),
            choke_dirty: true,
            refill: false,
            refill_all: false,
            hungry: Default::default(),
            refill_at: None,
        }
    }

    /// The layout (files and pieces), once the metadata is known.
    pub fn layout(&self) -> Option<&Layout> {
        self.meta.info().map(Info::layout)
    }

    /// Whether every wanted piece is verified (never before the metadata is known).
    pub fn is_complete(&self) -> bool {
        self.meta.picker().is_some_and(Picker::is_complete)
    }

    /// Whether we have every piece of the torrent (never before the metadata is known).
    pub fn has_all(&self) -> bool {
        self.meta.picker().is_some_and(|p| p.have().all())
    }

    /// Whether the engine's upkeep has work for it: requests to refill, a rechoke, PEX to look at.
    pub fn has_upkeep(&self) -> bool {
        let active = self.is_running();
        self.refill || (self.choke_dirty && active) || (self.pex_dirty && active && !self.private)
    }

    /// Whether peers, trackers and jobs are active.
    pub fn is_running(&self) -> bool {
        self.run == RunState::Running
    }

    /// The pieces wanted by a file selection (a piece straddling a selected file is wanted).
    pub fn wanted_pieces(layout: &Layout, wanted_files: &[bool]) -> Bitfield {
        let mut bits = Bitfield::new(layout.piece_count());
        for (i, w) in layout
            .pieces_for_files(wanted_files)
            .into_iter()
            .enumerate()
        {
            if w {
                bits.set(i as u32);
            }
        }
        bits
    }

    /// Per-file statistics: bytes covered by verified pieces.
    pub fn file_stats(&self) -> Vec<FileStats> {
        let (Some(layout), Some(picker)) = (self.layout(), self.meta.picker()) else {
            return Vec::new();
        };
        let have = picker.have();
        let pl = u64::from(layout.piece_length());
        layout
            .files()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut covered = 0u64;
                if let Some(range) = layout.file_pieces(i) {
                    for p in range {
                        if !have.get(p) {
                            continue;
                        }
                        let start = u64::from(p) * pl;
                        let end = start + u64::from(layout.piece_len(p).unwrap_or(0));
                        let lo = start.max(f.offset);
                        let hi = end.min(f.offset + f.length);
                        covered += hi.saturating_sub(lo);
                    }
                }
                FileStats {
                    path: f.display_path(),
                    length: f.length,
                    wanted: self.wanted_files.get(i).copied().unwrap_or(false),
                    have: covered,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_sets_drop_their_lowest_entry_when_full() {
        let mut s = BTreeSet::new();
        for k in [5u32, 3, 9] {
            assert!(insert_capped(&mut s, k, 3));
        }
        assert!(!insert_capped(&mut s, 9, 3), "already there");
        assert!(insert_capped(&mut s, 7, 3));
        assert_eq!(s.into_iter().collect::<Vec<_>>(), vec![5, 7, 9]);
    }
}

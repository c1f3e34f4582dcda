//! `ut_metadata` (BEP 9): fetching the info dictionary of a torrent added from a magnet link, and serving
//! it to others.
//!
//! The metadata (the bencoded `info` dictionary, exactly as hashed) travels in 16 KiB pieces
//! ([`METADATA_PIECE_LEN`]), the last one shorter. Three messages, each a bencoded dictionary sent as the
//! payload of a BEP 10 extended message: a request for piece `i`, the data of piece `i` (the dictionary
//! carries `total_size` and is *followed* by the raw piece bytes), and a reject.
//!
//! - [`MetadataMessage`] encodes and decodes them.
//! - [`MetadataFetcher`] is the downloading side: it settles the metadata size from peers' handshakes,
//!   spreads piece requests over several peers with per-request timeouts, checks the assembled bytes
//!   against the info-hash, and on a mismatch names the peers that contributed so they can be banned.
//! - [`MetadataServer`] is the uploading side: data for a piece we have, reject otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;

use crate::bencode::{self, DecodeError, OwnedValue, Value};
use crate::metainfo::{Info, MetainfoError};
use crate::time::Instant;
use crate::types::InfoHash;

/// The size of one metadata piece (BEP 9): every piece but the last is exactly this long.
pub const METADATA_PIECE_LEN: usize = 16 * 1024;

/// The default largest metadata size we accept from a peer's handshake: 16 MiB, far above any real
/// info dictionary (a 100 GB torrent with 4 MiB pieces has about 500 KiB of piece hashes).
pub const DEFAULT_MAX_METADATA_SIZE: u64 = 16 * 1024 * 1024;

/// The hard ceiling on [`FetcherConfig::max_metadata_size`], whatever the caller configures (1 GiB).
pub const MAX_METADATA_SIZE_CAP: u64 = 1 << 30;

const MSG_REQUEST: i64 = 0;
const MSG_DATA: i64 = 1;
const MSG_REJECT: i64 = 2;

/// How many metadata pieces a metadata of `size` bytes has.
pub fn piece_count(size: u64) -> u32 {
    let n = size.div_ceil(METADATA_PIECE_LEN as u64);
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The length of metadata piece `piece` for a metadata of `size` bytes, or `None` past the end.
pub fn piece_len(size: u64, piece: u32) -> Option<usize> {
    let start = u64::from(piece).checked_mul(METADATA_PIECE_LEN as u64)?;
    if start >= size {
        return None;
    }
    let len = (size - start).min(METADATA_PIECE_LEN as u64);
    usize::try_from(len).ok()
}

/// One `ut_metadata` message (the payload of a BEP 10 extended message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataMessage {
    /// `msg_type` 0: please send metadata piece `piece`.
    Request {
        /// The piece index.
        piece: u32,
    },
    /// `msg_type` 1: metadata piece `piece`; `data` follows the dictionary on the wire.
    Data {
        /// The piece index.
        piece: u32,
        /// The size of the whole metadata, in bytes.
        total_size: u64,
        /// The piece's bytes (a zero-copy slice of the received payload).
        data: Bytes,
    },
    /// `msg_type` 2: the sender will not (or cannot) send piece `piece`.
    Reject {
        /// The piece index.
        piece: u32,
    },
}

/// Why a `ut_metadata` payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataMessageError {
    /// The dictionary at the start of the payload is not valid bencode.
    #[error("ut_metadata message: {0}")]
    Bencode(#[from] DecodeError),
    /// The payload does not start with a dictionary.
    #[error("ut_metadata message is a {0}, expected a dictionary")]
    NotADictionary(&'static str),
    /// A required key is absent.
    #[error("ut_metadata message has no `{0}` key")]
    MissingField(&'static str),
    /// A key that must hold an integer holds something else.
    #[error(
        "ut_metadata key `{field}` at byte offset {offset} should be an integer, found a {found}"
    )]
    NotAnInteger {
        /// Which key.
        field: &'static str,
        /// Where its value starts in the payload.
        offset: usize,
        /// What was found instead.
        found: &'static str,
    },
    /// An integer that is negative or too large for its field.
    #[error("ut_metadata key `{field}` has out-of-range value {value}")]
    OutOfRange {
        /// Which key.
        field: &'static str,
        /// The value found.
        value: i64,
    },
    /// A `msg_type` this implementation does not know. BEP 9 says to ignore such messages, so a caller
    /// should drop the message rather than treat the peer as broken.
    #[error("ut_metadata message type {0} is unknown (to be ignored)")]
    UnknownType(i64),
    /// A request or reject with bytes after its dictionary.
    #[error("ut_metadata {kind} message has {len} trailing bytes at byte offset {offset}")]
    TrailingBytes {
        /// "request" or "reject".
        kind: &'static str,
        /// Where the trailing bytes start.
        offset: usize,
        /// How many there are.
        len: usize,
    },
    /// A data message carrying more than one piece's worth of bytes.
    #[error("ut_metadata data message carries {len} bytes, more than a {max}-byte piece")]
    DataTooLong {
        /// Bytes after the dictionary.
        len: usize,
        /// [`METADATA_PIECE_LEN`].
        max: usize,
    },
}

fn int_field(dict: &Value<'_>, field: &'static str) -> Result<Option<i64>, MetadataMessageError> {
    match dict.get(field.as_bytes()) {
        None => Ok(None),
        Some(v) => v
            .as_int()
            .map(Some)
            .ok_or(MetadataMessageError::NotAnInteger {
                field,
                offset: v.offset(),
                found: v.type_name(),
            }),
    }
}

fn required<T: TryFrom<i64>>(
    dict: &Value<'_>,
    field: &'static str,
) -> Result<T, MetadataMessageError> {
    let value = int_field(dict, field)?.ok_or(MetadataMessageError::MissingField(field))?;
    T::try_from(value).map_err(|_| MetadataMessageError::OutOfRange { field, value })
}

impl MetadataMessage {
    /// The piece this message is about.
    pub fn piece(&self) -> u32 {
        match self {
            MetadataMessage::Request { piece }
            | MetadataMessage::Data { piece, .. }
            | MetadataMessage::Reject { piece } => *piece,
        }
    }

    /// Decodes an extended-message payload. Data bytes are sliced from `payload`, not copied.
    pub fn decode(payload: &Bytes) -> Result<MetadataMessage, MetadataMessageError> {
        let (dict, used) = bencode::decode_prefix(payload)?;
        if dict.as_dict().is_none() {
            return Err(MetadataMessageError::NotADictionary(dict.type_name()));
        }
        let msg_type =
            int_field(&dict, "msg_type")?.ok_or(MetadataMessageError::MissingField("msg_type"))?;
        let kind = match msg_type {
            MSG_REQUEST => "request",
            MSG_DATA => "data",
            MSG_REJECT => "reject",
            other => return Err(MetadataMessageError::UnknownType(other)),
        };
        let piece: u32 = required(&dict, "piece")?;
        let rest = payload.len() - used;
        if msg_type == MSG_DATA {
            let total_size: u64 = required(&dict, "total_size")?;
            if rest > METADATA_PIECE_LEN {
                return Err(MetadataMessageError::DataTooLong {
                    len: rest,
                    max: METADATA_PIECE_LEN,
                });
            }
            return Ok(MetadataMessage::Data {
                piece,
                total_size,
                data: payload.slice(used..),
            });
        }
        if rest != 0 {
            return Err(MetadataMessageError::TrailingBytes {
                kind,
                offset: used,
                len: rest,
            });
        }
        Ok(if msg_type == MSG_REQUEST {
            MetadataMessage::Request { piece }
        } else {
            MetadataMessage::Reject { piece }
        })
    }

    /// Encodes the message as an extended-message payload (the dictionary, then a data message's bytes).
    pub fn encode(&self) -> Vec<u8> {
        let (msg_type, piece) = match self {
            MetadataMessage::Request { piece } => (MSG_REQUEST, piece),
            MetadataMessage::Data { piece, .. } => (MSG_DATA, piece),
            MetadataMessage::Reject { piece } => (MSG_REJECT, piece),
        };
        let mut dict = OwnedValue::dict()
            .with("msg_type", msg_type)
            .with("piece", i64::from(*piece));
        let mut tail: &[u8] = &[];
        if let MetadataMessage::Data {
            total_size, data, ..
        } = self
        {
            dict.insert("total_size", i64::try_from(*total_size).unwrap_or(i64::MAX));
            tail = data;
        }
        let mut out = Vec::with_capacity(48 + tail.len());
        dict.encode_into(&mut out);
        out.extend_from_slice(tail);
        out
    }
}

/// Tunables of a [`MetadataFetcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetcherConfig {
    /// The largest `metadata_size` we believe (clamped to [`MAX_METADATA_SIZE_CAP`]).
    pub max_metadata_size: u64,
    /// At most this many requests outstanding to one peer at a time.
    pub max_outstanding_per_peer: usize,
    /// A request not answered within this long is given to another peer (a late answer is still
    /// accepted).
    pub request_timeout: Duration,
    /// After a peer rejects a piece or lets its request time out, it is not asked for that piece again
    /// for this long (other peers are asked meanwhile).
    pub retry_after: Duration,
}

impl Default for FetcherConfig {
    fn default() -> Self {
        FetcherConfig {
            max_metadata_size: DEFAULT_MAX_METADATA_SIZE,
            max_outstanding_per_peer: 2,
            request_timeout: Duration::from_secs(15),
            retry_after: Duration::from_secs(30),
        }
    }
}

/// Why [`MetadataFetcher::add_peer`] will not fetch from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefused {
    /// The peer did not register `ut_metadata`; harmless, it just cannot help.
    #[error("peer does not support ut_metadata")]
    NoSupport,
    /// The peer contributed to metadata that failed the info-hash check.
    #[error("peer sent metadata that failed the info-hash check")]
    Banned,
    /// The peer announced `metadata_size` 0.
    #[error("peer announced metadata_size 0")]
    ZeroSize,
    /// The peer announced a `metadata_size` above the configured cap.
    #[error("peer announced metadata_size {size}, above the {max}-byte cap")]
    TooLarge {
        /// What the peer announced.
        size: u64,
        /// The cap in force.
        max: u64,
    },
    /// The peer announced a size other than the one the fetch settled on. The peer is kept aside: if
    /// the settled size is abandoned (its backers leave or the result fails the hash check) the size
    /// is settled again by majority and the peer may be used.
    #[error("peer announced metadata_size {size}, but the fetch uses {settled}")]
    SizeDisagrees {
        /// What the peer announced.
        size: u64,
        /// The size the fetch settled on.
        settled: u64,
    },
}

/// Why [`MetadataFetcher::handle_data`] refused a data message. Every variant except
/// [`FetchError::UnknownPeer`] and [`FetchError::NotRequested`] also stops the fetcher from asking that
/// peer for anything again (it misbehaved); the engine may disconnect it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The peer was never added (or was removed).
    #[error("data from a peer that is not part of the metadata fetch")]
    UnknownPeer,
    /// We have no request for this piece outstanding to this peer (a late answer to a request made
    /// before the fetch restarted also lands here). The data is dropped; the peer is not struck.
    #[error("metadata piece {piece} was not requested from this peer")]
    NotRequested {
        /// The piece index in the message.
        piece: u32,
    },
    /// The message's `total_size` is not the size being fetched.
    #[error("data message says total_size {total_size}, but the metadata is {expected} bytes")]
    TotalSizeMismatch {
        /// What the message said.
        total_size: u64,
        /// The settled size.
        expected: u64,
    },
    /// The piece's bytes are not as long as that piece must be.
    #[error("metadata piece {piece} is {len} bytes long, expected {expected}")]
    WrongLength {
        /// The piece index.
        piece: u32,
        /// Bytes received.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },
}

/// What a data message did to the fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress<K> {
    /// The piece was stored; `have` of `pieces` pieces are in.
    Stored {
        /// Pieces held now.
        have: u32,
        /// Pieces in the metadata.
        pieces: u32,
    },
    /// Nothing changed: a late duplicate of a piece we already have, or the fetch is over.
    Ignored,
    /// The metadata is complete and matches the info-hash: see [`MetadataFetcher::result`].
    Complete,
    /// The assembled metadata did not match the info-hash. All pieces were discarded, these peers
    /// (every one that contributed a piece) are banned from the fetch and should be banned by the
    /// engine, and the fetch starts again with the remaining peers.
    HashMismatch {
        /// The peers that contributed pieces, in key order.
        bad_peers: Vec<K>,
    },
    /// The metadata matches the info-hash but is not a valid info dictionary: the magnet link names a
    /// broken torrent and the fetch has failed for good (see [`MetadataFetcher::failure`]).
    Invalid(MetainfoError),
}

#[derive(Debug)]
struct FetchPeer {
    /// `metadata_size` from the peer's handshake, if it sent one.
    announced: Option<u64>,
    /// Misbehaved: never asked again.
    struck: bool,
    /// Piece -> deadline of the request outstanding to this peer.
    outstanding: BTreeMap<u32, Instant>,
    /// Pieces whose request timed out; a late answer is still accepted.
    late: BTreeSet<u32>,
    /// Piece -> time before which this peer is not asked for it again.
    avoid: BTreeMap<u32, Instant>,
}

impl FetchPeer {
    fn forget_requests(&mut self) {
        self.outstanding.clear();
        self.late.clear();
        self.avoid.clear();
    }
}

#[derive(Debug)]
struct Attempt<K> {
    size: u64,
    /// Each piece's bytes and the peer that sent them.
    pieces: Vec<Option<(Bytes, K)>>,
    /// Whether a request for the piece is outstanding to some peer.
    assigned: Vec<bool>,
    have: u32,
}

impl<K: Copy + Ord> Attempt<K> {
    fn new(size: u64) -> Self {
        let n = piece_count(size) as usize;
        Attempt {
            size,
            pieces: vec![None; n],
            assigned: vec![false; n],
            have: 0,
        }
    }

    fn unassign(&mut self, piece: u32) {
        if let Some(a) = self.assigned.get_mut(piece as usize) {
            *a = false;
        }
    }
}

#[derive(Debug)]
enum Phase {
    Fetching,
    Done(Info),
    Failed(MetainfoError),
}

/// Downloads and verifies the metadata of one torrent added from a magnet link.
///
/// Sans-IO: the engine reports peers ([`add_peer`](Self::add_peer) after their extension handshake,
/// [`remove_peer`](Self::remove_peer) when they go), drains requests to send with
/// [`poll_request`](Self::poll_request), feeds back data and rejects, and calls
/// [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout). Peers are named by
/// an opaque key `K`.
///
/// The size is settled by the first usable peer (later, after an abandoned attempt, by the size most
/// usable peers announced); peers that disagree are kept aside. Each piece is requested from one peer
/// at a time, preferring the least-loaded peer; a reject or a timeout hands it to another peer.
#[derive(Debug)]
pub struct MetadataFetcher<K> {
    info_hash: InfoHash,
    config: FetcherConfig,
    peers: BTreeMap<K, FetchPeer>,
    banned: BTreeSet<K>,
    /// Peers that misbehaved; kept across a repeated handshake so it cannot wash the strike away.
    struck: BTreeSet<K>,
    attempt: Option<Attempt<K>>,
    phase: Phase,
}

impl<K: Copy + Ord> MetadataFetcher<K> {
    /// A fetcher for the metadata whose SHA-1 is `info_hash`.
    pub fn new(info_hash: InfoHash, config: FetcherConfig) -> Self {
        MetadataFetcher {
            info_hash,
            config,
            peers: BTreeMap::new(),
            banned: BTreeSet::new(),
            struck: BTreeSet::new(),
            attempt: None,
            phase: Phase::Fetching,
        }
    }

    /// The info-hash being fetched.
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    fn max_size(&self) -> u64 {
        self.config.max_metadata_size.min(MAX_METADATA_SIZE_CAP)
    }

    /// Registers a peer after its extension handshake: whether it registered `ut_metadata` and the
    /// `metadata_size` it announced. Adding a known key again (a repeated handshake) replaces it.
    /// `Err` says why the peer will not be asked (see [`PeerRefused`]); only
    /// [`PeerRefused::SizeDisagrees`] keeps the peer around.
    pub fn add_peer(
        &mut self,
        key: K,
        metadata_size: Option<u64>,
        supports: bool,
    ) -> Result<(), PeerRefused> {
        if self.banned.contains(&key) {
            return Err(PeerRefused::Banned);
        }
        self.remove_peer(key);
        if !supports {
            return Err(PeerRefused::NoSupport);
        }
        match metadata_size {
            Some(0) => return Err(PeerRefused::ZeroSize),
            Some(size) if size > self.max_size() => {
                return Err(PeerRefused::TooLarge {
                    size,
                    max: self.max_size(),
                })
            }
            _ => {}
        }
        self.peers.insert(
            key,
            FetchPeer {
                announced: metadata_size,
                struck: self.struck.contains(&key),
                outstanding: BTreeMap::new(),
                late: BTreeSet::new(),
                avoid: BTreeMap::new(),
            },
        );
        if !matches!(self.phase, Phase::Fetching) {
            return Ok(());
        }
        if self.attempt.is_none() {
            self.settle();
        }
        match (&self.attempt, metadata_size) {
            (Some(a), Some(size)) if size != a.size => Err(PeerRefused::SizeDisagrees {
                size,
                settled: a.size,
            }),
            _ => Ok(()),
        }
    }

    /// Forgets a peer (disconnected, or no longer wanted); its outstanding requests go to others.
    pub fn remove_peer(&mut self, key: K) {
        let Some(peer) = self.peers.remove(&key) else {
            return;
        };
        if let Some(a) = self.attempt.as_mut() {
            for piece in peer.outstanding.keys() {
                a.unassign(*piece);
            }
        }
        self.maybe_unsettle();
    }

    /// Whether `key` was banned for contributing to metadata that failed the hash check.
    pub fn is_banned(&self, key: K) -> bool {
        self.banned.contains(&key)
    }

    /// The metadata size the fetch settled on, if any.
    pub fn metadata_size(&self) -> Option<u64> {
        self.attempt.as_ref().map(|a| a.size)
    }

    /// Pieces held and pieces in total for the current attempt (`(0, 0)` before a size is settled).
    pub fn progress(&self) -> (u32, u32) {
        self.attempt
            .as_ref()
            .map_or((0, 0), |a| (a.have, piece_count(a.size)))
    }

    /// Whether the fetch is over (complete or failed for good).
    pub fn is_finished(&self) -> bool {
        !matches!(self.phase, Phase::Fetching)
    }

    /// The verified info dictionary once the fetch is complete; [`Info::raw`] holds the metadata bytes
    /// (to serve with a [`MetadataServer`]).
    pub fn result(&self) -> Option<&Info> {
        match &self.phase {
            Phase::Done(info) => Some(info),
            _ => None,
        }
    }

    /// Why the fetch failed for good: the metadata matched the info-hash but is not a valid info
    /// dictionary.
    pub fn failure(&self) -> Option<&MetainfoError> {
        match &self.phase {
            Phase::Failed(e) => Some(e),
            _ => None,
        }
    }

    fn usable(peer: &FetchPeer, size: u64) -> bool {
        !peer.struck && peer.announced.is_none_or(|s| s == size)
    }

    /// Settles the size (if none) by the most common announcement among usable peers; ties go to the
    /// smaller size so the choice does not depend on arrival order.
    fn settle(&mut self) {
        if self.attempt.is_some() || !matches!(self.phase, Phase::Fetching) {
            return;
        }
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for p in self.peers.values().filter(|p| !p.struck) {
            if let Some(s) = p.announced {
                *votes.entry(s).or_default() += 1;
            }
        }
        let best = votes
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(s, _)| *s);
        if let Some(size) = best {
            self.attempt = Some(Attempt::new(size));
        }
    }

    /// Abandons the settled size if nothing was received yet and no usable peer announced it any more,
    /// then settles again.
    fn maybe_unsettle(&mut self) {
        let Some(a) = &self.attempt else {
            return;
        };
        if a.have > 0 {
            return;
        }
        let size = a.size;
        let backed = self
            .peers
            .values()
            .any(|p| !p.struck && p.announced == Some(size));
        if !backed {
            self.restart();
        }
    }

    /// Drops the current attempt and every request state, then settles again.
    fn restart(&mut self) {
        self.attempt = None;
        for p in self.peers.values_mut() {
            p.forget_requests();
        }
        self.settle();
    }

    fn strike(&mut self, key: K) {
        self.struck.insert(key);
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.struck = true;
            if let Some(a) = self.attempt.as_mut() {
                for piece in peer.outstanding.keys() {
                    a.unassign(*piece);
                }
            }
            peer.forget_requests();
        }
        self.maybe_unsettle();
    }

    /// The next request to send, if any: `(peer, piece)`. Call repeatedly until `None`; encode each as
    /// [`MetadataMessage::Request`] and send it with the peer's `ut_metadata` id.
    pub fn poll_request(&mut self, now: Instant) -> Option<(K, u32)> {
        if !matches!(self.phase, Phase::Fetching) {
            return None;
        }
        let attempt = self.attempt.as_mut()?;
        let size = attempt.size;
        let max = self.config.max_outstanding_per_peer;
        for (index, slot) in attempt.pieces.iter().enumerate() {
            if slot.is_some() || attempt.assigned.get(index).copied().unwrap_or(true) {
                continue;
            }
            let piece = index as u32;
            let chosen = self
                .peers
                .iter()
                .filter(|(_, p)| {
                    Self::usable(p, size)
                        && p.outstanding.len() < max
                        && p.avoid.get(&piece).is_none_or(|until| *until <= now)
                })
                .min_by_key(|(_, p)| p.outstanding.len())
                .map(|(k, _)| *k);
            if let Some(key) = chosen {
                if let Some(p) = self.peers.get_mut(&key) {
                    p.outstanding
                        .insert(piece, now + self.config.request_timeout);
                    p.late.remove(&piece);
                }
                if let Some(a) = attempt.assigned.get_mut(index) {
                    *a = true;
                }
                return Some((key, piece));
            }
        }
        None
    }

    /// All requests to send to `key` right now (a convenience over [`poll_request`](Self::poll_request)
    /// for an engine that handles one peer at a time). Other peers' requests are not assigned.
    pub fn requests_for(&mut self, key: K, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        if !matches!(self.phase, Phase::Fetching) {
            return out;
        }
        let Some(attempt) = self.attempt.as_mut() else {
            return out;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return out;
        };
        if !Self::usable(peer, attempt.size) {
            return out;
        }
        for (index, slot) in attempt.pieces.iter().enumerate() {
            if peer.outstanding.len() >= self.config.max_outstanding_per_peer {
                break;
            }
            let piece = index as u32;
            let free = slot.is_none() && !attempt.assigned.get(index).copied().unwrap_or(true);
            if free && peer.avoid.get(&piece).is_none_or(|until| *until <= now) {
                peer.outstanding
                    .insert(piece, now + self.config.request_timeout);
                peer.late.remove(&piece);
                if let Some(a) = attempt.assigned.get_mut(index) {
                    *a = true;
                }
                out.push(piece);
            }
        }
        out
    }

    /// The peer rejected our request for `piece`: it will be asked of another peer, and not of this
    /// one again for [`FetcherConfig::retry_after`]. Returns whether such a request was outstanding.
    pub fn handle_reject(&mut self, key: K, piece: u32, now: Instant) -> bool {
        let Some(peer) = self.peers.get_mut(&key) else {
            return false;
        };
        if peer.outstanding.remove(&piece).is_none() {
            return false;
        }
        peer.avoid.insert(piece, now + self.config.retry_after);
        if let Some(a) = self.attempt.as_mut() {
            a.unassign(piece);
        }
        true
    }

    /// Expires requests whose deadline has passed (their pieces become available to other peers; a
    /// late answer is still accepted) and forgets avoidances that have run out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let retry = now + self.config.retry_after;
        for peer in self.peers.values_mut() {
            let expired: Vec<u32> = peer
                .outstanding
                .iter()
                .filter(|(_, deadline)| **deadline <= now)
                .map(|(piece, _)| *piece)
                .collect();
            for piece in expired {
                peer.outstanding.remove(&piece);
                peer.late.insert(piece);
                peer.avoid.insert(piece, retry);
                if let Some(a) = self.attempt.as_mut() {
                    a.unassign(piece);
                }
            }
            peer.avoid.retain(|_, until| *until > now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) (and then [`poll_request`](Self::poll_request))
    /// should next be called: the earliest request deadline or end of an avoidance. `None` when there is
    /// nothing to wait for.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !matches!(self.phase, Phase::Fetching) {
            return None;
        }
        self.peers
            .values()
            .flat_map(|p| p.outstanding.values().chain(p.avoid.values()))
            .min()
            .copied()
    }

    /// A data message from `key`. Stores the piece if it was requested from this peer (even after its
    /// timeout) and is well-formed; when the last piece arrives, checks the whole against the info-hash.
    pub fn handle_data(
        &mut self,
        key: K,
        piece: u32,
        total_size: u64,
        data: Bytes,
    ) -> Result<Progress<K>, FetchError> {
        if !matches!(self.phase, Phase::Fetching) {
            return Ok(Progress::Ignored);
        }
        let peer = self.peers.get(&key).ok_or(FetchError::UnknownPeer)?;
        let requested = peer.outstanding.contains_key(&piece) || peer.late.contains(&piece);
        let Some(attempt) = self.attempt.as_ref().filter(|_| requested) else {
            return Err(FetchError::NotRequested { piece });
        };
        if total_size != attempt.size {
            let expected = attempt.size;
            self.strike(key);
            return Err(FetchError::TotalSizeMismatch {
                total_size,
                expected,
            });
        }
        let expected = piece_len(attempt.size, piece).unwrap_or(0);
        if data.len() != expected {
            self.strike(key);
            return Err(FetchError::WrongLength {
                piece,
                len: data.len(),
                expected,
            });
        }
        let Some(attempt) = self.attempt.as_mut() else {
            return Err(FetchError::NotRequested { piece });
        };
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.outstanding.remove(&piece);
            peer.late.remove(&piece);
        }
        let index = piece as usize;
        match attempt.pieces.get_mut(index) {
            Some(slot @ None) => *slot = Some((data, key)),
            _ => return Ok(Progress::Ignored),
        }
        attempt.have += 1;
        attempt.unassign(piece);
        // Anyone else still asked for this piece: their answer is now welcome but unneeded.
        for p in self.peers.values_mut() {
            if p.outstanding.remove(&piece).is_some() {
                p.late.insert(piece);
            }
        }
        let pieces = piece_count(attempt.size);
        if attempt.have < pieces {
            return Ok(Progress::Stored {
                have: attempt.have,
                pieces,
            });
        }
        Ok(self.finish())
    }

    fn finish(&mut self) -> Progress<K> {
        let Some(attempt) = self.attempt.take() else {
            return Progress::Ignored;
        };
        let mut raw = Vec::with_capacity(usize::try_from(attempt.size).unwrap_or(0));
        let mut contributors = BTreeSet::new();
        for (data, from) in attempt.pieces.iter().flatten() {
            raw.extend_from_slice(data);
            contributors.insert(*from);
        }
        match Info::from_metadata(&raw, self.info_hash) {
            Ok(info) => {
                self.phase = Phase::Done(info);
                for p in self.peers.values_mut() {
                    p.forget_requests();
                }
                Progress::Complete
            }
            Err(MetainfoError::InfoHashMismatch { .. }) => {
                for key in &contributors {
                    self.peers.remove(key);
                    self.banned.insert(*key);
                }
                self.restart();
                Progress::HashMismatch {
                    bad_peers: contributors.into_iter().collect(),
                }
            }
            Err(e) => {
                self.phase = Phase::Failed(e.clone());
                Progress::Invalid(e)
            }
        }
    }
}

/// Answers `ut_metadata` requests from other peers.
///
/// Without metadata (a magnet link still being fetched) every request is rejected; with it, a request
/// for a piece in range gets the piece, one out of range a reject. Rate limiting, if wanted, is the
/// engine's (for example, answer at most a few requests per peer per second).
#[derive(Debug, Clone, Default)]
pub struct MetadataServer {
    metadata: Option<Bytes>,
}

impl MetadataServer {
    /// A server with or without the metadata (the raw bytes of the info dictionary, [`Info::raw`]).
    pub fn new(metadata: Option<Bytes>) -> Self {
        MetadataServer { metadata }
    }

    /// Provides the metadata once it is known (a magnet fetch completed).
    pub fn set_metadata(&mut self, metadata: Bytes) {
        self.metadata = Some(metadata);
    }

    /// The size to announce as `metadata_size` in our extension handshake, once known.
    pub fn metadata_size(&self) -> Option<u64> {
        self.metadata.as_ref().map(|m| m.len() as u64)
    }

    /// The answer to a request for `piece`: data (a zero-copy slice) or a reject.
    pub fn handle_request(&self, piece: u32) -> MetadataMessage {
        let Some(meta) = &self.metadata else {
            return MetadataMessage::Reject { piece };
        };
        let total_size = meta.len() as u64;
        let Some(len) = piece_len(total_size, piece) else {
            return MetadataMessage::Reject { piece };
        };
        let start = piece as usize * METADATA_PIECE_LEN;
        MetadataMessage::Data {
            piece,
            total_size,
            data: meta.slice(start..start + len),
        }
    }

    /// The answer to any incoming message: `Some` for a request, `None` for data and rejects (which a
    /// server does not answer).
    pub fn respond(&self, message: &MetadataMessage) -> Option<MetadataMessage> {
        match message {
            MetadataMessage::Request { piece } => Some(self.handle_request(*piece)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha1::{Digest, Sha1};

    /// A valid info dictionary of `hashes` pieces, about `hashes * 20 + 60` bytes; `salt` varies the
    /// name so two dictionaries of the same size differ.
    fn info_bytes(hashes: usize, salt: u8) -> Vec<u8> {
        let pieces: Vec<u8> = (0..hashes * 20).map(|i| (i % 251) as u8 ^ salt).collect();
        OwnedValue::dict()
            .with("name", format!("magnet-{salt:03}"))
            .with("piece length", 16_384i64)
            .with("length", (hashes as i64) * 16_384)
            .with("pieces", pieces)
            .encode()
    }

    fn hash(raw: &[u8]) -> InfoHash {
        InfoHash(Sha1::digest(raw).into())
    }

    fn piece_of(raw: &[u8], piece: u32) -> Bytes {
        let len = piece_len(raw.len() as u64, piece).unwrap();
        let start = piece as usize * METADATA_PIECE_LEN;
        Bytes::copy_from_slice(&raw[start..start + len])
    }

    fn drain(f: &mut MetadataFetcher<u32>, now: Instant) -> Vec<(u32, u32)> {
        std::iter::from_fn(|| f.poll_request(now)).collect()
    }

    #[test]
    fn messages_encode_as_bep9_shows() {
        assert_eq!(
            MetadataMessage::Request { piece: 0 }.encode(),
            b"d8:msg_typei0e5:piecei0ee".to_vec()
        );
        assert_eq!(
            MetadataMessage::Reject { piece: 3 }.encode(),
            b"d8:msg_typei2e5:piecei3ee".to_vec()
        );
        let data = MetadataMessage::Data {
            piece: 1,
            total_size: 16_390,
            data: Bytes::from_static(b"abcdef"),
        };
        let bytes = data.encode();
        assert_eq!(
            bytes,
            b"d8:msg_typei1e5:piecei1e10:total_sizei16390eeabcdef".to_vec()
        );
        assert_eq!(MetadataMessage::decode(&Bytes::from(bytes)), Ok(data));
    }

    #[test]
    fn decoding_errors_name_the_problem() {
        let dec = |b: &'static [u8]| MetadataMessage::decode(&Bytes::from_static(b));
        assert_eq!(
            dec(b"li1ee"),
            Err(MetadataMessageError::NotADictionary("list"))
        );
        assert_eq!(
            dec(b"d8:msg_typei0ee"),
            Err(MetadataMessageError::MissingField("piece"))
        );
        assert_eq!(
            dec(b"d5:piecei0ee"),
            Err(MetadataMessageError::MissingField("msg_type"))
        );
        assert_eq!(
            dec(b"d8:msg_typei0e5:piecei-1ee"),
            Err(MetadataMessageError::OutOfRange {
                field: "piece",
                value: -1
            })
        );
        assert_eq!(
            dec(b"d8:msg_typei0e5:piece1:xe"),
            Err(MetadataMessageError::NotAnInteger {
                field: "piece",
                offset: 21,
                found: "byte string"
            })
        );
        assert_eq!(
            dec(b"d8:msg_typei7e5:piecei0ee"),
            Err(MetadataMessageError::UnknownType(7))
        );
        assert_eq!(
            dec(b"d8:msg_typei1e5:piecei0ee"),
            Err(MetadataMessageError::MissingField("total_size"))
        );
        assert_eq!(
            dec(b"d8:msg_typei2e5:piecei0eexyz"),
            Err(MetadataMessageError::TrailingBytes {
                kind: "reject",
                offset: 25,
                len: 3
            })
        );
        assert!(matches!(
            dec(b"d8:msg_typei0e5:piecei0e"),
            Err(MetadataMessageError::Bencode(_))
        ));
        let mut long = b"d8:msg_typei1e5:piecei0e10:total_sizei99999ee".to_vec();
        long.resize(long.len() + METADATA_PIECE_LEN + 1, 0);
        assert_eq!(
            MetadataMessage::decode(&Bytes::from(long)),
            Err(MetadataMessageError::DataTooLong {
                len: METADATA_PIECE_LEN + 1,
                max: METADATA_PIECE_LEN
            })
        );
        let err = dec(b"d8:msg_typei0e5:piece1:xe").unwrap_err().to_string();
        assert!(err.contains("piece") && err.contains("21"), "{err}");
    }

    #[test]
    fn piece_geometry() {
        assert_eq!(piece_count(1), 1);
        assert_eq!(piece_count(16_384), 1);
        assert_eq!(piece_count(16_385), 2);
        assert_eq!(piece_len(16_385, 0), Some(16_384));
        assert_eq!(piece_len(16_385, 1), Some(1));
        assert_eq!(piece_len(16_385, 2), None);
        assert_eq!(piece_len(16_384, 1), None);
        assert_eq!(piece_len(u64::MAX, u32::MAX), Some(16_384));
    }

    #[test]
    fn metadata_assembled_out_of_order_from_two_peers() {
        let raw = info_bytes(2_000, 1);
        let size = raw.len() as u64;
        assert_eq!(piece_count(size), 3);
        let mut f = MetadataFetcher::new(hash(&raw), FetcherConfig::default());
        let now = Instant::from_secs(1);
        assert_eq!(f.poll_request(now), None, "no peers yet");
        f.add_peer(1, Some(size), true).unwrap();
        f.add_peer(2, None, true).unwrap();
        assert_eq!(f.metadata_size(), Some(size));
        let reqs = drain(&mut f, now);
        assert_eq!(reqs.len(), 3);
        let from: BTreeSet<u32> = reqs.iter().map(|(k, _)| *k).collect();
        assert_eq!(from, BTreeSet::from([1, 2]), "both peers are used");
        // Answer in reverse order.
        for (i, (key, piece)) in reqs.iter().rev().enumerate() {
            let p = f
                .handle_data(*key, *piece, size, piece_of(&raw, *piece))
                .unwrap();
            if i < 2 {
                assert_eq!(
                    p,
                    Progress::Stored {
                        have: i as u32 + 1,
                        pieces: 3
                    }
                );
            } else {
                assert_eq!(p, Progress::Complete);
            }
        }
        let info = f.result().unwrap();
        assert_eq!(&info.raw()[..], &raw[..]);
        assert_eq!(info.info_hash(), hash(&raw));
        assert!(f.is_finished());
        assert_eq!(f.poll_request(now), None);
        assert_eq!(f.poll_timeout(), None);
    }

    #[test]
    fn requests_per_peer_are_capped() {
        let raw = info_bytes(5_000, 2); // 7 pieces
        let size = raw.len() as u64;
        let config = FetcherConfig {
            max_outstanding_per_peer: 2,
            ..FetcherConfig::default()
        };
        let mut f = MetadataFetcher::new(hash(&raw), config);
        f.add_peer(7, Some(size), true).unwrap();
        let now = Instant::ZERO;
        assert_eq!(f.requests_for(7, now), vec![0, 1]);
        assert_eq!(f.poll_request(now), None);
        f.add_peer(8, Some(size), true).unwrap();
        assert_eq!(drain(&mut f, now), vec![(8, 2), (8, 3)]);
        f.handle_data(7, 0, size, piece_of(&raw, 0)).unwrap();
        assert_eq!(f.poll_request(now), Some((7, 4)));
    }

    #[test]
    fn lying_sizes_are_refused() {
        let raw = info_bytes(2_000, 3);
        let size = raw.len() as u64;
        let mut f = MetadataFetcher::new(hash(&raw), FetcherConfig::default());
        assert_eq!(f.add_peer(1, Some(0), true), Err(PeerRefused::ZeroSize));
        assert_eq!(
            f.add_peer(2, Some(DEFAULT_MAX_METADATA_SIZE + 1), true),
            Err(PeerRefused::TooLarge {
                size: DEFAULT_MAX_METADATA_SIZE + 1,
                max: DEFAULT_MAX_METADATA_SIZE
            })
        );
        assert_eq!(
            f.add_peer(3, Some(size), false),
            Err(PeerRefused::NoSupport)
        );
        assert_eq!(f.metadata_size(), None);
        f.add_peer(4, Some(size), true).unwrap();
        assert_eq!(
            f.add_peer(5, Some(size + 10), true),
            Err(PeerRefused::SizeDisagrees {
                size: size + 10,
                settled: size
            })
        );
        let now = Instant::ZERO;
        let reqs = drain(&mut f, now);
        assert!(reqs.iter().all(|(k, _)| *k == 4), "{reqs:?}");
        // A data message claiming another total size is refused and strikes the peer.
        let (k, piece) = reqs[0];
        assert_eq!(
            f.handle_data(k, piece, size + 10, piece_of(&raw, piece)),
            Err(FetchError::TotalSizeMismatch {
                total_size: size + 10,
                expected: size
            })
        );
        // Peer 4 was the only backer of the size and nothing was received: the size is settled again
        // from the remaining peer.
        assert_eq!(f.metadata_size(), Some(size + 10));
        assert_eq!(f.poll_request(now).map(|(k, _)| k), Some(5));
    }

    #[test]
    fn disagreeing_peer_is_used_after_liar_leaves() {
        let raw = info_bytes(2_000, 4);
        let size = raw.len() as u64;
        let mut f = MetadataFetcher::new(hash(&raw), FetcherConfig::default());
        f.add_peer(1, Some(size * 2), true).unwrap(); // liar first
        assert!(matches!(
            f.add_peer(2, Some(size), true),
            Err(PeerRefused::SizeDisagrees { .. })
        ));
        let now = Instant::ZERO;
        assert!(drain(&mut f, now).iter().all(|(k, _)| *k == 1));
        f.remove_peer(1);
        assert_eq!(f.metadata_size(), Some(size));
        let reqs = drain(&mut f, now);
        assert_eq!(reqs.len(), 2);
        for (k, piece) in reqs {
            assert_eq!(k, 2);
            f.handle_data(k, piece, size, piece_of(&raw, piece))
                .unwrap();
        }
        let reqs = drain(&mut f, now);
        for (k, piece) in reqs {
            f.handle_data(k, piece, size, piece_of(&raw, piece))
                .unwrap();
        }
        assert!(f.result().is_some());
    }

    #[test]
    fn majority_size_wins_when_resettling() {
        let mut f = MetadataFetcher::new(InfoHash([1; 20]), FetcherConfig::default());
        f.add_peer(1, Some(500), true).unwrap();
        for k in 2..5 {
            assert!(f.add_peer(k, Some(900), true).is_err());
        }
        f.add_peer(5, Some(100), true).unwrap_err();
        f.remove_peer(1);
        assert_eq!(f.metadata_size(), Some(900));
    }

    #[test]
    fn wrong_metadata_bans_contributors_and_refetch_succeeds() {
        let raw = info_bytes(2_000, 5);
        let size = raw.len() as u64;
        let mut evil = raw.clone();
        let last = evil.len() - 2;
        evil[last] ^= 0xff; // same size, different content
        let mut f = MetadataFetcher::new(hash(&raw), FetcherConfig::default());
        let now = Instant::from_secs(5);
        f.add_peer(10, Some(size), true).unwrap();
        f.add_peer(11, Some(size), true).unwrap();
        let reqs = drain(&mut f, now);
        assert_eq!(reqs.len(), 3);
        // The honest peer joins only now, so it has nothing outstanding.
        f.add_peer(12, Some(size), true).unwrap();
        let mut last_progress = None;
        for (k, piece) in reqs {
            // Both early peers serve the forged bytes.
            last_progress = Some(
                f.handle_data(k, piece, size, piece_of(&evil, piece))
                    .unwrap(),
            );
        }
        assert_eq!(
            last_progress,
            Some(Progress::HashMismatch {
                bad_peers: vec![10, 11]
            })
        );
        assert!(f.is_banned(10) && f.is_banned(11) && !f.is_banned(12));
        assert_eq!(f.add_peer(10, Some(size), true), Err(PeerRefused::Banned));
        assert_eq!(f.progress(), (0, 3));
        assert_eq!(
            f.handle_data(10, 0, size, piece_of(&raw, 0)),
            Err(FetchError::UnknownPeer)
        );
        let reqs = drain(&mut f, now);
        assert_eq!(reqs.len(), 2, "capped at two outstanding for the one peer");
        let mut done = false;
        for _ in 0..3 {
            for (k, piece) in drain(&mut f, now) {
                assert_eq!(k, 12);
                done = f
                    .handle_data(k, piece, size, piece_of(&raw, piece))
                    .unwrap()
                    == Progress::Complete;
            }
            for (k, piece) in reqs.iter().copied() {
                if !done {
                    done = f
                        .handle_data(k, piece, size, piece_of(&raw, piece))
                        .unwrap()
                        == Progress::Complete;
                }
            }
        }
        assert!(done);
        assert_eq!(f.result().map(|i| i.info_hash()), Some(hash(&raw)));
    }

    #[test]
    fn reject_makes_another_peer_be_asked() {
        let raw = info_bytes(100, 6); // one piece
        let size = raw.len() as u64;
        let config = FetcherConfig::default();
        let mut f = MetadataFetcher::new(hash(&raw), config);
        let now = Instant::from_secs(1);
        f.add_peer(1, Some(size), true).unwrap();
        f.add_peer(2, Some(size), true).unwrap();
        let (first, piece) = f.poll_request(now).unwrap();
        assert_eq!(f.poll_request(now), None, "one piece, asked once");
        assert!(f.handle_reject(first, piece, now));
        assert!(!f.handle_reject(first, piece, now), "already released");
        let (second, again) = f.poll_request(now).unwrap();
        assert_eq!(again, piece);
        assert_ne!(second, first);
        // The second also rejects: nobody is asked until the first's avoidance runs out.
        assert!(f.handle_reject(second, piece, now));
        assert_eq!(f.poll_request(now), None);
        let wake = f.poll_timeout().unwrap();
        assert_eq!(wake, now + config.retry_after);
        f.handle_timeout(wake);
        assert!(f.poll_request(wake).is_some());
        // Data for a piece that was rejected and never asked again is unrequested.
        let mut g = MetadataFetcher::new(hash(&raw), config);
        g.add_peer(1, Some(size), true).unwrap();
        let (k, p) = g.poll_request(now).unwrap();
        g.handle_reject(k, p, now);
        assert_eq!(
            g.handle_data(k, p, size, piece_of(&raw, p)),
            Err(FetchError::NotRequested { piece: p })
        );
    }

    #[test]
    fn timed_out_request_goes_to_another_peer_and_late_data_counts() {
        let raw = info_bytes(100, 7);
        let size = raw.len() as u64;
        let config = FetcherConfig::default();
        let mut f = MetadataFetcher::new(hash(&raw), config);
        let t0 = Instant::from_secs(100);
        f.add_peer(1, Some(size), true).unwrap();
        f.add_peer(2, Some(size), true).unwrap();
        let (slow, piece) = f.poll_request(t0).unwrap();
        assert_eq!(f.poll_timeout(), Some(t0 + config.request_timeout));
        f.handle_timeout(t0 + (config.request_timeout - Duration::from_millis(1)));
        assert_eq!(f.poll_request(t0), None, "not yet expired");
        let t1 = t0 + config.request_timeout;
        f.handle_timeout(t1);
        let (fast, again) = f.poll_request(t1).unwrap();
        assert_eq!((again, fast != slow), (piece, true));
        // The slow peer answers late: still welcome, and completes the fetch.
        assert_eq!(
            f.handle_data(slow, piece, size, piece_of(&raw, piece)),
            Ok(Progress::Complete)
        );
        assert!(f.result().is_some());
        assert_eq!(
            f.handle_data(fast, piece, size, piece_of(&raw, piece)),
            Ok(Progress::Ignored)
        );
    }

    #[test]
    fn removed_peer_requests_are_reassigned() {
        let raw = info_bytes(100, 8);
        let size = raw.len() as u64;
        let mut f = MetadataFetcher::new(hash(&raw), FetcherConfig::default());
        let now = Instant::ZERO;
        f.add_peer(1, Some(size), true).unwrap();
        f.add_peer(2, Some(size), true).unwrap();
        f.add_peer(3, None, true).unwrap();
        assert_eq!(f.poll_request(now), Some((1, 0)));
        f.remove_peer(1);
        assert_eq!(f.poll_request(now), Some((2, 0)));
        // Peer 3 announced no size and backs nothing: when the last backer leaves, the size is
        // abandoned and nobody is asked until a peer announces one.
        f.remove_peer(2);
        assert_eq!(f.metadata_size(), None);
        assert_eq!(f.poll_request(now), None);
        f.add_peer(4, Some(size), true).unwrap();
        assert_eq!(
            f.poll_request(now),
            Some((3, 0)),
            "the size-less peer helps again"
        );
    }

    #[test]
    fn bad_data_is_refused_and_strikes_the_peer() {
        let raw = info_bytes(2_000, 9);
        let size = raw.len() as u64;
        let mut f = MetadataFetcher::new(hash(&raw), FetcherConfig::default());
        let now = Instant::ZERO;
        f.add_peer(1, Some(size), true).unwrap();
        f.add_peer(2, Some(size), true).unwrap();
        let reqs = drain(&mut f, now);
        assert_eq!(reqs, vec![(1, 0), (2, 1), (1, 2)]);
        let (k, piece) = reqs[1];
        assert_eq!(
            f.handle_data(k, 2, size, piece_of(&raw, 2)).unwrap_err(),
            FetchError::NotRequested { piece: 2 }
        );
        assert_eq!(
            f.handle_data(99, piece, size, piece_of(&raw, piece)),
            Err(FetchError::UnknownPeer)
        );
        assert_eq!(
            f.handle_data(k, piece, size, Bytes::from_static(b"short")),
            Err(FetchError::WrongLength {
                piece,
                len: 5,
                expected: METADATA_PIECE_LEN
            })
        );
        // Struck: its request went back to the pool and it is never asked again, not even after a
        // repeated extension handshake.
        f.handle_data(1, 0, size, piece_of(&raw, 0)).unwrap();
        assert_eq!(drain(&mut f, now), vec![(1, 1)]);
        f.add_peer(k, Some(size), true).unwrap();
        assert!(f.handle_reject(1, 1, now));
        assert_eq!(
            drain(&mut f, now),
            vec![],
            "peer 1 avoids piece 1, peer 2 is struck"
        );
        assert_eq!(
            f.handle_data(k, piece, size, piece_of(&raw, piece)),
            Err(FetchError::NotRequested { piece })
        );
    }

    #[test]
    fn valid_hash_but_broken_dictionary_fails_for_good() {
        let raw = b"d4:name1:xe".to_vec();
        let size = raw.len() as u64;
        let mut f = MetadataFetcher::new(hash(&raw), FetcherConfig::default());
        f.add_peer(1, Some(size), true).unwrap();
        let (k, p) = f.poll_request(Instant::ZERO).unwrap();
        let progress = f.handle_data(k, p, size, Bytes::from(raw)).unwrap();
        assert!(matches!(progress, Progress::Invalid(_)), "{progress:?}");
        assert!(f.failure().is_some() && f.is_finished() && f.result().is_none());
    }

    #[test]
    fn server_answers_requests() {
        let raw = Bytes::from(info_bytes(2_000, 10));
        let size = raw.len() as u64;
        let server = MetadataServer::new(None);
        assert_eq!(server.metadata_size(), None);
        assert_eq!(
            server.handle_request(0),
            MetadataMessage::Reject { piece: 0 }
        );
        let mut server = MetadataServer::default();
        server.set_metadata(raw.clone());
        assert_eq!(server.metadata_size(), Some(size));
        for piece in 0..3 {
            match server.respond(&MetadataMessage::Request { piece }) {
                Some(MetadataMessage::Data {
                    piece: p,
                    total_size,
                    data,
                }) => {
                    assert_eq!((p, total_size), (piece, size));
                    assert_eq!(data, piece_of(&raw, piece));
                }
                other => panic!("piece {piece}: {other:?}"),
            }
        }
        assert_eq!(
            server.handle_request(3),
            MetadataMessage::Reject { piece: 3 }
        );
        assert_eq!(
            server.handle_request(u32::MAX),
            MetadataMessage::Reject { piece: u32::MAX }
        );
        assert_eq!(server.respond(&MetadataMessage::Reject { piece: 0 }), None);
    }

    #[test]
    fn server_feeds_fetcher_end_to_end() {
        let raw = info_bytes(3_000, 11);
        let server = MetadataServer::new(Some(Bytes::from(raw.clone())));
        let mut f = MetadataFetcher::new(hash(&raw), FetcherConfig::default());
        f.add_peer(1, server.metadata_size(), true).unwrap();
        let mut now = Instant::ZERO;
        while !f.is_finished() {
            let reqs = drain(&mut f, now);
            assert!(!reqs.is_empty());
            for (k, piece) in reqs {
                let wire = MetadataMessage::Request { piece }.encode();
                let req = MetadataMessage::decode(&Bytes::from(wire)).unwrap();
                let answer = server.respond(&req).unwrap().encode();
                match MetadataMessage::decode(&Bytes::from(answer)).unwrap() {
                    MetadataMessage::Data {
                        piece,
                        total_size,
                        data,
                    } => {
                        f.handle_data(k, piece, total_size, data).unwrap();
                    }
                    other => panic!("{other:?}"),
                }
            }
            now += Duration::from_millis(10);
        }
        assert_eq!(&f.result().unwrap().raw()[..], &raw[..]);
    }

    fn message() -> impl Strategy<Value = MetadataMessage> {
        prop_oneof![
            any::<u32>().prop_map(|piece| MetadataMessage::Request { piece }),
            any::<u32>().prop_map(|piece| MetadataMessage::Reject { piece }),
            (
                any::<u32>(),
                0..=i64::MAX as u64,
                proptest::collection::vec(any::<u8>(), 0..600)
            )
                .prop_map(|(piece, total_size, data)| MetadataMessage::Data {
                    piece,
                    total_size,
                    data: Bytes::from(data)
                }),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = MetadataMessage::decode(&Bytes::from(bytes));
        }

        #[test]
        fn decode_never_panics_on_near_valid(
            msg in message(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut bytes = msg.encode();
            let i = flip.index(bytes.len());
            bytes[i] ^= 0x5a;
            let _ = MetadataMessage::decode(&Bytes::from(bytes.clone()));
            bytes.truncate(cut.index(bytes.len()));
            let _ = MetadataMessage::decode(&Bytes::from(bytes));
        }

        #[test]
        fn encode_decode_round_trip(msg in message()) {
            let bytes = Bytes::from(msg.encode());
            prop_assert_eq!(MetadataMessage::decode(&bytes), Ok(msg));
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random rejects, losses and answer orders over up to four peers never stop the fetch.
        #[test]
        fn fetch_completes_under_any_answer_order(seed in any::<u64>(), peers in 1u32..5) {
            use crate::rng::{seeded, RngExt};
            use rand::seq::SliceRandom;
            let raw = info_bytes(2_500, 12);
            let size = raw.len() as u64;
            let mut rng = seeded(seed);
            let mut f = MetadataFetcher::new(hash(&raw), FetcherConfig::default());
            for k in 0..peers {
                f.add_peer(k, Some(size), true).unwrap();
            }
            let mut now = Instant::ZERO;
            for _ in 0..100 {
                if f.is_finished() {
                    break;
                }
                let mut reqs = drain(&mut f, now);
                reqs.shuffle(&mut rng);
                for (k, piece) in reqs {
                    match rng.random_range(0..4u8) {
                        0 => { f.handle_reject(k, piece, now); }
                        1 => {} // lost: the timeout will catch it
                        _ => { f.handle_data(k, piece, size, piece_of(&raw, piece)).unwrap(); }
                    }
                }
                now = f.poll_timeout().unwrap_or(now).max(now);
                f.handle_timeout(now);
            }
            prop_assert!(f.result().is_some());
        }
    }
}

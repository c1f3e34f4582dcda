//! The peer session: one connection's protocol state, sans-IO.
//!
//! A [`PeerSession`] sits on top of the wire codec ([`crate::wire`]) and knows what messages *mean* for
//! one connection: the handshake and extension negotiation (BEP 3, BEP 6 fast extension, BEP 10
//! extension protocol), the four choke/interest flags, the peer's piece set, our outstanding requests
//! (with timeouts, snubbing and a queue depth adapted to the peer's rate), and the peer's requests to
//! us (validated, capped, handed up as disk-read events, answered zero-copy).
//!
//! It does not choose pieces (the torrent layer asks the picker and then calls
//! [`PeerSession::request`]) and it does not read disks (it emits [`Event::ReadRequest`] and is
//! handed the block with [`PeerSession::send_block`]). Everything goes through four doors:
//! - bytes in: [`PeerSession::handle_read`] (or [`PeerSession::read_buf`] +
//!   [`PeerSession::handle_read_buf`] to read straight into the decoder's buffer);
//! - bytes out: [`PeerSession::poll_transmit`] until `None` (piece payloads come out as their own
//!   `Bytes`, never copied);
//! - events out: [`PeerSession::poll_event`] until `None`;
//! - time: [`PeerSession::poll_timeout`] says when to call [`PeerSession::handle_timeout`].
//!
//! Every input takes `now`; the session never reads a clock. Errors end the session: they become an
//! [`Event::Closed`], stay readable through [`PeerSession::error`], and every later input is ignored.
//!
//! # Limits
//! Everything a peer can make the session hold is capped by [`SessionConfig`]: the decoder's frame
//! length (the bitfield of the real piece count or a 16 KiB block plus extension slack, whichever is
//! larger), the queue of requests the peer made to us, the bytes waiting to be sent, the bytes buffered
//! before an incoming handshake is accepted, the number of blocks it sent unasked, and the number of
//! `allowed fast` pieces we remember. A peer that goes past a cap is disconnected with an error that
//! names the cap.
//!
//! # Before the metadata (magnet links)
//! A torrent added from a magnet link has no piece count until its info dictionary is fetched, so a
//! session can start without a [`Geometry`] ([`PeerSession::outgoing_without_metadata`],
//! [`PeerSession::accept_without_metadata`]) and learn it later with [`PeerSession::set_geometry`].
//! Meanwhile:
//! - we announce nothing but `have none` (fast extension) or nothing at all: no bitfield;
//! - the peer's bitfield is kept raw (bounded by the frame limit) and its `have`s in a bit set bounded
//!   by [`MAX_PIECES_WITHOUT_METADATA`]; `have all` / `have none` work as usual;
//! - once the geometry is set, the raw bitfield is validated (wrong length or spare bits end the
//!   session, as they would have at once), the early `have`s are range-checked and merged, and the
//!   peer's have-state is emitted again ([`Event::Bitfield`] or [`Event::HaveAll`]);
//! - requests from the peer are rejected (fast extension) or dropped, `suggest` is ignored, and
//!   `allowed fast` pieces are range-checked later.
//!
//! # Choices
//! - Requests for more than 16 KiB are a protocol error that closes the connection, as BEP 3 describes
//!   current implementations doing; every client in use requests 16 KiB blocks.
//! - Requests while we choke the peer (and the piece is not one we allowed fast) are rejected under the
//!   fast extension and silently dropped without it.
//! - Blocks that arrive after we cancelled, timed out or (choke without fast extension) gave up on their
//!   request are counted as waste and dropped quietly; blocks we never asked for are waste too, and more
//!   than [`SessionConfig::max_unrequested_blocks`] of them end the session.

mod rate;
mod session;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_magnet;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::bitfield::BitfieldError;
use crate::types::{InfoHash, PeerId};
use crate::wire::{DecodeError, Reserved};

pub use crate::picker::BlockRequest;
pub use rate::RateMeter;
pub use session::PeerSession;

/// The largest block a peer may request from us (and the largest we request): 16 KiB.
pub const MAX_BLOCK_LEN: u32 = 16 * 1024;

/// The client name sent as `v` in the BEP 10 extension handshake.
pub const CLIENT_VERSION: &str = "Hyperblow 0.1.0";

/// Tunables of a peer session. [`SessionConfig::default`] gives the values described on each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Extension bits we advertise (default: fast extension and extension protocol).
    pub reserved: Reserved,
    /// Send a keep-alive after this long without sending anything (default 2 min).
    pub keepalive_interval: Duration,
    /// Close after this long without receiving anything (default 3 min).
    pub idle_timeout: Duration,
    /// Close if the peer's handshake has not arrived (and, for an incoming connection, been accepted)
    /// this long after the session started (default 30 s).
    pub handshake_timeout: Duration,
    /// A request still unanswered this long after it was sent is given up and handed back in
    /// [`Event::RequestsTimedOut`] (default 60 s).
    pub request_timeout: Duration,
    /// The peer is snubbed when no block arrived for this long while requests were outstanding
    /// (default 60 s).
    pub snub_timeout: Duration,
    /// Target amount of data in flight, in seconds of the peer's measured rate (default 2 s).
    pub queue_time: Duration,
    /// Smallest request queue depth for a peer that is not snubbed (default 2).
    pub min_queue_depth: u32,
    /// Largest request queue depth (default 250).
    pub max_queue_depth: u32,
    /// The peer's request queue limit assumed when it did not send `reqq` (default 250, libtorrent's).
    pub assumed_peer_reqq: u32,
    /// Window of the download and upload rate meters (default 5 s).
    pub rate_window: Duration,
    /// Most requests from the peer we hold at once; one more closes the connection (default 500, also
    /// advertised to the peer as our `reqq`).
    pub max_incoming_requests: u32,
    /// Most bytes waiting in the send queue; a peer that makes us go past this (by not reading while it
    /// keeps asking) is disconnected (default 8 MiB). The layer above should stop issuing disk reads
    /// well before, watching [`PeerSession::outgoing_len`].
    pub max_outgoing_bytes: usize,
    /// Most bytes buffered after an incoming handshake before the layer above accepted it (default
    /// 256 KiB).
    pub max_buffered_before_accept: usize,
    /// Blocks the peer may send that we never asked for before it is disconnected (default 4).
    pub max_unrequested_blocks: u32,
    /// Most `allowed fast` pieces remembered from the peer (default 64; BEP 6 suggests sets of 10).
    pub max_allowed_fast: usize,
    /// Extension messages we support, advertised in the BEP 10 handshake's `m` (default empty).
    pub extensions: BTreeMap<String, u8>,
    /// Our TCP listen port, advertised as `p` in the BEP 10 handshake (default none).
    pub listen_port: Option<u16>,
    /// Advertise `e: 1` (we accept MSE/PE encrypted connections) in the BEP 10 handshake (default
    /// off; the engine turns it on unless its encryption policy is `disable`).
    pub advertise_encryption: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            reserved: Reserved::FAST | Reserved::EXTENSION_PROTOCOL,
            keepalive_interval: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(180),
            handshake_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            snub_timeout: Duration::from_secs(60),
            queue_time: Duration::from_secs(2),
            min_queue_depth: 2,
            max_queue_depth: 250,
            assumed_peer_reqq: 250,
            rate_window: Duration::from_secs(5),
            max_incoming_requests: 500,
            max_outgoing_bytes: 8 * 1024 * 1024,
            max_buffered_before_accept: 256 * 1024,
            max_unrequested_blocks: 4,
            max_allowed_fast: 64,
            extensions: BTreeMap::new(),
            listen_port: None,
            advertise_encryption: false,
        }
    }
}

/// The most pieces a torrent can have whose metadata fits the default metadata cap (16 MiB of info
/// dictionary at 20 bytes of hash per piece). Before the metadata is known (a magnet link) a peer's
/// `have` for a piece at or past this index cannot be valid and ends the session, and the frame limit
/// leaves room for a bitfield of this many pieces.
pub const MAX_PIECES_WITHOUT_METADATA: u32 =
    (crate::ext::metadata::DEFAULT_MAX_METADATA_SIZE / 20) as u32;

/// What our BEP 10 extension handshake carries besides `v`, `reqq` and `p`, set per connection with
/// [`PeerSession::set_our_extensions`] (it depends on the torrent and the peer, which a shared
/// [`SessionConfig`] cannot know).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OurExtensions {
    /// Our `m` map: extension name to the id the peer should send it to us with.
    pub messages: BTreeMap<String, u8>,
    /// `metadata_size` (BEP 9): the size of the info dictionary, once we have it.
    pub metadata_size: Option<u64>,
    /// `yourip`: the peer's address as we see it (sent as 4 or 16 bytes), so it can learn its
    /// external address.
    pub your_ip: Option<IpAddr>,
}

/// The shape of a torrent as far as block addresses go: piece length and total length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    piece_length: u32,
    total_length: u64,
    pieces: u32,
}

impl Geometry {
    /// The geometry of a torrent of `total_length` bytes in pieces of `piece_length` bytes (the last
    /// one may be shorter). Fails if the piece length is zero or the piece count does not fit a `u32`.
    pub fn new(piece_length: u32, total_length: u64) -> Result<Geometry, SetupError> {
        if piece_length == 0 {
            return Err(SetupError::ZeroPieceLength);
        }
        let pieces =
            u32::try_from(total_length.div_ceil(u64::from(piece_length))).map_err(|_| {
                SetupError::TooManyPieces {
                    piece_length,
                    total_length,
                }
            })?;
        Ok(Geometry {
            piece_length,
            total_length,
            pieces,
        })
    }

    /// Number of pieces.
    pub fn pieces(&self) -> u32 {
        self.pieces
    }

    /// Size of `piece` in bytes (0 when out of range).
    pub fn piece_size(&self, piece: u32) -> u32 {
        if piece >= self.pieces {
            return 0;
        }
        let start = u64::from(piece) * u64::from(self.piece_length);
        let left = self.total_length.saturating_sub(start);
        left.min(u64::from(self.piece_length)) as u32
    }

    /// Whether `block` lies inside its piece and is 1..=[`MAX_BLOCK_LEN`] bytes long.
    pub fn block_is_valid(&self, block: &BlockRequest) -> bool {
        block.length > 0
            && block.length <= MAX_BLOCK_LEN
            && u64::from(block.offset) + u64::from(block.length)
                <= u64::from(self.piece_size(block.piece))
    }
}

/// A misuse of the session API by the layer above (never caused by the peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// [`Geometry::new`] with a piece length of zero.
    #[error("piece length is zero")]
    ZeroPieceLength,
    /// [`Geometry::new`] for more than 2^32 - 1 pieces.
    #[error("{total_length} bytes in pieces of {piece_length} bytes is more than 2^32 - 1 pieces")]
    TooManyPieces {
        /// The piece length given.
        piece_length: u32,
        /// The total length given.
        total_length: u64,
    },
    /// Our have-set does not have one bit per piece.
    #[error("our have-set covers {have} pieces but the torrent has {pieces}")]
    HaveSetLength {
        /// Bits in the have-set.
        have: u32,
        /// Pieces in the geometry.
        pieces: u32,
    },
    /// `accept`/`reject` called when no incoming handshake is waiting for an answer.
    #[error("no incoming handshake is waiting to be accepted or rejected")]
    NotAwaitingAccept,
    /// [`PeerSession::set_geometry`] on a session that already knows the torrent's geometry.
    #[error("the session already knows the torrent's geometry")]
    GeometryKnown,
}

/// Why [`PeerSession::request`] refused to send a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The session is closed or the handshake is not complete.
    #[error("the session is not established")]
    NotEstablished,
    /// The peer chokes us and the piece is not allowed fast.
    #[error("the peer chokes us and piece {0} is not allowed fast")]
    Choked(u32),
    /// The peer has not announced the piece.
    #[error("the peer does not have piece {0}")]
    PeerLacksPiece(u32),
    /// Outside its piece, empty, or over 16 KiB.
    #[error("block {0:?} is not a valid block of this torrent")]
    InvalidBlock(BlockRequest),
    /// Already requested from this peer and not answered yet.
    #[error("block {0:?} is already requested from this peer")]
    Duplicate(BlockRequest),
    /// The pipeline is at its hard limit (our maximum depth or the peer's `reqq`).
    #[error("{0} requests are already outstanding, the most this peer accepts")]
    QueueFull(usize),
}

/// Why a session ended. Peer-caused variants name what the peer did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The byte stream was not valid peer wire protocol.
    #[error("peer wire stream: {0}")]
    Decode(#[from] DecodeError),
    /// The peer's handshake named another torrent than the one we dialled for.
    #[error("peer handshake is for info-hash {got}, we connected for {expected}")]
    InfoHashMismatch {
        /// The info-hash we asked for.
        expected: InfoHash,
        /// The info-hash the peer sent.
        got: InfoHash,
    },
    /// The peer id in the handshake is ours: we connected to ourselves.
    #[error("peer id {0:?} is our own: this is a connection to ourselves")]
    ConnectedToSelf(PeerId),
    /// The layer above does not serve the torrent an incoming peer asked for.
    #[error("incoming peer asked for info-hash {0}, which we do not serve")]
    NotServed(InfoHash),
    /// A have all or have none that was not the first message after the handshake (a late bitfield
    /// is read as a set of haves instead).
    #[error("peer sent {message} as message #{position} after the handshake; only the first message may announce its piece set")]
    LateHaveState {
        /// Which message.
        message: &'static str,
        /// Its 1-based position among the messages after the handshake (keep-alives and BEP 10
        /// extension messages not counted).
        position: u64,
    },
    /// The bitfield's length or spare bits were wrong.
    #[error("peer bitfield: {0}")]
    BadBitfield(#[from] BitfieldError),
    /// A piece index at or past the piece count.
    #[error("peer sent {message} for piece {piece}, but the torrent has {pieces} pieces")]
    PieceOutOfRange {
        /// Which message.
        message: &'static str,
        /// The index sent.
        piece: u32,
        /// The torrent's piece count.
        pieces: u32,
    },
    /// A BEP 6 message on a connection where the fast extension was not negotiated.
    #[error("peer sent {0} but the fast extension was not negotiated")]
    FastNotNegotiated(&'static str),
    /// A BEP 10 message on a connection where the extension protocol was not negotiated.
    #[error(
        "peer sent an extended message (id {0}) but the extension protocol was not negotiated"
    )]
    ExtensionNotNegotiated(u8),
    /// The BEP 10 handshake payload was not a bencoded dictionary.
    #[error("peer extension handshake: {0}")]
    BadExtensionHandshake(String),
    /// A request over 16 KiB.
    #[error("peer requested {length} bytes at piece {piece} offset {offset}; the most we serve is {max}")]
    RequestTooLong {
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        offset: u32,
        /// Requested length.
        length: u32,
        /// The limit ([`MAX_BLOCK_LEN`]).
        max: u32,
    },
    /// A request that is empty or reaches past the end of its piece.
    #[error("peer requested {length} bytes at piece {piece} offset {offset}, outside the piece's {piece_size} bytes")]
    RequestOutOfPiece {
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        offset: u32,
        /// Requested length.
        length: u32,
        /// The size of that piece.
        piece_size: u32,
    },
    /// The peer had more requests queued at us than we allow.
    #[error("peer flooded us with requests: more than {limit} outstanding at once")]
    RequestFlood {
        /// The cap ([`SessionConfig::max_incoming_requests`]).
        limit: u32,
    },
    /// The peer sent too many blocks we never asked for.
    #[error("peer sent {count} blocks we never requested (the last at piece {piece} offset {offset}, {length} bytes); the limit is {limit}")]
    UnrequestedBlocks {
        /// How many so far.
        count: u32,
        /// The cap ([`SessionConfig::max_unrequested_blocks`]).
        limit: u32,
        /// Piece of the last one.
        piece: u32,
        /// Offset of the last one.
        offset: u32,
        /// Length of the last one.
        length: u32,
    },
    /// The send queue grew past its cap: the peer asks but does not read.
    #[error("{len} bytes are waiting to be sent to the peer, more than the limit of {limit}: it is not reading")]
    OutgoingOverflow {
        /// Bytes queued.
        len: usize,
        /// The cap ([`SessionConfig::max_outgoing_bytes`]).
        limit: usize,
    },
    /// Too many bytes arrived before the layer above accepted the incoming handshake.
    #[error(
        "peer sent {len} bytes before its handshake was accepted, more than the limit of {limit}"
    )]
    BufferedBeforeAccept {
        /// Bytes buffered.
        len: usize,
        /// The cap ([`SessionConfig::max_buffered_before_accept`]).
        limit: usize,
    },
    /// Nothing was received for too long.
    #[error("nothing received from the peer for {0:?}")]
    IdleTimeout(Duration),
    /// The handshake did not complete in time.
    #[error("the handshake did not complete within {0:?}")]
    HandshakeTimeout(Duration),
    /// The layer above closed the session.
    #[error("closed locally")]
    ClosedLocally,
}

/// What the peer's BEP 10 extension handshake told us.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerExtensions {
    /// Extension name to the id the peer wants it sent with (`m`; entries with id 0 are removed).
    pub messages: BTreeMap<String, u8>,
    /// The peer's request queue limit (`reqq`).
    pub reqq: Option<u32>,
    /// The peer's client name (`v`), at most 64 bytes of it.
    pub client: Option<String>,
    /// The peer's listen port (`p`).
    pub listen_port: Option<u16>,
    /// The size of the info dictionary (`metadata_size`, BEP 9), if sent.
    pub metadata_size: Option<u64>,
}

/// Something the layer above should know or act on. Drain with [`PeerSession::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An incoming peer's handshake arrived: answer with [`PeerSession::accept`] (we serve
    /// `info_hash`) or [`PeerSession::reject`]. Bytes after the handshake wait until then.
    HandshakeReceived {
        /// The torrent the peer wants.
        info_hash: InfoHash,
        /// The peer's id.
        peer_id: PeerId,
        /// The extension bits the peer advertised.
        reserved: Reserved,
    },
    /// Both handshakes are done; messages flow.
    Established {
        /// The peer's id.
        peer_id: PeerId,
        /// The extension bits the peer advertised.
        reserved: Reserved,
        /// Whether the fast extension (BEP 6) is on (both sides set it).
        fast: bool,
        /// Whether the extension protocol (BEP 10) is on (both sides set it).
        extension_protocol: bool,
    },
    /// The peer sent its bitfield; read it from [`PeerSession::peer_pieces`]. A session without
    /// geometry emits it (or [`Event::HaveAll`]) once [`PeerSession::set_geometry`] made the peer's
    /// have-state readable.
    Bitfield,
    /// The peer has every piece (BEP 6).
    HaveAll,
    /// The peer has no piece (BEP 6).
    HaveNone,
    /// The peer announced a piece it did not have before.
    Have(u32),
    /// The peer choked us. Without the fast extension every outstanding request is void and listed
    /// here for the picker to release; with it, requests stay outstanding until a piece or reject.
    Choked {
        /// Requests given up.
        released_requests: Vec<BlockRequest>,
    },
    /// The peer unchoked us: requests may be sent.
    Unchoked,
    /// The peer is interested in our pieces.
    Interested,
    /// The peer is no longer interested.
    NotInterested,
    /// A block we requested arrived (a zero-copy slice of the read buffer).
    BlockReceived {
        /// Which block.
        block: BlockRequest,
        /// Its bytes.
        data: Bytes,
    },
    /// The peer rejected one of our requests (BEP 6).
    Rejected {
        /// Which block.
        block: BlockRequest,
    },
    /// Requests unanswered for [`SessionConfig::request_timeout`]; a `cancel` was sent for each.
    RequestsTimedOut {
        /// The blocks given up, for the picker to hand to someone else.
        blocks: Vec<BlockRequest>,
    },
    /// Nothing arrived for [`SessionConfig::snub_timeout`] while we had requests outstanding; the queue
    /// depth drops to 1 until a block arrives.
    Snubbed,
    /// The peer asks for a block: read it and give it to [`PeerSession::send_block`] (or refuse with
    /// [`PeerSession::reject_request`]).
    ReadRequest {
        /// Which block.
        block: BlockRequest,
    },
    /// The peer withdrew a request it made (any disk read for it may be abandoned).
    Cancelled {
        /// Which block.
        block: BlockRequest,
    },
    /// The peer allows us to request this piece while it chokes us (BEP 6).
    AllowedFast(u32),
    /// The peer suggests we download this piece (BEP 6).
    Suggest(u32),
    /// A BEP 10 extended message (id 0 is the extension handshake, also parsed into
    /// [`PeerSession::peer_extensions`]).
    Extended {
        /// Extended message id.
        id: u8,
        /// Its payload.
        payload: Bytes,
    },
    /// The peer's DHT port (BEP 5).
    Port(u16),
    /// The session ended; drop the connection.
    Closed {
        /// Why.
        error: SessionError,
    },
}

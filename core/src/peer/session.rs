//! [`PeerSession`]: the state machine of one peer connection.

use std::collections::{BTreeSet, VecDeque};
use std::net::IpAddr;

use bytes::{Bytes, BytesMut};

use crate::bencode;
use crate::bitfield::Bitfield;
use crate::picker::PeerPieces;
use crate::time::Instant;
use crate::types::{InfoHash, PeerId};
use crate::wire::{
    self, encode_piece_header, max_frame_len_for, Decoded, Decoder, Handshake, Message, Reserved,
    DEFAULT_MAX_FRAME_LEN, PIECE_HEADER_LEN,
};

use super::rate::RateMeter;
use super::{
    BlockRequest, Event, Geometry, OurExtensions, PeerExtensions, RequestError, SessionConfig,
    SessionError, SetupError, CLIENT_VERSION, MAX_BLOCK_LEN, MAX_PIECES_WITHOUT_METADATA,
};

/// Longest client name kept from an extension handshake.
const MAX_CLIENT_NAME: usize = 64;
/// Most extension names kept from an extension handshake.
const MAX_EXTENSION_NAMES: usize = 64;
/// Longest extension name kept.
const MAX_EXTENSION_NAME_LEN: usize = 64;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the peer's handshake (ours is sent already for an outgoing connection).
    AwaitingHandshake,
    /// Incoming: the peer's handshake is here, the layer above must accept or reject it.
    AwaitingAccept,
    /// Messages flow.
    Established,
    /// Ended; see `error`.
    Closed,
}

/// One request we sent and its send time.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    block: BlockRequest,
    sent: Instant,
}

fn from_wire(r: wire::BlockRequest) -> BlockRequest {
    BlockRequest {
        piece: r.index,
        offset: r.begin,
        length: r.length,
    }
}

fn to_wire(b: BlockRequest) -> wire::BlockRequest {
    wire::BlockRequest {
        index: b.piece,
        begin: b.offset,
        length: b.length,
    }
}

/// One peer connection's protocol state (see the [module documentation](super)).
///
/// Create it with [`PeerSession::outgoing`] (we dialled, we know the torrent) or
/// [`PeerSession::incoming`] (the peer dialled; its handshake names the torrent, and the layer above
/// answers [`Event::HandshakeReceived`] with [`PeerSession::accept`] or [`PeerSession::reject`]).
#[derive(Debug)]
pub struct PeerSession {
    config: SessionConfig,
    our_id: PeerId,
    /// The torrent (outgoing: from the start; incoming: once the peer's handshake arrived).
    info_hash: Option<InfoHash>,
    /// Whether we dialled.
    outgoing: bool,
    /// Known from the start for an outgoing connection, from `accept` for an incoming one.
    geometry: Option<Geometry>,
    /// Our pieces (kept so that we can send the have-state when the handshake completes and refuse
    /// requests for pieces we do not have).
    our_have: Bitfield,
    phase: Phase,
    error: Option<SessionError>,
    decoder: Decoder,
    started: Instant,
    peer_handshake: Option<Handshake>,
    fast: bool,
    extension_protocol: bool,

    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,

    peer_have: Bitfield,
    peer_has_all: bool,
    /// Without geometry: the peer's bitfield as it came, validated once the piece count is known.
    raw_bitfield: Option<Bytes>,
    /// Without geometry: the peer's `have`s as a bit set (bit `i` of byte `i / 8`, lowest first),
    /// at most [`MAX_PIECES_WITHOUT_METADATA`] bits.
    early_haves: Vec<u8>,
    /// What our extension handshake says (`None`: the config's `extensions` only).
    our_extensions: Option<OurExtensions>,
    /// Whether our extension handshake went out (a later change re-sends it).
    ext_handshake_sent: bool,
    /// Messages received after the handshake, keep-alives and BEP 10 extension messages not counted:
    /// libtorrent sends its extension handshake *before* its bitfield / have all, so "the first
    /// message" of BEP 3 and BEP 6 means the first core-protocol message.
    messages_received: u64,
    peer_extensions: PeerExtensions,

    /// Our requests, in the order sent.
    outstanding: VecDeque<Outstanding>,
    /// Requests we gave up (cancelled, timed out, voided by a choke) whose block may still arrive.
    late: VecDeque<BlockRequest>,
    snubbed: bool,
    /// Since when we have been waiting for a block: the last block's arrival, or when the queue went
    /// from empty to non-empty.
    waiting_since: Instant,
    unrequested_blocks: u32,
    /// Pieces the peer allows us to request while choked.
    allowed_fast_in: Vec<u32>,
    /// `may_request` as last reported by `take_may_request_change`.
    may_request_seen: bool,

    /// Requests the peer made to us that are not answered yet.
    incoming: BTreeSet<BlockRequest>,
    /// Pieces we allow the peer to request while we choke it.
    allowed_fast_out: Vec<u32>,

    /// Small messages not yet handed out.
    out_small: BytesMut,
    /// Buffers handed out before `out_small` (piece headers and block payloads).
    out_queue: VecDeque<Bytes>,
    out_len: usize,
    events: VecDeque<Event>,
    last_sent: Instant,
    last_recv: Instant,

    down: RateMeter,
    up: RateMeter,
    wasted: u64,
}

impl PeerSession {
    fn new(config: SessionConfig, our_id: PeerId, now: Instant, outgoing: bool) -> PeerSession {
        let window = config.rate_window;
        PeerSession {
            our_id,
            info_hash: None,
            outgoing,
            geometry: None,
            our_have: Bitfield::new(0),
            phase: Phase::AwaitingHandshake,
            error: None,
            decoder: Decoder::new(DEFAULT_MAX_FRAME_LEN),
            started: now,
            peer_handshake: None,
            fast: false,
            extension_protocol: false,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            peer_have: Bitfield::new(0),
            peer_has_all: false,
            raw_bitfield: None,
            early_haves: Vec::new(),
            our_extensions: None,
            ext_handshake_sent: false,
            messages_received: 0,
            peer_extensions: PeerExtensions::default(),
            outstanding: VecDeque::new(),
            late: VecDeque::new(),
            snubbed: false,
            waiting_since: now,
            unrequested_blocks: 0,
            allowed_fast_in: Vec::new(),
            may_request_seen: false,
            incoming: BTreeSet::new(),
            allowed_fast_out: Vec::new(),
            out_small: BytesMut::new(),
            out_queue: VecDeque::new(),
            out_len: 0,
            events: VecDeque::new(),
            last_sent: now,
            last_recv: now,
            down: RateMeter::new(window),
            up: RateMeter::new(window),
            wasted: 0,
            config,
        }
    }

    /// A connection we dialled for `info_hash`: our handshake is queued at once. `our_have` is our piece
    /// set now; keep it current with [`PeerSession::send_have`].
    pub fn outgoing(
        config: SessionConfig,
        geometry: Geometry,
        info_hash: InfoHash,
        our_id: PeerId,
        our_have: &Bitfield,
        now: Instant,
    ) -> Result<PeerSession, SetupError> {
        check_have(&geometry, our_have)?;
        let mut s = PeerSession::new(config, our_id, now, true);
        s.info_hash = Some(info_hash);
        s.geometry = Some(geometry);
        s.our_have = our_have.clone();
        s.decoder
            .set_max_frame_len(max_frame_len_for(geometry.pieces()));
        s.send_handshake(now);
        Ok(s)
    }

    /// A connection we dialled for `info_hash` before we know the torrent's metadata (a magnet link):
    /// like [`PeerSession::outgoing`], but we announce no pieces and keep the peer's have-state raw
    /// until [`PeerSession::set_geometry`] (see the module documentation).
    pub fn outgoing_without_metadata(
        config: SessionConfig,
        info_hash: InfoHash,
        our_id: PeerId,
        now: Instant,
    ) -> PeerSession {
        let mut s = PeerSession::new(config, our_id, now, true);
        s.info_hash = Some(info_hash);
        s.send_handshake(now);
        s
    }

    /// A connection the peer dialled: waits for its handshake, then emits
    /// [`Event::HandshakeReceived`].
    pub fn incoming(config: SessionConfig, our_id: PeerId, now: Instant) -> PeerSession {
        PeerSession::new(config, our_id, now, false)
    }

    /// Accepts an incoming peer for the torrent it named: sends our handshake and have-state, then
    /// processes any bytes that arrived behind the peer's handshake.
    pub fn accept(
        &mut self,
        now: Instant,
        geometry: Geometry,
        our_have: &Bitfield,
    ) -> Result<(), SetupError> {
        if self.phase != Phase::AwaitingAccept {
            return Err(SetupError::NotAwaitingAccept);
        }
        check_have(&geometry, our_have)?;
        self.geometry = Some(geometry);
        self.our_have = our_have.clone();
        self.send_handshake(now);
        self.establish(now);
        self.process(now);
        Ok(())
    }

    /// Accepts an incoming peer for a torrent whose metadata we do not have yet (a magnet link): like
    /// [`PeerSession::accept`], with the geometry to come from [`PeerSession::set_geometry`].
    pub fn accept_without_metadata(&mut self, now: Instant) -> Result<(), SetupError> {
        if self.phase != Phase::AwaitingAccept {
            return Err(SetupError::NotAwaitingAccept);
        }
        self.send_handshake(now);
        self.establish(now);
        self.process(now);
        Ok(())
    }

    /// The torrent's metadata arrived: from now on the session knows the piece count. The peer's raw
    /// bitfield and early `have`s are validated (a bad one ends the session with the error it would
    /// have caused at once) and its have-state is emitted again ([`Event::Bitfield`] or
    /// [`Event::HaveAll`]); our own pieces in `our_have`, if any, are announced with `have`.
    pub fn set_geometry(
        &mut self,
        now: Instant,
        geometry: Geometry,
        our_have: &Bitfield,
    ) -> Result<(), SetupError> {
        if self.geometry.is_some() {
            return Err(SetupError::GeometryKnown);
        }
        check_have(&geometry, our_have)?;
        self.geometry = Some(geometry);
        self.our_have = our_have.clone();
        if self.phase != Phase::Established {
            return Ok(());
        }
        let pieces = geometry.pieces();
        self.decoder.set_max_frame_len(max_frame_len_for(pieces));
        self.allowed_fast_in.retain(|p| *p < pieces);
        let raw = self.raw_bitfield.take();
        let early = std::mem::take(&mut self.early_haves);
        // Until the checks below pass the peer has nothing we know of (so a failure leaves a
        // consistent, empty have-set behind).
        self.peer_have = Bitfield::new(pieces);
        if self.peer_has_all {
            self.peer_have = Bitfield::full(pieces);
            self.events.push_back(Event::HaveAll);
        } else {
            let mut have = match raw {
                Some(raw) => match Bitfield::from_wire(&raw, pieces) {
                    Ok(bf) => bf,
                    Err(e) => {
                        self.fail(e.into());
                        return Ok(());
                    }
                },
                None => Bitfield::new(pieces),
            };
            for (byte_index, byte) in early.iter().enumerate() {
                for bit in 0..8u32 {
                    if byte & (1 << bit) == 0 {
                        continue;
                    }
                    let piece = (byte_index as u32).saturating_mul(8).saturating_add(bit);
                    if piece >= pieces {
                        self.fail(SessionError::PieceOutOfRange {
                            message: "have",
                            piece,
                            pieces,
                        });
                        return Ok(());
                    }
                    have.set(piece);
                }
            }
            self.peer_have = have;
            self.events.push_back(Event::Bitfield);
        }
        for piece in self.our_have.iter_ones().collect::<Vec<_>>() {
            self.send(now, &Message::Have { piece });
        }
        self.check_outgoing();
        Ok(())
    }

    /// Whether the session knows the torrent's geometry (always, except before a magnet link's
    /// metadata arrived).
    pub fn has_geometry(&self) -> bool {
        self.geometry.is_some()
    }

    /// Sets what our BEP 10 handshake carries for this connection: our `m` map (which replaces the
    /// config's [`SessionConfig::extensions`]), `metadata_size` and `yourip`. Call it before the
    /// handshake completes; after that (e.g. when a magnet link's metadata arrived) the extension
    /// handshake is sent again with the new values, as BEP 10 allows.
    pub fn set_our_extensions(&mut self, now: Instant, ext: OurExtensions) {
        if self.our_extensions.as_ref() == Some(&ext) {
            return;
        }
        self.our_extensions = Some(ext);
        if self.phase == Phase::Established && self.extension_protocol && self.ext_handshake_sent {
            let payload = Bytes::from(self.extension_handshake());
            self.send(now, &Message::Extended { id: 0, payload });
            self.check_outgoing();
        }
    }

    /// Refuses an incoming peer (we do not serve the torrent it named): the session closes with
    /// [`SessionError::NotServed`].
    pub fn reject(&mut self) -> Result<(), SetupError> {
        if self.phase != Phase::AwaitingAccept {
            return Err(SetupError::NotAwaitingAccept);
        }
        let ih = self.info_hash.unwrap_or_default();
        self.fail(SessionError::NotServed(ih));
        Ok(())
    }

    /// Ends the session from our side ([`SessionError::ClosedLocally`]).
    pub fn close(&mut self) {
        self.fail(SessionError::ClosedLocally);
    }

    // ----- input ---------------------------------------------------------------------------------

    /// Feeds bytes read from the socket (copying them into the decoder's buffer).
    pub fn handle_read(&mut self, now: Instant, data: &[u8]) {
        if self.phase == Phase::Closed {
            return;
        }
        if !data.is_empty() {
            self.last_recv = now;
        }
        self.decoder.extend(data);
        self.process(now);
    }

    /// Feeds a chunk the driver read into memory of its own, taking it over instead of copying it (see
    /// [`Decoder::extend_owned`]): piece payloads stay slices of the very memory the socket read into.
    pub fn handle_read_owned(&mut self, now: Instant, data: BytesMut) {
        if self.phase == Phase::Closed {
            return;
        }
        if !data.is_empty() {
            self.last_recv = now;
        }
        self.decoder.extend_owned(data);
        self.process(now);
    }

    /// The decoder's read buffer, for a driver that reads from the socket straight into it (zero
    /// copy); call [`PeerSession::handle_read_buf`] after each read.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        self.decoder.read_buf()
    }

    /// Processes bytes a driver appended to [`PeerSession::read_buf`] (`received` of them, for the idle
    /// timer; 0 means the read returned nothing).
    pub fn handle_read_buf(&mut self, now: Instant, received: usize) {
        if self.phase == Phase::Closed {
            return;
        }
        if received > 0 {
            self.last_recv = now;
        }
        self.process(now);
    }

    /// When [`PeerSession::handle_timeout`] should next be called (`None` once closed). Never earlier
    /// than needed: each deadline is moved when `handle_timeout` acts on it.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closed => None,
            Phase::AwaitingHandshake | Phase::AwaitingAccept => {
                Some(self.started + self.config.handshake_timeout)
            }
            Phase::Established => {
                let mut t = (self.last_sent + self.config.keepalive_interval)
                    .min(self.last_recv + self.config.idle_timeout);
                // Requests are queued in the order sent, so the front is the oldest (O(1): this
                // runs for every connection after every engine input).
                if let Some(oldest) = self.outstanding.front().map(|o| o.sent) {
                    t = t.min(oldest + self.config.request_timeout);
                    if !self.snubbed {
                        t = t.min(self.waiting_since + self.config.snub_timeout);
                    }
                }
                Some(t)
            }
        }
    }

    /// Acts on every deadline that is due at `now`: handshake timeout, idle timeout, snubbing, request
    /// timeouts, keep-alive.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Closed => {}
            Phase::AwaitingHandshake | Phase::AwaitingAccept => {
                if now >= self.started + self.config.handshake_timeout {
                    self.fail(SessionError::HandshakeTimeout(
                        self.config.handshake_timeout,
                    ));
                }
            }
            Phase::Established => {
                if now >= self.last_recv + self.config.idle_timeout {
                    self.fail(SessionError::IdleTimeout(now - self.last_recv));
                    return;
                }
                if !self.snubbed
                    && !self.outstanding.is_empty()
                    && now >= self.waiting_since + self.config.snub_timeout
                {
                    self.snubbed = true;
                    self.events.push_back(Event::Snubbed);
                }
                let timeout = self.config.request_timeout;
                let mut expired = Vec::new();
                self.outstanding.retain(|o| {
                    let due = now >= o.sent + timeout;
                    if due {
                        expired.push(o.block);
                    }
                    !due
                });
                if !expired.is_empty() {
                    for &b in &expired {
                        self.send(now, &Message::Cancel(to_wire(b)));
                        self.remember_late(b);
                    }
                    self.events
                        .push_back(Event::RequestsTimedOut { blocks: expired });
                }
                if now >= self.last_sent + self.config.keepalive_interval {
                    self.send(now, &Message::KeepAlive);
                }
                self.check_outgoing();
            }
        }
    }

    // ----- output --------------------------------------------------------------------------------

    /// The next bytes to write to the socket, in order. Piece payloads come out as their own `Bytes`
    /// (the very buffer given to [`PeerSession::send_block`]). Call only as fast as the socket takes
    /// them: what is not polled yet counts in [`PeerSession::outgoing_len`] and its cap.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let next = match self.out_queue.pop_front() {
            Some(b) => b,
            None if !self.out_small.is_empty() => self.out_small.split().freeze(),
            None => return None,
        };
        self.out_len = self.out_len.saturating_sub(next.len());
        Some(next)
    }

    /// Bytes queued for sending and not yet polled. The layer above should stop issuing disk reads for
    /// this peer while this is high (e.g. above a few blocks).
    pub fn outgoing_len(&self) -> usize {
        self.out_len
    }

    /// The next event, in the order things happened.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- downloading ---------------------------------------------------------------------------

    /// Tells the peer whether we want its pieces (sent when it changes; before the handshake completes
    /// it is remembered and sent then).
    pub fn set_interested(&mut self, now: Instant, interested: bool) {
        if self.am_interested == interested || self.phase == Phase::Closed {
            return;
        }
        self.am_interested = interested;
        if self.phase == Phase::Established {
            let m = if interested {
                Message::Interested
            } else {
                Message::NotInterested
            };
            self.send(now, &m);
        }
    }

    /// Sends a request for `block`. Allowed when the peer unchokes us, or chokes us but allowed the
    /// piece fast (BEP 6); the peer must have the piece.
    pub fn request(&mut self, now: Instant, block: BlockRequest) -> Result<(), RequestError> {
        let (Phase::Established, Some(geo)) = (self.phase, self.geometry) else {
            return Err(RequestError::NotEstablished);
        };
        if !geo.block_is_valid(&block) {
            return Err(RequestError::InvalidBlock(block));
        }
        if !self.peer_has(block.piece) {
            return Err(RequestError::PeerLacksPiece(block.piece));
        }
        if self.peer_choking && !(self.fast && self.allowed_fast_in.contains(&block.piece)) {
            return Err(RequestError::Choked(block.piece));
        }
        if self.outstanding.iter().any(|o| o.block == block) {
            return Err(RequestError::Duplicate(block));
        }
        let limit = self.hard_queue_limit();
        if self.outstanding.len() >= limit {
            return Err(RequestError::QueueFull(limit));
        }
        if self.outstanding.is_empty() {
            self.waiting_since = now;
        }
        self.late.retain(|b| *b != block);
        self.outstanding.push_back(Outstanding { block, sent: now });
        self.send(now, &Message::Request(to_wire(block)));
        Ok(())
    }

    /// Withdraws an outstanding request (e.g. the block arrived from another peer in endgame). If the
    /// block arrives anyway it is counted as waste. Returns whether it was outstanding.
    pub fn cancel(&mut self, now: Instant, block: BlockRequest) -> bool {
        let Some(pos) = self.outstanding.iter().position(|o| o.block == block) else {
            return false;
        };
        self.outstanding.remove(pos);
        self.remember_late(block);
        self.send(now, &Message::Cancel(to_wire(block)));
        true
    }

    /// How many more blocks the torrent layer should request from this peer now: the adapted queue
    /// depth minus what is outstanding, or 0 when we are not interested or the peer chokes us (unless
    /// it allowed some pieces fast: then pick among [`PeerSession::allowed_fast`]).
    pub fn wanted_requests(&self, now: Instant) -> usize {
        if !self.may_request() {
            return 0;
        }
        self.queue_depth(now).saturating_sub(self.outstanding.len())
    }

    /// Whether we may ask this peer for blocks at all: established, interested, and unchoked (or
    /// choked with allowed-fast pieces). Changes only through this session's inputs and
    /// [`PeerSession::set_interested`], never with time alone, so the engine can keep the set of
    /// such peers instead of asking every peer after every input.
    pub fn may_request(&self) -> bool {
        self.phase == Phase::Established
            && self.am_interested
            && !(self.peer_choking && (!self.fast || self.allowed_fast_in.is_empty()))
    }

    /// The new value of [`PeerSession::may_request`] if it changed since the last call (it starts
    /// `false`): lets the layer above keep a set of the peers that may be asked, cheaply.
    pub fn take_may_request_change(&mut self) -> Option<bool> {
        let may = self.may_request();
        if may == self.may_request_seen {
            return None;
        }
        self.may_request_seen = may;
        Some(may)
    }

    /// The request queue depth for this peer: enough requests to cover
    /// [`SessionConfig::queue_time`] at its measured download rate, clamped to
    /// [`SessionConfig::min_queue_depth`] and the smaller of [`SessionConfig::max_queue_depth`] and the
    /// peer's `reqq`; 1 while the peer is snubbed.
    pub fn queue_depth(&self, now: Instant) -> usize {
        let hard = self.hard_queue_limit();
        if self.snubbed {
            return hard.min(1);
        }
        let rate = u128::from(self.down.rate(now));
        let bytes = rate * self.config.queue_time.as_nanos() / 1_000_000_000;
        let blocks = usize::try_from(bytes / u128::from(MAX_BLOCK_LEN)).unwrap_or(usize::MAX);
        blocks.max(self.config.min_queue_depth as usize).min(hard)
    }

    fn hard_queue_limit(&self) -> usize {
        let reqq = self
            .peer_extensions
            .reqq
            .unwrap_or(self.config.assumed_peer_reqq);
        (self.config.max_queue_depth.min(reqq).max(1)) as usize
    }

    /// Our outstanding requests, oldest first.
    pub fn outstanding_requests(&self) -> impl Iterator<Item = BlockRequest> + '_ {
        self.outstanding.iter().map(|o| o.block)
    }

    // ----- uploading -----------------------------------------------------------------------------

    /// Chokes or unchokes the peer (sent when it changes). Choking discards the peer's queued requests
    /// (rejecting each under the fast extension), except those for pieces we allowed fast.
    pub fn set_choking(&mut self, now: Instant, choke: bool) {
        if self.am_choking == choke || self.phase == Phase::Closed {
            return;
        }
        self.am_choking = choke;
        if self.phase != Phase::Established {
            return;
        }
        if choke {
            self.send(now, &Message::Choke);
            let keep: BTreeSet<BlockRequest> = if self.fast {
                self.incoming
                    .iter()
                    .filter(|b| self.allowed_fast_out.contains(&b.piece))
                    .copied()
                    .collect()
            } else {
                BTreeSet::new()
            };
            let dropped: Vec<BlockRequest> = self.incoming.difference(&keep).copied().collect();
            self.incoming = keep;
            if self.fast {
                for b in dropped {
                    self.send(now, &Message::RejectRequest(to_wire(b)));
                }
            }
        } else {
            self.send(now, &Message::Unchoke);
        }
        self.check_outgoing();
    }

    /// Sends a block the peer requested, without copying `data` (the `piece` header and the block go
    /// out as separate buffers). Returns `false`, sending nothing, if the request is no longer wanted
    /// (cancelled, discarded by a choke, never made) or `data` is not the requested length.
    pub fn send_block(&mut self, now: Instant, block: BlockRequest, data: Bytes) -> bool {
        if self.phase != Phase::Established
            || data.len() != block.length as usize
            || !self.incoming.contains(&block)
        {
            return false;
        }
        if encode_piece_header(block.piece, block.offset, data.len(), &mut self.out_small).is_err()
        {
            return false;
        }
        self.incoming.remove(&block);
        self.out_queue.push_back(self.out_small.split().freeze());
        self.out_len += PIECE_HEADER_LEN + data.len();
        self.up.record(now, data.len() as u64);
        self.out_queue.push_back(data);
        self.last_sent = now;
        self.check_outgoing();
        true
    }

    /// Refuses a request the peer made (e.g. the disk read failed): sends a reject under the fast
    /// extension, otherwise just forgets it. Returns whether the request was queued.
    pub fn reject_request(&mut self, now: Instant, block: BlockRequest) -> bool {
        if !self.incoming.remove(&block) {
            return false;
        }
        if self.fast {
            self.send(now, &Message::RejectRequest(to_wire(block)));
        }
        true
    }

    /// Records that we now have `piece` and announces it (before the handshake completes it goes into
    /// the bitfield instead). Returns `false` for an index out of range.
    pub fn send_have(&mut self, now: Instant, piece: u32) -> bool {
        if piece >= self.our_have.len() {
            return false;
        }
        self.our_have.set(piece);
        if self.phase == Phase::Established {
            self.send(now, &Message::Have { piece });
        }
        true
    }

    /// Lets the peer request `piece` while we choke it (BEP 6 `allowed fast`; sent only under the fast
    /// extension, remembered until then). Returns `false` for an index out of range.
    pub fn allow_fast(&mut self, now: Instant, piece: u32) -> bool {
        let Some(geo) = self.geometry else {
            return false;
        };
        if piece >= geo.pieces() {
            return false;
        }
        if !self.allowed_fast_out.contains(&piece) {
            self.allowed_fast_out.push(piece);
            if self.phase == Phase::Established && self.fast {
                self.send(now, &Message::AllowedFast { piece });
            }
        }
        true
    }

    /// Suggests a piece to the peer (BEP 6; only under the fast extension). Returns whether it was sent.
    pub fn suggest(&mut self, now: Instant, piece: u32) -> bool {
        if self.phase != Phase::Established || !self.fast || piece >= self.our_have.len() {
            return false;
        }
        self.send(now, &Message::Suggest { piece });
        true
    }

    /// Sends a BEP 10 extended message (only when the extension protocol is on). Returns whether it
    /// was sent.
    pub fn send_extended(&mut self, now: Instant, id: u8, payload: Bytes) -> bool {
        if self.phase != Phase::Established || !self.extension_protocol {
            return false;
        }
        self.send(now, &Message::Extended { id, payload });
        self.check_outgoing();
        true
    }

    /// Sends our DHT port (BEP 5). Returns whether it was sent.
    pub fn send_port(&mut self, now: Instant, port: u16) -> bool {
        if self.phase != Phase::Established {
            return false;
        }
        self.send(now, &Message::Port(port));
        true
    }

    // ----- state ---------------------------------------------------------------------------------

    /// Whether both handshakes are done and the session is not closed.
    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    /// Whether the session ended.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Why the session ended, if it did.
    pub fn error(&self) -> Option<&SessionError> {
        self.error.as_ref()
    }

    /// Whether we dialled this connection.
    pub fn is_outgoing(&self) -> bool {
        self.outgoing
    }

    /// The torrent, once known.
    pub fn info_hash(&self) -> Option<InfoHash> {
        self.info_hash
    }

    /// The peer's handshake, once received.
    pub fn peer_handshake(&self) -> Option<&Handshake> {
        self.peer_handshake.as_ref()
    }

    /// Whether the fast extension is on (both sides advertised it).
    pub fn fast_enabled(&self) -> bool {
        self.fast
    }

    /// Whether the extension protocol is on (both sides advertised it).
    pub fn extension_protocol_enabled(&self) -> bool {
        self.extension_protocol
    }

    /// Whether we choke the peer.
    pub fn am_choking(&self) -> bool {
        self.am_choking
    }

    /// Whether we told the peer we are interested.
    pub fn am_interested(&self) -> bool {
        self.am_interested
    }

    /// Whether the peer chokes us.
    pub fn peer_choking(&self) -> bool {
        self.peer_choking
    }

    /// Whether the peer is interested in us.
    pub fn peer_interested(&self) -> bool {
        self.peer_interested
    }

    /// Whether no block arrived for [`SessionConfig::snub_timeout`] while we waited for one.
    pub fn is_snubbed(&self) -> bool {
        self.snubbed
    }

    /// The peer's pieces, in the form the picker takes.
    pub fn peer_pieces(&self) -> PeerPieces<'_> {
        if self.peer_has_all {
            PeerPieces::All
        } else {
            PeerPieces::Bitfield(&self.peer_have)
        }
    }

    /// Whether the peer has `piece`.
    pub fn peer_has(&self, piece: u32) -> bool {
        piece < self.peer_have.len() && (self.peer_has_all || self.peer_have.get(piece))
    }

    /// Pieces the peer allows us to request while it chokes us.
    pub fn allowed_fast(&self) -> &[u32] {
        &self.allowed_fast_in
    }

    /// What the peer's extension handshake said.
    pub fn peer_extensions(&self) -> &PeerExtensions {
        &self.peer_extensions
    }

    /// Download rate of block payload, bytes per second.
    pub fn download_rate(&self, now: Instant) -> u64 {
        self.down.rate(now)
    }

    /// Upload rate of block payload (counted when queued for sending), bytes per second.
    pub fn upload_rate(&self, now: Instant) -> u64 {
        self.up.rate(now)
    }

    /// Block payload bytes received for our requests.
    pub fn downloaded(&self) -> u64 {
        self.down.total()
    }

    /// Block payload bytes sent (queued) to the peer.
    pub fn uploaded(&self) -> u64 {
        self.up.total()
    }

    /// Block payload bytes received that we did not (or no longer) want.
    pub fn wasted(&self) -> u64 {
        self.wasted
    }

    /// Requests from the peer waiting for [`PeerSession::send_block`].
    pub fn queued_incoming_requests(&self) -> usize {
        self.incoming.len()
    }

    /// Bytes received and not yet decoded.
    pub fn buffered_incoming(&self) -> usize {
        self.decoder.buffered()
    }

    /// The decoder's current frame limit.
    pub fn max_frame_len(&self) -> u32 {
        self.decoder.max_frame_len()
    }

    // ----- internals -----------------------------------------------------------------------------

    fn fail(&mut self, error: SessionError) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.error = Some(error.clone());
        self.out_small = BytesMut::new();
        self.out_queue.clear();
        self.out_len = 0;
        self.incoming.clear();
        self.outstanding.clear();
        self.late.clear();
        // Release whatever the peer made us buffer.
        self.decoder = Decoder::new(self.decoder.max_frame_len());
        self.events.push_back(Event::Closed { error });
    }

    fn send(&mut self, now: Instant, m: &Message) {
        let before = self.out_small.len();
        // Encoding fails only for payloads over 4 GiB, which nothing here produces.
        if m.encode(&mut self.out_small).is_ok() {
            self.out_len += self.out_small.len() - before;
            self.last_sent = now;
        }
    }

    fn check_outgoing(&mut self) {
        if self.out_len > self.config.max_outgoing_bytes {
            self.fail(SessionError::OutgoingOverflow {
                len: self.out_len,
                limit: self.config.max_outgoing_bytes,
            });
        }
    }

    fn remember_late(&mut self, block: BlockRequest) {
        let cap = (self.config.max_queue_depth as usize)
            .saturating_mul(2)
            .max(16);
        while self.late.len() >= cap {
            self.late.pop_front();
        }
        self.late.push_back(block);
    }

    fn send_handshake(&mut self, now: Instant) {
        let hs = Handshake::new(
            self.info_hash.unwrap_or_default(),
            self.our_id,
            self.config.reserved,
        );
        let before = self.out_small.len();
        hs.encode(&mut self.out_small);
        self.out_len += self.out_small.len() - before;
        self.last_sent = now;
    }

    fn process(&mut self, now: Instant) {
        loop {
            match self.phase {
                Phase::Closed => return,
                Phase::AwaitingAccept => {
                    let len = self.decoder.buffered();
                    if len > self.config.max_buffered_before_accept {
                        self.fail(SessionError::BufferedBeforeAccept {
                            len,
                            limit: self.config.max_buffered_before_accept,
                        });
                    }
                    return;
                }
                Phase::AwaitingHandshake | Phase::Established => {}
            }
            match self.decoder.decode() {
                Ok(None) => break,
                Ok(Some(Decoded::Handshake(h))) => self.on_handshake(now, h),
                Ok(Some(Decoded::Message(m))) => self.on_message(now, m),
                Err(e) => self.fail(e.into()),
            }
        }
        self.check_outgoing();
    }

    fn on_handshake(&mut self, now: Instant, h: Handshake) {
        if h.peer_id == self.our_id {
            self.fail(SessionError::ConnectedToSelf(h.peer_id));
            return;
        }
        self.peer_handshake = Some(h);
        match self.info_hash {
            Some(expected) if self.outgoing => {
                if h.info_hash != expected {
                    self.fail(SessionError::InfoHashMismatch {
                        expected,
                        got: h.info_hash,
                    });
                    return;
                }
                self.establish(now);
            }
            _ => {
                self.info_hash = Some(h.info_hash);
                self.phase = Phase::AwaitingAccept;
                self.events.push_back(Event::HandshakeReceived {
                    info_hash: h.info_hash,
                    peer_id: h.peer_id,
                    reserved: h.reserved,
                });
            }
        }
    }

    /// Both handshakes are done: negotiate extensions, announce our pieces and our flags.
    fn establish(&mut self, now: Instant) {
        let Some(h) = self.peer_handshake else {
            return;
        };
        let geo = self.geometry;
        let both = self.config.reserved & h.reserved;
        self.fast = both.contains(Reserved::FAST);
        self.extension_protocol = both.contains(Reserved::EXTENSION_PROTOCOL);
        let pieces = geo.map_or(MAX_PIECES_WITHOUT_METADATA, |g| g.pieces());
        self.decoder.set_max_frame_len(max_frame_len_for(pieces));
        self.peer_have = Bitfield::new(geo.map_or(0, |g| g.pieces()));
        self.phase = Phase::Established;
        self.events.push_back(Event::Established {
            peer_id: h.peer_id,
            reserved: h.reserved,
            fast: self.fast,
            extension_protocol: self.extension_protocol,
        });
        if geo.is_none() {
            // No metadata: we have nothing, and must not send a bitfield of unknown length.
            if self.fast {
                self.send(now, &Message::HaveNone);
            }
        } else if self.fast && self.our_have.all() {
            self.send(now, &Message::HaveAll);
        } else if self.fast && self.our_have.none() {
            self.send(now, &Message::HaveNone);
        } else if !self.our_have.none() {
            let bf = Bytes::copy_from_slice(self.our_have.as_bytes());
            self.send(now, &Message::Bitfield(bf));
        }
        if self.extension_protocol {
            let payload = Bytes::from(self.extension_handshake());
            self.send(now, &Message::Extended { id: 0, payload });
            self.ext_handshake_sent = true;
        }
        if self.fast {
            for piece in self.allowed_fast_out.clone() {
                self.send(now, &Message::AllowedFast { piece });
            }
        }
        if !self.am_choking {
            self.send(now, &Message::Unchoke);
        }
        if self.am_interested {
            self.send(now, &Message::Interested);
        }
    }

    fn extension_handshake(&self) -> Vec<u8> {
        let (messages, metadata_size, your_ip) = match &self.our_extensions {
            Some(e) => (&e.messages, e.metadata_size, e.your_ip),
            None => (&self.config.extensions, None, None),
        };
        let mut d = crate::ext::handshake_fields(messages, metadata_size);
        d.insert("reqq", i64::from(self.config.max_incoming_requests));
        d.insert("v", CLIENT_VERSION);
        if let Some(p) = self.config.listen_port {
            d.insert("p", i64::from(p));
        }
        if self.config.advertise_encryption {
            d.insert("e", 1i64);
        }
        match your_ip {
            Some(IpAddr::V4(v4)) => {
                d.insert("yourip", v4.octets().to_vec());
            }
            Some(IpAddr::V6(v6)) => {
                d.insert("yourip", v6.octets().to_vec());
            }
            None => {}
        }
        d.encode()
    }

    fn check_piece(&mut self, message: &'static str, piece: u32) -> bool {
        let pieces = self.peer_have.len();
        if piece >= pieces {
            self.fail(SessionError::PieceOutOfRange {
                message,
                piece,
                pieces,
            });
            return false;
        }
        true
    }

    fn require_fast(&mut self, message: &'static str) -> bool {
        if !self.fast {
            self.fail(SessionError::FastNotNegotiated(message));
        }
        self.fast
    }

    fn have_state_first(&mut self, message: &'static str) -> bool {
        if self.messages_received != 1 {
            self.fail(SessionError::LateHaveState {
                message,
                position: self.messages_received,
            });
            return false;
        }
        true
    }

    fn on_message(&mut self, now: Instant, m: Message) {
        if m == Message::KeepAlive {
            return;
        }
        if !matches!(m, Message::Extended { .. }) {
            self.messages_received += 1;
        }
        match m {
            Message::KeepAlive => {}
            Message::Choke => {
                let released: Vec<BlockRequest> = if self.fast {
                    Vec::new()
                } else {
                    self.outstanding.drain(..).map(|o| o.block).collect()
                };
                for &b in &released {
                    self.remember_late(b);
                }
                if !self.peer_choking || !released.is_empty() {
                    self.peer_choking = true;
                    self.events.push_back(Event::Choked {
                        released_requests: released,
                    });
                }
            }
            Message::Unchoke => {
                if self.peer_choking {
                    self.peer_choking = false;
                    self.events.push_back(Event::Unchoked);
                }
            }
            Message::Interested => {
                if !self.peer_interested {
                    self.peer_interested = true;
                    self.events.push_back(Event::Interested);
                }
            }
            Message::NotInterested => {
                if self.peer_interested {
                    self.peer_interested = false;
                    self.events.push_back(Event::NotInterested);
                }
            }
            Message::Have { piece } if self.geometry.is_none() => self.early_have(piece),
            Message::Have { piece } => {
                if self.check_piece("have", piece)
                    && !self.peer_has_all
                    && self.peer_have.set(piece)
                {
                    self.events.push_back(Event::Have(piece));
                }
            }
            Message::Bitfield(payload) if self.messages_received != 1 => {
                self.late_bitfield(&payload);
            }
            Message::Bitfield(payload) => {
                if self.geometry.is_none() {
                    self.raw_bitfield = Some(payload);
                } else {
                    match Bitfield::from_wire(&payload, self.peer_have.len()) {
                        Ok(bf) => {
                            self.peer_have = bf;
                            self.events.push_back(Event::Bitfield);
                        }
                        Err(e) => self.fail(e.into()),
                    }
                }
            }
            Message::HaveAll => {
                if self.require_fast("have all") && self.have_state_first("have all") {
                    self.peer_have = Bitfield::full(self.peer_have.len());
                    self.peer_has_all = true;
                    self.events.push_back(Event::HaveAll);
                }
            }
            Message::HaveNone => {
                if self.require_fast("have none") && self.have_state_first("have none") {
                    self.events.push_back(Event::HaveNone);
                }
            }
            Message::Request(r) => self.on_request(now, from_wire(r)),
            Message::Piece {
                index,
                begin,
                block,
            } => self.on_piece(now, index, begin, block),
            Message::Cancel(r) => {
                let b = from_wire(r);
                if self.incoming.remove(&b) {
                    if self.fast {
                        self.send(now, &Message::RejectRequest(r));
                    }
                    self.events.push_back(Event::Cancelled { block: b });
                }
            }
            Message::Port(p) => self.events.push_back(Event::Port(p)),
            Message::Suggest { piece } => {
                if self.require_fast("suggest")
                    && self.geometry.is_some()
                    && self.check_piece("suggest", piece)
                {
                    self.events.push_back(Event::Suggest(piece));
                }
            }
            Message::RejectRequest(r) => {
                if self.require_fast("reject request") {
                    let b = from_wire(r);
                    if let Some(pos) = self.outstanding.iter().position(|o| o.block == b) {
                        self.outstanding.remove(pos);
                        self.events.push_back(Event::Rejected { block: b });
                    } else if let Some(pos) = self.late.iter().position(|l| *l == b) {
                        self.late.remove(pos);
                    }
                }
            }
            Message::AllowedFast { piece } => {
                if self.require_fast("allowed fast")
                    && (self.geometry.is_none() || self.check_piece("allowed fast", piece))
                    && !self.allowed_fast_in.contains(&piece)
                    && self.allowed_fast_in.len() < self.config.max_allowed_fast
                {
                    self.allowed_fast_in.push(piece);
                    self.events.push_back(Event::AllowedFast(piece));
                }
            }
            Message::Extended { id, payload } => {
                if !self.extension_protocol {
                    self.fail(SessionError::ExtensionNotNegotiated(id));
                    return;
                }
                if id == 0 {
                    if let Err(e) = self.parse_extension_handshake(&payload) {
                        self.fail(SessionError::BadExtensionHandshake(e));
                        return;
                    }
                }
                self.events.push_back(Event::Extended { id, payload });
            }
        }
    }

    fn parse_extension_handshake(&mut self, payload: &[u8]) -> Result<(), String> {
        let v = bencode::decode(payload).map_err(|e| e.to_string())?;
        if v.as_dict().is_none() {
            return Err(format!(
                "payload is a {}, expected a dictionary",
                v.type_name()
            ));
        }
        let ext = &mut self.peer_extensions;
        if let Some(m) = v.get(b"m").and_then(|m| m.as_dict()) {
            for (name, id) in m {
                let (Ok(name), Some(id)) = (std::str::from_utf8(name), id.as_int()) else {
                    continue;
                };
                if name.len() > MAX_EXTENSION_NAME_LEN {
                    continue;
                }
                match u8::try_from(id) {
                    Ok(0) => {
                        ext.messages.remove(name);
                    }
                    Ok(id) => {
                        if ext.messages.len() < MAX_EXTENSION_NAMES
                            || ext.messages.contains_key(name)
                        {
                            ext.messages.insert(name.to_owned(), id);
                        }
                    }
                    Err(_) => {}
                }
            }
        }
        if let Some(reqq) = v.get(b"reqq").and_then(|r| r.as_int()) {
            if reqq > 0 {
                ext.reqq = Some(u32::try_from(reqq).unwrap_or(u32::MAX));
            }
        }
        if let Some(name) = v.get(b"v").and_then(|n| n.as_bytes()) {
            let cut = name.get(..MAX_CLIENT_NAME).unwrap_or(name);
            ext.client = Some(String::from_utf8_lossy(cut).into_owned());
        }
        if let Some(p) = v.get(b"p").and_then(|p| p.as_int()) {
            ext.listen_port = u16::try_from(p).ok().filter(|p| *p != 0);
        }
        if let Some(size) = v.get(b"metadata_size").and_then(|s| s.as_int()) {
            ext.metadata_size = u64::try_from(size).ok();
        }
        Ok(())
    }

    /// A `have` before we know the piece count: remembered in a bounded bit set.
    /// A bitfield that was not the first message: aria2 batches its `have`s into such bitfields
    /// mid-connection. BEP 3 allows the bitfield only first, but it cannot take pieces away, so it is
    /// read as a set of haves: each newly set piece becomes [`Event::Have`] (or an early have while
    /// the geometry is unknown); cleared bits are ignored. Length and spare bits are still checked.
    fn late_bitfield(&mut self, payload: &[u8]) {
        if self.peer_has_all {
            return;
        }
        if self.geometry.is_none() {
            for (byte_index, byte) in payload.iter().enumerate() {
                for bit in 0..8u32 {
                    if byte & (0x80 >> bit) != 0 {
                        let piece = (byte_index as u32).saturating_mul(8).saturating_add(bit);
                        self.early_have(piece);
                        if self.phase == Phase::Closed {
                            return;
                        }
                    }
                }
            }
            return;
        }
        match Bitfield::from_wire(payload, self.peer_have.len()) {
            Ok(bf) => {
                for piece in bf.iter_ones().collect::<Vec<_>>() {
                    if self.peer_have.set(piece) {
                        self.events.push_back(Event::Have(piece));
                    }
                }
            }
            Err(e) => self.fail(e.into()),
        }
    }

    fn early_have(&mut self, piece: u32) {
        if self.peer_has_all {
            return;
        }
        if piece >= MAX_PIECES_WITHOUT_METADATA {
            self.fail(SessionError::PieceOutOfRange {
                message: "have",
                piece,
                pieces: MAX_PIECES_WITHOUT_METADATA,
            });
            return;
        }
        let byte = (piece / 8) as usize;
        if self.early_haves.len() <= byte {
            self.early_haves.resize(byte + 1, 0);
        }
        if let Some(b) = self.early_haves.get_mut(byte) {
            *b |= 1 << (piece % 8);
        }
    }

    fn on_request(&mut self, now: Instant, b: BlockRequest) {
        let Some(geo) = self.geometry else {
            // We have no piece yet: refuse.
            if self.fast {
                self.send(now, &Message::RejectRequest(to_wire(b)));
            }
            return;
        };
        if !self.check_piece("request", b.piece) {
            return;
        }
        if b.length > MAX_BLOCK_LEN {
            self.fail(SessionError::RequestTooLong {
                piece: b.piece,
                offset: b.offset,
                length: b.length,
                max: MAX_BLOCK_LEN,
            });
            return;
        }
        if !geo.block_is_valid(&b) {
            self.fail(SessionError::RequestOutOfPiece {
                piece: b.piece,
                offset: b.offset,
                length: b.length,
                piece_size: geo.piece_size(b.piece),
            });
            return;
        }
        if self.incoming.contains(&b) {
            return;
        }
        let servable = self.our_have.get(b.piece)
            && (!self.am_choking || (self.fast && self.allowed_fast_out.contains(&b.piece)));
        if !servable {
            if self.fast {
                self.send(now, &Message::RejectRequest(to_wire(b)));
            }
            return;
        }
        if self.incoming.len() >= self.config.max_incoming_requests as usize {
            self.fail(SessionError::RequestFlood {
                limit: self.config.max_incoming_requests,
            });
            return;
        }
        self.incoming.insert(b);
        self.events.push_back(Event::ReadRequest { block: b });
    }

    fn on_piece(&mut self, now: Instant, index: u32, begin: u32, data: Bytes) {
        let len = data.len() as u64;
        let block = BlockRequest {
            piece: index,
            offset: begin,
            length: u32::try_from(data.len()).unwrap_or(u32::MAX),
        };
        if let Some(pos) = self.outstanding.iter().position(|o| o.block == block) {
            self.outstanding.remove(pos);
            self.down.record(now, len);
            self.waiting_since = now;
            self.snubbed = false;
            self.events.push_back(Event::BlockReceived { block, data });
            return;
        }
        self.wasted += len;
        if let Some(pos) = self.late.iter().position(|l| *l == block) {
            self.late.remove(pos);
            return;
        }
        self.unrequested_blocks += 1;
        if self.unrequested_blocks > self.config.max_unrequested_blocks {
            self.fail(SessionError::UnrequestedBlocks {
                count: self.unrequested_blocks,
                limit: self.config.max_unrequested_blocks,
                piece: block.piece,
                offset: block.offset,
                length: block.length,
            });
        }
    }
}

fn check_have(geometry: &Geometry, have: &Bitfield) -> Result<(), SetupError> {
    if have.len() != geometry.pieces() {
        return Err(SetupError::HaveSetLength {
            have: have.len(),
            pieces: geometry.pieces(),
        });
    }
    Ok(())
}

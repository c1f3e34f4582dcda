//! The piece picker: which 16 KiB blocks to request from which peer.
//!
//! [`Picker`] is a pure state machine for one torrent. The engine tells it what peers announce (`have`,
//! `bitfield`, `have all`, disconnects), which pieces the user wants, and what happened to each request
//! (block arrived, request cancelled / timed out / rejected, piece verified or failed its hash); in return
//! it chooses block requests for a peer that has room in its request pipeline.
//!
//! # Policy
//! 1. **Finish what is started.** Blocks of pieces already in progress ("partial" pieces) that the peer has
//!    are handed out first, so pieces complete, get verified and can be traded sooner.
//! 2. **Random first pieces.** Until [`PickerConfig::random_first_pieces`] pieces are verified, a new piece
//!    is chosen uniformly at random among the wanted pieces the peer has: the rarest pieces are slow to
//!    come by, and a fresh leecher needs *something* to offer others quickly.
//! 3. **Rarest first.** After that a new piece is the least available wanted piece the peer has, with a
//!    random tie-break among equally rare pieces (so that peers of the swarm do not all chase the same one).
//! 4. **Endgame.** When every block that is still missing has been requested from someone (no untouched
//!    wanted piece and no unrequested block remain), blocks may be requested again from other peers, up to
//!    [`PickerConfig::endgame_max_requesters`] outstanding requests per block, so that one slow peer cannot
//!    hold up the end of the download. When such a block arrives, [`BlockReceived::New::cancel`] names the
//!    other peers to send `cancel` to.
//!
//! # Data structure for rarest-first
//! Each piece has an availability count (how many connected peers announced it), kept up to date
//! incrementally from `have`/`bitfield`/disconnect calls. Peers that sent `have all` are counted once in a
//! single `seeds` number rather than in every piece: they add the same amount to every piece, so they never
//! change which piece is rarest, and `have all` costs O(1) instead of O(pieces).
//!
//! The pieces that may start (wanted, not had, not in progress) are kept in one array `order` sorted by
//! availability and cut into *buckets* of equal availability (`starts[a]` is the index of the first piece
//! of availability `a`, and `pos[piece]` is a piece's index in `order`). Raising a piece's availability
//! by one swaps it with the last piece of its bucket and moves the bucket boundary by one; lowering it
//! swaps it with the first piece of its bucket. Both are O(1), so a `have` costs O(1) and a bitfield costs
//! O(pieces it holds). Adding or removing a piece from `order` (it starts, is verified, is (un)selected)
//! costs O(number of distinct availability levels), which is at most the number of peers.
//!
//! Choosing the rarest piece a given peer has walks the buckets from the lowest availability up; inside
//! a bucket it starts at a random position and wraps around, taking the first piece the peer has (the
//! random start is the tie-break). For a peer that has most pieces this stops after a step or two; the
//! worst case (a peer holding only pieces that are common) is one pass over `order`, with one bit test
//! per piece, never a pass over pieces × peers. A sorted tree keyed by (availability, piece) was the
//! alternative; it costs O(log n) per `have` plus allocation churn, and a random tie-break among equal
//! keys is awkward in a tree, so the bucketed array wins on both counts.
//!
//! Partial pieces live in a `BTreeMap` (deterministic iteration order, unlike a `HashMap` with a random
//! hasher); their number is bounded by the request pipelines of the connected peers, so the operations
//! that scan them (releasing a disconnected peer's requests, the endgame) stay cheap.
//!
//! # Peers
//! The picker does not own peer bitfields: the engine keeps each peer's [`Bitfield`] (or its `have all`
//! flag) and passes it in as [`PeerPieces`] when picking and on disconnect. Peers are named by a
//! [`PeerKey`], the engine's handle for a connection. The engine must report each (peer, piece) pair to
//! availability only once (e.g. only when [`Bitfield::set`] returned `true` for a `have`), and must call
//! [`Picker::peer_disconnected`] before a key is reused.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::bitfield::Bitfield;
use crate::rng::{CoreRng, RngExt};

/// The request size every client uses: 16 KiB (only the last block of the last piece may be shorter).
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// Marks a piece that is not in the rarest-first order.
const NOT_IN_ORDER: u32 = u32::MAX;

/// The engine's handle for one peer connection (for example an index into its table of peers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub u32);

/// One block request: `length` bytes at `offset` within piece `piece`, as in a wire `request` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRequest {
    /// The piece index.
    pub piece: u32,
    /// Byte offset within the piece (a multiple of [`BLOCK_SIZE`]).
    pub offset: u32,
    /// Byte length: [`BLOCK_SIZE`], or less for the last block of the last piece.
    pub length: u32,
}

/// Which pieces a peer has, as the picker needs to know when picking for it or forgetting it.
#[derive(Clone, Copy, Debug)]
pub enum PeerPieces<'a> {
    /// The peer sent `have all` (BEP 6) and is counted as a seed.
    All,
    /// The peer's bitfield (from `bitfield`, updated by each `have`), counted piece by piece.
    Bitfield(&'a Bitfield),
}

impl PeerPieces<'_> {
    /// Whether the peer has `piece`.
    pub fn has(&self, piece: u32) -> bool {
        match self {
            PeerPieces::All => true,
            PeerPieces::Bitfield(b) => b.get(piece),
        }
    }
}

/// Why a [`Picker`] could not be made for the given torrent geometry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PickerError {
    /// The piece length is zero.
    #[error("piece length is zero")]
    ZeroPieceLength,
    /// The number of pieces does not match `ceil(total_length / piece_length)`.
    #[error(
        "torrent of {total_length} bytes in pieces of {piece_length} bytes has {expected} pieces, not {pieces}"
    )]
    PieceCountMismatch {
        /// Pieces claimed.
        pieces: u32,
        /// Pieces the lengths call for.
        expected: u64,
        /// The piece length.
        piece_length: u32,
        /// The total length of the torrent's content.
        total_length: u64,
    },
}

/// Tunables of the picking policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickerConfig {
    /// Pieces are started at random (not rarest-first) while fewer than this many are verified.
    pub random_first_pieces: u32,
    /// In endgame, the most peers a single block may be outstanding at, at once (at least 1).
    pub endgame_max_requesters: usize,
    /// Start new pieces in index order instead of rarest-first (random first pieces are skipped too).
    /// Off by default: a baseline for simulations that measure what rarest-first buys, and the order
    /// a streaming front end would want.
    pub sequential: bool,
}

impl Default for PickerConfig {
    /// Random for the first 4 pieces (as the classic client did); at most 3 requests per endgame block,
    /// which bounds wasted bandwidth while still routing around one or two slow peers.
    fn default() -> Self {
        PickerConfig {
            random_first_pieces: 4,
            endgame_max_requesters: 3,
            sequential: false,
        }
    }
}

/// What [`Picker::block_received`] made of an incoming block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockReceived {
    /// New data: the caller should store it.
    New {
        /// All blocks of the piece are now in: the caller should hash it and then call
        /// [`Picker::piece_verified`] or [`Picker::piece_failed`].
        piece_complete: bool,
        /// Other peers that still had this block requested (endgame): send them `cancel`.
        cancel: Vec<PeerKey>,
    },
    /// We already have this block (another peer was faster, or the piece is verified): drop the data.
    Duplicate,
    /// Not a block of a piece we are downloading, or a misaligned offset or wrong length: drop it (a peer
    /// that keeps doing this is misbehaving).
    Unexpected,
}

/// Geometry of the torrent: piece and block sizes.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    pieces: u32,
    piece_length: u32,
    total_length: u64,
}

impl Geometry {
    fn piece_size(&self, piece: u32) -> u32 {
        if piece >= self.pieces {
            0
        } else if piece + 1 == self.pieces {
            let before = u64::from(piece) * u64::from(self.piece_length);
            // Validated in `Picker::new`: the last piece holds 1..=piece_length bytes.
            u32::try_from(self.total_length - before).unwrap_or(self.piece_length)
        } else {
            self.piece_length
        }
    }

    fn block_count(&self, piece: u32) -> u32 {
        self.piece_size(piece).div_ceil(BLOCK_SIZE)
    }

    fn block_length(&self, piece: u32, block: u32) -> u32 {
        let size = self.piece_size(piece);
        size.saturating_sub(block.saturating_mul(BLOCK_SIZE))
            .min(BLOCK_SIZE)
    }
}

/// One block of a partial piece.
#[derive(Clone, Debug, Default)]
struct Slot {
    /// Peers this block is outstanding at (more than one only in endgame).
    requested_by: Vec<PeerKey>,
    /// Who delivered it, once received.
    received_from: Option<PeerKey>,
}

/// A piece in progress.
#[derive(Clone, Debug)]
struct Partial {
    slots: Vec<Slot>,
    /// Blocks received.
    received: u32,
    /// Blocks neither received nor requested.
    free: u32,
}

impl Partial {
    fn new(blocks: u32) -> Partial {
        Partial {
            slots: vec![Slot::default(); blocks as usize],
            received: 0,
            free: blocks,
        }
    }

    fn is_complete(&self) -> bool {
        self.received as usize == self.slots.len()
    }

    /// No block received and none outstanding: the piece can go back to being untouched.
    fn is_idle(&self) -> bool {
        self.received == 0 && self.free as usize == self.slots.len()
    }

    /// Removes `peer` from the requesters of block `b`; returns whether it was one.
    fn unrequest(&mut self, b: usize, peer: PeerKey) -> bool {
        let Some(slot) = self.slots.get_mut(b) else {
            return false;
        };
        let Some(i) = slot.requested_by.iter().position(|&p| p == peer) else {
            return false;
        };
        slot.requested_by.swap_remove(i);
        if slot.requested_by.is_empty() && slot.received_from.is_none() {
            self.free += 1;
        }
        true
    }
}

/// The piece picker for one torrent. See the [module documentation](self) for the policy and the data
/// structure.
#[derive(Clone, Debug)]
pub struct Picker {
    config: PickerConfig,
    geo: Geometry,
    /// Verified pieces.
    have: Bitfield,
    /// Pieces the user selected.
    wanted: Bitfield,
    /// `wanted` and not `have`.
    needed: Bitfield,
    /// Bytes in `needed` pieces.
    left: u64,
    /// Per piece: connected peers that announced it individually (seeds are in `seeds`).
    avail: Vec<u32>,
    /// Connected peers that sent `have all`.
    seeds: u32,
    /// Pieces that may start (needed, not partial), sorted by `avail`.
    order: Vec<u32>,
    /// Per piece: its index in `order`, or `NOT_IN_ORDER`.
    pos: Vec<u32>,
    /// `starts[a]`: index in `order` of the first piece with availability >= `a`. Never empty;
    /// `starts[0] == 0`; trailing empty levels are trimmed.
    starts: Vec<u32>,
    /// Pieces in progress.
    partials: BTreeMap<u32, Partial>,
}

impl Picker {
    /// A picker for a torrent of `pieces` pieces of `piece_length` bytes (the last one may be shorter)
    /// totalling `total_length` bytes, with nothing had, every piece wanted, and no peers.
    pub fn new(
        pieces: u32,
        piece_length: u32,
        total_length: u64,
        config: PickerConfig,
    ) -> Result<Picker, PickerError> {
        if piece_length == 0 {
            return Err(PickerError::ZeroPieceLength);
        }
        let expected = total_length.div_ceil(u64::from(piece_length));
        if expected != u64::from(pieces) {
            return Err(PickerError::PieceCountMismatch {
                pieces,
                expected,
                piece_length,
                total_length,
            });
        }
        let mut picker = Picker {
            config,
            geo: Geometry {
                pieces,
                piece_length,
                total_length,
            },
            have: Bitfield::new(pieces),
            wanted: Bitfield::full(pieces),
            needed: Bitfield::full(pieces),
            left: total_length,
            avail: vec![0; pieces as usize],
            seeds: 0,
            order: (0..pieces).collect(),
            pos: (0..pieces).collect(),
            starts: vec![0],
            partials: BTreeMap::new(),
        };
        picker.config.endgame_max_requesters = picker.config.endgame_max_requesters.max(1);
        Ok(picker)
    }

    // ----- geometry and progress -------------------------------------------------------------------

    /// Number of pieces in the torrent.
    pub fn num_pieces(&self) -> u32 {
        self.geo.pieces
    }

    /// Size in bytes of `piece` (0 if out of range).
    pub fn piece_size(&self, piece: u32) -> u32 {
        self.geo.piece_size(piece)
    }

    /// Number of blocks in `piece` (0 if out of range).
    pub fn block_count(&self, piece: u32) -> u32 {
        self.geo.block_count(piece)
    }

    /// The verified pieces, ready to send as our `bitfield`.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// The pieces the user selected.
    pub fn wanted(&self) -> &Bitfield {
        &self.wanted
    }

    /// The pieces still needed: wanted and not verified.
    pub fn needed(&self) -> &Bitfield {
        &self.needed
    }

    /// Bytes still needed (wanted and not verified): the tracker's `left`.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// Bytes of verified pieces (wanted or not).
    pub fn have_bytes(&self) -> u64 {
        let full = u64::from(self.have.count_ones()) * u64::from(self.geo.piece_length);
        // Correct for a short last piece.
        match self.geo.pieces.checked_sub(1) {
            Some(last) if self.have.get(last) => {
                full - u64::from(self.geo.piece_length) + u64::from(self.geo.piece_size(last))
            }
            _ => full,
        }
    }

    /// Bytes of the wanted pieces (what a complete download of the selection amounts to).
    pub fn wanted_bytes(&self) -> u64 {
        let full = u64::from(self.wanted.count_ones()) * u64::from(self.geo.piece_length);
        match self.geo.pieces.checked_sub(1) {
            Some(last) if self.wanted.get(last) => {
                full - u64::from(self.geo.piece_length) + u64::from(self.geo.piece_size(last))
            }
            _ => full,
        }
    }

    /// Fraction of the wanted bytes verified, in `0.0..=1.0` (1.0 when nothing is wanted).
    pub fn progress(&self) -> f64 {
        let wanted = self.wanted_bytes();
        if wanted == 0 {
            1.0
        } else {
            (wanted - self.left) as f64 / wanted as f64
        }
    }

    /// Whether every wanted piece is verified (the moment to announce `completed` and to stop being
    /// interested).
    pub fn is_complete(&self) -> bool {
        self.needed.none()
    }

    /// Whether a peer has some piece we still need (whether to be `interested` in it).
    pub fn is_interesting(&self, peer: PeerPieces<'_>) -> bool {
        match peer {
            PeerPieces::All => !self.needed.none(),
            PeerPieces::Bitfield(b) => b.intersects(&self.needed),
        }
    }

    /// How many connected peers have `piece` (seeds included).
    pub fn availability(&self, piece: u32) -> u32 {
        self.avail
            .get(piece as usize)
            .map_or(0, |a| a.saturating_add(self.seeds))
    }

    /// Pieces in progress: some block requested or received, not yet verified.
    pub fn partial_pieces(&self) -> impl Iterator<Item = u32> + '_ {
        self.partials.keys().copied()
    }

    /// The blocks outstanding at `peer` (O(blocks of partial pieces)).
    pub fn requests_of(&self, peer: PeerKey) -> Vec<BlockRequest> {
        let mut out = Vec::new();
        for (&piece, partial) in &self.partials {
            for (b, slot) in partial.slots.iter().enumerate() {
                if slot.requested_by.contains(&peer) {
                    out.push(self.request_for(piece, b as u32));
                }
            }
        }
        out
    }

    /// Outstanding requests on pieces that are no longer wanted (after a selection change), so the
    /// caller can cancel them; the requests stay recorded until cancelled or answered.
    pub fn requests_for_unwanted(&self) -> Vec<(PeerKey, BlockRequest)> {
        let mut out = Vec::new();
        for (&piece, partial) in &self.partials {
            if self.wanted.get(piece) {
                continue;
            }
            for (b, slot) in partial.slots.iter().enumerate() {
                for &peer in &slot.requested_by {
                    out.push((peer, self.request_for(piece, b as u32)));
                }
            }
        }
        out
    }

    /// Whether the endgame is on: something is still needed, but every missing block of it is already
    /// requested from someone.
    pub fn in_endgame(&self) -> bool {
        self.order.is_empty()
            && !self.needed.none()
            && self
                .partials
                .iter()
                .all(|(&p, partial)| partial.free == 0 || !self.needed.get(p))
    }

    fn request_for(&self, piece: u32, block: u32) -> BlockRequest {
        BlockRequest {
            piece,
            offset: block * BLOCK_SIZE,
            length: self.geo.block_length(piece, block),
        }
    }

    // ----- file selection and resume ---------------------------------------------------------------

    /// Replaces the selection: piece `i` is wanted iff `wanted.get(i)`. A piece that straddles a selected
    /// and a skipped file must be marked wanted by the caller. Takes effect for the very next pick;
    /// requests already out on pieces no longer wanted are listed by [`Picker::requests_for_unwanted`].
    pub fn set_wanted(&mut self, wanted: &Bitfield) {
        for piece in 0..self.geo.pieces {
            self.set_piece_wanted(piece, wanted.get(piece));
        }
    }

    /// Selects or deselects one piece; returns whether anything changed.
    pub fn set_piece_wanted(&mut self, piece: u32, wanted: bool) -> bool {
        if !self.wanted.assign(piece, wanted) {
            return false;
        }
        self.refresh_needed(piece);
        true
    }

    /// Records that `piece` passed its hash check (or was found intact on disk when resuming): it is
    /// had, leaves the partial set, and no longer counts in `left`. Returns `false` for an index out of
    /// range or a piece already had.
    pub fn piece_verified(&mut self, piece: u32) -> bool {
        if !self.have.set(piece) {
            return false;
        }
        self.partials.remove(&piece);
        self.refresh_needed(piece);
        true
    }

    /// Records that `piece` failed its hash check: all its blocks become requestable again and the peers
    /// that delivered any of its blocks are returned (sorted, without repeats) so the caller can strike
    /// them. Empty if the piece was not in progress.
    pub fn piece_failed(&mut self, piece: u32) -> Vec<PeerKey> {
        let Some(partial) = self.partials.remove(&piece) else {
            return Vec::new();
        };
        let mut culprits: Vec<PeerKey> = partial
            .slots
            .iter()
            .filter_map(|s| s.received_from)
            .collect();
        culprits.sort_unstable();
        culprits.dedup();
        self.refresh_order(piece);
        culprits
    }

    /// Recomputes `needed`/`left` for `piece` after `have` or `wanted` changed, then its place in `order`.
    fn refresh_needed(&mut self, piece: u32) {
        let need = self.wanted.get(piece) && !self.have.get(piece);
        if self.needed.assign(piece, need) {
            let size = u64::from(self.geo.piece_size(piece));
            if need {
                self.left += size;
            } else {
                self.left -= size;
            }
        }
        self.refresh_order(piece);
    }

    // ----- availability ----------------------------------------------------------------------------

    /// A peer announced `piece` with `have`. Call once per (peer, piece).
    pub fn peer_has(&mut self, piece: u32) {
        if piece < self.geo.pieces {
            self.avail_inc(piece);
        }
    }

    /// A peer sent its `bitfield`: every piece in it becomes one more available. O(pieces in it).
    pub fn peer_bitfield(&mut self, pieces: &Bitfield) {
        for piece in pieces.iter_ones() {
            self.peer_has(piece);
        }
    }

    /// A peer sent `have all`: O(1), see the module documentation.
    pub fn peer_has_all(&mut self) {
        self.seeds += 1;
    }

    /// A peer disconnected: its outstanding requests become requestable again and its pieces count one
    /// less. `pieces` must be what it announced (its bitfield, or `All` if it sent `have all`).
    pub fn peer_disconnected(&mut self, peer: PeerKey, pieces: PeerPieces<'_>) {
        self.release_peer(peer);
        match pieces {
            PeerPieces::All => self.seeds = self.seeds.saturating_sub(1),
            PeerPieces::Bitfield(b) => {
                for piece in b.iter_ones() {
                    if piece < self.geo.pieces {
                        self.avail_dec(piece);
                    }
                }
            }
        }
    }

    // ----- requests --------------------------------------------------------------------------------

    /// Chooses up to `max_blocks` new block requests for `peer`, which has `pieces`, and records them
    /// as outstanding at that peer. See the module documentation for the order of preference.
    pub fn pick(
        &mut self,
        peer: PeerKey,
        pieces: PeerPieces<'_>,
        max_blocks: usize,
        rng: &mut CoreRng,
    ) -> Vec<BlockRequest> {
        let mut out = Vec::new();
        self.pick_into(peer, pieces, None, max_blocks, rng, &mut out);
        out
    }

    /// Like [`Picker::pick`], but only among `allowed` pieces: for a peer that chokes us but sent
    /// `allowed fast` (BEP 6) for those pieces. Indexes out of range are ignored.
    pub fn pick_allowed_fast(
        &mut self,
        peer: PeerKey,
        pieces: PeerPieces<'_>,
        allowed: &[u32],
        max_blocks: usize,
        rng: &mut CoreRng,
    ) -> Vec<BlockRequest> {
        let mut out = Vec::new();
        self.pick_into(peer, pieces, Some(allowed), max_blocks, rng, &mut out);
        out
    }

    fn pick_into(
        &mut self,
        peer: PeerKey,
        pieces: PeerPieces<'_>,
        allowed: Option<&[u32]>,
        max_blocks: usize,
        rng: &mut CoreRng,
        out: &mut Vec<BlockRequest>,
    ) {
        let is_allowed = |piece: u32| match allowed {
            None => true,
            Some(a) => a.contains(&piece),
        };
        let geo = self.geo;
        // 1. Free blocks of partial pieces.
        for (&piece, partial) in self.partials.iter_mut() {
            if out.len() >= max_blocks {
                return;
            }
            if partial.free == 0
                || !self.needed.get(piece)
                || !pieces.has(piece)
                || !is_allowed(piece)
            {
                continue;
            }
            take_free_blocks(geo, piece, partial, peer, max_blocks, out);
        }
        // 2. New pieces: random at first, then rarest first.
        while out.len() < max_blocks {
            let Some(piece) = self.choose_new_piece(pieces, allowed, rng) else {
                break;
            };
            let mut partial = Partial::new(geo.block_count(piece));
            take_free_blocks(geo, piece, &mut partial, peer, max_blocks, out);
            self.partials.insert(piece, partial);
            self.refresh_order(piece);
        }
        // 3. Endgame: duplicate requests, least-requested blocks first.
        if out.len() < max_blocks && self.in_endgame() {
            for level in 1..self.config.endgame_max_requesters {
                for (&piece, partial) in self.partials.iter_mut() {
                    if !self.needed.get(piece) || !pieces.has(piece) || !is_allowed(piece) {
                        continue;
                    }
                    for (b, slot) in partial.slots.iter_mut().enumerate() {
                        if out.len() >= max_blocks {
                            return;
                        }
                        if slot.received_from.is_none()
                            && slot.requested_by.len() == level
                            && !slot.requested_by.contains(&peer)
                        {
                            slot.requested_by.push(peer);
                            out.push(BlockRequest {
                                piece,
                                offset: b as u32 * BLOCK_SIZE,
                                length: geo.block_length(piece, b as u32),
                            });
                        }
                    }
                }
            }
        }
    }

    /// The next piece to start for a peer with `pieces`, or `None` if it has none we can start.
    fn choose_new_piece(
        &self,
        pieces: PeerPieces<'_>,
        allowed: Option<&[u32]>,
        rng: &mut CoreRng,
    ) -> Option<u32> {
        if let Some(allowed) = allowed {
            // Rarest among the (few) allowed pieces; random tie-break by reservoir sampling.
            let mut best: Option<(u32, u32)> = None;
            let mut ties = 0u32;
            for &piece in allowed {
                let in_order = self
                    .pos
                    .get(piece as usize)
                    .is_some_and(|&i| i != NOT_IN_ORDER);
                if !in_order || !pieces.has(piece) {
                    continue;
                }
                let a = self.avail.get(piece as usize).copied().unwrap_or(0);
                match best {
                    Some((_, best_a)) if a > best_a => {}
                    Some((best_p, best_a)) if a == best_a => {
                        if best_p == piece {
                            continue;
                        }
                        ties += 1;
                        if rng.random_range(0..ties + 1) == 0 {
                            best = Some((piece, a));
                        }
                    }
                    _ => {
                        best = Some((piece, a));
                        ties = 0;
                    }
                }
            }
            return best.map(|(p, _)| p);
        }
        if self.order.is_empty() {
            return None;
        }
        if self.config.sequential {
            let startable = |p: u32| self.pos.get(p as usize).is_some_and(|&i| i != NOT_IN_ORDER);
            return self
                .needed
                .iter_ones()
                .find(|&p| startable(p) && pieces.has(p));
        }
        if self.have.count_ones() < self.config.random_first_pieces {
            return self.scan_from_random(0, self.order.len(), pieces, rng);
        }
        for level in 0..self.starts.len() {
            let (start, end) = (self.starts[level] as usize, self.level_end(level));
            if let Some(piece) = self.scan_from_random(start, end, pieces, rng) {
                return Some(piece);
            }
        }
        None
    }

    /// The first piece in `order[start..end]` the peer has, scanning from a random point and wrapping.
    fn scan_from_random(
        &self,
        start: usize,
        end: usize,
        pieces: PeerPieces<'_>,
        rng: &mut CoreRng,
    ) -> Option<u32> {
        if start >= end {
            return None;
        }
        let first = rng.random_range(start..end);
        let range = self.order.get(first..end)?.iter();
        let wrapped = self.order.get(start..first)?.iter();
        range.chain(wrapped).copied().find(|&p| pieces.has(p))
    }

    /// A block arrived from `peer`. Accepts it if it belongs to a piece in progress and is not had yet,
    /// even if it was requested from another peer (a late answer to a timed-out request is still data).
    pub fn block_received(
        &mut self,
        peer: PeerKey,
        piece: u32,
        offset: u32,
        length: u32,
    ) -> BlockReceived {
        if self.have.get(piece) {
            return BlockReceived::Duplicate;
        }
        let geo = self.geo;
        let Some(partial) = self.partials.get_mut(&piece) else {
            return BlockReceived::Unexpected;
        };
        let b = offset / BLOCK_SIZE;
        if b * BLOCK_SIZE != offset {
            return BlockReceived::Unexpected;
        }
        if length == 0 || length != geo.block_length(piece, b) {
            return BlockReceived::Unexpected;
        }
        let Some(slot) = partial.slots.get_mut(b as usize) else {
            return BlockReceived::Unexpected;
        };
        if slot.received_from.is_some() {
            // A request of this peer for it may linger if the block raced with a cancel.
            slot.requested_by.retain(|&p| p != peer);
            return BlockReceived::Duplicate;
        }
        if slot.requested_by.is_empty() {
            partial.free -= 1;
        }
        slot.received_from = Some(peer);
        let cancel: Vec<PeerKey> = slot.requested_by.drain(..).filter(|&p| p != peer).collect();
        partial.received += 1;
        BlockReceived::New {
            piece_complete: partial.is_complete(),
            cancel,
        }
    }

    /// A request of `peer` ended without data: we cancelled it, it timed out, or the peer rejected it
    /// (BEP 6). The block becomes requestable again unless others still have it outstanding. Returns
    /// whether that request was outstanding.
    pub fn request_cancelled(&mut self, peer: PeerKey, request: BlockRequest) -> bool {
        let b = request.offset / BLOCK_SIZE;
        if b * BLOCK_SIZE != request.offset {
            return false;
        }
        let piece = request.piece;
        let Some(partial) = self.partials.get_mut(&piece) else {
            return false;
        };
        let found = partial.unrequest(b as usize, peer);
        if partial.is_idle() {
            self.partials.remove(&piece);
            self.refresh_order(piece);
        }
        found
    }

    /// Forgets every request outstanding at `peer` (it choked us without the fast extension, or is
    /// going away); returns how many there were. Partial pieces left with nothing received and nothing
    /// requested go back to being untouched, so rarest-first applies to them again.
    pub fn release_peer(&mut self, peer: PeerKey) -> usize {
        let mut released = 0;
        let mut idle = Vec::new();
        for (&piece, partial) in self.partials.iter_mut() {
            for b in 0..partial.slots.len() {
                if partial.unrequest(b, peer) {
                    released += 1;
                }
            }
            if partial.is_idle() {
                idle.push(piece);
            }
        }
        for piece in idle {
            self.partials.remove(&piece);
            self.refresh_order(piece);
        }
        released
    }

    // ----- the bucketed order (see module docs) ----------------------------------------------------

    /// Puts `piece` into or out of `order` according to whether it may start.
    fn refresh_order(&mut self, piece: u32) {
        let should = self.needed.get(piece) && !self.partials.contains_key(&piece);
        let is = self
            .pos
            .get(piece as usize)
            .is_some_and(|&i| i != NOT_IN_ORDER);
        match (should, is) {
            (true, false) => self.order_insert(piece),
            (false, true) => self.order_remove(piece),
            _ => {}
        }
    }

    fn level_end(&self, level: usize) -> usize {
        self.starts
            .get(level + 1)
            .map_or(self.order.len(), |&s| s as usize)
    }

    fn swap_order(&mut self, i: usize, j: usize) {
        self.order.swap(i, j);
        let (pi, pj) = (self.order[i], self.order[j]);
        self.pos[pi as usize] = i as u32;
        self.pos[pj as usize] = j as u32;
    }

    fn trim_levels(&mut self) {
        while self.starts.len() > 1 && self.starts.last() == Some(&(self.order.len() as u32)) {
            self.starts.pop();
        }
    }

    fn order_insert(&mut self, piece: u32) {
        let a = self.avail[piece as usize] as usize;
        let mut i = self.order.len();
        self.order.push(piece);
        self.pos[piece as usize] = i as u32;
        while self.starts.len() <= a {
            self.starts.push(i as u32);
        }
        // Bubble down from the top level to the end of level `a`.
        for level in (a + 1..self.starts.len()).rev() {
            let first = self.starts[level] as usize;
            self.swap_order(i, first);
            i = first;
            self.starts[level] += 1;
        }
        self.trim_levels();
    }

    fn order_remove(&mut self, piece: u32) {
        let a = self.avail[piece as usize] as usize;
        let mut i = self.pos[piece as usize] as usize;
        let last_of_a = self.level_end(a) - 1;
        self.swap_order(i, last_of_a);
        i = last_of_a;
        for level in a + 1..self.starts.len() {
            self.starts[level] -= 1;
            let last = self.level_end(level) - 1;
            self.swap_order(i, last);
            i = last;
        }
        self.order.pop();
        self.pos[piece as usize] = NOT_IN_ORDER;
        self.trim_levels();
    }

    fn avail_inc(&mut self, piece: u32) {
        let p = piece as usize;
        let a = self.avail[p];
        self.avail[p] = a.saturating_add(1);
        if self.pos[p] == NOT_IN_ORDER || a == u32::MAX {
            return;
        }
        let a = a as usize;
        if self.starts.len() <= a + 1 {
            self.starts.push(self.order.len() as u32);
        }
        let last_of_a = self.level_end(a) - 1;
        self.swap_order(self.pos[p] as usize, last_of_a);
        self.starts[a + 1] -= 1;
    }

    fn avail_dec(&mut self, piece: u32) {
        let p = piece as usize;
        let a = self.avail[p];
        if a == 0 {
            return;
        }
        self.avail[p] = a - 1;
        if self.pos[p] == NOT_IN_ORDER {
            return;
        }
        let first = self.starts[a as usize] as usize;
        self.swap_order(self.pos[p] as usize, first);
        self.starts[a as usize] += 1;
        self.trim_levels();
    }

    /// Checks every internal invariant; for tests.
    #[cfg(test)]
    fn check_invariants(&self) {
        assert_eq!(
            self.order.len(),
            self.pos.iter().filter(|&&i| i != NOT_IN_ORDER).count()
        );
        for (i, &piece) in self.order.iter().enumerate() {
            assert_eq!(self.pos[piece as usize] as usize, i, "pos of {piece}");
        }
        for piece in 0..self.geo.pieces {
            let should = self.needed.get(piece) && !self.partials.contains_key(&piece);
            assert_eq!(
                should,
                self.pos[piece as usize] != NOT_IN_ORDER,
                "membership of {piece}"
            );
            assert_eq!(
                self.needed.get(piece),
                self.wanted.get(piece) && !self.have.get(piece)
            );
            assert!(!(self.have.get(piece) && self.partials.contains_key(&piece)));
        }
        assert!(!self.starts.is_empty() && self.starts[0] == 0);
        for level in 0..self.starts.len() {
            for i in self.starts[level] as usize..self.level_end(level) {
                assert_eq!(self.avail[self.order[i] as usize] as usize, level);
            }
        }
        if self.starts.len() > 1 {
            assert!((*self.starts.last().unwrap() as usize) < self.order.len());
        }
        let left: u64 = self
            .needed
            .iter_ones()
            .map(|p| u64::from(self.piece_size(p)))
            .sum();
        assert_eq!(left, self.left);
        for (&piece, partial) in &self.partials {
            assert_eq!(partial.slots.len() as u32, self.block_count(piece));
            let received = partial
                .slots
                .iter()
                .filter(|s| s.received_from.is_some())
                .count();
            let free = partial
                .slots
                .iter()
                .filter(|s| s.received_from.is_none() && s.requested_by.is_empty())
                .count();
            assert_eq!(received as u32, partial.received);
            assert_eq!(free as u32, partial.free);
            assert!(!partial.is_idle(), "idle partial {piece} kept");
            for s in &partial.slots {
                assert!(s.received_from.is_none() || s.requested_by.is_empty());
                assert!(s.requested_by.len() <= self.config.endgame_max_requesters);
            }
        }
    }
}

/// Hands out the free blocks of `partial` to `peer` until `out` holds `max_blocks` requests.
fn take_free_blocks(
    geo: Geometry,
    piece: u32,
    partial: &mut Partial,
    peer: PeerKey,
    max_blocks: usize,
    out: &mut Vec<BlockRequest>,
) {
    for (b, slot) in partial.slots.iter_mut().enumerate() {
        if out.len() >= max_blocks || partial.free == 0 {
            return;
        }
        if slot.received_from.is_none() && slot.requested_by.is_empty() {
            slot.requested_by.push(peer);
            partial.free -= 1;
            out.push(BlockRequest {
                piece,
                offset: b as u32 * BLOCK_SIZE,
                length: geo.block_length(piece, b as u32),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::seeded;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const A: PeerKey = PeerKey(1);
    const B: PeerKey = PeerKey(2);
    const C: PeerKey = PeerKey(3);

    /// `pieces` pieces of `blocks` full blocks each.
    fn picker(pieces: u32, blocks: u32, config: PickerConfig) -> Picker {
        let len = blocks * BLOCK_SIZE;
        Picker::new(pieces, len, u64::from(pieces) * u64::from(len), config).unwrap()
    }

    #[test]
    fn sequential_starts_pieces_in_index_order() {
        let config = PickerConfig {
            sequential: true,
            ..PickerConfig::default()
        };
        let mut p = picker(10, 1, config);
        let mut rng = seeded(4);
        // Piece 0 is rarer than the rest, but order is by index; pieces the peer lacks are skipped.
        p.peer_bitfield(&bits(10, &[1, 2, 3, 5, 6, 7, 8, 9]));
        p.peer_bitfield(&bits(10, &[0, 1, 2, 3, 5, 6, 7, 8, 9]));
        let peer = bits(10, &[2, 3, 5, 6]);
        let got: Vec<u32> = p
            .pick(PeerKey(1), PeerPieces::Bitfield(&peer), 3, &mut rng)
            .iter()
            .map(|b| b.piece)
            .collect();
        assert_eq!(got, vec![2, 3, 5]);
    }

    fn rarest_config() -> PickerConfig {
        PickerConfig {
            random_first_pieces: 0,
            ..PickerConfig::default()
        }
    }

    fn bits(n: u32, ones: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(n);
        for &i in ones {
            b.set(i);
        }
        b
    }

    fn pieces_of(reqs: &[BlockRequest]) -> BTreeSet<u32> {
        reqs.iter().map(|r| r.piece).collect()
    }

    #[test]
    fn geometry_and_constructor_errors() {
        assert_eq!(
            Picker::new(3, 0, 10, PickerConfig::default()).unwrap_err(),
            PickerError::ZeroPieceLength
        );
        let err = Picker::new(3, 32768, 100_000, PickerConfig::default()).unwrap_err();
        assert_eq!(
            err,
            PickerError::PieceCountMismatch {
                pieces: 3,
                expected: 4,
                piece_length: 32768,
                total_length: 100_000
            }
        );
        assert!(err.to_string().contains("100000 bytes") && err.to_string().contains("4 pieces"));
        // 2 pieces of 40000 bytes, the last one 10000 bytes.
        let p = Picker::new(2, 40_000, 50_000, PickerConfig::default()).unwrap();
        assert_eq!(
            (p.piece_size(0), p.piece_size(1), p.piece_size(2)),
            (40_000, 10_000, 0)
        );
        assert_eq!((p.block_count(0), p.block_count(1)), (3, 1));
        assert_eq!(p.geo.block_length(0, 2), 40_000 - 2 * BLOCK_SIZE);
        assert_eq!(p.left(), 50_000);
        let empty = Picker::new(0, 16384, 0, PickerConfig::default()).unwrap();
        assert!(empty.is_complete());
        assert_eq!(empty.progress(), 1.0);
    }

    #[test]
    fn last_block_of_last_piece_is_short() {
        let mut p = Picker::new(
            2,
            2 * BLOCK_SIZE,
            u64::from(3 * BLOCK_SIZE) + 100,
            rarest_config(),
        )
        .unwrap();
        p.peer_has_all();
        let reqs = p.pick(A, PeerPieces::All, 10, &mut seeded(1));
        assert_eq!(reqs.len(), 4);
        assert!(reqs.contains(&BlockRequest {
            piece: 1,
            offset: BLOCK_SIZE,
            length: 100
        }));
        p.check_invariants();
    }

    #[test]
    fn rarest_first_picks_least_available() {
        for seed in 0..20 {
            let mut p = picker(10, 1, rarest_config());
            // Piece 7 is held by one peer, every other piece by three.
            let common: Vec<u32> = (0..10).filter(|&i| i != 7).collect();
            p.peer_bitfield(&bits(10, &common));
            p.peer_bitfield(&bits(10, &common));
            p.peer_bitfield(&Bitfield::full(10));
            p.peer_has_all();
            assert_eq!(p.availability(7), 2);
            assert_eq!(p.availability(3), 4);
            let reqs = p.pick(A, PeerPieces::All, 1, &mut seeded(seed));
            assert_eq!(
                reqs,
                vec![BlockRequest {
                    piece: 7,
                    offset: 0,
                    length: BLOCK_SIZE
                }]
            );
            // A newcomer holding all but 2 (and 7) makes 2 the rarest of the untouched pieces.
            let newcomer = bits(10, &[0, 1, 3, 4, 5, 6, 8, 9]);
            p.peer_bitfield(&newcomer);
            let reqs = p.pick(A, PeerPieces::All, 1, &mut seeded(seed));
            assert_eq!(pieces_of(&reqs), BTreeSet::from([2]));
            // When it and a common peer leave, 2 is as common as the rest again, but it was started;
            // of the rest, pieces 0 and 1 are now rarest after a newcomer holding 3..=9 arrives.
            p.peer_disconnected(B, PeerPieces::Bitfield(&newcomer));
            p.peer_disconnected(C, PeerPieces::Bitfield(&bits(10, &common)));
            p.peer_bitfield(&bits(10, &[3, 4, 5, 6, 7, 8, 9]));
            let reqs = p.pick(A, PeerPieces::All, 2, &mut seeded(seed));
            assert_eq!(pieces_of(&reqs), BTreeSet::from([0, 1]));
            p.check_invariants();
        }
    }

    #[test]
    fn rarest_first_only_among_pieces_the_peer_has() {
        let mut p = picker(6, 1, rarest_config());
        p.peer_bitfield(&bits(6, &[0, 1, 2, 3, 4, 5]));
        p.peer_bitfield(&bits(6, &[1, 2, 3, 4, 5]));
        p.peer_bitfield(&bits(6, &[4, 5]));
        // Rarest overall is 0 (1 peer), but this peer only has 3 and 4: 3 is rarer (2 vs 3).
        let reqs = p.pick(
            A,
            PeerPieces::Bitfield(&bits(6, &[3, 4])),
            1,
            &mut seeded(5),
        );
        assert_eq!(pieces_of(&reqs), BTreeSet::from([3]));
    }

    #[test]
    fn tie_break_is_random_but_deterministic_per_seed() {
        let first_pick = |seed: u64| {
            let mut p = picker(50, 1, rarest_config());
            p.peer_bitfield(&Bitfield::full(50));
            p.pick(A, PeerPieces::All, 1, &mut seeded(seed))[0].piece
        };
        let picks: Vec<u32> = (0..40).map(first_pick).collect();
        assert_eq!(picks, (0..40).map(first_pick).collect::<Vec<_>>());
        let distinct: BTreeSet<u32> = picks.iter().copied().collect();
        assert!(
            distinct.len() >= 15,
            "tie-break barely random: {distinct:?}"
        );
    }

    #[test]
    fn first_pieces_are_random_then_rarest() {
        let setup = || {
            let mut p = picker(20, 1, PickerConfig::default());
            p.peer_bitfield(&Bitfield::full(20));
            p.peer_bitfield(&bits(20, &(1..20).collect::<Vec<_>>()));
            p
        };
        let firsts: BTreeSet<u32> = (0..30)
            .map(|seed| setup().pick(A, PeerPieces::All, 1, &mut seeded(seed))[0].piece)
            .collect();
        assert!(firsts.len() > 5, "first piece not random: {firsts:?}");
        for seed in 0..30 {
            let mut p = setup();
            for piece in [10, 11, 12, 13] {
                p.piece_verified(piece);
            }
            assert_eq!(p.pick(A, PeerPieces::All, 1, &mut seeded(seed))[0].piece, 0);
        }
    }

    #[test]
    fn partial_pieces_are_finished_first() {
        let mut p = picker(8, 4, rarest_config());
        p.peer_bitfield(&Bitfield::full(8));
        let mut rng = seeded(3);
        let a = p.pick(A, PeerPieces::All, 2, &mut rng);
        let started = a[0].piece;
        assert_eq!(pieces_of(&a), BTreeSet::from([started]));
        // Make another piece strictly rarer: a partial piece still comes first.
        p.peer_bitfield(&bits(
            8,
            &(0..8)
                .filter(|&i| i != (started + 1) % 8)
                .collect::<Vec<_>>(),
        ));
        let b = p.pick(B, PeerPieces::All, 3, &mut rng);
        assert_eq!(
            &b[..2],
            &[
                BlockRequest {
                    piece: started,
                    offset: 2 * BLOCK_SIZE,
                    length: BLOCK_SIZE
                },
                BlockRequest {
                    piece: started,
                    offset: 3 * BLOCK_SIZE,
                    length: BLOCK_SIZE
                },
            ]
        );
        assert_eq!(b[2].piece, (started + 1) % 8);
        // A peer without the partial piece gets a fresh one instead.
        let lacks = bits(8, &[(started + 5) % 8]);
        let c = p.pick(C, PeerPieces::Bitfield(&lacks), 4, &mut rng);
        assert_eq!(pieces_of(&c), BTreeSet::from([(started + 5) % 8]));
        p.check_invariants();
    }

    #[test]
    fn wanted_mask_excludes_pieces_and_straddling_piece_is_fetched() {
        let mut p = picker(10, 1, rarest_config());
        p.peer_has_all();
        // File 1 covers pieces 0..=4, file 2 pieces 4..=9 (piece 4 straddles): only file 1 is selected,
        // so the caller marks pieces 0..=4 wanted.
        p.set_wanted(&bits(10, &[0, 1, 2, 3, 4]));
        assert_eq!(p.left(), 5 * u64::from(BLOCK_SIZE));
        let reqs = p.pick(A, PeerPieces::All, 100, &mut seeded(9));
        assert_eq!(pieces_of(&reqs), BTreeSet::from([0, 1, 2, 3, 4]));
        for r in &reqs {
            assert!(matches!(
                p.block_received(A, r.piece, r.offset, r.length),
                BlockReceived::New {
                    piece_complete: true,
                    ..
                }
            ));
            p.piece_verified(r.piece);
        }
        assert!(p.is_complete());
        assert_eq!(p.left(), 0);
        assert_eq!(p.progress(), 1.0);
        assert!(!p.is_interesting(PeerPieces::All));
        assert!(p.pick(A, PeerPieces::All, 100, &mut seeded(9)).is_empty());
        assert_eq!(p.have_bytes(), 5 * u64::from(BLOCK_SIZE));
        p.check_invariants();
    }

    #[test]
    fn selection_change_takes_effect_at_once() {
        let mut p = picker(10, 2, rarest_config());
        p.peer_has_all();
        let mut rng = seeded(4);
        let first = p.pick(A, PeerPieces::All, 1, &mut rng);
        let started = first[0].piece;
        let keep = (started + 3) % 10;
        p.set_wanted(&bits(10, &[keep]));
        assert_eq!(p.left(), 2 * u64::from(BLOCK_SIZE));
        // The started piece is no longer wanted: its free block is not handed out, only `keep` is.
        let next = p.pick(B, PeerPieces::All, 10, &mut rng);
        assert_eq!(pieces_of(&next), BTreeSet::from([keep]));
        assert_eq!(p.requests_for_unwanted(), vec![(A, first[0])]);
        assert!(p.request_cancelled(A, first[0]));
        assert!(p.requests_for_unwanted().is_empty());
        // Selecting more pieces again makes them pickable at once.
        p.set_piece_wanted(started, true);
        // (A's cancelled request left it idle, so it starts afresh at block 0.)
        let back = p.pick(C, PeerPieces::All, 1, &mut rng);
        assert_eq!(
            back,
            vec![BlockRequest {
                piece: started,
                offset: 0,
                length: BLOCK_SIZE
            }]
        );
        p.check_invariants();
    }

    #[test]
    fn endgame_duplicates_and_reports_cancels() {
        let mut p = picker(2, 2, rarest_config());
        p.peer_has_all();
        p.peer_has_all();
        p.peer_has_all();
        let mut rng = seeded(1);
        let a = p.pick(A, PeerPieces::All, 3, &mut rng);
        assert_eq!(a.len(), 3);
        assert!(!p.in_endgame());
        let b = p.pick(B, PeerPieces::All, 1, &mut rng);
        assert_eq!(b.len(), 1, "the last free block goes out normally");
        assert!(p.in_endgame());
        // B may now duplicate A's three blocks, but not its own.
        let b2 = p.pick(B, PeerPieces::All, 10, &mut rng);
        assert_eq!(
            b2.iter().copied().collect::<BTreeSet<_>>(),
            a.iter().copied().collect()
        );
        // C duplicates everything once more (3 requesters max, default), B's block included.
        let c = p.pick(C, PeerPieces::All, 10, &mut rng);
        assert_eq!(c.len(), 4);
        assert!(
            p.pick(PeerKey(9), PeerPieces::All, 10, &mut rng).len() == 1,
            "only B's block has 2 requesters"
        );
        let r = a[0];
        assert_eq!(
            p.block_received(B, r.piece, r.offset, r.length),
            BlockReceived::New {
                piece_complete: false,
                cancel: vec![A, C]
            }
            .clone()
            .sorted_cancel()
        );
        assert_eq!(
            p.block_received(A, r.piece, r.offset, r.length),
            BlockReceived::Duplicate
        );
        assert!(
            !p.request_cancelled(C, r),
            "cancel recorded when the block arrived"
        );
        p.check_invariants();
    }

    impl BlockReceived {
        fn sorted_cancel(mut self) -> Self {
            if let BlockReceived::New { cancel, .. } = &mut self {
                cancel.sort();
            }
            self
        }
    }

    #[test]
    fn endgame_not_entered_while_untouched_pieces_remain() {
        let mut p = picker(3, 1, rarest_config());
        let mut rng = seeded(2);
        // A has only piece 0; pieces 1 and 2 are untouched, so A gets no duplicate.
        let only0 = bits(3, &[0]);
        p.peer_bitfield(&only0);
        assert_eq!(
            p.pick(A, PeerPieces::Bitfield(&only0), 5, &mut rng).len(),
            1
        );
        assert!(!p.in_endgame());
        assert!(p
            .pick(B, PeerPieces::Bitfield(&only0), 5, &mut rng)
            .is_empty());
    }

    #[test]
    fn hash_failure_resets_blocks_and_names_contributors() {
        let mut p = picker(1, 3, rarest_config());
        p.peer_has_all();
        let mut rng = seeded(6);
        let a = p.pick(A, PeerPieces::All, 2, &mut rng);
        let b = p.pick(B, PeerPieces::All, 1, &mut rng);
        assert!(matches!(
            p.block_received(A, 0, a[0].offset, a[0].length),
            BlockReceived::New {
                piece_complete: false,
                ..
            }
        ));
        assert!(matches!(
            p.block_received(B, 0, b[0].offset, b[0].length),
            BlockReceived::New {
                piece_complete: false,
                ..
            }
        ));
        // A's second block arrives from C (A's request timed out and was re-requested... or not: data is data).
        assert!(
            matches!(p.block_received(C, 0, a[1].offset, a[1].length), BlockReceived::New { piece_complete: true, cancel } if cancel == vec![A])
        );
        assert!(
            p.pick(A, PeerPieces::All, 5, &mut rng).is_empty(),
            "complete piece awaits its hash"
        );
        assert_eq!(p.piece_failed(0), vec![A, B, C]);
        assert_eq!(p.left(), u64::from(3 * BLOCK_SIZE));
        assert!(p.partial_pieces().next().is_none());
        let again = p.pick(A, PeerPieces::All, 5, &mut rng);
        assert_eq!(again.len(), 3);
        assert!(
            p.piece_failed(0).is_empty(),
            "nothing received since the reset"
        );
        p.check_invariants();
    }

    #[test]
    fn peer_leaving_releases_its_blocks_and_availability() {
        let mut p = picker(4, 2, rarest_config());
        let a_bits = bits(4, &[1, 2]);
        p.peer_bitfield(&a_bits);
        p.peer_bitfield(&bits(4, &[2]));
        let mut rng = seeded(8);
        let a = p.pick(A, PeerPieces::Bitfield(&a_bits), 2, &mut rng);
        assert_eq!(pieces_of(&a), BTreeSet::from([1]));
        assert_eq!(p.requests_of(A), a);
        p.peer_disconnected(A, PeerPieces::Bitfield(&a_bits));
        assert!(p.requests_of(A).is_empty());
        assert_eq!((p.availability(1), p.availability(2)), (0, 1));
        assert!(
            p.partial_pieces().next().is_none(),
            "idle piece back to untouched"
        );
        // B, holding only piece 1, gets exactly the blocks A had.
        let b = p.pick(B, PeerPieces::Bitfield(&bits(4, &[1])), 2, &mut rng);
        assert_eq!(b, a);
        // Releasing a choked peer's requests keeps received blocks.
        assert!(matches!(
            p.block_received(B, b[0].piece, b[0].offset, b[0].length),
            BlockReceived::New { .. }
        ));
        assert_eq!(p.release_peer(B), 1);
        assert_eq!(p.pick(C, PeerPieces::All, 1, &mut rng), vec![b[1]]);
        p.check_invariants();
    }

    #[test]
    fn allowed_fast_picks_only_allowed_pieces() {
        let mut p = picker(10, 2, rarest_config());
        p.peer_bitfield(&bits(10, &[0]));
        p.peer_has_all();
        let mut rng = seeded(11);
        // Piece 0 is rarest, but only 5 and 7 are allowed fast; 42 is out of range and ignored.
        let reqs = p.pick_allowed_fast(A, PeerPieces::All, &[5, 7, 42], 10, &mut rng);
        assert_eq!(pieces_of(&reqs), BTreeSet::from([5, 7]));
        assert_eq!(reqs.len(), 4);
        // An allowed piece the peer does not have is not picked.
        let has = bits(10, &[3]);
        assert!(p
            .pick_allowed_fast(B, PeerPieces::Bitfield(&has), &[4], 10, &mut rng)
            .is_empty());
        // Partial allowed pieces are finished first: release A and let B in.
        p.release_peer(A);
        p.check_invariants();
        let r = p.pick_allowed_fast(B, PeerPieces::All, &[7], 1, &mut rng);
        assert_eq!(r[0].piece, 7);
    }

    #[test]
    fn unexpected_blocks_are_refused() {
        let mut p = Picker::new(
            2,
            2 * BLOCK_SIZE,
            u64::from(3 * BLOCK_SIZE) + 5,
            rarest_config(),
        )
        .unwrap();
        assert_eq!(
            p.block_received(A, 0, 0, BLOCK_SIZE),
            BlockReceived::Unexpected,
            "not started"
        );
        p.pick(A, PeerPieces::All, 4, &mut seeded(1));
        assert_eq!(
            p.block_received(A, 0, 1, BLOCK_SIZE),
            BlockReceived::Unexpected,
            "misaligned"
        );
        assert_eq!(
            p.block_received(A, 0, 0, 100),
            BlockReceived::Unexpected,
            "wrong length"
        );
        assert_eq!(
            p.block_received(A, 0, 2 * BLOCK_SIZE, BLOCK_SIZE),
            BlockReceived::Unexpected,
            "past the piece"
        );
        assert_eq!(
            p.block_received(A, 1, BLOCK_SIZE, BLOCK_SIZE),
            BlockReceived::Unexpected,
            "short last block"
        );
        assert_eq!(
            p.block_received(A, 9, 0, BLOCK_SIZE),
            BlockReceived::Unexpected,
            "no such piece"
        );
        assert!(matches!(
            p.block_received(A, 1, BLOCK_SIZE, 5),
            BlockReceived::New { .. }
        ));
        assert!(!p.request_cancelled(
            A,
            BlockRequest {
                piece: 0,
                offset: 7,
                length: 1
            }
        ));
        p.check_invariants();
    }

    #[test]
    fn progress_counts_short_last_piece() {
        let total = u64::from(3 * BLOCK_SIZE) + 1000;
        let mut p = Picker::new(2, 2 * BLOCK_SIZE, total, rarest_config()).unwrap();
        p.piece_verified(1);
        assert_eq!(p.have_bytes(), u64::from(BLOCK_SIZE) + 1000);
        assert_eq!(p.left(), u64::from(2 * BLOCK_SIZE));
        assert!((p.progress() - (f64::from(BLOCK_SIZE) + 1000.0) / total as f64).abs() < 1e-9);
        assert!(!p.piece_verified(1));
        assert!(!p.piece_verified(2));
        p.set_piece_wanted(0, false);
        assert_eq!(p.wanted_bytes(), u64::from(BLOCK_SIZE) + 1000);
        assert!(p.is_complete());
    }

    #[test]
    fn many_pieces_many_peers_is_fast() {
        // 20,000 pieces, 200 peers with random bitfields: every op stays incremental.
        let n = 20_000;
        let mut p = picker(n, 1, rarest_config());
        let mut rng = seeded(42);
        let mut peers = Vec::new();
        for _ in 0..200 {
            // About a quarter of the pieces each: the AND of two random byte strings.
            let mut x = vec![0u8; n.div_ceil(8) as usize];
            let mut y = x.clone();
            rng.fill(&mut x[..]);
            rng.fill(&mut y[..]);
            let both: Vec<u8> = x.iter().zip(&y).map(|(a, b)| a & b).collect();
            let b = Bitfield::from_wire(&both, n).unwrap();
            p.peer_bitfield(&b);
            peers.push(b);
        }
        for round in 0..2_000 {
            let k = round % peers.len();
            let reqs = p.pick(
                PeerKey(k as u32),
                PeerPieces::Bitfield(&peers[k]),
                4,
                &mut rng,
            );
            for r in reqs {
                if let BlockReceived::New {
                    piece_complete: true,
                    ..
                } = p.block_received(PeerKey(k as u32), r.piece, r.offset, r.length)
                {
                    p.piece_verified(r.piece);
                }
            }
        }
        assert_eq!(p.have().count_ones(), 8_000);
    }

    proptest! {
        /// After any sequence of availability changes, the piece chosen for a peer is one of the least
        /// available pieces that peer has.
        #[test]
        fn rarest_choice_matches_brute_force(
            ops in proptest::collection::vec((any::<bool>(), 0u32..30, 0u32..30), 1..200),
            peer in proptest::collection::vec(any::<bool>(), 30),
            seed in any::<u64>(),
        ) {
            let mut p = picker(30, 1, rarest_config());
            let mut counts = [0u32; 30];
            for (up, piece, verify) in ops {
                if up {
                    p.peer_has(piece);
                    counts[piece as usize] += 1;
                } else if counts[piece as usize] > 0 {
                    p.peer_disconnected(A, PeerPieces::Bitfield(&bits(30, &[piece])));
                    counts[piece as usize] -= 1;
                }
                if verify % 7 == 0 {
                    p.piece_verified(verify);
                }
                p.check_invariants();
            }
            let mut peer_bits = Bitfield::new(30);
            for (i, &x) in peer.iter().enumerate() { peer_bits.assign(i as u32, x); }
            for pieces in [PeerPieces::All, PeerPieces::Bitfield(&peer_bits)] {
                let best = (0..30).filter(|&i| pieces.has(i) && !p.have().get(i)).map(|i| counts[i as usize]).min();
                let chosen = p.choose_new_piece(pieces, None, &mut seeded(seed));
                prop_assert_eq!(chosen.map(|c| counts[c as usize]), best);
            }
        }
    }

    // ----- property test: random operation sequences keep the invariants ---------------------------

    #[derive(Clone, Debug)]
    enum Op {
        Connect(usize, Option<Vec<bool>>),
        Have(usize, u32),
        Disconnect(usize),
        Pick(usize, usize, Option<Vec<u32>>),
        Receive(usize, usize),
        ReceiveGarbage(usize, u32, u32, u32),
        Cancel(usize, usize),
        Release(usize),
        Hashed(usize, bool),
        ResumeVerified(u32),
        Want(u32, bool),
    }

    const PEERS: usize = 4;

    fn op(pieces: u32) -> impl Strategy<Value = Op> {
        let peer = 0..PEERS;
        prop_oneof![
            (
                peer.clone(),
                proptest::option::of(proptest::collection::vec(any::<bool>(), pieces as usize))
            )
                .prop_map(|(p, b)| Op::Connect(p, b)),
            (peer.clone(), 0..pieces).prop_map(|(p, i)| Op::Have(p, i)),
            peer.clone().prop_map(Op::Disconnect),
            (
                peer.clone(),
                0..6usize,
                proptest::option::of(proptest::collection::vec(0..pieces + 1, 0..3))
            )
                .prop_map(|(p, n, a)| Op::Pick(p, n, a)),
            (peer.clone(), any::<usize>()).prop_map(|(p, k)| Op::Receive(p, k)),
            (
                peer.clone(),
                0..pieces + 1,
                0..4 * BLOCK_SIZE,
                0..BLOCK_SIZE + 2
            )
                .prop_map(|(p, i, o, l)| Op::ReceiveGarbage(p, i, o, l)),
            (peer.clone(), any::<usize>()).prop_map(|(p, k)| Op::Cancel(p, k)),
            peer.prop_map(Op::Release),
            (any::<usize>(), any::<bool>()).prop_map(|(k, ok)| Op::Hashed(k, ok)),
            (0..pieces + 1).prop_map(Op::ResumeVerified),
            (0..pieces, any::<bool>()).prop_map(|(i, w)| Op::Want(i, w)),
        ]
    }

    fn scenario() -> impl Strategy<Value = (u32, u32, u32, Vec<Op>)> {
        // pieces, blocks per piece, bytes missing from the last piece
        (1u32..10, 1u32..4, 0u32..BLOCK_SIZE).prop_flat_map(|(n, blocks, short)| {
            (
                Just(n),
                Just(blocks),
                Just(short),
                proptest::collection::vec(op(n), 1..80),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

        #[test]
        fn random_operations_keep_invariants((n, blocks, short, ops) in scenario(), seed in any::<u64>()) {
            let piece_len = blocks * BLOCK_SIZE;
            let total = u64::from(n) * u64::from(piece_len) - u64::from(short.min(piece_len - 1));
            let mut p = Picker::new(n, piece_len, total, PickerConfig { random_first_pieces: 2, endgame_max_requesters: 2, sequential: false }).unwrap();
            let mut rng = seeded(seed);
            // Per peer: None = not connected; Some((have_all, bitfield)).
            let mut peers: Vec<Option<(bool, Bitfield)>> = vec![None; PEERS];
            let mut complete: Vec<u32> = Vec::new();
            for op in ops {
                match op {
                    Op::Connect(i, b) => {
                        if peers[i].is_none() {
                            match b {
                                None => { p.peer_has_all(); peers[i] = Some((true, Bitfield::full(n))); }
                                Some(v) => {
                                    let mut bf = Bitfield::new(n);
                                    for (k, &x) in v.iter().enumerate() { bf.assign(k as u32, x); }
                                    p.peer_bitfield(&bf);
                                    peers[i] = Some((false, bf));
                                }
                            }
                        }
                    }
                    Op::Have(i, piece) => {
                        if let Some((false, bf)) = &mut peers[i] {
                            if bf.set(piece) { p.peer_has(piece); }
                        }
                    }
                    Op::Disconnect(i) => {
                        if let Some((all, bf)) = peers[i].take() {
                            let pp = if all { PeerPieces::All } else { PeerPieces::Bitfield(&bf) };
                            p.peer_disconnected(PeerKey(i as u32), pp);
                        }
                    }
                    Op::Pick(i, max, allowed) => {
                        if let Some((all, bf)) = &peers[i] {
                            let pp = if *all { PeerPieces::All } else { PeerPieces::Bitfield(bf) };
                            let reqs = match &allowed {
                                None => p.pick(PeerKey(i as u32), pp, max, &mut rng),
                                Some(a) => p.pick_allowed_fast(PeerKey(i as u32), pp, a, max, &mut rng),
                            };
                            prop_assert!(reqs.len() <= max);
                            for r in &reqs {
                                prop_assert!(pp.has(r.piece), "picked piece {} the peer lacks", r.piece);
                                prop_assert!(p.needed().get(r.piece), "picked piece {} not needed", r.piece);
                                if let Some(a) = &allowed { prop_assert!(a.contains(&r.piece)); }
                            }
                            let distinct: BTreeSet<_> = reqs.iter().collect();
                            prop_assert_eq!(distinct.len(), reqs.len());
                        }
                    }
                    Op::Receive(i, k) => {
                        let outstanding = p.requests_of(PeerKey(i as u32));
                        if !outstanding.is_empty() {
                            let r = outstanding[k % outstanding.len()];
                            match p.block_received(PeerKey(i as u32), r.piece, r.offset, r.length) {
                                BlockReceived::New { piece_complete, cancel } => {
                                    prop_assert!(!cancel.contains(&PeerKey(i as u32)));
                                    if piece_complete { complete.push(r.piece); }
                                }
                                other => prop_assert!(false, "outstanding block refused: {:?}", other),
                            }
                        }
                    }
                    Op::ReceiveGarbage(i, piece, offset, length) => {
                        if let BlockReceived::New { piece_complete: true, .. } = p.block_received(PeerKey(i as u32), piece, offset, length) {
                            complete.push(piece);
                        }
                    }
                    Op::Cancel(i, k) => {
                        let outstanding = p.requests_of(PeerKey(i as u32));
                        if !outstanding.is_empty() {
                            prop_assert!(p.request_cancelled(PeerKey(i as u32), outstanding[k % outstanding.len()]));
                        }
                    }
                    Op::Release(i) => {
                        let count = p.requests_of(PeerKey(i as u32)).len();
                        prop_assert_eq!(p.release_peer(PeerKey(i as u32)), count);
                    }
                    Op::Hashed(k, ok) => {
                        complete.retain(|&c| p.partial_pieces().any(|q| q == c));
                        if !complete.is_empty() {
                            let piece = complete.swap_remove(k % complete.len());
                            if ok {
                                prop_assert!(p.piece_verified(piece));
                            } else {
                                prop_assert!(!p.piece_failed(piece).is_empty());
                            }
                        }
                    }
                    Op::ResumeVerified(piece) => { p.piece_verified(piece); }
                    Op::Want(piece, w) => { p.set_piece_wanted(piece, w); }
                }
                p.check_invariants();
                for piece in 0..n {
                    let holders = peers.iter().flatten().filter(|(_, bf)| bf.get(piece)).count() as u32;
                    prop_assert_eq!(p.availability(piece), holders, "availability of {}", piece);
                }
                for (i, peer) in peers.iter().enumerate() {
                    let reqs = p.requests_of(PeerKey(i as u32));
                    match peer {
                        None => prop_assert!(reqs.is_empty(), "gone peer {} keeps requests", i),
                        Some((_, bf)) => for r in reqs {
                            prop_assert!(bf.get(r.piece), "peer {} assigned piece {} it lacks", i, r.piece);
                        },
                    }
                }
                let left: u64 = (0..n).filter(|&i| p.wanted().get(i) && !p.have().get(i)).map(|i| u64::from(p.piece_size(i))).sum();
                prop_assert_eq!(p.left(), left);
            }
        }
    }
}

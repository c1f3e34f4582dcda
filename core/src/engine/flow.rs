//! The engine's internals: peer events to picker and jobs, pieces through hash and write, choking,
//! dialling, banning, and the periodic upkeep run after every input.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;

use bytes::Bytes;

use crate::picker::BLOCK_SIZE;

use super::ext::UNKNOWN_LEFT;
use super::*;

impl Engine {
    /// Drains a connection's session events, then requests blocks, sends bytes and issues reads for it.
    pub(super) fn process_conn(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            let Some(ev) = c.session.poll_event() else {
                break;
            };
            self.on_peer_event(now, id, ev);
        }
        // Events first: they may close the session, change what we want from the peer, or queue
        // reads; only then are requests, bytes and reads worked out from the settled state.
        if let Some(c) = self.conns.get(&id) {
            if c.session.is_closed() {
                let reason = c
                    .session
                    .error()
                    .map_or_else(|| "session closed".to_owned(), |e| e.to_string());
                self.drop_conn(now, id, &reason, true);
                return;
            }
        }
        self.note_hunger(id);
        self.fill_requests(now, id);
        self.flush(id);
        self.pump_reads(id);
    }

    fn on_peer_event(&mut self, now: Instant, id: ConnId, ev: peer::Event) {
        use peer::Event as E;
        self.catch_up_conduct(id);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let key = c.key;
        if let E::HandshakeReceived {
            info_hash, peer_id, ..
        } = ev
        {
            self.on_incoming_handshake(now, id, info_hash, peer_id);
            return;
        }
        // Anything the peer said after its handshake (keep-alives and our own timers are not it).
        if !matches!(
            ev,
            E::Established { .. } | E::Closed { .. } | E::RequestsTimedOut { .. } | E::Snubbed
        ) {
            c.conduct.heard = true;
        }
        let Some(tid) = c.torrent else {
            return;
        };
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        match ev {
            E::HandshakeReceived { .. } => {}
            E::Established { peer_id, .. } => {
                c.peer_id = Some(peer_id);
                c.established_at = Some(now);
                let addr = c.addr;
                if peer_id == self.peer_id {
                    // Ourselves (through some address of ours): never again.
                    t.book.ban(&addr);
                    c.session.close();
                    return;
                }
                if t.banned_ids.contains(&peer_id) {
                    t.book.ban(&addr);
                    c.session.close();
                    return;
                }
                let other = t.conns.iter().copied().find(|other| {
                    *other != id
                        && self.conns.get(other).is_some_and(|o| {
                            o.peer_id == Some(peer_id) && o.established_at.is_some()
                        })
                });
                // Both ends must keep the same one of two connections between them, without talking
                // about it: when one was dialled by each side, the peer ids decide (see
                // `keep_dialled_by_us`); two in the same direction keep the older one.
                if let Some(other) = other {
                    let other_outgoing = self.conns.get(&other).is_some_and(|o| o.outgoing);
                    let outgoing = self.conns.get(&id).is_some_and(|c| c.outgoing);
                    let keep_this = other_outgoing != outgoing
                        && Self::keep_dialled_by_us(self.peer_id, peer_id) == outgoing;
                    if !keep_this {
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.session.close();
                        }
                        return;
                    }
                    self.drop_conn(now, other, "duplicate connection to the same peer", true);
                }
                let Some(t) = self.torrents.get_mut(&tid) else {
                    return;
                };
                // A handshake completed: the address works, so its back-off starts over.
                if let Some(e) = t.book.entries.get_mut(&addr) {
                    e.failures = 0;
                }
                t.choke_dirty = true;
                t.pex_dirty = true;
                self.events
                    .push_back(Event::PeerConnected { torrent: tid, addr });
            }
            E::Bitfield => {
                let Some(picker) = t.meta.picker_mut() else {
                    return;
                };
                let mut seed = false;
                if let PeerPieces::Bitfield(b) = c.session.peer_pieces() {
                    picker.peer_bitfield(b);
                    seed = b.all();
                }
                // Two seeds have nothing to trade: close at once instead of idling a slot.
                if seed && picker.have().all() {
                    c.session.close();
                    return;
                }
                self.update_interest(now, id);
            }
            E::HaveAll => {
                let Some(picker) = t.meta.picker_mut() else {
                    return;
                };
                picker.peer_has_all();
                if picker.have().all() {
                    c.session.close();
                    return;
                }
                self.update_interest(now, id);
            }
            E::HaveNone => self.update_interest(now, id),
            E::Have(piece) => {
                if let Some(picker) = t.meta.picker_mut() {
                    picker.peer_has(piece);
                }
                self.update_interest(now, id);
            }
            // The requests it dropped are free again: any peer of the torrent may take them now.
            E::Choked { released_requests } => {
                if let Some(picker) = t.meta.picker_mut() {
                    for b in released_requests {
                        picker.request_cancelled(key, b);
                    }
                }
                t.refill = true;
            }
            E::Unchoked | E::AllowedFast(_) => {
                // Something changed: blocks it rejected may be asked again.
                c.conduct.changed();
                t.refill = true;
            }
            E::Interested => {
                // A free slot (or the optimistic one) may go to this peer now rather than at the
                // next 10 s round: rechoke soon.
                if t.choker.unchoked().len() <= self.config.unchoke_slots {
                    t.choker.rechoke_soon();
                }
                t.choke_dirty = true;
            }
            E::NotInterested => {
                // Its slot is wasted on a peer that wants nothing: give it to someone else soon.
                if t.choker.is_unchoked(id) {
                    t.choker.rechoke_soon();
                    t.choke_dirty = true;
                }
            }
            E::BlockReceived { block, data } => {
                c.conduct.block_received();
                self.on_block(now, id, block, data)
            }
            E::Rejected { block } => {
                if let Some(picker) = t.meta.picker_mut() {
                    picker.request_cancelled(key, block);
                }
                // Not asked of this peer again until something changes (see `admission.rs`).
                c.conduct.rejected(now, block.piece);
                t.refill = true;
            }
            // Blocks a peer left unanswered too long go back to the picker for every peer.
            E::RequestsTimedOut { blocks } => {
                if let Some(picker) = t.meta.picker_mut() {
                    for b in blocks {
                        picker.request_cancelled(key, b);
                    }
                }
                t.refill = true;
            }
            // A snubbed peer loses its regular slot at the next rechoke while we leech.
            E::Snubbed => t.choke_dirty = true,
            // Only pieces we have (verified) are served, and only while running; anything else is
            // rejected so the peer does not wait for it.
            E::ReadRequest { block } => {
                let have = t.meta.picker().is_some_and(|p| p.have().get(block.piece));
                if t.is_running() && have {
                    c.conduct.useful = true;
                    c.read_queue.push_back(block);
                } else {
                    c.session.reject_request(now, block);
                }
            }
            // Only queued reads are dropped here; a read already at the disk is not sent when it
            // returns (the session no longer holds the request).
            E::Cancelled { block } => c.read_queue.retain(|b| *b != block),
            E::Extended {
                id: ext_id,
                payload,
            } => self.on_extended(now, id, ext_id, payload),
            E::Suggest(_) | E::Port(_) | E::Closed { .. } => {}
        }
    }

    /// An incoming peer named a torrent: accept it if we run that torrent and have room for it.
    fn on_incoming_handshake(
        &mut self,
        now: Instant,
        id: ConnId,
        info_hash: InfoHash,
        peer_id: PeerId,
    ) {
        let found = self
            .torrents
            .iter()
            .find(|(_, t)| t.info_hash == info_hash && t.is_running())
            .map(|(tid, _)| *tid);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(t) = found.and_then(|tid| self.torrents.get_mut(&tid)) else {
            let _ = c.session.reject();
            return;
        };
        let existing = t.conns.iter().copied().find(|other| {
            self.conns
                .get(other)
                .is_some_and(|o| o.peer_id == Some(peer_id))
        });
        // Our established dial to the same peer gives way when the peer's id is the smaller one.
        let replace = existing.filter(|o| {
            self.conns
                .get(o)
                .is_some_and(|o| o.outgoing && o.established_at.is_some())
                && !Self::keep_dialled_by_us(self.peer_id, peer_id)
        });
        let duplicate = existing.is_some() && replace.is_none();
        // At the cap, a newcomer takes the slot of the least useful connection, if there is one.
        let full =
            t.conns.len() >= self.config.max_peers_per_torrent + usize::from(replace.is_some());
        let turnover = if full && replace.is_none() {
            Self::least_useful(&self.conns, t.conns.iter().copied(), now)
        } else {
            None
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let addr = c.addr;
        if peer_id == self.peer_id
            || duplicate
            || t.banned_ids.contains(&peer_id)
            || t.banned.contains(&addr)
            || (full && turnover.is_none())
            || self.shutdown_deadline.is_some()
        {
            let _ = c.session.reject();
            if full && turnover.is_none() {
                self.refused(found, addr, "the torrent is at its connection cap");
            }
            return;
        }
        let tid = found.unwrap_or(TorrentId(0));
        if let Some(other) = replace {
            self.drop_conn(now, other, "duplicate connection to the same peer", true);
        }
        if let Some(other) = turnover {
            self.drop_conn(
                now,
                other,
                "replaced by a new peer (no data either way)",
                true,
            );
        }
        let (Some(c), Some(t)) = (self.conns.get_mut(&id), self.torrents.get_mut(&tid)) else {
            return;
        };
        let ours = Self::our_extensions(t, c.addr);
        c.session.set_our_extensions(now, ours);
        let accepted = match (t.meta.geometry(), t.meta.picker()) {
            (Some(geometry), Some(picker)) => c.session.accept(now, geometry, picker.have()),
            _ => c.session.accept_without_metadata(now),
        };
        if accepted.is_err() {
            c.session.close();
            return;
        }
        c.torrent = Some(tid);
        if self.addrs.remove(&(c.addr, None)).is_some() {
            self.addrs.insert((c.addr, Some(tid)), id);
        }
        c.peer_id = Some(peer_id);
        t.conns.insert(id);
        t.keys.insert(c.key, id);
    }

    fn on_block(&mut self, now: Instant, id: ConnId, block: BlockRequest, data: Bytes) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let (key, addr) = (c.key, c.addr);
        let Some(tid) = c.torrent else {
            return;
        };
        self.accept_block(now, tid, key, addr, block, data);
    }

    /// A block from picker peer `key` at `addr` (a peer connection or a web seed): stored in its
    /// piece, which is verified and written once complete.
    pub(super) fn accept_block(
        &mut self,
        now: Instant,
        tid: TorrentId,
        key: PeerKey,
        addr: SocketAddr,
        block: BlockRequest,
        data: Bytes,
    ) {
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        if !t.is_running() {
            return;
        }
        let Some(picker) = t.meta.picker_mut() else {
            return;
        };
        // Every payload byte counts as downloaded (duplicates and later-failed pieces too), as
        // trackers expect; only new blocks go on.
        let len = u64::from(block.length);
        t.downloaded += len;
        t.down_rate.record(now, len);
        let BlockReceived::New {
            piece_complete,
            cancel,
        } = picker.block_received(key, block.piece, block.offset, block.length)
        else {
            return;
        };
        let size = picker.piece_size(block.piece);
        let buf = self.pieces.start(tid, block.piece, size);
        buf.blocks.insert(block.offset, (data, addr));
        let mut verify_job = None;
        if piece_complete {
            // The expected hash is always known here: blocks are only requested once the
            // metadata (and with it every piece's hash) is.
            if let Some(expected) = t.meta.info().and_then(|i| i.piece_hash(block.piece)) {
                buf.stage = PieceStage::Verifying;
                let blocks: Vec<Bytes> = buf.blocks.values().map(|(d, _)| d.clone()).collect();
                verify_job = Some((blocks, expected));
            }
        }
        // End game: the same block asked of other peers is cancelled there.
        let mut to_flush = Vec::new();
        for k in cancel {
            if let Some(cid) = t.keys.get(&k) {
                if let Some(oc) = self.conns.get_mut(cid) {
                    oc.session.cancel(now, block);
                    to_flush.push(*cid);
                }
            }
        }
        for cid in to_flush {
            self.flush(cid);
        }
        if let Some((blocks, expected)) = verify_job {
            self.new_job(
                JobInfo::Verify {
                    torrent: tid,
                    piece: block.piece,
                },
                Job::VerifyWrite {
                    torrent: tid,
                    piece: block.piece,
                    blocks,
                    expected,
                },
            );
        }
    }

    /// How the pieces that failed with blocks from several peers (kept in `failed_blocks` until
    /// they pass) are fetched again through connection `id`: `avoid` are those it sent a block of
    /// and that another unchoking peer, which sent none, can serve; `first` are those it sent none
    /// of. A retry by peers that are not suspects passes, and the kept blocks then name the liar
    /// (see `piece_written`); without this the liar kept taking part in every retry.
    fn retry_plan(&self, id: ConnId) -> (Vec<u32>, Vec<u32>) {
        let (mut avoid, mut first) = (Vec::new(), Vec::new());
        let Some(c) = self.conns.get(&id) else {
            return (avoid, first);
        };
        let Some(t) = c.torrent.and_then(|tid| self.torrents.get(&tid)) else {
            return (avoid, first);
        };
        let Some(picker) = t.meta.picker() else {
            return (avoid, first);
        };
        for (&piece, kept) in &t.failed_blocks {
            if !picker.needed().get(piece) || !c.session.peer_has(piece) {
                continue;
            }
            let senders: BTreeSet<SocketAddr> = kept.iter().map(|(_, _, a)| *a).collect();
            if !senders.contains(&c.addr) {
                first.push(piece);
                continue;
            }
            let someone_else = t.conns.iter().any(|o| {
                *o != id
                    && self.conns.get(o).is_some_and(|oc| {
                        !senders.contains(&oc.addr)
                            && oc.session.is_established()
                            && !oc.session.peer_choking()
                            && oc.session.peer_has(piece)
                    })
            });
            if someone_else {
                avoid.push(piece);
            }
        }
        (avoid, first)
    }

    /// Asks the picker for as many blocks as the session wants and requests them.
    pub(super) fn fill_requests(&mut self, now: Instant, id: ConnId) {
        // Over the memory cap, only pieces already started are continued (finishing them frees
        // memory); no new piece is begun.
        let over = self.pieces.bytes() >= self.pending_cap();
        let (mut avoid, first) = self.retry_plan(id);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        // Pieces the peer rejected are not asked of it again until something changes, and a run of
        // rejects with no block stops the asking (see `admission.rs`).
        c.conduct.expire(now);
        if c.conduct.snubbed() {
            return;
        }
        avoid.extend(c.conduct.rejected.iter().copied());
        let Some(tid) = c.torrent else {
            return;
        };
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        if over {
            // Woken by `wake_held_back` once memory is freed.
            self.held_back.insert(tid);
        }
        let running = t.is_running();
        let Some(picker) = t.meta.picker_mut() else {
            return;
        };
        if !running || !c.session.is_established() || picker.is_complete() {
            return;
        }
        let mut n = c.session.wanted_requests(now);
        if n == 0 {
            return;
        }
        // Rate limit: one block's tokens up front (or wait in the queue), more as the buckets hold;
        // the `+ 1` is that prepaid block, refunded below if nothing was requested after all.
        let limited = self.limits.download.is_limited(tid);
        if limited {
            if !self
                .limits
                .download
                .try_take(now, id, tid, u64::from(BLOCK_SIZE))
            {
                return;
            }
            let more = self.limits.download.available(now, tid) / u64::from(BLOCK_SIZE);
            n = n.min(
                usize::try_from(more)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
            );
        }
        let key = c.key;
        let masked;
        let pieces = if avoid.is_empty() {
            c.session.peer_pieces()
        } else {
            let mut m = match c.session.peer_pieces() {
                PeerPieces::All => Bitfield::full(picker.num_pieces()),
                PeerPieces::Bitfield(b) => b.clone(),
            };
            for p in &avoid {
                m.clear(*p);
            }
            masked = m;
            PeerPieces::Bitfield(&masked)
        };
        // While choked we may only ask for the peer's allowed-fast pieces (BEP 6); pieces that failed
        // with several senders are tried first from peers that sent none of them (see `retry_plan`).
        let picks = if c.session.peer_choking() || over {
            let allowed: Vec<u32> = if c.session.peer_choking() {
                c.session
                    .allowed_fast()
                    .iter()
                    .copied()
                    .filter(|p| !over || self.pieces.contains(tid, *p))
                    .collect()
            } else {
                picker.partial_pieces().collect()
            };
            if allowed.is_empty() {
                return;
            }
            picker.pick_allowed_fast(key, pieces, &allowed, n, &mut self.rng)
        } else {
            let mut picks = Vec::new();
            if !first.is_empty() {
                picks = picker.pick_allowed_fast(key, pieces, &first, n, &mut self.rng);
            }
            if picks.len() < n {
                picks.extend(picker.pick(key, pieces, n - picks.len(), &mut self.rng));
            }
            picks
        };
        let mut prepaid = limited;
        let mut short = false;
        for b in picks {
            if limited && !std::mem::take(&mut prepaid) {
                short = short
                    || !self
                        .limits
                        .download
                        .try_take(now, id, tid, u64::from(b.length));
            }
            if short || c.session.request(now, b).is_err() {
                picker.request_cancelled(key, b);
                continue;
            }
            self.pieces.start(tid, b.piece, picker.piece_size(b.piece));
        }
        if prepaid {
            // Nothing to request after all.
            self.limits.download.refund(now, tid, u64::from(BLOCK_SIZE));
        }
    }

    /// Tells the peer whether it has something we need.
    pub(super) fn update_interest(&mut self, now: Instant, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(t) = c.torrent.and_then(|tid| self.torrents.get(&tid)) else {
            return;
        };
        let interested = t.is_running()
            && t.meta
                .picker()
                .is_some_and(|p| p.is_interesting(c.session.peer_pieces()));
        c.session.set_interested(now, interested);
        self.note_hunger(id);
    }

    /// Moves the session's bytes to `Output::Send`, up to the send window.
    pub(super) fn flush(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if !c.connected || self.mse.holds(id) {
            return;
        }
        while c.unflushed < SEND_WINDOW {
            let Some(data) = c.session.poll_transmit() else {
                break;
            };
            let data = self.mse.encrypt(id, data);
            // `Output::Send`, or into the connection's uTP stream (`utp.rs`).
            c.unflushed += self.utp.send_bytes(id, data, &mut self.outputs);
        }
    }

    /// Issues disk reads for the peer's requests while little is on its way to it.
    pub(super) fn pump_reads(&mut self, id: ConnId) {
        let mut issue = Vec::new();
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(tid) = c.torrent else {
            return;
        };
        // Reads are issued only while little is on its way to the peer, so a slow reader never makes
        // us hold more than READ_AHEAD of its blocks in memory.
        while c.outbound_bytes() < READ_AHEAD {
            let Some(&block) = c.read_queue.front() else {
                break;
            };
            if self.limits.upload.is_limited(tid)
                && !self
                    .limits
                    .upload
                    .try_take(self.last_now, id, tid, u64::from(block.length))
            {
                break;
            }
            c.read_queue.pop_front();
            c.reading_bytes += block.length as usize;
            issue.push(block);
        }
        for block in issue {
            self.new_job(
                JobInfo::Read {
                    torrent: tid,
                    conn: id,
                    block,
                },
                Job::Read {
                    torrent: tid,
                    piece: block.piece,
                    offset: block.offset,
                    length: block.length,
                },
            );
        }
    }

    /// Forgets a connection (telling the driver to close it if `send_close`).
    pub(super) fn drop_conn(&mut self, now: Instant, id: ConnId, reason: &str, send_close: bool) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        self.limits.forget_conn(id);
        self.ids.release(id);
        // A connection slot is free: the dialler may use it at once.
        self.dial_dirty = true;
        if self.addrs.get(&(c.addr, c.torrent)) == Some(&id) {
            self.addrs.remove(&(c.addr, c.torrent));
        }
        if !self.utp_dropped(now, id, c.connected) && send_close {
            self.outputs.push_back(Output::Close { conn: id });
        }
        let Some(tid) = c.torrent else {
            self.mse_dropped(now, id, c.addr, None);
            if matches!(
                c.session.error(),
                Some(peer::SessionError::ConnectedToSelf(_))
            ) {
                self.forget_self_dial(now, c.session.info_hash());
            }
            return;
        };
        if let Some(t) = self.torrents.get_mut(&tid) {
            t.conns.remove(&id);
            t.hungry.remove(&id);
            t.keys.remove(&c.key);
            // Its availability leaves the picker and its outstanding requests become free again
            // (a session without geometry never counted in the picker).
            if c.session.has_geometry() {
                if let Some(picker) = t.meta.picker_mut() {
                    picker.peer_disconnected(c.key, c.session.peer_pieces());
                }
            }
            if let Some(m) = t.meta.fetch_mut() {
                m.fetcher.remove_peer(id);
            }
            t.pex_dirty = true;
            if c.established_at.is_some() {
                t.book.disconnected(now, &c.addr, c.conduct.useful);
                self.events.push_back(Event::PeerDisconnected {
                    torrent: tid,
                    addr: c.addr,
                    reason: reason.to_owned(),
                });
            } else if c.outgoing {
                t.book.failed(now, &c.addr);
                self.events.push_back(Event::PeerConnectFailed {
                    torrent: tid,
                    addr: c.addr,
                    reason: reason.to_owned(),
                });
            }
            if t.choker.is_unchoked(id) {
                t.choker.rechoke_soon();
                t.choke_dirty = true;
            }
            t.refill = true;
        }
        self.sync_pieces(tid);
        self.mse_dropped(now, id, c.addr, Some(tid));
    }

    /// An incoming connection carried our own peer id: one of our dials reached ourselves. If exactly
    /// one dial (of the torrent named, when the session knows it) is waiting for its handshake, that
    /// is the one: never dial that address again.
    fn forget_self_dial(&mut self, now: Instant, info_hash: Option<InfoHash>) {
        let waiting: Vec<(TorrentId, ConnId, SocketAddr)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.outgoing && c.connected && c.established_at.is_none())
            .filter_map(|(id, c)| {
                let tid = c.torrent?;
                let t = self.torrents.get(&tid)?;
                let matches = info_hash.is_none_or(|h| h == t.info_hash);
                matches.then_some((tid, *id, c.addr))
            })
            .collect();
        if let [(tid, id, addr)] = waiting[..] {
            if let Some(t) = self.torrents.get_mut(&tid) {
                t.book.ban(&addr);
            }
            self.drop_conn(now, id, "connected to ourselves", true);
        }
    }

    /// Closes every connection of a torrent.
    pub(super) fn close_torrent_conns(&mut self, now: Instant, tid: TorrentId, reason: &str) {
        let ids: Vec<ConnId> = self
            .torrents
            .get(&tid)
            .map(|t| t.conns.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.drop_conn(now, id, reason, true);
        }
    }

    /// Drops the buffers of pieces the picker no longer has in progress (nothing received, nothing
    /// requested any more).
    pub(super) fn sync_pieces(&mut self, tid: TorrentId) {
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        let partial: BTreeSet<u32> = t
            .meta
            .picker()
            .map(|p| p.partial_pieces().collect())
            .unwrap_or_default();
        self.pieces.retain(tid, |p, b| {
            b.stage != PieceStage::Assembling || partial.contains(&p)
        });
    }

    /// A piece did not match its hash (nothing was written): throw it away, fetch it again, and
    /// strike the peer that sent it. When several peers sent blocks, nobody is struck yet: the
    /// blocks are kept (up to [`MAX_FAILED_KEEP`]) and compared with the piece once it passes, which
    /// names the liar (see `piece_written`).
    pub(super) fn piece_mismatch(&mut self, now: Instant, tid: TorrentId, piece: u32) {
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        if self.pieces.get(tid, piece).map(|b| b.stage) != Some(PieceStage::Verifying) {
            return;
        }
        let Some(buf) = self.pieces.remove(tid, piece) else {
            return;
        };
        if let Some(picker) = t.meta.picker_mut() {
            picker.piece_failed(piece);
        }
        t.refill = true;
        self.events.push_back(Event::PieceFailed {
            torrent: tid,
            piece,
        });
        let contributors: BTreeSet<SocketAddr> = buf.blocks.values().map(|(_, a)| *a).collect();
        let mut strike = Vec::new();
        if contributors.len() == 1 {
            strike.extend(contributors);
        } else if t.failed_bytes + buf.size as usize <= MAX_FAILED_KEEP {
            // Several peers: keep the blocks and judge each peer when the piece passes.
            t.failed_bytes += buf.size as usize;
            let kept = t.failed_blocks.entry(piece).or_default();
            kept.extend(buf.blocks.into_iter().map(|(o, (d, a))| (o, d, a)));
        } else {
            strike.extend(contributors);
        }
        // A web seed that alone sent a bad piece is disabled at once (it would send it again).
        let seeds: Vec<SocketAddr> = strike
            .iter()
            .copied()
            .filter(|a| self.webseeds.is_seed_addr(tid, *a))
            .collect();
        strike.retain(|a| !seeds.contains(a));
        let mut to_ban = Vec::new();
        for addr in strike {
            if t.strikes.len() >= MAX_STRIKE_ENTRIES && !t.strikes.contains_key(&addr) {
                t.strikes.pop_first();
            }
            let n = t.strikes.entry(addr).or_insert(0);
            *n += 1;
            if *n >= MAX_STRIKES {
                to_ban.push((addr, *n));
            }
        }
        for addr in seeds {
            self.webseed_bad_data(now, tid, addr, "sent a piece that failed the hash check");
        }
        for (addr, n) in to_ban {
            let reason = format!("sent data for {n} pieces that failed the hash check");
            self.ban(now, tid, addr, &reason);
        }
    }

    /// A verify-and-write job failed: the piece is not on disk, so it leaves memory and becomes
    /// missing again (fetched anew after a resume, instead of sitting in memory forever).
    pub(super) fn write_failed(&mut self, tid: TorrentId, piece: u32) {
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        if self.pieces.get(tid, piece).map(|b| b.stage) != Some(PieceStage::Verifying) {
            return;
        }
        if self.pieces.remove(tid, piece).is_none() {
            return;
        }
        if let Some(picker) = t.meta.picker_mut() {
            picker.piece_failed(piece);
        }
    }

    /// A verify-and-write job found the piece right and wrote it: the piece is verified.
    pub(super) fn piece_written(&mut self, now: Instant, tid: TorrentId, piece: u32) {
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        if self.pieces.get(tid, piece).map(|b| b.stage) != Some(PieceStage::Verifying) {
            return;
        }
        let Some(buf) = self.pieces.remove(tid, piece) else {
            return;
        };
        let fresh = t.meta.picker_mut().is_some_and(|p| p.piece_verified(piece));
        if !fresh {
            return;
        }
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        // Peers whose block of an earlier failed attempt differs from the verified data lied.
        let mut liars = BTreeSet::new();
        if let Some(kept) = t.failed_blocks.remove(&piece) {
            for (offset, data, addr) in kept {
                t.failed_bytes = t.failed_bytes.saturating_sub(data.len());
                if buf
                    .blocks
                    .get(&offset)
                    .is_some_and(|(good, _)| *good != data)
                {
                    liars.insert(addr);
                }
            }
        }
        self.events.push_back(Event::PieceVerified {
            torrent: tid,
            piece,
        });
        // Every peer hears of the piece (BEP 3; also those that have it, which keeps their view of us
        // exact), and each may stop being interesting now that we have it.
        let ids: Vec<ConnId> = t.conns.iter().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.session.send_have(now, piece);
            }
            self.update_interest(now, id);
            self.flush(id);
        }
        for addr in liars {
            self.ban(
                now,
                tid,
                addr,
                "sent a block that differs from the verified piece",
            );
        }
        self.check_complete(now, tid);
    }

    /// Emits `TorrentCompleted` (once per selection) and announces `completed`.
    pub(super) fn check_complete(&mut self, now: Instant, tid: TorrentId) {
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        if !t.is_complete() || t.complete_reported {
            return;
        }
        t.complete_reported = true;
        t.policy.set_completed(now);
        // The choker switches from download rates to upload rates: rechoke now, not in 10 s.
        t.choker.rechoke_soon();
        t.choke_dirty = true;
        self.events.push_back(Event::TorrentCompleted(tid));
        if !t.has_all() {
            return;
        }
        // Seeds have nothing to trade with a seed.
        let seeds: Vec<ConnId> = t
            .conns
            .iter()
            .copied()
            .filter(|id| {
                self.conns
                    .get(id)
                    .is_some_and(|c| match c.session.peer_pieces() {
                        PeerPieces::All => true,
                        PeerPieces::Bitfield(b) => b.all(),
                    })
            })
            .collect();
        for id in seeds {
            self.drop_conn(now, id, "both sides are seeds", true);
        }
    }

    /// Bans an address for this torrent: disconnect, never reconnect.
    pub(super) fn ban(&mut self, now: Instant, tid: TorrentId, addr: SocketAddr, reason: &str) {
        if self.webseed_bad_data(now, tid, addr, reason) {
            return;
        }
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        if !insert_capped(&mut t.banned, addr, MAX_BANNED) {
            return;
        }
        t.book.ban(&addr);
        let victims: Vec<ConnId> = t
            .conns
            .iter()
            .copied()
            .filter(|id| self.conns.get(id).is_some_and(|c| c.addr == addr))
            .collect();
        // Its peer id is banned too, so it cannot come back from another address.
        for id in &victims {
            if let Some(pid) = self.conns.get(id).and_then(|c| c.peer_id) {
                insert_capped(&mut t.banned_ids, pid, MAX_BANNED);
            }
        }
        self.events.push_back(Event::PeerBanned {
            torrent: tid,
            addr,
            reason: reason.to_owned(),
        });
        for id in victims {
            self.drop_conn(now, id, reason, true);
        }
    }

    /// A disk job failed: the torrent stops with the message; other torrents are untouched.
    pub(super) fn torrent_error(&mut self, now: Instant, tid: TorrentId, message: String) {
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        if matches!(t.run, RunState::Error(_)) {
            return;
        }
        t.run = RunState::Error(message.clone());
        t.policy.stop(now);
        // Pieces still being assembled are thrown away and become missing again. Pieces whose
        // verify-and-write job is out stay until its answer settles them (written, or missing
        // again), so the engine always knows which writes are in flight.
        self.pieces
            .retain(tid, |_, b| b.stage != PieceStage::Assembling);
        self.close_torrent_conns(now, tid, "torrent stopped by a disk error");
        if let Some(t) = self.torrents.get_mut(&tid) {
            if let Some(picker) = t.meta.picker_mut() {
                let partial: Vec<u32> = picker.partial_pieces().collect();
                for p in partial {
                    if !self.pieces.contains(tid, p) {
                        picker.piece_failed(p);
                    }
                }
            }
        }
        self.events.push_back(Event::TorrentError {
            torrent: tid,
            message,
        });
    }

    /// Re-evaluates interest and requests for every peer of a torrent.
    pub(super) fn refresh_torrent_peers(&mut self, now: Instant, tid: TorrentId) {
        let ids: Vec<ConnId> = self
            .torrents
            .get(&tid)
            .map(|t| t.conns.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.update_interest(now, id);
        }
        // Interest changes and cancels were queued without a flush: the refill visits everyone.
        if let Some(t) = self.torrents.get_mut(&tid) {
            t.refill = true;
            t.refill_all = true;
        }
    }

    /// Runs the choker of a torrent and applies its answer.
    fn run_choker(&mut self, now: Instant, tid: TorrentId) {
        self.drop_silent(now, tid);
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        t.choke_dirty = false;
        let peers: Vec<ChokePeer<ConnId>> = t
            .conns
            .iter()
            .filter_map(|id| {
                let c = self.conns.get(id)?;
                let at = c.established_at?;
                Some(ChokePeer {
                    id: *id,
                    interested: c.session.peer_interested(),
                    download_rate: c.session.download_rate(now),
                    upload_rate: c.session.upload_rate(now),
                    connected_at: at,
                    snubbed: c.session.is_snubbed(),
                })
            })
            .collect();
        let mode = if t.is_complete() {
            ChokeMode::Seeding
        } else {
            ChokeMode::Leeching
        };
        let unchoked = t.choker.tick(now, &peers, mode, &mut self.rng).to_vec();
        let ids: Vec<ConnId> = peers.iter().map(|p| p.id).collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                let choke = !unchoked.contains(&id);
                // Choking a peer drops its queued requests (BEP 3); its disk reads in flight finish.
                if choke && !c.session.am_choking() {
                    c.read_queue.clear();
                }
                c.session.set_choking(now, choke);
            }
            self.flush(id);
            self.pump_reads(id);
        }
    }

    /// Dials if something changed or a back-off ended, then notes when to look again.
    fn dial(&mut self, now: Instant) {
        let due = self.dial_due.is_some_and(|t| t <= now);
        if !self.dial_dirty && !due {
            return;
        }
        self.dial_dirty = false;
        self.try_connect(now);
        self.dial_due = self
            .torrents
            .values()
            .filter_map(|t| self.next_connect_time(t, now))
            .min();
    }

    /// Dials addresses from the address books while the caps allow.
    fn try_connect(&mut self, now: Instant) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        let mut half_open = self.half_open();
        let session_config = self.session_config();
        let tids: Vec<TorrentId> = self.torrents.keys().copied().collect();
        for tid in tids {
            loop {
                if self.conns.len() >= self.config.max_connections
                    || half_open >= self.config.max_half_open
                {
                    return;
                }
                let Some(t) = self.torrents.get_mut(&tid) else {
                    break;
                };
                if !t.is_running() || t.conns.len() >= self.config.max_peers_per_torrent {
                    break;
                }
                let addrs = &self.addrs;
                let banned = &t.banned;
                let Some(addr) = t.book.candidate(now, |a| {
                    !addrs.contains_key(&(*a, Some(tid))) && !banned.contains(a)
                }) else {
                    // Out of addresses while under half the peer cap: ask the trackers early.
                    if t.conns.len() < self.config.max_peers_per_torrent / 2 && !t.is_complete() {
                        t.policy.want_more_peers();
                    }
                    break;
                };
                let mut session = match (t.meta.geometry(), t.meta.picker()) {
                    (Some(geometry), Some(picker)) => match PeerSession::outgoing(
                        session_config.clone(),
                        geometry,
                        t.info_hash,
                        self.peer_id,
                        picker.have(),
                        now,
                    ) {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                    _ => PeerSession::outgoing_without_metadata(
                        session_config.clone(),
                        t.info_hash,
                        self.peer_id,
                        now,
                    ),
                };
                session.set_our_extensions(now, Self::our_extensions(t, addr));
                if let Some(e) = t.book.entries.get_mut(&addr) {
                    e.connected = true;
                }
                let id = self.ids.mint_peer();
                // The picker knows peers by a key derived from the connection id (unique while open).
                let key = PeerKey(id.0 as u32);
                t.conns.insert(id);
                t.keys.insert(key, id);
                self.conns.insert(
                    id,
                    Conn {
                        addr,
                        torrent: Some(tid),
                        session,
                        outgoing: true,
                        connected: false,
                        key,
                        established_at: None,
                        peer_id: None,
                        read_queue: VecDeque::new(),
                        reading_bytes: 0,
                        unflushed: 0,
                        ext: Default::default(),
                        conduct: Default::default(),
                    },
                );
                self.addrs.insert((addr, Some(tid)), id);
                if !self.utp_dial(now, id, addr) {
                    self.outputs.push_back(Output::Connect {
                        conn: id,
                        addr,
                        tls: None,
                    });
                }
                half_open += 1;
            }
        }
    }

    /// The cap on piece bytes in memory: [`EngineConfig::max_pending_piece_bytes`], but never under
    /// [`MIN_PENDING_PIECES`] pieces of the torrent with the longest pieces, so that a torrent with
    /// huge pieces can still assemble one while the previous one is hashed and written.
    pub(super) fn pending_cap(&self) -> u64 {
        self.config
            .max_pending_piece_bytes
            .max(self.longest_piece.saturating_mul(MIN_PENDING_PIECES))
    }

    /// Torrents that left pieces unstarted at the memory cap get their requests refilled once the
    /// bytes held are under it again (pieces verified, failed or dropped since).
    fn wake_held_back(&mut self) {
        if self.held_back.is_empty() || self.pieces.bytes() >= self.pending_cap() {
            return;
        }
        for tid in std::mem::take(&mut self.held_back) {
            // Touching the torrent also wakes its web seeds (their upkeep runs for it).
            if let Some(t) = self.torrents.get_mut(&tid) {
                t.refill = true;
            }
        }
    }

    /// Adds to the upkeep's `work` (the torrents touched by this input, taken at the start of the
    /// upkeep) those touched since, in id order. Any other torrent has nothing to do: its flags are
    /// only set through `torrents.get_mut`, and its deadlines wake it through `handle_timeout`.
    fn add_late(&self, work: &mut Vec<TorrentId>) {
        let late = self.torrents.touched();
        if late.iter().all(|t| work.binary_search(t).is_ok()) {
            return;
        }
        work.extend_from_slice(late);
        work.sort_unstable();
        work.dedup();
    }

    /// Upkeep after every input, for what the input touched: requests, choking, extensions, dialling,
    /// trackers, shutdown; then the deadlines of everything touched are refiled. Its cost follows
    /// what changed, not the number of torrents and connections.
    pub(super) fn maintain(&mut self, now: Instant) {
        if now > self.last_now {
            self.last_now = now;
        }
        self.wake_held_back();
        let mut work = self.torrents.take_touched();
        self.add_late(&mut work);
        for &tid in &work {
            let Some(t) = self.torrents.get_mut(&tid) else {
                continue;
            };
            if std::mem::take(&mut t.refill) {
                self.refill(now, tid);
            }
            let Some(t) = self.torrents.get_mut(&tid) else {
                continue;
            };
            if t.choke_dirty && t.is_running() {
                self.run_choker(now, tid);
            }
        }
        self.add_late(&mut work);
        self.drive_webseeds(now, &work);
        self.add_late(&mut work);
        self.drive_extensions(now, &work);
        self.drive_dht(now, &work);
        self.dial(now);
        self.drive_trackers(now, &mut work);
        if let Some(deadline) = self.shutdown_deadline {
            let quiet =
                self.torrents.values().all(|t| t.policy.is_stopped()) && self.trackers.is_idle();
            if quiet || now >= deadline {
                self.shut_down = true;
            }
        }
        // Everything the upkeep looked at gets its deadlines refiled. Its own accesses marked those
        // torrents again; only the ones left with work (a flag set after their turn) stay marked for
        // the next upkeep, as they would have been found by a scan. The rest is done until an input
        // or a deadline touches it again.
        self.utp_transmit(now);
        self.add_late(&mut work);
        self.refile_timers(&work);
        for tid in self.torrents.take_touched() {
            if self.torrents.get(&tid).is_some_and(Torrent::has_upkeep) {
                self.torrents.mark(&tid);
            }
        }
        #[cfg(debug_assertions)]
        for (id, t) in self.torrents.iter() {
            debug_assert!(
                self.torrents.is_touched(id) || !t.has_upkeep(),
                "torrent {id:?} has upkeep to do but is not marked for it"
            );
        }
    }

    /// Runs announce policies, the UDP router and HTTP exchanges until nothing more happens now.
    /// Only touched torrents can have announces to send (a due announce touches its torrent).
    fn drive_trackers(&mut self, now: Instant, work: &mut Vec<TorrentId>) {
        // A reply can add peers and answers can come back at once (fakes, failures): a few rounds
        // settle that; 16 only bounds a pathological loop, the rest waits for the next input.
        for _ in 0..16 {
            let mut orders = Vec::new();
            self.add_late(work);
            for &tid in work.iter() {
                let Some(t) = self.torrents.get_mut(&tid) else {
                    continue;
                };
                let progress = Progress {
                    uploaded: t.uploaded,
                    downloaded: t.downloaded,
                    left: t.meta.picker().map_or(UNKNOWN_LEFT, Picker::left),
                };
                while let Some(order) = t.policy.poll_announce(now, progress) {
                    orders.push((tid, order));
                }
            }
            self.trackers.poll_retired(now, &mut orders);
            for (tid, order) in orders {
                self.trackers
                    .dispatch(now, tid, order, &mut self.outputs, &mut self.ids);
            }
            self.trackers.pump_router(&mut self.outputs);
            self.push_scrape_events();
            let results = self.trackers.take_results();
            if results.is_empty() {
                break;
            }
            for (tid, handle, url, result) in results {
                if let Some(t) = self.torrents.get_mut(&tid) {
                    match &result {
                        Ok(r) => self.events.push_back(Event::TrackerReply {
                            torrent: tid,
                            url: url.clone(),
                            peers: r.peers.len(),
                        }),
                        Err(m) => self.events.push_back(Event::TrackerError {
                            torrent: tid,
                            url: url.clone(),
                            message: m.clone(),
                        }),
                    }
                    t.policy.handle_response(now, handle, result);
                    for p in t.policy.take_peers() {
                        self.dial_dirty |= t.book.add(now, p);
                    }
                } else {
                    self.trackers.retired_response(now, tid, handle, result);
                }
            }
            self.dial(now);
        }
    }

    /// Called after tracker inputs: same upkeep as any input.
    pub(super) fn after_trackers(&mut self, now: Instant) {
        self.maintain(now);
    }
}

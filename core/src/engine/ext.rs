//! BEP 10 extensions in the engine: torrents added from magnet links (the metadata fetched with
//! `ut_metadata`, BEP 9, then the switch to an ordinary torrent on the same connections), serving the
//! metadata to others, and peer exchange (`ut_pex`, BEP 11).
//!
//! # A magnet link's life
//! 1. [`Engine::add_magnet`] makes a torrent that knows only its info-hash: no info, geometry or
//!    picker. Its trackers are the link's `tr` (one tier each, so every one is announced to, with a
//!    non-zero `left` since we need everything); its `x.pe` hints go to the address book (host names
//!    through `Output::Resolve`).
//! 2. Peer sessions start without geometry (we announce `have none` or nothing; the peer's bitfield
//!    is kept raw). Each peer's extension handshake registers it with the torrent's
//!    [`MetadataFetcher`], which refuses a `metadata_size` over the 16 MiB cap or one that disagrees
//!    with the size settled on; requests for 16 KiB pieces are spread over the peers that can serve.
//! 3. When the last piece arrives the fetcher checks the SHA-1 against the info-hash. A mismatch bans
//!    every peer that contributed (and the fetch starts again with the others); a match becomes
//!    [`Engine::metadata_complete`]: the torrent gets its info, geometry and picker, `so=` (or the
//!    caller's `wanted_files`) selects files, every live session learns the geometry (the peers'
//!    bitfields are validated then and registered with the picker) and our extension handshake is
//!    sent again with `metadata_size`. No connection is dropped. `Event::MetadataReceived` tells the
//!    driver to create the storage.
//!
//! # Peer exchange
//! For a torrent that is not private, each connection whose peer registered `ut_pex` gets a
//! [`PexSender`] (told the torrent's connected peers by their listen addresses: the address we
//! dialled, or for an incoming peer its IP with the `p` port of its extension handshake; peers
//! without a known listen address are left out) and a [`PexReceiver`] whose accepted addresses go
//! into the (bounded) address book. Loopback addresses are accepted only from a peer that is itself
//! on loopback. A private torrent registers no `ut_pex` and ignores any PEX message. A magnet link
//! does not say whether its torrent is private, so PEX runs until the metadata says it is, and stops
//! then.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::ext::metadata::{
    FetchError, FetcherConfig, MetadataFetcher, MetadataMessage, Progress as FetchProgress,
};
use crate::ext::pex::{PexFlags, PexReceiver, PexReceiverConfig, PexSender};
use crate::ext::{self, peer_extension_id, LocalExtension, UT_METADATA, UT_PEX};
use crate::magnet::{FileSelection, MagnetLink};
use crate::metainfo::Info;
use crate::peer::OurExtensions;

use super::*;

/// The `left` we announce before the metadata is known: we need the whole torrent but do not know
/// its size; any non-zero value keeps trackers from treating us as a seed (which would get us no
/// seeds), and one byte claims nothing we do not know.
pub(crate) const UNKNOWN_LEFT: u64 = 1;

/// Past this many bytes queued for a peer, its metadata requests are rejected rather than answered
/// (four metadata pieces): a peer that asks without reading cannot make us buffer the metadata over
/// and over.
const METADATA_SERVE_BACKLOG: usize = 64 * 1024;

/// A torrent to add from a magnet link (see [`Engine::add_magnet`]).
#[derive(Debug, Clone)]
pub struct AddMagnet {
    /// The link: info-hash, display name, trackers, `ws=` web seeds, `x.pe` peer hints and `so=`
    /// file selection.
    pub link: MagnetLink,
    /// One flag per file, applied when the metadata arrives (it overrides the link's `so=`); `None`:
    /// the link's `so=`, or every file. A selection whose length is not the file count stops the
    /// torrent with an error once the metadata says how many files there are.
    pub wanted_files: Option<Vec<bool>>,
    /// Add it paused (no connections, no announces until `resume`).
    pub paused: bool,
    /// Peer addresses to try besides the link's hints and what trackers return.
    pub peers: Vec<SocketAddr>,
}

/// The metadata fetch of a torrent added from a magnet link.
#[derive(Debug)]
pub(crate) struct MagnetFetch {
    /// Assembles and verifies the info dictionary; peers are named by connection.
    pub fetcher: MetadataFetcher<ConnId>,
    /// BEP 53 `so=` from the link.
    pub select_only: Option<FileSelection>,
    /// The caller's selection, which overrides `select_only`.
    pub wanted_files: Option<Vec<bool>>,
}

/// One connection's BEP 10 extension state.
#[derive(Debug, Default)]
pub(crate) struct ConnExt {
    /// The id the peer wants its `ut_metadata` messages sent with.
    pub metadata_id: Option<u8>,
    /// The id the peer wants its `ut_pex` messages sent with.
    pub pex_id: Option<u8>,
    /// The peer's listen address, if known (what we tell other peers about it).
    pub listen_addr: Option<SocketAddr>,
    /// What we tell this peer about the torrent's other peers.
    pub pex_out: Option<PexSender>,
    /// What we believe of this peer's PEX messages.
    pub pex_in: Option<PexReceiver>,
    /// When to offer `pex_out` the connected set next (`None`: when it changes).
    pub pex_due: Option<Instant>,
}

impl Engine {
    // ===== user commands =========================================================================

    /// Adds a torrent from a magnet link; it starts at once unless `add.paused`. Its state is
    /// [`TorrentState::FetchingMetadata`] until [`Event::MetadataReceived`]; meanwhile it has no files
    /// and issues no jobs.
    pub fn add_magnet(&mut self, now: Instant, add: AddMagnet) -> Result<TorrentId, AddError> {
        if self.shutdown_deadline.is_some() {
            return Err(AddError::ShuttingDown);
        }
        let link = add.link;
        let info_hash = link.info_hash;
        if self.torrents.values().any(|t| t.info_hash == info_hash) {
            return Err(AddError::Duplicate(info_hash));
        }
        let trackers: Vec<Vec<String>> = link.trackers.iter().map(|u| vec![u.clone()]).collect();
        let policy = AnnouncePolicy::new(
            info_hash,
            self.peer_id,
            self.config.listen_port,
            self.trackers.key,
            &trackers,
            self.config.announce.clone(),
            &mut self.rng,
        );
        let choker = Choker::new(ChokerConfig {
            regular_slots: self.config.unchoke_slots,
            ..ChokerConfig::default()
        });
        let id = TorrentId(self.next_torrent);
        self.next_torrent = self.next_torrent.wrapping_add(1);
        let fetch = MagnetFetch {
            fetcher: MetadataFetcher::new(info_hash, FetcherConfig::default()),
            select_only: link.select_only.clone(),
            wanted_files: add.wanted_files,
        };
        let mut t = Torrent::new(
            info_hash,
            Meta::Fetching(Box::new(fetch)),
            trackers,
            policy,
            choker,
            self.config.session.rate_window,
            add.paused,
        );
        if let Some(dn) = &link.display_name {
            t.name = dn.clone();
        }
        for addr in add.peers {
            t.book.add(now, addr);
        }
        for hint in &link.peers {
            match hint.host.parse::<IpAddr>() {
                Ok(ip) => {
                    t.book.add(now, SocketAddr::new(ip, hint.port));
                }
                Err(_) => {
                    let rid = self.trackers.new_resolve_id();
                    self.peer_resolves.insert(rid, id);
                    self.outputs.push_back(Output::Resolve {
                        id: rid,
                        host: hint.host.clone(),
                        port: hint.port,
                    });
                }
            }
        }
        if !add.paused {
            t.policy.start(now);
        }
        self.torrents.insert(id, t);
        // The link's `ws=` web seeds wait for the metadata (their upkeep needs the file list).
        self.webseeds_add(id, &link.web_seeds);
        self.dial_dirty = true;
        self.events.push_back(Event::TorrentAdded(id));
        self.maintain(now);
        Ok(id)
    }

    /// The torrent's info dictionary, once known (at once for `add_torrent`, after
    /// [`Event::MetadataReceived`] for a magnet link). [`Info::raw`] holds its exact bytes.
    pub fn torrent_info(&self, torrent: TorrentId) -> Option<&Info> {
        self.torrents.get(&torrent)?.meta.info()
    }

    /// The torrent as a [`Metainfo`] (its info dictionary, tracker tiers and web seeds), once the info is known:
    /// `to_bytes()` gives a `.torrent` file with the same info-hash (e.g. `--save-torrent`).
    pub fn torrent_metainfo(&self, torrent: TorrentId) -> Option<Metainfo> {
        let t = self.torrents.get(&torrent)?;
        let info = t.meta.info()?.clone();
        let mut meta = Metainfo::new(info, t.trackers.clone());
        meta.url_list = self.webseeds.urls(torrent);
        Some(meta)
    }

    /// Adds pieces found intact on disk to a torrent's verified set; returns how many were new.
    ///
    /// This is for data checked *after* the torrent was added: a magnet link's files can only be
    /// checked once [`Event::MetadataReceived`] says what they are. The torrent must not be running
    /// (pause it when the metadata arrives, check, call this, resume), since a running torrent could
    /// be fetching the same pieces. Pieces already had, or being hashed or written, are left alone;
    /// partly received ones become had (their blocks are dropped). `TorrentCompleted` follows if that
    /// completes the selection.
    pub fn set_have(
        &mut self,
        now: Instant,
        torrent: TorrentId,
        have: &Bitfield,
    ) -> Result<u32, AddError> {
        let Some(t) = self.torrents.get_mut(&torrent) else {
            return Err(AddError::UnknownTorrent(torrent));
        };
        if t.run == RunState::Running {
            return Err(AddError::Running(torrent));
        }
        let Some(picker) = t.meta.picker_mut() else {
            return Err(AddError::MetadataPending(torrent));
        };
        let pieces = picker.num_pieces();
        if have.len() != pieces {
            return Err(AddError::HaveLength {
                got: have.len(),
                pieces,
            });
        }
        let mut added = 0;
        for p in have.iter_ones() {
            let busy = self
                .pieces
                .get(torrent, p)
                .is_some_and(|b| b.stage != PieceStage::Assembling);
            if !busy && picker.piece_verified(p) {
                added += 1;
            }
        }
        self.sync_pieces(torrent);
        self.check_complete(now, torrent);
        self.maintain(now);
        Ok(added)
    }

    // ===== internals =============================================================================

    /// Of two connections to the same peer, one each way (common with PEX: both sides learn of each
    /// other and dial at once), both ends keep the one dialled by the side with the smaller peer id,
    /// so they never close both. True when that is our dial.
    pub(super) fn keep_dialled_by_us(ours: PeerId, theirs: PeerId) -> bool {
        ours < theirs
    }

    /// What our extension handshake says to `peer` for torrent `t`.
    pub(super) fn our_extensions(t: &Torrent, peer: SocketAddr) -> OurExtensions {
        OurExtensions {
            messages: ext::local_extensions(t.private),
            metadata_size: t.metadata.metadata_size(),
            your_ip: Some(peer.ip()),
        }
    }

    /// A host name from a magnet link's `x.pe` was looked up.
    pub(super) fn peer_hint_resolved(
        &mut self,
        now: Instant,
        tid: TorrentId,
        result: Result<Vec<SocketAddr>, String>,
    ) {
        if let (Some(t), Ok(addrs)) = (self.torrents.get_mut(&tid), result) {
            for a in addrs {
                self.dial_dirty |= t.book.add(now, a);
            }
        }
        self.maintain(now);
    }

    /// A BEP 10 message arrived on `conn` (id 0: the peer's extension handshake).
    pub(super) fn on_extended(&mut self, now: Instant, conn: ConnId, id: u8, payload: Bytes) {
        if id == 0 {
            self.on_ext_handshake(conn);
            return;
        }
        match LocalExtension::from_id(id) {
            Some(LocalExtension::Metadata) => self.on_metadata_message(now, conn, payload),
            Some(LocalExtension::Pex) => self.on_pex_message(now, conn, &payload),
            None => {}
        }
    }

    /// The peer's extension handshake (first or repeated): note its ids, set up PEX, and offer it to
    /// the metadata fetch.
    fn on_ext_handshake(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(t) = c.torrent.and_then(|tid| self.torrents.get_mut(&tid)) else {
            return;
        };
        let pe = c.session.peer_extensions();
        c.ext.metadata_id = peer_extension_id(&pe.messages, UT_METADATA);
        c.ext.pex_id = peer_extension_id(&pe.messages, UT_PEX);
        c.ext.listen_addr = if c.outgoing {
            Some(c.addr)
        } else {
            pe.listen_port.map(|p| SocketAddr::new(c.addr.ip(), p))
        };
        if t.private || c.ext.pex_id.is_none() {
            c.ext.pex_out = None;
            c.ext.pex_in = None;
            c.ext.pex_due = None;
        } else if let Some(sender) = c.ext.pex_out.as_mut() {
            if let Some(listen) = c.ext.listen_addr {
                sender.exclude(listen);
            }
        } else {
            let recipient = c.ext.listen_addr.unwrap_or(c.addr);
            c.ext.pex_out = PexSender::new(recipient, t.private).ok().map(|mut s| {
                s.exclude(c.addr);
                s
            });
            let config = PexReceiverConfig {
                allow_loopback: c.addr.ip().is_loopback(),
                ..PexReceiverConfig::default()
            };
            c.ext.pex_in = PexReceiver::new(config, t.private).ok();
            t.pex_dirty = true;
        }
        if let Some(m) = t.meta.fetch_mut() {
            // A refusal (no support, size over the cap or disagreeing) only means we will not ask it.
            let _ = m
                .fetcher
                .add_peer(conn, pe.metadata_size, c.ext.metadata_id.is_some());
        }
    }

    /// A `ut_metadata` message: a request (answered from our metadata, or rejected), data for the
    /// fetch, or a reject of our request. Undecodable messages and unknown types are ignored.
    fn on_metadata_message(&mut self, now: Instant, conn: ConnId, payload: Bytes) {
        let Ok(msg) = MetadataMessage::decode(&payload) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(tid) = c.torrent else {
            return;
        };
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        match msg {
            MetadataMessage::Request { piece } => {
                let Some(peer_id) = c.ext.metadata_id else {
                    return;
                };
                let answer = if c.session.outgoing_len() > METADATA_SERVE_BACKLOG {
                    MetadataMessage::Reject { piece }
                } else {
                    t.metadata.handle_request(piece)
                };
                c.session
                    .send_extended(now, peer_id, Bytes::from(answer.encode()));
            }
            MetadataMessage::Reject { piece } => {
                if let Some(m) = t.meta.fetch_mut() {
                    m.fetcher.handle_reject(conn, piece, now);
                }
            }
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => {
                let Some(m) = t.meta.fetch_mut() else {
                    return;
                };
                match m.fetcher.handle_data(conn, piece, total_size, data) {
                    Ok(FetchProgress::Complete) => self.metadata_complete(now, tid),
                    Ok(FetchProgress::HashMismatch { bad_peers }) => {
                        let addrs: Vec<SocketAddr> = bad_peers
                            .iter()
                            .filter_map(|k| self.conns.get(k).map(|c| c.addr))
                            .collect();
                        for addr in addrs {
                            self.ban(
                                now,
                                tid,
                                addr,
                                "sent metadata that does not match the info-hash",
                            );
                        }
                    }
                    Ok(FetchProgress::Invalid(e)) => {
                        let message = format!(
                            "the metadata fetched for {} matches its info-hash but is not a valid \
                             torrent: {e}",
                            t.info_hash
                        );
                        self.torrent_error(now, tid, message);
                    }
                    Ok(FetchProgress::Stored { .. } | FetchProgress::Ignored)
                    | Err(FetchError::UnknownPeer | FetchError::NotRequested { .. }) => {}
                    Err(_) => {
                        // Wrong total size or piece length: the fetcher will not ask it again, and
                        // a peer that lies about the metadata is not one to keep.
                        c.session.close();
                    }
                }
            }
        }
    }

    /// A `ut_pex` message: plausible new addresses go into the address book.
    fn on_pex_message(&mut self, now: Instant, conn: ConnId, payload: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(t) = c.torrent.and_then(|tid| self.torrents.get_mut(&tid)) else {
            return;
        };
        if t.private {
            return;
        }
        let Some(rx) = c.ext.pex_in.as_mut() else {
            return;
        };
        let Ok(accepted) = rx.handle_payload(now, payload) else {
            return;
        };
        for p in accepted.added {
            if !t.banned.contains(&p.addr) {
                if p.flags.contains(PexFlags::UTP) {
                    self.utp.learn(p.addr);
                }
                self.dial_dirty |= t.book.add(now, p.addr);
            }
        }
    }

    /// The metadata is complete and verified: the torrent becomes an ordinary one, keeping its
    /// connections.
    pub(super) fn metadata_complete(&mut self, now: Instant, tid: TorrentId) {
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        let Some(info) = t.meta.fetch().and_then(|m| m.fetcher.result().cloned()) else {
            return;
        };
        let Some(m) = t.meta.fetch() else {
            return;
        };
        let layout = info.layout();
        let files = layout.files().len();
        let mut selection_error = None;
        let wanted_files = match &m.wanted_files {
            Some(w) if w.len() == files => w.clone(),
            Some(w) => {
                selection_error = Some(format!(
                    "file selection has {} entries but the torrent has {files} files",
                    w.len()
                ));
                vec![false; files]
            }
            None => match &m.select_only {
                Some(sel) => (0..files).map(|i| sel.contains(i as u32)).collect(),
                None => vec![true; files],
            },
        };
        let geometry = match Geometry::new(layout.piece_length(), layout.total_length()) {
            Ok(g) => g,
            Err(e) => {
                let message = format!("unusable torrent geometry: {e}");
                self.torrent_error(now, tid, message);
                return;
            }
        };
        let mut picker = match Picker::new(
            layout.piece_count(),
            layout.piece_length(),
            layout.total_length(),
            self.config.picker,
        ) {
            Ok(p) => p,
            Err(e) => {
                let message = format!("unusable torrent geometry: {e}");
                self.torrent_error(now, tid, message);
                return;
            }
        };
        picker.set_wanted(&Torrent::wanted_pieces(layout, &wanted_files));
        let info_hash = t.info_hash;
        t.name = info.name().to_owned();
        t.private = info.is_private();
        t.metadata.set_metadata(info.raw().clone());
        t.wanted_files = wanted_files;
        t.complete_reported = false;
        t.choke_dirty = true;
        t.refill = true;
        let have = picker.have().clone();
        t.meta = Meta::Known(Box::new(Known {
            info,
            geometry,
            picker,
        }));
        self.update_longest_piece();
        self.events.push_back(Event::MetadataReceived {
            torrent: tid,
            info_hash,
        });
        if let Some(message) = selection_error {
            // Its sessions are closed without ever learning the geometry.
            self.torrent_error(now, tid, message);
            return;
        }
        let Some(t) = self.torrents.get(&tid) else {
            return;
        };
        let ids: Vec<ConnId> = t.conns.iter().copied().collect();
        for id in &ids {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            if t.private {
                c.ext.pex_out = None;
                c.ext.pex_in = None;
                c.ext.pex_due = None;
            }
            c.session
                .set_our_extensions(now, Self::our_extensions(t, c.addr));
            // Only a session that already knows a geometry refuses; none of this torrent's does.
            let _ = c.session.set_geometry(now, geometry, &have);
        }
        for id in ids {
            self.process_conn(now, id);
        }
        self.dial_dirty = true;
        self.check_complete(now, tid);
    }

    /// Upkeep of extensions for the torrents an input touched: metadata requests to send, PEX
    /// messages due (a due one touches its torrent through its timer).
    pub(super) fn drive_extensions(&mut self, now: Instant, work: &[TorrentId]) {
        for &tid in work {
            self.send_metadata_requests(now, tid);
            self.send_pex(now, tid);
        }
    }

    fn send_metadata_requests(&mut self, now: Instant, tid: TorrentId) {
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        if !t.is_running() {
            return;
        }
        let Some(m) = t.meta.fetch_mut() else {
            return;
        };
        let mut sent = Vec::new();
        while let Some((conn, piece)) = m.fetcher.poll_request(now) {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            if let Some(peer_id) = c.ext.metadata_id {
                let msg = MetadataMessage::Request { piece }.encode();
                c.session.send_extended(now, peer_id, Bytes::from(msg));
                sent.push(conn);
            }
        }
        sent.dedup();
        for conn in sent {
            self.flush(conn);
        }
    }

    fn send_pex(&mut self, now: Instant, tid: TorrentId) {
        let Some(t) = self.torrents.get_mut(&tid) else {
            return;
        };
        if t.private || !t.is_running() {
            return;
        }
        let dirty = std::mem::take(&mut t.pex_dirty);
        if !dirty && t.pex_next.is_none_or(|d| d > now) {
            // Nothing changed and nothing is due: no need to look at every connection.
            return;
        }
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for id in &t.conns {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            let Some(sender) = c.ext.pex_out.as_ref() else {
                continue;
            };
            if dirty {
                let at = sender.next_send_time().unwrap_or(now).max(now);
                c.ext.pex_due = Some(c.ext.pex_due.map_or(at, |d| d.min(at)));
            }
            match c.ext.pex_due {
                Some(d) if d <= now => due.push(*id),
                Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                None => {}
            }
        }
        t.pex_next = next;
        if due.is_empty() {
            return;
        }
        let mut connected: BTreeMap<SocketAddr, PexFlags> = BTreeMap::new();
        for id in &t.conns {
            let Some(c) = self.conns.get(id) else {
                continue;
            };
            let (Some(_), Some(listen)) = (c.established_at, c.ext.listen_addr) else {
                continue;
            };
            let mut flags = PexFlags::empty();
            if c.outgoing {
                flags |= PexFlags::REACHABLE;
            }
            let seed = match c.session.peer_pieces() {
                PeerPieces::All => true,
                PeerPieces::Bitfield(b) => !b.is_empty() && b.all(),
            };
            if seed {
                flags |= PexFlags::SEED;
            }
            if self.mse.via_mse(*id) {
                flags |= PexFlags::PREFERS_ENCRYPTION;
            }
            if self.utp.carries(*id) {
                flags |= PexFlags::UTP;
            }
            connected.insert(listen, flags);
        }
        for id in due {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            let (Some(sender), Some(peer_id)) = (c.ext.pex_out.as_mut(), c.ext.pex_id) else {
                continue;
            };
            match sender.poll_message(now, &connected) {
                Some(msg) => {
                    c.session
                        .send_extended(now, peer_id, Bytes::from(msg.encode()));
                    c.ext.pex_due = sender.next_send_time();
                    if let (Some(d), Some(t)) = (c.ext.pex_due, self.torrents.get_mut(&tid)) {
                        t.pex_next = Some(t.pex_next.map_or(d, |n| n.min(d)));
                    }
                    self.flush(id);
                }
                None => {
                    // Nothing new: wait until the set changes (then no earlier than allowed).
                    c.ext.pex_due = None;
                }
            }
        }
    }

    /// A magnet torrent's metadata request timed out.
    pub(super) fn ext_handle_timeout(&mut self, now: Instant, tid: TorrentId) {
        if let Some(m) = self.torrents.get_mut(&tid).and_then(|t| t.meta.fetch_mut()) {
            if m.fetcher.poll_timeout().is_some_and(|d| d <= now) {
                m.fetcher.handle_timeout(now);
            }
        }
    }
}

//! Bookkeeping for one peer connection: its session, where it stands (dialling, handshaking,
//! established), its picker key, and the disk reads and socket bytes in flight for it.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use crate::peer::{BlockRequest, PeerSession};
use crate::picker::PeerKey;
use crate::time::Instant;
use crate::types::PeerId;

use super::admission::Conduct;
use super::ext::ConnExt;
use super::io::{ConnId, TorrentId};

/// Most bytes handed to the driver as `Output::Send` and not yet reported flushed, per connection.
/// Beyond this, bytes stay in the session's queue (where its cap protects us from a peer that does
/// not read).
pub(crate) const SEND_WINDOW: usize = 1024 * 1024;

/// Most bytes "on their way out" per connection (unflushed + queued in the session + disk reads in
/// flight) before we stop issuing disk reads for that peer's requests.
pub(crate) const READ_AHEAD: usize = 1024 * 1024;

/// One peer connection.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The remote address (for outgoing connections, the address we dialled).
    pub addr: SocketAddr,
    /// The torrent, once known (an incoming connection learns it from the handshake).
    pub torrent: Option<TorrentId>,
    /// The protocol state.
    pub session: PeerSession,
    /// Whether we dialled it.
    pub outgoing: bool,
    /// Whether the TCP connection is up (an outgoing one is "half-open" until then).
    pub connected: bool,
    /// The picker's name for this peer.
    pub key: PeerKey,
    /// When both handshakes completed.
    pub established_at: Option<Instant>,
    /// The peer's id, once its handshake arrived.
    pub peer_id: Option<PeerId>,
    /// Requests the peer made that wait for a disk read to be issued.
    pub read_queue: VecDeque<BlockRequest>,
    /// Disk reads in flight for this peer, in bytes.
    pub reading_bytes: usize,
    /// Bytes handed out as `Output::Send` and not yet reported by `handle_flushed`.
    pub unflushed: usize,
    /// BEP 10 extension state (the peer's ids, PEX).
    pub ext: ConnExt,
    /// How the peer behaves (rejects, silence, usefulness): see `admission.rs`.
    pub conduct: Conduct,
}

impl Conn {
    /// Bytes on their way to this peer: not flushed, queued in the session, or being read.
    pub fn outbound_bytes(&self) -> usize {
        self.unflushed
            .saturating_add(self.session.outgoing_len())
            .saturating_add(self.reading_bytes)
    }
}

/// What a connection id stands for. The next kinds (web-seed HTTP, TLS, uTP streams) join here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnKind {
    /// A peer wire connection (in `Engine::conns`).
    Peer,
    /// An HTTP tracker exchange (in the tracker glue).
    HttpTracker,
    /// A web seed's HTTP(S) connection (in `webseed.rs`).
    WebSeed,
}

/// A connection id known to be a web seed's (see [`HttpConn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WebSeedConn(ConnId);

impl WebSeedConn {
    /// The id the driver knows it by.
    pub fn id(self) -> ConnId {
        self.0
    }
}

/// A connection id known to be an HTTP tracker's: only [`ConnIds`] makes one, so the tracker
/// glue's handlers cannot be given a peer's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct HttpConn(ConnId);

impl HttpConn {
    /// The id the driver knows it by.
    pub fn id(self) -> ConnId {
        self.0
    }
}

/// A connection id sorted by kind, for the engine's handlers to dispatch on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Classified {
    /// A peer connection.
    Peer(ConnId),
    /// An HTTP tracker connection.
    HttpTracker(HttpConn),
    /// A web seed's connection.
    WebSeed(WebSeedConn),
}

/// The one place connection ids are minted: never reused, each with its kind until released.
#[derive(Debug, Default)]
pub(crate) struct ConnIds {
    next: u64,
    kinds: BTreeMap<ConnId, ConnKind>,
}

impl ConnIds {
    /// A new peer connection id.
    pub fn mint_peer(&mut self) -> ConnId {
        self.mint(ConnKind::Peer)
    }

    /// A new HTTP tracker connection id.
    pub fn mint_http(&mut self) -> HttpConn {
        HttpConn(self.mint(ConnKind::HttpTracker))
    }

    /// A new web-seed connection id.
    pub fn mint_web_seed(&mut self) -> WebSeedConn {
        WebSeedConn(self.mint(ConnKind::WebSeed))
    }

    fn mint(&mut self, kind: ConnKind) -> ConnId {
        let id = ConnId(self.next);
        self.next += 1;
        self.kinds.insert(id, kind);
        id
    }

    /// What `id` is, while it is open.
    pub fn classify(&self, id: ConnId) -> Option<Classified> {
        match self.kinds.get(&id)? {
            ConnKind::Peer => Some(Classified::Peer(id)),
            ConnKind::HttpTracker => Some(Classified::HttpTracker(HttpConn(id))),
            ConnKind::WebSeed => Some(Classified::WebSeed(WebSeedConn(id))),
        }
    }

    /// The connection is gone: forget its kind (the id is never minted again).
    pub fn release(&mut self, id: ConnId) {
        self.kinds.remove(&id);
    }

    /// Open connections of every kind.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.kinds.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_minted_once_classified_by_kind_and_released() {
        let mut ids = ConnIds::default();
        let p = ids.mint_peer();
        let h = ids.mint_http();
        assert_ne!(p, h.id());
        assert!(matches!(ids.classify(p), Some(Classified::Peer(x)) if x == p));
        assert!(matches!(ids.classify(h.id()), Some(Classified::HttpTracker(x)) if x == h));
        let w = ids.mint_web_seed();
        assert!(matches!(ids.classify(w.id()), Some(Classified::WebSeed(x)) if x == w));
        ids.release(w.id());
        ids.release(p);
        assert!(ids.classify(p).is_none());
        assert_eq!(ids.open(), 1);
        // Never reused.
        assert!(ids.mint_peer() > h.id());
    }
}

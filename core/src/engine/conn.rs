//! Bookkeeping for one peer connection: its session, where it stands (dialling, handshaking,
//! established), its picker key, and the disk reads and socket bytes in flight for it.

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::peer::{BlockRequest, PeerSession};
use crate::picker::PeerKey;
use crate::time::Instant;
use crate::types::PeerId;

use super::ext::ConnExt;
use super::io::TorrentId;

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
}

impl Conn {
    /// Bytes on their way to this peer: not flushed, queued in the session, or being read.
    pub fn outbound_bytes(&self) -> usize {
        self.unflushed
            .saturating_add(self.session.outgoing_len())
            .saturating_add(self.reading_bytes)
    }
}

//! The piece buffers of every torrent in one store that counts their bytes itself, so the figure the
//! memory cap is checked against is derived from the buffers and never added to or released by hand.

use std::collections::BTreeMap;

use super::io::TorrentId;
use super::torrent::{PieceBuf, PieceStage};

/// Pieces with blocks in memory (assembling, or out for verify-and-write), by torrent and index.
#[derive(Debug, Default)]
pub(crate) struct PieceStore {
    bufs: BTreeMap<(TorrentId, u32), PieceBuf>,
    /// The sum of `size` over `bufs`: kept by every method that adds or removes a buffer.
    bytes: u64,
}

impl PieceStore {
    /// Bytes of all pieces held, across torrents (what [`EngineConfig::max_pending_piece_bytes`]
    /// caps).
    ///
    /// [`EngineConfig::max_pending_piece_bytes`]: super::EngineConfig::max_pending_piece_bytes
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A torrent's piece buffer.
    pub fn get(&self, t: TorrentId, piece: u32) -> Option<&PieceBuf> {
        self.bufs.get(&(t, piece))
    }

    /// Whether a torrent holds a buffer for the piece.
    pub fn contains(&self, t: TorrentId, piece: u32) -> bool {
        self.bufs.contains_key(&(t, piece))
    }

    /// The piece's buffer, made empty (assembling, `size` bytes counted) if there was none.
    pub fn start(&mut self, t: TorrentId, piece: u32, size: u32) -> &mut PieceBuf {
        let bytes = &mut self.bytes;
        self.bufs.entry((t, piece)).or_insert_with(|| {
            *bytes += u64::from(size);
            PieceBuf {
                size,
                blocks: Default::default(),
                stage: PieceStage::Assembling,
            }
        })
    }

    /// Removes a buffer, uncounting its bytes.
    pub fn remove(&mut self, t: TorrentId, piece: u32) -> Option<PieceBuf> {
        let buf = self.bufs.remove(&(t, piece))?;
        self.bytes -= u64::from(buf.size);
        Some(buf)
    }

    /// A torrent's buffers in piece order.
    pub fn of_torrent(&self, t: TorrentId) -> impl Iterator<Item = (u32, &PieceBuf)> {
        self.bufs
            .range((t, 0)..=(t, u32::MAX))
            .map(|((_, p), b)| (*p, b))
    }

    /// Keeps only the torrent's buffers for which `keep` is true.
    pub fn retain(&mut self, t: TorrentId, mut keep: impl FnMut(u32, &PieceBuf) -> bool) {
        let gone: Vec<u32> = self
            .of_torrent(t)
            .filter(|(p, b)| !keep(*p, b))
            .map(|(p, _)| p)
            .collect();
        for p in gone {
            self.remove(t, p);
        }
    }

    /// Drops every buffer of a torrent (it was removed).
    pub fn remove_torrent(&mut self, t: TorrentId) {
        self.retain(t, |_, _| false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_follow_the_buffers_held() {
        let mut s = PieceStore::default();
        let (a, b) = (TorrentId(1), TorrentId(2));
        s.start(a, 0, 100);
        s.start(a, 0, 100);
        s.start(a, 3, 50);
        s.start(b, 0, 7);
        assert_eq!(s.bytes(), 157);
        assert_eq!(s.remove(a, 0).map(|b| b.size), Some(100));
        assert!(s.remove(a, 0).is_none());
        assert_eq!(s.bytes(), 57);
        s.remove_torrent(a);
        assert_eq!(s.bytes(), 7);
        assert!(s.contains(b, 0) && !s.contains(a, 3));
        s.retain(b, |p, _| p != 0);
        assert_eq!(s.bytes(), 0);
    }
}

//! Test torrents for simulations: seeded pseudo-random content and a `.torrent` built over it.

use bytes::Bytes;
use hyperblow_core::metainfo::Metainfo;
use hyperblow_core::rng::{seeded, Rng};

use crate::fixture::build_torrent;

/// A torrent made for a simulation, with its content.
#[derive(Debug, Clone)]
pub struct TestTorrent {
    /// The parsed metainfo (what every node adds).
    pub metainfo: Metainfo,
    /// The whole content (files concatenated), which seeders start with.
    pub content: Bytes,
}

/// Builds a multi-file torrent named `name` over `files` (name, length) with content drawn from
/// `seed`, pieces of `piece_length` bytes and the given tracker tiers. Panics on an invalid layout:
/// fixtures are the test author's input.
pub fn make_torrent(
    name: &str,
    files: &[(&str, u64)],
    piece_length: u32,
    trackers: Vec<Vec<String>>,
    seed: u64,
) -> TestTorrent {
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    let mut content = vec![0u8; usize::try_from(total).expect("content fits in memory")];
    let mut rng = seeded(seed);
    rng.fill_bytes(&mut content);
    let mut at = 0usize;
    let (metainfo, _) = build_torrent(name, files, piece_length, trackers, |_, len| {
        let len = usize::try_from(len).expect("content fits in memory");
        at += len;
        content[at - len..at].to_vec()
    });
    TestTorrent {
        metainfo,
        content: Bytes::from(content),
    }
}

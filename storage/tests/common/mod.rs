//! Shared helpers for the storage tests: layouts, deterministic content, piece blocks.

#![allow(dead_code)]

use std::path::Path;

use bytes::Bytes;
use hyperblow_core::metainfo::Layout;
use hyperblow_storage::{hash_piece, PieceWrite, Storage, StorageConfig};

/// A tiny deterministic generator (xorshift64*), so tests need no RNG crate.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// A multi-file layout under directory `t`: `(path with / between components, length, padding)`.
pub fn layout(files: &[(&str, u64, bool)], piece_length: u32) -> Layout {
    Layout::new(
        files.iter().map(|(n, l, p)| {
            let mut path = vec!["t".to_string()];
            path.extend(n.split('/').map(str::to_string));
            (path, *l, *p)
        }),
        piece_length,
    )
    .unwrap()
}

/// Content for a layout: random bytes, zeros in padding files.
pub fn content(layout: &Layout, seed: u64) -> Vec<u8> {
    let mut g = Gen::new(seed);
    let mut data: Vec<u8> = (0..layout.total_length()).map(|_| g.next() as u8).collect();
    for f in layout.files().iter().filter(|f| f.padding) {
        data[f.offset as usize..(f.offset + f.length) as usize].fill(0);
    }
    data
}

/// Piece `index` of `data`, cut into blocks of uneven sizes (1..=block_max bytes).
pub fn blocks(layout: &Layout, data: &[u8], index: u32, g: &mut Gen, block_max: u64) -> Vec<Bytes> {
    let start = layout.piece_offset(index) as usize;
    let end = start + layout.piece_len(index).unwrap() as usize;
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let n = (1 + g.below(block_max) as usize).min(end - at);
        out.push(Bytes::copy_from_slice(&data[at..at + n]));
        at += n;
    }
    out
}

/// The expected SHA-1 of every piece of `data`.
pub fn hashes(layout: &Layout, data: &[u8]) -> Vec<[u8; 20]> {
    (0..layout.piece_count())
        .map(|i| {
            let s = layout.piece_offset(i) as usize;
            let e = s + layout.piece_len(i).unwrap() as usize;
            hash_piece(&[&data[s..e]])
        })
        .collect()
}

pub fn storage(root: &Path, layout: &Layout) -> Storage {
    Storage::new(root, layout.clone(), StorageConfig::default()).unwrap()
}

/// Writes pieces `pieces` (in the given order) of `data`.
pub fn write_pieces(s: &Storage, data: &[u8], pieces: &[u32], seed: u64) {
    let mut g = Gen::new(seed);
    for &p in pieces {
        let b = blocks(s.layout(), data, p, &mut g, 20);
        assert_eq!(
            s.write_piece(p, &b).unwrap(),
            PieceWrite::Stored,
            "piece {p}"
        );
    }
}

/// All piece indexes, shuffled.
pub fn shuffled_pieces(layout: &Layout, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..layout.piece_count()).collect();
    Gen::new(seed).shuffle(&mut v);
    v
}

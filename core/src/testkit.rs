//! The driver side of hand-driven engine tests, shared by every harness that drives [`Engine`]s
//! itself: the engine's tests (`core/src/engine/tests.rs`, `core/src/engine/tests/`,
//! `core/src/engine/webseed/tests.rs`) and the root package's swarm simulator (`src/sim/`).
//!
//! A harness decides *when* things happen (instantly, or after a simulated latency); this module
//! decides *what* the answers are, so that every harness answers the engine's outputs the same way:
//! - [`MemDisk`] performs [`Job::VerifyWrite`] and [`Job::Read`] on pieces kept in memory (with
//!   failure injection: corrupt reads, failing writes).
//! - [`Hosts`] answers [`Output::Resolve`](crate::engine::Output::Resolve) from a table.
//! - [`next_deadline`] and [`fire_due`] step a group of engines' timers on a virtual clock.
//! - [`WireLog`] decodes the peer-wire bytes an engine sends on each connection.
//!
//! Compiled for this crate's tests and, with the `testkit` feature, for other crates' tests and
//! benches; never part of a driver.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use sha1::{Digest, Sha1};

use crate::engine::{Engine, Job, JobResult, StorageFailure, StorageFailureKind};
use crate::time::Instant;
use crate::wire::{Decoded, Decoder};

/// The SHA-1 of a piece given as its blocks.
pub fn sha1_of(blocks: &[Bytes]) -> [u8; 20] {
    let mut h = Sha1::new();
    for b in blocks {
        h.update(b);
    }
    h.finalize().into()
}

/// Whether the concatenated `blocks` equal `expect`.
pub fn blocks_equal(blocks: &[Bytes], expect: &[u8]) -> bool {
    let mut pos = 0;
    for b in blocks {
        match expect.get(pos..pos + b.len()) {
            Some(e) if e == &b[..] => pos += b.len(),
            _ => return false,
        }
    }
    pos == expect.len()
}

/// The original bytes of a piece, when the harness knows them: lets a benchmark skip SHA-1 for
/// blocks equal to them and store them without a copy.
#[derive(Debug, Clone)]
pub struct OriginPiece {
    /// The piece as the torrent's author made it.
    pub data: Bytes,
    /// Its hash from the metainfo.
    pub hash: [u8; 20],
}

/// How [`MemDisk::verify_write`] uses an [`OriginPiece`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginUse {
    /// Blocks equal to the original piece (a memory compare) have its hash, without SHA-1: the
    /// engine sees the same answers at a fraction of the CPU.
    pub trust_equal: bool,
    /// Blocks equal to the original piece are stored as a reference to it, not as a copy.
    pub share: bool,
}

/// A disk in memory: verified pieces by (torrent key, piece index), answering the engine's jobs.
/// `K` is whatever names a torrent in the harness (a `TorrentId`, an info-hash).
#[derive(Debug, Clone)]
pub struct MemDisk<K> {
    pieces: BTreeMap<(K, u32), Bytes>,
    /// Reads return every byte flipped (a peer that serves garbage).
    pub corrupt_reads: bool,
    /// Torrents whose writes fail with "no space left on device".
    pub fail_writes: BTreeSet<K>,
    /// Bytes stored by successful verify-and-write jobs (everything written was verified first).
    pub written: u64,
}

impl<K> Default for MemDisk<K> {
    fn default() -> Self {
        MemDisk {
            pieces: BTreeMap::new(),
            corrupt_reads: false,
            fail_writes: BTreeSet::new(),
            written: 0,
        }
    }
}

impl<K: Ord + Copy + std::fmt::Debug> MemDisk<K> {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts a piece on the disk as if it had been written.
    pub fn put(&mut self, key: K, piece: u32, data: Bytes) {
        self.pieces.insert((key, piece), data);
    }

    /// Puts a torrent's whole `content` on the disk, cut into pieces of `piece_length`.
    pub fn load(&mut self, key: K, content: &[u8], piece_length: u32) {
        for (i, chunk) in content.chunks(piece_length as usize).enumerate() {
            self.put(key, i as u32, Bytes::copy_from_slice(chunk));
        }
    }

    /// A piece on the disk.
    pub fn get(&self, key: K, piece: u32) -> Option<&Bytes> {
        self.pieces.get(&(key, piece))
    }

    /// Every piece on the disk, by (torrent, piece).
    pub fn pieces(&self) -> &BTreeMap<(K, u32), Bytes> {
        &self.pieces
    }

    /// The pieces of one torrent on the disk, in order.
    pub fn pieces_of(&self, key: K) -> impl Iterator<Item = (u32, &Bytes)> {
        self.pieces
            .range((key, 0)..=(key, u32::MAX))
            .map(|((_, p), b)| (*p, b))
    }

    /// What the disk holds of a torrent, pieces concatenated (missing pieces absent).
    pub fn content(&self, key: K) -> Vec<u8> {
        self.pieces_of(key)
            .flat_map(|(_, b)| b.iter().copied())
            .collect()
    }

    /// Performs a job for the torrent that `key` names (`None`: the harness does not know the
    /// torrent, and the job fails). `origin` is the original piece a `VerifyWrite` is about, if
    /// the harness knows it, and `use_origin` what to do with it.
    pub fn run(
        &mut self,
        key: Option<K>,
        job: &Job,
        origin: Option<OriginPiece>,
        use_origin: OriginUse,
    ) -> JobResult {
        let Some(key) = key else {
            let (Job::VerifyWrite { torrent, piece, .. } | Job::Read { torrent, piece, .. }) = job;
            return JobResult::Failed(StorageFailure {
                kind: StorageFailureKind::NotFound,
                message: format!("piece {piece}: unknown torrent {torrent:?}"),
            });
        };
        match job {
            Job::VerifyWrite {
                piece,
                blocks,
                expected,
                ..
            } => self.verify_write(key, *piece, blocks, expected, origin, use_origin),
            Job::Read {
                piece,
                offset,
                length,
                ..
            } => self.read(key, *piece, *offset, *length),
        }
    }

    /// Hashes `blocks`, compares with `expected` and stores the piece: `Written`, `Mismatch`, or
    /// `Failed` for a torrent in [`MemDisk::fail_writes`].
    pub fn verify_write(
        &mut self,
        key: K,
        piece: u32,
        blocks: &[Bytes],
        expected: &[u8; 20],
        origin: Option<OriginPiece>,
        use_origin: OriginUse,
    ) -> JobResult {
        let same = origin
            .as_ref()
            .is_some_and(|o| blocks_equal(blocks, &o.data));
        let hash = match &origin {
            Some(o) if use_origin.trust_equal && same => o.hash,
            _ => sha1_of(blocks),
        };
        if hash != *expected {
            return JobResult::Mismatch;
        }
        if self.fail_writes.contains(&key) {
            return JobResult::Failed(StorageFailure {
                kind: StorageFailureKind::NoSpace,
                message: format!("writing piece {piece}: no space left on device"),
            });
        }
        let len: usize = blocks.iter().map(Bytes::len).sum();
        self.written += len as u64;
        let data = match origin {
            Some(o) if use_origin.share && same => o.data,
            _ => {
                let mut v = Vec::with_capacity(len);
                for b in blocks {
                    v.extend_from_slice(b);
                }
                v.into()
            }
        };
        self.put(key, piece, data);
        JobResult::Written
    }

    /// Reads `length` bytes at `offset` of a piece on the disk.
    pub fn read(&self, key: K, piece: u32, offset: u32, length: u32) -> JobResult {
        let Some(data) = self.get(key, piece) else {
            return JobResult::Failed(StorageFailure {
                kind: StorageFailureKind::NotFound,
                message: format!("read of piece {piece}: not on disk"),
            });
        };
        let (o, l) = (offset as usize, length as usize);
        if o + l > data.len() {
            return JobResult::Failed(StorageFailure {
                kind: StorageFailureKind::Other,
                message: format!("read of piece {piece} at {offset}+{length}: past its end"),
            });
        }
        if self.corrupt_reads {
            let mut v = data[o..o + l].to_vec();
            for b in &mut v {
                *b ^= 0x5a;
            }
            JobResult::Read(v.into())
        } else {
            JobResult::Read(data.slice(o..o + l))
        }
    }
}

/// A resolver's table: host name to address.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    table: BTreeMap<String, IpAddr>,
}

impl Hosts {
    /// An empty table.
    pub fn new() -> Hosts {
        Hosts::default()
    }

    /// Makes `host` resolve to `ip`.
    pub fn insert(&mut self, host: &str, ip: IpAddr) {
        self.table.insert(host.to_owned(), ip);
    }

    /// The answer to `Output::Resolve { host, port, .. }`.
    pub fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        match self.table.get(host) {
            Some(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
            None => Err(format!("unknown host {host}")),
        }
    }
}

/// The earliest deadline of a group of engines.
pub fn next_deadline<'a>(engines: impl IntoIterator<Item = &'a Engine>) -> Option<Instant> {
    engines.into_iter().filter_map(Engine::poll_timeout).min()
}

/// Calls `handle_timeout(now)` on every engine whose deadline has come; returns how many fired.
pub fn fire_due<'a>(now: Instant, engines: impl IntoIterator<Item = &'a mut Engine>) -> usize {
    let mut fired = 0;
    for e in engines {
        if e.poll_timeout().is_some_and(|t| t <= now) {
            e.handle_timeout(now);
            fired += 1;
        }
    }
    fired
}

/// One direction of one connection's peer-wire bytes, decoded. Bytes that do not decode (an MSE
/// handshake, garbage: the engine's own decoder judges them) end the decoding quietly.
#[derive(Debug)]
pub struct WireStream {
    decoder: Decoder,
    failed: bool,
}

impl WireStream {
    /// A stream that accepts frames up to `max_frame` bytes.
    pub fn new(max_frame: u32) -> WireStream {
        WireStream {
            decoder: Decoder::new(max_frame),
            failed: false,
        }
    }

    /// Feeds bytes; calls `f` with every handshake and message they complete.
    pub fn feed(&mut self, data: &[u8], mut f: impl FnMut(Decoded)) {
        if self.failed {
            return;
        }
        self.decoder.extend(data);
        loop {
            match self.decoder.decode() {
                Ok(Some(m)) => f(m),
                Ok(None) => break,
                Err(_) => {
                    self.failed = true;
                    break;
                }
            }
        }
    }
}

/// The peer-wire messages an engine sent, decoded per connection (`C` names a connection in the
/// harness).
#[derive(Debug)]
pub struct WireLog<C> {
    streams: BTreeMap<C, WireStream>,
    max_frame: u32,
}

impl<C: Ord + Copy> WireLog<C> {
    /// A log that accepts frames up to `max_frame` bytes.
    pub fn new(max_frame: u32) -> Self {
        WireLog {
            streams: BTreeMap::new(),
            max_frame,
        }
    }

    /// Feeds bytes sent on `conn`; calls `f` with every item they complete.
    pub fn feed(&mut self, conn: C, data: &[u8], f: impl FnMut(Decoded)) {
        let max = self.max_frame;
        self.streams
            .entry(conn)
            .or_insert_with(|| WireStream::new(max))
            .feed(data, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(parts: &[&[u8]]) -> Vec<Bytes> {
        parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
    }

    #[test]
    fn verify_write_checks_the_hash_then_stores_and_reads_back() {
        let mut d: MemDisk<u8> = MemDisk::new();
        let b = blocks(&[b"abc", b"def"]);
        let good = sha1_of(&b);
        assert_eq!(
            d.verify_write(1, 0, &b, &[0; 20], None, OriginUse::default()),
            JobResult::Mismatch
        );
        assert_eq!(
            d.verify_write(1, 0, &b, &good, None, OriginUse::default()),
            JobResult::Written
        );
        assert_eq!(d.written, 6);
        assert_eq!(
            d.read(1, 0, 2, 3),
            JobResult::Read(Bytes::from_static(b"cde"))
        );
        assert!(matches!(d.read(1, 0, 4, 3), JobResult::Failed(_)));
        assert!(matches!(d.read(1, 1, 0, 1), JobResult::Failed(_)));
        d.corrupt_reads = true;
        assert_ne!(
            d.read(1, 0, 2, 3),
            JobResult::Read(Bytes::from_static(b"cde"))
        );
        d.fail_writes.insert(2);
        assert!(matches!(
            d.verify_write(2, 0, &b, &good, None, OriginUse::default()),
            JobResult::Failed(_)
        ));
        assert_eq!(d.content(1), b"abcdef");
    }

    #[test]
    fn origin_pieces_are_trusted_and_shared_only_when_equal() {
        let mut d: MemDisk<u8> = MemDisk::new();
        let origin = OriginPiece {
            data: Bytes::from_static(b"abcdef"),
            // Not the SHA-1 of the bytes: only a trusting write accepts it.
            hash: [9; 20],
        };
        let b = blocks(&[b"abc", b"def"]);
        let trust = OriginUse {
            trust_equal: true,
            share: true,
        };
        assert_eq!(
            d.verify_write(
                1,
                0,
                &b,
                &[9; 20],
                Some(origin.clone()),
                OriginUse::default()
            ),
            JobResult::Mismatch
        );
        assert_eq!(
            d.verify_write(1, 0, &b, &[9; 20], Some(origin.clone()), trust),
            JobResult::Written
        );
        // Different bytes are hashed for real.
        let other = blocks(&[b"abc", b"xyz"]);
        assert_eq!(
            d.verify_write(1, 1, &other, &[9; 20], Some(origin), trust),
            JobResult::Mismatch
        );
        assert!(blocks_equal(&b, b"abcdef"));
        assert!(!blocks_equal(&b, b"abcdefg"));
    }

    #[test]
    fn hosts_resolve_known_names_only() {
        let mut h = Hosts::new();
        h.insert("a.test", IpAddr::from([10, 0, 0, 1]));
        assert_eq!(
            h.resolve("a.test", 80),
            Ok(vec![SocketAddr::from(([10, 0, 0, 1], 80))])
        );
        assert!(h.resolve("b.test", 80).is_err());
    }
}

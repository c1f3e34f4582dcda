//! Test fixtures shared by the integration tests of this package and of `cli/`: deterministic
//! content, file trees written to and compared with a directory byte for byte, a multi-file torrent
//! built with the core's `TorrentBuilder`, and sessions started on either runtime.
//!
//! Everything here panics on failure: these are test helpers, and their inputs are the test author's.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyperblow_core::magnet::MagnetLink;
use hyperblow_core::metainfo::{Metainfo, TorrentBuilder};
use hyperblow_driver::engine::{Event, TorrentId};
use hyperblow_driver::{EventStream, RecvError, SessionConfig, SessionEvent, SessionHandle};

/// Deterministic pseudo-random bytes (xorshift64*), different for each `seed`: content that
/// compresses badly and differs between tests, so that two tests never share an info-hash.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A file tree in memory: (path relative to the tree's root, content), in the order given.
pub type Files = Vec<(PathBuf, Vec<u8>)>;

/// The tree of `files` (relative path with `/` separators, length): file `i` holds
/// [`content`]`(len, seed ^ (i + 1))`.
pub fn tree(files: &[(&str, usize)], seed: u64) -> Files {
    files
        .iter()
        .enumerate()
        .map(|(i, (rel, len))| (PathBuf::from(rel), content(*len, seed ^ (i as u64 + 1))))
        .collect()
}

/// Writes one file of a tree under `dir`, creating its parent directories.
pub fn write_file(dir: &Path, (rel, data): &(PathBuf, Vec<u8>)) {
    let full = dir.join(rel);
    let parent = full.parent().expect("a file path has a parent");
    fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    fs::write(&full, data).unwrap_or_else(|e| panic!("write {}: {e}", full.display()));
}

/// Writes every file of `files` under `dir`.
pub fn write_files(dir: &Path, files: &[(PathBuf, Vec<u8>)]) {
    for f in files {
        write_file(dir, f);
    }
}

/// Asserts that `dir` holds the file `rel` with exactly `want`; on a difference, names the length
/// and the first differing offset.
pub fn assert_file(dir: &Path, (rel, want): &(PathBuf, Vec<u8>)) {
    let full = dir.join(rel);
    let got = fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()));
    if got != *want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        let zeros = got.iter().filter(|b| **b == 0).count();
        panic!(
            "{} differs from the original: {} bytes (expected {}), first difference at \
             {first:?}, {zeros} zero bytes",
            full.display(),
            got.len(),
            want.len()
        );
    }
}

/// Asserts that `dir` holds every file of `files` byte for byte (0-byte files included).
pub fn assert_files(dir: &Path, files: &[(PathBuf, Vec<u8>)]) {
    for f in files {
        assert_file(dir, f);
    }
}

/// Builds a multi-file torrent named `name` over `files` (path with `/` separators, length) with
/// the given tracker tiers; `data(i, len)` gives the content of file `i` in the torrent's layout
/// order. Returns the metainfo and each file's path and content in that order.
pub fn build_torrent(
    name: &str,
    files: &[(&str, u64)],
    piece_length: u32,
    trackers: Vec<Vec<String>>,
    mut data: impl FnMut(usize, u64) -> Vec<u8>,
) -> (Metainfo, Files) {
    let spec: Vec<(Vec<String>, u64)> = files
        .iter()
        .map(|(p, len)| (p.split('/').map(str::to_owned).collect(), *len))
        .collect();
    let mut hasher = TorrentBuilder::multi_file(name, spec)
        .piece_length(piece_length)
        .trackers(trackers)
        .start()
        .expect("valid test layout");
    let entries = hasher.layout().files().to_vec();
    let mut out = Vec::with_capacity(entries.len());
    for (i, f) in entries.iter().enumerate() {
        let bytes = data(i, f.length);
        hasher.update(&bytes).expect("content matches the layout");
        out.push((f.path.iter().collect::<PathBuf>(), bytes));
    }
    let built = hasher.finish().expect("all content fed");
    let metainfo = Metainfo::from_bytes(&built.bytes).expect("the builder's output parses");
    (metainfo, out)
}

/// A multi-file torrent made with the core's builder, and the content of each of its files in
/// layout order (paths relative to the torrent's directory).
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The parsed metainfo.
    pub metainfo: Metainfo,
    /// Each file's path and content, in the torrent's order.
    pub files: Files,
}

impl Fixture {
    /// A multi-file torrent without trackers: `files` are (path under the torrent directory,
    /// length), file `i` (in layout order) holds [`content`]`(len, i + 1)`.
    pub fn multi(name: &str, piece_length: u32, files: &[(&str, usize)]) -> Fixture {
        let layout: Vec<(&str, u64)> = files.iter().map(|(p, l)| (*p, *l as u64)).collect();
        let (metainfo, files) = build_torrent(name, &layout, piece_length, Vec::new(), |i, len| {
            content(
                usize::try_from(len).expect("test file fits in memory"),
                i as u64 + 1,
            )
        });
        Fixture { metainfo, files }
    }

    /// A torrent with a 0-byte file, a file smaller than a piece and files that straddle pieces
    /// (~1.6 MB in 64 KiB pieces: 25 pieces).
    pub fn mixed() -> Fixture {
        Fixture::multi(
            "mixed",
            64 * 1024,
            &[
                ("empty.dat", 0),
                ("docs/small.txt", 1_000),
                ("docs/straddle.bin", 300_001),
                ("data/big.bin", 1_200_000),
                ("data/tail.bin", 70_003),
            ],
        )
    }

    /// Writes file `i` under `dir`.
    pub fn write_file(&self, dir: &Path, i: usize) {
        write_file(dir, &self.files[i]);
    }

    /// Writes the whole content under `dir`.
    pub fn write_to(&self, dir: &Path) {
        write_files(dir, &self.files);
    }

    /// Asserts that `dir` holds file `i` byte for byte.
    pub fn assert_file(&self, dir: &Path, i: usize) {
        assert_file(dir, &self.files[i]);
    }

    /// Asserts that `dir` holds exactly the content, byte for byte (0-byte files included).
    pub fn assert_in(&self, dir: &Path) {
        assert_files(dir, &self.files);
    }

    /// The torrent's number of pieces.
    pub fn pieces(&self) -> u32 {
        self.metainfo.info.layout().piece_count()
    }

    /// A magnet link with only the info-hash and `x.pe` naming `peer`, plus `extra` parameters.
    pub fn link(&self, peer: std::net::SocketAddr, extra: &str) -> MagnetLink {
        let uri = format!(
            "magnet:?xt=urn:btih:{}&x.pe={peer}{extra}",
            self.metainfo.info_hash().to_hex()
        );
        MagnetLink::parse(&uri).expect("a valid magnet link")
    }
}

/// Which driver runs a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rt {
    /// `hyperblow-tokio`.
    Tokio,
    /// `hyperblow-async-std`.
    AsyncStd,
}

/// A session configuration for tests: loopback only, seeded, two worker threads.
pub fn config(seed: u64) -> SessionConfig {
    SessionConfig {
        bind_addr: "127.0.0.1".parse().expect("a valid address"),
        seed: Some(seed),
        worker_threads: 2,
        ..SessionConfig::default()
    }
}

/// Starts a session with [`config`]`(seed)` on `rt`.
pub fn start(rt: Rt, seed: u64) -> SessionHandle {
    let c = config(seed);
    match rt {
        Rt::Tokio => hyperblow_tokio::start(c),
        Rt::AsyncStd => hyperblow_async_std::start(c),
    }
    .expect("session starts")
}

/// The default bound on one wait for a session event in the driver tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// [`wait_event`] bounded by [`WAIT`] with no extra context on failure.
pub fn wait_for(
    events: &mut EventStream,
    want: impl FnMut(&SessionEvent) -> bool,
) -> Vec<SessionEvent> {
    wait_event(events, WAIT, &String::new, want)
}

/// A matcher for [`wait_for`]: the torrent `id` completed.
pub fn completed(id: TorrentId) -> impl FnMut(&SessionEvent) -> bool {
    move |e| matches!(e, SessionEvent::Engine(Event::TorrentCompleted(t)) if *t == id)
}

/// Waits up to `wait` for an event matching `want` and returns the events seen meanwhile (the
/// match last); panics on timeout or a closed stream, quoting those events and `context()`.
pub fn wait_event(
    events: &mut EventStream,
    wait: Duration,
    context: &dyn Fn() -> String,
    mut want: impl FnMut(&SessionEvent) -> bool,
) -> Vec<SessionEvent> {
    let deadline = Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) => {
                let done = want(&e);
                seen.push(e);
                if done {
                    return seen;
                }
            }
            Err(RecvError::Empty) => panic!("timed out; events so far: {seen:?}\n{}", context()),
            Err(RecvError::Closed) => {
                panic!("session ended; events so far: {seen:?}\n{}", context())
            }
        }
    }
}

//! Making a `.torrent`, sans-IO: the caller lists the files and streams their content; the builder
//! hashes pieces across file boundaries and writes the bencoded result.
//!
//! Usage: [`TorrentBuilder::single_file`] or [`TorrentBuilder::multi_file`], set options, call
//! [`TorrentBuilder::start`] to get a [`PieceHasher`], read the files in the order of
//! [`PieceHasher::layout`] (sorted by path) feeding their bytes to [`PieceHasher::update`] in any chunk
//! sizes, then [`PieceHasher::finish`].

use sha1::{Digest, Sha1};

use super::files::{check_component, Layout};
use super::torrent::{check_conflicts, normalize_tiers, write_torrent, TorrentFields};
use super::MetainfoError;
use crate::bencode::OwnedValue;
use crate::types::InfoHash;

/// The `created by` value written unless the caller overrides it.
pub const CREATED_BY: &str = concat!("hyperblow/", env!("CARGO_PKG_VERSION"));

const MIN_AUTO_PIECE: u64 = 16 * 1024;
const MAX_AUTO_PIECE: u64 = 16 * 1024 * 1024;
const TARGET_PIECES: u64 = 2000;

/// The piece length chosen when the caller does not pick one: the smallest power of two between
/// 16 KiB and 16 MiB that keeps the piece count at or under 2000 (so large torrents land between about
/// 1000 and 2000 pieces, and the `.torrent` stays small).
pub fn auto_piece_length(total_length: u64) -> u32 {
    let mut pl = MIN_AUTO_PIECE;
    while pl < MAX_AUTO_PIECE && total_length.div_ceil(pl) > TARGET_PIECES {
        pl *= 2;
    }
    // At most 16 MiB, which fits in u32.
    u32::try_from(pl).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone)]
enum Content {
    Single(u64),
    Multi(Vec<(Vec<String>, u64)>),
}

/// The description of a torrent to make. See the module docs for the flow.
#[derive(Debug, Clone)]
pub struct TorrentBuilder {
    name: String,
    content: Content,
    piece_length: Option<u32>,
    trackers: Vec<Vec<String>>,
    private: bool,
    comment: Option<String>,
    created_by: String,
    creation_date: Option<i64>,
    url_list: Vec<String>,
}

impl TorrentBuilder {
    /// A single-file torrent named `name` (the file name) of `length` bytes.
    pub fn single_file(name: impl Into<String>, length: u64) -> Self {
        Self::new(name.into(), Content::Single(length))
    }

    /// A multi-file torrent: `name` is the directory, `files` are `(path components relative to that
    /// directory, length)`. The files are sorted by path (component-wise, bytewise) so the result does not
    /// depend on the order the caller's directory walk produced.
    pub fn multi_file(name: impl Into<String>, files: Vec<(Vec<String>, u64)>) -> Self {
        Self::new(name.into(), Content::Multi(files))
    }

    fn new(name: String, content: Content) -> Self {
        TorrentBuilder {
            name,
            content,
            piece_length: None,
            trackers: Vec::new(),
            private: false,
            comment: None,
            created_by: CREATED_BY.to_string(),
            creation_date: None,
            url_list: Vec::new(),
        }
    }

    /// Uses this piece length instead of [`auto_piece_length`].
    pub fn piece_length(mut self, piece_length: u32) -> Self {
        self.piece_length = Some(piece_length);
        self
    }

    /// Tracker tiers (BEP 12). URLs are trimmed, empty ones and repeats dropped, empty tiers dropped.
    pub fn trackers(mut self, tiers: Vec<Vec<String>>) -> Self {
        self.trackers = tiers;
        self
    }

    /// Sets the BEP 27 `private` flag.
    pub fn private(mut self, private: bool) -> Self {
        self.private = private;
        self
    }

    /// Sets the free-text `comment`.
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// Overrides `created by` (default [`CREATED_BY`]).
    pub fn created_by(mut self, created_by: impl Into<String>) -> Self {
        self.created_by = created_by.into();
        self
    }

    /// Sets `creation date` (seconds since the Unix epoch; the core never reads the clock itself).
    pub fn creation_date(mut self, unix_seconds: i64) -> Self {
        self.creation_date = Some(unix_seconds);
        self
    }

    /// Sets BEP 19 web seed URLs.
    pub fn url_list(mut self, urls: Vec<String>) -> Self {
        self.url_list = urls;
        self
    }

    /// Validates names and paths, fixes the file order and piece length, and returns the hasher that
    /// takes the content.
    pub fn start(mut self) -> Result<PieceHasher, MetainfoError> {
        check_component(&self.name).map_err(|reason| MetainfoError::UnsafePath {
            field: "name".into(),
            path: self.name.clone(),
            reason,
        })?;
        let (entries, multi_file): (Vec<(Vec<String>, u64, bool)>, bool) = match &mut self.content {
            Content::Single(len) => (vec![(vec![self.name.clone()], *len, false)], false),
            Content::Multi(files) => {
                files.sort();
                let mut entries = Vec::with_capacity(files.len());
                for (i, (components, len)) in files.iter().enumerate() {
                    let bad = |reason| MetainfoError::UnsafePath {
                        field: format!("files[{i}]"),
                        path: components.join("/"),
                        reason,
                    };
                    if components.is_empty() {
                        return Err(bad("empty path"));
                    }
                    for c in components {
                        check_component(c).map_err(bad)?;
                    }
                    let mut path = Vec::with_capacity(components.len() + 1);
                    path.push(self.name.clone());
                    path.extend(components.iter().cloned());
                    entries.push((path, *len, false));
                }
                (entries, true)
            }
        };
        let total = entries
            .iter()
            .try_fold(0u64, |acc, (_, len, _)| acc.checked_add(*len))
            .ok_or(MetainfoError::TotalLengthOverflow)?;
        let piece_length = self
            .piece_length
            .unwrap_or_else(|| auto_piece_length(total));
        let layout = Layout::new(entries, piece_length)?;
        check_conflicts(&layout)?;
        self.trackers = normalize_tiers(self.trackers.iter().map(|t| t.iter().map(String::as_str)));
        Ok(PieceHasher {
            pieces: Vec::with_capacity(layout.piece_count() as usize * 20),
            builder: self,
            layout,
            multi_file,
            hasher: Sha1::new(),
            in_piece: 0,
            fed: 0,
        })
    }
}

/// Takes a new torrent's content in file order and hashes it into pieces.
#[derive(Debug, Clone)]
pub struct PieceHasher {
    builder: TorrentBuilder,
    layout: Layout,
    multi_file: bool,
    hasher: Sha1,
    in_piece: u64,
    fed: u64,
    pieces: Vec<u8>,
}

/// A finished `.torrent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltTorrent {
    /// The bencoded `.torrent` file.
    pub bytes: Vec<u8>,
    /// Its info-hash.
    pub info_hash: InfoHash,
}

impl PieceHasher {
    /// The files in the order their content must be fed, with lengths and the chosen piece length.
    /// Paths start with the torrent name for multi-file torrents, as in a parsed torrent.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// How many content bytes have been fed so far.
    pub fn bytes_fed(&self) -> u64 {
        self.fed
    }

    /// Feeds the next bytes of content (files back to back, in layout order). Refuses, without
    /// consuming anything, data beyond the declared total (a file grew while being read).
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), MetainfoError> {
        let total = self.layout.total_length();
        if !matches!(self.fed.checked_add(data.len() as u64), Some(end) if end <= total) {
            return Err(MetainfoError::TooMuchData { expected: total });
        }
        self.fed += data.len() as u64;
        let pl = u64::from(self.layout.piece_length());
        while !data.is_empty() {
            let room = usize::try_from(pl - self.in_piece).unwrap_or(usize::MAX);
            let (now, later) = data.split_at(room.min(data.len()));
            self.hasher.update(now);
            self.in_piece += now.len() as u64;
            if self.in_piece == pl {
                self.pieces.extend_from_slice(&self.hasher.finalize_reset());
                self.in_piece = 0;
            }
            data = later;
        }
        Ok(())
    }

    /// Feeds the next whole piece as its length and SHA-1, hashed by the caller (so that a caller
    /// with threads can hash pieces in parallel and hand them over in order). Only at a piece
    /// boundary; `len` must be the piece length, or what is left for the last piece.
    pub fn push_piece_hash(&mut self, len: u64, sha1: [u8; 20]) -> Result<(), MetainfoError> {
        let total = self.layout.total_length();
        let left = total - self.fed;
        let pl = u64::from(self.layout.piece_length());
        if left == 0 || len > left {
            return Err(MetainfoError::TooMuchData { expected: total });
        }
        if self.in_piece != 0 || len == 0 || (len != pl && len != left) {
            return Err(MetainfoError::NotEnoughData {
                expected: total,
                got: self.fed + len,
            });
        }
        self.fed += len;
        self.pieces.extend_from_slice(&sha1);
        Ok(())
    }

    /// Completes the last piece and writes the `.torrent`. Fails if less content arrived than declared.
    pub fn finish(mut self) -> Result<BuiltTorrent, MetainfoError> {
        let total = self.layout.total_length();
        if self.fed != total {
            return Err(MetainfoError::NotEnoughData {
                expected: total,
                got: self.fed,
            });
        }
        if self.in_piece > 0 {
            self.pieces.extend_from_slice(&self.hasher.finalize_reset());
        }
        let b = &self.builder;
        let mut info = OwnedValue::dict()
            .with("name", b.name.as_str())
            .with("piece length", i64::from(self.layout.piece_length()))
            .with("pieces", std::mem::take(&mut self.pieces));
        if b.private {
            info.insert("private", 1);
        }
        if self.multi_file {
            let files = self
                .layout
                .files()
                .iter()
                .map(|f| {
                    let components = f.path.iter().skip(1).map(|c| c.as_str().into()).collect();
                    OwnedValue::dict()
                        .with("length", i64::try_from(f.length).unwrap_or(i64::MAX))
                        .with("path", OwnedValue::List(components))
                })
                .collect();
            info.insert("files", OwnedValue::List(files));
        } else {
            info.insert("length", i64::try_from(total).unwrap_or(i64::MAX));
        }
        let info_raw = info.encode();
        let info_hash = InfoHash(Sha1::digest(&info_raw).into());
        let bytes = write_torrent(&TorrentFields {
            info_raw: &info_raw,
            trackers: &b.trackers,
            comment: b.comment.as_deref(),
            created_by: Some(&b.created_by),
            creation_date: b.creation_date,
            url_list: &b.url_list,
        });
        Ok(BuiltTorrent { bytes, info_hash })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::metainfo::Metainfo;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn pieces_hashed_elsewhere_give_the_same_torrent() {
        let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let builder = || {
            TorrentBuilder::multi_file("d", vec![(s(&["a"]), 40_000), (s(&["b"]), 60_000)])
                .piece_length(16 * 1024)
        };
        let mut streamed = builder().start().unwrap();
        streamed.update(&content).unwrap();
        let mut pushed = builder().start().unwrap();
        for chunk in content.chunks(16 * 1024) {
            pushed
                .push_piece_hash(chunk.len() as u64, Sha1::digest(chunk).into())
                .unwrap();
        }
        assert_eq!(streamed.finish().unwrap(), pushed.finish().unwrap());
        // A short piece that is not the last, or one too many, is refused.
        let mut h = builder().start().unwrap();
        assert!(h.push_piece_hash(1000, [0; 20]).is_err());
        for chunk in content.chunks(16 * 1024) {
            h.push_piece_hash(chunk.len() as u64, [0; 20]).unwrap();
        }
        assert!(h.push_piece_hash(16 * 1024, [0; 20]).is_err());
    }

    #[test]
    fn auto_piece_lengths() {
        assert_eq!(auto_piece_length(1), 16 * 1024);
        assert_eq!(auto_piece_length(2000 * 16 * 1024), 16 * 1024);
        assert_eq!(auto_piece_length(2000 * 16 * 1024 + 1), 32 * 1024);
        assert_eq!(auto_piece_length(1 << 30), 1 << 20);
        assert_eq!(auto_piece_length(u64::MAX), 16 * 1024 * 1024);
    }

    #[test]
    fn single_file_known_hash() {
        let mut h = TorrentBuilder::single_file("abc.txt", 3)
            .trackers(vec![s(&["udp://t:1"])])
            .creation_date(1_000)
            .comment("c")
            .start()
            .unwrap();
        h.update(b"ab").unwrap();
        h.update(b"").unwrap();
        h.update(b"c").unwrap();
        let built = h.finish().unwrap();
        let m = Metainfo::from_bytes(&built.bytes).unwrap();
        assert_eq!(m.info_hash(), built.info_hash);
        assert_eq!(m.info.layout().piece_length(), 16 * 1024);
        assert_eq!(
            InfoHash(m.info.piece_hash(0).unwrap()).to_hex(),
            "a9993e364706816aba3e25717850c26c9cd0d89d" // SHA-1("abc")
        );
        assert_eq!(m.created_by.as_deref(), Some("hyperblow/0.1.0"));
        assert_eq!(m.creation_date, Some(1_000));
        assert_eq!(m.comment.as_deref(), Some("c"));
        assert!(!m.info.is_private());
        // The output is canonical bencode.
        let v = crate::bencode::decode(&built.bytes).unwrap();
        assert_eq!(v.encode_canonical(), built.bytes);
    }

    #[test]
    fn content_length_is_enforced() {
        let mut h = TorrentBuilder::single_file("x", 4).start().unwrap();
        assert_eq!(
            h.update(b"12345"),
            Err(MetainfoError::TooMuchData { expected: 4 })
        );
        h.update(b"123").unwrap();
        assert_eq!(h.bytes_fed(), 3);
        assert_eq!(
            h.finish(),
            Err(MetainfoError::NotEnoughData {
                expected: 4,
                got: 3
            })
        );
    }

    #[test]
    fn bad_inputs_are_rejected() {
        assert!(matches!(
            TorrentBuilder::single_file("..", 4).start(),
            Err(MetainfoError::UnsafePath { .. })
        ));
        let err = TorrentBuilder::multi_file("d", vec![(s(&["ok", ".."]), 1)])
            .start()
            .unwrap_err();
        assert!(err.to_string().contains("ok/.."), "{err}");
        assert_eq!(
            TorrentBuilder::multi_file("d", vec![]).start().err(),
            Some(MetainfoError::NoFiles)
        );
        assert_eq!(
            TorrentBuilder::multi_file("d", vec![(s(&["a"]), 1), (s(&["a"]), 2)])
                .start()
                .err(),
            Some(MetainfoError::PathConflict("d/a".into()))
        );
        assert_eq!(
            TorrentBuilder::single_file("x", 0).start().err(),
            Some(MetainfoError::EmptyTorrent)
        );
    }

    #[test]
    fn output_does_not_depend_on_listing_order() {
        let files = vec![(s(&["b"]), 3), (s(&["a", "z"]), 2), (s(&["a", "y"]), 1)];
        let build = |files: Vec<(Vec<String>, u64)>| {
            let mut h = TorrentBuilder::multi_file("d", files).start().unwrap();
            let order: Vec<String> = h
                .layout()
                .files()
                .iter()
                .map(|f| f.display_path())
                .collect();
            h.update(b"123456").unwrap();
            (order, h.finish().unwrap())
        };
        let (order, first) = build(files.clone());
        assert_eq!(order, vec!["d/a/y", "d/a/z", "d/b"]);
        let mut reversed = files;
        reversed.reverse();
        assert_eq!(build(reversed).1, first);
    }

    fn arb_files() -> impl Strategy<Value = Vec<(Vec<String>, u64)>> {
        proptest::collection::vec(
            (proptest::collection::vec("[a-c]{1,2}", 0..3), 0u64..3000),
            1..7,
        )
        .prop_map(|files| {
            files
                .into_iter()
                .enumerate()
                .map(|(i, (mut dirs, len))| {
                    dirs.push(format!("f{i}.bin"));
                    (dirs, len)
                })
                .collect()
        })
    }

    fn arb_tiers() -> impl Strategy<Value = Vec<Vec<String>>> {
        proptest::collection::vec(
            proptest::collection::vec("(udp|http)://[a-d]{1,3}", 0..3),
            0..4,
        )
    }

    proptest! {
        #[test]
        fn built_torrent_parses_back(
            files in arb_files(),
            piece_length in 1u32..5000,
            tiers in arb_tiers(),
            private in any::<bool>(),
            chunk in 1usize..4000,
            seed in any::<u8>(),
        ) {
            let total: u64 = files.iter().map(|(_, l)| l).sum();
            prop_assume!(total > 0);
            let builder = TorrentBuilder::multi_file("root", files.clone())
                .piece_length(piece_length)
                .trackers(tiers.clone())
                .private(private)
                .creation_date(42);
            let mut h = builder.start().map_err(|e| TestCaseError::fail(e.to_string()))?;
            // Content: each file filled with a pattern depending on its sorted position.
            let mut content = Vec::new();
            for (i, f) in h.layout().files().iter().enumerate() {
                content.extend((0..f.length).map(|j| (j as u8).wrapping_mul(31) ^ (i as u8) ^ seed));
            }
            for part in content.chunks(chunk) {
                h.update(part).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let built = h.finish().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let m = Metainfo::from_bytes(&built.bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(m.info_hash(), built.info_hash);
            prop_assert_eq!(m.info.is_private(), private);
            prop_assert_eq!(m.info.layout().piece_length(), piece_length);

            let mut expected_files: Vec<(Vec<String>, u64)> = files
                .iter()
                .map(|(p, l)| {
                    let mut full = vec!["root".to_string()];
                    full.extend(p.iter().cloned());
                    (full, *l)
                })
                .collect();
            expected_files.sort();
            let got: Vec<(Vec<String>, u64)> =
                m.info.layout().files().iter().map(|f| (f.path.clone(), f.length)).collect();
            prop_assert_eq!(got, expected_files);

            let mut seen = std::collections::HashSet::new();
            let expected_tiers: Vec<Vec<String>> = tiers
                .iter()
                .map(|t| t.iter().filter(|u| seen.insert((*u).clone())).cloned().collect::<Vec<_>>())
                .filter(|t| !t.is_empty())
                .collect();
            prop_assert_eq!(&m.trackers, &expected_tiers);

            let pieces: Vec<&[u8]> = content.chunks(piece_length as usize).collect();
            prop_assert_eq!(pieces.len() as u32, m.info.layout().piece_count());
            for (i, p) in pieces.iter().enumerate() {
                let want: [u8; 20] = Sha1::digest(p).into();
                prop_assert_eq!(m.info.piece_hash(i as u32), Some(want));
            }
        }
    }
}

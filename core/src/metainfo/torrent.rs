//! Parsing and validating a `.torrent` and its `info` dictionary.

use std::collections::HashSet;

use bytes::Bytes;
use sha1::{Digest, Sha1};

use super::files::{check_component, Layout};
use super::MetainfoError;
use crate::bencode::{self, encode_bytes, encode_int, Kind, Value};
use crate::types::InfoHash;

/// The `info` dictionary of a torrent: what the info-hash covers and what peers exchange as metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    raw: Bytes,
    info_hash: InfoHash,
    name: String,
    layout: Layout,
    /// The concatenated 20-byte piece hashes (a zero-copy slice of `raw`).
    pieces: Bytes,
    private: bool,
    multi_file: bool,
}

/// A parsed `.torrent`: the `info` dictionary plus what lives outside it (trackers, descriptions).
/// Only `info` affects the torrent's identity; the rest is read leniently (bad entries are skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    /// The `info` dictionary.
    pub info: Info,
    /// Tracker tiers (BEP 12): from `announce-list` if it has any usable URL, else `announce` as one
    /// tier; URLs are trimmed, and a URL seen in an earlier place is dropped; empty tiers are dropped.
    pub trackers: Vec<Vec<String>>,
    /// `comment` (preferring `comment.utf-8`), lossily decoded.
    pub comment: Option<String>,
    /// `created by`, lossily decoded.
    pub created_by: Option<String>,
    /// `creation date`, seconds since the Unix epoch.
    pub creation_date: Option<i64>,
    /// BEP 19 web seeds (`url-list`, a string or a list of strings).
    pub url_list: Vec<String>,
}

fn wrong_type(field: &str, v: &Value<'_>, expected: &'static str) -> MetainfoError {
    MetainfoError::WrongType {
        field: field.to_string(),
        offset: v.offset(),
        expected,
        found: v.type_name(),
    }
}

fn require<'v, 'a>(
    dict: &'v Value<'a>,
    key: &str,
    field: &str,
) -> Result<&'v Value<'a>, MetainfoError> {
    dict.get(key.as_bytes())
        .ok_or_else(|| MetainfoError::MissingField(field.to_string()))
}

fn int_field(v: &Value<'_>, field: &str) -> Result<i64, MetainfoError> {
    v.as_int().ok_or_else(|| wrong_type(field, v, "integer"))
}

fn bytes_field<'a>(v: &Value<'a>, field: &str) -> Result<&'a [u8], MetainfoError> {
    v.as_bytes()
        .ok_or_else(|| wrong_type(field, v, "byte string"))
}

fn list_field<'v, 'a>(v: &'v Value<'a>, field: &str) -> Result<&'v [Value<'a>], MetainfoError> {
    v.as_list().ok_or_else(|| wrong_type(field, v, "list"))
}

fn unsafe_path(field: &str, path: &[String], reason: &'static str) -> MetainfoError {
    MetainfoError::UnsafePath {
        field: field.to_string(),
        path: path.join("/"),
        reason,
    }
}

/// A text field, preferring its `<key>.utf-8` twin when that is valid UTF-8 text; otherwise the plain
/// key decoded lossily (old torrents use legacy encodings; U+FFFD can never form a path separator).
fn text_with_utf8_twin(
    dict: &Value<'_>,
    key: &str,
    field: &str,
) -> Result<Option<String>, MetainfoError> {
    let twin = format!("{key}.utf-8");
    if let Some(s) = dict.get(twin.as_bytes()).and_then(Value::as_str) {
        return Ok(Some(s.to_string()));
    }
    match dict.get(key.as_bytes()) {
        None => Ok(None),
        Some(v) => Ok(Some(
            String::from_utf8_lossy(bytes_field(v, field)?).into_owned(),
        )),
    }
}

/// Appends a file's path components to `path`: `path.utf-8` if it is a non-empty list of valid UTF-8
/// strings, else `path` (lossily decoded). `field` is only formatted when there is an error, because
/// this runs once per file of torrents with tens of thousands of files.
fn push_file_path(
    file: &Value<'_>,
    field: &dyn Fn() -> String,
    path: &mut Vec<String>,
) -> Result<(), MetainfoError> {
    if let Some(list) = file.get(b"path.utf-8").and_then(Value::as_list) {
        if !list.is_empty() && list.iter().all(|c| c.as_str().is_some()) {
            path.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
            return Ok(());
        }
    }
    let Some(value) = file.get(b"path") else {
        return Err(MetainfoError::MissingField(format!("{}.path", field())));
    };
    let list = value
        .as_list()
        .ok_or_else(|| wrong_type(&format!("{}.path", field()), value, "list"))?;
    for (i, c) in list.iter().enumerate() {
        let bytes = c
            .as_bytes()
            .ok_or_else(|| wrong_type(&format!("{}.path[{i}]", field()), c, "byte string"))?;
        path.push(String::from_utf8_lossy(bytes).into_owned());
    }
    Ok(())
}

/// Parses one entry of `info.files` into (full path starting with `name`, length, padding).
fn parse_file(
    index: usize,
    file: &Value<'_>,
    name: &str,
) -> Result<(Vec<String>, u64, bool), MetainfoError> {
    let field = || format!("info.files[{index}]");
    if file.as_dict().is_none() {
        return Err(wrong_type(&field(), file, "dictionary"));
    }
    let len_field = || format!("{}.length", field());
    let len_value = file
        .get(b"length")
        .ok_or_else(|| MetainfoError::MissingField(len_field()))?;
    let len = len_value
        .as_int()
        .ok_or_else(|| wrong_type(&len_field(), len_value, "integer"))?;
    let len = u64::try_from(len).map_err(|_| MetainfoError::NegativeLength {
        field: len_field(),
        value: len,
    })?;
    let mut path = vec![name.to_string()];
    push_file_path(file, &field, &mut path)?;
    let components = path.get(1..).unwrap_or_default();
    let bad = |reason| unsafe_path(&format!("{}.path", field()), components, reason);
    if components.is_empty() {
        return Err(bad("empty path"));
    }
    for c in components {
        check_component(c).map_err(bad)?;
    }
    let padding = file
        .get(b"attr")
        .and_then(Value::as_bytes)
        .is_some_and(|a| a.contains(&b'p'));
    Ok((path, len, padding))
}

/// Rejects duplicate paths and a file path that is also a directory of another file.
pub(super) fn check_conflicts(layout: &Layout) -> Result<(), MetainfoError> {
    let mut paths: Vec<&[String]> = layout.files().iter().map(|f| f.path.as_slice()).collect();
    // Builders (ours included) usually write files sorted already; then there is nothing to sort.
    if !paths.windows(2).all(|w| matches!(w, [a, b] if a <= b)) {
        paths.sort_unstable();
    }
    // After sorting, a path that is a prefix of others is immediately followed by one of them.
    for pair in paths.windows(2) {
        if let [a, b] = pair {
            if b.starts_with(a) {
                return Err(MetainfoError::PathConflict(a.join("/")));
            }
        }
    }
    Ok(())
}

impl Info {
    /// Parses a bare bencoded `info` dictionary (e.g. metadata fetched from peers per BEP 9). The
    /// info-hash is the SHA-1 of exactly these bytes.
    pub fn from_bytes(raw: &[u8]) -> Result<Info, MetainfoError> {
        let value = bencode::decode(raw)?;
        Info::from_value(&value)
    }

    /// Parses metadata fetched from peers (BEP 9) after checking that it hashes to the info-hash of the
    /// magnet link, so that bytes from a lying peer are refused before they are parsed.
    pub fn from_metadata(raw: &[u8], expected: InfoHash) -> Result<Info, MetainfoError> {
        let actual = InfoHash(Sha1::digest(raw).into());
        if actual != expected {
            return Err(MetainfoError::InfoHashMismatch { expected, actual });
        }
        Info::from_bytes(raw)
    }

    /// Parses a decoded `info` value; its raw span becomes [`Info::raw`].
    fn from_value(info: &Value<'_>) -> Result<Info, MetainfoError> {
        if info.as_dict().is_none() {
            return Err(wrong_type("info", info, "dictionary"));
        }
        let raw = Bytes::copy_from_slice(info.raw());
        let info_hash = InfoHash(Sha1::digest(info.raw()).into());

        let name = text_with_utf8_twin(info, "name", "info.name")?
            .ok_or_else(|| MetainfoError::MissingField("info.name".into()))?;
        check_component(&name)
            .map_err(|reason| unsafe_path("info.name", std::slice::from_ref(&name), reason))?;

        let pl_value = require(info, "piece length", "info.piece length")?;
        let pl = int_field(pl_value, "info.piece length")?;
        let piece_length = u32::try_from(pl)
            .ok()
            .filter(|&p| p > 0)
            .ok_or(MetainfoError::InvalidPieceLength(pl))?;

        let pieces_value = match info.get(b"pieces") {
            Some(v) => v,
            None if info.get(b"meta version").is_some() => return Err(MetainfoError::V2Only),
            None => return Err(MetainfoError::MissingField("info.pieces".into())),
        };
        let pieces_bytes = bytes_field(pieces_value, "info.pieces")?;
        if pieces_bytes.len() % 20 != 0 {
            return Err(MetainfoError::PiecesNotMultipleOf20(pieces_bytes.len()));
        }
        // The hashes are the tail of the pieces value's raw span, which lies inside info's raw span.
        let start =
            pieces_value.offset() - info.offset() + pieces_value.raw().len() - pieces_bytes.len();
        let pieces = raw.slice(start..start + pieces_bytes.len());

        let private = info.get(b"private").and_then(Value::as_int) == Some(1);

        let (files, multi_file) = match (info.get(b"length"), info.get(b"files")) {
            (Some(length), None) => {
                let len = int_field(length, "info.length")?;
                let len = u64::try_from(len).map_err(|_| MetainfoError::NegativeLength {
                    field: "info.length".into(),
                    value: len,
                })?;
                (vec![(vec![name.clone()], len, false)], false)
            }
            (None, Some(files)) => {
                let list = list_field(files, "info.files")?;
                if list.is_empty() {
                    return Err(MetainfoError::NoFiles);
                }
                let out = list
                    .iter()
                    .enumerate()
                    .map(|(i, file)| parse_file(i, file, &name))
                    .collect::<Result<Vec<_>, _>>()?;
                (out, true)
            }
            _ => return Err(MetainfoError::AmbiguousMode),
        };

        let layout = Layout::new(files, piece_length)?;
        let found = (pieces.len() / 20) as u64;
        if found != u64::from(layout.piece_count()) {
            return Err(MetainfoError::PieceCountMismatch {
                expected: u64::from(layout.piece_count()),
                found,
            });
        }
        check_conflicts(&layout)?;

        Ok(Info {
            raw,
            info_hash,
            name,
            layout,
            pieces,
            private,
            multi_file,
        })
    }

    /// The SHA-1 of the `info` dictionary's exact bytes.
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// The exact bytes of the `info` dictionary (BEP 9 metadata; hashing them gives the info-hash).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The suggested name: the file name (single-file) or directory name (multi-file).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Files and the piece <-> file map.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The expected SHA-1 of piece `index`, or `None` if out of range.
    pub fn piece_hash(&self, index: u32) -> Option<[u8; 20]> {
        let start = (index as usize).checked_mul(20)?;
        self.pieces.get(start..start + 20)?.try_into().ok()
    }

    /// The BEP 27 `private` flag: no DHT, PEX or local discovery for this torrent.
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// Whether the torrent has a `files` list (its files live under a directory named [`Info::name`]).
    pub fn is_multi_file(&self) -> bool {
        self.multi_file
    }
}

impl Metainfo {
    /// A torrent from an info dictionary and tracker tiers, with no comment, creator, date or web
    /// seeds: e.g. the metadata fetched for a magnet link plus the link's trackers, to save as a
    /// `.torrent` with [`Metainfo::to_bytes`].
    pub fn new(info: Info, trackers: Vec<Vec<String>>) -> Metainfo {
        Metainfo {
            info,
            trackers,
            comment: None,
            created_by: None,
            creation_date: None,
            url_list: Vec::new(),
        }
    }

    /// Parses and validates a `.torrent` file's bytes.
    pub fn from_bytes(torrent: &[u8]) -> Result<Metainfo, MetainfoError> {
        let top = bencode::decode(torrent)?;
        if top.as_dict().is_none() {
            return Err(wrong_type("(top level)", &top, "dictionary"));
        }
        let info = Info::from_value(require(&top, "info", "info")?)?;
        Ok(Metainfo {
            info,
            trackers: parse_trackers(&top),
            comment: text_with_utf8_twin(&top, "comment", "comment")
                .ok()
                .flatten(),
            created_by: top
                .get(b"created by")
                .and_then(Value::as_bytes)
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            creation_date: top.get(b"creation date").and_then(Value::as_int),
            url_list: parse_url_list(&top),
        })
    }

    /// The torrent's info-hash.
    pub fn info_hash(&self) -> InfoHash {
        self.info.info_hash()
    }

    /// Writes this torrent as `.torrent` bytes (canonical outer dictionary, the `info` bytes verbatim,
    /// so the info-hash is unchanged), e.g. to save a torrent obtained through a magnet link.
    pub fn to_bytes(&self) -> Vec<u8> {
        write_torrent(&TorrentFields {
            info_raw: &self.info.raw,
            trackers: &self.trackers,
            comment: self.comment.as_deref(),
            created_by: self.created_by.as_deref(),
            creation_date: self.creation_date,
            url_list: &self.url_list,
        })
    }
}

/// Trims URLs, drops empty ones and any URL already seen in an earlier place, and drops empty tiers.
pub(super) fn normalize_tiers<'u, T>(tiers: impl IntoIterator<Item = T>) -> Vec<Vec<String>>
where
    T: IntoIterator<Item = &'u str>,
{
    let mut seen: HashSet<&'u str> = HashSet::new();
    tiers
        .into_iter()
        .map(|tier| {
            tier.into_iter()
                .map(str::trim)
                .filter(|u| !u.is_empty() && seen.insert(u))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|tier| !tier.is_empty())
        .collect()
}

fn parse_trackers(top: &Value<'_>) -> Vec<Vec<String>> {
    let mut tiers = match top.get(b"announce-list").and_then(Value::as_list) {
        Some(list) => normalize_tiers(
            list.iter()
                .filter_map(Value::as_list)
                .map(|tier| tier.iter().filter_map(Value::as_str)),
        ),
        None => Vec::new(),
    };
    if tiers.is_empty() {
        let announce = top.get(b"announce").and_then(Value::as_str);
        tiers = normalize_tiers([announce]);
    }
    tiers
}

fn parse_url_list(top: &Value<'_>) -> Vec<String> {
    let Some(v) = top.get(b"url-list") else {
        return Vec::new();
    };
    let candidates: Vec<&str> = match v.kind() {
        Kind::Bytes(_) => v.as_str().into_iter().collect(),
        Kind::List(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    candidates
        .into_iter()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// Everything that goes into a `.torrent` file.
pub(super) struct TorrentFields<'f> {
    pub info_raw: &'f [u8],
    pub trackers: &'f [Vec<String>],
    pub comment: Option<&'f str>,
    pub created_by: Option<&'f str>,
    pub creation_date: Option<i64>,
    pub url_list: &'f [String],
}

/// Writes a `.torrent` with its keys in canonical (sorted) order and the `info` bytes spliced in
/// verbatim. `announce` is the first tracker; `announce-list` is written when there is more than one.
pub(super) fn write_torrent(f: &TorrentFields<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.info_raw.len() + 256);
    out.push(b'd');
    let all: Vec<&String> = f.trackers.iter().flatten().collect();
    if let Some(first) = all.first() {
        encode_bytes(&mut out, b"announce");
        encode_bytes(&mut out, first.as_bytes());
    }
    if all.len() > 1 {
        encode_bytes(&mut out, b"announce-list");
        out.push(b'l');
        for tier in f.trackers.iter().filter(|t| !t.is_empty()) {
            out.push(b'l');
            for url in tier {
                encode_bytes(&mut out, url.as_bytes());
            }
            out.push(b'e');
        }
        out.push(b'e');
    }
    if let Some(c) = f.comment {
        encode_bytes(&mut out, b"comment");
        encode_bytes(&mut out, c.as_bytes());
    }
    if let Some(c) = f.created_by {
        encode_bytes(&mut out, b"created by");
        encode_bytes(&mut out, c.as_bytes());
    }
    if let Some(d) = f.creation_date {
        encode_bytes(&mut out, b"creation date");
        encode_int(&mut out, d);
    }
    encode_bytes(&mut out, b"info");
    out.extend_from_slice(f.info_raw);
    if !f.url_list.is_empty() {
        encode_bytes(&mut out, b"url-list");
        out.push(b'l');
        for url in f.url_list {
            encode_bytes(&mut out, url.as_bytes());
        }
        out.push(b'e');
    }
    out.push(b'e');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::OwnedValue;

    fn hashes(n: usize) -> Vec<u8> {
        (0..n * 20).map(|i| i as u8).collect()
    }

    fn single(length: i64, piece_length: i64, n: usize) -> OwnedValue {
        OwnedValue::dict()
            .with("name", "file.bin")
            .with("length", length)
            .with("piece length", piece_length)
            .with("pieces", hashes(n))
    }

    fn torrent(info: OwnedValue) -> Vec<u8> {
        OwnedValue::dict()
            .with("announce", "http://t.example/announce")
            .with("info", info)
            .encode()
    }

    fn parse_info(info: OwnedValue) -> Result<Metainfo, MetainfoError> {
        Metainfo::from_bytes(&torrent(info))
    }

    fn file(len: i64, path: &[&str]) -> OwnedValue {
        OwnedValue::dict().with("length", len).with(
            "path",
            OwnedValue::List(path.iter().map(|p| (*p).into()).collect()),
        )
    }

    fn multi(files: Vec<OwnedValue>, piece_length: i64, n: usize) -> OwnedValue {
        OwnedValue::dict()
            .with("name", "dir")
            .with("files", OwnedValue::List(files))
            .with("piece length", piece_length)
            .with("pieces", hashes(n))
    }

    #[test]
    fn single_file() {
        let m = parse_info(single(40_000, 16_384, 3).with("private", 1)).unwrap();
        let info = &m.info;
        assert_eq!(info.name(), "file.bin");
        assert!(!info.is_multi_file());
        assert!(info.is_private());
        assert_eq!(info.layout().total_length(), 40_000);
        assert_eq!(info.layout().piece_count(), 3);
        assert_eq!(info.layout().piece_len(2), Some(40_000 - 2 * 16_384));
        assert_eq!(info.layout().files()[0].path, vec!["file.bin".to_string()]);
        assert_eq!(info.piece_hash(1).unwrap()[0], 20);
        assert!(info.piece_hash(3).is_none());
        assert_eq!(
            m.trackers,
            vec![vec!["http://t.example/announce".to_string()]]
        );
    }

    #[test]
    fn multi_file_with_zero_length_file() {
        let info = multi(
            vec![
                file(10, &["a", "x.txt"]),
                file(0, &["empty"]),
                file(7, &["b"]),
            ],
            4,
            5,
        );
        let m = parse_info(info).unwrap();
        let l = m.info.layout();
        assert!(m.info.is_multi_file());
        assert_eq!(l.files().len(), 3);
        assert_eq!(l.files()[0].display_path(), "dir/a/x.txt");
        assert_eq!(l.files()[2].offset, 10);
        assert_eq!(l.piece_count(), 5);
    }

    #[test]
    fn info_hash_is_of_the_original_bytes() {
        // Keys out of order plus an unknown key: a re-encoding would differ.
        let info_raw: &[u8] =
            b"d6:lengthi5e4:name1:x12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaa1:zi1e3:fooi7ee";
        let mut torrent = b"d8:announce3:url4:info".to_vec();
        torrent.extend_from_slice(info_raw);
        torrent.push(b'e');
        let m = Metainfo::from_bytes(&torrent).unwrap();
        let expected = InfoHash(Sha1::digest(info_raw).into());
        assert_eq!(m.info_hash(), expected);
        assert_eq!(&m.info.raw()[..], info_raw);
        let reencoded = bencode::decode(info_raw).unwrap().encode_canonical();
        assert_ne!(reencoded, info_raw);
        assert_ne!(InfoHash(Sha1::digest(&reencoded).into()), expected);
        // A bare info dict (BEP 9 metadata) gives the same hash; writing the torrent back keeps it.
        assert_eq!(Info::from_bytes(info_raw).unwrap().info_hash(), expected);
        assert_eq!(
            Info::from_metadata(info_raw, expected).unwrap().info_hash(),
            expected
        );
        let other = InfoHash([7; 20]);
        assert_eq!(
            Info::from_metadata(info_raw, other),
            Err(MetainfoError::InfoHashMismatch {
                expected: other,
                actual: expected
            })
        );
        assert_eq!(
            Metainfo::from_bytes(&m.to_bytes()).unwrap().info_hash(),
            expected
        );
        assert_eq!(m.info.piece_hash(0), Some([b'a'; 20]));
    }

    #[test]
    fn unsafe_paths_are_rejected_with_the_path() {
        for bad in [
            vec![".."],
            vec!["a", "..", "b"],
            vec!["."],
            vec![""],
            vec!["/etc"],
            vec!["a\\b"],
            vec!["nul\0"],
        ] {
            let err = parse_info(multi(vec![file(10, &bad)], 4, 3)).unwrap_err();
            match &err {
                MetainfoError::UnsafePath { field, path, .. } => {
                    assert_eq!(field, "info.files[0].path");
                    assert_eq!(path, &bad.join("/"));
                }
                other => panic!("{bad:?}: unexpected {other:?}"),
            }
        }
        let err = parse_info(multi(vec![file(10, &[])], 4, 3)).unwrap_err();
        assert!(matches!(err, MetainfoError::UnsafePath { .. }), "{err:?}");
        let err = parse_info(single(10, 4, 3).with("name", "..")).unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
        let err = parse_info(single(10, 4, 3).with("name", "a/b")).unwrap_err();
        assert!(err.to_string().contains("info.name"), "{err}");
    }

    #[test]
    fn utf8_twins_are_preferred_but_still_checked() {
        let f = file(10, &["legacy"]).with(
            "path.utf-8",
            OwnedValue::List(vec!["sub".into(), "n\u{e9}.txt".into()]),
        );
        let m = parse_info(multi(vec![f], 4, 3).with("name.utf-8", "d\u{e9}")).unwrap();
        assert_eq!(m.info.name(), "d\u{e9}");
        assert_eq!(
            m.info.layout().files()[0].display_path(),
            "d\u{e9}/sub/n\u{e9}.txt"
        );
        let f = file(10, &["ok"]).with("path.utf-8", OwnedValue::List(vec!["..".into()]));
        assert!(matches!(
            parse_info(multi(vec![f], 4, 3)),
            Err(MetainfoError::UnsafePath { .. })
        ));
    }

    #[test]
    fn structural_errors() {
        use MetainfoError as E;
        assert_eq!(parse_info(single(10, 0, 3)), Err(E::InvalidPieceLength(0)));
        assert_eq!(
            parse_info(single(10, -4, 3)),
            Err(E::InvalidPieceLength(-4))
        );
        assert_eq!(
            parse_info(single(10, 1 << 32, 1)),
            Err(E::InvalidPieceLength(1 << 32))
        );
        assert_eq!(
            parse_info(single(10, 4, 2)),
            Err(E::PieceCountMismatch {
                expected: 3,
                found: 2
            })
        );
        assert_eq!(
            parse_info(single(10, 4, 3).with("pieces", vec![0u8; 59])),
            Err(E::PiecesNotMultipleOf20(59))
        );
        assert_eq!(
            parse_info(single(-1, 4, 0)),
            Err(E::NegativeLength {
                field: "info.length".into(),
                value: -1
            })
        );
        assert_eq!(
            parse_info(multi(vec![file(-3, &["a"])], 4, 0)),
            Err(E::NegativeLength {
                field: "info.files[0].length".into(),
                value: -3
            })
        );
        assert_eq!(parse_info(multi(vec![], 4, 0)), Err(E::NoFiles));
        assert_eq!(parse_info(single(0, 4, 0)), Err(E::EmptyTorrent));
        assert_eq!(
            parse_info(single(10, 4, 3).with("files", OwnedValue::List(vec![]))),
            Err(E::AmbiguousMode)
        );
        let no_pieces = OwnedValue::dict()
            .with("name", "x")
            .with("length", 1)
            .with("piece length", 4);
        assert_eq!(
            parse_info(no_pieces.clone()),
            Err(E::MissingField("info.pieces".into()))
        );
        assert_eq!(
            parse_info(no_pieces.with("meta version", 2)),
            Err(E::V2Only)
        );
        assert_eq!(
            parse_info(multi(vec![file(5, &["a"]), file(5, &["a"])], 4, 3)),
            Err(E::PathConflict("dir/a".into()))
        );
        assert_eq!(
            parse_info(multi(vec![file(5, &["a"]), file(5, &["a", "b"])], 4, 3)),
            Err(E::PathConflict("dir/a".into()))
        );
        let err = parse_info(single(10, 4, 3).with("length", "ten")).unwrap_err();
        assert!(
            matches!(&err, E::WrongType { field, expected: "integer", found: "byte string", .. } if field == "info.length"),
            "{err:?}"
        );
        assert_eq!(
            Metainfo::from_bytes(b"d8:announce1:xe"),
            Err(E::MissingField("info".into()))
        );
        assert!(matches!(
            Metainfo::from_bytes(b"le"),
            Err(E::WrongType { .. })
        ));
        assert!(matches!(
            Metainfo::from_bytes(b"d4:infoi1ee"),
            Err(E::WrongType { .. })
        ));
        let err = Metainfo::from_bytes(b"d4:info").unwrap_err();
        assert!(err.to_string().contains("byte offset 7"), "{err}");
    }

    #[test]
    fn tracker_tiers() {
        let list = |tiers: &[&[&str]]| {
            OwnedValue::List(
                tiers
                    .iter()
                    .map(|t| OwnedValue::List(t.iter().map(|u| (*u).into()).collect()))
                    .collect(),
            )
        };
        let t = OwnedValue::dict()
            .with("announce", "udp://a")
            .with(
                "announce-list",
                list(&[
                    &["udp://b", " udp://c "],
                    &[],
                    &["udp://b", ""],
                    &["udp://a"],
                ]),
            )
            .with("info", single(10, 4, 3))
            .with("url-list", "http://seed/")
            .with("comment", "hello")
            .with("created by", "tool")
            .with("creation date", 1_700_000_000);
        let m = Metainfo::from_bytes(&t.encode()).unwrap();
        assert_eq!(
            m.trackers,
            vec![
                vec!["udp://b".to_string(), "udp://c".to_string()],
                vec!["udp://a".to_string()]
            ]
        );
        assert_eq!(m.url_list, vec!["http://seed/".to_string()]);
        assert_eq!(m.comment.as_deref(), Some("hello"));
        assert_eq!(m.created_by.as_deref(), Some("tool"));
        assert_eq!(m.creation_date, Some(1_700_000_000));
        // Written back and parsed again, everything survives.
        assert_eq!(Metainfo::from_bytes(&m.to_bytes()).unwrap(), m);

        // An announce-list with nothing usable falls back to announce.
        let t = OwnedValue::dict()
            .with("announce", "udp://a")
            .with("announce-list", list(&[&[]]))
            .with("info", single(10, 4, 3));
        let m = Metainfo::from_bytes(&t.encode()).unwrap();
        assert_eq!(m.trackers, vec![vec!["udp://a".to_string()]]);
        // No trackers at all is fine (magnet-style / DHT-only).
        let t = OwnedValue::dict().with("info", single(10, 4, 3));
        assert!(Metainfo::from_bytes(&t.encode())
            .unwrap()
            .trackers
            .is_empty());
    }

    proptest::proptest! {
        /// Garbage, and valid torrents with bytes flipped or cut, never panic the parser.
        #[test]
        fn damaged_torrents_never_panic(
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..4),
            cut in proptest::prelude::any::<usize>(),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let _ = Metainfo::from_bytes(&garbage);
            let _ = Info::from_bytes(&garbage);
            let mut bytes = torrent(multi(
                vec![file(10, &["a", "x"]), file(0, &["e"]), file(7, &["b"])],
                4,
                5,
            ));
            for (at, b) in edits {
                let i = at % bytes.len();
                bytes[i] = b;
            }
            let cut = cut % (bytes.len() + 1);
            if let Ok(m) = Metainfo::from_bytes(&bytes[..cut]) {
                let l = m.info.layout();
                proptest::prop_assert!(l.piece_count() > 0);
                for p in 0..l.piece_count() {
                    proptest::prop_assert!(m.info.piece_hash(p).is_some());
                    proptest::prop_assert!(l.piece_ranges(p).is_some());
                }
            }
        }
    }
}

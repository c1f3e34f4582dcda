//! Magnet links (BEP 9), with BEP 53 file selection.
//!
//! A magnet link names a torrent by its info-hash alone; the metadata is then fetched from peers. This
//! module parses and formats the link itself:
//! `magnet:?xt=urn:btih:<40 hex | 32 base32>&dn=<name>&tr=<tracker>...&ws=<web seed>...&x.pe=<host:port>...&so=<0,2,4-6>`.
//! `ws` (web seeds, BEP 19 `url-list` entries, as libtorrent reads them) is not in BEP 9, but the info
//! dictionary a peer sends never holds a `url-list`, so a link is the only way to carry them.
//! Unknown parameters are ignored, as BEP 9 asks, so links made by newer clients still work.

use std::fmt;

use thiserror::Error;

use crate::types::InfoHash;

/// A parsed magnet link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MagnetLink {
    /// The torrent's v1 info-hash (`xt=urn:btih:`).
    pub info_hash: InfoHash,
    /// The display name (`dn`), a hint until the metadata arrives.
    pub display_name: Option<String>,
    /// Tracker URLs (`tr`), in the order given, duplicates removed.
    pub trackers: Vec<String>,
    /// Web seed URLs (`ws`), in the order given, duplicates removed; used once the metadata is known.
    pub web_seeds: Vec<String>,
    /// Peer addresses to try directly (`x.pe`).
    pub peers: Vec<PeerHint>,
    /// Files to download (`so`, BEP 53), as indices into the torrent's file list; `None` means all.
    pub select_only: Option<FileSelection>,
}

/// A peer address from `x.pe`: a host name or IP literal and a port. Resolving names is the driver's job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerHint {
    /// Host name, IPv4 literal, or IPv6 literal without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for PeerHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A BEP 53 selection of file indices: single indices and inclusive ranges, kept sorted and merged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileSelection {
    ranges: Vec<(u32, u32)>,
}

impl FileSelection {
    /// Parses `0,2,4-6` (as in `so=` and the CLI's `--only`). Empty items, reversed ranges and
    /// non-numbers are errors.
    pub fn parse(s: &str) -> Result<FileSelection, MagnetError> {
        let bad = || MagnetError::BadSelection(s.to_owned());
        let mut ranges = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (item, item),
            };
            let lo: u32 = lo.parse().map_err(|_| bad())?;
            let hi: u32 = hi.parse().map_err(|_| bad())?;
            if lo > hi {
                return Err(bad());
            }
            ranges.push((lo, hi));
        }
        Ok(FileSelection::from_ranges(ranges))
    }

    /// A selection from inclusive ranges, in any order, overlapping or not.
    pub fn from_ranges(mut ranges: Vec<(u32, u32)>) -> FileSelection {
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        FileSelection { ranges: merged }
    }

    /// Whether file `index` is selected.
    pub fn contains(&self, index: u32) -> bool {
        self.ranges
            .binary_search_by(|&(lo, hi)| {
                if hi < index {
                    std::cmp::Ordering::Less
                } else if lo > index {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }

    /// The merged inclusive ranges, ascending.
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.ranges
    }
}

impl fmt::Display for FileSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// Why a magnet link was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MagnetError {
    /// The text does not start with `magnet:?`.
    #[error("not a magnet link (expected it to start with \"magnet:?\")")]
    NotMagnet,
    /// No `xt=urn:btih:` parameter.
    #[error("magnet link has no BitTorrent info-hash (xt=urn:btih:...)")]
    MissingInfoHash,
    /// Only a BitTorrent v2 hash (`urn:btmh:`) was given.
    #[error(
        "magnet link names only a BitTorrent v2 hash (urn:btmh); Hyperblow supports v1 torrents"
    )]
    V2Only,
    /// The `btih` value is neither 40 hex nor 32 base32 characters.
    #[error("bad info-hash {0:?} in magnet link: expected 40 hex or 32 base32 characters")]
    BadInfoHash(String),
    /// Two different `btih` values.
    #[error("magnet link names two different info-hashes")]
    ConflictingInfoHash,
    /// A `%` escape is malformed or the decoded text is not UTF-8.
    #[error("bad percent-encoding in magnet parameter {0:?}")]
    BadEncoding(String),
    /// An `x.pe` value is not `host:port`.
    #[error("bad peer address {0:?} in magnet link: expected host:port or [ipv6]:port")]
    BadPeer(String),
    /// A `so` value is not a list of indices and ranges.
    #[error("bad file selection {0:?}: expected indices and ranges such as 0,2,4-6")]
    BadSelection(String),
}

impl MagnetLink {
    /// A link with just an info-hash.
    pub fn new(info_hash: InfoHash) -> MagnetLink {
        MagnetLink {
            info_hash,
            display_name: None,
            trackers: Vec::new(),
            web_seeds: Vec::new(),
            peers: Vec::new(),
            select_only: None,
        }
    }

    /// Parses a magnet URI.
    pub fn parse(uri: &str) -> Result<MagnetLink, MagnetError> {
        let uri = uri.trim();
        let query = uri
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("magnet:?"))
            .map(|_| &uri[8..])
            .ok_or(MagnetError::NotMagnet)?;

        let mut info_hash = None;
        let mut saw_v2 = false;
        let mut link = MagnetLink::new(InfoHash::default());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "xt" => {
                    let value = percent_decode(raw, false)?;
                    if let Some(hash) = strip_prefix_ignore_case(&value, "urn:btih:") {
                        let parsed = parse_btih(hash)?;
                        if info_hash.is_some_and(|h| h != parsed) {
                            return Err(MagnetError::ConflictingInfoHash);
                        }
                        info_hash = Some(parsed);
                    } else if strip_prefix_ignore_case(&value, "urn:btmh:").is_some() {
                        saw_v2 = true;
                    }
                }
                "dn" => link.display_name = Some(percent_decode(raw, true)?),
                "tr" => {
                    let tracker = percent_decode(raw, false)?;
                    if !tracker.is_empty() && !link.trackers.contains(&tracker) {
                        link.trackers.push(tracker);
                    }
                }
                "ws" => {
                    let url = percent_decode(raw, false)?;
                    if !url.is_empty() && !link.web_seeds.contains(&url) {
                        link.web_seeds.push(url);
                    }
                }
                "x.pe" => {
                    let peer = parse_peer(&percent_decode(raw, false)?)?;
                    if !link.peers.contains(&peer) {
                        link.peers.push(peer);
                    }
                }
                "so" => {
                    link.select_only = Some(FileSelection::parse(&percent_decode(raw, false)?)?)
                }
                _ => {}
            }
        }
        link.info_hash = match (info_hash, saw_v2) {
            (Some(h), _) => h,
            (None, true) => return Err(MagnetError::V2Only),
            (None, false) => return Err(MagnetError::MissingInfoHash),
        };
        Ok(link)
    }

    /// Formats the link as a URI that [`MagnetLink::parse`] reads back to an equal value.
    pub fn to_uri(&self) -> String {
        let mut out = format!("magnet:?xt=urn:btih:{}", self.info_hash);
        if let Some(name) = &self.display_name {
            out.push_str("&dn=");
            percent_encode_into(&mut out, name);
        }
        for tracker in &self.trackers {
            out.push_str("&tr=");
            percent_encode_into(&mut out, tracker);
        }
        for url in &self.web_seeds {
            out.push_str("&ws=");
            percent_encode_into(&mut out, url);
        }
        for peer in &self.peers {
            out.push_str("&x.pe=");
            percent_encode_into(&mut out, &peer.to_string());
        }
        if let Some(selection) = &self.select_only {
            out.push_str("&so=");
            out.push_str(&selection.to_string());
        }
        out
    }
}

impl fmt::Display for MagnetLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// 40 hex digits, or 32 characters of RFC 4648 base32 (either case), into an info-hash.
fn parse_btih(s: &str) -> Result<InfoHash, MagnetError> {
    let bad = || MagnetError::BadInfoHash(s.to_owned());
    match s.len() {
        40 => InfoHash::from_hex(s).ok_or_else(bad),
        32 => {
            let upper = s.to_ascii_uppercase();
            let bytes = data_encoding::BASE32
                .decode(upper.as_bytes())
                .map_err(|_| bad())?;
            <[u8; 20]>::try_from(bytes.as_slice())
                .map(InfoHash)
                .map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

fn parse_peer(s: &str) -> Result<PeerHint, MagnetError> {
    let bad = || MagnetError::BadPeer(s.to_owned());
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        if host.contains(':') {
            return Err(bad());
        }
        (host, port)
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(PeerHint {
        host: host.to_owned(),
        port,
    })
}

/// Percent-decodes one query value; `plus_is_space` for free text such as `dn`, where `+` is common.
/// A malformed escape or a value that is not UTF-8 is refused.
fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, MagnetError> {
    let bad = || MagnetError::BadEncoding(s.to_owned());
    let bytes = crate::percent::decode_strict(s, plus_is_space).map_err(|_| bad())?;
    String::from_utf8(bytes).map_err(|_| bad())
}

/// Percent-encodes a value into the link (see [`crate::percent::MAGNET_VALUE`]).
fn percent_encode_into(out: &mut String, s: &str) {
    out.push_str(&crate::percent::encode_str(s, crate::percent::MAGNET_VALUE));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";

    #[test]
    fn parses_a_full_link() {
        let uri = format!(
            "magnet:?xt=urn:btih:{HEX}&dn=Some+Name%20%C3%A9&tr=udp%3A%2F%2Ftracker.example%3A6969\
             &tr=http://t.example/announce&tr=http://t.example/announce&x.pe=127.0.0.1:6881\
             &x.pe=%5B::1%5D:51413&so=0,2,4-6&unknown=whatever\
             &ws=http%3A%2F%2Fmirror.example%2Fpub%2Fmy%2520file.iso&ws=https://m2.example/d/\
             &ws=https://m2.example/d/&ws="
        );
        let link = MagnetLink::parse(&uri).expect("valid link");
        assert_eq!(link.info_hash.to_hex(), HEX);
        assert_eq!(link.display_name.as_deref(), Some("Some Name é"));
        assert_eq!(
            link.trackers,
            vec!["udp://tracker.example:6969", "http://t.example/announce"]
        );
        assert_eq!(
            link.peers,
            vec![
                PeerHint {
                    host: "127.0.0.1".into(),
                    port: 6881
                },
                PeerHint {
                    host: "::1".into(),
                    port: 51413
                },
            ]
        );
        // Percent-decoded once: the URL keeps its own escape (`%20`), duplicates and empties dropped.
        assert_eq!(
            link.web_seeds,
            vec![
                "http://mirror.example/pub/my%20file.iso",
                "https://m2.example/d/"
            ]
        );
        let so = link.select_only.as_ref().expect("so given");
        assert_eq!(so.ranges(), &[(0, 0), (2, 2), (4, 6)]);
        assert!(so.contains(5) && !so.contains(3) && !so.contains(7));
    }

    #[test]
    fn base32_and_hex_name_the_same_hash() {
        // Base32 of the bytes c1 2f e1 c0 6b ba 25 4a 9d c9 f5 19 b3 35 aa 7c 13 67 a8 8a.
        let b32 = "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK";
        let a = MagnetLink::parse(&format!("magnet:?xt=urn:btih:{b32}")).expect("base32");
        let lower = MagnetLink::parse(&format!("magnet:?xt=urn:btih:{}", b32.to_lowercase()))
            .expect("lowercase base32");
        let b =
            MagnetLink::parse(&format!("MAGNET:?xt=urn:btih:{}", HEX.to_uppercase())).expect("hex");
        assert_eq!(a.info_hash, b.info_hash);
        assert_eq!(lower.info_hash, b.info_hash);
    }

    #[test]
    fn bad_links_name_the_problem() {
        let cases = [
            ("http://x", MagnetError::NotMagnet),
            ("magnet:?dn=x", MagnetError::MissingInfoHash),
            ("magnet:?xt=urn:btmh:1220abcd", MagnetError::V2Only),
            (
                "magnet:?xt=urn:btih:abc",
                MagnetError::BadInfoHash("abc".into()),
            ),
            (
                "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88g",
                MagnetError::BadInfoHash("c12fe1c06bba254a9dc9f519b335aa7c1367a88g".into()),
            ),
            (
                "magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKE1",
                MagnetError::BadInfoHash("YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKE1".into()),
            ),
        ];
        for (uri, want) in cases {
            assert_eq!(MagnetLink::parse(uri), Err(want), "{uri}");
        }
        let with = |extra: &str| MagnetLink::parse(&format!("magnet:?xt=urn:btih:{HEX}&{extra}"));
        assert!(matches!(with("dn=%zz"), Err(MagnetError::BadEncoding(_))));
        assert!(matches!(with("dn=%C3"), Err(MagnetError::BadEncoding(_))));
        assert!(matches!(with("ws=%4"), Err(MagnetError::BadEncoding(_))));
        assert!(matches!(with("x.pe=nohost"), Err(MagnetError::BadPeer(_))));
        assert!(matches!(with("x.pe=::1:80"), Err(MagnetError::BadPeer(_))));
        assert!(matches!(with("x.pe=h:0"), Err(MagnetError::BadPeer(_))));
        assert!(matches!(with("so=3-1"), Err(MagnetError::BadSelection(_))));
        assert!(matches!(with("so=1,,2"), Err(MagnetError::BadSelection(_))));
        let other = "d12fe1c06bba254a9dc9f519b335aa7c1367a88a";
        assert_eq!(
            with(&format!("xt=urn:btih:{other}")),
            Err(MagnetError::ConflictingInfoHash)
        );
    }

    #[test]
    fn selection_merges_and_formats() {
        let s = FileSelection::parse("5, 0-2,3,9-9,1").expect("valid");
        assert_eq!(s.ranges(), &[(0, 3), (5, 5), (9, 9)]);
        assert_eq!(s.to_string(), "0-3,5,9");
    }

    fn arb_link() -> impl Strategy<Value = MagnetLink> {
        (
            any::<[u8; 20]>(),
            proptest::option::of("\\PC{0,20}"),
            proptest::collection::vec("[a-z]{1,8}://[a-z.]{1,10}(:[0-9]{1,5})?/[a-z]{0,8}", 0..4),
            proptest::collection::vec(("[a-z0-9.]{1,12}", 1u16..), 0..3),
            proptest::option::of(proptest::collection::vec((0u32..50, 0u32..5), 1..4)),
            // Web seed URLs with the characters that need escaping in a link (`&`, `=`, `%`, `+`,
            // `#`, spaces, non-ASCII).
            proptest::collection::vec("https?://[a-z.]{1,10}/[a-zA-Z0-9 &=%+#?/é.~-]{0,20}", 0..4),
        )
            .prop_map(|(hash, dn, trackers, peers, so, ws)| {
                let mut web_seeds = Vec::new();
                for u in ws {
                    if !web_seeds.contains(&u) {
                        web_seeds.push(u);
                    }
                }
                let mut trackers_dedup = Vec::new();
                for t in trackers {
                    if !trackers_dedup.contains(&t) {
                        trackers_dedup.push(t);
                    }
                }
                let mut peer_hints = Vec::new();
                for (host, port) in peers {
                    let p = PeerHint { host, port };
                    if !peer_hints.contains(&p) {
                        peer_hints.push(p);
                    }
                }
                MagnetLink {
                    info_hash: InfoHash(hash),
                    display_name: dn,
                    trackers: trackers_dedup,
                    web_seeds,
                    peers: peer_hints,
                    select_only: so.map(|r| {
                        FileSelection::from_ranges(r.into_iter().map(|(a, w)| (a, a + w)).collect())
                    }),
                }
            })
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(link in arb_link()) {
            prop_assert_eq!(MagnetLink::parse(&link.to_uri()), Ok(link));
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = MagnetLink::parse(&s);
            let _ = MagnetLink::parse(&format!("magnet:?{s}"));
            let _ = FileSelection::parse(&s);
        }
    }
}

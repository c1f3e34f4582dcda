//! Web seeds (BEP 19, `url-list`): where a torrent's bytes live on a plain HTTP(S) server, and which
//! byte ranges of which files to ask for to get a run of pieces.
//!
//! The sans-IO arithmetic (the HTTP exchange is in [`http`], the engine's use in `engine/webseed.rs`):
//! - [`file_url`]: the URL of one file. A multi-file torrent's URL is a directory holding the torrent's
//!   top directory: `url/name/path/to/file`, each component percent-encoded. A single-file torrent's URL
//!   names the file itself, unless it ends in `/`, which gets the torrent's name appended.
//! - [`piece_run`]: a run of adjacent wanted pieces from a first one, up to a byte budget, so one request
//!   can carry a few MiB instead of one piece.
//! - [`plan`]: the per-file byte ranges of a run of pieces (a piece may straddle files; zero-length
//!   files cover no bytes and never appear; BEP 47 padding files are zeros that are not requested), each
//!   with its place in the run's buffer.
//! - [`classify`]: what a response's status line and headers mean for a range request: `206` with the
//!   exact `Content-Range` asked for is data; a `200` (a server that ignored `Range`) is refused unless
//!   the range was the whole file, so a whole large file is never read into memory; `404`/`410` drop the
//!   seed for that file; `5xx`/`429` back off (honouring `Retry-After` in seconds); `3xx` redirect.

pub mod http;

use std::ops::Range;
use std::time::Duration;

use thiserror::Error;

use crate::metainfo::{FileEntry, Layout};
use crate::tracker::http::percent_encode;

/// Most bytes one web-seed request asks for (a run of pieces; a single larger piece is still one).
pub const DEFAULT_RUN_BYTES: u64 = 4 * 1024 * 1024;

/// Back-off when a server says "try later" without a usable `Retry-After`.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(30);

/// Longest `Retry-After` honoured (a server cannot park a seed for a day).
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The URL of file `file` of a torrent named `name`, for web seed base URL `base`.
///
/// `multi_file` says whether the torrent has a directory (then `file.path` starts with `name`, as
/// [`Layout::files`] gives it). Path components are percent-encoded byte by byte (unreserved
/// characters as they are), so names with spaces, `?`, `#` or non-ASCII letters stay one component.
pub fn file_url(base: &str, name: &str, multi_file: bool, file: &FileEntry) -> String {
    if !multi_file {
        return if base.ends_with('/') {
            format!("{base}{}", percent_encode(name.as_bytes()))
        } else {
            base.to_owned()
        };
    }
    let mut url = base.to_owned();
    if !url.ends_with('/') {
        url.push('/');
    }
    let mut first = true;
    for component in &file.path {
        if !first {
            url.push('/');
        }
        first = false;
        url.push_str(&percent_encode(component.as_bytes()));
    }
    url
}

/// The pieces `first..end` to fetch in one go: `first` itself (if wanted), then each next piece while
/// it is wanted and the run stays within `max_bytes` (a first piece longer than that is still taken).
/// Empty if `first` is not wanted or out of range.
pub fn piece_run(
    layout: &Layout,
    first: u32,
    max_bytes: u64,
    wanted: impl Fn(u32) -> bool,
) -> Range<u32> {
    let Some(len) = layout.piece_len(first) else {
        return first..first;
    };
    if !wanted(first) {
        return first..first;
    }
    let mut bytes = u64::from(len);
    let mut end = first + 1;
    while end < layout.piece_count() && wanted(end) {
        let Some(next) = layout.piece_len(end) else {
            break;
        };
        if bytes + u64::from(next) > max_bytes {
            break;
        }
        bytes += u64::from(next);
        end += 1;
    }
    first..end
}

/// One ranged GET of a run: bytes `range` of file `file_index` go to `buf_offset..` of the run's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRange {
    /// Index into [`Layout::files`].
    pub file_index: usize,
    /// Byte range within that file (never empty).
    pub range: Range<u64>,
    /// Where those bytes start in the buffer holding the whole run.
    pub buf_offset: u64,
}

impl FileRange {
    /// The `Range` header value: `bytes=first-last` (inclusive).
    pub fn header(&self) -> String {
        format!("bytes={}-{}", self.range.start, self.range.end - 1)
    }

    /// Number of bytes.
    pub fn len(&self) -> u64 {
        self.range.end - self.range.start
    }

    /// Whether the range is empty (never, for ranges from [`plan`]).
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

/// The requests that fetch pieces `run` (in order), and the run's length in bytes. Padding files are
/// left out (their bytes are zeros, which a zero-filled buffer already holds). `None` if the run is
/// empty or out of range.
pub fn plan(layout: &Layout, run: Range<u32>) -> Option<(Vec<FileRange>, u64)> {
    if run.is_empty() || run.end > layout.piece_count() {
        return None;
    }
    let start = layout.piece_offset(run.start);
    let end = layout.piece_offset(run.end - 1) + u64::from(layout.piece_len(run.end - 1)?);
    let total = end - start;
    let mut out = Vec::new();
    let mut at = 0;
    for slice in layout.byte_ranges(start, total)? {
        let file = layout.files().get(slice.file_index)?;
        if !file.padding {
            out.push(FileRange {
                file_index: slice.file_index,
                range: slice.offset..slice.offset + slice.length,
                buf_offset: at,
            });
        }
        at += slice.length;
    }
    Some((out, total))
}

/// What a web seed's answer to one ranged GET means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The body is exactly the bytes asked for; read `length` of them.
    Data {
        /// Body length to expect.
        length: u64,
    },
    /// Follow `Location` (the caller bounds the number of hops).
    Redirect(String),
    /// The seed does not have this file: stop asking it for this file.
    FileMissing,
    /// The server is busy or failing: ask again after this long.
    Backoff(Duration),
}

/// A response that makes this seed unusable for this request (the caller disables or drops it).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WebSeedError {
    /// `200` with the whole file instead of the range: refused rather than read into memory.
    #[error("server ignored the Range header (200 instead of 206 for {asked})")]
    RangeIgnored {
        /// The range asked for.
        asked: String,
    },
    /// `206` for other bytes than those asked for.
    #[error("server sent Content-Range {got:?} for {asked}")]
    WrongRange {
        /// The range asked for.
        asked: String,
        /// The `Content-Range` value received (empty if missing).
        got: String,
    },
    /// A redirect without `Location`.
    #[error("redirect {status} without a Location header")]
    NoLocation {
        /// The status code.
        status: u16,
    },
    /// Any other status.
    #[error("unexpected HTTP status {status}")]
    Status {
        /// The status code.
        status: u16,
    },
}

/// Classifies a response to `asked` (a request for part of a file of `file_length` bytes) from its
/// status and headers (names compared without case).
pub fn classify(
    status: u16,
    headers: &[(&str, &[u8])],
    asked: &FileRange,
    file_length: u64,
) -> Result<Verdict, WebSeedError> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).trim().to_owned())
    };
    match status {
        206 => {
            let got = header("content-range").unwrap_or_default();
            let want = format!("bytes {}-{}/", asked.range.start, asked.range.end - 1);
            let total_ok = got
                .strip_prefix(&want)
                .is_some_and(|t| t == "*" || t.parse::<u64>() == Ok(file_length));
            if total_ok {
                Ok(Verdict::Data {
                    length: asked.len(),
                })
            } else {
                Err(WebSeedError::WrongRange {
                    asked: asked.header(),
                    got,
                })
            }
        }
        200 if asked.range.start == 0 && asked.range.end == file_length => Ok(Verdict::Data {
            length: asked.len(),
        }),
        200 => Err(WebSeedError::RangeIgnored {
            asked: asked.header(),
        }),
        301 | 302 | 303 | 307 | 308 => header("location")
            .filter(|l| !l.is_empty())
            .map(Verdict::Redirect)
            .ok_or(WebSeedError::NoLocation { status }),
        404 | 410 => Ok(Verdict::FileMissing),
        429 | 500..=599 => {
            let wait = header("retry-after")
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(DEFAULT_BACKOFF, |s| Duration::from_secs(s).min(MAX_BACKOFF));
            Ok(Verdict::Backoff(wait))
        }
        _ => Err(WebSeedError::Status { status }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout(lengths: &[u64], piece: u32) -> Layout {
        let files = lengths
            .iter()
            .enumerate()
            .map(|(i, &l)| (vec!["t".to_owned(), format!("f{i}")], l, false))
            .collect::<Vec<_>>();
        layout_of(files, piece)
    }

    fn layout_of(files: Vec<(Vec<String>, u64, bool)>, piece: u32) -> Layout {
        Layout::new(files, piece).unwrap()
    }

    #[test]
    fn urls_of_single_and_multi_file_torrents() {
        let single = FileEntry {
            path: vec!["My File.iso".into()],
            length: 10,
            offset: 0,
            padding: false,
        };
        assert_eq!(
            file_url("http://s/dl/", "My File.iso", false, &single),
            "http://s/dl/My%20File.iso"
        );
        assert_eq!(
            file_url("http://s/dl/x.iso", "My File.iso", false, &single),
            "http://s/dl/x.iso"
        );
        let multi = FileEntry {
            path: vec!["top dir".into(), "sub".into(), "a?b#c é.txt".into()],
            length: 10,
            offset: 0,
            padding: false,
        };
        let want = "https://s/seed/top%20dir/sub/a%3Fb%23c%20%C3%A9.txt";
        assert_eq!(file_url("https://s/seed", "top dir", true, &multi), want);
        assert_eq!(file_url("https://s/seed/", "top dir", true, &multi), want);
    }

    #[test]
    fn a_piece_across_files_and_empty_files() {
        // Files: 10, 0, 5, 0, 20 bytes; pieces of 8.
        let l = layout(&[10, 0, 5, 0, 20], 8);
        let (reqs, total) = plan(&l, 1..2).unwrap();
        assert_eq!(total, 8);
        assert_eq!(
            reqs,
            vec![
                FileRange {
                    file_index: 0,
                    range: 8..10,
                    buf_offset: 0
                },
                FileRange {
                    file_index: 2,
                    range: 0..5,
                    buf_offset: 2
                },
                FileRange {
                    file_index: 4,
                    range: 0..1,
                    buf_offset: 7
                },
            ]
        );
        assert_eq!(reqs[1].header(), "bytes=0-4");
        // The last, short piece.
        let (reqs, total) = plan(&l, 4..5).unwrap();
        assert_eq!(total, 3);
        assert_eq!(
            reqs,
            vec![FileRange {
                file_index: 4,
                range: 17..20,
                buf_offset: 0
            }]
        );
        assert_eq!(plan(&l, 4..6), None);
        assert_eq!(plan(&l, 2..2), None);
    }

    #[test]
    fn padding_files_are_not_requested() {
        let files = vec![
            (vec!["t".into(), "a".into()], 5, false),
            (vec!["t".into(), ".pad".into(), "3".into()], 3, true),
            (vec!["t".into(), "b".into()], 8, false),
        ];
        let l = layout_of(files, 8);
        let (reqs, total) = plan(&l, 0..2).unwrap();
        assert_eq!(total, 16);
        assert_eq!(
            reqs,
            vec![
                FileRange {
                    file_index: 0,
                    range: 0..5,
                    buf_offset: 0
                },
                FileRange {
                    file_index: 2,
                    range: 0..8,
                    buf_offset: 8
                },
            ]
        );
    }

    #[test]
    fn runs_stop_at_unwanted_pieces_and_the_budget() {
        let l = layout(&[100], 10);
        assert_eq!(piece_run(&l, 2, 35, |_| true), 2..5);
        assert_eq!(piece_run(&l, 2, 1000, |p| p != 6), 2..6);
        assert_eq!(
            piece_run(&l, 2, 5, |_| true),
            2..3,
            "one piece even over the budget"
        );
        assert_eq!(piece_run(&l, 2, 100, |p| p != 2), 2..2);
        assert_eq!(piece_run(&l, 10, 100, |_| true), 10..10);
        assert_eq!(piece_run(&l, 8, 1000, |_| true), 8..10);
    }

    fn asked(range: Range<u64>) -> FileRange {
        FileRange {
            file_index: 0,
            range,
            buf_offset: 0,
        }
    }

    #[test]
    fn responses_are_classified() {
        let r = asked(100..200);
        let cr = |v: &'static str| vec![("Content-Range", v.as_bytes())];
        assert_eq!(
            classify(206, &cr("bytes 100-199/1000"), &r, 1000),
            Ok(Verdict::Data { length: 100 })
        );
        assert_eq!(
            classify(206, &cr("bytes 100-199/*"), &r, 1000),
            Ok(Verdict::Data { length: 100 })
        );
        assert!(matches!(
            classify(206, &cr("bytes 0-99/1000"), &r, 1000),
            Err(WebSeedError::WrongRange { .. })
        ));
        assert!(matches!(
            classify(206, &cr("bytes 100-199/999"), &r, 1000),
            Err(WebSeedError::WrongRange { .. })
        ));
        assert!(matches!(
            classify(206, &[], &r, 1000),
            Err(WebSeedError::WrongRange { .. })
        ));
        let err = classify(200, &[], &r, 1000).unwrap_err();
        assert!(
            err.to_string().contains("ignored the Range header"),
            "{err}"
        );
        // A 200 for a range that is the whole file is just the file.
        assert_eq!(
            classify(200, &[], &asked(0..1000), 1000),
            Ok(Verdict::Data { length: 1000 })
        );
        assert_eq!(classify(404, &[], &r, 1000), Ok(Verdict::FileMissing));
        assert_eq!(
            classify(503, &[("retry-after", b" 7 ")], &r, 1000),
            Ok(Verdict::Backoff(Duration::from_secs(7)))
        );
        assert_eq!(
            classify(
                503,
                &[("Retry-After", b"Wed, 21 Oct 2015 07:28:00 GMT")],
                &r,
                1000
            ),
            Ok(Verdict::Backoff(DEFAULT_BACKOFF))
        );
        assert_eq!(
            classify(500, &[("Retry-After", b"999999")], &r, 1000),
            Ok(Verdict::Backoff(MAX_BACKOFF))
        );
        assert_eq!(
            classify(302, &[("Location", b"http://mirror/x")], &r, 1000),
            Ok(Verdict::Redirect("http://mirror/x".into()))
        );
        assert_eq!(
            classify(301, &[], &r, 1000),
            Err(WebSeedError::NoLocation { status: 301 })
        );
        assert_eq!(
            classify(403, &[], &r, 1000),
            Err(WebSeedError::Status { status: 403 })
        );
    }

    proptest! {
        /// Any run's requests, laid into its buffer, reproduce exactly the run's bytes of the
        /// concatenated content: no gaps, no overlaps, no empty or out-of-file ranges.
        #[test]
        fn plans_cover_runs_exactly(
            lengths in proptest::collection::vec(prop_oneof![Just(0u64), 1u64..50], 1..8),
            piece in 1u32..40,
            first_frac in 0.0f64..1.0,
            budget in 1u64..200,
        ) {
            prop_assume!(lengths.iter().sum::<u64>() > 0);
            let l = layout(&lengths, piece);
            let content: Vec<u8> = (0..l.total_length()).map(|i| (i * 7 % 251) as u8).collect();
            let first = ((f64::from(l.piece_count()) * first_frac) as u32).min(l.piece_count() - 1);
            let run = piece_run(&l, first, budget, |_| true);
            prop_assert!(!run.is_empty());
            let (reqs, total) = plan(&l, run.clone()).unwrap();
            let start = l.piece_offset(run.start);
            let last = run.end - 1;
            let run_end = l.piece_offset(last) + u64::from(l.piece_len(last).unwrap());
            prop_assert_eq!(start + total, run_end);
            prop_assert!(run.len() == 1 || total <= budget);
            let mut buf = vec![0u8; total as usize];
            let mut covered = 0;
            for r in &reqs {
                let f = &l.files()[r.file_index];
                prop_assert!(!r.is_empty() && r.range.end <= f.length);
                prop_assert_eq!(r.buf_offset, covered);
                let src = &content[(f.offset + r.range.start) as usize..(f.offset + r.range.end) as usize];
                buf[r.buf_offset as usize..(r.buf_offset + r.len()) as usize].copy_from_slice(src);
                covered += r.len();
            }
            prop_assert_eq!(covered, total);
            prop_assert_eq!(&buf[..], &content[start as usize..(start + total) as usize]);
        }

        /// Classification never panics on arbitrary statuses and header bytes.
        #[test]
        fn classify_never_panics(status in 0u16..1000, value in proptest::collection::vec(any::<u8>(), 0..40), a in 0u64..100, n in 1u64..100) {
            let r = asked(a..a + n);
            let _ = classify(status, &[("content-range", &value), ("retry-after", &value), ("location", &value)], &r, a + n);
        }
    }
}

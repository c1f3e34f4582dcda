//! The HTTP tracker protocol (BEP 3, compact peers BEP 23, `peers6` BEP 7, scrape BEP 48), sans-IO.
//!
//! This module builds the request URLs (announce and scrape) and parses the bencoded replies. Moving the
//! bytes over a TCP connection is the job of [`super::http_client::Exchange`], and opening that connection
//! is the driver's.
//!
//! `https://` trackers use the same requests and replies: a [`TrackerUrl`] says whether it needs TLS
//! ([`TrackerUrl::tls`]), and the driver wraps the connection (the core stays free of TLS, whose
//! handshake needs randomness and the clock). A redirect may go from `http://` to `https://`, never back.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use thiserror::Error;

use super::{AnnounceEvent, AnnounceParams, AnnounceResponse, ScrapeStats};
use crate::bencode::{decode_prefix, DecodeError, DecodeErrorKind, Value};
use crate::types::InfoHash;

/// The TCP port an `http://` URL means when it names none.
pub const DEFAULT_HTTP_PORT: u16 = 80;

/// The TCP port an `https://` URL means when it names none.
pub const DEFAULT_HTTPS_PORT: u16 = 443;

/// Why a tracker URL (or a redirect's `Location`) could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    /// A redirect from an `https://` URL to a plain `http://` one, which would drop TLS.
    #[error("refusing a redirect from https to plain http: {url}")]
    TlsDowngrade {
        /// The redirect's target as given.
        url: String,
    },
    /// The URL uses a scheme other than `http` or `https` (e.g. `udp://`, which the UDP tracker handles).
    #[error("not an http(s) tracker URL (scheme {scheme:?}): {url}")]
    UnsupportedScheme {
        /// The scheme found before `://`, or empty if there is none.
        scheme: String,
        /// The URL as given.
        url: String,
    },
    /// The host part is empty or holds characters a host name cannot have.
    #[error("invalid host {host:?} in tracker URL {url}")]
    InvalidHost {
        /// The host text as found.
        host: String,
        /// The URL as given.
        url: String,
    },
    /// The port is not a number in 1..=65535.
    #[error("invalid port {port:?} in tracker URL {url}")]
    InvalidPort {
        /// The port text as found.
        port: String,
        /// The URL as given.
        url: String,
    },
    /// The URL carries `user:password@` credentials, which we do not send.
    #[error("credentials in tracker URLs are not supported: {url}")]
    Credentials {
        /// The URL as given.
        url: String,
    },
    /// BEP 48 scrape needs the last path segment to start with `announce`; this one does not.
    #[error("tracker does not support scrape: last path segment of {url} does not start with \"announce\"")]
    ScrapeUnsupported {
        /// The announce URL as given.
        url: String,
    },
    /// A scrape request must name at least one torrent.
    #[error("a scrape request needs at least one info-hash")]
    NoInfoHash,
}

/// A parsed `http[s]://host[:port]/path?query` tracker URL: where to connect, whether over TLS, and what
/// to ask for.
///
/// The request target (path and query) is kept in the exact form that goes on the request line: any byte
/// that is not visible ASCII is percent-encoded when parsing, so it can never break the HTTP framing. The
/// fragment (`#...`) is dropped, as HTTP clients never send it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrackerUrl {
    /// Host name or IP address text; an IPv6 literal is stored without its brackets.
    host: String,
    /// TCP port, [`DEFAULT_HTTP_PORT`] or [`DEFAULT_HTTPS_PORT`] when the URL names none.
    port: u16,
    /// Whether the URL is `https://`: the connection must be wrapped in TLS for [`TrackerUrl::host`].
    tls: bool,
    /// Path and query, always starting with `/`.
    target: String,
}

impl TrackerUrl {
    /// Parses an absolute `http://` or `https://` URL; other schemes are errors (see [`UrlError`]).
    pub fn parse(url: &str) -> Result<TrackerUrl, UrlError> {
        let (scheme, rest) = match url.find("://") {
            Some(i) => (&url[..i], &url[i + 3..]),
            None => {
                return Err(UrlError::UnsupportedScheme {
                    scheme: String::new(),
                    url: url.to_owned(),
                })
            }
        };
        let tls = scheme.eq_ignore_ascii_case("https");
        if !tls && !scheme.eq_ignore_ascii_case("http") {
            return Err(UrlError::UnsupportedScheme {
                scheme: scheme.to_owned(),
                url: url.to_owned(),
            });
        }
        // Drop the fragment; it never goes on the wire.
        let rest = rest.split('#').next().unwrap_or("");
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(UrlError::Credentials {
                url: url.to_owned(),
            });
        }
        let default_port = if tls {
            DEFAULT_HTTPS_PORT
        } else {
            DEFAULT_HTTP_PORT
        };
        let (host, port) = parse_authority(authority, url, default_port)?;
        let target = normalize_target(target);
        Ok(TrackerUrl {
            host,
            port,
            tls,
            target,
        })
    }

    /// The host to resolve and connect to (an IPv6 literal without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether this is an `https://` URL: the connection needs TLS, with [`TrackerUrl::host`] as the
    /// server name its certificate must match.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// `"https"` or `"http"`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// The request target (path and query) for the HTTP request line.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The value of the `Host` header: brackets around an IPv6 literal, `:port` unless it is the scheme's
    /// default (80 or 443).
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls {
            DEFAULT_HTTPS_PORT
        } else {
            DEFAULT_HTTP_PORT
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The path part of the target (before any `?`).
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("/")
    }

    /// Resolves a redirect's `Location` header against this URL: an absolute `http://` or `https://` URL,
    /// a scheme-relative `//host/path` (same scheme as this URL), an absolute path `/path`, a query `?q`,
    /// or a path relative to this URL's directory. A redirect from `https://` to `http://` is refused
    /// ([`UrlError::TlsDowngrade`]): it would send the request in the clear.
    pub fn join(&self, location: &str) -> Result<TrackerUrl, UrlError> {
        let location = location.trim();
        let absolute = if location.starts_with("//") {
            Some(TrackerUrl::parse(&format!("{}:{location}", self.scheme()))?)
        } else {
            // A scheme (`name:` before any `/`, `?` or `#`) makes the location absolute.
            match location.find([':', '/', '?', '#']) {
                Some(i) if location[i..].starts_with(':') => Some(TrackerUrl::parse(location)?),
                _ => None,
            }
        };
        if let Some(next) = absolute {
            if self.tls && !next.tls {
                return Err(UrlError::TlsDowngrade {
                    url: location.to_owned(),
                });
            }
            return Ok(next);
        }
        let location = location.split('#').next().unwrap_or("");
        let target = if location.starts_with('/') {
            location.to_owned()
        } else if location.starts_with('?') {
            format!("{}{location}", self.path())
        } else {
            let path = self.path();
            let dir = match path.rfind('/') {
                Some(i) => &path[..=i],
                None => "/",
            };
            format!("{dir}{location}")
        };
        Ok(TrackerUrl {
            host: self.host.clone(),
            port: self.port,
            tls: self.tls,
            target: normalize_target(&target),
        })
    }

    /// Appends `name=value` to the query, with `?` or `&` as needed; `value` must already be encoded.
    fn push_param(&mut self, name: &str, value: &str) {
        let sep = match self.target.find('?') {
            None => Some('?'),
            Some(i) if i + 1 == self.target.len() || self.target.ends_with('&') => None,
            Some(_) => Some('&'),
        };
        if let Some(sep) = sep {
            self.target.push(sep);
        }
        self.target.push_str(name);
        self.target.push('=');
        self.target.push_str(value);
    }
}

impl fmt::Display for TrackerUrl {
    /// The URL in `http[s]://host[:port]/target` form, for logs and errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme(),
            self.host_header(),
            self.target
        )
    }
}

/// Splits `host[:port]` or `[v6]:port`, validating both parts.
fn parse_authority(
    authority: &str,
    url: &str,
    default_port: u16,
) -> Result<(String, u16), UrlError> {
    let invalid_host = |host: &str| UrlError::InvalidHost {
        host: host.to_owned(),
        url: url.to_owned(),
    };
    let (host, port_text) = if let Some(inner) = authority.strip_prefix('[') {
        let close = inner.find(']').ok_or_else(|| invalid_host(authority))?;
        let literal = &inner[..close];
        if literal.parse::<Ipv6Addr>().is_err() {
            return Err(invalid_host(literal));
        }
        let after = &inner[close + 1..];
        let port_text = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(invalid_host(authority)),
        };
        (literal.to_ascii_lowercase(), port_text)
    } else {
        let (host, port_text) = match authority.rfind(':') {
            Some(i) => (&authority[..i], Some(&authority[i + 1..])),
            None => (authority, None),
        };
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err(invalid_host(host));
        }
        (host.to_ascii_lowercase(), port_text)
    };
    let port = match port_text {
        None | Some("") => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(UrlError::InvalidPort {
                    port: p.to_owned(),
                    url: url.to_owned(),
                })
            }
        },
    };
    Ok((host, port))
}

/// Makes a path+query safe for the request line: `/` if empty, a leading `/` before a bare query, and
/// every byte that is not visible ASCII percent-encoded (existing `%XX` escapes are kept as they are).
fn normalize_target(target: &str) -> String {
    let mut out = String::with_capacity(target.len() + 1);
    if !target.starts_with('/') {
        out.push('/');
    }
    out.push_str(&crate::percent::encode(
        target.as_bytes(),
        crate::percent::REQUEST_TARGET,
    ));
    out
}

/// Percent-encodes arbitrary bytes for a query value: unreserved characters (`A-Za-z0-9-._~`) as they are,
/// every other byte as `%XX`. Binary-safe, as the raw 20-byte info-hash and peer id need.
pub fn percent_encode(bytes: &[u8]) -> String {
    crate::percent::encode(bytes, crate::percent::QUERY_VALUE)
}

/// The `event` query value for an announce, or `None` for a regular announce (which sends no `event`).
fn event_name(event: AnnounceEvent) -> Option<&'static str> {
    match event {
        AnnounceEvent::None => None,
        AnnounceEvent::Started => Some("started"),
        AnnounceEvent::Completed => Some("completed"),
        AnnounceEvent::Stopped => Some("stopped"),
    }
}

/// Builds the announce URL (BEP 3): the tracker URL with `info_hash`, `peer_id`, `port`, `uploaded`,
/// `downloaded`, `left`, `compact=1`, `no_peer_id=1`, `event` (unless a regular announce), `numwant`
/// (when set), `key` (8 hex digits) and `trackerid` (when a previous reply gave one) appended to any
/// query it already has.
pub fn announce_url(
    tracker: &str,
    params: &AnnounceParams,
    tracker_id: Option<&[u8]>,
) -> Result<TrackerUrl, UrlError> {
    let mut url = TrackerUrl::parse(tracker)?;
    url.push_param("info_hash", &percent_encode(params.info_hash.as_bytes()));
    url.push_param("peer_id", &percent_encode(&params.peer_id.0));
    url.push_param("port", &params.port.to_string());
    url.push_param("uploaded", &params.uploaded.to_string());
    url.push_param("downloaded", &params.downloaded.to_string());
    url.push_param("left", &params.left.to_string());
    url.push_param("compact", "1");
    // For trackers that ignore `compact`: their dictionary peers then leave out the 20-byte ids we
    // do not use, which keeps big replies well under the body cap.
    url.push_param("no_peer_id", "1");
    if let Some(event) = event_name(params.event) {
        url.push_param("event", event);
    }
    if let Some(n) = params.num_want {
        url.push_param("numwant", &n.to_string());
    }
    url.push_param("key", &format!("{:08x}", params.key));
    if let Some(id) = tracker_id {
        url.push_param("trackerid", &percent_encode(id));
    }
    Ok(url)
}

/// Builds the scrape URL by the BEP 48 convention: the last path segment of the announce URL must start with
/// `announce`, which becomes `scrape` (`/announce.php` gives `/scrape.php`); the query is kept and one
/// `info_hash` parameter is appended per torrent. Any other announce URL means the tracker has no scrape.
pub fn scrape_url(tracker: &str, info_hashes: &[InfoHash]) -> Result<TrackerUrl, UrlError> {
    if info_hashes.is_empty() {
        return Err(UrlError::NoInfoHash);
    }
    let mut url = TrackerUrl::parse(tracker)?;
    let path_len = url.path().len();
    let segment_start = url.target[..path_len].rfind('/').map_or(0, |i| i + 1);
    let segment = &url.target[segment_start..path_len];
    let Some(suffix) = segment.strip_prefix("announce") else {
        return Err(UrlError::ScrapeUnsupported {
            url: tracker.to_owned(),
        });
    };
    let new_target = format!(
        "{}scrape{suffix}{}",
        &url.target[..segment_start],
        &url.target[path_len..]
    );
    url.target = new_target;
    for hash in info_hashes {
        url.push_param("info_hash", &percent_encode(hash.as_bytes()));
    }
    Ok(url)
}

/// The announce interval used when a reply has no `interval`, or a zero or negative one: 30 minutes, the
/// value most trackers use. (A missing interval must not turn into announcing in a tight loop.)
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// Why a tracker's HTTP reply body could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResponseError {
    /// The tracker answered with `failure reason`: it refused the request and says why.
    #[error("tracker refused the request: {0}")]
    Failure(String),
    /// The body is not valid bencode.
    #[error("tracker reply is not valid bencode: {0}")]
    Bencode(#[from] DecodeError),
    /// The body is valid bencode but not a dictionary.
    #[error("tracker reply is a {found}, expected a dictionary")]
    NotADict {
        /// What the top-level value is.
        found: &'static str,
    },
    /// A field is present but unusable (wrong type, out of range, bad length), or a required one is missing.
    #[error("tracker reply field {field:?} at byte {offset}: {problem}")]
    BadField {
        /// The field's key (for scrape entries, `files/<hex info-hash>/...`).
        field: String,
        /// Byte offset of the value in the body (of the enclosing dictionary if the field is missing).
        offset: usize,
        /// What is wrong with it.
        problem: String,
    },
}

/// Decodes a reply body into its top-level dictionary. Trailing ASCII whitespace after the value is allowed
/// (some trackers end their reply with a newline); anything else after it is an error.
fn decode_reply(body: &[u8]) -> Result<Value<'_>, ResponseError> {
    let (root, used) = decode_prefix(body)?;
    let rest = body.get(used..).unwrap_or(&[]);
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(ResponseError::Bencode(DecodeError {
            offset: used,
            kind: DecodeErrorKind::TrailingBytes,
        }));
    }
    if root.as_dict().is_none() {
        return Err(ResponseError::NotADict {
            found: root.type_name(),
        });
    }
    if let Some(reason) = root.get(b"failure reason") {
        let text = reason
            .as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| format!("(a {} instead of a message)", reason.type_name()));
        return Err(ResponseError::Failure(text));
    }
    Ok(root)
}

/// A field error for `value` under `field`.
fn bad(field: &str, value: &Value<'_>, problem: impl Into<String>) -> ResponseError {
    ResponseError::BadField {
        field: field.to_owned(),
        offset: value.offset(),
        problem: problem.into(),
    }
}

/// An optional integer field: `None` if absent, an error if it is not an integer.
fn int_field(dict: &Value<'_>, field: &str) -> Result<Option<i64>, ResponseError> {
    match dict.get(field.as_bytes()) {
        None => Ok(None),
        Some(v) => v.as_int().map(Some).ok_or_else(|| {
            bad(
                field,
                v,
                format!("expected an integer, found a {}", v.type_name()),
            )
        }),
    }
}

/// An optional count field (`complete`, `incomplete`, ...): must fit in 0..=u32::MAX when present.
fn count_field(dict: &Value<'_>, field: &str, path: &str) -> Result<Option<u32>, ResponseError> {
    let Some(n) = int_field(dict, field)? else {
        return Ok(None);
    };
    u32::try_from(n).map(Some).map_err(|_| {
        let v = dict.get(field.as_bytes()).unwrap_or(dict);
        bad(
            &format!("{path}{field}"),
            v,
            format!("count {n} is out of range"),
        )
    })
}

/// A positive number of seconds as a duration; zero or negative means "not given".
fn seconds(n: Option<i64>) -> Option<Duration> {
    n.and_then(|n| u64::try_from(n).ok())
        .filter(|&n| n > 0)
        .map(Duration::from_secs)
}

/// Appends the peers of a compact string: `stride` bytes each, the address then a big-endian port (BEP 23
/// with 6-byte IPv4 entries, BEP 7 with 18-byte IPv6 entries). Entries with port 0 are skipped. A tail
/// shorter than one entry is ignored (the whole entries before it are good) and its length returned.
fn compact_peers(bytes: &[u8], stride: usize, out: &mut Vec<SocketAddr>) -> usize {
    let entries = bytes.chunks_exact(stride);
    let stray = entries.remainder().len();
    for entry in entries {
        let (addr, port) = entry.split_at(stride - 2);
        let Ok(port) = <[u8; 2]>::try_from(port).map(u16::from_be_bytes) else {
            continue;
        };
        let ip = if let Ok(v4) = <[u8; 4]>::try_from(addr) {
            IpAddr::from(v4)
        } else if let Ok(v6) = <[u8; 16]>::try_from(addr) {
            IpAddr::from(v6)
        } else {
            continue;
        };
        if port != 0 {
            out.push(SocketAddr::new(ip, port));
        }
    }
    stray
}

/// Appends the peers of a BEP 3 dictionary list. Entries that cannot be used are skipped, not fatal: an
/// `ip` that is a DNS name (the core does no resolving) or not text, a missing or out-of-range `port`, or an
/// entry that is not a dictionary. `peer id` is optional and not needed.
fn dict_peers(list: &[Value<'_>], out: &mut Vec<SocketAddr>) {
    for entry in list {
        let ip = entry
            .get(b"ip")
            .and_then(Value::as_str)
            .and_then(|s| s.trim().parse::<IpAddr>().ok());
        let port = entry
            .get(b"port")
            .and_then(Value::as_int)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0);
        if let (Some(ip), Some(port)) = (ip, port) {
            out.push(SocketAddr::new(ip, port));
        }
    }
}

/// Parses an announce reply body (BEP 3 with BEP 23 compact `peers` and BEP 7 `peers6`).
///
/// `failure reason` becomes [`ResponseError::Failure`]. `interval` defaults to [`DEFAULT_INTERVAL`] when
/// missing or not positive; `min interval` is kept only when positive. Peers come from `peers` (compact
/// string or list of dictionaries) then `peers6`, in the tracker's order, with duplicates removed. A
/// compact list whose length is not a multiple of its entry size keeps its whole entries and counts the
/// tail in [`AnnounceResponse::stray_bytes`] (one stray byte must not cost every good peer).
pub fn parse_announce_response(body: &[u8]) -> Result<AnnounceResponse, ResponseError> {
    let root = decode_reply(body)?;
    let mut peers = Vec::new();
    let mut stray_bytes = 0;
    if let Some(v) = root.get(b"peers") {
        match (v.as_bytes(), v.as_list()) {
            (Some(bytes), _) => stray_bytes += compact_peers(bytes, 6, &mut peers),
            (_, Some(list)) => dict_peers(list, &mut peers),
            _ => {
                return Err(bad(
                    "peers",
                    v,
                    format!("expected a string or a list, found a {}", v.type_name()),
                ))
            }
        }
    }
    if let Some(v) = root.get(b"peers6") {
        let bytes = v.as_bytes().ok_or_else(|| {
            bad(
                "peers6",
                v,
                format!("expected a string, found a {}", v.type_name()),
            )
        })?;
        stray_bytes += compact_peers(bytes, 18, &mut peers);
    }
    let mut seen = HashSet::with_capacity(peers.len());
    peers.retain(|p| seen.insert(*p));

    let text = |field: &str| -> Result<Option<Vec<u8>>, ResponseError> {
        match root.get(field.as_bytes()) {
            None => Ok(None),
            Some(v) => v.as_bytes().map(|b| Some(b.to_vec())).ok_or_else(|| {
                bad(
                    field,
                    v,
                    format!("expected a string, found a {}", v.type_name()),
                )
            }),
        }
    };
    let warning = text("warning message")?.map(|b| String::from_utf8_lossy(&b).into_owned());
    let tracker_id = text("tracker id")?.filter(|id| !id.is_empty());
    Ok(AnnounceResponse {
        interval: seconds(int_field(&root, "interval")?).unwrap_or(DEFAULT_INTERVAL),
        min_interval: seconds(int_field(&root, "min interval")?),
        peers,
        seeders: count_field(&root, "complete", "")?,
        leechers: count_field(&root, "incomplete", "")?,
        tracker_id,
        warning,
        stray_bytes,
    })
}

/// Parses a scrape reply body (BEP 48): the `files` dictionary, keyed by raw 20-byte info-hash, each with
/// `complete`, `downloaded` and `incomplete` (a missing count reads as 0). Returns the entries in the
/// tracker's order. `failure reason` becomes [`ResponseError::Failure`].
pub fn parse_scrape_response(body: &[u8]) -> Result<Vec<(InfoHash, ScrapeStats)>, ResponseError> {
    let root = decode_reply(body)?;
    let Some(files) = root.get(b"files") else {
        return Err(bad("files", &root, "missing"));
    };
    let entries = files.as_dict().ok_or_else(|| {
        bad(
            "files",
            files,
            format!("expected a dictionary, found a {}", files.type_name()),
        )
    })?;
    let mut out = Vec::with_capacity(entries.len());
    for (key, stats) in entries {
        let Ok(hash) = <[u8; 20]>::try_from(*key) else {
            return Err(bad(
                &format!("files/{}", String::from_utf8_lossy(key)),
                stats,
                format!(
                    "key is {} bytes long, expected a 20-byte info-hash",
                    key.len()
                ),
            ));
        };
        let hash = InfoHash(hash);
        let path = format!("files/{hash}/");
        if stats.as_dict().is_none() {
            return Err(bad(
                &path,
                stats,
                format!("expected a dictionary, found a {}", stats.type_name()),
            ));
        }
        out.push((
            hash,
            ScrapeStats {
                seeders: count_field(stats, "complete", &path)?.unwrap_or(0),
                completed: count_field(stats, "downloaded", &path)?.unwrap_or(0),
                leechers: count_field(stats, "incomplete", &path)?.unwrap_or(0),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::OwnedValue;
    use crate::types::PeerId;
    use proptest::prelude::*;

    fn params(event: AnnounceEvent) -> AnnounceParams {
        AnnounceParams {
            info_hash: InfoHash([0xab; 20]),
            peer_id: PeerId(*b"-HB0100-abcdefghijkl"),
            port: 6881,
            uploaded: 10,
            downloaded: 20,
            left: 30,
            event,
            num_want: Some(50),
            key: 0x00c0_ffee,
        }
    }

    #[test]
    fn percent_encoding_of_every_byte_value() {
        for b in 0..=255u8 {
            let encoded = percent_encode(&[b]);
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                assert_eq!(encoded, char::from(b).to_string(), "byte {b:#04x}");
            } else {
                assert_eq!(encoded, format!("%{b:02X}"), "byte {b:#04x}");
            }
        }
        let all: Vec<u8> = (0..=255).collect();
        let encoded = percent_encode(&all);
        // Decoding gives back every byte, in order.
        let mut decoded = Vec::new();
        let mut it = encoded.bytes();
        while let Some(c) = it.next() {
            if c == b'%' {
                let hex: String = [it.next(), it.next()]
                    .iter()
                    .map(|b| char::from(b.unwrap_or(b'!')))
                    .collect();
                decoded.push(u8::from_str_radix(&hex, 16).unwrap_or_default());
            } else {
                decoded.push(c);
            }
        }
        assert_eq!(decoded, all);
    }

    #[test]
    fn parses_host_port_and_target() {
        let u = TrackerUrl::parse("http://Tracker.Example.org:6969/announce").unwrap();
        assert_eq!(
            (u.host(), u.port(), u.target()),
            ("tracker.example.org", 6969, "/announce")
        );
        assert_eq!(u.host_header(), "tracker.example.org:6969");
        let u = TrackerUrl::parse("HTTP://example.com").unwrap();
        assert_eq!((u.host(), u.port(), u.target()), ("example.com", 80, "/"));
        assert_eq!(u.host_header(), "example.com");
        let u = TrackerUrl::parse("http://example.com?x=1#frag").unwrap();
        assert_eq!(u.target(), "/?x=1");
        let u = TrackerUrl::parse("http://example.com:/a b\u{e9}").unwrap();
        assert_eq!((u.port(), u.target()), (80, "/a%20b%C3%A9"));
    }

    #[test]
    fn parses_ipv6_literals() {
        let u = TrackerUrl::parse("http://[::1]:8080/announce").unwrap();
        assert_eq!((u.host(), u.port()), ("::1", 8080));
        assert_eq!(u.host_header(), "[::1]:8080");
        assert_eq!(u.to_string(), "http://[::1]:8080/announce");
        let u = TrackerUrl::parse("http://[2001:DB8::5]/a").unwrap();
        assert_eq!(
            (u.host(), u.port(), u.host_header().as_str()),
            ("2001:db8::5", 80, "[2001:db8::5]")
        );
        assert!(matches!(
            TrackerUrl::parse("http://[::1/a"),
            Err(UrlError::InvalidHost { .. })
        ));
        assert!(matches!(
            TrackerUrl::parse("http://[zz::1]:80/a"),
            Err(UrlError::InvalidHost { .. })
        ));
        assert!(matches!(
            TrackerUrl::parse("http://[::1]x/a"),
            Err(UrlError::InvalidHost { .. })
        ));
    }

    #[test]
    fn refuses_other_schemes_and_bad_parts() {
        let err = TrackerUrl::parse("ftp://example.com/announce").unwrap_err();
        assert!(
            err.to_string().contains("not an http(s) tracker URL"),
            "{err}"
        );
        assert!(matches!(
            TrackerUrl::parse("udp://example.com:80/announce"),
            Err(UrlError::UnsupportedScheme { scheme, .. }) if scheme == "udp"
        ));
        assert!(matches!(
            TrackerUrl::parse("example.com/announce"),
            Err(UrlError::UnsupportedScheme { .. })
        ));
        for bad in ["http:///announce", "http://exa mple.com/", "http://a\r\nb/"] {
            assert!(
                matches!(TrackerUrl::parse(bad), Err(UrlError::InvalidHost { .. })),
                "{bad:?}"
            );
        }
        for bad in [
            "http://e.com:0/",
            "http://e.com:65536/",
            "http://e.com:+80/",
            "http://e.com:8x/",
        ] {
            assert!(
                matches!(TrackerUrl::parse(bad), Err(UrlError::InvalidPort { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            TrackerUrl::parse("http://u:p@e.com/"),
            Err(UrlError::Credentials { .. })
        ));
    }

    #[test]
    fn announce_url_has_every_parameter() {
        let url = announce_url(
            "http://t.example:6969/announce",
            &params(AnnounceEvent::Started),
            None,
        )
        .unwrap();
        let ih = "%AB".repeat(20);
        assert_eq!(
            url.target(),
            format!(
                "/announce?info_hash={ih}&peer_id=-HB0100-abcdefghijkl&port=6881&uploaded=10\
                 &downloaded=20&left=30&compact=1&no_peer_id=1&event=started&numwant=50&key=00c0ffee"
            )
        );
        let mut p = params(AnnounceEvent::None);
        p.num_want = None;
        let url = announce_url("http://t.example/announce", &p, Some(b"id 1")).unwrap();
        assert!(!url.target().contains("event="));
        assert!(!url.target().contains("numwant="));
        assert!(url.target().ends_with("&key=00c0ffee&trackerid=id%201"));
        for (event, name) in [
            (AnnounceEvent::Completed, "&event=completed&"),
            (AnnounceEvent::Stopped, "&event=stopped&"),
        ] {
            let url = announce_url("http://t/announce", &params(event), None).unwrap();
            assert!(url.target().contains(name));
        }
    }

    #[test]
    fn announce_url_with_an_existing_query() {
        let p = params(AnnounceEvent::None);
        let url = announce_url("http://t.example/announce.php?passkey=s3cr3t", &p, None).unwrap();
        assert!(url
            .target()
            .starts_with("/announce.php?passkey=s3cr3t&info_hash=%AB"));
        let url = announce_url("http://t.example/announce?", &p, None).unwrap();
        assert!(url.target().starts_with("/announce?info_hash=%AB"));
        let url = announce_url("http://t.example/announce?a=1&", &p, None).unwrap();
        assert!(url.target().starts_with("/announce?a=1&info_hash=%AB"));
        assert!(!url.target().contains("&&"));
    }

    #[test]
    fn scrape_url_derivation() {
        let ih = [InfoHash([0x01; 20]), InfoHash(*b"abcdefghij0123456789")];
        let cases = [
            ("http://t.example/announce", "/scrape"),
            ("http://t.example/x/announce", "/x/scrape"),
            ("http://t.example/announce.php", "/scrape.php"),
            ("http://t.example/a/announce?pk=1", "/a/scrape?pk=1"),
            ("http://t.example/announce/x/announce", "/announce/x/scrape"),
        ];
        for (announce, prefix) in cases {
            let url = scrape_url(announce, &ih[..1]).unwrap();
            let sep = if prefix.contains('?') { '&' } else { '?' };
            assert_eq!(
                url.target(),
                format!("{prefix}{sep}info_hash={}", "%01".repeat(20)),
                "{announce}"
            );
        }
        let url = scrape_url("http://t.example/announce", &ih).unwrap();
        assert_eq!(
            url.target(),
            format!(
                "/scrape?info_hash={}&info_hash=abcdefghij0123456789",
                "%01".repeat(20)
            )
        );
        for unsupported in [
            "http://t.example/a",
            "http://t.example/",
            "http://t.example/announce/",
            "http://t.example/x_announce",
            "http://t.example/tracker?announce",
        ] {
            assert!(
                matches!(
                    scrape_url(unsupported, &ih),
                    Err(UrlError::ScrapeUnsupported { .. })
                ),
                "{unsupported}"
            );
        }
        assert_eq!(
            scrape_url("http://t.example/announce", &[]),
            Err(UrlError::NoInfoHash)
        );
    }

    #[test]
    fn joins_redirect_locations() {
        let base = TrackerUrl::parse("http://t.example:81/dir/announce?x=1").unwrap();
        let join = |l: &str| base.join(l).unwrap().to_string();
        assert_eq!(join("http://other/announce"), "http://other/announce");
        assert_eq!(join("//other:82/a"), "http://other:82/a");
        assert_eq!(join("/b?y=2"), "http://t.example:81/b?y=2");
        assert_eq!(join("?y=2"), "http://t.example:81/dir/announce?y=2");
        assert_eq!(join("next?y=2"), "http://t.example:81/dir/next?y=2");
        assert_eq!(join("https://secure/announce"), "https://secure/announce");
        let secure = TrackerUrl::parse("https://t.example/dir/announce").unwrap();
        assert_eq!(
            secure.join("//other/a").unwrap().to_string(),
            "https://other/a"
        );
        assert_eq!(
            secure.join("next").unwrap().to_string(),
            "https://t.example/dir/next"
        );
        assert!(matches!(
            secure.join("http://t.example/announce"),
            Err(UrlError::TlsDowngrade { .. })
        ));
        assert!(matches!(
            secure.join("HTTP://t.example/announce"),
            Err(UrlError::TlsDowngrade { .. })
        ));
    }

    #[test]
    fn parses_https_urls_with_their_default_port() {
        let u = TrackerUrl::parse("HTTPS://Tracker.Example/announce?x=1").unwrap();
        assert!(u.tls());
        assert_eq!(
            (u.host(), u.port(), u.target()),
            ("tracker.example", 443, "/announce?x=1")
        );
        assert_eq!(u.host_header(), "tracker.example");
        assert_eq!(u.to_string(), "https://tracker.example/announce?x=1");
        let u = TrackerUrl::parse("https://t.example:80/announce").unwrap();
        assert_eq!((u.port(), u.host_header().as_str()), (80, "t.example:80"));
        let u = TrackerUrl::parse("http://t.example/announce").unwrap();
        assert!(!u.tls());
        assert_eq!(u.port(), 80);
        let scrape = scrape_url("https://t.example:8443/announce", &[InfoHash([1; 20])]).unwrap();
        assert!(scrape.tls());
        assert!(scrape
            .to_string()
            .starts_with("https://t.example:8443/scrape?info_hash="));
    }

    fn reply(entries: Vec<(&str, OwnedValue)>) -> Vec<u8> {
        let mut d = OwnedValue::dict();
        for (k, v) in entries {
            d.insert(k, v);
        }
        d.encode()
    }

    fn peer_dict(ip: &str, port: i64) -> OwnedValue {
        OwnedValue::dict()
            .with("ip", ip)
            .with("port", port)
            .with("peer id", &b"-XX0000-012345678901"[..])
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn compact_peers_and_counts() {
        let mut compact = vec![10, 0, 0, 1, 0x1a, 0xe1, 192, 168, 1, 2, 0, 80];
        compact.extend_from_slice(&[10, 0, 0, 1, 0x1a, 0xe1]); // duplicate
        compact.extend_from_slice(&[10, 0, 0, 9, 0, 0]); // port 0: unusable
        let body = reply(vec![
            ("interval", 1800.into()),
            ("min interval", 60.into()),
            ("complete", 7.into()),
            ("incomplete", 3.into()),
            ("tracker id", "tid-1".into()),
            ("peers", compact.into()),
        ]);
        let r = parse_announce_response(&body).unwrap();
        assert_eq!(
            r,
            AnnounceResponse {
                interval: Duration::from_secs(1800),
                min_interval: Some(Duration::from_secs(60)),
                peers: vec![addr("10.0.0.1:6881"), addr("192.168.1.2:80")],
                seeders: Some(7),
                leechers: Some(3),
                tracker_id: Some(b"tid-1".to_vec()),
                warning: None,
                stray_bytes: 0,
            }
        );
    }

    /// Finding 4 of the hostile-tracker review: a 9-byte compact list (one whole entry and a 3-byte
    /// tail) used to reject the whole reply; the whole entry is kept and the tail counted.
    #[test]
    fn compact_list_with_a_stray_tail_keeps_its_whole_entries() {
        let body = reply(vec![(
            "peers",
            vec![10, 0, 0, 1, 0x1a, 0xe1, 9, 9, 9].into(),
        )]);
        let r = parse_announce_response(&body).unwrap();
        assert_eq!((r.peers, r.stray_bytes), (vec![addr("10.0.0.1:6881")], 3));
        let body = reply(vec![("peers", vec![1u8; 5].into())]);
        let r = parse_announce_response(&body).unwrap();
        assert_eq!((r.peers.len(), r.stray_bytes), (0, 5));
        let mut v6 = Ipv6Addr::LOCALHOST.octets().to_vec();
        v6.extend_from_slice(&[
            0x1a, 0xe1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
        ]);
        let body = reply(vec![
            ("peers", vec![10, 0, 0, 2, 0, 80, 7].into()),
            ("peers6", v6.into()),
        ]);
        let r = parse_announce_response(&body).unwrap();
        assert_eq!(
            (r.peers, r.stray_bytes),
            (vec![addr("10.0.0.2:80"), addr("[::1]:6881")], 1 + 15)
        );
    }

    #[test]
    fn dictionary_peers() {
        let peers = vec![
            peer_dict("10.0.0.1", 6881),
            peer_dict("2001:db8::1", 51413),
            peer_dict("10.0.0.1", 6881),
            peer_dict("tracker.example.org", 6881), // a DNS name: skipped
            peer_dict("10.0.0.2", 70000),           // bad port: skipped
            OwnedValue::dict().with("ip", "10.0.0.3"), // no port: skipped
            OwnedValue::Int(5),                     // not a dict: skipped
            OwnedValue::dict().with("ip", "10.0.0.4").with("port", 1),
        ];
        let body = reply(vec![("interval", 900.into()), ("peers", peers.into())]);
        let r = parse_announce_response(&body).unwrap();
        assert_eq!(
            r.peers,
            vec![
                addr("10.0.0.1:6881"),
                addr("[2001:db8::1]:51413"),
                addr("10.0.0.4:1")
            ]
        );
        assert_eq!(r.interval, Duration::from_secs(900));
        assert_eq!((r.seeders, r.leechers, r.min_interval), (None, None, None));
    }

    #[test]
    fn peers6_after_peers() {
        let mut v6 = Vec::new();
        let a: Ipv6Addr = "2001:db8::7".parse().unwrap();
        v6.extend_from_slice(&a.octets());
        v6.extend_from_slice(&6969u16.to_be_bytes());
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&1u16.to_be_bytes());
        v6.extend_from_slice(&a.octets()); // duplicate
        v6.extend_from_slice(&6969u16.to_be_bytes());
        let body = reply(vec![
            ("peers", vec![127, 0, 0, 1, 0, 2].into()),
            ("peers6", v6.into()),
        ]);
        let r = parse_announce_response(&body).unwrap();
        assert_eq!(
            r.peers,
            vec![
                addr("127.0.0.1:2"),
                addr("[2001:db8::7]:6969"),
                addr("[::1]:1")
            ]
        );
        let body = reply(vec![("peers6", vec![0u8; 17].into())]);
        let r = parse_announce_response(&body).unwrap();
        assert_eq!((r.peers.len(), r.stray_bytes), (0, 17));
    }

    #[test]
    fn failure_reason_and_warning() {
        let body = reply(vec![
            ("failure reason", "torrent not registered".into()),
            ("interval", 10.into()),
        ]);
        let err = parse_announce_response(&body).unwrap_err();
        assert_eq!(err, ResponseError::Failure("torrent not registered".into()));
        assert!(err.to_string().contains("torrent not registered"));
        assert_eq!(
            parse_scrape_response(&body),
            Err(ResponseError::Failure("torrent not registered".into()))
        );
        let body = reply(vec![
            ("warning message", "slow down".into()),
            ("peers", Vec::<u8>::new().into()),
        ]);
        let r = parse_announce_response(&body).unwrap();
        assert_eq!(r.warning.as_deref(), Some("slow down"));
        assert!(r.peers.is_empty());
    }

    #[test]
    fn missing_or_zero_interval_gets_the_default() {
        for body in [
            reply(vec![]),
            reply(vec![("interval", 0.into())]),
            reply(vec![("interval", (-5).into()), ("min interval", 0.into())]),
        ] {
            let r = parse_announce_response(&body).unwrap();
            assert_eq!(r.interval, DEFAULT_INTERVAL);
            assert_eq!(r.min_interval, None);
        }
        assert_eq!(DEFAULT_INTERVAL, Duration::from_secs(1800));
    }

    #[test]
    fn malformed_replies() {
        assert!(matches!(
            parse_announce_response(b"<html>"),
            Err(ResponseError::Bencode(_))
        ));
        assert!(matches!(
            parse_announce_response(b"le"),
            Err(ResponseError::NotADict { found: "list" })
        ));
        assert!(matches!(
            parse_announce_response(b"de garbage"),
            Err(ResponseError::Bencode(DecodeError { offset: 2, .. }))
        ));
        assert!(parse_announce_response(b"de\r\n").is_ok());
        let body = reply(vec![("interval", "soon".into())]);
        assert!(matches!(
            parse_announce_response(&body),
            Err(ResponseError::BadField { field, offset: 11, .. }) if field == "interval"
        ));
        let body = reply(vec![("complete", (-1).into())]);
        assert!(matches!(
            parse_announce_response(&body),
            Err(ResponseError::BadField { field, .. }) if field == "complete"
        ));
        let body = reply(vec![("peers", 3.into())]);
        assert!(parse_announce_response(&body).is_err());
    }

    #[test]
    fn scrape_replies() {
        let a = InfoHash([0xaa; 20]);
        let b = InfoHash(*b"01234567890123456789");
        let files = OwnedValue::dict()
            .with(
                a.as_bytes(),
                OwnedValue::dict()
                    .with("complete", 5)
                    .with("downloaded", 50)
                    .with("incomplete", 2)
                    .with("name", "x"),
            )
            .with(b.as_bytes(), OwnedValue::dict().with("complete", 1));
        let body = reply(vec![("files", files)]);
        assert_eq!(
            parse_scrape_response(&body).unwrap(),
            vec![
                (
                    b,
                    ScrapeStats {
                        seeders: 1,
                        completed: 0,
                        leechers: 0
                    }
                ),
                (
                    a,
                    ScrapeStats {
                        seeders: 5,
                        completed: 50,
                        leechers: 2
                    }
                ),
            ]
        );
        assert!(
            parse_scrape_response(&reply(vec![("files", OwnedValue::dict())]))
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            parse_scrape_response(&reply(vec![])),
            Err(ResponseError::BadField { field, .. }) if field == "files"
        ));
        let short_key = OwnedValue::dict().with("abc", OwnedValue::dict());
        assert!(matches!(
            parse_scrape_response(&reply(vec![("files", short_key)])),
            Err(ResponseError::BadField { field, .. }) if field == "files/abc"
        ));
        let bad_count = OwnedValue::dict().with(
            a.as_bytes(),
            OwnedValue::dict().with("complete", 1i64 << 40),
        );
        assert!(matches!(
            parse_scrape_response(&reply(vec![("files", bad_count)])),
            Err(ResponseError::BadField { field, .. }) if field.ends_with("/complete")
        ));
    }

    #[test]
    fn announce_end_to_end_through_an_exchange() {
        use crate::time::Instant;
        use crate::tracker::http_client::{Exchange, ExchangeConfig, Outcome};
        let url = announce_url(
            "http://[::1]:6969/announce",
            &params(AnnounceEvent::Started),
            None,
        )
        .unwrap();
        let mut ex = Exchange::new(url, Instant::from_secs(5), ExchangeConfig::default());
        let request = ex.poll_transmit().unwrap();
        assert!(request.starts_with(b"GET /announce?info_hash=%AB%AB"));
        let body = reply(vec![
            ("interval", 120.into()),
            ("peers", vec![127, 0, 0, 1, 0x1a, 0xe1].into()),
        ]);
        let (first, second) = body.split_at(body.len() / 2);
        let mut response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in [first, second] {
            response.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            response.extend_from_slice(part);
            response.extend_from_slice(b"\r\n");
        }
        response.extend_from_slice(b"0\r\n\r\n");
        for b in &response {
            ex.handle_data(std::slice::from_ref(b));
        }
        let Some(Ok(Outcome::Body(bytes))) = ex.poll_result() else {
            panic!("no body");
        };
        let r = parse_announce_response(&bytes).unwrap();
        assert_eq!(r.interval, Duration::from_secs(120));
        assert_eq!(r.peers, vec![addr("127.0.0.1:6881")]);
    }

    /// Any bencode value: integers near the edges, byte strings sized like peer lists, small lists
    /// and dictionaries (peer dictionaries included).
    fn any_value() -> impl Strategy<Value = OwnedValue> {
        let leaf = prop_oneof![
            prop_oneof![
                Just(i64::MIN),
                Just(-1i64),
                Just(0i64),
                Just(i64::from(u32::MAX) + 1),
                Just(i64::MAX),
                any::<i64>(),
                0i64..70_000,
            ]
            .prop_map(OwnedValue::Int),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..40),
                (0usize..8).prop_map(|n| vec![7u8; n * 6]),
                (0usize..4).prop_map(|n| vec![9u8; n * 18]),
                Just(b"::1".to_vec()),
                Just(b"10.0.0.1".to_vec()),
            ]
            .prop_map(OwnedValue::Bytes),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(OwnedValue::List),
                prop::collection::vec(
                    (
                        prop::sample::select(vec!["ip", "port", "peer id", "complete", "x"]),
                        inner,
                    ),
                    0..4,
                )
                .prop_map(|kv| {
                    let mut d = OwnedValue::dict();
                    for (k, v) in kv {
                        d.insert(k, v);
                    }
                    d
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_announce_response(&body);
            let _ = parse_scrape_response(&body);
        }

        /// Well-formed bencode with the fields trackers send, each holding a value of any type (or
        /// of the right type with any content): parsing never panics, and what parses keeps its
        /// promises (no duplicate peers, no port 0, positive intervals).
        #[test]
        fn arbitrary_tracker_dictionaries_never_panic(
            fields in prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "peers", "peers6", "interval", "min interval", "complete", "incomplete",
                        "failure reason", "warning message", "tracker id", "files", "downloaded",
                        "ip", "port",
                    ]),
                    any_value(),
                ),
                0..8,
            ),
            scrape_entries in prop::collection::vec((any::<[u8; 20]>(), any_value()), 0..4),
        ) {
            let mut files = OwnedValue::dict();
            for (hash, stats) in &scrape_entries {
                files.insert(&hash[..], stats.clone());
            }
            let mut entries: Vec<(&str, OwnedValue)> = fields;
            entries.push(("files", files));
            for skip_files in [false, true] {
                let n = entries.len() - usize::from(skip_files);
                let body = reply(entries[..n].to_vec());
                if let Ok(r) = parse_announce_response(&body) {
                    let unique: HashSet<_> = r.peers.iter().collect();
                    prop_assert_eq!(unique.len(), r.peers.len());
                    prop_assert!(r.peers.iter().all(|p| p.port() != 0));
                    prop_assert!(!r.interval.is_zero());
                    prop_assert!(r.min_interval.is_none_or(|m| !m.is_zero()));
                }
                let _ = parse_scrape_response(&body);
            }
        }

        #[test]
        fn compact_peer_lists_decode_every_entry(
            v4 in prop::collection::vec((any::<[u8; 4]>(), 1u16..), 0..40),
            v6 in prop::collection::vec((any::<[u8; 16]>(), 1u16..), 0..20),
        ) {
            let mut compact = Vec::new();
            let mut expected = Vec::new();
            for (ip, port) in &v4 {
                compact.extend_from_slice(ip);
                compact.extend_from_slice(&port.to_be_bytes());
                expected.push(SocketAddr::new(IpAddr::from(*ip), *port));
            }
            let mut compact6 = Vec::new();
            for (ip, port) in &v6 {
                compact6.extend_from_slice(ip);
                compact6.extend_from_slice(&port.to_be_bytes());
                expected.push(SocketAddr::new(IpAddr::from(*ip), *port));
            }
            let mut seen = HashSet::new();
            expected.retain(|p| seen.insert(*p));
            let body = reply(vec![("peers", compact.into()), ("peers6", compact6.into())]);
            prop_assert_eq!(parse_announce_response(&body).unwrap().peers, expected);
        }
    }
}

//! BEP 15 UDP tracker messages: encoding of requests and decoding of responses (and the reverse, which
//! a test tracker needs), plus the `udp://host:port/path` URL form.
//!
//! Every message starts with big-endian integers; all reads are bounds-checked so that any datagram,
//! however short or garbled, decodes to a [`DecodeError`] instead of panicking. The peer list of an
//! announce response has no length prefix and no per-entry family tag: its format follows the address
//! family of the socket the request was sent over (6 bytes per peer over IPv4, 18 over IPv6), so response
//! decoding takes an [`AddressFamily`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::tracker::{AnnounceEvent, ScrapeStats};
use crate::types::{InfoHash, PeerId};

/// The magic constant that opens every connect request (BEP 15).
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;

/// The most info-hashes one scrape request may carry (BEP 15: "up to about 74").
pub const MAX_SCRAPE_HASHES: usize = 74;

/// The largest datagram the decoders accept; anything longer cannot be a UDP payload.
pub const MAX_DATAGRAM: usize = 65_536;

/// Size of a connect request and of a connect response.
pub const CONNECT_LEN: usize = 16;
/// Size of an announce request without BEP 41 options.
pub const ANNOUNCE_REQUEST_LEN: usize = 98;
/// Size of the fixed part of an announce response, before the peer list.
pub const ANNOUNCE_RESPONSE_HEADER_LEN: usize = 20;

/// The `action` field: which message this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// 0: obtain a connection id.
    Connect,
    /// 1: announce a torrent.
    Announce,
    /// 2: scrape torrents.
    Scrape,
    /// 3: the tracker reports an error (responses only).
    Error,
}

impl Action {
    /// The wire number of this action.
    pub fn to_wire(self) -> u32 {
        match self {
            Action::Connect => 0,
            Action::Announce => 1,
            Action::Scrape => 2,
            Action::Error => 3,
        }
    }

    /// The action for a wire number, if it is one of the four BEP 15 defines.
    pub fn from_wire(n: u32) -> Option<Action> {
        match n {
            0 => Some(Action::Connect),
            1 => Some(Action::Announce),
            2 => Some(Action::Scrape),
            3 => Some(Action::Error),
            _ => None,
        }
    }
}

/// The BEP 15 number of an announce event: none=0, completed=1, started=2, stopped=3.
///
/// This is not the declaration order of [`AnnounceEvent`], hence an explicit table.
pub fn event_to_wire(event: AnnounceEvent) -> u32 {
    match event {
        AnnounceEvent::None => 0,
        AnnounceEvent::Completed => 1,
        AnnounceEvent::Started => 2,
        AnnounceEvent::Stopped => 3,
    }
}

/// The event for a BEP 15 event number, if it is one of 0..=3.
pub fn event_from_wire(n: u32) -> Option<AnnounceEvent> {
    match n {
        0 => Some(AnnounceEvent::None),
        1 => Some(AnnounceEvent::Completed),
        2 => Some(AnnounceEvent::Started),
        3 => Some(AnnounceEvent::Stopped),
        _ => None,
    }
}

/// The address family of the socket a request went over; it fixes the peer-list format of the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4: 4-byte address + 2-byte port per peer.
    V4,
    /// IPv6: 16-byte address + 2-byte port per peer.
    V6,
}

impl AddressFamily {
    /// The family of a (canonicalised) socket address: an IPv4-mapped IPv6 address counts as IPv4,
    /// because the tracker on the other end sees an IPv4 packet.
    pub fn of(addr: &SocketAddr) -> AddressFamily {
        match addr.ip().to_canonical() {
            IpAddr::V4(_) => AddressFamily::V4,
            IpAddr::V6(_) => AddressFamily::V6,
        }
    }

    /// Bytes per peer entry in an announce response.
    pub fn peer_len(self) -> usize {
        match self {
            AddressFamily::V4 => 6,
            AddressFamily::V6 => 18,
        }
    }
}

/// Why a datagram could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The datagram ended before a field of a fixed-size message part.
    #[error("{what}: need {needed} bytes, datagram has {got}")]
    TooShort {
        /// Which message or field was being read.
        what: &'static str,
        /// Bytes the message needs at least.
        needed: usize,
        /// Bytes the datagram has.
        got: usize,
    },
    /// The datagram is longer than any UDP payload can be.
    #[error("datagram of {len} bytes exceeds the {max}-byte maximum")]
    TooLong {
        /// Length of the datagram.
        len: usize,
        /// The limit, [`MAX_DATAGRAM`].
        max: usize,
    },
    /// The action field (at the given byte offset) holds no known action.
    #[error("unknown action {action} at byte {offset}")]
    UnknownAction {
        /// The value found.
        action: u32,
        /// Byte offset of the action field.
        offset: usize,
    },
    /// A request carried an action that is only valid in responses (error) — or vice versa.
    #[error("action {action:?} is not valid in a {direction}")]
    UnexpectedAction {
        /// The action found.
        action: Action,
        /// "request" or "response".
        direction: &'static str,
    },
    /// A connect request did not start with [`PROTOCOL_ID`].
    #[error("connect request has protocol id {found:#x} at byte 0, expected {PROTOCOL_ID:#x}")]
    BadProtocolId {
        /// The value found.
        found: u64,
    },
    /// An announce request's event field held no BEP 15 event.
    #[error("unknown event {value} at byte {offset}")]
    UnknownEvent {
        /// The value found.
        value: u32,
        /// Byte offset of the event field.
        offset: usize,
    },
    /// A list part (peers, scrape entries, info-hashes) is not a whole number of entries.
    #[error("{what} at byte {offset} is {len} bytes, not a multiple of {entry}")]
    ListLength {
        /// Which list.
        what: &'static str,
        /// Byte offset where the list starts.
        offset: usize,
        /// Length of the list part.
        len: usize,
        /// Size of one entry.
        entry: usize,
    },
    /// A scrape request carried no info-hash or more than [`MAX_SCRAPE_HASHES`].
    #[error("scrape request carries {count} info-hashes, allowed 1..={MAX_SCRAPE_HASHES}")]
    ScrapeCount {
        /// Number of info-hashes found.
        count: usize,
    },
}

/// A bounds-checked big-endian reader over a datagram.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader {
            bytes,
            pos: 0,
            what,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.saturating_add(n);
        let slice = self.bytes.get(self.pos..end).ok_or(DecodeError::TooShort {
            what: self.what,
            needed: end,
            got: self.bytes.len(),
        })?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = self.bytes.get(self.pos..).unwrap_or(&[]);
        self.pos = self.bytes.len();
        rest
    }
}

fn check_len(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(DecodeError::TooLong {
            len: bytes.len(),
            max: MAX_DATAGRAM,
        });
    }
    Ok(())
}

/// Action 0 request: asks for a connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Random id chosen by the client and echoed by the tracker.
    pub transaction_id: u32,
}

/// Action 1 request: announces one torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// The id from a connect response, at most a minute old.
    pub connection_id: u64,
    /// Random id chosen by the client and echoed by the tracker.
    pub transaction_id: u32,
    /// The torrent.
    pub info_hash: InfoHash,
    /// Our peer id.
    pub peer_id: PeerId,
    /// Payload bytes downloaded since `started`.
    pub downloaded: u64,
    /// Bytes left to download.
    pub left: u64,
    /// Payload bytes uploaded since `started`.
    pub uploaded: u64,
    /// The event, numbered on the wire by [`event_to_wire`].
    pub event: AnnounceEvent,
    /// Our IPv4 address as the tracker should record it; unspecified (0) means "the packet's source".
    pub ip: Ipv4Addr,
    /// The session key (lets the tracker recognise us across address changes).
    pub key: u32,
    /// How many peers we want; -1 lets the tracker choose.
    pub num_want: i32,
    /// Our TCP listening port.
    pub port: u16,
}

/// Action 2 request: scrapes up to [`MAX_SCRAPE_HASHES`] torrents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeRequest {
    /// The id from a connect response, at most a minute old.
    pub connection_id: u64,
    /// Random id chosen by the client and echoed by the tracker.
    pub transaction_id: u32,
    /// The torrents, in the order the reply's entries will follow.
    pub info_hashes: Vec<InfoHash>,
}

/// Any client-to-tracker message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Action 0.
    Connect(ConnectRequest),
    /// Action 1.
    Announce(AnnounceRequest),
    /// Action 2.
    Scrape(ScrapeRequest),
}

impl Request {
    /// The transaction id the tracker must echo.
    pub fn transaction_id(&self) -> u32 {
        match self {
            Request::Connect(r) => r.transaction_id,
            Request::Announce(r) => r.transaction_id,
            Request::Scrape(r) => r.transaction_id,
        }
    }

    /// Appends the wire form of this request to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Request::Connect(r) => {
                out.extend_from_slice(&PROTOCOL_ID.to_be_bytes());
                out.extend_from_slice(&Action::Connect.to_wire().to_be_bytes());
                out.extend_from_slice(&r.transaction_id.to_be_bytes());
            }
            Request::Announce(r) => {
                out.reserve(ANNOUNCE_REQUEST_LEN);
                out.extend_from_slice(&r.connection_id.to_be_bytes());
                out.extend_from_slice(&Action::Announce.to_wire().to_be_bytes());
                out.extend_from_slice(&r.transaction_id.to_be_bytes());
                out.extend_from_slice(r.info_hash.as_bytes());
                out.extend_from_slice(r.peer_id.as_bytes());
                out.extend_from_slice(&r.downloaded.to_be_bytes());
                out.extend_from_slice(&r.left.to_be_bytes());
                out.extend_from_slice(&r.uploaded.to_be_bytes());
                out.extend_from_slice(&event_to_wire(r.event).to_be_bytes());
                out.extend_from_slice(&r.ip.octets());
                out.extend_from_slice(&r.key.to_be_bytes());
                out.extend_from_slice(&r.num_want.to_be_bytes());
                out.extend_from_slice(&r.port.to_be_bytes());
            }
            Request::Scrape(r) => {
                out.reserve(16 + 20 * r.info_hashes.len());
                out.extend_from_slice(&r.connection_id.to_be_bytes());
                out.extend_from_slice(&Action::Scrape.to_wire().to_be_bytes());
                out.extend_from_slice(&r.transaction_id.to_be_bytes());
                for ih in &r.info_hashes {
                    out.extend_from_slice(ih.as_bytes());
                }
            }
        }
    }

    /// The wire form of this request as a fresh buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Parses a request, as a tracker would. Bytes after a fixed-size request (BEP 41 options) are
    /// ignored.
    pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        check_len(bytes)?;
        let mut r = Reader::new(bytes, "request header");
        let connection_id = r.u64()?;
        let action_raw = r.u32()?;
        let transaction_id = r.u32()?;
        let action = Action::from_wire(action_raw).ok_or(DecodeError::UnknownAction {
            action: action_raw,
            offset: 8,
        })?;
        match action {
            Action::Connect => {
                if connection_id != PROTOCOL_ID {
                    return Err(DecodeError::BadProtocolId {
                        found: connection_id,
                    });
                }
                Ok(Request::Connect(ConnectRequest { transaction_id }))
            }
            Action::Announce => {
                r.what = "announce request";
                let info_hash = InfoHash(r.array()?);
                let peer_id = PeerId(r.array()?);
                let downloaded = r.u64()?;
                let left = r.u64()?;
                let uploaded = r.u64()?;
                let event_offset = r.pos;
                let event_raw = r.u32()?;
                let event = event_from_wire(event_raw).ok_or(DecodeError::UnknownEvent {
                    value: event_raw,
                    offset: event_offset,
                })?;
                let ip = Ipv4Addr::from(r.array::<4>()?);
                let key = r.u32()?;
                let num_want = i32::from_be_bytes(r.array()?);
                let port = r.u16()?;
                Ok(Request::Announce(AnnounceRequest {
                    connection_id,
                    transaction_id,
                    info_hash,
                    peer_id,
                    downloaded,
                    left,
                    uploaded,
                    event,
                    ip,
                    key,
                    num_want,
                    port,
                }))
            }
            Action::Scrape => {
                let rest = r.rest();
                if !rest.chunks_exact(20).remainder().is_empty() {
                    return Err(DecodeError::ListLength {
                        what: "scrape info-hash list",
                        offset: 16,
                        len: rest.len(),
                        entry: 20,
                    });
                }
                let count = rest.len() / 20;
                if count == 0 || count > MAX_SCRAPE_HASHES {
                    return Err(DecodeError::ScrapeCount { count });
                }
                let info_hashes = rest
                    .chunks_exact(20)
                    .map(|c| {
                        let mut h = [0u8; 20];
                        h.copy_from_slice(c);
                        InfoHash(h)
                    })
                    .collect();
                Ok(Request::Scrape(ScrapeRequest {
                    connection_id,
                    transaction_id,
                    info_hashes,
                }))
            }
            Action::Error => Err(DecodeError::UnexpectedAction {
                action,
                direction: "request",
            }),
        }
    }
}

/// Action 0 response: grants a connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectResponse {
    /// Echo of the request's transaction id.
    pub transaction_id: u32,
    /// The id to put in announce and scrape requests for the next minute.
    pub connection_id: u64,
}

/// Action 1 response: the swarm as the tracker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceReply {
    /// Echo of the request's transaction id.
    pub transaction_id: u32,
    /// Seconds to wait before re-announcing.
    pub interval: u32,
    /// Leechers in the swarm.
    pub leechers: u32,
    /// Seeders in the swarm.
    pub seeders: u32,
    /// Peers, in the tracker's order, all of the request socket's family.
    pub peers: Vec<SocketAddr>,
}

/// Action 2 response: counters for each scraped torrent, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeReply {
    /// Echo of the request's transaction id.
    pub transaction_id: u32,
    /// One entry per info-hash of the request, in its order.
    pub stats: Vec<ScrapeStats>,
}

/// Action 3 response: the tracker refused the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// Echo of the request's transaction id.
    pub transaction_id: u32,
    /// The human-readable reason (decoded lossily as UTF-8, trailing NULs dropped).
    pub message: String,
}

/// Any tracker-to-client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Action 0.
    Connect(ConnectResponse),
    /// Action 1.
    Announce(AnnounceReply),
    /// Action 2.
    Scrape(ScrapeReply),
    /// Action 3.
    Error(ErrorReply),
}

impl Response {
    /// The transaction id this response answers.
    pub fn transaction_id(&self) -> u32 {
        match self {
            Response::Connect(r) => r.transaction_id,
            Response::Announce(r) => r.transaction_id,
            Response::Scrape(r) => r.transaction_id,
            Response::Error(r) => r.transaction_id,
        }
    }

    /// The action of this response.
    pub fn action(&self) -> Action {
        match self {
            Response::Connect(_) => Action::Connect,
            Response::Announce(_) => Action::Announce,
            Response::Scrape(_) => Action::Scrape,
            Response::Error(_) => Action::Error,
        }
    }

    /// Reads only the action and transaction id (the first 8 bytes), enough to route a reply.
    pub fn peek_header(bytes: &[u8]) -> Result<(Action, u32), DecodeError> {
        let mut r = Reader::new(bytes, "response header");
        let action_raw = r.u32()?;
        let transaction_id = r.u32()?;
        let action = Action::from_wire(action_raw).ok_or(DecodeError::UnknownAction {
            action: action_raw,
            offset: 0,
        })?;
        Ok((action, transaction_id))
    }

    /// Appends the wire form of this response to `out`, writing peers in `family`'s format. Over IPv6,
    /// IPv4 peers are written as IPv4-mapped addresses; over IPv4, IPv6 peers cannot be represented and
    /// are left out.
    pub fn encode(&self, family: AddressFamily, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.action().to_wire().to_be_bytes());
        out.extend_from_slice(&self.transaction_id().to_be_bytes());
        match self {
            Response::Connect(r) => out.extend_from_slice(&r.connection_id.to_be_bytes()),
            Response::Announce(r) => {
                out.extend_from_slice(&r.interval.to_be_bytes());
                out.extend_from_slice(&r.leechers.to_be_bytes());
                out.extend_from_slice(&r.seeders.to_be_bytes());
                for peer in &r.peers {
                    match (family, peer.ip()) {
                        (AddressFamily::V4, IpAddr::V4(ip)) => out.extend_from_slice(&ip.octets()),
                        (AddressFamily::V4, IpAddr::V6(_)) => continue,
                        (AddressFamily::V6, IpAddr::V4(ip)) => {
                            out.extend_from_slice(&ip.to_ipv6_mapped().octets())
                        }
                        (AddressFamily::V6, IpAddr::V6(ip)) => out.extend_from_slice(&ip.octets()),
                    }
                    out.extend_from_slice(&peer.port().to_be_bytes());
                }
            }
            Response::Scrape(r) => {
                for s in &r.stats {
                    out.extend_from_slice(&s.seeders.to_be_bytes());
                    out.extend_from_slice(&s.completed.to_be_bytes());
                    out.extend_from_slice(&s.leechers.to_be_bytes());
                }
            }
            Response::Error(r) => out.extend_from_slice(r.message.as_bytes()),
        }
    }

    /// The wire form of this response as a fresh buffer.
    pub fn to_bytes(&self, family: AddressFamily) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(family, &mut out);
        out
    }

    /// Parses a tracker's datagram. `family` is that of the socket the request went over and decides the
    /// size of peer entries. Bytes after a fixed-size connect response are ignored; list parts must be a
    /// whole number of entries.
    pub fn decode(bytes: &[u8], family: AddressFamily) -> Result<Response, DecodeError> {
        check_len(bytes)?;
        let (action, transaction_id) = Response::peek_header(bytes)?;
        let mut r = Reader::new(bytes, "response header");
        r.take(8)?;
        match action {
            Action::Connect => {
                r.what = "connect response";
                let connection_id = r.u64()?;
                Ok(Response::Connect(ConnectResponse {
                    transaction_id,
                    connection_id,
                }))
            }
            Action::Announce => {
                r.what = "announce response";
                let interval = r.u32()?;
                let leechers = r.u32()?;
                let seeders = r.u32()?;
                let offset = r.pos;
                let rest = r.rest();
                let entry = family.peer_len();
                if !rest.chunks_exact(entry).remainder().is_empty() {
                    return Err(DecodeError::ListLength {
                        what: "peer list",
                        offset,
                        len: rest.len(),
                        entry,
                    });
                }
                let peers = rest
                    .chunks_exact(entry)
                    .map(|c| decode_peer(c, family))
                    .collect();
                Ok(Response::Announce(AnnounceReply {
                    transaction_id,
                    interval,
                    leechers,
                    seeders,
                    peers,
                }))
            }
            Action::Scrape => {
                let rest = r.rest();
                if !rest.chunks_exact(12).remainder().is_empty() {
                    return Err(DecodeError::ListLength {
                        what: "scrape entry list",
                        offset: 8,
                        len: rest.len(),
                        entry: 12,
                    });
                }
                let stats = rest
                    .chunks_exact(12)
                    .map(|c| {
                        let word = |i: usize| {
                            let mut w = [0u8; 4];
                            w.copy_from_slice(c.get(i..i + 4).unwrap_or(&[0; 4]));
                            u32::from_be_bytes(w)
                        };
                        ScrapeStats {
                            seeders: word(0),
                            completed: word(4),
                            leechers: word(8),
                        }
                    })
                    .collect();
                Ok(Response::Scrape(ScrapeReply {
                    transaction_id,
                    stats,
                }))
            }
            Action::Error => {
                let raw = r.rest();
                let trimmed = match raw.iter().rposition(|&b| b != 0) {
                    Some(last) => raw.get(..=last).unwrap_or(raw),
                    None => &[],
                };
                Ok(Response::Error(ErrorReply {
                    transaction_id,
                    message: String::from_utf8_lossy(trimmed).into_owned(),
                }))
            }
        }
    }
}

/// One peer entry of exactly `family.peer_len()` bytes.
fn decode_peer(c: &[u8], family: AddressFamily) -> SocketAddr {
    let mut r = Reader::new(c, "peer entry");
    // The caller hands in chunks of the exact entry size, so these reads cannot run short; the
    // fallbacks only keep the function total.
    match family {
        AddressFamily::V4 => {
            let ip = Ipv4Addr::from(r.array::<4>().unwrap_or([0; 4]));
            SocketAddr::new(IpAddr::V4(ip), r.u16().unwrap_or(0))
        }
        AddressFamily::V6 => {
            let ip = Ipv6Addr::from(r.array::<16>().unwrap_or([0; 16]));
            SocketAddr::new(IpAddr::V6(ip), r.u16().unwrap_or(0))
        }
    }
}

/// Why a `udp://` tracker URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The URL does not start with `udp://`.
    #[error("tracker URL {url:?} does not use the udp:// scheme")]
    NotUdp {
        /// The URL given.
        url: String,
    },
    /// No host between `udp://` and the port.
    #[error("tracker URL {url:?} has no host")]
    MissingHost {
        /// The URL given.
        url: String,
    },
    /// No `:port` after the host (UDP trackers have no default port).
    #[error("tracker URL {url:?} has no port")]
    MissingPort {
        /// The URL given.
        url: String,
    },
    /// The port is not a number in 1..=65535.
    #[error("tracker URL {url:?} has invalid port {port:?}")]
    BadPort {
        /// The URL given.
        url: String,
        /// The port text.
        port: String,
    },
    /// The host is malformed (an unclosed `[`, user info, spaces, ...).
    #[error("tracker URL {url:?} has invalid host {host:?}")]
    BadHost {
        /// The URL given.
        url: String,
        /// The host text.
        host: String,
    },
}

/// A parsed `udp://host:port/path` tracker URL. The driver resolves `host` (unless it is already an IP
/// literal, see [`UdpUrl::socket_addr`]) and hands the router a `SocketAddr`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UdpUrl {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// UDP port.
    pub port: u16,
    /// Everything from the first `/` after the port (BEP 41 URL data), possibly empty.
    pub path: String,
}

impl UdpUrl {
    /// Parses a `udp://` URL; the scheme is case-insensitive, IPv6 literals are bracketed.
    pub fn parse(url: &str) -> Result<UdpUrl, UrlError> {
        let scheme_ok = url
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("udp://"));
        let rest = match url.get(6..) {
            Some(rest) if scheme_ok => rest,
            _ => {
                return Err(UrlError::NotUdp {
                    url: url.to_owned(),
                })
            }
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
            None => (rest, ""),
        };
        let bad_host = |host: &str| UrlError::BadHost {
            url: url.to_owned(),
            host: host.to_owned(),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let close = v6.find(']').ok_or_else(|| bad_host(authority))?;
            let host = v6.get(..close).unwrap_or("");
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(bad_host(host));
            }
            let after = v6.get(close + 1..).unwrap_or("");
            let port = match after.strip_prefix(':') {
                Some(p) => p,
                None if after.is_empty() => {
                    return Err(UrlError::MissingPort {
                        url: url.to_owned(),
                    })
                }
                None => return Err(bad_host(authority)),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p),
                None if authority.is_empty() => {
                    return Err(UrlError::MissingHost {
                        url: url.to_owned(),
                    })
                }
                None => {
                    return Err(UrlError::MissingPort {
                        url: url.to_owned(),
                    })
                }
            }
        };
        if host.is_empty() {
            return Err(UrlError::MissingHost {
                url: url.to_owned(),
            });
        }
        if !authority.starts_with('[')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(bad_host(host));
        }
        let port_num = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| UrlError::BadPort {
                url: url.to_owned(),
                port: port.to_owned(),
            })?;
        Ok(UdpUrl {
            host: host.to_owned(),
            port: port_num,
            path: path.to_owned(),
        })
    }

    /// The socket address when the host is an IP literal, so no resolution is needed.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_event() -> impl Strategy<Value = AnnounceEvent> {
        prop_oneof![
            Just(AnnounceEvent::None),
            Just(AnnounceEvent::Started),
            Just(AnnounceEvent::Completed),
            Just(AnnounceEvent::Stopped),
        ]
    }

    fn any_request() -> impl Strategy<Value = Request> {
        let connect =
            any::<u32>().prop_map(|t| Request::Connect(ConnectRequest { transaction_id: t }));
        let announce = (
            (
                any::<u64>(),
                any::<u32>(),
                any::<[u8; 20]>(),
                any::<[u8; 20]>(),
            ),
            (any::<u64>(), any::<u64>(), any::<u64>(), any_event()),
            (any::<u32>(), any::<u32>(), any::<i32>(), any::<u16>()),
        )
            .prop_map(|((c, t, ih, pid), (d, l, u, e), (ip, k, n, p))| {
                Request::Announce(AnnounceRequest {
                    connection_id: c,
                    transaction_id: t,
                    info_hash: InfoHash(ih),
                    peer_id: PeerId(pid),
                    downloaded: d,
                    left: l,
                    uploaded: u,
                    event: e,
                    ip: Ipv4Addr::from(ip),
                    key: k,
                    num_want: n,
                    port: p,
                })
            });
        let scrape = (
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec(any::<[u8; 20]>(), 1..=MAX_SCRAPE_HASHES),
        )
            .prop_map(|(c, t, hs)| {
                Request::Scrape(ScrapeRequest {
                    connection_id: c,
                    transaction_id: t,
                    info_hashes: hs.into_iter().map(InfoHash).collect(),
                })
            });
        prop_oneof![connect, announce, scrape]
    }

    fn any_peer(family: AddressFamily) -> BoxedStrategy<SocketAddr> {
        match family {
            AddressFamily::V4 => (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p))
                .boxed(),
            AddressFamily::V6 => (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p))
                .boxed(),
        }
    }

    fn any_response(family: AddressFamily) -> impl Strategy<Value = Response> {
        let connect = (any::<u32>(), any::<u64>()).prop_map(|(t, c)| {
            Response::Connect(ConnectResponse {
                transaction_id: t,
                connection_id: c,
            })
        });
        let announce = (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any_peer(family), 0..60),
        )
            .prop_map(|(t, i, l, s, peers)| {
                Response::Announce(AnnounceReply {
                    transaction_id: t,
                    interval: i,
                    leechers: l,
                    seeders: s,
                    peers,
                })
            });
        let scrape = (
            any::<u32>(),
            proptest::collection::vec(any::<(u32, u32, u32)>(), 0..=MAX_SCRAPE_HASHES),
        )
            .prop_map(|(t, v)| {
                Response::Scrape(ScrapeReply {
                    transaction_id: t,
                    stats: v
                        .into_iter()
                        .map(|(s, c, l)| ScrapeStats {
                            seeders: s,
                            completed: c,
                            leechers: l,
                        })
                        .collect(),
                })
            });
        // Messages without NULs at the end round-trip exactly (trailing NULs are trimmed on decode).
        let error = (any::<u32>(), "[^\u{0}]{0,80}").prop_map(|(t, m)| {
            Response::Error(ErrorReply {
                transaction_id: t,
                message: m,
            })
        });
        prop_oneof![connect, announce, scrape, error]
    }

    proptest! {
        #[test]
        fn requests_round_trip(req in any_request()) {
            let bytes = req.to_bytes();
            prop_assert_eq!(Request::decode(&bytes), Ok(req));
        }

        #[test]
        fn v4_responses_round_trip(resp in any_response(AddressFamily::V4)) {
            let bytes = resp.to_bytes(AddressFamily::V4);
            prop_assert_eq!(Response::decode(&bytes, AddressFamily::V4), Ok(resp));
        }

        #[test]
        fn v6_responses_round_trip(resp in any_response(AddressFamily::V6)) {
            let bytes = resp.to_bytes(AddressFamily::V6);
            prop_assert_eq!(Response::decode(&bytes, AddressFamily::V6), Ok(resp));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes, AddressFamily::V4);
            let _ = Response::decode(&bytes, AddressFamily::V6);
            let _ = Response::peek_header(&bytes);
        }

        #[test]
        fn truncated_messages_are_errors_not_panics(req in any_request(), cut in 0usize..98) {
            let bytes = req.to_bytes();
            let cut = cut.min(bytes.len());
            let decoded = Request::decode(&bytes[..cut]);
            // Every cut short of the whole is an error, except a scrape cut between two info-hashes,
            // which is a shorter scrape.
            let shorter_scrape = matches!(req, Request::Scrape(_)) && cut > 16 && (cut - 16) % 20 == 0;
            if cut < bytes.len() && !shorter_scrape {
                prop_assert!(decoded.is_err(), "cut at {} of {}: {:?}", cut, bytes.len(), decoded);
            }
            let _ = Response::decode(&bytes[..cut], AddressFamily::V4);
        }

        #[test]
        fn arbitrary_urls_never_panic(s in "\\PC{0,40}", t in "udp://[\\[\\]a-z0-9:./?]{0,30}") {
            let _ = UdpUrl::parse(&s);
            let _ = UdpUrl::parse(&t);
        }
    }

    #[test]
    fn connect_request_layout_matches_bep15() {
        let bytes = Request::Connect(ConnectRequest {
            transaction_id: 0x0102_0304,
        })
        .to_bytes();
        assert_eq!(
            bytes,
            [0, 0, 0x04, 0x17, 0x27, 0x10, 0x19, 0x80, 0, 0, 0, 0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn announce_request_layout_and_event_numbers() {
        let mk = |event| AnnounceRequest {
            connection_id: 7,
            transaction_id: 9,
            info_hash: InfoHash([0xaa; 20]),
            peer_id: PeerId([0xbb; 20]),
            downloaded: 1,
            left: 2,
            uploaded: 3,
            event,
            ip: Ipv4Addr::UNSPECIFIED,
            key: 0xdead_beef,
            num_want: -1,
            port: 6881,
        };
        let bytes = Request::Announce(mk(AnnounceEvent::Completed)).to_bytes();
        assert_eq!(bytes.len(), ANNOUNCE_REQUEST_LEN);
        assert_eq!(&bytes[8..12], &[0, 0, 0, 1]);
        assert_eq!(&bytes[56..64], &1u64.to_be_bytes(), "downloaded first");
        assert_eq!(&bytes[64..72], &2u64.to_be_bytes(), "then left");
        assert_eq!(&bytes[72..80], &3u64.to_be_bytes(), "then uploaded");
        assert_eq!(&bytes[80..84], &[0, 0, 0, 1], "completed is 1");
        assert_eq!(&bytes[92..96], &[0xff; 4], "num_want -1");
        assert_eq!(&bytes[96..98], &6881u16.to_be_bytes());
        let ev = |e| Request::Announce(mk(e)).to_bytes()[83];
        assert_eq!(ev(AnnounceEvent::None), 0);
        assert_eq!(ev(AnnounceEvent::Started), 2);
        assert_eq!(ev(AnnounceEvent::Stopped), 3);
    }

    #[test]
    fn decode_errors_name_the_problem() {
        assert_eq!(
            Response::decode(&[0, 0, 0, 1, 0, 0], AddressFamily::V4),
            Err(DecodeError::TooShort {
                what: "response header",
                needed: 8,
                got: 6
            })
        );
        assert_eq!(
            Response::decode(&[0, 0, 0, 9, 0, 0, 0, 0], AddressFamily::V4),
            Err(DecodeError::UnknownAction {
                action: 9,
                offset: 0
            })
        );
        let mut peers7 = vec![0, 0, 0, 1, 0, 0, 0, 5];
        peers7.extend_from_slice(&[0; 12 + 7]);
        assert_eq!(
            Response::decode(&peers7, AddressFamily::V4),
            Err(DecodeError::ListLength {
                what: "peer list",
                offset: 20,
                len: 7,
                entry: 6
            })
        );
        // The same 18 peer bytes are three IPv4 peers or one IPv6 peer.
        let mut peers18 = vec![0, 0, 0, 1, 0, 0, 0, 5];
        peers18.extend_from_slice(&[0; 12 + 18]);
        let n = |f| match Response::decode(&peers18, f) {
            Ok(Response::Announce(a)) => a.peers.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!((n(AddressFamily::V4), n(AddressFamily::V6)), (3, 1));
        let mut bad_connect = Request::Connect(ConnectRequest { transaction_id: 1 }).to_bytes();
        bad_connect[0] = 1;
        assert!(matches!(
            Request::decode(&bad_connect),
            Err(DecodeError::BadProtocolId { .. })
        ));
        assert!(
            Response::decode(&vec![0; MAX_DATAGRAM + 1], AddressFamily::V4)
                .unwrap_err()
                .to_string()
                .contains("exceeds")
        );
    }

    #[test]
    fn error_message_trailing_nul_trimmed() {
        let mut bytes = vec![0, 0, 0, 3, 0, 0, 0, 42];
        bytes.extend_from_slice(b"Connection ID missmatch.\0");
        assert_eq!(
            Response::decode(&bytes, AddressFamily::V6),
            Ok(Response::Error(ErrorReply {
                transaction_id: 42,
                message: "Connection ID missmatch.".into()
            }))
        );
    }

    #[test]
    fn udp_urls() {
        let u = UdpUrl::parse("udp://tracker.example.org:6969/announce").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("tracker.example.org", 6969, "/announce")
        );
        assert_eq!(u.socket_addr(), None);
        let u = UdpUrl::parse("UDP://[::1]:80").unwrap();
        assert_eq!(u.socket_addr(), Some("[::1]:80".parse().unwrap()));
        let u = UdpUrl::parse("udp://127.0.0.1:1337?passkey=x").unwrap();
        assert_eq!(u.socket_addr(), Some("127.0.0.1:1337".parse().unwrap()));
        assert_eq!(u.path, "?passkey=x");
        for bad in [
            "http://a:1",
            "udp://",
            "udp://host",
            "udp://:80",
            "udp://h:0",
            "udp://h:+80",
            "udp://h:99999",
            "udp://[::1",
            "udp://[zz]:1",
            "udp://u@h:1",
            "udp://[::1]x:1",
        ] {
            assert!(UdpUrl::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}

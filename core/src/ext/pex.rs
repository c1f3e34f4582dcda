//! `ut_pex` (BEP 11): peer exchange.
//!
//! Connected peers tell each other, about once a minute, which peers they have connected to (`added`,
//! with one flag byte each) and disconnected from (`dropped`) since the last message. IPv4 peers travel
//! as 6-byte compact entries in `added`/`added.f`/`dropped`, IPv6 peers as 18-byte entries in
//! `added6`/`added6.f`/`dropped6`.
//!
//! - [`PexMessage`] encodes and decodes the payload.
//! - [`PexSender`] (one per connection) decides what to tell a peer and when: at most one message per
//!   [`PEX_INTERVAL`], at most [`MAX_ADDED_PER_MESSAGE`] added and [`MAX_DROPPED_PER_MESSAGE`] dropped
//!   peers per message, never the recipient itself.
//! - [`PexReceiver`] (one per connection) bounds what we believe from a peer: a rate limit, a count
//!   cap and an address filter.
//!
//! **Private torrents (BEP 27) must not use PEX**: both constructors take the torrent's `private` flag
//! and refuse with [`PexPrivate`], and [`super::local_extensions`] does not register `ut_pex` for them.
//!
//! ## Strictness of the decoder
//! Missing keys are fine (an absent list is empty; BEP 11 makes the flag strings optional). A peer list
//! whose length is not a whole number of entries (6 bytes for IPv4, 18 for IPv6) is an **error** for
//! the whole message, not silently trimmed: such a sender is broken and the rest of its message is not
//! to be trusted either. A flag string shorter than its list gives the peers without a flag byte empty
//! flags; extra flag bytes are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use crate::bencode::{self, DecodeError, OwnedValue, Value};
use crate::time::Instant;

/// The shortest time between two PEX messages we send to one peer (BEP 11: about once a minute).
pub const PEX_INTERVAL: Duration = Duration::from_secs(60);
/// The most added peers (IPv4 and IPv6 together) we put in one message.
pub const MAX_ADDED_PER_MESSAGE: usize = 50;
/// The most dropped peers (IPv4 and IPv6 together) we put in one message.
pub const MAX_DROPPED_PER_MESSAGE: usize = 50;

const V4_LEN: usize = 6;
const V6_LEN: usize = 18;

bitflags::bitflags! {
    /// The per-peer flag byte of `added.f` / `added6.f`. Unknown bits are kept as received.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
    pub struct PexFlags: u8 {
        /// The peer prefers encrypted connections.
        const PREFERS_ENCRYPTION = 0x01;
        /// The peer is a seed (upload only).
        const SEED = 0x02;
        /// The peer supports uTP.
        const UTP = 0x04;
        /// The peer supports `ut_holepunch`.
        const HOLEPUNCH = 0x08;
        /// The peer is reachable: we connected out to it.
        const REACHABLE = 0x10;
    }
}

/// A peer named in a PEX `added` list, with its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PexPeer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// What the sender knows about it.
    pub flags: PexFlags,
}

/// One `ut_pex` message. Encoding puts IPv4 addresses in the `added`/`dropped` keys and IPv6 ones
/// (including IPv4-mapped IPv6) in `added6`/`dropped6`; decoding yields the IPv4 entries first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// Peers the sender connected to since its last message.
    pub added: Vec<PexPeer>,
    /// Peers the sender disconnected from since its last message.
    pub dropped: Vec<SocketAddr>,
}

/// Why a `ut_pex` payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PexError {
    /// The payload is not valid bencode (or has bytes after the dictionary).
    #[error("ut_pex message: {0}")]
    Bencode(#[from] DecodeError),
    /// The payload is not a dictionary.
    #[error("ut_pex message is a {0}, expected a dictionary")]
    NotADictionary(&'static str),
    /// A key holds something other than a byte string.
    #[error(
        "ut_pex key `{field}` at byte offset {offset} should be a byte string, found a {found}"
    )]
    WrongType {
        /// Which key.
        field: &'static str,
        /// Where its value starts.
        offset: usize,
        /// What was found.
        found: &'static str,
    },
    /// A peer list that is not a whole number of compact entries.
    #[error("ut_pex key `{field}` is {len} bytes long, not a multiple of {entry}")]
    BadLength {
        /// Which key.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The entry size (6 or 18).
        entry: usize,
    },
}

fn string_field<'a>(dict: &Value<'a>, field: &'static str) -> Result<&'a [u8], PexError> {
    match dict.get(field.as_bytes()) {
        None => Ok(&[]),
        Some(v) => v.as_bytes().ok_or(PexError::WrongType {
            field,
            offset: v.offset(),
            found: v.type_name(),
        }),
    }
}

fn entries<'a>(
    dict: &Value<'a>,
    field: &'static str,
    entry: usize,
) -> Result<std::slice::ChunksExact<'a, u8>, PexError> {
    let bytes = string_field(dict, field)?;
    if bytes.len() % entry != 0 {
        return Err(PexError::BadLength {
            field,
            len: bytes.len(),
            entry,
        });
    }
    Ok(bytes.chunks_exact(entry))
}

/// A 6-byte compact IPv4 entry (the caller cut it with `chunks_exact`, so `None` cannot happen).
fn parse_v4(e: &[u8]) -> Option<SocketAddr> {
    let (ip, rest) = e.split_first_chunk::<4>()?;
    let port = rest.first_chunk::<2>()?;
    let addr = SocketAddrV4::new(Ipv4Addr::from(*ip), u16::from_be_bytes(*port));
    Some(SocketAddr::V4(addr))
}

/// An 18-byte compact IPv6 entry.
fn parse_v6(e: &[u8]) -> Option<SocketAddr> {
    let (ip, rest) = e.split_first_chunk::<16>()?;
    let port = rest.first_chunk::<2>()?;
    let addr = SocketAddrV6::new(Ipv6Addr::from(*ip), u16::from_be_bytes(*port), 0, 0);
    Some(SocketAddr::V6(addr))
}

fn write_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

impl PexMessage {
    /// Whether the message says nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty()
    }

    /// Decodes a `ut_pex` payload (see the module notes on strictness).
    pub fn decode(payload: &[u8]) -> Result<PexMessage, PexError> {
        let dict = bencode::decode(payload)?;
        if dict.as_dict().is_none() {
            return Err(PexError::NotADictionary(dict.type_name()));
        }
        let added4 = entries(&dict, "added", V4_LEN)?;
        let flags4 = string_field(&dict, "added.f")?;
        let added6 = entries(&dict, "added6", V6_LEN)?;
        let flags6 = string_field(&dict, "added6.f")?;
        let dropped4 = entries(&dict, "dropped", V4_LEN)?;
        let dropped6 = entries(&dict, "dropped6", V6_LEN)?;

        let flag =
            |flags: &[u8], i: usize| PexFlags::from_bits_retain(flags.get(i).copied().unwrap_or(0));
        let mut added = Vec::with_capacity(added4.len() + added6.len());
        added.extend(added4.enumerate().filter_map(|(i, e)| {
            Some(PexPeer {
                addr: parse_v4(e)?,
                flags: flag(flags4, i),
            })
        }));
        added.extend(added6.enumerate().filter_map(|(i, e)| {
            Some(PexPeer {
                addr: parse_v6(e)?,
                flags: flag(flags6, i),
            })
        }));
        let mut dropped = Vec::with_capacity(dropped4.len() + dropped6.len());
        dropped.extend(dropped4.filter_map(parse_v4));
        dropped.extend(dropped6.filter_map(parse_v6));
        Ok(PexMessage { added, dropped })
    }

    /// Encodes the message. All six keys are written, empty ones as empty strings, as common clients
    /// do.
    pub fn encode(&self) -> Vec<u8> {
        let (mut a4, mut f4, mut a6, mut f6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for p in &self.added {
            if p.addr.is_ipv4() {
                write_addr(&mut a4, &p.addr);
                f4.push(p.flags.bits());
            } else {
                write_addr(&mut a6, &p.addr);
                f6.push(p.flags.bits());
            }
        }
        let (mut d4, mut d6) = (Vec::new(), Vec::new());
        for addr in &self.dropped {
            write_addr(if addr.is_ipv4() { &mut d4 } else { &mut d6 }, addr);
        }
        OwnedValue::dict()
            .with("added", a4)
            .with("added.f", f4)
            .with("added6", a6)
            .with("added6.f", f6)
            .with("dropped", d4)
            .with("dropped6", d6)
            .encode()
    }
}

/// PEX was asked for on a private torrent (BEP 27 forbids it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer exchange is disabled for private torrents (BEP 27)")]
pub struct PexPrivate;

/// Decides what to tell one connected peer about the torrent's other peers, and when.
///
/// It remembers what the recipient has been told is connected; each message carries the difference
/// between that and the current set, capped per message (the rest goes in later messages).
#[derive(Debug, Clone)]
pub struct PexSender {
    exclude: BTreeSet<SocketAddr>,
    told: BTreeMap<SocketAddr, PexFlags>,
    last_sent: Option<Instant>,
}

impl PexSender {
    /// A sender for the connection to `recipient`; refused for a private torrent.
    pub fn new(recipient: SocketAddr, private: bool) -> Result<PexSender, PexPrivate> {
        if private {
            return Err(PexPrivate);
        }
        Ok(PexSender {
            exclude: BTreeSet::from([recipient]),
            told: BTreeMap::new(),
            last_sent: None,
        })
    }

    /// Another address of the recipient (for example its listen address from the extension handshake
    /// `p`, when it connected to us from another port) that must never be mentioned to it.
    pub fn exclude(&mut self, addr: SocketAddr) {
        self.exclude.insert(addr);
    }

    /// The message to send now, if one is due and there is something to say. `connected` is the
    /// torrent's current set of connected peers (their listen addresses) with their flags. The first
    /// message may go at once; later ones at most once per [`PEX_INTERVAL`].
    pub fn poll_message(
        &mut self,
        now: Instant,
        connected: &BTreeMap<SocketAddr, PexFlags>,
    ) -> Option<PexMessage> {
        if self.next_send_time().is_some_and(|t| now < t) {
            return None;
        }
        let added: Vec<PexPeer> = connected
            .iter()
            .filter(|(addr, _)| !self.exclude.contains(*addr) && !self.told.contains_key(*addr))
            .take(MAX_ADDED_PER_MESSAGE)
            .map(|(addr, flags)| PexPeer {
                addr: *addr,
                flags: *flags,
            })
            .collect();
        let dropped: Vec<SocketAddr> = self
            .told
            .keys()
            .filter(|addr| !connected.contains_key(*addr) || self.exclude.contains(*addr))
            .take(MAX_DROPPED_PER_MESSAGE)
            .copied()
            .collect();
        let message = PexMessage { added, dropped };
        if message.is_empty() {
            return None;
        }
        for p in &message.added {
            self.told.insert(p.addr, p.flags);
        }
        for addr in &message.dropped {
            self.told.remove(addr);
        }
        self.last_sent = Some(now);
        Some(message)
    }

    /// The earliest time the next message may be sent (`None`: at once).
    pub fn next_send_time(&self) -> Option<Instant> {
        self.last_sent.map(|t| t + PEX_INTERVAL)
    }
}

/// Tunables of a [`PexReceiver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PexReceiverConfig {
    /// At most this many entries of each list (added, dropped) are looked at per message; the rest are
    /// ignored.
    pub max_per_message: usize,
    /// Messages from one peer closer together than this are ignored (honest senders wait a minute;
    /// this leaves slack for timer jitter).
    pub min_interval: Duration,
    /// Accept loopback addresses: only when we ourselves run on loopback (tests, local swarms).
    pub allow_loopback: bool,
}

impl Default for PexReceiverConfig {
    fn default() -> Self {
        PexReceiverConfig {
            max_per_message: 100,
            min_interval: Duration::from_secs(45),
            allow_loopback: false,
        }
    }
}

/// Why a received PEX message was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PexReceiveError {
    /// The peer sent PEX again too soon; the message is ignored.
    #[error("ut_pex message {since_last:?} after the previous one (at least {min:?} required)")]
    TooSoon {
        /// Time since the last accepted message.
        since_last: Duration,
        /// The required spacing.
        min: Duration,
    },
    /// The payload did not decode.
    #[error(transparent)]
    Decode(#[from] PexError),
}

/// What a received PEX message contributes to the address book, after filtering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexAccepted {
    /// Plausible new peer addresses (deduplicated, in message order).
    pub added: Vec<PexPeer>,
    /// Peers the sender no longer sees (a hint; the engine may lower their priority).
    pub dropped: Vec<SocketAddr>,
    /// Entries ignored: over the cap, duplicated, or unusable addresses.
    pub ignored: usize,
}

/// Whether `addr` is worth connecting to when a remote peer suggests it: not port 0, not unspecified,
/// multicast or broadcast, and not loopback unless `allow_loopback`. IPv4-mapped IPv6 addresses are
/// judged as the IPv4 address they carry.
pub fn is_plausible_peer_addr(addr: &SocketAddr, allow_loopback: bool) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let ip = match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    let bad = match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 0 || v4.is_broadcast() || v4.is_multicast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    };
    !bad && (allow_loopback || !ip.is_loopback())
}

/// Bounds what we take from one peer's PEX messages.
#[derive(Debug, Clone)]
pub struct PexReceiver {
    config: PexReceiverConfig,
    last_accepted: Option<Instant>,
}

impl PexReceiver {
    /// A receiver for one connection; refused for a private torrent.
    pub fn new(config: PexReceiverConfig, private: bool) -> Result<PexReceiver, PexPrivate> {
        if private {
            return Err(PexPrivate);
        }
        Ok(PexReceiver {
            config,
            last_accepted: None,
        })
    }

    /// Decodes and filters a `ut_pex` payload. The rate limit is checked first, so a flood costs no
    /// decoding.
    pub fn handle_payload(
        &mut self,
        now: Instant,
        payload: &[u8],
    ) -> Result<PexAccepted, PexReceiveError> {
        self.check_rate(now)?;
        let message = PexMessage::decode(payload)?;
        self.handle_message(now, &message)
    }

    /// Filters a decoded message: rate limit, per-message cap, address plausibility, duplicates.
    pub fn handle_message(
        &mut self,
        now: Instant,
        message: &PexMessage,
    ) -> Result<PexAccepted, PexReceiveError> {
        self.check_rate(now)?;
        self.last_accepted = Some(now);
        let cap = self.config.max_per_message;
        let allow = self.config.allow_loopback;
        let mut out = PexAccepted::default();
        let mut seen = BTreeSet::new();
        for p in message.added.iter().take(cap) {
            if is_plausible_peer_addr(&p.addr, allow) && seen.insert(p.addr) {
                out.added.push(*p);
            }
        }
        seen.clear();
        for addr in message.dropped.iter().take(cap) {
            if is_plausible_peer_addr(addr, allow) && seen.insert(*addr) {
                out.dropped.push(*addr);
            }
        }
        out.ignored =
            message.added.len() + message.dropped.len() - out.added.len() - out.dropped.len();
        Ok(out)
    }

    fn check_rate(&self, now: Instant) -> Result<(), PexReceiveError> {
        match self.last_accepted {
            Some(last) if now - last < self.config.min_interval => Err(PexReceiveError::TooSoon {
                since_last: now - last,
                min: self.config.min_interval,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([a, b, c, d], port))
    }

    fn v6(last: u16, port: u16) -> SocketAddr {
        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, last], port))
    }

    fn peer(addr: SocketAddr, flags: PexFlags) -> PexPeer {
        PexPeer { addr, flags }
    }

    #[test]
    fn round_trip_v4_v6_with_flags() {
        let msg = PexMessage {
            added: vec![
                peer(v4(10, 0, 0, 1, 6881), PexFlags::SEED | PexFlags::REACHABLE),
                peer(v4(192, 0, 2, 7, 51413), PexFlags::empty()),
                peer(v6(1, 6882), PexFlags::UTP | PexFlags::PREFERS_ENCRYPTION),
                peer(v6(2, 1), PexFlags::HOLEPUNCH),
            ],
            dropped: vec![v4(198, 51, 100, 9, 80), v6(3, 443)],
        };
        let bytes = msg.encode();
        let v = bencode::decode(&bytes).unwrap();
        assert_eq!(
            v.get(b"added").unwrap().as_bytes().unwrap(),
            &[10, 0, 0, 1, 0x1a, 0xe1, 192, 0, 2, 7, 0xc8, 0xd5]
        );
        assert_eq!(v.get(b"added.f").unwrap().as_bytes().unwrap(), &[0x12, 0]);
        assert_eq!(
            v.get(b"added6.f").unwrap().as_bytes().unwrap(),
            &[0x05, 0x08]
        );
        assert_eq!(v.get(b"added6").unwrap().as_bytes().unwrap().len(), 36);
        assert_eq!(v.get(b"dropped6").unwrap().as_bytes().unwrap().len(), 18);
        assert_eq!(PexMessage::decode(&bytes), Ok(msg));
    }

    #[test]
    fn decoder_is_lenient_about_missing_keys_and_flags() {
        assert_eq!(PexMessage::decode(b"de"), Ok(PexMessage::default()));
        // `added` without `added.f`; unknown keys ignored.
        let m = PexMessage::decode(b"d5:added6:\x7f\x00\x00\x01\x1a\xe11:xi1ee").unwrap();
        assert_eq!(
            m.added,
            vec![peer(v4(127, 0, 0, 1, 6881), PexFlags::empty())]
        );
        // Flags shorter than the list: the rest have none; longer: extras ignored; unknown bits kept.
        let m = PexMessage::decode(
            b"d5:added12:\x01\x02\x03\x04\x00\x01\x05\x06\x07\x08\x00\x027:added.f1:\x82e",
        )
        .unwrap();
        assert_eq!(m.added[0].flags.bits(), 0x82);
        assert_eq!(m.added[1].flags, PexFlags::empty());
        let m = PexMessage::decode(b"d5:added6:\x01\x02\x03\x04\x00\x017:added.f3:\x02\x01\x01e")
            .unwrap();
        assert_eq!(m.added, vec![peer(v4(1, 2, 3, 4, 1), PexFlags::SEED)]);
    }

    #[test]
    fn decoder_is_strict_about_entry_sizes_and_types() {
        assert_eq!(
            PexMessage::decode(b"d5:added7:\x01\x02\x03\x04\x00\x01\x09e"),
            Err(PexError::BadLength {
                field: "added",
                len: 7,
                entry: 6
            })
        );
        assert_eq!(
            PexMessage::decode(b"d8:dropped66:abcdefe"),
            Err(PexError::BadLength {
                field: "dropped6",
                len: 6,
                entry: 18
            })
        );
        assert_eq!(
            PexMessage::decode(b"d5:addedi5ee"),
            Err(PexError::WrongType {
                field: "added",
                offset: 8,
                found: "integer"
            })
        );
        assert_eq!(
            PexMessage::decode(b"le"),
            Err(PexError::NotADictionary("list"))
        );
        assert!(matches!(
            PexMessage::decode(b"dexx"),
            Err(PexError::Bencode(_))
        ));
        let text = PexMessage::decode(b"d5:added7:abcdefge")
            .unwrap_err()
            .to_string();
        assert!(text.contains("`added`") && text.contains('7'), "{text}");
    }

    #[test]
    fn private_torrents_get_no_pex() {
        assert_eq!(
            PexSender::new(v4(1, 1, 1, 1, 1), true).unwrap_err(),
            PexPrivate
        );
        assert!(PexReceiver::new(PexReceiverConfig::default(), true).is_err());
        assert!(PexSender::new(v4(1, 1, 1, 1, 1), false).is_ok());
    }

    fn set(addrs: &[SocketAddr]) -> BTreeMap<SocketAddr, PexFlags> {
        addrs.iter().map(|a| (*a, PexFlags::empty())).collect()
    }

    #[test]
    fn sender_sends_diffs_once_a_minute_and_never_the_recipient() {
        let me = v4(10, 0, 0, 99, 6881);
        let (a, b, c) = (v4(10, 0, 0, 1, 1), v4(10, 0, 0, 2, 2), v6(3, 3));
        let mut s = PexSender::new(me, false).unwrap();
        let t0 = Instant::from_secs(1000);
        assert_eq!(s.next_send_time(), None);
        // Nothing to say (only the recipient itself is connected): no message, clock not started.
        assert_eq!(s.poll_message(t0, &set(&[me])), None);
        let first = s.poll_message(t0, &set(&[me, a, b])).unwrap();
        assert_eq!(
            first.added.iter().map(|p| p.addr).collect::<Vec<_>>(),
            vec![a, b]
        );
        assert!(first.dropped.is_empty());
        assert_eq!(s.next_send_time(), Some(t0 + PEX_INTERVAL));
        // Changes within the minute wait.
        let now = set(&[me, b, c]);
        assert_eq!(s.poll_message(t0 + Duration::from_secs(59), &now), None);
        let second = s.poll_message(t0 + PEX_INTERVAL, &now).unwrap();
        assert_eq!(second.added, vec![peer(c, PexFlags::empty())]);
        assert_eq!(second.dropped, vec![a]);
        // No change: nothing sent even when due.
        assert_eq!(s.poll_message(t0 + Duration::from_secs(200), &now), None);
        // Another address of the recipient is excluded, and dropped if it had been told.
        s.exclude(b);
        let third = s.poll_message(t0 + Duration::from_secs(200), &now).unwrap();
        assert_eq!((third.added.len(), third.dropped.clone()), (0, vec![b]));
    }

    #[test]
    fn sender_caps_each_message_and_sends_the_rest_later() {
        let me = v4(10, 0, 0, 99, 6881);
        let many: Vec<SocketAddr> = (1..=120u16)
            .map(|i| v4(10, 1, (i >> 8) as u8, i as u8, i))
            .collect();
        let mut s = PexSender::new(me, false).unwrap();
        let mut t = Instant::from_secs(0);
        let connected = set(&many);
        let mut told = BTreeSet::new();
        for expect in [50, 50, 20] {
            let m = s.poll_message(t, &connected).unwrap();
            assert_eq!(m.added.len(), expect);
            told.extend(m.added.iter().map(|p| p.addr));
            t += PEX_INTERVAL;
        }
        assert_eq!(told.len(), 120);
        assert_eq!(s.poll_message(t, &connected), None);
        // Everyone leaves: dropped is capped the same way.
        let empty = BTreeMap::new();
        for expect in [50, 50, 20] {
            let m = s.poll_message(t, &empty).unwrap();
            assert_eq!((m.added.len(), m.dropped.len()), (0, expect));
            t += PEX_INTERVAL;
        }
    }

    #[test]
    fn receiver_filters_addresses() {
        let mut r = PexReceiver::new(PexReceiverConfig::default(), false).unwrap();
        let good4 = v4(203, 0, 113, 5, 6881);
        let good6 = v6(9, 6881);
        let msg = PexMessage {
            added: vec![
                peer(good4, PexFlags::SEED),
                peer(v4(127, 0, 0, 1, 6881), PexFlags::empty()),
                peer(v4(0, 0, 0, 0, 6881), PexFlags::empty()),
                peer(v4(224, 0, 0, 1, 6881), PexFlags::empty()),
                peer(v4(255, 255, 255, 255, 6881), PexFlags::empty()),
                peer(v4(203, 0, 113, 6, 0), PexFlags::empty()),
                peer(
                    SocketAddr::from((Ipv6Addr::LOCALHOST, 1)),
                    PexFlags::empty(),
                ),
                peer(
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, 1)),
                    PexFlags::empty(),
                ),
                peer(
                    SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), 1)),
                    PexFlags::empty(),
                ),
                peer(
                    SocketAddr::from(([0xff02, 0, 0, 0, 0, 0, 0, 1], 1)),
                    PexFlags::empty(),
                ),
                peer(good6, PexFlags::UTP),
                peer(good4, PexFlags::SEED), // duplicate
            ],
            dropped: vec![v4(127, 0, 0, 2, 1), v4(198, 51, 100, 1, 1)],
        };
        let got = r.handle_message(Instant::ZERO, &msg).unwrap();
        assert_eq!(
            got.added,
            vec![peer(good4, PexFlags::SEED), peer(good6, PexFlags::UTP)]
        );
        assert_eq!(got.dropped, vec![v4(198, 51, 100, 1, 1)]);
        assert_eq!(got.ignored, 11);
        // When we run on loopback ourselves, loopback peers are fine (port 0 still is not).
        let config = PexReceiverConfig {
            allow_loopback: true,
            ..PexReceiverConfig::default()
        };
        let mut local = PexReceiver::new(config, false).unwrap();
        let got = local.handle_message(Instant::ZERO, &msg).unwrap();
        assert_eq!(got.added.len(), 5);
        assert!(got.added.iter().all(|p| p.addr.port() != 0));
    }

    #[test]
    fn receiver_rate_limits_per_peer() {
        let config = PexReceiverConfig::default();
        let mut r = PexReceiver::new(config, false).unwrap();
        let msg = PexMessage {
            added: vec![peer(v4(203, 0, 113, 5, 6881), PexFlags::empty())],
            dropped: vec![],
        };
        let t0 = Instant::from_secs(500);
        assert!(r.handle_payload(t0, &msg.encode()).is_ok());
        let soon = t0 + Duration::from_secs(44);
        assert_eq!(
            r.handle_payload(soon, &msg.encode()),
            Err(PexReceiveError::TooSoon {
                since_last: Duration::from_secs(44),
                min: config.min_interval
            })
        );
        // A refused message does not restart the clock.
        assert!(r.handle_message(t0 + config.min_interval, &msg).is_ok());
        // Garbage is reported, and does not count as a message either.
        let later = t0 + Duration::from_secs(200);
        assert!(matches!(
            r.handle_payload(later, b"d5:added1:xe"),
            Err(PexReceiveError::Decode(PexError::BadLength { .. }))
        ));
        assert!(r.handle_payload(later, &msg.encode()).is_ok());
    }

    #[test]
    fn receiver_caps_entries_per_message() {
        let config = PexReceiverConfig {
            max_per_message: 100,
            ..PexReceiverConfig::default()
        };
        let mut r = PexReceiver::new(config, false).unwrap();
        let added: Vec<PexPeer> = (0..300u16)
            .map(|i| {
                peer(
                    v4(198, 18, (i >> 8) as u8, i as u8, 1000 + i),
                    PexFlags::empty(),
                )
            })
            .collect();
        let dropped: Vec<SocketAddr> = added.iter().take(150).map(|p| p.addr).collect();
        let got = r
            .handle_message(
                Instant::ZERO,
                &PexMessage {
                    added: added.clone(),
                    dropped,
                },
            )
            .unwrap();
        assert_eq!(got.added, added[..100].to_vec());
        assert_eq!(got.dropped.len(), 100);
        assert_eq!(got.ignored, 250);
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ]
    }

    fn message() -> impl Strategy<Value = PexMessage> {
        let peers = proptest::collection::vec((addr(), any::<u8>()), 0..30);
        (peers, proptest::collection::vec(addr(), 0..30)).prop_map(|(added, dropped)| {
            let mut added: Vec<PexPeer> = added
                .into_iter()
                .map(|(addr, f)| peer(addr, PexFlags::from_bits_retain(f)))
                .collect();
            // The decoder yields IPv4 entries first.
            added.sort_by_key(|p| p.addr.is_ipv6());
            let mut dropped = dropped;
            dropped.sort_by_key(|a| a.is_ipv6());
            PexMessage { added, dropped }
        })
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = PexMessage::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutated_messages(
            msg in message(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = msg.encode();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let _ = PexMessage::decode(&bytes);
            bytes.truncate(i);
            let _ = PexMessage::decode(&bytes);
        }

        #[test]
        fn encode_decode_round_trip(msg in message()) {
            let bytes = msg.encode();
            prop_assert_eq!(PexMessage::decode(&bytes), Ok(msg));
        }

        /// Whatever the sequence of connected sets, the recipient's picture built from the messages
        /// matches the last set (minus itself) once enough minutes pass, and every message obeys the
        /// caps and the spacing.
        #[test]
        fn sender_view_converges(
            steps in proptest::collection::vec(
                proptest::collection::btree_set(0u16..200, 0..120), 1..6),
        ) {
            let me = v4(10, 9, 9, 9, 5);
            let to_addr = |i: u16| v4(10, 2, (i >> 8) as u8, i as u8, 7000 + i);
            let mut s = PexSender::new(me, false).unwrap();
            let mut view: BTreeSet<SocketAddr> = BTreeSet::new();
            let mut t = Instant::ZERO;
            let mut last: Option<Instant> = None;
            let mut connected = BTreeMap::new();
            for step in &steps {
                connected = step.iter().map(|i| (to_addr(*i), PexFlags::empty())).collect();
                connected.insert(me, PexFlags::empty());
                for _ in 0..6 {
                    if let Some(m) = s.poll_message(t, &connected) {
                        prop_assert!(m.added.len() <= MAX_ADDED_PER_MESSAGE);
                        prop_assert!(m.dropped.len() <= MAX_DROPPED_PER_MESSAGE);
                        prop_assert!(m.added.iter().all(|p| p.addr != me));
                        if let Some(l) = last {
                            prop_assert!(t - l >= PEX_INTERVAL);
                        }
                        last = Some(t);
                        for p in &m.added {
                            prop_assert!(view.insert(p.addr));
                        }
                        for a in &m.dropped {
                            prop_assert!(view.remove(a));
                        }
                    }
                    t += Duration::from_secs(30);
                }
            }
            for _ in 0..8 {
                if let Some(m) = s.poll_message(t, &connected) {
                    view.extend(m.added.iter().map(|p| p.addr));
                    for a in &m.dropped {
                        view.remove(a);
                    }
                }
                t += PEX_INTERVAL;
            }
            connected.remove(&me);
            prop_assert_eq!(view, connected.keys().copied().collect::<BTreeSet<_>>());
        }
    }
}

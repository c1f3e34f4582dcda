//! Tests of sessions that start without the torrent's metadata (magnet links) and of our BEP 10
//! extension handshake fields.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::bencode;
use crate::bitfield::Bitfield;
use crate::picker::PeerPieces;
use crate::time::Instant;
use crate::wire::{self, Decoder, Handshake, Message, Reserved};

const PL: u32 = 32 * 1024;
const IH: InfoHash = InfoHash([7; 20]);
const ID_A: PeerId = PeerId(*b"-HB0100-aaaaaaaaaaaa");
const ID_B: PeerId = PeerId(*b"-XX0001-bbbbbbbbbbbb");
const BOTH: Reserved = Reserved::FAST.union(Reserved::EXTENSION_PROTOCOL);

/// 10 pieces of 32 KiB, the last one 1000 bytes.
fn geo() -> Geometry {
    Geometry::new(PL, u64::from(PL) * 9 + 1000).unwrap()
}

fn t(s: u64) -> Instant {
    Instant::from_secs(s)
}

fn enc(m: Message) -> Vec<u8> {
    let mut b = BytesMut::new();
    m.encode(&mut b).unwrap();
    b.to_vec()
}

fn drain(s: &mut PeerSession) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Messages a session sent (its 68-byte handshake, if still queued, is skipped).
fn sent(s: &mut PeerSession) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(b) = s.poll_transmit() {
        out.extend_from_slice(&b);
    }
    let body = if out.get(..20) == Some(&b"\x13BitTorrent protocol"[..]) {
        out.split_off(68)
    } else {
        out
    };
    let mut d = Decoder::new_after_handshake(1 << 20);
    d.extend(&body);
    let mut msgs = Vec::new();
    while let Ok(Some(wire::Decoded::Message(m))) = d.decode() {
        msgs.push(m);
    }
    msgs
}

fn ext_handshake(msgs: &[Message]) -> Vec<Bytes> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Extended { id: 0, payload } => Some(payload.clone()),
            _ => None,
        })
        .collect()
}

/// An outgoing session without metadata, fed the peer's handshake plus `then`.
fn magnet_session(peer_reserved: Reserved, then: &[u8]) -> PeerSession {
    let cfg = SessionConfig {
        reserved: BOTH,
        ..SessionConfig::default()
    };
    let mut s = PeerSession::outgoing_without_metadata(cfg, IH, ID_A, t(0));
    let mut bytes = Handshake::new(IH, ID_B, peer_reserved).to_bytes().to_vec();
    bytes.extend_from_slice(then);
    s.handle_read(t(0), &bytes);
    s
}

#[test]
fn without_metadata_we_send_have_none_and_never_a_bitfield() {
    let mut s = magnet_session(BOTH, &[]);
    assert!(s.is_established());
    assert!(!s.has_geometry());
    let msgs = sent(&mut s);
    assert_eq!(msgs.first(), Some(&Message::HaveNone));
    assert!(!msgs
        .iter()
        .any(|m| matches!(m, Message::Bitfield(_) | Message::HaveAll)));
    // Without the fast extension: nothing at all about our pieces.
    let mut s = magnet_session(Reserved::EXTENSION_PROTOCOL, &[]);
    let msgs = sent(&mut s);
    assert!(!msgs.iter().any(|m| matches!(
        m,
        Message::Bitfield(_) | Message::HaveAll | Message::HaveNone
    )));
}

#[test]
fn raw_bitfield_and_early_haves_are_validated_when_the_geometry_arrives() {
    // Pieces 0 and 2 in the bitfield (10 pieces: 2 bytes), then `have 9`.
    let mut open = enc(Message::Bitfield(Bytes::from_static(&[0b1010_0000, 0])));
    open.extend(enc(Message::Have { piece: 9 }));
    let mut s = magnet_session(BOTH, &open);
    let ev = drain(&mut s);
    assert!(!ev
        .iter()
        .any(|e| matches!(e, Event::Bitfield | Event::Have(_) | Event::Closed { .. })));
    sent(&mut s);
    let mut ours = Bitfield::new(10);
    ours.set(4);
    s.set_geometry(t(1), geo(), &ours).unwrap();
    assert_eq!(drain(&mut s), vec![Event::Bitfield]);
    let PeerPieces::Bitfield(b) = s.peer_pieces() else {
        panic!("expected a bitfield");
    };
    assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 2, 9]);
    // Our own piece goes out as `have` (a bitfield would be too late now).
    assert_eq!(sent(&mut s), vec![Message::Have { piece: 4 }]);
    assert_eq!(
        s.set_geometry(t(1), geo(), &Bitfield::new(10)),
        Err(SetupError::GeometryKnown)
    );
}

/// aria2's mid-connection bitfield before we have the metadata: its pieces join the early haves.
#[test]
fn a_late_bitfield_without_metadata_joins_the_early_haves() {
    let mut open = enc(Message::Bitfield(Bytes::from_static(&[0b1000_0000, 0])));
    open.extend(enc(Message::Have { piece: 3 }));
    open.extend(enc(Message::Bitfield(Bytes::from_static(&[
        0b0010_0000,
        0b0100_0000,
    ]))));
    let mut s = magnet_session(BOTH, &open);
    assert!(s.is_established());
    drain(&mut s);
    s.set_geometry(t(1), geo(), &Bitfield::new(10)).unwrap();
    assert_eq!(drain(&mut s), vec![Event::Bitfield]);
    let PeerPieces::Bitfield(b) = s.peer_pieces() else {
        panic!("expected a bitfield");
    };
    assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 2, 3, 9]);
}

#[test]
fn a_bitfield_of_the_wrong_length_ends_the_session_once_the_count_is_known() {
    let mut s = magnet_session(
        BOTH,
        &enc(Message::Bitfield(Bytes::from_static(&[0xff; 3]))),
    );
    assert!(s.is_established());
    s.set_geometry(t(1), geo(), &Bitfield::new(10)).unwrap();
    let ev = drain(&mut s);
    assert!(matches!(
        ev.last(),
        Some(Event::Closed {
            error: SessionError::BadBitfield(_)
        })
    ));
    // An early `have` past the piece count does the same.
    let mut s = magnet_session(BOTH, &enc(Message::Have { piece: 10 }));
    s.set_geometry(t(1), geo(), &Bitfield::new(10)).unwrap();
    assert!(matches!(
        drain(&mut s).last(),
        Some(Event::Closed {
            error: SessionError::PieceOutOfRange { piece: 10, .. }
        })
    ));
    // And one past any possible count ends it at once.
    let s = magnet_session(
        BOTH,
        &enc(Message::Have {
            piece: MAX_PIECES_WITHOUT_METADATA,
        }),
    );
    assert!(s.is_closed());
}

#[test]
fn have_all_works_without_a_piece_count_and_is_repeated_with_it() {
    let mut s = magnet_session(BOTH, &enc(Message::HaveAll));
    assert!(drain(&mut s).contains(&Event::HaveAll));
    assert!(matches!(s.peer_pieces(), PeerPieces::All));
    s.set_geometry(t(1), geo(), &Bitfield::new(10)).unwrap();
    assert_eq!(drain(&mut s), vec![Event::HaveAll]);
    assert!(s.peer_has(9));
}

#[test]
fn requests_before_metadata_are_rejected_under_the_fast_extension() {
    let r = wire::BlockRequest {
        index: 0,
        begin: 0,
        length: 16384,
    };
    let mut s = magnet_session(BOTH, &enc(Message::Request(r)));
    assert!(!s.is_closed());
    assert!(sent(&mut s).contains(&Message::RejectRequest(r)));
}

#[test]
fn incoming_session_accepted_without_metadata_learns_the_geometry_later() {
    let cfg = SessionConfig {
        reserved: BOTH,
        ..SessionConfig::default()
    };
    let mut s = PeerSession::incoming(cfg, ID_A, t(0));
    let mut bytes = Handshake::new(IH, ID_B, BOTH).to_bytes().to_vec();
    bytes.extend(enc(Message::Bitfield(Bytes::from_static(&[0xff, 0xc0]))));
    s.handle_read(t(0), &bytes);
    assert!(matches!(
        drain(&mut s).first(),
        Some(Event::HandshakeReceived { .. })
    ));
    s.accept_without_metadata(t(0)).unwrap();
    assert!(s.is_established());
    s.set_geometry(t(1), geo(), &Bitfield::new(10)).unwrap();
    assert!(drain(&mut s).contains(&Event::Bitfield));
    assert!(s.peer_has(9));
}

#[test]
fn our_extension_handshake_carries_m_metadata_size_and_yourip() {
    let mut s = PeerSession::outgoing(
        SessionConfig {
            reserved: BOTH,
            listen_port: Some(6881),
            ..SessionConfig::default()
        },
        geo(),
        IH,
        ID_A,
        &Bitfield::new(10),
        t(0),
    )
    .unwrap();
    s.set_our_extensions(
        t(0),
        OurExtensions {
            messages: crate::ext::local_extensions(false),
            metadata_size: Some(12345),
            your_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        },
    );
    s.handle_read(t(0), &Handshake::new(IH, ID_B, BOTH).to_bytes());
    let hs = ext_handshake(&sent(&mut s));
    assert_eq!(hs.len(), 1);
    let v = bencode::decode(&hs[0]).unwrap();
    assert_eq!(
        v.get(b"metadata_size").and_then(|x| x.as_int()),
        Some(12345)
    );
    assert_eq!(
        v.get(b"yourip").and_then(|x| x.as_bytes()),
        Some(&[10u8, 1, 2, 3][..])
    );
    assert_eq!(v.get(b"p").and_then(|x| x.as_int()), Some(6881));
    let m = v.get(b"m").unwrap();
    assert_eq!(m.get(b"ut_metadata").and_then(|x| x.as_int()), Some(1));
    assert_eq!(m.get(b"ut_pex").and_then(|x| x.as_int()), Some(2));

    // A change after the handshake sends it again (IPv6 yourip is 16 bytes; private: no ut_pex).
    let ip6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    s.set_our_extensions(
        t(1),
        OurExtensions {
            messages: crate::ext::local_extensions(true),
            metadata_size: None,
            your_ip: Some(IpAddr::V6(ip6)),
        },
    );
    let hs = ext_handshake(&sent(&mut s));
    assert_eq!(hs.len(), 1);
    let v = bencode::decode(&hs[0]).unwrap();
    assert!(v.get(b"metadata_size").is_none());
    assert_eq!(
        v.get(b"yourip").and_then(|x| x.as_bytes()),
        Some(&ip6.octets()[..])
    );
    assert!(v.get(b"m").unwrap().get(b"ut_pex").is_none());
}

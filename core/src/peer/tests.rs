//! Tests of the peer session: two sessions piped into each other, and hand-made byte streams, all on a
//! virtual clock.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
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

fn blk(piece: u32, offset: u32, length: u32) -> BlockRequest {
    BlockRequest {
        piece,
        offset,
        length,
    }
}

fn cfg(reserved: Reserved) -> SessionConfig {
    SessionConfig {
        reserved,
        ..SessionConfig::default()
    }
}

fn enc(m: Message) -> Vec<u8> {
    let mut b = BytesMut::new();
    m.encode(&mut b).unwrap();
    b.to_vec()
}

fn wreq(b: BlockRequest) -> wire::BlockRequest {
    wire::BlockRequest {
        index: b.piece,
        begin: b.offset,
        length: b.length,
    }
}

fn peer_hs(reserved: Reserved) -> Vec<u8> {
    Handshake::new(IH, ID_B, reserved).to_bytes().to_vec()
}

fn drain(s: &mut PeerSession) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn drain_tx(s: &mut PeerSession) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = s.poll_transmit() {
        out.extend_from_slice(&b);
    }
    out
}

/// Decodes bytes a session sent after its handshake.
fn sent(s: &mut PeerSession) -> Vec<Message> {
    let mut d = Decoder::new_after_handshake(1 << 20);
    d.extend(&drain_tx(s));
    let mut out = Vec::new();
    while let Some(wire::Decoded::Message(m)) = d.decode().unwrap() {
        out.push(m);
    }
    out
}

fn closed_error(events: &[Event]) -> Option<&SessionError> {
    events.iter().find_map(|e| match e {
        Event::Closed { error } => Some(error),
        _ => None,
    })
}

/// An outgoing session fed the peer's handshake plus `then`; its own handshake and opening are drained.
fn raw(
    config: SessionConfig,
    peer_reserved: Reserved,
    have: &Bitfield,
    then: &[u8],
) -> PeerSession {
    let mut s = PeerSession::outgoing(config, geo(), IH, ID_A, have, t(0)).unwrap();
    let ours = drain_tx(&mut s);
    assert_eq!(ours.len(), 68);
    assert_eq!(Handshake::parse(&ours).unwrap().peer_id, ID_A);
    let mut bytes = peer_hs(peer_reserved);
    bytes.extend_from_slice(then);
    s.handle_read(t(0), &bytes);
    s
}

/// A session whose peer has all pieces and unchoked us, with us interested; everything drained.
fn downloading(config: SessionConfig) -> PeerSession {
    let mut open = enc(Message::HaveAll);
    open.extend(enc(Message::Unchoke));
    let mut s = raw(config, BOTH, &Bitfield::new(10), &open);
    s.set_interested(t(0), true);
    drain(&mut s);
    drain_tx(&mut s);
    s
}

/// A session whose peer is interested and that we unchoked while having every piece.
fn serving(config: SessionConfig, peer_reserved: Reserved) -> PeerSession {
    let mut open = enc(Message::HaveNone);
    if !peer_reserved.contains(Reserved::FAST) {
        open.clear();
    }
    open.extend(enc(Message::Interested));
    let mut s = raw(config, peer_reserved, &Bitfield::full(10), &open);
    s.set_choking(t(0), false);
    drain(&mut s);
    drain_tx(&mut s);
    s
}

/// Moves bytes both ways until neither side has anything to send.
fn pump(a: &mut PeerSession, b: &mut PeerSession, now: Instant) {
    loop {
        let mut moved = false;
        while let Some(x) = a.poll_transmit() {
            b.handle_read(now, &x);
            moved = true;
        }
        while let Some(x) = b.poll_transmit() {
            a.handle_read(now, &x);
            moved = true;
        }
        if !moved {
            break;
        }
    }
}

/// A (outgoing) connected to B (incoming, accepted).
fn pair(
    ca: SessionConfig,
    cb: SessionConfig,
    have_a: &Bitfield,
    have_b: &Bitfield,
) -> (PeerSession, PeerSession) {
    let now = t(1);
    let ra = ca.reserved;
    let mut a = PeerSession::outgoing(ca, geo(), IH, ID_A, have_a, now).unwrap();
    let mut b = PeerSession::incoming(cb, ID_B, now);
    pump(&mut a, &mut b, now);
    let ev = drain(&mut b);
    assert_eq!(
        ev,
        vec![Event::HandshakeReceived {
            info_hash: IH,
            peer_id: ID_A,
            reserved: ra,
        }]
    );
    b.accept(now, geo(), have_b).unwrap();
    pump(&mut a, &mut b, now);
    (a, b)
}

// ----- handshake -----------------------------------------------------------------------------------

#[test]
fn handshake_bitfield_and_have_in_one_read() {
    let mut rest = enc(Message::Bitfield(Bytes::from_static(&[
        0b1010_0000,
        0b0100_0000,
    ])));
    rest.extend(enc(Message::Have { piece: 3 }));
    rest.extend(enc(Message::Have { piece: 2 })); // already had: no event
    let mut s = raw(
        cfg(Reserved::empty()),
        Reserved::empty(),
        &Bitfield::new(10),
        &rest,
    );
    let ev = drain(&mut s);
    assert_eq!(
        ev,
        vec![
            Event::Established {
                peer_id: ID_B,
                reserved: Reserved::empty(),
                fast: false,
                extension_protocol: false
            },
            Event::Bitfield,
            Event::Have(3),
        ]
    );
    assert!(s.is_established());
    let PeerPieces::Bitfield(bf) = s.peer_pieces() else {
        panic!("expected a bitfield")
    };
    assert_eq!(bf.iter_ones().collect::<Vec<_>>(), vec![0, 2, 3, 9]);
    assert!(s.peer_has(9) && !s.peer_has(1) && !s.peer_has(10));
    // We have nothing and there is no fast extension: nothing to announce.
    assert!(sent(&mut s).is_empty());
}

#[test]
fn two_sessions_negotiate_fast_and_extension_protocol() {
    let mut cb = cfg(BOTH);
    cb.listen_port = Some(6881);
    let (mut a, mut b) = pair(cfg(BOTH), cb, &Bitfield::new(10), &Bitfield::full(10));
    let ea = drain(&mut a);
    assert!(matches!(
        ea[0],
        Event::Established {
            peer_id: ID_B,
            fast: true,
            extension_protocol: true,
            ..
        }
    ));
    assert!(ea.contains(&Event::HaveAll));
    assert!(ea
        .iter()
        .any(|e| matches!(e, Event::Extended { id: 0, .. })));
    assert!(matches!(a.peer_pieces(), PeerPieces::All));
    assert_eq!(a.peer_extensions().reqq, Some(500));
    assert_eq!(a.peer_extensions().client.as_deref(), Some(CLIENT_VERSION));
    assert_eq!(a.peer_extensions().listen_port, Some(6881));
    let eb = drain(&mut b);
    assert!(eb.contains(&Event::HaveNone));
    assert!(b.fast_enabled() && b.extension_protocol_enabled());
    assert!(a.peer_choking() && b.am_choking());
}

#[test]
fn extensions_are_used_only_when_both_sides_set_them() {
    let (mut a, mut b) = pair(
        cfg(Reserved::FAST),
        cfg(BOTH),
        &Bitfield::new(10),
        &Bitfield::full(10),
    );
    assert!(a.fast_enabled() && !a.extension_protocol_enabled());
    assert!(b.fast_enabled() && !b.extension_protocol_enabled());
    assert!(!drain(&mut a)
        .iter()
        .any(|e| matches!(e, Event::Extended { .. })));
    drain(&mut b);

    let mut half = Bitfield::new(10);
    half.set(4);
    let (mut a, _b) = pair(
        cfg(Reserved::EXTENSION_PROTOCOL),
        cfg(BOTH),
        &Bitfield::new(10),
        &half,
    );
    assert!(!a.fast_enabled() && a.extension_protocol_enabled());
    let ea = drain(&mut a);
    // Without the fast extension a plain bitfield is sent.
    assert!(ea.contains(&Event::Bitfield));
    assert!(a.peer_has(4) && !a.peer_has(5));
}

#[test]
fn incoming_handshake_waits_for_accept_then_processes_buffered_messages() {
    let mut b = PeerSession::incoming(cfg(BOTH), ID_B, t(0));
    let mut bytes = Handshake::new(IH, ID_A, Reserved::FAST).to_bytes().to_vec();
    bytes.extend(enc(Message::HaveAll));
    bytes.extend(enc(Message::Interested));
    b.handle_read(t(0), &bytes);
    assert_eq!(
        drain(&mut b),
        vec![Event::HandshakeReceived {
            info_hash: IH,
            peer_id: ID_A,
            reserved: Reserved::FAST
        }]
    );
    assert!(b.poll_transmit().is_none(), "nothing is sent before accept");
    b.accept(t(0), geo(), &Bitfield::full(10)).unwrap();
    let ev = drain(&mut b);
    assert!(matches!(ev[0], Event::Established { fast: true, .. }));
    assert_eq!(&ev[1..], &[Event::HaveAll, Event::Interested]);
    let out = drain_tx(&mut b);
    let hs = Handshake::parse(&out[..68]).unwrap();
    assert_eq!((hs.info_hash, hs.peer_id), (IH, ID_B));
    assert_eq!(&out[68..], &enc(Message::HaveAll)[..]);
    assert_eq!(
        b.accept(t(0), geo(), &Bitfield::full(10)),
        Err(SetupError::NotAwaitingAccept)
    );
}

#[test]
fn incoming_for_a_torrent_we_do_not_serve_is_rejected() {
    let mut b = PeerSession::incoming(cfg(BOTH), ID_B, t(0));
    b.handle_read(t(0), &Handshake::new(IH, ID_A, BOTH).to_bytes());
    drain(&mut b);
    b.reject().unwrap();
    assert_eq!(
        closed_error(&drain(&mut b)),
        Some(&SessionError::NotServed(IH))
    );
    assert!(b.is_closed() && b.poll_transmit().is_none() && b.poll_timeout().is_none());
}

#[test]
fn a_flood_before_accept_is_bounded() {
    let mut b = PeerSession::incoming(cfg(BOTH), ID_B, t(0));
    b.handle_read(t(0), &Handshake::new(IH, ID_A, BOTH).to_bytes());
    let junk = vec![0u8; 100 * 1024];
    for _ in 0..3 {
        b.handle_read(t(0), &junk);
    }
    assert!(matches!(
        b.error(),
        Some(SessionError::BufferedBeforeAccept { .. })
    ));
    assert_eq!(b.buffered_incoming(), 0);
}

#[test]
fn connection_to_ourselves_is_refused() {
    let mut a =
        PeerSession::outgoing(cfg(BOTH), geo(), IH, ID_A, &Bitfield::new(10), t(0)).unwrap();
    let mine = drain_tx(&mut a);
    // Our own handshake echoed back (as when we dial our own listen address).
    a.handle_read(t(0), &mine);
    assert_eq!(a.error(), Some(&SessionError::ConnectedToSelf(ID_A)));

    let mut b = PeerSession::incoming(cfg(BOTH), ID_A, t(0));
    b.handle_read(t(0), &mine);
    assert_eq!(b.error(), Some(&SessionError::ConnectedToSelf(ID_A)));
    assert!(!drain(&mut b)
        .iter()
        .any(|e| matches!(e, Event::HandshakeReceived { .. })));
}

#[test]
fn wrong_info_hash_is_refused() {
    let mut a =
        PeerSession::outgoing(cfg(BOTH), geo(), IH, ID_A, &Bitfield::new(10), t(0)).unwrap();
    a.handle_read(
        t(0),
        &Handshake::new(InfoHash([9; 20]), ID_B, BOTH).to_bytes(),
    );
    assert!(matches!(
        a.error(),
        Some(SessionError::InfoHashMismatch { .. })
    ));
}

#[test]
fn handshake_timeout_closes() {
    let mut a =
        PeerSession::outgoing(cfg(BOTH), geo(), IH, ID_A, &Bitfield::new(10), t(0)).unwrap();
    assert_eq!(a.poll_timeout(), Some(t(30)));
    a.handle_timeout(t(29));
    assert!(!a.is_closed());
    a.handle_timeout(t(30));
    assert_eq!(
        a.error(),
        Some(&SessionError::HandshakeTimeout(Duration::from_secs(30)))
    );
}

#[test]
fn state_set_before_the_handshake_is_sent_after_it() {
    let mut a =
        PeerSession::outgoing(cfg(BOTH), geo(), IH, ID_A, &Bitfield::new(10), t(0)).unwrap();
    a.set_interested(t(0), true);
    a.set_choking(t(0), false);
    assert!(a.send_have(t(0), 2));
    drain_tx(&mut a);
    a.handle_read(t(0), &peer_hs(Reserved::empty()));
    let mut expect_bf = Bitfield::new(10);
    expect_bf.set(2);
    assert_eq!(
        sent(&mut a),
        vec![
            Message::Bitfield(Bytes::copy_from_slice(expect_bf.as_bytes())),
            Message::Unchoke,
            Message::Interested
        ]
    );
}

// ----- have-state validation -----------------------------------------------------------------------

/// aria2 1.36 batches its `have`s into a `bitfield` sent in the middle of a connection (we used to
/// close with "peer sent bitfield as message #19"). A later bitfield is read as a set of haves: new
/// pieces become `Have` events, cleared bits take nothing away, a bad length still ends the session.
/// A late have all / have none stays an error.
#[test]
fn late_bitfield_is_a_set_of_haves() {
    let mut rest = enc(Message::Bitfield(Bytes::from_static(&[0b1000_0000, 0])));
    rest.extend(enc(Message::Unchoke));
    rest.extend(enc(Message::Have { piece: 1 }));
    // Pieces 1, 2 and 9: only 2 and 9 are new; piece 0 is not taken away.
    rest.extend(enc(Message::Bitfield(Bytes::from_static(&[
        0b0110_0000,
        0b0100_0000,
    ]))));
    let mut s = raw(cfg(BOTH), BOTH, &Bitfield::new(10), &rest);
    assert_eq!(s.error(), None);
    assert_eq!(
        drain(&mut s)
            .into_iter()
            .filter(|e| matches!(e, Event::Have(_) | Event::Bitfield))
            .collect::<Vec<_>>(),
        vec![
            Event::Bitfield,
            Event::Have(1),
            Event::Have(2),
            Event::Have(9)
        ]
    );
    assert!([0, 1, 2, 9].iter().all(|&p| s.peer_has(p)));
    assert!(!s.peer_has(3));

    // With no bitfield first (have none), a late one still counts.
    let mut rest = enc(Message::HaveNone);
    rest.extend(enc(Message::Bitfield(Bytes::from_static(&[
        0,
        0b0100_0000,
    ]))));
    let s = raw(cfg(BOTH), BOTH, &Bitfield::new(10), &rest);
    assert_eq!(s.error(), None);
    assert!(s.peer_has(9) && !s.peer_has(0));

    // Its length and spare bits are still checked.
    let mut rest = enc(Message::Have { piece: 1 });
    rest.extend(enc(Message::Bitfield(Bytes::from_static(&[0, 0, 0]))));
    let s = raw(cfg(BOTH), BOTH, &Bitfield::new(10), &rest);
    assert!(matches!(s.error(), Some(SessionError::BadBitfield(_))));

    let mut rest = enc(Message::HaveNone);
    rest.extend(enc(Message::HaveAll));
    let s = raw(cfg(BOTH), BOTH, &Bitfield::new(10), &rest);
    assert!(matches!(
        s.error(),
        Some(SessionError::LateHaveState {
            message: "have all",
            ..
        })
    ));
}

/// libtorrent 2.0 sends its BEP 10 extension handshake right after the BitTorrent handshake and
/// only then its have all (or bitfield), followed by allowed fast: the piece set is still the first
/// core-protocol message. (Seen against a real libtorrent seeder, which we used to drop with
/// "have all as message #2".) A have before the bitfield stays an error.
#[test]
fn extension_handshake_may_precede_the_piece_set() {
    let ext = || {
        enc(Message::Extended {
            id: 0,
            payload: Bytes::from_static(b"d1:md11:ut_metadatai2eee"),
        })
    };
    let mut rest = ext();
    rest.extend(enc(Message::HaveAll));
    rest.extend(enc(Message::AllowedFast { piece: 3 }));
    let s = raw(cfg(BOTH), BOTH, &Bitfield::new(10), &rest);
    assert_eq!(s.error(), None);
    assert!((0..10).all(|p| s.peer_has(p)));

    let mut rest = ext();
    rest.extend(enc(Message::Bitfield(Bytes::from_static(&[0x80, 0]))));
    let s = raw(cfg(BOTH), BOTH, &Bitfield::new(10), &rest);
    assert_eq!(s.error(), None);
    assert!(s.peer_has(0) && !s.peer_has(1));

    let mut rest = ext();
    rest.extend(enc(Message::Have { piece: 1 }));
    rest.extend(ext());
    rest.extend(enc(Message::HaveAll));
    let s = raw(cfg(BOTH), BOTH, &Bitfield::new(10), &rest);
    assert_eq!(
        s.error(),
        Some(&SessionError::LateHaveState {
            message: "have all",
            position: 2
        })
    );
}

#[test]
fn bitfield_with_spare_bits_or_wrong_length_is_refused() {
    let bad = enc(Message::Bitfield(Bytes::from_static(&[0xff, 0xc0 | 0x20])));
    let s = raw(cfg(BOTH), BOTH, &Bitfield::new(10), &bad);
    let err = s.error().unwrap();
    assert!(matches!(err, SessionError::BadBitfield(_)), "{err}");
    assert!(err.to_string().contains("spare bit"), "{err}");
    let short = enc(Message::Bitfield(Bytes::from_static(&[0xff])));
    let s = raw(cfg(BOTH), BOTH, &Bitfield::new(10), &short);
    assert!(s.error().unwrap().to_string().contains("needs exactly 2"));
}

#[test]
fn have_out_of_range_and_fast_messages_without_fast_are_errors() {
    let s = raw(
        cfg(BOTH),
        BOTH,
        &Bitfield::new(10),
        &enc(Message::Have { piece: 10 }),
    );
    assert_eq!(
        s.error(),
        Some(&SessionError::PieceOutOfRange {
            message: "have",
            piece: 10,
            pieces: 10
        })
    );
    let s = raw(
        cfg(BOTH),
        Reserved::empty(),
        &Bitfield::new(10),
        &enc(Message::HaveAll),
    );
    assert_eq!(
        s.error(),
        Some(&SessionError::FastNotNegotiated("have all"))
    );
    let ext = enc(Message::Extended {
        id: 0,
        payload: Bytes::from_static(b"de"),
    });
    let s = raw(cfg(Reserved::FAST), BOTH, &Bitfield::new(10), &ext);
    assert_eq!(s.error(), Some(&SessionError::ExtensionNotNegotiated(0)));
    let bad_ext = enc(Message::Extended {
        id: 0,
        payload: Bytes::from_static(b"li1ee"),
    });
    let s = raw(cfg(BOTH), BOTH, &Bitfield::new(10), &bad_ext);
    assert!(matches!(
        s.error(),
        Some(SessionError::BadExtensionHandshake(_))
    ));
}

#[test]
fn extension_handshake_fields_are_parsed() {
    let payload = b"d1:md11:ut_metadatai3e6:ut_pexi0ee13:metadata_sizei31235e1:pi51413e4:reqqi64e1:v13:Transmission3e";
    let msg = enc(Message::Extended {
        id: 0,
        payload: Bytes::from_static(payload),
    });
    let mut s = raw(cfg(BOTH), BOTH, &Bitfield::new(10), &msg);
    let x = s.peer_extensions().clone();
    assert_eq!(x.messages.get("ut_metadata"), Some(&3));
    assert!(!x.messages.contains_key("ut_pex"));
    assert_eq!(
        (x.reqq, x.listen_port, x.metadata_size),
        (Some(64), Some(51413), Some(31235))
    );
    assert_eq!(x.client.as_deref(), Some("Transmission3"));
    // Our own extension handshake went out after the handshake.
    drain(&mut s);
    // reqq 64 caps the queue depth.
    s.handle_read(t(0), &enc(Message::Unchoke));
    assert!(s.queue_depth(t(0)) <= 64);
}

#[test]
fn our_extension_handshake_says_who_we_are() {
    let mut c = cfg(BOTH);
    c.listen_port = Some(7000);
    c.extensions.insert("ut_metadata".into(), 2);
    let mut a = PeerSession::outgoing(c, geo(), IH, ID_A, &Bitfield::new(10), t(0)).unwrap();
    drain_tx(&mut a);
    a.handle_read(t(0), &peer_hs(BOTH));
    let msgs = sent(&mut a);
    assert_eq!(msgs[0], Message::HaveNone);
    let Message::Extended { id: 0, payload } = &msgs[1] else {
        panic!("expected the extension handshake, got {:?}", msgs[1])
    };
    assert_eq!(
        &payload[..],
        &b"d1:md11:ut_metadatai2ee1:pi7000e4:reqqi500e1:v15:Hyperblow 0.1.0e"[..]
    );
}

// ----- requesting ----------------------------------------------------------------------------------

#[test]
fn blocks_flow_between_two_sessions_without_copying() {
    let (mut a, mut b) = pair(
        cfg(BOTH),
        cfg(BOTH),
        &Bitfield::new(10),
        &Bitfield::full(10),
    );
    drain(&mut a);
    drain(&mut b);
    assert_eq!(a.wanted_requests(t(1)), 0, "not interested yet");
    a.set_interested(t(1), true);
    pump(&mut a, &mut b, t(1));
    assert_eq!(drain(&mut b), vec![Event::Interested]);
    assert_eq!(
        a.request(t(1), blk(0, 0, 16384)),
        Err(RequestError::Choked(0))
    );
    b.set_choking(t(1), false);
    pump(&mut a, &mut b, t(1));
    assert_eq!(drain(&mut a), vec![Event::Unchoked]);
    assert_eq!(a.wanted_requests(t(1)), 2);
    a.request(t(1), blk(9, 0, 1000)).unwrap();
    assert_eq!(
        a.request(t(1), blk(9, 0, 1000)),
        Err(RequestError::Duplicate(blk(9, 0, 1000)))
    );
    assert_eq!(
        a.request(t(1), blk(9, 0, 1001)),
        Err(RequestError::InvalidBlock(blk(9, 0, 1001)))
    );
    pump(&mut a, &mut b, t(1));
    assert_eq!(
        drain(&mut b),
        vec![Event::ReadRequest {
            block: blk(9, 0, 1000)
        }]
    );
    let data = Bytes::from(vec![0x5a; 1000]);
    assert!(b.send_block(t(1), blk(9, 0, 1000), data.clone()));
    assert_eq!(b.outgoing_len(), 13 + 1000);
    let header = b.poll_transmit().unwrap();
    assert_eq!(header.len(), 13);
    let body = b.poll_transmit().unwrap();
    assert_eq!(
        body.as_ptr(),
        data.as_ptr(),
        "the block is handed out as is"
    );
    assert!(b.poll_transmit().is_none());
    assert_eq!(b.outgoing_len(), 0);
    a.handle_read(t(2), &header);
    a.handle_read(t(2), &body);
    assert_eq!(
        drain(&mut a),
        vec![Event::BlockReceived {
            block: blk(9, 0, 1000),
            data
        }]
    );
    assert_eq!((a.downloaded(), b.uploaded(), a.wasted()), (1000, 1000, 0));
    // Sending it again is refused: the request was answered.
    assert!(!b.send_block(t(2), blk(9, 0, 1000), Bytes::from(vec![0; 1000])));
}

#[test]
fn choke_without_fast_extension_releases_outstanding_requests() {
    let mut open = enc(Message::Bitfield(Bytes::from_static(&[0xff, 0xc0])));
    open.extend(enc(Message::Unchoke));
    let mut s = raw(
        cfg(Reserved::empty()),
        Reserved::empty(),
        &Bitfield::new(10),
        &open,
    );
    s.set_interested(t(0), true);
    drain(&mut s);
    let reqs = [blk(0, 0, 16384), blk(0, 16384, 16384), blk(1, 0, 16384)];
    for r in reqs {
        s.request(t(0), r).unwrap();
    }
    s.handle_read(t(1), &enc(Message::Choke));
    assert_eq!(
        drain(&mut s),
        vec![Event::Choked {
            released_requests: reqs.to_vec()
        }]
    );
    assert_eq!(s.outstanding_requests().count(), 0);
    assert_eq!(s.wanted_requests(t(1)), 0);
    assert_eq!(s.request(t(1), reqs[0]), Err(RequestError::Choked(0)));
    // A block of a voided request that was already in flight is waste, not an offence.
    s.handle_read(
        t(1),
        &enc(Message::Piece {
            index: 0,
            begin: 0,
            block: Bytes::from(vec![1; 16384]),
        }),
    );
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.wasted(), 16384);
    assert!(!s.is_closed());
    s.handle_read(t(2), &enc(Message::Unchoke));
    assert_eq!(drain(&mut s), vec![Event::Unchoked]);
    s.request(t(2), reqs[0]).unwrap();
}

#[test]
fn choke_with_fast_extension_keeps_requests_until_rejected() {
    let mut s = downloading(cfg(BOTH));
    let reqs = [blk(0, 0, 16384), blk(3, 0, 16384)];
    for r in reqs {
        s.request(t(0), r).unwrap();
    }
    s.handle_read(t(1), &enc(Message::Choke));
    assert_eq!(
        drain(&mut s),
        vec![Event::Choked {
            released_requests: vec![]
        }]
    );
    assert_eq!(s.outstanding_requests().count(), 2);
    // The peer answers one with the piece and the other with a reject.
    let mut bytes = enc(Message::Piece {
        index: 0,
        begin: 0,
        block: Bytes::from(vec![2; 16384]),
    });
    bytes.extend(enc(Message::RejectRequest(wreq(reqs[1]))));
    s.handle_read(t(2), &bytes);
    let ev = drain(&mut s);
    assert!(matches!(ev[0], Event::BlockReceived { block, .. } if block == reqs[0]));
    assert_eq!(ev[1], Event::Rejected { block: reqs[1] });
    assert_eq!(s.outstanding_requests().count(), 0);
    // Allowed fast lets us request that piece (only) while choked.
    assert_eq!(s.wanted_requests(t(2)), 0);
    s.handle_read(t(2), &enc(Message::AllowedFast { piece: 5 }));
    assert_eq!(drain(&mut s), vec![Event::AllowedFast(5)]);
    assert_eq!(s.allowed_fast(), &[5]);
    assert!(s.wanted_requests(t(2)) > 0);
    assert_eq!(
        s.request(t(2), blk(4, 0, 16384)),
        Err(RequestError::Choked(4))
    );
    s.request(t(2), blk(5, 0, 16384)).unwrap();
}

#[test]
fn request_timeout_returns_blocks_cancels_them_and_snubs() {
    let mut s = downloading(cfg(BOTH));
    s.request(t(0), blk(0, 0, 16384)).unwrap();
    s.request(t(10), blk(1, 0, 16384)).unwrap();
    drain_tx(&mut s);
    // Keep the connection alive with keep-alives but send no data.
    s.handle_read(t(50), &enc(Message::KeepAlive));
    assert_eq!(s.poll_timeout(), Some(t(60)));
    s.handle_timeout(t(60));
    assert_eq!(
        drain(&mut s),
        vec![
            Event::Snubbed,
            Event::RequestsTimedOut {
                blocks: vec![blk(0, 0, 16384)]
            }
        ]
    );
    assert!(s.is_snubbed());
    assert_eq!(s.queue_depth(t(60)), 1);
    assert_eq!(sent(&mut s), vec![Message::Cancel(wreq(blk(0, 0, 16384)))]);
    assert_eq!(s.poll_timeout(), Some(t(70)));
    s.handle_read(t(65), &enc(Message::KeepAlive));
    s.handle_timeout(t(70));
    assert_eq!(
        drain(&mut s),
        vec![Event::RequestsTimedOut {
            blocks: vec![blk(1, 0, 16384)]
        }]
    );
    // The timed-out block arriving late is waste; a requested block ends the snub.
    s.request(t(71), blk(2, 0, 16384)).unwrap();
    let mut bytes = enc(Message::Piece {
        index: 0,
        begin: 0,
        block: Bytes::from(vec![0; 16384]),
    });
    bytes.extend(enc(Message::Piece {
        index: 2,
        begin: 0,
        block: Bytes::from(vec![0; 16384]),
    }));
    s.handle_read(t(72), &bytes);
    assert_eq!(drain(&mut s).len(), 1);
    assert_eq!(s.wasted(), 16384);
    assert!(!s.is_snubbed() && !s.is_closed());
}

#[test]
fn keepalive_after_two_minutes_of_silence_and_idle_timeout_closes() {
    let mut s = downloading(cfg(BOTH));
    assert_eq!(s.poll_timeout(), Some(t(120)));
    s.handle_timeout(t(119));
    assert!(s.poll_transmit().is_none());
    s.handle_timeout(t(120));
    assert_eq!(sent(&mut s), vec![Message::KeepAlive]);
    assert_eq!(s.poll_timeout(), Some(t(180)));
    s.handle_timeout(t(180));
    assert_eq!(
        closed_error(&drain(&mut s)),
        Some(&SessionError::IdleTimeout(Duration::from_secs(180)))
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn stepping_to_each_deadline_always_makes_progress() {
    let mut s = downloading(cfg(BOTH));
    s.request(t(0), blk(0, 0, 16384)).unwrap();
    let mut steps = 0;
    while let Some(at) = s.poll_timeout() {
        s.handle_timeout(at);
        if let Some(next) = s.poll_timeout() {
            assert!(next > at, "deadline {next:?} not after {at:?}");
        }
        steps += 1;
        assert!(steps < 10);
    }
    assert!(matches!(s.error(), Some(SessionError::IdleTimeout(_))));
}

#[test]
fn queue_depth_grows_with_rate_and_shrinks_when_the_peer_slows() {
    let mut s = downloading(cfg(BOTH));
    assert_eq!(s.wanted_requests(t(0)), 2);
    let mut next = 0u32;
    let mut now = Instant::ZERO;
    let mut run = |s: &mut PeerSession, ticks: u32, per_tick: usize, now: &mut Instant| {
        for _ in 0..ticks {
            *now += Duration::from_millis(100);
            for _ in 0..s.wanted_requests(*now) {
                let b = blk(next % 10 % 9, (next / 10 % 2) * 16384, 16384);
                next += 1;
                // Skip blocks still outstanding.
                let _ = s.request(*now, b);
            }
            let serve: Vec<BlockRequest> = s.outstanding_requests().take(per_tick).collect();
            for b in serve {
                s.handle_read(
                    *now,
                    &enc(Message::Piece {
                        index: b.piece,
                        begin: b.offset,
                        block: Bytes::from(vec![0; b.length as usize]),
                    }),
                );
            }
            drain(s);
        }
    };
    // 20 blocks per 100 ms = 3.2 MiB/s: 2 s of that is 400 blocks, capped at 250.
    run(&mut s, 100, 20, &mut now);
    let fast_depth = s.queue_depth(now);
    assert!(fast_depth >= 200, "depth {fast_depth}");
    // 1 block per 100 ms = 160 KiB/s: about 20 blocks.
    run(&mut s, 100, 1, &mut now);
    let slow_depth = s.queue_depth(now);
    assert!((10..=30).contains(&slow_depth), "depth {slow_depth}");
    assert!(s.download_rate(now) > 100_000);
}

// ----- serving -------------------------------------------------------------------------------------

#[test]
fn cancelled_request_is_not_sent_when_its_read_completes() {
    for reserved in [BOTH, Reserved::empty()] {
        let mut s = serving(cfg(reserved), reserved);
        let r = blk(1, 16384, 16384);
        s.handle_read(t(1), &enc(Message::Request(wreq(r))));
        assert_eq!(drain(&mut s), vec![Event::ReadRequest { block: r }]);
        s.handle_read(t(1), &enc(Message::Cancel(wreq(r))));
        assert_eq!(drain(&mut s), vec![Event::Cancelled { block: r }]);
        assert!(!s.send_block(t(2), r, Bytes::from(vec![0; 16384])));
        let expect = if reserved.contains(Reserved::FAST) {
            vec![Message::RejectRequest(wreq(r))]
        } else {
            vec![]
        };
        assert_eq!(sent(&mut s), expect);
        assert_eq!(s.uploaded(), 0);
    }
}

#[test]
fn choking_a_peer_discards_its_queue() {
    for reserved in [BOTH, Reserved::empty()] {
        let fast = reserved.contains(Reserved::FAST);
        let mut s = serving(cfg(reserved), reserved);
        if fast {
            s.allow_fast(t(0), 3);
            assert_eq!(sent(&mut s), vec![Message::AllowedFast { piece: 3 }]);
        }
        let rs = [blk(0, 0, 16384), blk(3, 0, 16384), blk(2, 0, 100)];
        let mut bytes = Vec::new();
        for r in rs {
            bytes.extend(enc(Message::Request(wreq(r))));
        }
        s.handle_read(t(1), &bytes);
        assert_eq!(drain(&mut s).len(), 3);
        assert_eq!(s.queued_incoming_requests(), 3);
        s.set_choking(t(1), true);
        let out = sent(&mut s);
        assert_eq!(out[0], Message::Choke);
        if fast {
            // Piece 3 was allowed fast: its request survives.
            assert_eq!(
                &out[1..],
                &[
                    Message::RejectRequest(wreq(rs[0])),
                    Message::RejectRequest(wreq(rs[2]))
                ]
            );
            assert_eq!(s.queued_incoming_requests(), 1);
            assert!(s.send_block(t(2), rs[1], Bytes::from(vec![0; 16384])));
        } else {
            assert_eq!(out.len(), 1);
            assert_eq!(s.queued_incoming_requests(), 0);
        }
        assert!(!s.send_block(t(2), rs[0], Bytes::from(vec![0; 16384])));
        // New requests while choked: rejected under fast, dropped without.
        s.handle_read(t(3), &enc(Message::Request(wreq(rs[0]))));
        assert!(drain(&mut s).is_empty());
        let expect = if fast {
            vec![Message::RejectRequest(wreq(rs[0]))]
        } else {
            vec![]
        };
        assert_eq!(
            sent(&mut s)
                .into_iter()
                .filter(|m| !matches!(m, Message::Piece { .. }))
                .collect::<Vec<_>>(),
            expect
        );
    }
}

#[test]
fn requests_are_validated() {
    let mut s = serving(cfg(BOTH), BOTH);
    s.handle_read(t(1), &enc(Message::Request(wreq(blk(0, 0, 16385)))));
    assert_eq!(
        s.error(),
        Some(&SessionError::RequestTooLong {
            piece: 0,
            offset: 0,
            length: 16385,
            max: 16384
        })
    );
    let mut s = serving(cfg(BOTH), BOTH);
    s.handle_read(t(1), &enc(Message::Request(wreq(blk(9, 512, 1000)))));
    assert_eq!(
        s.error(),
        Some(&SessionError::RequestOutOfPiece {
            piece: 9,
            offset: 512,
            length: 1000,
            piece_size: 1000
        })
    );
    let mut s = serving(cfg(BOTH), BOTH);
    s.handle_read(t(1), &enc(Message::Request(wreq(blk(10, 0, 16)))));
    assert!(matches!(
        s.error(),
        Some(SessionError::PieceOutOfRange { .. })
    ));
    // A duplicate request is ignored rather than read twice.
    let mut s = serving(cfg(BOTH), BOTH);
    let r = enc(Message::Request(wreq(blk(0, 0, 16))));
    s.handle_read(t(1), &[r.clone(), r].concat());
    assert_eq!(drain(&mut s).len(), 1);
}

// ----- hostile peers -------------------------------------------------------------------------------

#[test]
fn request_flood_beyond_the_cap_disconnects() {
    let mut c = cfg(BOTH);
    c.max_incoming_requests = 20;
    let mut s = serving(c, BOTH);
    let mut bytes = Vec::new();
    for i in 0..1000u32 {
        bytes.extend(enc(Message::Request(wreq(blk(
            i % 9,
            (i / 9 % 2) * 16384,
            16384 - i / 18,
        )))));
    }
    s.handle_read(t(1), &bytes);
    let ev = drain(&mut s);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::ReadRequest { .. }))
            .count(),
        20
    );
    assert_eq!(
        closed_error(&ev),
        Some(&SessionError::RequestFlood { limit: 20 })
    );
    assert!(closed_error(&ev)
        .unwrap()
        .to_string()
        .contains("more than 20"));
    assert_eq!(s.queued_incoming_requests(), 0);
    assert_eq!(s.buffered_incoming(), 0);
}

#[test]
fn oversized_frame_is_refused_before_buffering() {
    let mut s = downloading(cfg(BOTH));
    let max = s.max_frame_len();
    assert_eq!(max, wire::max_frame_len_for(10));
    let mut frame = (max + 1).to_be_bytes().to_vec();
    frame.push(7);
    s.handle_read(t(1), &frame);
    assert!(matches!(
        s.error(),
        Some(SessionError::Decode(wire::DecodeError::FrameTooLong { .. }))
    ));
    s.handle_read(t(1), &vec![0; 100_000]);
    assert_eq!(s.buffered_incoming(), 0);
}

#[test]
fn unrequested_blocks_are_waste_then_cut_off() {
    let mut s = downloading(cfg(BOTH));
    let piece = |i: u32| {
        enc(Message::Piece {
            index: i,
            begin: 0,
            block: Bytes::from(vec![9; 1024]),
        })
    };
    for i in 0..4 {
        s.handle_read(t(1), &piece(i));
        assert!(!s.is_closed());
    }
    assert_eq!(s.wasted(), 4 * 1024);
    assert_eq!(s.downloaded(), 0);
    s.handle_read(t(1), &piece(4));
    let err = s.error().unwrap();
    assert_eq!(
        err,
        &SessionError::UnrequestedBlocks {
            count: 5,
            limit: 4,
            piece: 4,
            offset: 0,
            length: 1024
        }
    );
    assert!(err.to_string().contains("never requested"));
}

#[test]
fn a_peer_that_does_not_read_is_cut_off() {
    let mut c = cfg(BOTH);
    c.max_outgoing_bytes = 64 * 1024;
    // Choked under fast: every request costs us a 17-byte reject.
    let mut s = raw(c, BOTH, &Bitfield::full(10), &enc(Message::HaveNone));
    drain_tx(&mut s);
    let one = enc(Message::Request(wreq(blk(0, 0, 16384))));
    for _ in 0..10_000 {
        s.handle_read(t(1), &one);
        if s.is_closed() {
            break;
        }
    }
    assert!(matches!(
        s.error(),
        Some(SessionError::OutgoingOverflow { .. })
    ));
    assert_eq!(s.outgoing_len(), 0);
}

#[test]
fn errors_are_sticky() {
    let mut s = raw(cfg(BOTH), BOTH, &Bitfield::new(10), &[0, 0, 0, 1, 99]);
    let first = s.error().cloned().unwrap();
    assert!(
        first.to_string().contains("unknown message id 99"),
        "{first}"
    );
    s.handle_read(t(1), &enc(Message::Unchoke));
    s.handle_timeout(t(1000));
    let ev = drain(&mut s);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::Closed { .. }))
            .count(),
        1
    );
    assert_eq!(s.error(), Some(&first));
    assert_eq!(
        s.request(t(1), blk(0, 0, 10)),
        Err(RequestError::NotEstablished)
    );
}

// ----- property tests ------------------------------------------------------------------------------

fn arb_message() -> impl Strategy<Value = Vec<u8>> {
    let piece = 0u32..12;
    let block = (
        0u32..12,
        prop_oneof![Just(0u32), Just(16384u32), 0u32..40_000],
        prop_oneof![Just(16384u32), 1u32..20_000],
    );
    prop_oneof![
        Just(enc(Message::KeepAlive)),
        Just(enc(Message::Choke)),
        Just(enc(Message::Unchoke)),
        Just(enc(Message::Interested)),
        Just(enc(Message::NotInterested)),
        Just(enc(Message::HaveAll)),
        Just(enc(Message::HaveNone)),
        piece.clone().prop_map(|p| enc(Message::Have { piece: p })),
        piece
            .clone()
            .prop_map(|p| enc(Message::AllowedFast { piece: p })),
        piece.prop_map(|p| enc(Message::Suggest { piece: p })),
        block
            .clone()
            .prop_map(|(i, b, l)| enc(Message::Request(wire::BlockRequest {
                index: i,
                begin: b,
                length: l
            }))),
        block
            .clone()
            .prop_map(|(i, b, l)| enc(Message::Cancel(wire::BlockRequest {
                index: i,
                begin: b,
                length: l
            }))),
        block.prop_map(|(i, b, l)| enc(Message::RejectRequest(wire::BlockRequest {
            index: i,
            begin: b,
            length: l
        }))),
        (
            0u32..12,
            prop_oneof![Just(0u32), Just(16384u32)],
            0usize..17_000
        )
            .prop_map(|(i, b, n)| enc(Message::Piece {
                index: i,
                begin: b,
                block: Bytes::from(vec![3; n])
            })),
        proptest::collection::vec(any::<u8>(), 0..4)
            .prop_map(|v| enc(Message::Bitfield(Bytes::from(v)))),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| enc(Message::Extended {
            id: 0,
            payload: Bytes::from(v)
        })),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_input_never_panics_and_stays_within_caps(
        msgs in proptest::collection::vec(arb_message(), 0..60),
        chunk in 1usize..3000,
        unchoke in any::<bool>(),
        fast in any::<bool>(),
    ) {
        let mut c = cfg(BOTH);
        c.max_incoming_requests = 8;
        c.max_outgoing_bytes = 2048;
        let peer_bits = if fast { BOTH } else { Reserved::EXTENSION_PROTOCOL };
        let mut s = raw(c, peer_bits, &Bitfield::full(10), &[]);
        s.set_interested(t(0), true);
        if unchoke {
            s.set_choking(t(0), false);
        }
        drain_tx(&mut s);
        let stream: Vec<u8> = msgs.concat();
        let max_frame = s.max_frame_len() as usize;
        let mut now = t(0);
        for piece in stream.chunks(chunk) {
            now += Duration::from_millis(300);
            s.handle_read(now, piece);
            prop_assert!(s.buffered_incoming() <= 4 + max_frame + chunk);
            prop_assert!(s.queued_incoming_requests() <= 8);
            prop_assert!(s.outgoing_len() <= 2048);
            // Serve what was asked and ask for what is wanted, as a torrent layer would.
            while let Some(e) = s.poll_event() {
                if let Event::ReadRequest { block } = e {
                    s.send_block(now, block, Bytes::from(vec![1; block.length as usize]));
                }
            }
            let want = s.wanted_requests(now);
            for i in 0..want.min(4) as u32 {
                let _ = s.request(now, blk(i % 9, 0, 16384));
            }
            prop_assert!(s.outstanding_requests().count() <= 250);
            s.handle_timeout(now);
            // Every due deadline was acted on: the next one is in the future (no busy loop).
            prop_assert!(s.poll_timeout().is_none_or(|at| at > now));
            drain_tx(&mut s);
        }
    }

    #[test]
    fn arbitrary_chunking_of_a_valid_opening_gives_the_same_events(split in proptest::collection::vec(1usize..40, 1..20)) {
        let mut bytes = peer_hs(BOTH);
        bytes.extend(enc(Message::Bitfield(Bytes::from_static(&[0b0110_0000, 0]))));
        bytes.extend(enc(Message::Have { piece: 8 }));
        bytes.extend(enc(Message::Unchoke));
        bytes.extend(enc(Message::AllowedFast { piece: 1 }));
        let mut whole = PeerSession::outgoing(cfg(BOTH), geo(), IH, ID_A, &Bitfield::new(10), t(0)).unwrap();
        whole.handle_read(t(0), &bytes);
        let expect = drain(&mut whole);
        prop_assert_eq!(expect.len(), 5);
        let mut s = PeerSession::outgoing(cfg(BOTH), geo(), IH, ID_A, &Bitfield::new(10), t(0)).unwrap();
        let mut rest = &bytes[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = split[i % split.len()].min(rest.len());
            s.handle_read(t(0), &rest[..n]);
            rest = &rest[n..];
            i += 1;
        }
        prop_assert_eq!(drain(&mut s), expect);
    }
}

#[test]
fn reading_straight_into_the_decoder_buffer_hands_out_payload_slices() {
    let mut s = downloading(cfg(BOTH));
    s.request(t(1), blk(2, 0, 16384)).unwrap();
    let msg = enc(Message::Piece {
        index: 2,
        begin: 0,
        block: Bytes::from(vec![0x42; 16384]),
    });
    // The driver appends each socket read to the read buffer, then tells the session how much came.
    for part in msg.chunks(5000) {
        s.read_buf().extend_from_slice(part);
        s.handle_read_buf(t(2), part.len());
    }
    let ev = drain(&mut s);
    assert!(
        matches!(&ev[..], [Event::BlockReceived { block, data }] if *block == blk(2, 0, 16384) && data.iter().all(|&b| b == 0x42))
    );
    assert_eq!(s.downloaded(), 16384);
}

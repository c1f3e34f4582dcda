//! Engine tests of magnet links (metadata over `ut_metadata`, the switch to a normal download on the
//! same connections), metadata serving, and peer exchange, on the in-memory network and against
//! hand-driven peers.

use super::*;
use crate::bencode::{self, OwnedValue};
use crate::ext::metadata::{MetadataMessage, METADATA_PIECE_LEN};
use crate::ext::pex::{PexFlags, PexMessage, PexPeer};
use crate::magnet::{FileSelection, MagnetLink};

/// The id our hand-driven peers register for `ut_metadata` (ours is 1).
const PEER_META_ID: u8 = 3;
/// The id our hand-driven peers register for `ut_pex` (ours is 2).
const PEER_PEX_ID: u8 = 4;

/// A torrent like `make_torrent`, optionally private.
fn build(
    files: &[(String, u64)],
    piece_length: u32,
    trackers: Vec<Vec<String>>,
    private: bool,
) -> (Metainfo, Vec<u8>) {
    let list: Vec<(Vec<String>, u64)> = files.iter().map(|(p, l)| (vec![p.clone()], *l)).collect();
    let mut hasher = TorrentBuilder::multi_file("magnetic", list)
        .piece_length(piece_length)
        .trackers(trackers)
        .private(private)
        .start()
        .expect("builder");
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    let mut rng = seeded(total ^ 0x6d61_676e);
    let content: Vec<u8> = (0..total).map(|_| rng.random::<u8>()).collect();
    hasher.update(&content).expect("content");
    let built = hasher.finish().expect("finish");
    (Metainfo::from_bytes(&built.bytes).expect("parse"), content)
}

fn files(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(p, l)| ((*p).to_owned(), *l)).collect()
}

/// 400 tiny files with long names: an info dictionary of two metadata pieces, little content.
fn many_files() -> Vec<(String, u64)> {
    (0..400)
        .map(|i| {
            (
                format!("a-file-with-a-rather-long-name-number-{i:04}.bin"),
                3,
            )
        })
        .collect()
}

fn link(meta: &Metainfo, trackers: Vec<String>) -> MagnetLink {
    let mut l = MagnetLink::new(meta.info_hash());
    l.trackers = trackers;
    l
}

fn add_magnet(link: MagnetLink, peers: Vec<SocketAddr>) -> AddMagnet {
    AddMagnet {
        link,
        wanted_files: None,
        paused: false,
        peers,
    }
}

// ----- hand-driven peers ----------------------------------------------------------------------------

/// The peer's BEP 10 handshake.
fn peer_ext_handshake(meta: bool, pex: bool, size: Option<u64>, port: Option<u16>) -> Message {
    let mut m = OwnedValue::dict();
    if meta {
        m.insert("ut_metadata", i64::from(PEER_META_ID));
    }
    if pex {
        m.insert("ut_pex", i64::from(PEER_PEX_ID));
    }
    let mut d = OwnedValue::dict().with("m", m);
    if let Some(s) = size {
        d.insert("metadata_size", s as i64);
    }
    if let Some(p) = port {
        d.insert("p", i64::from(p));
    }
    Message::Extended {
        id: 0,
        payload: d.encode().into(),
    }
}

/// A `ut_metadata` message from a hand-driven peer to the engine (our id for it is 1).
fn meta_msg(m: &MetadataMessage) -> Message {
    Message::Extended {
        id: crate::ext::LOCAL_UT_METADATA_ID,
        payload: m.encode().into(),
    }
}

/// A hand-driven peer connects in: handshake (fast + extension protocol), then `then`.
fn connect_in(raw: &mut Raw, from: SocketAddr, ih: InfoHash, tag: u8, then: &[Message]) -> ConnId {
    let mut id = *b"-XX0001-000000000000";
    id[19] = tag;
    raw.connect_in(
        from,
        ih,
        id,
        Reserved::FAST | Reserved::EXTENSION_PROTOCOL,
        then,
    )
}

/// Peer `conn` sends a PEX message (to the id public torrents use) that adds `peer`.
fn send_pex_of(raw: &mut Raw, conn: ConnId, peer: SocketAddr) {
    let pex = PexMessage {
        added: vec![PexPeer {
            addr: peer,
            flags: PexFlags::empty(),
        }],
        dropped: vec![],
    };
    raw.send(
        conn,
        &[Message::Extended {
            id: crate::ext::LOCAL_UT_PEX_ID,
            payload: pex.encode().into(),
        }],
    );
}

/// Two hand-driven peers that speak `ut_metadata` and `ut_pex` connect in.
fn two_pex_peers(raw: &mut Raw, ih: InfoHash) -> (ConnId, ConnId) {
    let hs = [peer_ext_handshake(true, true, None, Some(7000))];
    let a = connect_in(raw, addr(200, 1), ih, 1, &hs);
    let b = connect_in(raw, addr(201, 1), ih, 2, &hs);
    (a, b)
}

/// The `ut_metadata` messages the engine sent on `conn` (to our peers' id for it).
fn metadata_sent(msgs: &[Message]) -> Vec<MetadataMessage> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Extended { id, payload } if *id == PEER_META_ID => {
                MetadataMessage::decode(payload).ok()
            }
            _ => None,
        })
        .collect()
}

fn requested(msgs: &[MetadataMessage]) -> Vec<u32> {
    msgs.iter()
        .filter_map(|m| match m {
            MetadataMessage::Request { piece } => Some(*piece),
            _ => None,
        })
        .collect()
}

/// The engine's extension handshakes on `conn`, decoded.
fn ext_handshakes(msgs: &[Message]) -> Vec<Vec<u8>> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Extended { id: 0, payload } => Some(payload.to_vec()),
            _ => None,
        })
        .collect()
}

fn data_msg(raw_info: &[u8], piece: u32) -> Message {
    let start = piece as usize * METADATA_PIECE_LEN;
    let end = (start + METADATA_PIECE_LEN).min(raw_info.len());
    meta_msg(&MetadataMessage::Data {
        piece,
        total_size: raw_info.len() as u64,
        data: Bytes::copy_from_slice(&raw_info[start..end]),
    })
}

fn raw_magnet(meta: &Metainfo) -> (Raw, TorrentId) {
    let mut raw = Raw::new();
    let t = raw
        .engine
        .add_magnet(raw.now, add_magnet(link(meta, vec![]), vec![]))
        .expect("add magnet");
    raw.drain();
    (raw, t)
}

/// Adds `meta` to node `n` as a complete torrent with `content` on its disk: the seeder most tests
/// start from.
fn add_seed(net: &mut Net, n: usize, meta: &Metainfo, content: &[u8]) -> TorrentId {
    let now = net.now;
    let pieces = meta.info.layout().piece_count();
    let t = net.nodes[n]
        .engine
        .add_torrent(now, add(meta, Some(Bitfield::full(pieces)), vec![]))
        .expect("add seed");
    load_disk(&mut net.nodes[n], t, content, PL);
    t
}

#[test]
fn metadata_from_two_peers_out_of_order_with_a_reject_then_pieces_on_the_same_connections() {
    let (meta, _content) = build(&many_files(), 16 * 1024, vec![], false);
    let info = meta.info.raw().clone();
    assert_eq!(info.len().div_ceil(METADATA_PIECE_LEN), 2, "two pieces");
    let size = info.len() as u64;
    let (mut raw, t) = raw_magnet(&meta);
    let st = raw.engine.torrent_stats(raw.now, t).expect("stats");
    assert_eq!(st.state, TorrentState::FetchingMetadata);
    assert!(st.files.is_empty() && st.total_bytes == 0);
    assert!(raw.engine.torrent_info(t).is_none());
    assert_eq!(
        raw.engine.set_wanted_files(raw.now, t, vec![true]),
        Err(AddError::MetadataPending(t))
    );

    // Peer A: extension handshake with the size, and every piece.
    let ih = meta.info_hash();
    let a = connect_in(
        &mut raw,
        addr(200, 5000),
        ih,
        1,
        &[
            Message::HaveAll,
            peer_ext_handshake(true, false, Some(size), None),
        ],
    );
    let got_a = raw.take(a);
    // No bitfield before metadata: have none, and our handshake has no metadata_size but a yourip.
    assert!(got_a.contains(&Message::HaveNone), "{got_a:?}");
    assert!(!got_a.iter().any(|m| matches!(m, Message::Bitfield(_))));
    let hs = ext_handshakes(&got_a);
    assert_eq!(hs.len(), 1);
    let v = bencode::decode(&hs[0]).expect("bencode");
    assert!(v.get(b"metadata_size").is_none());
    assert_eq!(
        v.get(b"yourip").and_then(|x| x.as_bytes()),
        Some(&[10u8, 0, 0, 200][..])
    );
    assert_eq!(requested(&metadata_sent(&got_a)), vec![0, 1]);

    // Peer B: a bitfield (kept raw until the piece count is known) and the size.
    let pieces = meta.info.layout().piece_count();
    let b = connect_in(
        &mut raw,
        addr(201, 5000),
        ih,
        2,
        &[
            Message::Bitfield(bitfield_of(pieces, &[0])),
            peer_ext_handshake(true, false, Some(size), None),
        ],
    );
    assert!(requested(&metadata_sent(&raw.take(b))).is_empty());
    // A rejects piece 1: B is asked for it.
    raw.send(a, &[meta_msg(&MetadataMessage::Reject { piece: 1 })]);
    assert!(requested(&metadata_sent(&raw.take(a))).is_empty());
    assert_eq!(requested(&metadata_sent(&raw.take(b))), vec![1]);
    // B answers piece 1 before A answers piece 0.
    raw.send(b, &[data_msg(&info, 1)]);
    assert!(!raw
        .events
        .iter()
        .any(|e| matches!(e, Event::MetadataReceived { .. })));
    raw.send(a, &[data_msg(&info, 0)]);
    assert!(raw.events.contains(&Event::MetadataReceived {
        torrent: t,
        info_hash: ih
    }));
    assert_eq!(raw.engine.torrent_info(t).map(|i| i.raw()), Some(&info));
    let st = raw.engine.torrent_stats(raw.now, t).expect("stats");
    assert_eq!(st.state, TorrentState::Downloading);
    assert_eq!(st.files.len(), 400);
    assert_eq!(st.peers, 2, "both connections kept");
    let by_addr: BTreeMap<SocketAddr, u32> =
        st.peer_list.iter().map(|p| (p.addr, p.pieces)).collect();
    assert_eq!(by_addr.get(&addr(200, 5000)), Some(&pieces));
    assert_eq!(by_addr.get(&addr(201, 5000)), Some(&1));
    // Our extension handshake goes out again with the size; we are interested in A now.
    let got_a = raw.take(a);
    let hs = ext_handshakes(&got_a);
    assert_eq!(hs.len(), 1, "{got_a:?}");
    let v = bencode::decode(&hs[0]).expect("bencode");
    assert_eq!(
        v.get(b"metadata_size").and_then(|x| x.as_int()),
        Some(size as i64)
    );
    assert!(got_a.contains(&Message::Interested));
    assert!(raw.closed.is_empty());
}

#[test]
fn oversized_or_disagreeing_sizes_and_wrong_metadata_are_refused() {
    let (meta, _content) = build(&many_files(), 16 * 1024, vec![], false);
    let info = meta.info.raw().clone();
    let size = info.len() as u64;
    let ih = meta.info_hash();
    let (mut raw, t) = raw_magnet(&meta);
    // A size over the 16 MiB cap: never asked.
    let huge = connect_in(
        &mut raw,
        addr(200, 1),
        ih,
        1,
        &[peer_ext_handshake(true, false, Some(20 << 20), None)],
    );
    assert!(requested(&metadata_sent(&raw.take(huge))).is_empty());
    // A liar whose handshake gives the size but whose data is garbage of the right length.
    let liar = connect_in(
        &mut raw,
        addr(201, 1),
        ih,
        2,
        &[peer_ext_handshake(true, false, Some(size), None)],
    );
    assert_eq!(requested(&metadata_sent(&raw.take(liar))), vec![0, 1]);
    // One that disagrees about the size: kept aside, not asked.
    let other = connect_in(
        &mut raw,
        addr(202, 1),
        ih,
        3,
        &[peer_ext_handshake(true, false, Some(size + 1), None)],
    );
    assert!(requested(&metadata_sent(&raw.take(other))).is_empty());
    // An honest one, connected while the liar holds every request.
    let honest = connect_in(
        &mut raw,
        addr(203, 1),
        ih,
        4,
        &[peer_ext_handshake(true, false, Some(size), None)],
    );
    assert!(requested(&metadata_sent(&raw.take(honest))).is_empty());
    let mut garbage = info.to_vec();
    for b in garbage.iter_mut().skip(100).take(10) {
        *b ^= 0xff;
    }
    raw.send(liar, &[data_msg(&garbage, 0), data_msg(&garbage, 1)]);
    assert!(raw.events.iter().any(|e| matches!(
        e,
        Event::PeerBanned { addr: a, .. } if *a == addr(201, 1)
    )));
    assert!(raw.closed.contains(&liar));
    assert!(!raw
        .events
        .iter()
        .any(|e| matches!(e, Event::MetadataReceived { .. })));
    // The honest peer is asked next and the metadata completes.
    let asked = requested(&metadata_sent(&raw.take(honest)));
    assert_eq!(asked, vec![0, 1]);
    raw.send(honest, &[data_msg(&info, 0), data_msg(&info, 1)]);
    assert!(raw.events.contains(&Event::MetadataReceived {
        torrent: t,
        info_hash: ih
    }));
    assert!(!raw.closed.contains(&honest) && !raw.closed.contains(&other));
    // The banned liar cannot come back.
    assert!(raw.engine.handle_incoming(raw.now, addr(201, 1)).is_none());
}

#[test]
fn a_data_message_with_another_total_size_closes_the_connection() {
    let (meta, _content) = build(&many_files(), 16 * 1024, vec![], false);
    let info = meta.info.raw().clone();
    let size = info.len() as u64;
    let (mut raw, _t) = raw_magnet(&meta);
    let p = connect_in(
        &mut raw,
        addr(200, 1),
        meta.info_hash(),
        1,
        &[peer_ext_handshake(true, false, Some(size), None)],
    );
    assert_eq!(requested(&metadata_sent(&raw.take(p))), vec![0, 1]);
    raw.send(
        p,
        &[meta_msg(&MetadataMessage::Data {
            piece: 0,
            total_size: size + 5,
            data: info.slice(0..METADATA_PIECE_LEN),
        })],
    );
    assert!(raw.closed.contains(&p));
}

#[test]
fn metadata_is_served_when_we_have_it_and_rejected_while_fetching() {
    let (meta, content) = build(&many_files(), 16 * 1024, vec![], false);
    let info = meta.info.raw().clone();
    let size = info.len() as u64;
    let mut raw = Raw::new();
    let pieces = meta.info.layout().piece_count();
    let t = raw
        .engine
        .add_torrent(raw.now, add(&meta, Some(Bitfield::full(pieces)), vec![]))
        .expect("add");
    let _ = content;
    raw.drain();
    let p = connect_in(
        &mut raw,
        addr(200, 1),
        meta.info_hash(),
        1,
        &[peer_ext_handshake(true, false, None, None)],
    );
    let got = raw.take(p);
    let hs = ext_handshakes(&got);
    let v = bencode::decode(&hs[0]).expect("bencode");
    assert_eq!(
        v.get(b"metadata_size").and_then(|x| x.as_int()),
        Some(size as i64),
        "normal torrents announce metadata_size"
    );
    raw.send(
        p,
        &[
            meta_msg(&MetadataMessage::Request { piece: 1 }),
            meta_msg(&MetadataMessage::Request { piece: 0 }),
            meta_msg(&MetadataMessage::Request { piece: 2 }),
        ],
    );
    let answers = metadata_sent(&raw.take(p));
    assert_eq!(
        answers,
        vec![
            MetadataMessage::Data {
                piece: 1,
                total_size: size,
                data: info.slice(METADATA_PIECE_LEN..),
            },
            MetadataMessage::Data {
                piece: 0,
                total_size: size,
                data: info.slice(..METADATA_PIECE_LEN),
            },
            MetadataMessage::Reject { piece: 2 },
        ]
    );
    assert_eq!(raw.engine.torrent_info(t).map(|i| i.raw()), Some(&info));

    // A magnet torrent still fetching rejects.
    let (mut raw, _t) = raw_magnet(&meta);
    let p = connect_in(
        &mut raw,
        addr(200, 1),
        meta.info_hash(),
        1,
        &[
            peer_ext_handshake(true, false, None, None),
            meta_msg(&MetadataMessage::Request { piece: 0 }),
        ],
    );
    assert_eq!(
        metadata_sent(&raw.take(p)),
        vec![MetadataMessage::Reject { piece: 0 }]
    );
}

#[test]
fn private_torrents_neither_send_nor_accept_pex() {
    let (meta, _content) = build(&files(&[("x.bin", 40_000)]), PL, vec![], true);
    let mut raw = Raw::new();
    let t = raw.add_leech(&meta);
    let ih = meta.info_hash();
    let (a, b) = two_pex_peers(&mut raw, ih);
    let got_a = raw.take(a);
    let hs = ext_handshakes(&got_a);
    let v = bencode::decode(&hs[0]).expect("bencode");
    let m = v.get(b"m").expect("m");
    assert!(m.get(b"ut_pex").is_none(), "no ut_pex registered");
    assert!(m.get(b"ut_metadata").is_some());
    // A PEX message sent anyway (to the id public torrents use) is ignored.
    send_pex_of(&mut raw, a, addr(77, 6881));
    raw.now += Duration::from_secs(120);
    raw.engine.handle_timeout(raw.now);
    raw.drain();
    let mut all = raw.take(a);
    all.extend(raw.take(b));
    assert!(
        !all.iter()
            .any(|m| matches!(m, Message::Extended { id, .. } if *id == PEER_PEX_ID)),
        "no PEX sent: {all:?}"
    );
    let st = raw.engine.torrent_stats(raw.now, t).expect("stats");
    assert_eq!(st.peers, 2);
    assert!(raw.dials.is_empty(), "no dial to the PEX address");

    // The same two peers on a public torrent are told about each other.
    let (meta, _content) = build(&files(&[("x.bin", 40_000)]), PL, vec![], false);
    let mut raw = Raw::new();
    raw.add_leech(&meta);
    let ih = meta.info_hash();
    let (a, b) = two_pex_peers(&mut raw, ih);
    let told: Vec<PexMessage> = raw
        .take(a)
        .iter()
        .filter_map(|m| match m {
            Message::Extended { id, payload } if *id == PEER_PEX_ID => {
                PexMessage::decode(payload).ok()
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        told,
        vec![PexMessage {
            added: vec![PexPeer {
                addr: addr(201, 7000),
                flags: PexFlags::empty(),
            }],
            dropped: vec![],
        }],
        "B's listen address (its IP and `p` port), never A itself"
    );
    // And what B tells us is dialled.
    send_pex_of(&mut raw, b, addr(77, 6881));
    assert_eq!(raw.dials, vec![addr(77, 6881)]);
}

// ----- the in-memory network ----------------------------------------------------------------------

#[test]
fn a_magnet_leecher_finds_the_seeder_through_the_tracker_and_finishes_on_the_same_connection() {
    let url = "http://tracker.test:8080/announce".to_owned();
    let (meta, content) = build(
        &files(&[("a.bin", 100_000), ("b.bin", 7), ("c.bin", 150_000)]),
        PL,
        vec![vec![url.clone()]],
        false,
    );
    let mut net = Net::new();
    let s = net.add_node(EngineConfig::default(), 1);
    let l = net.add_node(EngineConfig::default(), 2);
    let now = net.now;
    add_seed(&mut net, s, &meta, &content);
    let tracker = addr(100, 8080);
    let seeder = net.nodes[s].addr;
    net.serve_tracker("tracker.test", tracker, &[seeder]);
    let mut l_link = link(&meta, vec![url.clone()]);
    l_link.display_name = Some("from a link".into());
    let tl = net.nodes[l]
        .engine
        .add_magnet(now, add_magnet(l_link, vec![]))
        .expect("add magnet");
    let st = net.nodes[l].engine.torrent_stats(now, tl).expect("stats");
    assert_eq!(st.name, "from a link");
    assert_eq!(st.state, TorrentState::FetchingMetadata);
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(l, tl)));
    assert_eq!(disk_content(&net.nodes[l], tl), content);
    // The tracker was asked with a non-zero `left` before the size was known.
    let pid = String::from_utf8_lossy(&net.nodes[l].engine.peer_id().0).into_owned();
    let first = net.http[&tracker]
        .requests
        .iter()
        .find(|r| r.contains(&pid))
        .expect("the leecher announced");
    assert!(
        first.split(['?', '&', ' ']).any(|kv| kv == "left=1"),
        "{first}"
    );
    // One connection, from metadata to the last piece.
    let dials: Vec<_> = net
        .connects
        .iter()
        .filter(|(i, a)| *i == l && *a != tracker)
        .collect();
    assert_eq!(dials, vec![&(l, seeder)]);
    let events = &net.nodes[l].events;
    let received = events
        .iter()
        .position(|e| matches!(e, Event::MetadataReceived { .. }))
        .expect("metadata received");
    let first_piece = events
        .iter()
        .position(|e| matches!(e, Event::PieceVerified { .. }))
        .expect("pieces");
    let completed = events
        .iter()
        .position(|e| *e == Event::TorrentCompleted(tl))
        .expect("completed");
    assert!(received < first_piece);
    assert!(!events[..completed]
        .iter()
        .any(|e| matches!(e, Event::PeerDisconnected { .. })));
    let st = net.nodes[l]
        .engine
        .torrent_stats(net.now, tl)
        .expect("stats");
    assert_eq!(st.name, "magnetic");
    assert_eq!(st.state, TorrentState::Seeding);
    // The info and trackers make a .torrent with the same info-hash.
    let saved = net.nodes[l].engine.torrent_metainfo(tl).expect("metainfo");
    let parsed = Metainfo::from_bytes(&saved.to_bytes()).expect("parse saved");
    assert_eq!(parsed.info_hash(), meta.info_hash());
    assert_eq!(parsed.trackers, vec![vec![url]]);
}

#[test]
fn bep53_selection_applies_once_the_file_list_is_known_and_the_caller_overrides_it() {
    let (meta, content) = make_torrent("multi", FILES, PL, vec![]);
    for (so, wanted, expect) in [
        (Some("2"), None, vec![false, false, true]),
        (
            Some("2"),
            Some(vec![true, false, false]),
            vec![true, false, false],
        ),
    ] {
        let mut net = Net::new();
        let s = net.add_node(EngineConfig::default(), 1);
        let l = net.add_node(EngineConfig::default(), 2);
        let now = net.now;
        add_seed(&mut net, s, &meta, &content);
        let mut ml = link(&meta, vec![]);
        ml.select_only = so.map(|s| FileSelection::parse(s).expect("so"));
        // The seeder is known only as an `x.pe` host name.
        ml.peers = vec![crate::magnet::PeerHint {
            host: "seeder.test".into(),
            port: 6881,
        }];
        net.hosts.insert("seeder.test", net.nodes[s].addr.ip());
        let tl = net.nodes[l]
            .engine
            .add_magnet(
                now,
                AddMagnet {
                    link: ml,
                    wanted_files: wanted,
                    paused: false,
                    peers: vec![],
                },
            )
            .expect("add magnet");
        assert!(net.run_until(Duration::from_secs(60), |n| n.completed(l, tl)));
        let st = net.nodes[l]
            .engine
            .torrent_stats(net.now, tl)
            .expect("stats");
        let got: Vec<bool> = st.files.iter().map(|f| f.wanted).collect();
        assert_eq!(got, expect);
        assert!(st.files.iter().all(|f| !f.wanted || f.have == f.length));
    }
}

#[test]
fn a_peer_known_only_through_pex_gets_connected() {
    let url = "http://tracker.test:8080/announce".to_owned();
    let (meta, content) = make_torrent("multi", FILES, PL, vec![vec![url.clone()]]);
    let mut net = Net::new();
    let s = net.add_node(EngineConfig::default(), 1);
    let l = net.add_node(EngineConfig::default(), 2);
    let third = net.add_node(EngineConfig::default(), 3);
    let now = net.now;
    add_seed(&mut net, s, &meta, &content);
    let seeder = net.nodes[s].addr;
    // The third peer wants one file only (so it stays a leecher, connected to the seeder) and knows
    // the seeder by hand; nobody else is told about it.
    let mut add3 = add(&meta, None, vec![seeder]);
    add3.wanted_files = Some(vec![true, false, false]);
    let t3 = net.nodes[third]
        .engine
        .add_torrent(now, add3)
        .expect("add third");
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(third, t3)));
    let tracker = addr(100, 8080);
    net.serve_tracker("tracker.test", tracker, &[seeder]);
    let tl = net.nodes[l]
        .engine
        .add_magnet(net.now, add_magnet(link(&meta, vec![url]), vec![]))
        .expect("add magnet");
    let third_addr = net.nodes[third].addr;
    assert!(net.run_until(Duration::from_secs(120), |n| n
        .connects
        .contains(&(l, third_addr))));
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(l, tl)));
    assert_eq!(disk_content(&net.nodes[l], tl), content);
    let st = net.nodes[l]
        .engine
        .torrent_stats(net.now, tl)
        .expect("stats");
    // Both learned of each other through the seeder's PEX and dialled; one connection survives
    // (the one dialled by the smaller peer id, on both ends).
    assert_eq!(
        st.peer_list
            .iter()
            .filter(|p| p.addr.ip() == third_addr.ip())
            .count(),
        1,
        "{:?}",
        st.peer_list
    );
}

#[test]
fn a_private_swarm_never_exchanges_peers() {
    let (meta, content) = build(
        &files(&[("a.bin", 100_000), ("b.bin", 7), ("c.bin", 150_000)]),
        PL,
        vec![],
        true,
    );
    let mut net = Net::new();
    let s = net.add_node(EngineConfig::default(), 1);
    let l = net.add_node(EngineConfig::default(), 2);
    let third = net.add_node(EngineConfig::default(), 3);
    net.tap.extend([s, l, third]);
    let now = net.now;
    add_seed(&mut net, s, &meta, &content);
    let seeder = net.nodes[s].addr;
    let mut add3 = add(&meta, None, vec![seeder]);
    add3.wanted_files = Some(vec![true, false, false]);
    let t3 = net.nodes[third]
        .engine
        .add_torrent(now, add3)
        .expect("add third");
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(third, t3)));
    let tl = net.nodes[l]
        .engine
        .add_torrent(net.now, add(&meta, None, vec![seeder]))
        .expect("add leecher");
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(l, tl)));
    net.run_for(Duration::from_secs(180));
    let third_addr = net.nodes[third].addr;
    assert!(!net.connects.contains(&(l, third_addr)));
    for (_, _, m) in &net.sent {
        if let Message::Extended { id, payload } = m {
            assert_ne!(*id, crate::ext::LOCAL_UT_PEX_ID, "a PEX message was sent");
            if *id == 0 {
                let v = bencode::decode(payload).expect("bencode");
                assert!(v.get(b"m").and_then(|m| m.get(b"ut_pex")).is_none());
            }
        }
    }
}

#[test]
fn a_selection_of_the_wrong_length_stops_the_magnet_torrent_until_fixed() {
    let (meta, content) = make_torrent("multi", FILES, PL, vec![]);
    let mut net = Net::new();
    let s = net.add_node(EngineConfig::default(), 1);
    let l = net.add_node(EngineConfig::default(), 2);
    let now = net.now;
    add_seed(&mut net, s, &meta, &content);
    let seeder = net.nodes[s].addr;
    let tl = net.nodes[l]
        .engine
        .add_magnet(
            now,
            AddMagnet {
                link: link(&meta, vec![]),
                wanted_files: Some(vec![true, true]),
                paused: false,
                peers: vec![seeder],
            },
        )
        .expect("add magnet");
    net.run_for(Duration::from_secs(5));
    let events = &net.nodes[l].events;
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::MetadataReceived { .. })));
    assert!(events.iter().any(|e| matches!(
        e,
        Event::TorrentError { message, .. } if message.contains("2 entries")
    )));
    let st = net.nodes[l]
        .engine
        .torrent_stats(net.now, tl)
        .expect("stats");
    assert!(matches!(st.state, TorrentState::Error(_)));
    let now = net.now;
    net.nodes[l]
        .engine
        .set_wanted_files(now, tl, vec![true, true, true])
        .expect("selection");
    net.nodes[l].engine.resume(now, tl);
    assert!(net.run_until(Duration::from_secs(120), |n| n.completed(l, tl)));
    assert_eq!(disk_content(&net.nodes[l], tl), content);
}

/// A seeder (node 0) and a leecher (node 1) that adds the torrent by magnet link, told the
/// seeder's address; returns the network, the torrent, its content, the leecher and its torrent.
fn seed_and_magnet() -> (Net, Metainfo, Vec<u8>, usize, TorrentId) {
    let (meta, content) = make_torrent("multi", FILES, PL, vec![]);
    let mut net = Net::new();
    let s = net.add_node(EngineConfig::default(), 1);
    let l = net.add_node(EngineConfig::default(), 2);
    add_seed(&mut net, s, &meta, &content);
    let seeder = net.nodes[s].addr;
    let tl = net.nodes[l]
        .engine
        .add_magnet(net.now, add_magnet(link(&meta, vec![]), vec![seeder]))
        .expect("add magnet");
    (net, meta, content, l, tl)
}

#[test]
fn pieces_found_on_disk_after_the_metadata_are_not_fetched_again() {
    let (mut net, meta, content, l, tl) = seed_and_magnet();
    let pieces = meta.info.layout().piece_count();
    let now = net.now;
    // Without metadata there is nothing to mark.
    let probe = Bitfield::new(pieces);
    assert_eq!(
        net.nodes[l].engine.set_have(now, tl, &probe),
        Err(AddError::Running(tl))
    );
    net.nodes[l].engine.pause(now, tl);
    assert_eq!(
        net.nodes[l].engine.set_have(now, tl, &probe),
        Err(AddError::MetadataPending(tl))
    );
    net.nodes[l].engine.resume(now, tl);
    assert!(net.run_until(Duration::from_secs(30), |n| n.nodes[l]
        .events
        .iter()
        .any(|e| matches!(e, Event::MetadataReceived { .. }))));
    // The driver pauses on the event, checks the files and reports what it found.
    let now = net.now;
    net.nodes[l].engine.pause(now, tl);
    net.settle();
    let now = net.now;
    let mut found = Bitfield::new(pieces);
    for p in (0..pieces).step_by(2) {
        found.set(p);
        let start = p as usize * PL as usize;
        let end = (start + PL as usize).min(content.len());
        net.nodes[l]
            .disk
            .put(tl, p, Bytes::copy_from_slice(&content[start..end]));
    }
    assert_eq!(
        net.nodes[l]
            .engine
            .set_have(now, tl, &Bitfield::new(pieces + 1)),
        Err(AddError::HaveLength {
            got: pieces + 1,
            pieces
        })
    );
    assert_eq!(
        net.nodes[l].engine.set_have(now, TorrentId(77), &found),
        Err(AddError::UnknownTorrent(TorrentId(77)))
    );
    let marked = net.nodes[l].engine.set_have(now, tl, &found).expect("set");
    assert_eq!(marked, found.count_ones());
    // Marking them again adds nothing.
    assert_eq!(net.nodes[l].engine.set_have(now, tl, &found), Ok(0));
    let st = net.nodes[l].engine.torrent_stats(now, tl).expect("stats");
    assert_eq!(st.state, TorrentState::Paused);
    assert_eq!(st.have.count_ones(), found.count_ones());
    let before = net.nodes[l].events.len();
    net.nodes[l].engine.resume(now, tl);
    assert!(net.run_until(Duration::from_secs(120), |n| n.completed(l, tl)));
    assert_eq!(disk_content(&net.nodes[l], tl), content);
    let fetched: BTreeSet<u32> = net.nodes[l].events[before..]
        .iter()
        .filter_map(|e| match e {
            Event::PieceVerified { piece, .. } => Some(*piece),
            _ => None,
        })
        .collect();
    let missing: BTreeSet<u32> = (0..pieces).filter(|p| !found.get(*p)).collect();
    assert_eq!(fetched, missing);
}

#[test]
fn a_check_that_finds_everything_completes_the_paused_torrent() {
    let (mut net, meta, content, l, tl) = seed_and_magnet();
    let pieces = meta.info.layout().piece_count();
    assert!(net.run_until(Duration::from_secs(30), |n| n.nodes[l]
        .events
        .iter()
        .any(|e| matches!(e, Event::MetadataReceived { .. }))));
    let now = net.now;
    net.nodes[l].engine.pause(now, tl);
    load_disk(&mut net.nodes[l], tl, &content, PL);
    let full = Bitfield::full(pieces);
    assert_eq!(net.nodes[l].engine.set_have(now, tl, &full), Ok(pieces));
    net.settle();
    assert!(net.completed(l, tl));
    net.nodes[l].engine.resume(net.now, tl);
    net.run_for(Duration::from_secs(5));
    let st = net.nodes[l]
        .engine
        .torrent_stats(net.now, tl)
        .expect("stats");
    assert_eq!(st.state, TorrentState::Seeding);
    assert!(!net.nodes[l]
        .events
        .iter()
        .any(|e| matches!(e, Event::PieceVerified { .. })));
}

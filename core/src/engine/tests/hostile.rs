//! Hostile-peer findings of issue 18, each with a bound that does not depend on the machine: counts
//! of requests, connections and dials, and virtual time.

use super::*;
use crate::engine::admission::{REJECT_FORGET, REJECT_SNUB};

/// One engine driven by hand, keeping the connection ids of its dials (unlike [`Raw::drain`]).
fn drain_dials(raw: &mut Raw) -> Vec<(ConnId, SocketAddr)> {
    let mut dials = Vec::new();
    while let Some(o) = raw.engine.poll_output() {
        match o {
            Output::Connect { conn, addr, .. } => dials.push((conn, addr)),
            Output::Send { conn, data } => raw.engine.handle_flushed(raw.now, conn, data.len()),
            Output::Close { conn } => raw.closed.push(conn),
            _ => {}
        }
    }
    while raw.engine.poll_event().is_some() {}
    dials
}

fn request_list(msgs: &[Message]) -> Vec<crate::wire::BlockRequest> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Request(r) => Some(*r),
            _ => None,
        })
        .collect()
}

/// A leecher with one incoming fast-extension peer that has every piece of `meta`.
fn leecher_with_seed(meta: &Metainfo) -> (Raw, ConnId) {
    let mut raw = Raw::new();
    raw.engine
        .add_torrent(raw.now, add(meta, None, vec![]))
        .expect("add");
    raw.drain();
    let conn = raw.connect_in(
        addr(200, 5000),
        meta.info_hash(),
        *b"-XX0001-rejectreject",
        Reserved::FAST,
        &[Message::HaveAll, Message::Unchoke],
    );
    (raw, conn)
}

/// Steps virtual time to the engine's next deadline (at most `until`) and drains.
fn step(raw: &mut Raw, until: Instant) {
    let next = raw.engine.poll_timeout().expect("a deadline").min(until);
    raw.now = raw.now.max(next);
    raw.engine.handle_timeout(raw.now);
    raw.drain();
}

/// Finding 2: a peer that unchokes and answers every request with `reject_request` was asked for
/// the same block again at once (237 589 requests in 10 s). Now a rejected piece is not asked of that
/// peer again until something changes, a run of rejects with no block stops the asking, and the
/// memory ends by itself after a window that doubles while the peer keeps rejecting: over 10 minutes
/// of virtual time the requests stay a small bounded count.
#[test]
fn a_peer_that_rejects_everything_is_asked_a_bounded_number_of_times() {
    // 64 pieces of 32 KiB: 128 blocks, far more than the reject run that stops the asking.
    let (meta, _) = make_torrent("many", &[("x.bin", 64 * u64::from(PL))], PL, vec![]);
    let (mut raw, conn) = leecher_with_seed(&meta);
    let start = raw.now;
    let mut total = 0usize;
    let mut first_batch = None;
    let until = start + Duration::from_secs(600);
    // The peer answers every request with a reject at once; only time moves anything else.
    while raw.now < until {
        let reqs = request_list(&raw.take(conn));
        if reqs.is_empty() {
            // Keep the connection alive (the idle timeout is not what this is about), then wait.
            raw.send(conn, &[Message::KeepAlive]);
            step(&mut raw, until);
            continue;
        }
        let first = *first_batch.get_or_insert(reqs.len());
        total += reqs.len();
        // Checked as it goes: without the memory this loop never ends (no time passes).
        assert!(
            total <= 14 * (first + REJECT_SNUB as usize),
            "{total} requests by {:?}",
            raw.now.saturating_duration_since(start)
        );
        let rejects: Vec<Message> = reqs.into_iter().map(Message::RejectRequest).collect();
        raw.send(conn, &rejects);
    }
    let first = first_batch.expect("the unchoke brought requests");
    // Windows of 5, 10, 20, 40 then 60 s: at most 14 begin in 600 s; each asks at most the first
    // batch plus the snub run.
    let bound = 14 * (first + REJECT_SNUB as usize);
    assert!(
        total <= bound,
        "{total} requests in 600 s (first batch {first}, bound {bound})"
    );
    assert!(
        total > first + REJECT_SNUB as usize,
        "{total} requests: the window never ended"
    );
    eprintln!("{total} requests in 600 s of rejects (first batch {first})");
    // A new unchoke is a change: the peer is asked again at once.
    raw.take(conn);
    raw.send(conn, &[Message::Choke, Message::Unchoke]);
    assert!(!request_list(&raw.take(conn)).is_empty());
}

/// Finding 2, the other side: libtorrent rejects whole batches (a full request queue, a choke), and
/// with the first reject memory a piece rejected by the only peer was never asked again. Here the
/// only peer rejects everything in its first batch and serves all later requests, with no unchoke
/// in between: the download completes, the rejected blocks are asked again after the window, and
/// no block is asked more than twice.
#[test]
fn the_only_peer_rejecting_a_batch_still_serves_the_whole_torrent() {
    let (meta, content) = make_torrent("few", &[("x.bin", 8 * u64::from(PL))], PL, vec![]);
    let (mut raw, conn) = leecher_with_seed(&meta);
    let t = TorrentId(0);
    let start = raw.now;
    let mut first = true;
    let mut times: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    let until = start + Duration::from_secs(120);
    while !raw
        .engine
        .torrent_stats(raw.now, t)
        .expect("stats")
        .have
        .all()
    {
        assert!(raw.now < until, "stalled: {times:?}");
        let reqs = request_list(&raw.take(conn));
        if reqs.is_empty() {
            raw.send(conn, &[Message::KeepAlive]);
            step(&mut raw, until);
            continue;
        }
        for r in &reqs {
            *times.entry((r.index, r.begin)).or_default() += 1;
        }
        let answers: Vec<Message> = if std::mem::take(&mut first) {
            reqs.into_iter().map(Message::RejectRequest).collect()
        } else {
            reqs.into_iter()
                .map(|r| {
                    let at = r.index as usize * PL as usize + r.begin as usize;
                    Message::Piece {
                        index: r.index,
                        begin: r.begin,
                        block: Bytes::copy_from_slice(&content[at..at + r.length as usize]),
                    }
                })
                .collect()
        };
        raw.send(conn, &answers);
    }
    assert!(times.values().all(|n| *n <= 2), "{times:?}");
    assert!(
        raw.now.saturating_duration_since(start) <= REJECT_FORGET + Duration::from_secs(1),
        "took {:?} of virtual time",
        raw.now.saturating_duration_since(start)
    );
}

/// An allowed-fast message is a change too: a rejected piece may be asked again.
#[test]
fn an_allowed_fast_message_ends_the_reject_memory() {
    let (meta, _) = make_torrent("few", &[("x.bin", 2 * u64::from(PL))], PL, vec![]);
    let (mut raw, conn) = leecher_with_seed(&meta);
    // Reject until nothing more is asked (both pieces rejected; no time passes).
    let mut rounds = 0;
    loop {
        let reqs = request_list(&raw.take(conn));
        if reqs.is_empty() {
            break;
        }
        rounds += 1;
        assert!(rounds <= 4, "still asking");
        let rejects: Vec<Message> = reqs.into_iter().map(Message::RejectRequest).collect();
        raw.send(conn, &rejects);
    }
    assert!(rounds >= 1);
    raw.send(conn, &[Message::AllowedFast { piece: 1 }]);
    assert!(!request_list(&raw.take(conn)).is_empty());
}

/// Finding 3: a peer whose connection dropped mid-frame was redialled only after a fixed 60 s. Now the
/// wait starts at seconds and doubles with each further drop.
#[test]
fn a_dropped_peer_is_redialled_after_seconds_and_later_each_time() {
    let (meta, _) = make_torrent("multi", FILES, PL, vec![]);
    let mut raw = Raw::new();
    let seeder = addr(9, 6881);
    raw.engine
        .add_torrent(raw.now, add(&meta, None, vec![seeder]))
        .expect("add");
    let hs = Handshake::new(
        meta.info_hash(),
        PeerId(*b"-XX0001-dropdropdrop"),
        Reserved::empty(),
    )
    .to_bytes();
    let mut dialled_at = Vec::new();
    for _ in 0..4 {
        let conn = loop {
            if let Some(&(conn, a)) = drain_dials(&mut raw).first() {
                assert_eq!(a, seeder);
                break conn;
            }
            let next = raw.engine.poll_timeout().expect("a deadline");
            assert!(next < Instant::from_secs(10_000), "never redialled");
            raw.now = raw.now.max(next);
            raw.engine.handle_timeout(raw.now);
        };
        dialled_at.push(raw.now);
        raw.engine.handle_connected(raw.now, conn);
        // The handshake, then half of a frame, then the connection drops.
        let mut bytes = hs.to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 13, 6, 0]);
        raw.engine.handle_read(raw.now, conn, &bytes);
        raw.engine.handle_closed(raw.now, conn);
    }
    let gaps: Vec<u64> = dialled_at
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]).as_secs())
        .collect();
    assert_eq!(gaps, vec![5, 10, 20], "{dialled_at:?}");
}

/// A distinct loopback address per `i` (127.0.0.0/8 is all loopback).
fn silent_addr(i: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + i)), 40000)
}

fn peer_id_of(i: u32) -> PeerId {
    let mut id = *b"-XX0001-000000000000";
    id[8..].copy_from_slice(format!("{i:012}").as_bytes());
    PeerId(id)
}

/// Finding 1: 200 connections that send a handshake and then nothing held every slot of a seeder
/// (60 per torrent) until the idle timeout, and an honest leecher was turned away. Now a newcomer
/// takes the slot of a connection that said nothing, the honest leecher is served at once (no
/// timeout expires first), and silent connections are dropped after 60 s while the torrent is full.
#[test]
fn silent_connections_cannot_keep_an_honest_leecher_out() {
    let (meta, content) = make_torrent("multi", FILES, PL, vec![]);
    let pieces = meta.info.layout().piece_count();
    let mut raw = Raw::new();
    let t = raw.add_seed(&meta, &content);
    let cap = EngineConfig::default().max_peers_per_torrent;
    let mut silent = Vec::new();
    for i in 0..200u32 {
        let conn = raw
            .engine
            .handle_incoming(raw.now, silent_addr(i + 1))
            .expect("distinct addresses are accepted");
        let hs = Handshake::new(meta.info_hash(), peer_id_of(i), Reserved::empty());
        raw.engine.handle_read(raw.now, conn, &hs.to_bytes());
        raw.drain();
        silent.push(conn);
    }
    let st = raw.engine.torrent_stats(raw.now, t).expect("stats");
    assert_eq!(
        st.peers as usize, cap,
        "the torrent is full of silent peers"
    );

    // The honest leecher: handshake, then interested. Accepted at once, with no time passing.
    let honest = raw.connect_in(
        addr(7, 6881),
        meta.info_hash(),
        *b"-XX0001-honesthonest",
        Reserved::empty(),
        &[Message::Interested],
    );
    assert!(
        !raw.closed.contains(&honest),
        "the honest leecher was refused"
    );
    let st = raw.engine.torrent_stats(raw.now, t).expect("stats");
    assert_eq!(st.peers as usize, cap);
    assert!(st.peer_list.iter().any(|p| p.addr == addr(7, 6881)));

    // It completes: unchoked by the choker, it asks for every block and gets each one.
    let mut got = BTreeMap::new();
    let mut asked = false;
    for _ in 0..50 {
        if !asked && raw.take(honest).contains(&Message::Unchoke) {
            let mut reqs = Vec::new();
            for p in 0..pieces {
                let size = meta.info.layout().piece_len(p).expect("piece");
                for begin in (0..size).step_by(16384) {
                    reqs.push(Message::Request(crate::wire::BlockRequest {
                        index: p,
                        begin,
                        length: (size - begin).min(16384),
                    }));
                }
            }
            raw.send(honest, &reqs);
            asked = true;
        }
        for m in raw.take(honest) {
            if let Message::Piece {
                index,
                begin,
                block,
            } = m
            {
                got.insert((index, begin), block);
            }
        }
        if asked && got.values().map(Bytes::len).sum::<usize>() == content.len() {
            break;
        }
        raw.now = raw.now.max(raw.engine.poll_timeout().expect("deadline"));
        raw.engine.handle_timeout(raw.now);
        raw.drain();
    }
    let copy: Vec<u8> = got.values().flat_map(|b| b.iter().copied()).collect();
    assert!(copy == content, "the honest leecher got the whole torrent");

    // The silent ones that are left are dropped once they held their slot 60 s with the torrent full.
    let until = raw.now + Duration::from_secs(75);
    while raw.now < until {
        raw.now = raw
            .now
            .max(raw.engine.poll_timeout().expect("deadline").min(until));
        raw.engine.handle_timeout(raw.now);
        raw.drain();
        raw.take(honest);
    }
    let st = raw.engine.torrent_stats(raw.now, t).expect("stats");
    assert!(
        (st.peers as usize) < cap,
        "{} peers after 60 s of silence",
        st.peers
    );
    assert!(st.peer_list.iter().any(|p| p.addr == addr(7, 6881)));
}

/// The per-IP cap for incoming connections: the ninth from one address is refused, another address
/// is not.
#[test]
fn incoming_connections_per_ip_are_capped() {
    let mut raw = Raw::new();
    let ip = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9));
    let cap = EngineConfig::default().max_incoming_per_ip;
    for port in 0..cap as u16 {
        assert!(raw
            .engine
            .handle_incoming(raw.now, SocketAddr::new(ip, 1000 + port))
            .is_some());
    }
    assert!(raw
        .engine
        .handle_incoming(raw.now, SocketAddr::new(ip, 5000))
        .is_none());
    raw.drain();
    assert!(
        raw.events.iter().any(|e| matches!(e,
            Event::PeerRefused { addr, .. } if addr.ip() == ip)),
        "the refusal is reported: {:?}",
        raw.events
    );
    assert!(raw.engine.handle_incoming(raw.now, addr(8, 5000)).is_some());
}

/// Finding 4, the engine's side: a full address book takes a fresh address in place of one that
/// keeps failing, instead of keeping only the first addresses it heard of.
#[test]
fn a_full_address_book_replaces_a_failing_address() {
    let mut book = torrent::AddressBook::default();
    let now = Instant::from_secs(1);
    for i in 0..torrent::MAX_BOOK as u32 {
        assert!(book.add(now, silent_addr(i + 1)));
    }
    assert!(!book.add(now, addr(1, 1)), "full, and nobody failed");
    book.failed(now, &silent_addr(7));
    book.failed(now, &silent_addr(7));
    book.failed(now, &silent_addr(9));
    assert!(book.add(now, addr(1, 1)));
    assert_eq!(book.entries.len(), torrent::MAX_BOOK);
    assert!(
        !book.entries.contains_key(&silent_addr(7)),
        "the worst went"
    );
    assert!(book.entries.contains_key(&silent_addr(9)));
}

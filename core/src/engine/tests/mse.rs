//! Engine tests of protocol encryption (`engine/mse.rs`): the three policies between engines on the
//! in-memory network, the fallback to plain, and hostile first bytes from a hand-driven peer.

use super::*;
use crate::mse::{self as pe, NoSkeys, Policy, REQ1_SYNC_BOUND};
use crate::rng::seeded;

fn config(policy: Policy) -> EngineConfig {
    EngineConfig {
        encryption: policy,
        ..EngineConfig::default()
    }
}

/// A seeder (node 0) and a leecher (node 1) with the given policies; the leecher dials the seeder.
fn pair(seed_policy: Policy, leech_policy: Policy) -> (Net, Vec<u8>, TorrentId) {
    let (meta, content) = make_torrent("multi", FILES, PL, vec![]);
    let mut net = Net::new();
    let s = net.add_node(config(seed_policy), 1);
    let l = net.add_node(config(leech_policy), 2);
    net.add_seed(s, &meta, &content, PL);
    let seeder = net.nodes[s].addr;
    let tl = net.add_leech(l, &meta, vec![seeder]);
    (net, content, tl)
}

/// Connections of node `i` with an RC4 stream / that did an MSE handshake.
fn kinds(net: &Net, i: usize) -> (usize, usize) {
    let e = &net.nodes[i].engine;
    let ids: Vec<ConnId> = e.conns.keys().copied().collect();
    let rc4 = ids.iter().filter(|id| e.mse_is_rc4(**id)).count();
    let mse = ids.iter().filter(|id| e.mse.via_mse(**id)).count();
    (rc4, mse)
}

fn established(net: &Net, i: usize) -> usize {
    net.nodes[i]
        .engine
        .conns
        .values()
        .filter(|c| c.established_at.is_some())
        .count()
}

#[test]
fn require_both_ends_downloads_over_rc4() {
    let (mut net, content, tl) = pair(Policy::Require, Policy::Require);
    let mut seen = (0, 0);
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(1, tl)));
    for i in 0..2 {
        let (rc4, mse) = kinds(&net, i);
        seen.0 += rc4;
        seen.1 += mse;
    }
    assert_eq!(disk_content(&net.nodes[1], tl), content);
    // Both ends of the one connection are RC4 (the seeder may already have dropped it after the
    // leecher completed: seeds do not keep seeds).
    assert!(seen.0 >= 1 && seen.0 == seen.1, "{seen:?}");
}

#[test]
fn prefer_both_ends_selects_plaintext_and_keeps_no_cipher() {
    let (mut net, content, tl) = pair(Policy::Prefer, Policy::Prefer);
    // Stop while the connection is up: it went through MSE, selected plaintext, and neither end runs
    // a cipher (the payload costs what a plain connection costs; only the frame cut stays).
    assert!(net.run_until(Duration::from_secs(60), |n| established(n, 1) == 1));
    let (rc4, mse) = kinds(&net, 1);
    assert_eq!((rc4, mse), (0, 1));
    for i in 0..2 {
        let e = &net.nodes[i].engine;
        assert!(e.conns.keys().all(|id| !e.mse_has_cipher(*id)));
    }
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(1, tl)));
    assert_eq!(disk_content(&net.nodes[1], tl), content);
}

#[test]
fn prefer_falls_back_to_plain_for_a_peer_without_encryption_and_remembers_it() {
    let (mut net, content, tl) = pair(Policy::Disable, Policy::Prefer);
    let seeder = net.nodes[0].addr;
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(1, tl)));
    assert_eq!(disk_content(&net.nodes[1], tl), content);
    assert!(net.nodes[1].engine.mse_plain_peer(&seeder));
    // One MSE dial, one plain redial at once (no back-off in between).
    let dials = net
        .connects
        .iter()
        .filter(|(i, a)| *i == 1 && *a == seeder)
        .count();
    assert_eq!(dials, 2);
    assert_eq!(kinds(&net, 1), (0, 0));
}

#[test]
fn require_and_disable_never_talk() {
    for (seed, leech) in [
        (Policy::Disable, Policy::Require),
        (Policy::Require, Policy::Disable),
    ] {
        let (mut net, _content, tl) = pair(seed, leech);
        assert!(!net.run_until(Duration::from_secs(120), |n| n.completed(1, tl)));
        for i in 0..2 {
            assert!(
                !net.nodes[i]
                    .events
                    .iter()
                    .any(|e| matches!(e, Event::PeerConnected { .. })),
                "{seed} seeder, {leech} leecher: node {i} connected"
            );
        }
        // `require` never falls back.
        assert!(!net.nodes[1].engine.mse_plain_peer(&net.nodes[0].addr));
    }
}

#[test]
fn we_advertise_encryption_in_the_extension_handshake_unless_disabled() {
    for (policy, want) in [(Policy::Prefer, true), (Policy::Disable, false)] {
        let (meta, _content) = make_torrent("multi", FILES, PL, vec![]);
        let mut raw = Raw::with_config(config(policy));
        raw.add_leech(&meta);
        let conn = raw.connect_in(
            addr(200, 5000),
            meta.info_hash(),
            *b"-XX0001-abcdefghijkl",
            Reserved::EXTENSION_PROTOCOL,
            &[],
        );
        let ext = raw
            .take(conn)
            .into_iter()
            .find_map(|m| match m {
                Message::Extended { id: 0, payload } => Some(payload),
                _ => None,
            })
            .expect("our extension handshake");
        let v = crate::bencode::decode(&ext).expect("bencode");
        let e = v.get(b"e").and_then(|e| e.as_int());
        assert_eq!(e == Some(1), want, "{policy}: e = {e:?}");
    }
}

/// An engine under `policy` with one torrent, and an accepted connection from a hand-driven peer.
fn raw_accepting(policy: Policy) -> (Raw, Metainfo, ConnId) {
    let (meta, _content) = make_torrent("multi", FILES, PL, vec![]);
    let mut raw = Raw::with_config(config(policy));
    raw.add_leech(&meta);
    let conn = raw
        .engine
        .handle_incoming(raw.now, addr(200, 5000))
        .expect("accepted");
    (raw, meta, conn)
}

#[test]
fn require_refuses_a_plain_handshake_at_its_first_bytes() {
    let (mut raw, meta, conn) = raw_accepting(Policy::Require);
    let hs = Handshake::new(meta.info_hash(), PeerId([7; 20]), Reserved::empty());
    // 19 bytes of the prefix are not enough to tell.
    raw.engine.handle_read(raw.now, conn, &hs.to_bytes()[..19]);
    raw.drain();
    assert!(raw.closed.is_empty());
    raw.engine.handle_read(raw.now, conn, &hs.to_bytes()[19..]);
    raw.drain();
    assert_eq!(raw.closed, vec![conn]);
    assert!(raw.got.is_empty(), "nothing was sent to it");
}

#[test]
fn garbage_or_endless_padding_ends_the_connection_within_the_sync_bound() {
    for policy in [Policy::Prefer, Policy::Require] {
        let (mut raw, _meta, conn) = raw_accepting(policy);
        let mut rng = seeded(5);
        // A valid-looking public key, then padding that never holds HASH('req1', S): one byte at a
        // time, so the bound is met exactly.
        let mut sent = 0;
        while raw.closed.is_empty() {
            let b = [rng.random::<u8>() | 0x80];
            raw.engine.handle_read(raw.now, conn, &b);
            raw.drain();
            sent += 1;
            assert!(
                sent <= REQ1_SYNC_BOUND,
                "{policy}: still open after {sent} bytes"
            );
        }
        assert_eq!(sent, REQ1_SYNC_BOUND, "{policy}");
        assert_eq!(raw.closed, vec![conn]);
    }
}

#[test]
fn a_silent_or_truncated_handshake_times_out() {
    let (mut raw, _meta, conn) = raw_accepting(Policy::Prefer);
    // 50 bytes of a 96-byte public key, then nothing.
    raw.engine.handle_read(raw.now, conn, &[0xAB; 50]);
    raw.drain();
    assert!(raw.closed.is_empty());
    let start = raw.now;
    while raw.closed.is_empty() {
        let next = raw.engine.poll_timeout().expect("a deadline");
        assert!(
            next <= start + Duration::from_secs(30),
            "no timeout by {next:?}"
        );
        raw.now = next;
        raw.engine.handle_timeout(raw.now);
        raw.drain();
    }
    assert_eq!(raw.closed, vec![conn]);
}

#[test]
fn an_encrypted_peer_reaches_the_torrent_through_the_req2_lookup() {
    let (mut raw, meta, conn) = raw_accepting(Policy::Require);
    let mut rng = seeded(11);
    let ours = Handshake::new(meta.info_hash(), PeerId([9; 20]), Reserved::FAST);
    let mut a = pe::Handshake::outgoing(
        raw.now,
        &mut rng,
        meta.info_hash(),
        Policy::Require,
        &ours.to_bytes(),
    )
    .expect("dialler");
    let mut done = None;
    // Ping-pong until the dialler is established; every engine output goes to it.
    let mut to_engine = a.poll_transmit().expect("Ya, PadA").to_vec();
    for _ in 0..8 {
        if !to_engine.is_empty() {
            // Split the bytes in two reads at an odd place.
            let cut = to_engine.len() / 3;
            raw.engine.handle_read(raw.now, conn, &to_engine[..cut]);
            raw.engine.handle_read(raw.now, conn, &to_engine[cut..]);
            to_engine.clear();
        }
        let mut from_engine = Vec::new();
        while let Some(o) = raw.engine.poll_output() {
            if let Output::Send { data, .. } = o {
                from_engine.extend_from_slice(&data);
            }
        }
        if from_engine.is_empty() {
            break;
        }
        let mut rest = &from_engine[..];
        if done.is_none() {
            let n = a.handle_read(rest, &NoSkeys).expect("dialler reads");
            rest = &rest[n..];
            if let Some(x) = a.take_established() {
                done = Some((x, Vec::new()));
            }
            if let Some(b) = a.poll_transmit() {
                to_engine.extend_from_slice(&b);
            }
        }
        if let Some((est, got)) = done.as_mut() {
            let mut r = rest.to_vec();
            est.transform.decrypt_in_place(&mut r);
            got.extend_from_slice(&r);
        }
    }
    let (est, got) = done.expect("established");
    assert_eq!(est.crypto, pe::Crypto::Rc4);
    assert!(raw.closed.is_empty());
    // The engine answered with its own BitTorrent handshake for the torrent, through RC4.
    let theirs = Handshake::parse(&got[..68]).expect("a BitTorrent handshake");
    assert_eq!(theirs.info_hash, meta.info_hash());
    assert!(raw.engine.mse_is_rc4(conn));
}

/// Drains `raw`'s outputs by hand: dials are answered as connected at once, sent bytes are kept per
/// connection, closes recorded. Returns the dials (connection id, address) seen.
fn drain_connecting(
    raw: &mut Raw,
    sent: &mut BTreeMap<ConnId, Vec<u8>>,
) -> Vec<(ConnId, SocketAddr)> {
    let mut dials = Vec::new();
    while let Some(o) = raw.engine.poll_output() {
        match o {
            Output::Connect { conn, addr, .. } => {
                dials.push((conn, addr));
                raw.engine.handle_connected(raw.now, conn);
            }
            Output::Send { conn, data } => {
                sent.entry(conn).or_default().extend_from_slice(&data);
                raw.engine.handle_flushed(raw.now, conn, data.len());
            }
            Output::Close { conn } => raw.closed.push(conn),
            _ => {}
        }
    }
    while raw.engine.poll_event().is_some() {}
    dials
}

#[test]
fn prefer_redials_plain_at_once_when_the_peer_answers_mse_with_a_plain_handshake() {
    // A plain-only client that sends its BitTorrent handshake as soon as the connection is up, where
    // our MSE dial expects its 96-byte public key. It used to cost the 30 s handshake timeout.
    let (meta, _content) = make_torrent("multi", FILES, PL, vec![]);
    let peer = addr(200, 6881);
    let mut raw = Raw::new();
    raw.engine = Engine::new(config(Policy::Prefer), 7, raw.now);
    raw.engine
        .add_torrent(raw.now, add(&meta, None, vec![peer]))
        .expect("add");
    let mut sent = BTreeMap::new();
    let dials = drain_connecting(&mut raw, &mut sent);
    let [(first, a)] = dials[..] else {
        panic!("one dial expected, got {dials:?}")
    };
    assert_eq!(a, peer);
    // Our MSE dial: a public key, not a BitTorrent handshake.
    let ours = sent.get(&first).cloned().unwrap_or_default();
    assert!(ours.len() >= 96 && !ours.starts_with(b"\x13BitTorrent protocol"));
    let start = raw.now;
    let theirs = Handshake::new(meta.info_hash(), PeerId([7; 20]), Reserved::FAST).to_bytes();
    // 19 bytes of the prefix are not enough to tell; the 20th is.
    raw.engine.handle_read(raw.now, first, &theirs[..19]);
    assert!(drain_connecting(&mut raw, &mut sent).is_empty());
    assert!(raw.closed.is_empty());
    raw.engine.handle_read(raw.now, first, &theirs[19..]);
    let mut redials = drain_connecting(&mut raw, &mut sent);
    assert_eq!(raw.closed, vec![first]);
    assert!(raw.engine.mse_plain_peer(&peer));
    // The redial may wait for the engine's next dial round, never for a back-off or the timeout.
    while redials.is_empty() {
        let next = raw.engine.poll_timeout().expect("a deadline");
        assert!(
            next <= start + Duration::from_secs(1),
            "no redial by {next:?}"
        );
        raw.now = raw.now.max(next);
        raw.engine.handle_timeout(raw.now);
        redials = drain_connecting(&mut raw, &mut sent);
    }
    let [(second, a)] = redials[..] else {
        panic!("one redial expected, got {redials:?}")
    };
    assert_eq!(a, peer);
    assert!(raw.now <= start + Duration::from_secs(1));
    // The redial is a plain BitTorrent handshake for the same torrent.
    let plain = sent.get(&second).cloned().unwrap_or_default();
    assert!(plain.starts_with(b"\x13BitTorrent protocol"), "{plain:?}");
    assert_eq!(&plain[28..48], &meta.info_hash().0[..]);
}

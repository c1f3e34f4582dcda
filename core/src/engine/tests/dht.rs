//! Engine tests of the DHT on the in-memory network: a trackerless magnet link completes through
//! the DHT alone, private torrents never reach it, the saved state keeps the node id and table, and
//! the shared UDP socket keeps serving trackers.

use super::*;
use crate::dht::krpc::{self, Body, QueryKind};
use crate::magnet::MagnetLink;

/// An engine config whose DHT starts from the given nodes (never a public router).
fn dht_config(bootstrap: &[SocketAddr]) -> EngineConfig {
    EngineConfig {
        dht: Some(DhtSettings {
            bootstrap: bootstrap
                .iter()
                .map(|a| (a.ip().to_string(), a.port()))
                .collect(),
            ..DhtSettings::default()
        }),
        ..EngineConfig::default()
    }
}

fn magnet(meta: &Metainfo) -> AddMagnet {
    AddMagnet {
        link: MagnetLink::new(meta.info_hash()),
        wanted_files: None,
        paused: false,
        peers: Vec::new(),
    }
}

/// The `get_peers` and `announce_peer` queries among KRPC datagrams, as (info-hash, is announce).
fn peer_queries(data: &[u8]) -> Option<(InfoHash, bool)> {
    match krpc::decode(data).ok()?.body {
        Body::Query(q) => match q.kind {
            QueryKind::GetPeers { info_hash } => Some((info_hash, false)),
            QueryKind::AnnouncePeer { info_hash, .. } => Some((info_hash, true)),
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn a_trackerless_magnet_link_completes_through_the_dht_alone() {
    let (meta, content) = make_torrent("dht", FILES, PL, vec![]);
    let mut net = Net::new();
    // A router node (no torrents), a seeder and a leecher that know only the router.
    let r = net.add_node(dht_config(&[]), 1);
    let router = net.nodes[r].addr;
    let s = net.add_node(dht_config(&[router]), 2);
    let l = net.add_node(dht_config(&[router]), 3);
    let now = net.now;
    net.add_seed(s, &meta, &content, PL);
    let tl = net.nodes[l]
        .engine
        .add_magnet(now, magnet(&meta))
        .expect("add magnet");
    assert!(net.run_until(Duration::from_secs(120), |n| n.completed(l, tl)));
    assert_eq!(disk_content(&net.nodes[l], tl), content);
    let seeder = net.nodes[s].addr;
    assert!(
        net.connects.iter().any(|&(i, a)| i == l && a == seeder),
        "the leecher dialled the seeder it found in the DHT"
    );
    for n in [r, s, l] {
        let st = net.nodes[n].engine.dht_stats(net.now).expect("dht on");
        assert!(st.nodes >= 1, "node {n} knows others: {st:?}");
    }
    // The seeder's announce reached the router's store.
    let st = net.nodes[r].engine.dht_stats(net.now).expect("dht on");
    assert!(st.stored_peers >= 1, "{st:?}");
}

#[test]
fn private_torrents_never_reach_the_dht_and_public_ones_do() {
    let (public, _) = make_torrent("public", FILES, PL, vec![]);
    let list: Vec<(Vec<String>, u64)> = FILES
        .iter()
        .map(|(p, l)| (vec![(*p).to_owned()], *l))
        .collect();
    let mut hasher = TorrentBuilder::multi_file("private", list)
        .piece_length(PL)
        .private(true)
        .start()
        .expect("builder");
    hasher.update(&vec![7u8; 250_007]).expect("content");
    let private = Metainfo::from_bytes(&hasher.finish().expect("finish").bytes).expect("parse");
    assert!(private.info.is_private());
    let bootstrap = addr(200, 6881);
    let now = Instant::from_secs(1000);
    let mut e = Engine::new(dht_config(&[bootstrap]), 9, now);
    e.add_torrent(now, add(&private, None, vec![]))
        .expect("private");
    e.add_torrent(now, add(&public, None, vec![]))
        .expect("public");
    // Nobody answers: lookups time out and retry; run a few minutes of virtual time.
    let mut asked = Vec::new();
    let mut t = now;
    while t < now + Duration::from_secs(300) {
        while let Some(o) = e.poll_output() {
            if let Output::SendDatagram { data, .. } = o {
                asked.extend(peer_queries(&data));
            }
        }
        let Some(next) = e.poll_timeout() else { break };
        t = next.max(t);
        e.handle_timeout(t);
    }
    assert!(
        asked.contains(&(public.info_hash(), false)),
        "the public torrent is looked up"
    );
    assert!(
        !asked.iter().any(|(ih, _)| *ih == private.info_hash()),
        "the private torrent never is"
    );
}

#[test]
fn saved_state_keeps_the_node_id_and_routing_table() {
    let mut net = Net::new();
    let r = net.add_node(dht_config(&[]), 1);
    let router = net.nodes[r].addr;
    let a = net.add_node(dht_config(&[router]), 2);
    assert!(net.run_until(Duration::from_secs(30), |n| {
        n.nodes[a]
            .engine
            .dht_stats(n.now)
            .is_some_and(|s| s.nodes >= 1)
    }));
    let saved = net.nodes[a].engine.save_state().expect("dht on");
    let ours = crate::bencode::decode(&saved)
        .ok()
        .and_then(|v| v.get(b"id").and_then(|i| i.as_bytes()).map(<[u8]>::to_vec))
        .expect("id");
    // A restart with the saved state and no bootstrap at all still knows the router.
    let config = EngineConfig {
        dht: Some(DhtSettings {
            bootstrap: Vec::new(),
            saved_state: Some(saved.clone()),
            ..DhtSettings::default()
        }),
        ..EngineConfig::default()
    };
    let again = Engine::new(config, 5, net.now);
    assert_eq!(again.dht_stats(net.now).expect("dht on").nodes, 1);
    let resaved = again.save_state().expect("dht on");
    let id = crate::bencode::decode(&resaved)
        .ok()
        .and_then(|v| v.get(b"id").and_then(|i| i.as_bytes()).map(<[u8]>::to_vec));
    assert_eq!(id, Some(ours));
    // Garbage instead of a state: a fresh node, no panic.
    let config = EngineConfig {
        dht: Some(DhtSettings {
            bootstrap: Vec::new(),
            saved_state: Some(b"not bencode".to_vec()),
            ..DhtSettings::default()
        }),
        ..EngineConfig::default()
    };
    assert_eq!(
        Engine::new(config, 6, net.now)
            .dht_stats(net.now)
            .expect("dht on")
            .nodes,
        0
    );
}

#[test]
fn bootstrap_names_are_resolved_and_udp_trackers_share_the_socket() {
    // The leecher's router is known by name only; its tracker is a UDP one on the same socket.
    let (meta, content) = make_torrent("shared", FILES, PL, vec![]);
    let mut net = Net::new();
    let r = net.add_node(dht_config(&[]), 1);
    let router = net.nodes[r].addr;
    net.hosts.insert("router.test", router.ip());
    let s = net.add_node(EngineConfig::default(), 2);
    let l = net.add_node(
        EngineConfig {
            dht: Some(DhtSettings {
                bootstrap: vec![("router.test".into(), router.port())],
                ..DhtSettings::default()
            }),
            ..EngineConfig::default()
        },
        3,
    );
    let tracker = addr(100, 6969);
    net.udp.insert(
        tracker,
        FakeUdp {
            peers: vec![net.nodes[s].addr],
            announces: Vec::new(),
        },
    );
    let now = net.now;
    net.add_seed(s, &meta, &content, PL);
    let mut link = MagnetLink::new(meta.info_hash());
    link.trackers = vec![format!("udp://{tracker}/announce")];
    let tl = net.nodes[l]
        .engine
        .add_magnet(
            now,
            AddMagnet {
                link,
                ..magnet(&meta)
            },
        )
        .expect("add magnet");
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(l, tl)));
    assert_eq!(disk_content(&net.nodes[l], tl), content);
    assert!(
        !net.udp[&tracker].announces.is_empty(),
        "the UDP tracker was used"
    );
    let st = net.nodes[l].engine.dht_stats(net.now).expect("dht on");
    assert!(
        st.nodes >= 1,
        "the router found by name joined the table: {st:?}"
    );
    // A uTP SYN goes to the uTP socket (its answer is a uTP STATE), never to the DHT node.
    let before = net.nodes[l].engine.dht_stats(net.now).expect("dht on");
    let mut utp = vec![0x41];
    utp.extend_from_slice(&[0; 19]);
    net.nodes[l].engine.handle_datagram(net.now, router, &utp);
    assert!(matches!(
        net.nodes[l].engine.poll_output(),
        Some(Output::SendDatagram { to, data }) if to == router && data[0] == 0x21
    ));
    assert!(net.nodes[l].engine.poll_output().is_none());
    assert_eq!(
        net.nodes[l]
            .engine
            .dht_stats(net.now)
            .expect("dht on")
            .received,
        before.received
    );
}

//! Node-level tests (two or three nodes by hand) and network tests on the simulator.

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;

use crate::rng::{seeded, RngExt};
use crate::time::Instant;
use crate::types::InfoHash;

use super::krpc::{self, Body, Message, Query, QueryKind, Response, Want};
use super::node::{Dht, DhtConfig, DhtEvent, LookupSummary};
use super::sim::{SimConfig, SimNet};
use super::NodeId;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

fn node(seed: u64) -> Dht {
    Dht::new(DhtConfig::default(), Instant::ZERO, seeded(seed))
}

fn query(tid: &[u8], id: NodeId, kind: QueryKind) -> Vec<u8> {
    Message {
        tid: tid.to_vec(),
        version: None,
        read_only: false,
        ip: None,
        body: Body::Query(Query {
            id,
            kind,
            want: Want::default(),
        }),
    }
    .encode()
}

/// Sends one query to `dht` and returns its single reply, decoded.
fn ask(dht: &mut Dht, now: Instant, from: SocketAddr, bytes: &[u8]) -> Option<Message> {
    dht.handle_datagram(now, from, bytes);
    let mut reply = None;
    while let Some((to, b)) = dht.poll_transmit() {
        if to == from {
            let m = krpc::decode(&b).expect("our replies decode");
            if !matches!(m.body, Body::Query(_)) {
                assert!(reply.is_none(), "one reply per query");
                reply = Some(m);
            }
        }
    }
    reply
}

fn error_code(m: &Message) -> Option<i64> {
    match m.body {
        Body::Error { code, .. } => Some(code),
        _ => None,
    }
}

#[test]
fn answers_ping_find_node_and_unknown_methods() {
    let mut d = node(1);
    let from = addr("10.0.0.1:1000");
    let them = NodeId([7; 20]);
    let r = ask(
        &mut d,
        Instant::ZERO,
        from,
        &query(b"aa", them, QueryKind::Ping),
    )
    .expect("reply");
    assert_eq!(r.tid, b"aa");
    assert_eq!(r.ip, Some(from), "BEP 42: tells the querier its address");
    assert!(matches!(r.body, Body::Response(Response { id, .. }) if id == d.id()));
    let r = ask(
        &mut d,
        Instant::ZERO,
        from,
        &query(b"ab", them, QueryKind::Unknown(b"vote".to_vec())),
    )
    .expect("reply");
    assert_eq!(error_code(&r), Some(krpc::error_code::METHOD_UNKNOWN));
    // A query with a broken argument but a transaction id gets error 203; pure garbage gets nothing.
    let r = ask(
        &mut d,
        Instant::ZERO,
        from,
        b"d1:ad2:id2:xxe1:q4:ping1:t2:ac1:y1:qe",
    )
    .expect("reply");
    assert_eq!(error_code(&r), Some(krpc::error_code::PROTOCOL));
    assert!(ask(&mut d, Instant::ZERO, from, b"\xff\x00garbage").is_none());
    assert!(
        ask(&mut d, Instant::ZERO, from, b"d1:t2:aa1:y1:re").is_none(),
        "stray response"
    );
}

#[test]
fn announce_needs_a_token_from_the_same_address_and_honours_implied_port() {
    let mut d = node(2);
    let ih = InfoHash([9; 20]);
    let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:1000"));
    let them = NodeId([7; 20]);
    let r = ask(
        &mut d,
        Instant::ZERO,
        a,
        &query(b"g1", them, QueryKind::GetPeers { info_hash: ih }),
    )
    .expect("reply");
    let Body::Response(Response {
        token: Some(token),
        values,
        ..
    }) = r.body
    else {
        panic!("get_peers reply without a token");
    };
    assert!(values.is_empty());
    let announce = |port, implied_port, token: &[u8]| {
        query(
            b"a1",
            them,
            QueryKind::AnnouncePeer {
                info_hash: ih,
                port,
                implied_port,
                token: token.to_vec(),
            },
        )
    };
    let r = ask(&mut d, Instant::ZERO, b, &announce(6881, false, &token)).expect("reply");
    assert_eq!(
        error_code(&r),
        Some(krpc::error_code::PROTOCOL),
        "token of another address"
    );
    let r = ask(&mut d, Instant::ZERO, a, &announce(6881, false, b"nope")).expect("reply");
    assert_eq!(error_code(&r), Some(krpc::error_code::PROTOCOL));
    let t = Instant::from_secs(60);
    let r = ask(&mut d, t, a, &announce(0, true, &token)).expect("reply");
    assert!(matches!(r.body, Body::Response(_)), "{r:?}");
    let r = ask(
        &mut d,
        t,
        b,
        &query(b"g2", them, QueryKind::GetPeers { info_hash: ih }),
    )
    .expect("reply");
    let Body::Response(Response { values, .. }) = r.body else {
        panic!("no response");
    };
    assert_eq!(values, vec![a], "implied port: the UDP source port");
    assert_eq!(d.stats(t).stored_peers, 1);
    let late = Instant::from_secs(11 * 60);
    let r = ask(&mut d, late, a, &announce(6881, false, &token)).expect("reply");
    assert_eq!(
        error_code(&r),
        Some(krpc::error_code::PROTOCOL),
        "expired token"
    );
}

#[test]
fn rate_limit_per_address_and_replies_bounded_in_size() {
    let mut d = node(3);
    let from = addr("10.0.0.1:1000");
    let now = Instant::from_secs(1);
    let mut replies = 0;
    for i in 0..100u8 {
        if ask(
            &mut d,
            now,
            from,
            &query(&[i], NodeId([1; 20]), QueryKind::Ping),
        )
        .is_some()
        {
            replies += 1;
        }
    }
    assert_eq!(replies, DhtConfig::default().max_responses_per_ip_per_sec);
    assert!(ask(
        &mut d,
        now + Duration::from_secs(1),
        from,
        &query(b"x", NodeId([1; 20]), QueryKind::Ping)
    )
    .is_some());

    // Fill the table and the store, then check the biggest reply: get_peers for a full torrent, both
    // families wanted.
    let mut d = node(4);
    let mut rng = seeded(400);
    let ih = InfoHash([5; 20]);
    for i in 0..200u32 {
        let a = SocketAddr::from(([11, (i >> 8) as u8, i as u8, 1], 6881));
        let id = NodeId::random(&mut rng);
        let r = ask(
            &mut d,
            now,
            a,
            &query(b"g", id, QueryKind::GetPeers { info_hash: ih }),
        )
        .unwrap_or_else(|| panic!("reply {i} {:?}", d.stats(now)));
        let Body::Response(Response {
            token: Some(token), ..
        }) = r.body
        else {
            panic!("no token");
        };
        let q = query(
            b"a",
            id,
            QueryKind::AnnouncePeer {
                info_hash: ih,
                port: 1,
                implied_port: false,
                token,
            },
        );
        assert!(ask(
            &mut d,
            now + Duration::from_secs(1 + u64::from(i) / 10),
            a,
            &q
        )
        .is_some());
    }
    assert_eq!(
        d.stats(now).stored_peers,
        DhtConfig::default().store.max_peers_per_hash
    );
    let q = Message {
        tid: b"zz".to_vec(),
        version: None,
        read_only: false,
        ip: None,
        body: Body::Query(Query {
            id: NodeId([3; 20]),
            kind: QueryKind::GetPeers { info_hash: ih },
            want: Want { v4: true, v6: true },
        }),
    }
    .encode();
    let from = addr("12.0.0.1:2000");
    d.handle_datagram(Instant::from_secs(100), from, &q);
    let (_, bytes) = std::iter::from_fn(|| d.poll_transmit())
        .find(|(to, _)| *to == from)
        .expect("reply");
    assert!(
        bytes.len() <= 1000,
        "reply of {} bytes to a {}-byte query",
        bytes.len(),
        q.len()
    );
}

#[test]
fn read_only_nodes_answer_nothing_and_are_not_added() {
    let ro = DhtConfig {
        read_only: true,
        ..DhtConfig::default()
    };
    let mut r = Dht::new(ro, Instant::ZERO, seeded(5));
    let from = addr("10.0.0.1:1000");
    assert!(ask(
        &mut r,
        Instant::ZERO,
        from,
        &query(b"aa", NodeId([1; 20]), QueryKind::Ping)
    )
    .is_none());
    // Its own queries carry ro=1, and a normal node does not put it in its table (nor ping it).
    let mut n = node(6);
    r.bootstrap(Instant::ZERO, &[addr("10.0.0.9:6881")]);
    let (_, q) = r.poll_transmit().expect("bootstrap query");
    assert!(krpc::decode(&q).expect("decodes").read_only);
    n.handle_datagram(Instant::ZERO, from, &q);
    let out: Vec<_> = std::iter::from_fn(|| n.poll_transmit()).collect();
    assert_eq!(out.len(), 1, "just the reply, no ping to add it");
    assert!(n.table().is_empty());
}

#[test]
fn spoofed_responses_are_ignored_and_state_round_trips() {
    let mut a = node(7);
    let boot = addr("10.0.0.2:6881");
    a.bootstrap(Instant::ZERO, &[boot]);
    let (to, q) = a.poll_transmit().expect("bootstrap query");
    assert_eq!(to, boot);
    let q = krpc::decode(&q).expect("decodes");
    let reply = |id| {
        Message {
            tid: q.tid.clone(),
            version: None,
            read_only: false,
            ip: None,
            body: Body::Response(Response {
                id,
                ..Response::default()
            }),
        }
        .encode()
    };
    a.handle_datagram(
        Instant::ZERO,
        addr("10.0.0.3:6881"),
        &reply(NodeId([3; 20])),
    );
    assert!(a.table().is_empty(), "right tid, wrong address");
    a.handle_datagram(Instant::ZERO, boot, &reply(NodeId([2; 20])));
    assert_eq!(a.table().len(), 1);
    let saved = a.save_state();
    let b = Dht::from_state(DhtConfig::default(), &saved, Instant::ZERO, seeded(8)).expect("loads");
    assert_eq!(b.id(), a.id());
    assert_eq!(
        b.table().iter().map(|e| e.info).collect::<Vec<_>>(),
        a.table().iter().map(|e| e.info).collect::<Vec<_>>()
    );
    assert!(Dht::from_state(DhtConfig::default(), b"garbage", Instant::ZERO, seeded(8)).is_err());
    assert!(Dht::from_state(
        DhtConfig::default(),
        b"d2:id3:abce",
        Instant::ZERO,
        seeded(8)
    )
    .is_err());
}

#[test]
fn bep42_id_when_the_address_is_public() {
    let ip = "203.0.113.7".parse().expect("literal");
    let cfg = DhtConfig {
        external_ip: Some(ip),
        ..DhtConfig::default()
    };
    let d = Dht::new(cfg, Instant::ZERO, seeded(9));
    assert!(d.id().is_secure_for(ip));
    assert!(!d
        .id()
        .is_secure_for("198.51.100.1".parse().expect("literal")));
}

/// Answers every query `d` sends with a response from a fresh random id (nodes that know no one).
fn answer_all(d: &mut Dht, now: Instant, rng: &mut crate::rng::CoreRng) -> usize {
    let mut n = 0;
    while let Some((to, q)) = d.poll_transmit() {
        let q = krpc::decode(&q).expect("decodes");
        let r = Message {
            tid: q.tid,
            version: None,
            read_only: false,
            ip: None,
            body: Body::Response(Response {
                id: NodeId(rng.random()),
                ..Response::default()
            }),
        };
        d.handle_datagram(now, to, &r.encode());
        n += 1;
    }
    n
}

#[test]
fn stale_buckets_are_refreshed_and_questionable_nodes_pinged() {
    let mut rng = seeded(77);
    let mut d = node(10);
    let boot: Vec<SocketAddr> = (1..=12u8)
        .map(|i| SocketAddr::from(([10, 1, 0, i], 6881)))
        .collect();
    d.bootstrap(Instant::ZERO, &boot);
    assert!(answer_all(&mut d, Instant::ZERO, &mut rng) >= 8);
    assert!(d.table().len() >= 8);
    assert!(
        std::iter::from_fn(|| d.poll_event()).any(|e| matches!(e, DhtEvent::Bootstrapped { .. })),
        "bootstrap reported"
    );
    // Nothing happens for 15 minutes except the housekeeping ticks (no traffic: all nodes stay good).
    let mut now = Instant::ZERO;
    while now < Instant::from_secs(14 * 60) {
        now = d.poll_timeout().expect("a deadline");
        d.handle_timeout(now);
        assert!(
            d.poll_transmit().is_none(),
            "no traffic while everything is fresh ({now:?})"
        );
    }
    // Past 15 minutes: buckets are stale (refresh lookups) and nodes questionable (pings).
    while now < Instant::from_secs(16 * 60) {
        now = d.poll_timeout().expect("a deadline");
        d.handle_timeout(now);
    }
    let sent: Vec<(SocketAddr, Message)> = std::iter::from_fn(|| d.poll_transmit())
        .map(|(to, b)| (to, krpc::decode(&b).expect("decodes")))
        .collect();
    let method = |m: &Message| match &m.body {
        Body::Query(q) => q.kind.method().to_vec(),
        _ => Vec::new(),
    };
    assert!(
        sent.iter().any(
            |(to, m)| method(m) == b"find_node" && d.table().iter().any(|e| e.info.addr == *to)
        ),
        "refresh lookup through the table's (now questionable) nodes"
    );
    // Nobody answers: silent nodes collect failures and turn bad.
    let later = now + Duration::from_secs(20 * 60);
    while now < later {
        now = d.poll_timeout().expect("a deadline");
        d.handle_timeout(now);
        while d.poll_transmit().is_some() {}
    }
    let bad = d
        .table()
        .iter()
        .filter(|e| e.status(now) == super::table::Status::Bad)
        .count();
    assert!(bad > 0, "silent nodes turn bad");
    assert_eq!(d.stats(now).good_nodes, 0);
}

#[test]
fn lookups_keep_alpha_queries_in_flight() {
    let mut d = node(11);
    let boot: Vec<SocketAddr> = (1..=20u8)
        .map(|i| SocketAddr::from(([10, 2, 0, i], 6881)))
        .collect();
    d.bootstrap(Instant::ZERO, &boot);
    while d.poll_transmit().is_some() {}
    // The bootstrap lookup itself sends alpha queries; a get_peers lookup (same seeds) another alpha.
    d.get_peers(Instant::ZERO, InfoHash([1; 20]))
        .expect("starts");
    let sent = std::iter::from_fn(|| d.poll_transmit()).count();
    assert_eq!(sent, DhtConfig::default().alpha);
    // Each timeout frees a slot for the next candidate, never more than alpha at once.
    let t = d.poll_timeout().expect("deadline");
    d.handle_timeout(t);
    let resent = std::iter::from_fn(|| d.poll_transmit()).count();
    assert_eq!(
        resent,
        2 * DhtConfig::default().alpha,
        "both lookups refill their slots"
    );
    assert!(d.stats(t).outstanding <= 4 * DhtConfig::default().alpha);
}

#[test]
fn ipv6_nodes_are_served_when_wanted() {
    let mut rng = seeded(12);
    let mut d = node(12);
    let boot: Vec<SocketAddr> = (1..=6u16)
        .map(|i| SocketAddr::new(format!("2001:db8::{i}").parse().expect("v6"), 6881))
        .collect();
    d.bootstrap(Instant::ZERO, &boot);
    answer_all(&mut d, Instant::ZERO, &mut rng);
    assert!(d.table().iter().all(|e| e.info.addr.is_ipv6()) && !d.table().is_empty());
    let q = |want| {
        Message {
            tid: b"w".to_vec(),
            version: None,
            read_only: false,
            ip: None,
            body: Body::Query(Query {
                id: NodeId([9; 20]),
                kind: QueryKind::FindNode {
                    target: NodeId([8; 20]),
                },
                want,
            }),
        }
        .encode()
    };
    let from = addr("10.0.0.1:1000");
    let r = ask(
        &mut d,
        Instant::ZERO,
        from,
        &q(Want {
            v4: false,
            v6: true,
        }),
    )
    .expect("reply");
    let Body::Response(r) = r.body else {
        panic!("no response")
    };
    assert!(r.nodes.is_empty() && !r.nodes6.is_empty());
    let r = ask(&mut d, Instant::ZERO, from, &q(Want::default())).expect("reply");
    let Body::Response(r) = r.body else {
        panic!("no response")
    };
    assert!(
        r.nodes6.is_empty(),
        "a v4 querier without want gets only v4 nodes"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Arbitrary datagrams from arbitrary addresses never panic, and every cap holds.
    #[test]
    fn arbitrary_datagrams_keep_caps(seed in any::<u64>(), packets in proptest::collection::vec((any::<[u8; 4]>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..200), 0u64..3000), 0..200)) {
        let cfg = DhtConfig::default();
        let mut d = Dht::new(cfg.clone(), Instant::ZERO, seeded(seed));
        d.bootstrap(Instant::ZERO, &[addr("10.0.0.1:6881")]);
        let mut now = Instant::ZERO;
        for (ip, port, bytes, ms) in packets {
            now += Duration::from_millis(ms);
            d.handle_timeout(now);
            d.handle_datagram(now, SocketAddr::from((ip, port)), &bytes);
            let s = d.stats(now);
            prop_assert!(s.outstanding <= cfg.max_outstanding);
            prop_assert!(s.rate_limiter_entries <= cfg.rate_limiter_entries);
            prop_assert!(s.transmit_queue <= cfg.max_transmit_queue + cfg.max_outstanding);
            while d.poll_transmit().is_some() {}
            prop_assert!(d.poll_timeout().is_some_and(|t| t > now));
        }
    }
}

// ---- network simulations ----------------------------------------------------------------------------

/// What one get_peers lookup in a simulation measured.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LookupReport {
    found: bool,
    queries_to_first_peer: Option<u32>,
    queries: u32,
    time_to_first_peer: Option<Duration>,
    time: Duration,
}

fn summary_of(net: &SimNet, node: usize, lookup: super::LookupId) -> Option<LookupSummary> {
    net.events.iter().find_map(|(_, i, e)| match e {
        DhtEvent::LookupDone(s) if *i == node && s.lookup == lookup => Some(s.clone()),
        _ => None,
    })
}

/// Runs the network until `node` reports the end of `lookup` (or `limit`); looks only at new events.
fn wait_done(net: &mut SimNet, node: usize, lookup: super::LookupId, limit: Instant) -> bool {
    let mut seen = 0;
    net.run_until_cond(limit, |net| {
        let new = &net.events[seen..];
        seen = net.events.len();
        new.iter().any(
            |(_, i, e)| matches!(e, DhtEvent::LookupDone(s) if *i == node && s.lookup == lookup),
        )
    })
}

fn first_peer_time(
    net: &SimNet,
    node: usize,
    lookup: super::LookupId,
    peer: SocketAddr,
) -> Option<Instant> {
    net.events.iter().find_map(|(t, i, e)| match e {
        DhtEvent::Peers {
            lookup: l, peers, ..
        } if *i == node && *l == lookup && peers.contains(&peer) => Some(*t),
        _ => None,
    })
}

/// Builds a network of `n` nodes joining one by one, then churns 10%, announces, churns 5% more and
/// runs `searches` get_peers lookups from random live nodes.
fn scenario(n: usize, seed: u64, loss: f64, searches: usize) -> (Vec<LookupReport>, SimNet) {
    let mut net = SimNet::new(SimConfig {
        seed,
        loss,
        ..SimConfig::default()
    });
    let cfg = DhtConfig::default();
    let first = net.add_node(cfg.clone(), &[]);
    let router = net.nodes()[first].addr;
    let join = |net: &mut SimNet, count: usize, every: Duration| {
        for _ in 0..count {
            let t = net.now() + every;
            net.run_until(t);
            let live = net.random_live();
            let extra = net.nodes()[live].addr;
            net.add_node(cfg.clone(), &[router, extra]);
        }
    };
    join(&mut net, n - 1, Duration::from_millis(50));
    let t = net.now() + Duration::from_secs(60);
    net.run_until(t);
    // Churn: a tenth of the nodes leave (never the router), as many new ones join.
    let leave = |net: &mut SimNet, count: usize| {
        for _ in 0..count {
            let i = net.random_live();
            if i != first {
                net.kill(i);
            }
        }
    };
    leave(&mut net, n / 10);
    join(&mut net, n / 10, Duration::from_millis(100));
    let t = net.now() + Duration::from_secs(30);
    net.run_until(t);

    let announcer = loop {
        let i = net.random_live();
        if i != first {
            break i;
        }
    };
    let mut ih = [0u8; 20];
    net.rng().fill(&mut ih);
    let ih = InfoHash(ih);
    let port = 51413;
    let peer = SocketAddr::new(net.nodes()[announcer].addr.ip(), port);
    let a = net
        .with_node(announcer, |d, now| d.announce(now, ih, Some(port)))
        .expect("lookup starts");
    let limit = net.now() + Duration::from_secs(120);
    assert!(
        wait_done(&mut net, announcer, a, limit),
        "announce finishes"
    );
    let s = summary_of(&net, announcer, a).expect("summary");
    assert!(s.announced > 0, "announced to someone: {s:?}");
    let t = net.now() + Duration::from_secs(5);
    net.run_until(t);

    leave(&mut net, n / 20);
    let t = net.now() + Duration::from_secs(10);
    net.run_until(t);

    let mut reports = Vec::new();
    for _ in 0..searches {
        let searcher = loop {
            let i = net.random_live();
            if i != announcer {
                break i;
            }
        };
        let start = net.now();
        let l = net
            .with_node(searcher, |d, now| d.get_peers(now, ih))
            .expect("lookup starts");
        let limit = start + Duration::from_secs(120);
        assert!(wait_done(&mut net, searcher, l, limit), "lookup finishes");
        let s = summary_of(&net, searcher, l).expect("summary");
        let first_peer = first_peer_time(&net, searcher, l, peer);
        reports.push(LookupReport {
            found: first_peer.is_some(),
            queries_to_first_peer: s.queries_to_first_peer,
            queries: s.queries,
            time_to_first_peer: first_peer.map(|t| t - start),
            time: s.finished - s.started,
        });
        let t = net.now() + Duration::from_secs(1);
        net.run_until(t);
    }
    (reports, net)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The figure: 1,000 nodes, latency 10-150 ms, 10% loss, churn; a lookup finds the announced
/// peer within 3 x log2(n) queries at the median.
#[test]
fn thousand_nodes_lookup_finds_announced_peer() {
    let n = 1000;
    let (reports, net) = scenario(n, 42, 0.10, 25);
    let found = reports.iter().filter(|r| r.found).count();
    let to_first: Vec<u64> = reports
        .iter()
        .filter_map(|r| r.queries_to_first_peer.map(u64::from))
        .collect();
    let total: Vec<u64> = reports.iter().map(|r| u64::from(r.queries)).collect();
    let t_first: Vec<u64> = reports
        .iter()
        .filter_map(|r| r.time_to_first_peer.map(|d| d.as_millis() as u64))
        .collect();
    let t_total: Vec<u64> = reports.iter().map(|r| r.time.as_millis() as u64).collect();
    let live = net.nodes().iter().filter(|s| s.alive).count();
    let bound = (3.0 * (live as f64).log2()).floor() as u64;
    println!(
        "dht sim: {n} nodes joined, {live} live, 10% loss; {found}/{} lookups found the peer; \
         queries to first peer median {} worst {}; queries until the lookup stopped median {} worst {}; \
         virtual time to first peer median {} ms worst {} ms; to the end median {} ms worst {} ms; \
         bound 3*log2(n) = {bound}; {} datagrams delivered, {} lost",
        reports.len(),
        median(to_first.clone()),
        to_first.iter().max().copied().unwrap_or(0),
        median(total.clone()),
        total.iter().max().copied().unwrap_or(0),
        median(t_first.clone()),
        t_first.iter().max().copied().unwrap_or(0),
        median(t_total.clone()),
        t_total.iter().max().copied().unwrap_or(0),
        net.delivered,
        net.lost,
    );
    assert!(
        found * 10 >= reports.len() * 9,
        "at least 90% of lookups find the peer: {found}/{}",
        reports.len()
    );
    assert!(
        median(to_first) <= bound,
        "median queries to the first peer within 3*log2(n)"
    );
    for s in net.nodes() {
        s.dht.table().check_invariants().expect("table invariants");
    }
}

/// Same seed, same run: every lookup's numbers and every node's counters agree.
#[test]
fn simulation_is_deterministic() {
    let run = |seed| {
        let (reports, net) = scenario(120, seed, 0.10, 3);
        let stats: Vec<_> = net.nodes().iter().map(|s| s.dht.stats(net.now())).collect();
        (reports, stats, net.delivered, net.lost, net.now())
    };
    let a = run(7);
    assert_eq!(a, run(7));
    assert_ne!(a.2, run(8).2, "another seed, another run");
}

/// One junk datagram of the flood: garbage, broken KRPC, spoofed queries, announces with forged
/// tokens, spoofed responses and errors with guessed transaction ids, parser bombs.
fn junk(rng: &mut crate::rng::CoreRng, real: &[SocketAddr]) -> (SocketAddr, Vec<u8>) {
    let spoofed = SocketAddr::from((rng.random::<[u8; 4]>(), rng.random_range(1..=u16::MAX)));
    let id = NodeId(rng.random());
    let kind = rng.random_range(0..9u8);
    let bytes = match kind {
        0 => {
            let n = rng.random_range(0..300);
            (0..n).map(|_| rng.random()).collect()
        }
        1 => {
            let mut q = query(
                b"tt",
                id,
                QueryKind::FindNode {
                    target: NodeId(rng.random()),
                },
            );
            let cut = rng.random_range(0..q.len());
            q.truncate(cut);
            if let Some(b) = q.last_mut() {
                *b = rng.random();
            }
            q
        }
        2 => {
            let kind = match rng.random_range(0..3u8) {
                0 => QueryKind::Ping,
                1 => QueryKind::FindNode {
                    target: NodeId(rng.random()),
                },
                _ => QueryKind::GetPeers {
                    info_hash: InfoHash(rng.random()),
                },
            };
            query(&rng.random::<[u8; 2]>(), id, kind)
        }
        3 => query(
            b"an",
            id,
            QueryKind::AnnouncePeer {
                info_hash: InfoHash(rng.random()),
                port: rng.random(),
                implied_port: rng.random(),
                token: rng.random::<[u8; 8]>().to_vec(),
            },
        ),
        4 | 5 => Message {
            tid: rng.random::<[u8; 4]>().to_vec(),
            version: None,
            read_only: false,
            ip: None,
            body: Body::Response(Response {
                id,
                nodes: (0..8)
                    .map(|_| super::NodeInfo {
                        id: NodeId(rng.random()),
                        addr: SocketAddr::from((rng.random::<[u8; 4]>(), 6881)),
                    })
                    .collect(),
                values: vec![SocketAddr::from(([6, 6, 6, 6], 666))],
                ..Response::default()
            }),
        }
        .encode(),
        6 => Message {
            tid: rng.random::<[u8; 4]>().to_vec(),
            version: None,
            read_only: false,
            ip: None,
            body: Body::Error {
                code: 201,
                message: "no".into(),
            },
        }
        .encode(),
        7 => {
            if rng.random() {
                vec![b'l'; rng.random_range(1..2000)]
            } else {
                b"d1:t2:aa1:y1:q1:q4:ping1:ad2:id999999999:".to_vec()
            }
        }
        _ => query(
            b"at",
            NodeId([0xa7; 20]),
            QueryKind::GetPeers {
                info_hash: InfoHash(rng.random()),
            },
        ),
    };
    let from = match kind {
        // Spoofed responses claiming to come from real nodes.
        5 => real[rng.random_range(0..real.len())],
        // The attacker's own address.
        8 => SocketAddr::from(([203, 0, 113, 66], 4444)),
        _ => spoofed,
    };
    (from, bytes)
}

/// 10,000 junk datagrams per (virtual) second for 5 s at one node: its memory stays within the caps,
/// its table holds only real nodes, and its own lookups, started during the flood, still find the peer.
#[test]
fn flood_keeps_memory_bounded_and_lookups_working() {
    let cfg = DhtConfig::default();
    let mut net = SimNet::new(SimConfig {
        seed: 99,
        loss: 0.05,
        ..SimConfig::default()
    });
    let first = net.add_node(cfg.clone(), &[]);
    let router = net.nodes()[first].addr;
    for _ in 1..200 {
        let t = net.now() + Duration::from_millis(50);
        net.run_until(t);
        net.add_node(cfg.clone(), &[router]);
    }
    let t = net.now() + Duration::from_secs(30);
    net.run_until(t);
    let announcer = 17;
    let victim = 123;
    let ih = InfoHash([0x42; 20]);
    let a = net
        .with_node(announcer, |d, now| d.announce(now, ih, Some(6000)))
        .expect("starts");
    let limit = net.now() + Duration::from_secs(60);
    assert!(wait_done(&mut net, announcer, a, limit));
    let peer = SocketAddr::new(net.nodes()[announcer].addr.ip(), 6000);

    let real: Vec<SocketAddr> = net.nodes().iter().map(|s| s.addr).collect();
    let start = net.now();
    let per_sec = 10_000u64;
    let packets = per_sec * 5;
    for k in 0..packets {
        let (from, bytes) = junk(net.rng(), &real);
        net.inject(
            start + Duration::from_nanos(k * 1_000_000_000 / per_sec),
            victim,
            from,
            bytes,
        );
    }
    let mut lookups = Vec::new();
    let mut worst = super::DhtStats::default();
    let end = start + Duration::from_secs(5);
    let mut t = start;
    while t < end + Duration::from_secs(20) {
        if t < end && (t - start).as_millis().is_multiple_of(1000) {
            let l = net
                .with_node(victim, |d, now| d.get_peers(now, ih))
                .expect("starts");
            lookups.push((t, l));
        }
        t += Duration::from_millis(50);
        net.run_until(t);
        let s = net.nodes()[victim].dht.stats(t);
        assert!(s.outstanding <= cfg.max_outstanding);
        assert!(s.rate_limiter_entries <= cfg.rate_limiter_entries);
        assert!(s.lookups <= cfg.max_lookups);
        assert!(s.nodes <= 160 * super::table::K);
        assert!(s.stored_peers <= cfg.store.max_peers_total);
        worst.outstanding = worst.outstanding.max(s.outstanding);
        worst.rate_limiter_entries = worst.rate_limiter_entries.max(s.rate_limiter_entries);
        worst.nodes = worst.nodes.max(s.nodes);
        worst.stored_peers = worst.stored_peers.max(s.stored_peers);
        worst.stored_info_hashes = worst.stored_info_hashes.max(s.stored_info_hashes);
    }
    let s = net.nodes()[victim].dht.stats(net.now());
    println!(
        "dht flood: {packets} junk datagrams in 5 s; victim: {} malformed, {} unmatched responses, \
         {} rate-limited, {} replies, {} errors sent; peak {} outstanding, {} limiter entries, {} nodes, \
         {} stored peers in {} torrents",
        s.malformed, s.unmatched, s.rate_limited, s.responses_sent, s.errors_sent, worst.outstanding,
        worst.rate_limiter_entries, worst.nodes, worst.stored_peers, worst.stored_info_hashes
    );
    assert!(s.received >= packets);
    assert!(s.rate_limited > 0 && s.malformed > 0 && s.unmatched > 0);
    assert!(
        s.responses_sent + s.errors_sent <= cfg.max_responses_per_sec as u64 * 26,
        "replies capped per second"
    );
    assert_eq!(worst.stored_peers, 0, "forged tokens store nothing");
    // The table holds only real nodes under their real ids: no spoofed entry got in.
    for e in net.nodes()[victim].dht.table().iter() {
        let i = real
            .iter()
            .position(|a| *a == e.info.addr)
            .expect("a real address");
        assert_eq!(net.nodes()[i].dht.id(), e.info.id);
    }
    assert_eq!(lookups.len(), 5);
    for (started, l) in lookups {
        let found = first_peer_time(&net, victim, l, peer);
        assert!(
            found.is_some_and(|f| f < end + Duration::from_secs(5)),
            "lookup started at {started:?} found the peer: {found:?}"
        );
        assert!(summary_of(&net, victim, l).is_some(), "and finished");
    }
}

//! A measured run (not a timed test): one DHT node under a flood of 10,000 malformed or spoofed KRPC
//! datagrams per second for 5 s of virtual time, while it also answers a trickle of legitimate
//! queries. Prints the CPU time the node spent, the cost per datagram, how many datagrams per second
//! one core could absorb at that cost, and the process's memory high-water mark before and after.
//!
//! Then the same flood through an `Engine` running the node on its shared UDP socket (one magnet
//! torrent using the DHT): what a session's event loop pays per junk datagram (sorting it, the node,
//! the upkeep after the input).
//!
//! Run: `cargo bench --bench dht`

use std::net::SocketAddr;
use std::time::Duration;

use hyperblow_core::bencode::OwnedValue;
use hyperblow_core::dht::krpc::{
    encode_nodes, Body, Message, NodeInfo, Query, QueryKind, Response, Want,
};
use hyperblow_core::dht::{Dht, DhtConfig, NodeId};
use hyperblow_core::engine::{AddMagnet, DhtSettings, Engine, EngineConfig, Output};
use hyperblow_core::magnet::MagnetLink;
use hyperblow_core::rng::{seeded, CoreRng, RngExt};
use hyperblow_core::{InfoHash, Instant};

fn query(rng: &mut CoreRng, kind: QueryKind) -> Vec<u8> {
    Message {
        tid: rng.random::<[u8; 2]>().to_vec(),
        version: None,
        read_only: false,
        ip: None,
        body: Body::Query(Query {
            id: NodeId(rng.random()),
            kind,
            want: Want::default(),
        }),
    }
    .encode()
}

/// A junk datagram and its (usually spoofed) source.
fn junk(rng: &mut CoreRng) -> (SocketAddr, Vec<u8>) {
    let from = SocketAddr::from((rng.random::<[u8; 4]>(), rng.random_range(1..=u16::MAX)));
    let bytes = match rng.random_range(0..7u8) {
        0 => (0..rng.random_range(0..400))
            .map(|_| rng.random())
            .collect(),
        1 => {
            let target = NodeId(rng.random());
            let mut q = query(rng, QueryKind::FindNode { target });
            q.truncate(q.len() / 2);
            q
        }
        2 => {
            let info_hash = InfoHash(rng.random());
            query(rng, QueryKind::GetPeers { info_hash })
        }
        3 => {
            let target = NodeId(rng.random());
            query(rng, QueryKind::FindNode { target })
        }
        4 => {
            let kind = QueryKind::AnnouncePeer {
                info_hash: InfoHash(rng.random()),
                port: rng.random(),
                implied_port: false,
                token: rng.random::<[u8; 8]>().to_vec(),
            };
            query(rng, kind)
        }
        5 => Message {
            tid: rng.random::<[u8; 4]>().to_vec(),
            version: None,
            read_only: false,
            ip: None,
            body: Body::Response(Response {
                id: NodeId(rng.random()),
                nodes: (0..8)
                    .map(|_| NodeInfo {
                        id: NodeId(rng.random()),
                        addr: SocketAddr::from((rng.random::<[u8; 4]>(), 6881)),
                    })
                    .collect(),
                ..Response::default()
            }),
        }
        .encode(),
        _ => vec![b'l'; rng.random_range(1..3000)],
    };
    (from, bytes)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let per_sec: u64 = 10_000;
    let secs: u64 = 5;
    let mut rng = seeded(2026);
    // A node with a populated table: restored from a saved state listing 300 nodes.
    let nodes: Vec<NodeInfo> = (0..300u32)
        .map(|i| NodeInfo {
            id: NodeId(rng.random()),
            addr: SocketAddr::from(([100, 64, (i >> 8) as u8, i as u8], 6881)),
        })
        .collect();
    let state = OwnedValue::dict()
        .with("id", rng.random::<[u8; 20]>().to_vec())
        .with("nodes", encode_nodes(&nodes, false))
        .encode();
    let mut now = Instant::ZERO;
    let mut dht =
        Dht::from_state(DhtConfig::default(), &state, now, seeded(1)).expect("state loads");
    // Pre-generate the flood so that only the node's work is measured.
    let packets: Vec<(SocketAddr, Vec<u8>)> = (0..per_sec * secs).map(|_| junk(&mut rng)).collect();
    let bytes: usize = packets.iter().map(|(_, b)| b.len()).sum();
    let rss_before = peak_rss_kib();
    let mut sent = 0u64;
    let mut sent_bytes = 0u64;
    let mut runs = Vec::new();
    for round in 0..3 {
        let cpu = std::time::Instant::now();
        for (k, (from, b)) in packets.iter().enumerate() {
            now = Instant::from_secs(10 + round * 10)
                + Duration::from_nanos(k as u64 * 1_000_000_000 / per_sec);
            dht.handle_datagram(now, *from, b);
            if dht.poll_timeout().is_some_and(|t| t <= now) {
                dht.handle_timeout(now);
            }
            while let Some((_, out)) = dht.poll_transmit() {
                sent += 1;
                sent_bytes += out.len() as u64;
            }
        }
        runs.push(cpu.elapsed());
    }
    runs.sort();
    let median = runs[1];
    let n = packets.len() as f64;
    let s = dht.stats(now);
    println!(
        "dht flood: {} datagrams ({} KiB) per run = {per_sec}/s for {secs} s of virtual time, 3 runs",
        packets.len(),
        bytes / 1024
    );
    println!(
        "  CPU (wall, single thread): median {:.1} ms per run = {:.2} us per datagram = {:.1}% of one core at {per_sec}/s; one core absorbs ~{:.0} datagrams/s",
        median.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e6 / n,
        median.as_secs_f64() / secs as f64 * 100.0,
        n / median.as_secs_f64()
    );
    println!(
        "  replies sent over all runs: {sent} ({} KiB); rate-limited {}, malformed {}, unmatched {}",
        sent_bytes / 1024,
        s.rate_limited,
        s.malformed,
        s.unmatched
    );
    println!(
        "  node state after: {} nodes, {} outstanding, {} limiter entries, {} stored peers; peak RSS {} KiB before the flood, {} KiB after",
        s.nodes,
        s.outstanding,
        s.rate_limiter_entries,
        s.stored_peers,
        rss_before,
        peak_rss_kib()
    );
    engine_flood(&packets, &state, per_sec, secs);
}

/// The flood through an engine whose DHT node starts from `state`.
fn engine_flood(packets: &[(SocketAddr, Vec<u8>)], state: &[u8], per_sec: u64, secs: u64) {
    let config = EngineConfig {
        dht: Some(DhtSettings {
            bootstrap: Vec::new(),
            saved_state: Some(state.to_vec()),
            ..DhtSettings::default()
        }),
        ..EngineConfig::default()
    };
    let mut now = Instant::from_secs(1);
    let mut engine = Engine::new(config, 5, now);
    engine
        .add_magnet(
            now,
            AddMagnet {
                link: MagnetLink::new(InfoHash([7; 20])),
                wanted_files: None,
                paused: false,
                peers: Vec::new(),
            },
        )
        .expect("magnet added");
    let mut datagrams = 0u64;
    let mut other = 0u64;
    let mut drain = |engine: &mut Engine| {
        while let Some(o) = engine.poll_output() {
            match o {
                Output::SendDatagram { .. } => datagrams += 1,
                _ => other += 1,
            }
        }
        while engine.poll_event().is_some() {}
    };
    drain(&mut engine);
    let mut runs = Vec::new();
    for round in 0..3 {
        let cpu = std::time::Instant::now();
        for (k, (from, b)) in packets.iter().enumerate() {
            now = Instant::from_secs(10 + round * 10)
                + Duration::from_nanos(k as u64 * 1_000_000_000 / per_sec);
            engine.handle_datagram(now, *from, b);
            if engine.poll_timeout().is_some_and(|t| t <= now) {
                engine.handle_timeout(now);
            }
            drain(&mut engine);
        }
        runs.push(cpu.elapsed());
    }
    runs.sort();
    let median = runs[1];
    let n = packets.len() as f64;
    let s = engine.dht_stats(now).expect("DHT on");
    println!(
        "engine flood: median {:.1} ms per run = {:.2} us per datagram = {:.1}% of one core at {per_sec}/s; \
         {datagrams} datagrams and {other} other outputs over 3 runs; node: {} nodes, {} outstanding, {} lookups, \
         {} limiter entries; peak RSS {} KiB",
        median.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e6 / n,
        median.as_secs_f64() / secs as f64 * 100.0,
        s.nodes,
        s.outstanding,
        s.lookups,
        s.rate_limiter_entries,
        peak_rss_kib()
    );
}

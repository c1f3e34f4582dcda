//! Swarms over uTP (BEP 29) in the deterministic simulator: every engine with `--transport utp`,
//! every datagram between two nodes crossing a lossy one-way link of its own
//! (`SimConfig::datagram_link`: 20 ms, up to 2 ms of jitter that reorders, a 1 MiB/s bottleneck with
//! a drop-tail queue of 500 ms, and random loss), peers found through the simulated HTTP tracker.
//! Each scenario checks every leecher's files byte for byte, that the peer traffic went over uTP
//! only (no simulated TCP byte between nodes), and that the links did drop datagrams; it prints the
//! throughput and the queueing delay at the bottlenecks (`--nocapture`).

use std::time::Duration;

use hyperblow_core::engine::{EngineConfig, TorrentId, Transport};
use hyperblow_tests::sim::fixture::make_torrent;
use hyperblow_tests::sim::{http_tracker_url, NodeId, Sim, SimConfig, UdpLinkConfig, UdpLinkStats};

const KIB: u64 = 1024;

/// What one swarm run measured.
#[derive(Debug)]
struct Figures {
    /// Virtual time from the start to the last leecher's completion.
    last_done: Duration,
    /// Mean of the leechers' completion times.
    mean_done: Duration,
    /// Payload bytes of the torrent.
    size: u64,
    /// The datagram links' counters, summed.
    links: UdpLinkStats,
}

impl Figures {
    /// Mean download rate of one leecher, KiB/s of virtual time.
    fn kib_per_s(&self) -> f64 {
        self.size as f64 / 1024.0 / self.mean_done.as_secs_f64()
    }

    fn mean_queue_delay(&self) -> Duration {
        let n = u128::from(self.links.delivered.max(1));
        Duration::from_nanos(u64::try_from(self.links.queue_delay_ns / n).unwrap_or(u64::MAX))
    }
}

/// The link of the scenarios, with `loss_ppm` parts per million of the datagrams lost.
fn link(loss_ppm: u32) -> UdpLinkConfig {
    UdpLinkConfig {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(2),
        loss_ppm,
        duplicate_ppm: 2_000,
        rate: Some(1024 * KIB),
        queue_limit: Duration::from_millis(500),
    }
}

/// One seeder and `leechers` leechers of a `size`-byte torrent over uTP only, on links losing
/// `loss_ppm`; runs to completion (bounded) and checks the result.
fn run(loss_ppm: u32, leechers: usize, size: u64, seed: u64) -> Figures {
    let torrent = make_torrent(
        "utp",
        &[("utp.bin", size)],
        64 * KIB as u32,
        vec![vec![http_tracker_url()]],
        seed,
    );
    let mut sim = Sim::new(SimConfig {
        seed,
        datagram_link: Some(link(loss_ppm)),
        ..SimConfig::default()
    });
    let engine = || EngineConfig {
        transport: Transport::Utp,
        ..EngineConfig::default()
    };
    sim.register(&torrent.metainfo, torrent.content.clone());
    let s = sim.add_node(engine(), seed * 100);
    sim.add_torrent(s, Sim::plain_add(&torrent.metainfo), true)
        .expect("seeder adds");
    let mut ls: Vec<(NodeId, TorrentId)> = Vec::new();
    for i in 0..leechers {
        let n = sim.add_node(engine(), seed * 100 + 1 + i as u64);
        let t = sim
            .add_torrent(n, Sim::plain_add(&torrent.metainfo), false)
            .expect("leecher adds");
        ls.push((n, t));
    }
    let start = sim.now();
    let done = sim
        .run_until(start + Duration::from_secs(3600), |s| {
            ls.iter().all(|(n, t)| s.completed_at(*n, *t).is_some())
        })
        .expect("simulation runs");
    assert!(
        done,
        "every leecher completes within an hour of virtual time"
    );
    let info_hash = torrent.metainfo.info_hash();
    for (n, _) in &ls {
        sim.check_files(*n, info_hash, None)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // Peer traffic went over uTP: the simulated TCP connections carried only the tracker's HTTP
    // replies (less than one 16 KiB block in all), and every node sent uTP datagrams.
    assert!(
        sim.counters().bytes_delivered < 16 * KIB,
        "{:?}",
        sim.counters()
    );
    for n in 0..sim.node_count() {
        assert!(sim.engine(n).utp_stats().datagrams_out > 0, "node {n}");
    }
    let links = sim.udp_stats();
    if loss_ppm > 0 {
        assert!(links.lost > 0, "the links dropped datagrams: {links:?}");
    }
    let times: Vec<Duration> = ls
        .iter()
        .map(|(n, t)| {
            sim.completed_at(*n, *t)
                .expect("completed")
                .saturating_duration_since(start)
        })
        .collect();
    let last_done = times.iter().copied().max().unwrap_or_default();
    let mean_done = times.iter().sum::<Duration>() / times.len().max(1) as u32;
    Figures {
        last_done,
        mean_done,
        size,
        links,
    }
}

fn report(name: &str, f: &Figures) {
    eprintln!(
        "[swarm-utp] {name}: last leecher done at {:.1} s, mean {:.1} s ({:.0} KiB/s per leecher on \
         1 MiB/s links); bottleneck queueing delay mean {:.1} ms, max {:.1} ms; datagrams sent {}, \
         lost {}, queue drops {}, duplicated {}",
        f.last_done.as_secs_f64(),
        f.mean_done.as_secs_f64(),
        f.kib_per_s(),
        f.mean_queue_delay().as_secs_f64() * 1e3,
        f.links.max_queue_delay.as_secs_f64() * 1e3,
        f.links.sent,
        f.links.lost,
        f.links.queue_drops,
        f.links.duplicated,
    );
}

/// One seeder, four leechers, 4 MiB, 1 % loss on every link.
#[test]
fn swarm_over_utp_with_one_percent_loss() {
    let f = run(10_000, 4, 4096 * KIB, 61);
    report("1 % loss, 1 seeder + 4 leechers, 4 MiB", &f);
    // LEDBAT keeps its own queue near its 100 ms target: the mean wait at the bottleneck stays
    // well below the 500 ms the queue could hold.
    assert!(
        f.mean_queue_delay() < Duration::from_millis(250),
        "{:?}",
        f.mean_queue_delay()
    );
}

/// The same with 5 % loss.
#[test]
fn swarm_over_utp_with_five_percent_loss() {
    let f = run(50_000, 4, 4096 * KIB, 62);
    report("5 % loss, 1 seeder + 4 leechers, 4 MiB", &f);
}

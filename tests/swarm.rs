//! Deterministic swarm scenarios: several engines on simulated links with a simulated tracker and
//! disk (see `hyperblow_tests::sim`). Every scenario ends with a byte-exact check of what each
//! finishing node stored against the original content.

use std::time::Duration;

use hyperblow_core::engine::{EngineConfig, Event, TorrentId};
use hyperblow_core::time::Instant;
use hyperblow_core::InfoHash;
use hyperblow_tests::sim::fixture::{make_torrent, TestTorrent};
use hyperblow_tests::sim::{http_tracker_url, udp_tracker_url, LinkSpec, NodeId, Sim, SimConfig};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// A multi-file layout of 4 MiB + 8 bytes: a 0-byte file, files straddling piece boundaries, a
/// 7-byte file inside one piece.
fn multi_files() -> Vec<(&'static str, u64)> {
    vec![
        ("a.bin", 1_000_000),
        ("empty.txt", 0),
        ("b.bin", 1_500_001),
        ("c.bin", 7),
        ("d.bin", 4 * MIB + 8 - 2_500_008),
    ]
}

/// One seeder and `leechers` leechers of `torrent`, all announcing to the tracker(s) in the torrent.
struct Swarm {
    sim: Sim,
    torrent: TestTorrent,
    seeder: (NodeId, TorrentId),
    leechers: Vec<(NodeId, TorrentId)>,
}

impl Swarm {
    fn new(config: SimConfig, torrent: TestTorrent, leechers: usize) -> Swarm {
        Swarm::with(config, torrent, leechers, |_| EngineConfig::default())
    }

    /// Like `new`, with each node's engine configuration given by `engine(node index)`.
    fn with(
        config: SimConfig,
        torrent: TestTorrent,
        leechers: usize,
        engine: impl Fn(usize) -> EngineConfig,
    ) -> Swarm {
        let mut sim = Sim::new(config);
        sim.register(&torrent.metainfo, torrent.content.clone());
        let s = sim.add_node(engine(0), 1000);
        let st = sim
            .add_torrent(s, Sim::plain_add(&torrent.metainfo), true)
            .expect("seeder adds");
        let mut ls = Vec::new();
        for i in 0..leechers {
            let n = sim.add_node(engine(i + 1), 1001 + i as u64);
            let t = sim
                .add_torrent(n, Sim::plain_add(&torrent.metainfo), false)
                .expect("leecher adds");
            ls.push((n, t));
        }
        Swarm {
            sim,
            torrent,
            seeder: (s, st),
            leechers: ls,
        }
    }

    fn info_hash(&self) -> InfoHash {
        self.torrent.metainfo.info_hash()
    }

    fn all_done(sim: &Sim, nodes: &[(NodeId, TorrentId)]) -> bool {
        nodes
            .iter()
            .all(|(n, t)| sim.completed_at(*n, *t).is_some())
    }

    /// Runs until every leecher completed (or `limit` of virtual time), asserting they did.
    fn run_to_completion(&mut self, limit: Duration) {
        let end = self.sim.now() + limit;
        let leechers = self.leechers.clone();
        let done = self
            .sim
            .run_until(end, |s| Swarm::all_done(s, &leechers))
            .expect("simulation runs");
        assert!(
            done,
            "not every leecher completed within {limit:?}: {}",
            self.progress()
        );
    }

    fn progress(&self) -> String {
        let now = self.sim.now();
        self.leechers
            .iter()
            .map(|(n, t)| {
                let st = self.sim.engine(*n).torrent_stats(now, *t);
                match st {
                    Some(st) => format!(
                        "node {n}: {:.0}% {} peers {:?}",
                        st.progress() * 100.0,
                        st.peers,
                        st.state
                    ),
                    None => format!("node {n}: no torrent"),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Every leecher's files equal the original, byte for byte.
    fn check_all(&self) {
        for (n, _) in &self.leechers {
            self.sim
                .check_files(*n, self.info_hash(), None)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn completion_times(&self) -> Vec<Duration> {
        self.leechers
            .iter()
            .map(|(n, t)| {
                self.sim
                    .completed_at(*n, *t)
                    .expect("completed")
                    .saturating_duration_since(Instant::from_secs(1))
            })
            .collect()
    }
}

fn secs(d: &[Duration]) -> Vec<u64> {
    d.iter().map(|d| d.as_secs()).collect()
}

/// Scenario 1: one seeder, eight leechers, multi-file torrent with a 0-byte file and files that
/// straddle pieces; peers are found only through the HTTP tracker.
#[test]
fn one_seeder_eight_leechers_through_http_tracker() {
    let torrent = make_torrent(
        "multi",
        &multi_files(),
        128 * KIB as u32,
        vec![vec![http_tracker_url()]],
        7,
    );
    let mut sw = Swarm::new(slow(), torrent, 8);
    sw.run_to_completion(Duration::from_secs(30 * 60));
    sw.check_all();
    // Every leecher learned its peers from the tracker (no peer was given by hand).
    let log = sw.sim.tracker().log();
    assert!(log.len() >= 9, "every node announced: {log:?}");
    for (n, _) in &sw.leechers {
        let connected = sw
            .sim
            .events(*n)
            .iter()
            .filter(|(_, e)| matches!(e, Event::PeerConnected { .. }))
            .count();
        assert!(connected >= 2, "node {n} met {connected} peers");
    }
    // Leechers traded among themselves: the seeder uploaded less than 8 full copies.
    let now = sw.sim.now();
    let seeded = sw
        .sim
        .engine(sw.seeder.0)
        .torrent_stats(now, sw.seeder.1)
        .expect("stats")
        .uploaded;
    let total = sw.torrent.content.len() as u64;
    assert!(
        seeded < 8 * total,
        "seeder uploaded {seeded} bytes of 8 x {total}"
    );
    eprintln!(
        "scenario 1: completion times {:?} s, seeder uploaded {:.2} copies, {:?}",
        secs(&sw.completion_times()),
        seeded as f64 / total as f64,
        sw.sim.counters()
    );
}

/// The simulation defaults with 25 ms / 32 KiB/s links: a 4 MiB swarm takes minutes of virtual time.
fn slow() -> SimConfig {
    SimConfig {
        default_link: LinkSpec::new(25, 32),
        ..SimConfig::default()
    }
}

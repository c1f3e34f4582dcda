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
/// 7-byte file inside one piece. (The builder orders files by name; these names keep this order.)
fn multi_files() -> Vec<(&'static str, u64)> {
    vec![
        ("a.bin", 1_000_000),
        ("a2-empty.txt", 0),
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

/// Scenario 2: a leecher that selects only some files fetches only the pieces those files need
/// (the wire tap shows no block of any other piece reaching it) and gets those files byte-exact.
#[test]
fn partial_selection_fetches_only_needed_pieces() {
    let torrent = make_torrent(
        "multi",
        &multi_files(),
        128 * KIB as u32,
        vec![vec![udp_tracker_url()]],
        8,
    );
    // a.bin, the empty file and the 7-byte c.bin (which shares a piece with b.bin and d.bin).
    let names: Vec<String> = torrent
        .metainfo
        .info
        .layout()
        .files()
        .iter()
        .map(|f| f.path.last().cloned().unwrap_or_default())
        .collect();
    assert_eq!(names, ["a.bin", "a2-empty.txt", "b.bin", "c.bin", "d.bin"]);
    let wanted = vec![true, true, false, true, false];
    let config = SimConfig {
        tap: true,
        ..slow()
    };
    let mut sw = Swarm::new(config, torrent, 2);
    let picky = sw.sim.add_node(EngineConfig::default(), 77);
    let mut add = Sim::plain_add(&sw.torrent.metainfo);
    add.wanted_files = Some(wanted.clone());
    let pt = sw.sim.add_torrent(picky, add, false).expect("add");
    let everyone: Vec<(NodeId, TorrentId)> =
        sw.leechers.iter().copied().chain([(picky, pt)]).collect();
    let end = sw.sim.now() + Duration::from_secs(30 * 60);
    assert!(sw
        .sim
        .run_until(end, |s| Swarm::all_done(s, &everyone))
        .expect("runs"));

    let layout = sw.torrent.metainfo.info.layout().clone();
    let needed = layout.pieces_for_files(&wanted);
    let n_needed = needed.iter().filter(|n| **n).count();
    assert!(
        n_needed > 0 && n_needed < needed.len(),
        "{:?} {needed:?}",
        layout.files()
    );
    let received: Vec<u32> = sw
        .sim
        .tap_log()
        .iter()
        .filter(|r| r.to == picky)
        .filter_map(|r| match r.message {
            hyperblow_tests::sim::tap::TapMessage::Piece { piece, .. } => Some(piece),
            _ => None,
        })
        .collect();
    assert!(!received.is_empty(), "the tap saw blocks arrive");
    for p in &received {
        assert!(
            needed[*p as usize],
            "received a block of unneeded piece {p}"
        );
    }
    let stored = sw.sim.stored_pieces(picky, sw.info_hash());
    let expect: Vec<u32> = (0..needed.len() as u32)
        .filter(|p| needed[*p as usize])
        .collect();
    assert_eq!(stored, expect, "exactly the needed pieces are on disk");
    sw.sim
        .check_files(picky, sw.info_hash(), Some(&wanted))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(sw.sim.check_files(picky, sw.info_hash(), None).is_err());
    sw.check_all();
    eprintln!(
        "scenario 2: {n_needed} of {} pieces needed, picky done at {:?}, {} blocks received",
        needed.len(),
        sw.sim.completed_at(picky, pt),
        received.len()
    );
}

/// Scenario 3: a second seeder serves corrupt blocks (its reads are corrupted by the simulator); the
/// leechers ban it and still complete from the honest seeder and each other.
#[test]
fn corrupt_peer_is_banned_and_everyone_completes() {
    let torrent = make_torrent(
        "multi",
        &multi_files(),
        128 * KIB as u32,
        vec![vec![http_tracker_url()]],
        9,
    );
    let mut sw = Swarm::new(slow(), torrent, 6);
    let liar = sw.sim.add_node(EngineConfig::default(), 666);
    sw.sim
        .add_torrent(liar, Sim::plain_add(&sw.torrent.metainfo), true)
        .expect("add");
    sw.sim.set_corrupt_reads(liar, true);
    let liar_ip = sw.sim.addr(liar).ip();
    sw.run_to_completion(Duration::from_secs(30 * 60));
    sw.check_all();

    let mut banned_by = Vec::new();
    let mut failed = 0;
    for (n, _) in &sw.leechers {
        for (_, e) in sw.sim.events(*n) {
            match e {
                Event::PeerBanned { addr, .. } => {
                    assert_eq!(addr.ip(), liar_ip, "node {n} banned an honest peer {addr}");
                    banned_by.push(*n);
                }
                Event::PieceFailed { .. } => failed += 1,
                _ => {}
            }
        }
    }
    assert!(failed > 0, "corrupt blocks made pieces fail");
    assert!(!banned_by.is_empty(), "somebody banned the corrupt peer");
    // Whoever got a failed piece from it banned it.
    for (n, _) in &sw.leechers {
        let had_failure = sw
            .sim
            .events(*n)
            .iter()
            .any(|(_, e)| matches!(e, Event::PieceFailed { .. }));
        if had_failure {
            assert!(
                banned_by.contains(n),
                "node {n} had failed pieces but did not ban"
            );
        }
    }
    eprintln!(
        "scenario 3: {failed} failed pieces, banned by {banned_by:?}, completion {:?} s",
        secs(&sw.completion_times())
    );
}

/// Scenario 4: the seeder leaves half-way (once every piece has a copy among the leechers and they
/// hold half of the content); the leechers finish from each other. The seeder's uplink is fast and
/// the leechers' slow, so that every piece is out well before the leechers are done.
#[test]
fn seeder_leaves_half_way_and_leechers_finish() {
    let torrent = make_torrent(
        "multi",
        &multi_files(),
        128 * KIB as u32,
        vec![vec![http_tracker_url()]],
        10,
    );
    let config = SimConfig {
        default_link: LinkSpec::new(25, 16),
        ..SimConfig::default()
    };
    let mut sw = Swarm::new(config, torrent, 6);
    sw.sim.set_uplink(sw.seeder.0, LinkSpec::new(25, 128));
    let pieces = sw.torrent.metainfo.info.layout().piece_count();
    let ih = sw.info_hash();
    let leechers = sw.leechers.clone();
    let spread = |s: &Sim| {
        let mut union = vec![false; pieces as usize];
        let mut have = 0usize;
        for (n, _) in &leechers {
            for p in s.stored_pieces(*n, ih) {
                union[p as usize] = true;
                have += 1;
            }
        }
        (
            union.iter().all(|u| *u),
            have as f64 / (pieces as usize * leechers.len()) as f64,
        )
    };
    // Until every piece is out among the leechers and they hold half of what they need.
    let mut left_at = None;
    while sw.sim.now() < Instant::from_secs(30 * 60) {
        sw.sim.run_for(Duration::from_secs(1)).expect("runs");
        let (all_out, fraction) = spread(&sw.sim);
        assert!(
            !Swarm::all_done(&sw.sim, &leechers),
            "leechers finished before the seeder could leave"
        );
        if all_out && fraction >= 0.5 {
            left_at = Some((sw.sim.now(), fraction));
            break;
        }
    }
    let (left_at, fraction) = left_at.expect("pieces spread");
    assert!(
        fraction < 0.9,
        "the leechers still had work to do without the seeder"
    );
    sw.sim.leave(sw.seeder.0);
    sw.run_to_completion(Duration::from_secs(30 * 60));
    assert!(sw.sim.is_gone(sw.seeder.0), "the seeder's engine shut down");
    assert!(
        !sw.sim
            .tracker()
            .swarm(&ih)
            .contains(&sw.sim.addr(sw.seeder.0)),
        "the seeder told the tracker it stopped"
    );
    // Nothing came from the seeder after it left: it uploaded nothing more.
    for (n, t) in &sw.leechers {
        assert!(sw.sim.completed_at(*n, *t).expect("done") > left_at);
    }
    sw.check_all();
    eprintln!(
        "scenario 4: seeder left at {left_at:?} with {:.0}% spread; completion {:?} s",
        fraction * 100.0,
        secs(&sw.completion_times())
    );
}

/// Scenario 5: connections are cut at random (seeded); everyone still completes.
#[test]
fn random_link_drops_everyone_completes() {
    let torrent = make_torrent(
        "multi",
        &multi_files(),
        128 * KIB as u32,
        vec![vec![http_tracker_url()]],
        11,
    );
    let config = SimConfig {
        seed: 5,
        drop_links: Some(hyperblow_tests::sim::DropLinks {
            mean_interval: Duration::from_secs(2),
            until: Instant::from_secs(30 * 60),
        }),
        ..slow()
    };
    let mut sw = Swarm::new(config, torrent, 6);
    sw.run_to_completion(Duration::from_secs(30 * 60));
    sw.check_all();
    let cut = sw.sim.counters().links_cut;
    assert!(cut >= 10, "only {cut} links were cut");
    eprintln!(
        "scenario 5: {cut} connections cut; completion {:?} s",
        secs(&sw.completion_times())
    );
}

/// Scenario 7: the optimistic unchoke slot rotates. The seeder has no regular unchoke slot, so the
/// only peer it unchokes is the optimistic one; the wire tap shows that peer change every 30 s,
/// one peer at a time, reaching many different leechers.
#[test]
fn optimistic_unchoke_rotates() {
    let torrent = make_torrent(
        "multi",
        &multi_files(),
        128 * KIB as u32,
        vec![vec![udp_tracker_url()]],
        12,
    );
    let config = SimConfig {
        tap: true,
        default_link: LinkSpec::new(25, 8),
        ..SimConfig::default()
    };
    let mut sw = Swarm::with(config, torrent, 8, |i| EngineConfig {
        unchoke_slots: if i == 0 { 0 } else { 4 },
        ..EngineConfig::default()
    });
    let seeder = sw.seeder.0;
    sw.sim.run_for(Duration::from_secs(300)).expect("runs");
    use hyperblow_tests::sim::tap::TapMessage;
    // Replay the seeder's choke/unchoke messages: who is unchoked, and when that changed.
    // Tracked per connection: a connection the seeder closes (e.g. a duplicate) ends its unchoke.
    let mut unchoked: Vec<(u64, usize)> = Vec::new();
    // (when, to whom, whether that connection closed before the next change)
    let mut changes: Vec<(Instant, usize, bool)> = Vec::new();
    let log: Vec<_> = sw
        .sim
        .tap_log()
        .iter()
        .filter(|r| r.from == seeder)
        .copied()
        .collect();
    for (i, r) in log.iter().enumerate() {
        match r.message {
            TapMessage::Unchoke => {
                unchoked.push((r.conn, r.to));
                changes.push((r.at, r.to, false));
            }
            TapMessage::Choke => unchoked.retain(|&(c, _)| c != r.conn),
            TapMessage::Closed => {
                // The optimistic peer's connection went away (e.g. a duplicate connection was
                // dropped): the choker refills the slot at once, so that change is not a rotation.
                if unchoked.iter().any(|&(c, _)| c == r.conn) {
                    if let Some(last) = changes.last_mut() {
                        last.2 = true;
                    }
                }
                unchoked.retain(|&(c, _)| c != r.conn);
            }
            _ => {}
        }
        // Check once all messages sent at this instant are replayed (one choke, one unchoke).
        if log.get(i + 1).is_none_or(|next| next.at != r.at) {
            assert!(
                unchoked.len() <= 1,
                "more than the optimistic peer unchoked at {:?}: {unchoked:?}",
                r.at
            );
        }
    }
    let distinct: std::collections::BTreeSet<usize> = changes.iter().map(|c| c.1).collect();
    assert!(
        changes.len() >= 8,
        "only {} rotations in 300 s",
        changes.len()
    );
    assert!(distinct.len() >= 5, "only {distinct:?} were ever unchoked");
    for w in changes.windows(2).filter(|w| !w[0].2) {
        let gap = w[1].0.saturating_duration_since(w[0].0);
        assert!(
            gap >= Duration::from_secs(29) && gap <= Duration::from_secs(31),
            "optimistic unchoke moved after {gap:?}, not 30 s: {changes:?}"
        );
    }
    // Nobody finished in the window (the slot kept rotating among interested peers).
    assert!(!Swarm::all_done(&sw.sim, &sw.leechers));
    sw.run_to_completion(Duration::from_secs(3 * 3600));
    sw.check_all();
    eprintln!(
        "scenario 7: {} unchokes by the seeder in 300 s to {} peers: {:?}",
        changes.len(),
        distinct.len(),
        changes
            .iter()
            .map(|(t, n, _)| (
                t.saturating_duration_since(Instant::from_secs(1)).as_secs(),
                *n
            ))
            .collect::<Vec<_>>()
    );
}

/// Runs a small swarm with random link cuts and returns (fingerprint, completion times, event logs).
/// What a determinism run is compared by: fingerprint, completion times, every node's event log.
type RunSummary = (u64, Vec<Duration>, Vec<Vec<(Instant, Event)>>);

fn determinism_run(sim_seed: u64) -> RunSummary {
    let torrent = make_torrent(
        "multi",
        &multi_files(),
        256 * KIB as u32,
        vec![vec![http_tracker_url()], vec![udp_tracker_url()]],
        13,
    );
    let config = SimConfig {
        seed: sim_seed,
        drop_links: Some(hyperblow_tests::sim::DropLinks {
            mean_interval: Duration::from_secs(5),
            until: Instant::from_secs(3600),
        }),
        ..slow()
    };
    let mut sw = Swarm::new(config, torrent, 4);
    sw.run_to_completion(Duration::from_secs(30 * 60));
    sw.check_all();
    let logs = (0..sw.sim.node_count())
        .map(|n| sw.sim.events(n).to_vec())
        .collect();
    (sw.sim.fingerprint(), sw.completion_times(), logs)
}

/// Scenario 8: the same seed gives the same run, event for event; another seed another run.
#[test]
fn same_seed_same_run_other_seed_other_run() {
    let a = determinism_run(21);
    let b = determinism_run(21);
    let c = determinism_run(22);
    assert_eq!(a.0, b.0, "fingerprints differ for the same seed");
    assert_eq!(a.1, b.1);
    assert_eq!(a.2, b.2, "event logs differ for the same seed");
    assert_ne!(a.0, c.0, "another seed gave the same fingerprint");
    assert_ne!(a.2, c.2, "another seed gave the same event logs");
    eprintln!(
        "scenario 8: fingerprint {:016x} twice, {:016x} with another seed; completion {:?} vs {:?} s",
        a.0,
        c.0,
        secs(&a.1),
        secs(&c.1)
    );
}

/// How a piece picking policy spreads pieces: the time until every piece has at least one and at
/// least two copies among the leechers, and how many pieces had a copy, sampled every second.
struct Spread {
    first_copy: Duration,
    two_copies: Duration,
    pieces_out: Vec<usize>,
    seeder_uploaded: u64,
}

/// One seeder with a slow uplink, eight leechers with faster links between them, a 2 MiB torrent
/// in 32 pieces; every leecher picks with `picker`.
fn spread_run(picker: hyperblow_core::picker::PickerConfig) -> Spread {
    let torrent = make_torrent(
        "spread",
        &[("x.bin", 2 * MIB)],
        64 * KIB as u32,
        vec![vec![http_tracker_url()]],
        14,
    );
    let config = SimConfig {
        default_link: LinkSpec::new(25, 64),
        ..SimConfig::default()
    };
    let mut sw = Swarm::with(config, torrent, 8, |_| EngineConfig {
        picker,
        ..EngineConfig::default()
    });
    sw.sim.set_uplink(sw.seeder.0, LinkSpec::new(25, 16));
    let ih = sw.info_hash();
    let pieces = sw.torrent.metainfo.info.layout().piece_count() as usize;
    let start = sw.sim.now();
    let (mut first, mut two) = (None, None);
    let mut pieces_out = Vec::new();
    while two.is_none() {
        sw.sim.run_for(Duration::from_secs(1)).expect("runs");
        let mut copies = vec![0usize; pieces];
        for (n, _) in &sw.leechers {
            for p in sw.sim.stored_pieces(*n, ih) {
                copies[p as usize] += 1;
            }
        }
        let min = copies.iter().copied().min().unwrap_or(0);
        pieces_out.push(copies.iter().filter(|c| **c > 0).count());
        let elapsed = sw.sim.now().saturating_duration_since(start);
        if min >= 1 && first.is_none() {
            first = Some(elapsed);
        }
        if min >= 2 {
            two = Some(elapsed);
        }
        assert!(elapsed < Duration::from_secs(3600), "pieces never spread");
    }
    let now = sw.sim.now();
    let seeder_uploaded = sw
        .sim
        .engine(sw.seeder.0)
        .torrent_stats(now, sw.seeder.1)
        .expect("stats")
        .uploaded;
    sw.run_to_completion(Duration::from_secs(3600));
    sw.check_all();
    Spread {
        first_copy: first.unwrap_or_default(),
        two_copies: two.unwrap_or_default(),
        pieces_out,
        seeder_uploaded,
    }
}

fn every5(v: &[usize]) -> Vec<usize> {
    v.iter().step_by(5).copied().collect()
}

/// Scenario 6: rarest-first spreads pieces faster than a sequential picker. The seeder is the
/// bottleneck; with rarest-first its upload goes to pieces nobody has yet, with sequential picking
/// every leecher wants the same low pieces and the seeder sends them again and again.
#[test]
fn rarest_first_spreads_pieces_faster_than_sequential() {
    use hyperblow_core::picker::PickerConfig;
    let rarest = spread_run(PickerConfig::default());
    let sequential = spread_run(PickerConfig {
        sequential: true,
        ..PickerConfig::default()
    });
    eprintln!(
        "scenario 6: every piece out after {:?} (rarest-first) vs {:?} (sequential); twice after {:?} vs {:?}; \
         seeder uploaded {} vs {} bytes by then; pieces out of 32 every 5 s: {:?} vs {:?}",
        rarest.first_copy,
        sequential.first_copy,
        rarest.two_copies,
        sequential.two_copies,
        rarest.seeder_uploaded,
        sequential.seeder_uploaded,
        every5(&rarest.pieces_out),
        every5(&sequential.pieces_out)
    );
    // Halfway to rarest-first's finish, sequential had fewer distinct pieces out.
    let half = rarest.pieces_out.len() / 2;
    assert!(rarest.pieces_out[half] > sequential.pieces_out[half]);
    assert!(
        rarest.first_copy.as_secs_f64() < 0.8 * sequential.first_copy.as_secs_f64(),
        "rarest-first put every piece out after {:?}, sequential after {:?}",
        rarest.first_copy,
        sequential.first_copy
    );
    assert!(
        rarest.two_copies < sequential.two_copies,
        "rarest-first had two copies of everything after {:?}, sequential after {:?}",
        rarest.two_copies,
        sequential.two_copies
    );
}

/// Scenario: a leecher starts from a magnet link alone (info-hash and the tracker's URL); the
/// seeder is known to it only through the tracker. A third peer that never announces (it was given
/// the seeder by hand) reaches it only through the seeder's PEX. Everyone finishes byte-exact.
#[test]
fn magnet_leecher_finds_the_seeder_by_tracker_and_a_third_peer_by_pex() {
    use hyperblow_core::engine::AddMagnet;
    use hyperblow_core::magnet::MagnetLink;
    use hyperblow_core::metainfo::Metainfo;

    let torrent = make_torrent(
        "multi",
        &multi_files(),
        128 * KIB as u32,
        vec![vec![http_tracker_url()]],
        11,
    );
    let ih = torrent.metainfo.info_hash();
    let mut sim = Sim::new(slow());
    sim.register(&torrent.metainfo, torrent.content.clone());
    let s = sim.add_node(EngineConfig::default(), 3000);
    let st = sim
        .add_torrent(s, Sim::plain_add(&torrent.metainfo), true)
        .expect("seeder adds");
    // The third peer: the same info, no tracker; it knows only the seeder.
    let quiet = Metainfo::new(torrent.metainfo.info.clone(), Vec::new());
    let p = sim.add_node(EngineConfig::default(), 3001);
    let pt = sim
        .add_torrent(p, Sim::plain_add(&quiet), false)
        .expect("third peer adds");
    let seeder_addr = sim.addr(s);
    sim.add_peer(p, pt, seeder_addr);
    sim.run_for(Duration::from_secs(5)).expect("runs");

    let added_at = sim.now();
    let mut link = MagnetLink::new(ih);
    link.trackers = vec![http_tracker_url()];
    let m = sim.add_node(EngineConfig::default(), 3002);
    let mt = sim
        .add_magnet(
            m,
            AddMagnet {
                link,
                wanted_files: None,
                paused: false,
                peers: Vec::new(),
            },
        )
        .expect("magnet adds");
    let end = sim.now() + Duration::from_secs(30 * 60);
    let nodes = [(m, mt), (p, pt)];
    let done = sim
        .run_until(end, |sim| {
            nodes
                .iter()
                .all(|(n, t)| sim.completed_at(*n, *t).is_some())
        })
        .expect("simulation runs");
    assert!(done, "magnet leecher and third peer did not both finish");
    sim.check_files(m, ih, None)
        .unwrap_or_else(|e| panic!("{e}"));
    sim.check_files(p, ih, None)
        .unwrap_or_else(|e| panic!("{e}"));

    let events = sim.events(m);
    let metadata_at = events
        .iter()
        .find_map(|(at, e)| {
            matches!(e, Event::MetadataReceived { torrent, .. } if *torrent == mt).then_some(*at)
        })
        .expect("metadata received");
    let first_piece = events
        .iter()
        .position(|(_, e)| matches!(e, Event::PieceVerified { .. }))
        .expect("pieces");
    let meta_pos = events
        .iter()
        .position(|(_, e)| matches!(e, Event::MetadataReceived { .. }))
        .expect("metadata");
    assert!(meta_pos < first_piece);
    // The seeder came from the tracker; the third peer never announced, so the tracker never named
    // it, and nobody gave it to the magnet leecher: it dialled the third peer's listen address
    // because the seeder's PEX told it.
    let third = sim.addr(p);
    assert!(
        sim.tracker().log().iter().all(|r| r.peer != third),
        "the third peer announced"
    );
    assert!(
        events.iter().any(|(_, e)| matches!(
            e,
            Event::PeerConnected { addr, .. } if *addr == seeder_addr
        )),
        "the magnet leecher never connected to the seeder"
    );
    let met_third = events.iter().any(|(_, e)| {
        matches!(e, Event::PeerConnected { torrent, addr } if *torrent == mt && *addr == third)
    });
    assert!(met_third, "the magnet leecher never dialled the third peer");
    let now = sim.now();
    let third_stats = sim.engine(p).torrent_stats(now, pt).expect("stats");
    eprintln!(
        "magnet scenario: metadata {:.3} s after the link was added, done after {:?} s, third peer \
         uploaded {} bytes, {:?}",
        metadata_at.saturating_duration_since(added_at).as_secs_f64(),
        sim.completed_at(m, mt)
            .map(|t| t.saturating_duration_since(added_at).as_secs()),
        third_stats.uploaded,
        sim.counters()
    );
    let _ = st;
}

//! Rate limits end to end in the engine, on the virtual clock of the test network (`tests.rs`):
//! download and upload limits hold within 10% over 10 s, a change is effective within 1 s, and a
//! limited seeder shares its upload fairly between two leechers.

use super::*;
use crate::ratelimit::RateLimits;

/// 3 MiB + a tail in 64 KiB pieces: more than 10 s at the limits used here.
const BIG: &[(&str, u64)] = &[("big", 3 * 1024 * 1024), ("tail", 12_345)];
const BIG_PL: u32 = 64 * 1024;

/// A seeder (node 0) and `leechers` leechers of BIG, each leecher dialling the seeder.
fn big_swarm(leechers: usize) -> (Net, Vec<TorrentId>, TorrentId) {
    let (meta, content) = make_torrent("big", BIG, BIG_PL, vec![]);
    let mut net = Net::new();
    let now = net.now;
    let s = net.add_node(EngineConfig::default(), 1);
    let ts = net.add_seed(s, &meta, &content, BIG_PL);
    let seeder = net.nodes[s].addr;
    let tl = (0..leechers)
        .map(|i| {
            let l = net.add_node(EngineConfig::default(), 2 + i as u64);
            net.nodes[l]
                .engine
                .add_torrent(now, add(&meta, None, vec![seeder]))
                .expect("leech")
        })
        .collect();
    (net, tl, ts)
}

fn downloaded(net: &Net, node: usize, t: TorrentId) -> u64 {
    net.nodes[node]
        .engine
        .torrent_stats(net.now, t)
        .expect("stats")
        .downloaded
}

/// Bytes downloaded by `node` in each of `secs` seconds of virtual time.
fn per_second(net: &mut Net, node: usize, t: TorrentId, secs: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut last = downloaded(net, node, t);
    for _ in 0..secs {
        net.run_for(Duration::from_secs(1));
        let d = downloaded(net, node, t);
        out.push(d - last);
        last = d;
    }
    out
}

fn within(got: u64, want: u64, pct: u64) -> bool {
    got.abs_diff(want) <= want * pct / 100
}

#[test]
fn a_global_download_limit_holds_and_changes_within_a_second() {
    let (mut net, tl, _) = big_swarm(1);
    let now = net.now;
    let limits = RateLimits {
        download: 150_000,
        upload: 0,
    };
    net.nodes[1].engine.set_rate_limits(now, None, limits);
    assert_eq!(net.nodes[1].engine.rate_limits(None), limits);
    let secs = per_second(&mut net, 1, tl[0], 10);
    let total: u64 = secs.iter().sum();
    // Within 10% of 1.5 MB over 10 s (an upper and a lower bound on the virtual clock).
    assert!(within(total, 1_500_000, 10), "{total}: {secs:?}");
    // Lowered at run time: from the next full second on, the new rate holds.
    let now = net.now;
    net.nodes[1].engine.set_rate_limits(
        now,
        None,
        RateLimits {
            download: 50_000,
            upload: 0,
        },
    );
    let secs = per_second(&mut net, 1, tl[0], 6);
    assert!(
        secs[1..].iter().all(|&s| s <= 50_000 + 16 * 1024),
        "{secs:?}"
    );
    assert!(within(secs[1..].iter().sum(), 250_000, 10), "{secs:?}");
    // Lifted: the rest arrives at once.
    let now = net.now;
    net.nodes[1]
        .engine
        .set_rate_limits(now, None, RateLimits::default());
    assert!(net.run_until(Duration::from_secs(2), |n| n.completed(1, tl[0])));
}

#[test]
fn a_per_torrent_upload_limit_is_shared_fairly_between_leechers() {
    let (mut net, tl, ts) = big_swarm(2);
    let now = net.now;
    let limits = RateLimits {
        download: 0,
        upload: 200_000,
    };
    net.nodes[0].engine.set_rate_limits(now, Some(ts), limits);
    assert_eq!(net.nodes[0].engine.rate_limits(Some(ts)), limits);
    assert_eq!(net.nodes[0].engine.rate_limits(None), RateLimits::default());
    let _ = tl;
    // What the seeder sent to each leecher (they also trade with each other, unlimited).
    let sent_to = |net: &Net, leecher: usize| -> u64 {
        let ip = net.nodes[leecher].addr.ip();
        net.nodes[0]
            .engine
            .torrent_stats(net.now, ts)
            .expect("stats")
            .peer_list
            .iter()
            .filter(|p| p.addr.ip() == ip)
            .map(|p| p.uploaded)
            .sum()
    };
    net.run_for(Duration::from_secs(10));
    let (a, b) = (sent_to(&net, 1), sent_to(&net, 2));
    assert!(within(a + b, 2_000_000, 10), "{a} + {b}");
    // Fair: each leecher within 10% of half (+ a block).
    assert!(a.abs_diff(1_000_000) <= 100_000 + 16 * 1024, "{a} vs {b}");
    assert!(b.abs_diff(1_000_000) <= 100_000 + 16 * 1024, "{a} vs {b}");
}

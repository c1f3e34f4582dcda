//! How long the deterministic swarm simulation takes to run (CPU time of the simulator and all the
//! engines in it), for one seeder and N leechers until every leecher completed.
//!
//! - `swarm/256MiB_1+50`: a 256 MiB torrent (1 MiB pieces) shared by 1 seeder and 50 leechers.
//! - `swarm_scaling/16MiB_1+N` for N = 10, 50, 200: a 16 MiB torrent (256 KiB pieces).
//!
//! Links: 20 ms, 4 MiB/s per direction. Hash jobs use [`HashMode::CompareWithOrigin`] (a memory
//! compare with the original piece instead of SHA-1: the engines see the same answers) and verified
//! pieces are stored as references to the original content, so that 50 x 256 MiB neither costs
//! 12.8 GiB of SHA-1 per iteration nor 12.8 GiB of memory. Everything else (peer wire encoding and
//! decoding, sessions, picker, choker, tracker traffic) runs for real.
//!
//! Run: `cargo bench --bench swarm -- --warm-up-time 1 --measurement-time 5 --sample-size 10`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hyperblow_tests::sim::fixture::{make_torrent, TestTorrent};
use hyperblow_tests::sim::{bench_swarm, http_tracker_url, Sim};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Builds the swarm, runs it to completion; returns the virtual time it took and the simulator.
fn run_swarm(torrent: &TestTorrent, leechers: usize) -> (Duration, Sim) {
    bench_swarm(torrent, leechers)
}

fn torrent(size: u64, piece: u64) -> TestTorrent {
    make_torrent(
        "bench",
        &[("data.bin", size)],
        piece as u32,
        vec![vec![http_tracker_url()]],
        42,
    )
}

fn report(name: &str, torrent: &TestTorrent, leechers: usize) {
    let (virt, sim) = run_swarm(torrent, leechers);
    eprintln!(
        "{name}: virtual time {:.1} s, {:?}",
        virt.as_secs_f64(),
        sim.counters()
    );
}

fn big(c: &mut Criterion) {
    let t = torrent(256 * MIB, MIB);
    report("256MiB_1+50", &t, 50);
    let mut g = c.benchmark_group("swarm");
    g.sample_size(10);
    g.bench_function("256MiB_1+50", |b| b.iter(|| run_swarm(&t, 50).0));
    g.finish();
}

fn scaling(c: &mut Criterion) {
    let t = torrent(16 * MIB, 256 * KIB);
    let mut g = c.benchmark_group("swarm_scaling");
    g.sample_size(10);
    for n in [10usize, 50, 200] {
        report(&format!("16MiB_1+{n}"), &t, n);
        g.bench_with_input(BenchmarkId::new("16MiB_1+N", n), &n, |b, &n| {
            b.iter(|| run_swarm(&t, n).0)
        });
    }
    g.finish();
}

criterion_group!(benches, scaling, big);
criterion_main!(benches);

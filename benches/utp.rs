//! uTP throughput of one connection pair over the in-memory loopback (no I/O, no kernel).
//!
//! What is measured: [`run_transfer`] connects two `UtpSocket`s on a virtual clock over a perfect,
//! instant link and moves 16 MiB from one to the other, both sides closing gracefully. The time
//! covers everything both endpoints do: the sender's application copying into its send buffer,
//! packetising, headers, acks (selective and cumulative), LEDBAT, timers, the receiver's reassembly,
//! and the receiver's application copying out and checking every byte against the pattern. The link
//! itself costs one copy per datagram (into a recycled buffer) and a heap push/pop.
//!
//! Before the criterion run it prints the simulated figures for a lossy path (virtual time, so they
//! are the same on any machine): 20 ms each way, a 2 MB/s bottleneck with a 300 ms buffer, 1% and 5%
//! random loss both ways.
//!
//! Instructions per byte: `HYPERBLOW_UTP_ONCE=N` runs one N-MiB loopback transfer and exits, for
//! `perf stat -e instructions:u`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hyperblow_core::utp::sim::{run_transfer, LinkConfig};
use hyperblow_core::utp::UtpConfig;

const BYTES: u64 = 16 << 20;

fn loopback(bytes: u64) {
    let r = run_transfer(
        &UtpConfig::default(),
        LinkConfig::loopback(),
        LinkConfig::loopback(),
        bytes,
        7,
        Duration::from_secs(3600),
    );
    assert!(r.exact, "loopback transfer incomplete: {r:?}");
    black_box(r);
}

fn lossy_figures() {
    for loss_ppm in [10_000u32, 50_000] {
        let link = LinkConfig {
            latency: Duration::from_millis(20),
            loss_ppm,
            rate: Some(2_000_000),
            queue_limit: Duration::from_millis(300),
            ..LinkConfig::loopback()
        };
        let r = run_transfer(
            &UtpConfig::default(),
            link.clone(),
            link,
            8 << 20,
            u64::from(loss_ppm),
            Duration::from_secs(600),
        );
        assert!(r.exact, "lossy transfer incomplete: {r:?}");
        println!(
            "utp sim, 20 ms each way, 2 MB/s bottleneck, {}% loss: goodput {:.0} KB/s, \
             mean queueing delay {:.1} ms (max {:.1} ms), fast resends {}, timeout resends {}",
            f64::from(loss_ppm) / 1e4,
            r.throughput() / 1e3,
            r.mean_queue_delay().as_secs_f64() * 1e3,
            r.forward.max_queue_delay.as_secs_f64() * 1e3,
            r.sender.fast_resends,
            r.sender.timeout_resends,
        );
    }
}

fn bench(c: &mut Criterion) {
    if let Ok(mib) = std::env::var("HYPERBLOW_UTP_ONCE") {
        let mib: u64 = mib.parse().unwrap_or(64);
        loopback(mib << 20);
        std::process::exit(0);
    }
    lossy_figures();
    let mut g = c.benchmark_group("utp");
    g.throughput(Throughput::Bytes(BYTES));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("loopback_pair_16MiB", |b| b.iter(|| loopback(BYTES)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The cost of MSE's RC4 payload transform (and of one handshake), single-threaded.
//!
//! What is measured:
//! - `decrypt_in_place`: the receive path. A 4 MiB buffer is decrypted in place in 64 KiB reads (the
//!   size of a read under load), as the connection layer does with the read buffer before the peer wire
//!   decoder sees it. Criterion's throughput is bytes/s; CPU-s per GiB is 1 / (GiB/s) since the loop is
//!   single-threaded and never waits.
//! - `encrypt_into`: the send path. 4 MiB in 16 KiB messages appended to a send buffer and encrypted there
//!   (the append is the copy the plaintext send path makes as well).
//! - `plain_*`: the same calls on a plaintext transform, for the floor.
//! - `handshake`: both sides of a whole handshake (four 768-bit modular exponentiations, four RC4 key
//!   schedules with 1,024 dropped bytes each) in memory.
//!
//! A printed summary after the run converts the medians to GiB/s and CPU-s per GiB.

use std::hint::black_box;
use std::time::{Duration, Instant as StdInstant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hyperblow_core::mse::{Crypto, Established, Handshake, NoSkeys, Policy, Transform};
use hyperblow_core::rng::seeded;
use hyperblow_core::{InfoHash, Instant};

const TOTAL: usize = 4 << 20;
const READ: usize = 64 << 10;
const MSG: usize = 16 << 10;

/// Runs a whole handshake between two in-memory ends; returns (dialler, acceptor).
fn handshake(seed: u64, pa: Policy, pb: Policy) -> (Established, Established) {
    let mut rng = seeded(seed);
    let ih = InfoHash([3; 20]);
    let skeys = [ih];
    let now = Instant::from_secs(1);
    let mut a = Handshake::outgoing(now, &mut rng, ih, pa, &[0x13; 68]).expect("A");
    let mut b = Handshake::incoming(now, &mut rng, pb).expect("B");
    let (mut ra, mut rb) = (None, None);
    for _ in 0..16 {
        while let Some(x) = a.poll_transmit() {
            if rb.is_none() {
                b.handle_read(&x, &skeys[..]).expect("B reads");
                if let Some(r) = b.take_established() {
                    rb = Some(r);
                }
            }
        }
        while let Some(x) = b.poll_transmit() {
            if ra.is_none() {
                a.handle_read(&x, &NoSkeys).expect("A reads");
                if let Some(r) = a.take_established() {
                    ra = Some(r);
                }
            }
        }
        if ra.is_some() && rb.is_some() {
            break;
        }
    }
    (ra.expect("A done"), rb.expect("B done"))
}

fn rc4_pair() -> (Transform, Transform) {
    let (a, b) = handshake(1, Policy::Require, Policy::Require);
    assert_eq!(a.crypto, Crypto::Rc4);
    (a.transform, b.transform)
}

fn decrypt(t: &mut Transform, buf: &mut [u8]) {
    for read in buf.chunks_mut(READ) {
        t.decrypt_in_place(read);
    }
}

fn encrypt(t: &mut Transform, src: &[u8], out: &mut BytesMut) {
    out.clear();
    for msg in src.chunks(MSG) {
        t.encrypt_into(msg, out);
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("mse");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.measurement_time(Duration::from_secs(4));
    let mut buf = vec![0x5au8; TOTAL];
    let src = vec![0xa5u8; TOTAL];
    let mut out = BytesMut::with_capacity(TOTAL);

    let (mut tx, mut rx) = rc4_pair();
    g.bench_function("rc4_decrypt_in_place", |bn| {
        bn.iter(|| decrypt(&mut rx, black_box(&mut buf)))
    });
    g.bench_function("rc4_encrypt_into", |bn| {
        bn.iter(|| encrypt(&mut tx, black_box(&src), &mut out))
    });
    let mut plain = Transform::plain();
    g.bench_function("plain_decrypt_in_place", |bn| {
        bn.iter(|| decrypt(&mut plain, black_box(&mut buf)))
    });
    g.bench_function("plain_encrypt_into", |bn| {
        bn.iter(|| encrypt(&mut plain, black_box(&src), &mut out))
    });
    g.finish();

    let mut g = c.benchmark_group("mse_handshake");
    g.measurement_time(Duration::from_secs(4));
    let mut seed = 0;
    g.bench_function("both_sides", |bn| {
        bn.iter(|| {
            seed += 1;
            handshake(seed, Policy::Prefer, Policy::Prefer)
        })
    });
    g.finish();

    summary();
}

/// A direct measurement, printed in the units the issue asks for: median of 9 runs over 64 MiB each, in
/// wall time and in this thread's CPU time (the machine is shared, so CPU time is the figure to quote).
fn summary() {
    let (mut tx, mut rx) = rc4_pair();
    let mut buf = vec![0x5au8; TOTAL];
    let src = vec![0xa5u8; TOTAL];
    let mut out = BytesMut::with_capacity(TOTAL);
    let gib = (16 * TOTAL) as f64 / (1u64 << 30) as f64;
    let run = |f: &mut dyn FnMut()| {
        let mut wall = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..9 {
            let (t, c) = (StdInstant::now(), thread_cpu());
            for _ in 0..16 {
                f();
            }
            wall.push(t.elapsed().as_secs_f64());
            cpu.push(thread_cpu() - c);
        }
        wall.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        (gib / wall[4], cpu[4] / gib)
    };
    let (d_rate, d_cost) = run(&mut || decrypt(&mut rx, black_box(&mut buf)));
    let (e_rate, e_cost) = run(&mut || encrypt(&mut tx, black_box(&src), &mut out));
    let mut plain = Transform::plain();
    let (p_rate, p_cost) = run(&mut || encrypt(&mut plain, black_box(&src), &mut out));
    println!(
        "mse summary (median of 9 x 64 MiB): RC4 decrypt in place {d_rate:.2} GiB/s wall, \
         {d_cost:.2} CPU-s/GiB; RC4 encrypt into send buffer {e_rate:.2} GiB/s wall, {e_cost:.2} CPU-s/GiB; \
         plaintext append {p_rate:.2} GiB/s wall, {p_cost:.3} CPU-s/GiB"
    );
}

/// This thread's CPU time in seconds.
fn thread_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

criterion_group!(benches, bench);
criterion_main!(benches);

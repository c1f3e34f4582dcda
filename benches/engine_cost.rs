//! Instruction counts of the engine, meant to run once under `valgrind --tool=callgrind` (a figure that
//! does not depend on the machine's load). Each measured region is a `#[inline(never)]` function whose
//! name starts with `measured_`, so callgrind can count only it:
//!
//! ```text
//! cargo build --profile bench --bench engine_cost
//! B=$(ls -t target/release/deps/engine_cost-* | grep -v '\.d$' | head -1)
//! valgrind --tool=callgrind --toggle-collect='*measured_*' --callgrind-out-file=/tmp/cg.out $B idle 1000
//! callgrind_annotate /tmp/cg.out | head -20     # "PROGRAM TOTALS" is the measured region
//! ```
//!
//! Modes:
//! - `idle N`: one engine with `N` idle torrents (running, no peers, no trackers) and one torrent it
//!   seeds to one hand-driven peer; the measured region is [`READS`] rounds of: the peer's `request`
//!   arrives (`handle_read`), the engine's read job is answered (`handle_job_done`), the `Send` is
//!   reported flushed (`handle_flushed`), with `poll_timeout` after every input as a driver does. The
//!   cost per round must not depend on `N`.
//! - `swarm SIZE_MIB PIECE_KIB LEECHERS`: the swarm bench's simulation (see `benches/swarm.rs`): one
//!   seeder and `LEECHERS` leechers until all completed; the measured region is the run (not the
//!   making of the torrent).
//!
//! Without arguments it runs `idle 1` and `idle 1000` and prints the virtual outcome of both, which is
//! what `cargo bench --bench engine_cost` does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyperblow_core::bitfield::Bitfield;
use hyperblow_core::engine::{AddTorrent, Engine, EngineConfig, Job, JobResult, Output};
use hyperblow_core::time::Instant;
use hyperblow_core::wire::{BlockRequest, Handshake, Message, Reserved};
use hyperblow_core::PeerId;
use hyperblow_tests::sim::bench_swarm;
use hyperblow_tests::sim::fixture::{make_torrent, TestTorrent};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Rounds measured in `idle` mode.
const READS: usize = 2000;

/// What the `idle` run did, to check the measured work was the same for every `N`.
#[derive(Debug, Default, PartialEq, Eq)]
struct IdleOutcome {
    reads: usize,
    sends: usize,
    bytes_sent: usize,
}

/// Everything set up for the `idle` measurement.
struct IdleSetup {
    engine: Engine,
    conn: hyperblow_core::engine::ConnId,
    content: Bytes,
    now: Instant,
    blocks: Vec<BlockRequest>,
}

fn idle_setup(idle: usize) -> IdleSetup {
    let mut now = Instant::from_secs(1);
    let mut engine = Engine::new(EngineConfig::default(), 7, now);
    for i in 0..idle {
        let t = make_torrent(
            &format!("idle{i}"),
            &[("f.bin", 16 * KIB)],
            16 * KIB as u32,
            Vec::new(),
            1000 + i as u64,
        );
        let add = AddTorrent {
            metainfo: t.metainfo,
            have: None,
            wanted_files: None,
            paused: false,
            peers: Vec::new(),
        };
        engine.add_torrent(now, add).expect("idle torrent adds");
    }
    let active: TestTorrent = make_torrent(
        "active",
        &[("a.bin", 4 * MIB)],
        256 * KIB as u32,
        Vec::new(),
        1,
    );
    let layout = active.metainfo.info.layout().clone();
    let info_hash = active.metainfo.info_hash();
    let add = AddTorrent {
        metainfo: active.metainfo.clone(),
        have: Some(Bitfield::full(layout.piece_count())),
        wanted_files: None,
        paused: false,
        peers: Vec::new(),
    };
    engine.add_torrent(now, add).expect("active torrent adds");
    drain(&mut engine, now, None);
    let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), 50000);
    let conn = engine
        .handle_incoming(now, remote)
        .expect("incoming accepted");
    let mut hello = BytesMut::new();
    Handshake::new(info_hash, PeerId([7u8; 20]), Reserved::from_bytes([0; 8])).encode(&mut hello);
    Message::Interested.encode(&mut hello).expect("encodes");
    engine.handle_read(now, conn, &hello);
    drain(&mut engine, now, None);
    // Let the choker unchoke the interested peer.
    for _ in 0..20 {
        now += Duration::from_secs(1);
        engine.handle_timeout(now);
        drain(&mut engine, now, None);
    }
    let mut blocks = Vec::new();
    for piece in 0..layout.piece_count() {
        let len = layout.piece_len(piece).unwrap_or(0);
        let mut offset = 0;
        while offset < len {
            let length = (len - offset).min(16 * 1024);
            blocks.push(BlockRequest {
                index: piece,
                begin: offset,
                length,
            });
            offset += length;
        }
    }
    IdleSetup {
        engine,
        conn,
        content: active.content,
        now,
        blocks,
    }
}

/// Performs the engine's outputs as a driver would: read jobs answered from `content`, sends reported
/// flushed. Returns what was done.
fn drain(engine: &mut Engine, now: Instant, content: Option<&Bytes>) -> IdleOutcome {
    let mut out = IdleOutcome::default();
    let mut flushed = Vec::new();
    loop {
        while let Some(o) = engine.poll_output() {
            match o {
                Output::Send { conn, data } => {
                    out.sends += 1;
                    out.bytes_sent += data.len();
                    flushed.push((conn, data.len()));
                }
                Output::Job {
                    id,
                    job:
                        Job::Read {
                            piece,
                            offset,
                            length,
                            ..
                        },
                } => {
                    out.reads += 1;
                    let Some(content) = content else { continue };
                    let start = piece as usize * 256 * 1024 + offset as usize;
                    let data = content.slice(start..start + length as usize);
                    engine.handle_job_done(now, id, JobResult::Read(data));
                    let _ = engine.poll_timeout();
                }
                _ => {}
            }
        }
        if flushed.is_empty() {
            break;
        }
        for (conn, n) in flushed.drain(..) {
            engine.handle_flushed(now, conn, n);
            let _ = engine.poll_timeout();
        }
    }
    while engine.poll_event().is_some() {}
    out
}

#[inline(never)]
fn measured_reads(s: &mut IdleSetup) -> IdleOutcome {
    let mut total = IdleOutcome::default();
    let mut frame = BytesMut::new();
    for i in 0..READS {
        s.now += Duration::from_millis(1);
        let block = s.blocks[i % s.blocks.len()];
        frame.clear();
        Message::Request(block).encode(&mut frame).expect("encodes");
        s.engine.handle_read(s.now, s.conn, &frame);
        let _ = s.engine.poll_timeout();
        let o = drain(&mut s.engine, s.now, Some(&s.content));
        total.reads += o.reads;
        total.sends += o.sends;
        total.bytes_sent += o.bytes_sent;
        if s.engine.poll_timeout().is_some_and(|t| t <= s.now) {
            s.engine.handle_timeout(s.now);
            drain(&mut s.engine, s.now, Some(&s.content));
        }
    }
    total
}

fn idle(n: usize) -> IdleOutcome {
    let mut s = idle_setup(n);
    let out = measured_reads(&mut s);
    eprintln!("idle {n}: {READS} requests, {out:?}");
    assert_eq!(out.reads, READS, "every request was served");
    out
}

#[inline(never)]
fn measured_swarm(t: &TestTorrent, leechers: usize) -> Duration {
    bench_swarm(t, leechers).0
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("idle") => {
            let n = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
            idle(n);
        }
        Some("swarm") => {
            let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
            let (size, piece, leechers) = (num(1, 16), num(2, 256), num(3, 10));
            let t = make_torrent(
                "bench",
                &[("data.bin", size * MIB)],
                (piece * KIB) as u32,
                vec![vec![hyperblow_tests::sim::http_tracker_url()]],
                42,
            );
            let virt = measured_swarm(&t, leechers as usize);
            eprintln!(
                "swarm {size} MiB, {piece} KiB pieces, 1+{leechers}: virtual time {:.3} s",
                virt.as_secs_f64()
            );
        }
        _ => {
            let a = idle(1);
            let b = idle(1000);
            assert_eq!(a, b, "the same work with 1 and 1000 idle torrents");
        }
    }
}

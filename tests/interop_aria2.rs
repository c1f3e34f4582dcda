//! Hyperblow with aria2 1.36 (`aria2c`, a third implementation, C++), both ways, on both runtimes,
//! through Debian's opentracker over HTTP (aria2 speaks UDP trackers only with its DHT on). Every
//! transfer ends in a byte-for-byte comparison; every wait is bounded; aria2 listens on 127.0.0.1
//! with DHT, LSD and PEX off and is stopped by its PID (`src/interop/aria2.rs`).
//!
//! - `aria2_leeches_from_hyperblow`: aria2 finds Hyperblow through the tracker and downloads from
//!   it, with Hyperblow under `--encryption require` (aria2 opens every connection with MSE; we accept
//!   only an RC4 stream, so the finished download was encrypted, and aria2's log says so). aria2 sends its `have`s batched into mid-connection `bitfield`s, which Hyperblow used to
//!   answer by closing the connection (aria2 then stalled after one piece).
//! - `hyperblow_leeches_from_aria2`: Hyperblow finds an aria2 seeder through the tracker only.
//!   Hyperblow dials it under the default `prefer` (MSE handshake, plaintext payload).

#[macro_use]
#[path = "interop/common.rs"]
mod common;

use std::time::Instant;

use common::{assert_same, tools_present, Hb, Rt, SingleFile, WAIT};
use hyperblow_core::mse::Policy;
use hyperblow_driver::engine::Event;
use hyperblow_driver::AddTorrentRequest;
use hyperblow_tests::interop::aria2::wait_for_seeder;
use hyperblow_tests::interop::{free_port, require_tool, Aria2, Aria2Role, Opentracker};

on_both_runtimes!(aria2_leeches_from_hyperblow, hyperblow_leeches_from_aria2);

/// 1.5 MB in 32 KiB pieces: enough pieces that aria2 batches several `have`s.
const LEN: usize = 1_500_000 + 17;

fn present() -> bool {
    tools_present() && require_tool("aria2c").is_some()
}

fn tracker_and_fixture(name: &str, seed: u64) -> (Opentracker, SingleFile, String) {
    let tracker = Opentracker::start(&[], common::PROGRAM_BOUND).expect("start opentracker");
    let url = tracker.http_announce_url();
    let fx = SingleFile::new(name, LEN, seed, 15, &[&url]);
    tracker
        .set_whitelist(&[fx.torrent.info_hash])
        .expect("whitelist");
    (tracker, fx, url)
}

fn aria2_leeches_from_hyperblow(rt: Rt) {
    if !present() {
        return;
    }
    let t0 = Instant::now();
    let (tracker, fx, _) = tracker_and_fixture("to-aria2.bin", 900 + rt as u64);
    let hb = Hb::start(rt, |c| c.engine.encryption = Policy::Require);
    let added = hb.add(AddTorrentRequest::new(fx.meta.clone(), fx.seed_dir()));
    assert_eq!(added.have_pieces, added.total_pieces, "the seed has it all");
    hb.wait_event(
        "our announce to be answered",
        WAIT,
        &[tracker.process()],
        |e| matches!(e, Event::TrackerReply { torrent, .. } if *torrent == added.id),
    );
    let out = fx.leech_dir("aria2");
    // aria2 requires RC4 too, and logs its MSE steps at debug level.
    let Some(aria2) = Aria2::spawn_with(
        &format!("aria2-leech-{}", rt.name()),
        Aria2Role::Leech,
        &fx.torrent.path,
        &out,
        free_port().expect("free port"),
        fx.dir.path(),
        common::PROGRAM_BOUND,
        &[
            "--bt-require-crypto=true",
            "--bt-min-crypto-level=arc4",
            "--log-level=debug",
        ],
    )
    .expect("spawn aria2c") else {
        return;
    };
    let t1 = Instant::now();
    let status = aria2
        .process()
        .wait_exit(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", aria2.log_tail(40), hb.diagnostics()));
    assert!(
        status.success(),
        "aria2c exited with {status}\n{}\n{}",
        aria2.log_tail(40),
        hb.diagnostics()
    );
    assert_same(&out.join(&fx.name), &fx.data, "aria2");
    let log = aria2.log();
    let mse: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("MSEHandshake") || l.contains("ARC4"))
        .collect();
    eprintln!("[aria2 log, MSE lines]\n{}", mse.join("\n"));
    // aria2's dial: its MSE handshake found our encrypted VC and read our crypto_select (RC4).
    assert!(
        mse.iter().any(|l| l.contains("peer prefers ARC4")),
        "aria2's log shows no RC4 connection:\n{}",
        mse.join("\n")
    );
    // Nobody else had the data: it all came from Hyperblow, over one connection that was never
    // dropped for aria2's late bitfields.
    let stats = hb.stats(added.id);
    assert!(stats.uploaded >= LEN as u64, "uploaded {}", stats.uploaded);
    eprintln!(
        "[timing] {} aria2 leeches {} KiB from Hyperblow: {:.2?} from aria2's start; test {:.2?}",
        rt.name(),
        LEN / 1024,
        t1.elapsed(),
        t0.elapsed()
    );
}

fn hyperblow_leeches_from_aria2(rt: Rt) {
    if !present() {
        return;
    }
    let t0 = Instant::now();
    let (tracker, fx, url) = tracker_and_fixture("from-aria2.bin", 910 + rt as u64);
    let Some(aria2) = Aria2::spawn(
        &format!("aria2-seed-{}", rt.name()),
        Aria2Role::Seed,
        &fx.torrent.path,
        &fx.seed_dir(),
        free_port().expect("free port"),
        fx.dir.path(),
        common::PROGRAM_BOUND,
    )
    .expect("spawn aria2c") else {
        return;
    };
    let watched = [aria2.process(), tracker.process()];
    // Known to the tracker (as a seeder: its data checked) before we announce.
    wait_for_seeder(&url, fx.torrent.info_hash, WAIT, &watched)
        .unwrap_or_else(|e| panic!("{e}\n{}", aria2.log_tail(40)));
    let hb = Hb::start(rt, |_| {});
    let t1 = Instant::now();
    // No peer hint: the tracker is the only way to aria2.
    let added = hb.add(AddTorrentRequest::new(fx.meta.clone(), fx.leech_dir("hb")));
    hb.wait_complete(added.id, WAIT, &watched);
    let took = t1.elapsed();
    assert_same(
        &fx.dir.path().join("hb").join(&fx.name),
        &fx.data,
        "Hyperblow",
    );
    eprintln!(
        "[timing] {} Hyperblow leeches {} KiB from aria2 via HTTP opentracker: {took:.2?}; \
         test {:.2?}",
        rt.name(),
        LEN / 1024,
        t0.elapsed()
    );
}

//! `hyperblow download <magnet>` end to end over loopback: `hyperblow seed` of a torrent made by
//! `hyperblow create`, and a leecher given only a magnet link (the seeder in `x.pe`, or a tracker in
//! `tr`), on both runtimes; `--save-torrent`, `--exclude`/`--only` resolved once the file list is
//! known, "fetching metadata" progress, and files already in the output directory checked.

use std::path::Path;
use std::process::Command;

mod common;

use common::{bin, exit_code, s, spawn, start_seeder, Fixture, DONE_WITHIN};
use hyperblow_core::metainfo::Metainfo;
use hyperblow_tests::interop::ChildGuard;
use hyperblow_tests::trackers::TestTracker;
use serde_json::Value;

/// In the torrent's order (`create` sorts by path): indices as `hyperblow info` prints them.
const FILES: &[(&str, usize)] = &[
    ("a/first.bin", 100_000),
    ("b/c/straddle.bin", 70_001),
    ("empty.txt", 0),
    ("last.bin", 33_333),
    ("small.txt", 1_000),
];

fn fixture(name: &str, trackers: &[String]) -> Fixture {
    common::fixture(name, FILES, 32 * 1024, trackers, 104_729)
}
/// `hyperblow seed` of the fixture; returns it and its listen address once it has added the torrent.
fn seeder(fx: &Fixture, runtime: &str, tracker: Option<&TestTracker>) -> (ChildGuard, String) {
    let (child, added) = start_seeder(fx, runtime, tracker);
    let listen = added["listen"].as_str().expect("listen").to_owned();
    (child, listen)
}

fn assert_file(fx: &Fixture, out: &Path, i: usize) {
    let (rel, len) = FILES[i];
    let want = std::fs::read(fx.payload.join(rel)).expect("source");
    let got = std::fs::read(out.join(fx.meta.info.name()).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(got.len(), len, "{rel}");
    assert!(got == want, "{rel} differs");
}

/// The magnet link of the fixture plus `extra`.
fn magnet(fx: &Fixture, extra: &str) -> String {
    format!(
        "magnet:?xt=urn:btih:{}&dn=from+a+link{extra}",
        fx.meta.info_hash().to_hex()
    )
}

/// The seeder only in `x.pe`; `--exclude` once the list is known; `--save-torrent`; JSON events.
fn magnet_x_pe(seed_rt: &str, leech_rt: &str) {
    let fx = fixture("mag", &[]);
    let (seed, listen) = seeder(&fx, seed_rt, None);
    let out = fx.dir.path().join("out");
    let saved = fx.dir.path().join("saved.torrent");
    let link = magnet(&fx, &format!("&x.pe={listen}"));
    let leecher = spawn(
        &format!("leech-{leech_rt}"),
        &[
            "download",
            "--no-dht",
            &link,
            "-o",
            s(&out),
            "--runtime",
            leech_rt,
            "--bind",
            "127.0.0.1",
            "--exclude",
            "4",
            "--save-torrent",
            s(&saved),
            "--json",
            "--timeout",
            "20s",
        ],
        fx.dir.path(),
    );
    assert_eq!(
        exit_code(&leecher, DONE_WITHIN),
        0,
        "{}",
        leecher.log_tail(30)
    );
    let lines = leecher.json_lines();
    let event = |name: &str| {
        lines
            .iter()
            .find(|v| v["event"] == name)
            .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
    };
    assert_eq!(event("added")["magnet"], true);
    let meta = event("metadata");
    assert_eq!(meta["name"], "mag");
    assert_eq!(meta["files"], FILES.len());
    eprintln!(
        "{seed_rt} -> {leech_rt}: metadata after {} s",
        meta["seconds"].as_f64().expect("seconds")
    );
    assert_eq!(event("storage_ready")["start"], "fresh");
    let done = event("done");
    assert_eq!(done["name"], "mag");
    let all: u64 = FILES.iter().map(|f| f.1 as u64).sum();
    assert_eq!(done["wanted_bytes"], all - FILES[4].1 as u64);
    for i in 0..4 {
        assert_file(&fx, &out, i);
    }
    // The saved .torrent has the same info-hash (and exactly the seeder's info bytes).
    let got = Metainfo::from_bytes(&std::fs::read(&saved).expect("saved")).expect("parses");
    assert_eq!(got.info_hash(), fx.meta.info_hash());
    assert_eq!(got.info.raw(), fx.meta.info.raw());
    drop(seed);
}

#[test]
fn magnet_tokio_seeder_async_std_leecher_via_x_pe() {
    magnet_x_pe("tokio", "async-std");
}

#[test]
fn magnet_async_std_seeder_tokio_leecher_via_x_pe() {
    magnet_x_pe("async-std", "tokio");
}

/// The seeder found through the tracker in `tr`; `--only`; plain progress says "fetching metadata";
/// a second run over the same directory checks what is there and fetches nothing.
#[test]
fn magnet_via_tracker_with_only_then_rerun_over_existing_files() {
    let tracker = TestTracker::http().expect("tracker");
    let fx = fixture("trk", &[tracker.announce_url()]);
    let (seed, _) = seeder(&fx, "tokio", Some(&tracker));
    let out = fx.dir.path().join("out");
    let tr = format!(
        "&tr={}",
        hyperblow_core::tracker::http::percent_encode(tracker.announce_url().as_bytes())
    );
    let link = magnet(&fx, &tr);
    let args = [
        "download",
        "--no-dht",
        &link,
        "-o",
        s(&out),
        "--bind",
        "127.0.0.1",
        "--only",
        "0,2",
        "--timeout",
        "20s",
    ];
    let run = Command::new(bin()).args(args).output().expect("run");
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{err}");
    assert!(err.contains("fetching metadata"), "{err}");
    assert!(err.contains("metadata received"), "{err}");
    assert_file(&fx, &out, 0);
    assert_file(&fx, &out, 2);
    for rel in ["last.bin", "small.txt"] {
        assert!(!out.join("trk").join(rel).exists(), "{rel} exists");
    }
    // Again: the files are there, so nothing is fetched.
    let mut again: Vec<&str> = args.to_vec();
    again.push("--json");
    let run = Command::new(bin()).args(&again).output().expect("run");
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let ready = lines
        .iter()
        .find(|v| v["event"] == "storage_ready")
        .expect("storage_ready");
    assert_ne!(ready["start"], "fresh", "{ready}");
    assert!(!lines.iter().any(|v| v["event"] == "piece_verified"));
    // An index the torrent does not have is refused once the file list is known.
    let bad = Command::new(bin())
        .args([
            "download",
            "--no-dht",
            &link,
            "-o",
            s(&fx.dir.path().join("bad")),
            "--bind",
            "127.0.0.1",
            "--only",
            "9",
            "--timeout",
            "20s",
        ])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("file 9 does not exist"));
    drop(seed);
}
